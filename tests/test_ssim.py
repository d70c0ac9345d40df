"""SSIM numerics of ``tfssim.core.ssim``, cross-checked against independent implementations.

Oracles: ``tf.image.ssim`` / ``tf.image.ssim_multiscale`` (TensorFlow's own), scikit-image's
``structural_similarity`` (float64, SciPy filters) and a small float64 NumPy/SciPy
implementation written here (``reference_components``). None of them shares code with
``tfssim.core.ssim``.

Measured on this machine (256x256 crops of brick/grass/gravel, noise/blur/reconstruction-like
smoothing): mean SSIM vs ``tf.image.ssim`` within 8.5e-6 (most of it is tf.image.ssim's own
float32 error: ours is within 1.3e-6 of skimage's float64 mean, tf within 7.7e-6); the per-pixel
map vs skimage within 2e-4 (valid and ``padding="same"``).
"""
from __future__ import annotations

import keras
import numpy as np
import pytest
import scipy.ndimage as ndi
import tensorflow as tf
from skimage import data as skdata
from skimage.metrics import structural_similarity

from tfssim.core.ssim import gaussian_kernel, ms_ssim, ssim, ssim_map, ssim_maps

MAP_ATOL = 1e-3     # per-pixel maps, float32 vs float64 references
MEAN_ATOL = 1e-5    # mean SSIM vs tf.image.ssim
CROP = 256
STANDARD_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# --------------------------------------------------------------------------- references
def skimage_map(a: np.ndarray, b: np.ndarray, **kwargs) -> tuple[float, np.ndarray]:
    """skimage's (mean, full map) with the Wang et al. / tf.image.ssim settings."""
    kwargs.setdefault("sigma", 1.5)
    kwargs.setdefault("data_range", 1)
    return structural_similarity(
        a.astype(np.float64), b.astype(np.float64), gaussian_weights=True,
        use_sample_covariance=False, full=True, **kwargs,
    )


def crop(m: np.ndarray, r: int) -> np.ndarray:
    return m[r:-r, r:-r] if r else m


def reference_components(a, b, window=11, sigma=1.5, k1=0.01, k2=0.03, data_range=1.0, padding="valid"):
    """Float64 l, c, s, SSIM maps and local variances of 2-D images, straight from Wang et al. 2004.

    Truncated normalised Gaussian of ``window`` taps, separable, SciPy ``mode="reflect"``
    (edge pixel repeated) for ``padding="same"``; ``valid`` crops the reflected result.
    """
    r = window // 2
    t = np.arange(window) - r
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()

    def blur(z):
        z = ndi.correlate1d(ndi.correlate1d(z, g, axis=0, mode="reflect"), g, axis=1, mode="reflect")
        return z if padding == "same" else crop(z, r)

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    mx, my = blur(a), blur(b)
    vx = np.maximum(blur(a * a) - mx ** 2, 0.0)
    vy = np.maximum(blur(b * b) - my ** 2, 0.0)
    cov = blur(a * b) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    c3 = c2 / 2
    sx, sy = np.sqrt(vx), np.sqrt(vy)
    lum = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)
    con = (2 * sx * sy + c2) / (vx + vy + c2)
    stru = (cov + c3) / (sx * sy + c3)
    ssim_direct = (2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return dict(l=lum, c=con, s=stru, ssim=ssim_direct, vx=vx, vy=vy)


def to_batch(*images: np.ndarray) -> np.ndarray:
    """2-D images -> [B, H, W, 1] float32."""
    return np.stack(images)[..., None].astype(np.float32)


# --------------------------------------------------------------------------- test images
def _distort(a: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "noise":
        b = np.clip(a + rng.normal(0.0, 0.05, a.shape), 0.0, 1.0)
    elif kind == "blur":
        b = ndi.gaussian_filter(a, 1.0)
    elif kind == "recon":  # what an undertrained autoencoder returns: smooth, lower contrast
        b = ndi.uniform_filter(ndi.gaussian_filter(a, 3.0), 5) * 0.9 + 0.05
    else:
        raise ValueError(kind)
    return b.astype(np.float32)


TEXTURES = ("brick", "grass", "gravel")
DISTORTIONS = ("noise", "blur", "recon")


@pytest.fixture(scope="module")
def real_pairs() -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    pairs = {}
    for name in TEXTURES:
        a = (getattr(skdata, name)()[:CROP, :CROP].astype(np.float32) / 255.0)
        for kind in DISTORTIONS:
            pairs[name, kind] = (a, _distort(a, kind, rng))
    return pairs


@pytest.fixture(scope="module")
def random_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    a = rng.uniform(size=(64, 80)).astype(np.float32)
    b = np.clip(0.7 * a + 0.3 * rng.uniform(size=a.shape), 0, 1).astype(np.float32)
    return a, b


PAIR_IDS = [f"{n}-{k}" for n in TEXTURES for k in DISTORTIONS]
PAIR_KEYS = [(n, k) for n in TEXTURES for k in DISTORTIONS]


# --------------------------------------------------------------------------- vs tf.image.ssim
def test_mean_matches_tf_image_ssim_real_images(real_pairs):
    x = to_batch(*(p[0] for p in real_pairs.values()))
    y = to_batch(*(p[1] for p in real_pairs.values()))
    ours = ssim_maps(x, y).ssim.numpy().mean(axis=(1, 2, 3))
    theirs = tf.image.ssim(x, y, max_val=1.0).numpy()
    diff = np.abs(ours - theirs)
    print(f"\nmean SSIM, ours vs tf.image.ssim on 256x256 real images: max |diff| = {diff.max():.2e}")
    np.testing.assert_allclose(ours, theirs, atol=MEAN_ATOL, rtol=0)
    # the convenience wrapper returns the same per-image means
    np.testing.assert_allclose(ssim(x, y).numpy(), ours, atol=1e-6, rtol=0)


def test_mean_matches_tf_image_ssim_random_and_patches(random_pair):
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(4, 48, 40, 1)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1).astype(np.float32)
    ours = ssim(x, y).numpy()
    np.testing.assert_allclose(ours, tf.image.ssim(x, y, max_val=1.0).numpy(), atol=MEAN_ATOL, rtol=0)
    # the per-pixel map too: tf.image.ssim(return_index_map=True) on the valid region
    np.testing.assert_allclose(
        ssim_map(x, y).numpy(), tf.image.ssim(x, y, 1.0, return_index_map=True).numpy(), atol=MAP_ATOL, rtol=0
    )
    # and the results are not trivially 1 or 0
    assert 0.1 < ours.mean() < 0.9


def test_mean_closer_to_float64_than_tf(real_pairs):
    """Our float32 mean is within 3e-6 of skimage's float64 mean (tf.image.ssim: up to ~8e-6)."""
    worst = 0.0
    for a, b in real_pairs.values():
        m64, _ = skimage_map(a, b)
        worst = max(worst, abs(float(ssim(a[None, ..., None], b[None, ..., None])[0]) - m64))
    print(f"\nmean SSIM, ours vs skimage float64: max |diff| = {worst:.2e}")
    assert worst < 3e-6


# --------------------------------------------------------------------------- vs skimage maps
@pytest.mark.parametrize("blur", ["matmul", "conv"])
@pytest.mark.parametrize("key", PAIR_KEYS, ids=PAIR_IDS)
def test_map_matches_skimage_real_images(real_pairs, key, blur):
    a, b = real_pairs[key]
    _, sk_full = skimage_map(a, b)
    x, y = to_batch(a), to_batch(b)
    valid = ssim_maps(x, y, blur=blur).ssim.numpy()[0, ..., 0]
    same = ssim_maps(x, y, padding="same", blur=blur).ssim.numpy()[0, ..., 0]
    assert valid.shape == (CROP - 10, CROP - 10)
    assert same.shape == (CROP, CROP)
    np.testing.assert_allclose(valid, crop(sk_full, 5), atol=MAP_ATOL, rtol=0)
    np.testing.assert_allclose(same, sk_full, atol=MAP_ATOL, rtol=0)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_map_matches_skimage_random(random_pair, padding):
    a, b = random_pair
    _, sk_full = skimage_map(a, b)
    ours = ssim_maps(to_batch(a), to_batch(b), padding=padding).ssim.numpy()[0, ..., 0]
    expected = sk_full if padding == "same" else crop(sk_full, 5)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=MAP_ATOL, rtol=0)


def test_same_padding_interior_equals_valid(random_pair):
    a, b = random_pair
    x, y = to_batch(a), to_batch(b)
    same = ssim_maps(x, y, padding="same").ssim.numpy()
    valid = ssim_maps(x, y).ssim.numpy()
    np.testing.assert_allclose(same[:, 5:-5, 5:-5], valid, atol=1e-5, rtol=0)
    # the border really differs from zero padding: with zeros SSIM collapses near the edge
    zero_padded = ssim_maps(np.pad(x, [[0, 0], [5, 5], [5, 5], [0, 0]]), np.pad(y, [[0, 0], [5, 5], [5, 5], [0, 0]]))
    assert np.abs(zero_padded.ssim.numpy() - same).max() > 0.1


def test_rgb_per_channel_maps_match_skimage():
    rng = np.random.default_rng(3)
    a = skdata.astronaut()[100:228, 150:278].astype(np.float32) / 255.0  # 128x128x3
    b = np.clip(ndi.gaussian_filter(a, (1.2, 1.2, 0)) + rng.normal(0, 0.03, a.shape), 0, 1).astype(np.float32)
    b[..., 2] = ndi.gaussian_filter(a[..., 2], 3.0)  # make the channels differ
    sk_mean, sk_full = skimage_map(a, b, channel_axis=-1)
    maps = ssim_maps(a[None], b[None])
    assert maps.ssim.shape == (1, 118, 118, 3)
    for ch in range(3):
        np.testing.assert_allclose(maps.ssim.numpy()[0, ..., ch], crop(sk_full[..., ch], 5), atol=MAP_ATOL, rtol=0)
    np.testing.assert_allclose(float(ssim(a[None], b[None])[0]), sk_mean, atol=1e-5)
    # ssim_map averages over channels, as tf.image.ssim does
    np.testing.assert_allclose(
        ssim_map(a[None], b[None]).numpy(), tf.image.ssim(a[None], b[None], 1.0, return_index_map=True).numpy(),
        atol=MAP_ATOL, rtol=0,
    )
    same = ssim_maps(a[None], b[None], padding="same").ssim.numpy()[0]
    np.testing.assert_allclose(same, sk_full, atol=MAP_ATOL, rtol=0)


def test_blur_methods_agree(real_pairs):
    a, b = real_pairs["gravel", "recon"]
    x, y = to_batch(a, a), to_batch(b, a)
    for padding in ("valid", "same"):
        mm = ssim_maps(x, y, blur="matmul", padding=padding)
        cv = ssim_maps(x, y, blur="conv", padding=padding)
        for field in ("ssim", "luminance"):
            np.testing.assert_allclose(getattr(mm, field).numpy(), getattr(cv, field).numpy(), atol=MAP_ATOL, rtol=0)
        # c and s amplify float32 rounding through sqrt(var_x var_y) in near-flat windows
        # (different summation orders differ there by ~1.4e-3): compare where both std > 1 %
        ref = reference_components(a, b, padding=padding)
        ok = np.minimum(ref["vx"], ref["vy"]) > 1e-4
        for field in ("contrast", "structure"):
            np.testing.assert_allclose(getattr(mm, field).numpy()[0, ..., 0][ok], getattr(cv, field).numpy()[0, ..., 0][ok],
                                       atol=MAP_ATOL, rtol=0)
        np.testing.assert_allclose(mm.ssim.numpy().mean((1, 2, 3)), cv.ssim.numpy().mean((1, 2, 3)), atol=1e-5)
    # identical images are SSIM 1 with either method
    np.testing.assert_allclose(mm.ssim.numpy()[1], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="blur method"):
        ssim_maps(x, y, blur="fft")


def test_gaussian_kernel_is_normalised_gaussian():
    k = gaussian_kernel(11, 1.5).numpy()
    t = np.arange(11) - 5.0
    expected = np.exp(-t ** 2 / (2 * 1.5 ** 2))
    np.testing.assert_allclose(k, expected / expected.sum(), atol=1e-7)


# --------------------------------------------------------------------------- other windows
# skimage derives the Gaussian's radius from sigma (radius = int(3.5 sigma + 0.5)) and uses
# win_size only to crop, so a K-tap window is matched exactly by a sigma in that radius range.
SKIMAGE_MATCHED_SIGMA = {3: 0.4, 7: 0.9, 11: 1.5, 15: 2.0}


@pytest.mark.parametrize("window", [3, 7, 15])
def test_other_windows_match_skimage_with_matched_sigma(real_pairs, window):
    sigma = SKIMAGE_MATCHED_SIGMA[window]
    assert 2 * int(3.5 * sigma + 0.5) + 1 == window  # skimage's own window-size rule
    a, b = real_pairs["grass", "recon"]
    _, sk_full = skimage_map(a, b, sigma=sigma, win_size=window)
    x, y = to_batch(a), to_batch(b)
    valid = ssim_maps(x, y, window_size=window, sigma=sigma).ssim.numpy()[0, ..., 0]
    same = ssim_maps(x, y, window_size=window, sigma=sigma, padding="same").ssim.numpy()[0, ..., 0]
    assert valid.shape == (CROP - window + 1,) * 2
    np.testing.assert_allclose(valid, crop(sk_full, window // 2), atol=MAP_ATOL, rtol=0)
    np.testing.assert_allclose(same, sk_full, atol=MAP_ATOL, rtol=0)


@pytest.mark.parametrize("window", [3, 7, 11, 15])
def test_window_sizes_with_default_sigma_match_numpy_reference(real_pairs, random_pair, window):
    """The paper's ablation windows with sigma 1.5 (truncated to K taps): all maps vs NumPy."""
    for a, b in (real_pairs["brick", "noise"], random_pair):
        x, y = to_batch(a), to_batch(b)
        for padding in ("valid", "same"):
            ref = reference_components(a, b, window=window, padding=padding)
            ours = ssim_maps(x, y, window_size=window, padding=padding)
            np.testing.assert_allclose(ours.ssim.numpy()[0, ..., 0], ref["ssim"], atol=MAP_ATOL, rtol=0)
            np.testing.assert_allclose(ours.luminance.numpy()[0, ..., 0], ref["l"], atol=1e-5, rtol=0)
            # c and s go through sqrt(var_x var_y): compared where both local std exceed 1 %
            ok = np.minimum(ref["vx"], ref["vy"]) > 1e-4
            assert ok.mean() > 0.3
            for ours_map, key in ((ours.contrast, "c"), (ours.structure, "s")):
                np.testing.assert_allclose(ours_map.numpy()[0, ..., 0][ok], ref[key][ok], atol=MAP_ATOL, rtol=0)


def test_window_size_changes_the_map(real_pairs):
    a, b = real_pairs["gravel", "blur"]
    m3 = ssim(to_batch(a), to_batch(b), window_size=3).numpy()[0]
    m15 = ssim(to_batch(a), to_batch(b), window_size=15).numpy()[0]
    assert abs(m3 - m15) > 1e-3


# --------------------------------------------------------------------------- components
@pytest.mark.parametrize("key", [("brick", "noise"), ("grass", "recon"), ("gravel", "blur")], ids=str)
def test_components_match_numpy_reference(real_pairs, key):
    a, b = real_pairs[key]
    ref = reference_components(a, b)
    ours = ssim_maps(to_batch(a), to_batch(b))
    lum, con, stru, s = (m.numpy()[0, ..., 0] for m in (ours.luminance, ours.contrast, ours.structure, ours.ssim))
    np.testing.assert_allclose(lum, ref["l"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(s, ref["ssim"], atol=MAP_ATOL, rtol=0)
    # the reference's own l*c*s equals its direct SSIM formula (C3 = C2/2): a check of the oracle
    np.testing.assert_allclose(ref["l"] * ref["c"] * ref["s"], ref["ssim"], atol=1e-12)
    ok = np.minimum(ref["vx"], ref["vy"]) > 1e-4
    assert ok.mean() > 0.3
    np.testing.assert_allclose(con[ok], ref["c"][ok], atol=MAP_ATOL, rtol=0)
    np.testing.assert_allclose(stru[ok], ref["s"][ok], atol=MAP_ATOL, rtol=0)
    # l * c * s is the SSIM map everywhere, flat windows included
    np.testing.assert_allclose(lum * con * stru, s, atol=1e-5, rtol=0)
    # ranges: l, c in (0, 1] (c up to float32 slack), s in [-1, 1]
    assert lum.min() > 0 and lum.max() <= 1 + 1e-6
    assert con.min() > 0 and con.max() <= 1 + 3e-3
    assert stru.min() >= -1 - 1e-3 and stru.max() <= 1 + 1e-3


def test_components_random_images_everywhere(random_pair):
    """On noise images every window is well conditioned: all maps vs NumPy everywhere."""
    a, b = random_pair
    ref = reference_components(a, b)
    ours = ssim_maps(to_batch(a), to_batch(b))
    for m, key in zip(ours[1:], "lcs"):
        np.testing.assert_allclose(m.numpy()[0, ..., 0], ref[key], atol=1e-4, rtol=0)


def test_components_of_identical_and_flat_images():
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(1, 32, 32, 1)).astype(np.float32)
    same = ssim_maps(x, x)
    for m in same:
        np.testing.assert_allclose(m.numpy(), 1.0, atol=1e-4)
    flat = np.full((1, 32, 32, 1), 0.3, np.float32)
    darker = ssim_maps(flat, flat * 0.5)
    # only luminance differs between two flat images: l = (2*0.3*0.15 + C1) / (0.3^2 + 0.15^2 + C1)
    c1 = 0.01 ** 2
    np.testing.assert_allclose(darker.luminance.numpy(), (0.09 + c1) / (0.1125 + c1), atol=1e-5)
    np.testing.assert_allclose(darker.ssim.numpy(), (0.09 + c1) / (0.1125 + c1), atol=1e-5)
    # c and s of flat windows are 1 up to the epsilon that keeps the sqrt differentiable
    np.testing.assert_allclose(darker.contrast.numpy(), 1.0, atol=3e-3)
    np.testing.assert_allclose(darker.structure.numpy(), 1.0, atol=3e-3)


def test_exponents_follow_the_formula(random_pair):
    a, b = random_pair
    x, y = to_batch(a), to_batch(b)
    alpha, beta, gamma = 2.0, 0.5, 3.0
    ref = reference_components(a, b)
    expected = ref["l"] ** alpha * ref["c"] ** beta * ref["s"] ** gamma  # integer gamma: sign kept
    ours = ssim_maps(x, y, alpha=alpha, beta=beta, gamma=gamma)
    np.testing.assert_allclose(ours.ssim.numpy()[0, ..., 0], expected, atol=1e-4, rtol=0)
    plain = ssim_maps(x, y).ssim.numpy()[0, ..., 0]
    assert np.abs(ours.ssim.numpy()[0, ..., 0] - plain).max() > 0.05  # exponents matter
    # the component maps themselves do not depend on the exponents
    np.testing.assert_allclose(ours.structure.numpy(), ssim_maps(x, y).structure.numpy(), atol=1e-7)
    # a fractional gamma on negative structure keeps the sign instead of returning NaN
    b = np.random.default_rng(9).uniform(size=a.shape).astype(np.float32)  # independent of a
    x, y = to_batch(a), to_batch(b)
    ref = reference_components(a, b)
    assert (ref["s"] < -0.1).any()
    frac = ssim_maps(x, y, gamma=0.5).ssim.numpy()[0, ..., 0]
    expected = ref["l"] * ref["c"] * np.sign(ref["s"]) * np.abs(ref["s"]) ** 0.5
    assert np.isfinite(frac).all()
    np.testing.assert_allclose(frac, expected, atol=1e-3, rtol=0)


# --------------------------------------------------------------------------- constants and range
def test_k1_k2_match_skimage(real_pairs):
    a, b = real_pairs["brick", "recon"]
    _, sk_full = skimage_map(a, b, K1=0.05, K2=0.1)
    ours = ssim_maps(to_batch(a), to_batch(b), k1=0.05, k2=0.1).ssim.numpy()[0, ..., 0]
    np.testing.assert_allclose(ours, crop(sk_full, 5), atol=MAP_ATOL, rtol=0)
    default = ssim_maps(to_batch(a), to_batch(b)).ssim.numpy()[0, ..., 0]
    assert np.abs(ours - default).max() > 0.01


def test_data_range_255_on_uint8_equals_range_1_on_unit_floats(real_pairs):
    a8 = skdata.gravel()[:96, :96]
    b8 = np.clip(ndi.gaussian_filter(a8.astype(np.float64), 1.5), 0, 255).round().astype(np.uint8)
    x8, y8 = a8[None, ..., None], b8[None, ..., None]
    on_255 = ssim_maps(x8, y8, data_range=255.0)
    on_1 = ssim_maps(x8.astype(np.float32) / 255, y8.astype(np.float32) / 255, data_range=1.0)
    assert on_255.ssim.dtype == tf.float32
    for m255, m1 in zip(on_255[:2], on_1[:2]):  # ssim, luminance (float32 rounding differs: ~2e-4)
        np.testing.assert_allclose(m255.numpy(), m1.numpy(), atol=MAP_ATOL, rtol=0)
    np.testing.assert_allclose(on_255.ssim.numpy().mean(), on_1.ssim.numpy().mean(), atol=1e-5)
    _, sk_full = structural_similarity(a8, b8, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=255, full=True)
    np.testing.assert_allclose(on_255.ssim.numpy()[0, ..., 0], crop(sk_full, 5), atol=MAP_ATOL, rtol=0)
    # on dark images C1 = (K1 L)^2 dominates the luminance term: check every component there
    dark_x, dark_y = (a8 // 16).astype(np.float32), (b8 // 16).astype(np.float32)  # values 0..15
    ref = reference_components(dark_x, dark_y, data_range=255.0)
    dark = ssim_maps(dark_x[None, ..., None], dark_y[None, ..., None], data_range=255.0)
    np.testing.assert_allclose(dark.luminance.numpy()[0, ..., 0], ref["l"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(dark.ssim.numpy()[0, ..., 0], ref["ssim"], atol=MAP_ATOL, rtol=0)
    assert np.abs(ref["l"] - reference_components(dark_x, dark_y, data_range=1.0)["l"]).max() > 0.01
    # a wrong data range is visible: treating 0..255 data as range 1 gives a different map
    wrong = ssim_maps(x8, y8, data_range=1.0).ssim.numpy()
    assert np.abs(wrong - on_255.ssim.numpy()).max() > 1e-3


# --------------------------------------------------------------------------- dtypes
@pytest.fixture
def restore_policy():
    before = keras.mixed_precision.global_policy()
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def test_float16_inputs_give_float32_equal_to_float32_computation(real_pairs, restore_policy):
    # Equal to 1e-6 only if the statistics are computed in float32: the same formula in float16
    # arithmetic was off by 0.1 on this pair (up to 1.6 on others; the team notes, "SSIM").
    a, b = real_pairs["grass", "noise"]
    x16, y16 = to_batch(a[:64, :64]).astype(np.float16), to_batch(b[:64, :64]).astype(np.float16)
    ref = ssim_maps(x16.astype(np.float32), y16.astype(np.float32))
    for policy in ("float32", "mixed_float16"):
        keras.mixed_precision.set_global_policy(policy)
        for blur in ("matmul", "conv"):
            ours = ssim_maps(tf.constant(x16), tf.constant(y16), blur=blur)
            for m, r in zip(ours, ref):
                assert m.dtype == tf.float32
                np.testing.assert_allclose(m.numpy(), r.numpy(), atol=MAP_ATOL if blur == "conv" else 1e-6, rtol=0)
        np.testing.assert_allclose(ms_ssim(x16, y16, power_factors=(0.5, 0.5)).numpy(),
                                   ms_ssim(x16.astype(np.float32), y16.astype(np.float32),
                                           power_factors=(0.5, 0.5)).numpy(), atol=1e-6)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    "kwargs", [{}, {"padding": "same"}, {"blur": "conv"}, {"alpha": 2.0, "beta": 0.5, "gamma": 3.0}], ids=str
)
def test_gradient_is_finite_nonzero_and_matches_finite_differences(kwargs):
    rng = np.random.default_rng(5)
    x = tf.constant(rng.uniform(size=(2, 24, 24, 1)), tf.float32)
    y = tf.Variable(np.clip(x.numpy() + rng.normal(0, 0.1, x.shape), 0.05, 0.95), dtype=tf.float32)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(ssim(x, y, **kwargs))
    grad = tape.gradient(value, y).numpy()
    assert np.isfinite(grad).all()
    assert np.abs(grad).max() > 1e-4
    # directional derivative vs central differences
    d = rng.normal(size=x.shape).astype(np.float32)
    d /= np.linalg.norm(d)
    h = 1e-2
    plus = float(tf.reduce_sum(ssim(x, y + h * d, **kwargs)))
    minus = float(tf.reduce_sum(ssim(x, y - h * d, **kwargs)))
    np.testing.assert_allclose((plus - minus) / (2 * h), np.sum(grad * d), rtol=2e-2, atol=1e-4)


def test_gradient_finite_on_flat_images():
    flat = tf.fill([1, 16, 16, 1], 0.5)
    y = tf.Variable(tf.fill([1, 16, 16, 1], 0.4))
    for kwargs in ({}, {"alpha": 1.0, "beta": 2.0, "gamma": 2.0}):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(ssim(flat, y, **kwargs))
        grad = tape.gradient(value, y).numpy()
        assert np.isfinite(grad).all()
        assert np.abs(grad).max() > 0  # the luminance term still pulls y towards x


# --------------------------------------------------------------------------- errors
def test_even_window_raises():
    x = np.zeros((1, 32, 32, 1), np.float32)
    for window in (4, 10, 0):
        with pytest.raises(ValueError, match="odd"):
            ssim_maps(x, x, window_size=window)
    with pytest.raises(ValueError, match="odd"):
        ms_ssim(x, x, window_size=8)
    with pytest.raises(ValueError, match="sigma"):
        ssim_maps(x, x, sigma=0.0)


def test_shape_errors():
    x = np.zeros((1, 32, 32, 1), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        ssim_maps(x, np.zeros((1, 32, 30, 1), np.float32))
    with pytest.raises(ValueError, match="same shape"):
        ssim_maps(x, np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[batch, height, width, channels\]"):
        ssim_maps(x[0], x[0])
    with pytest.raises(ValueError, match=r"\[batch, height, width, channels\]"):
        ssim_maps(x[None], x[None])
    with pytest.raises(ValueError, match="padding"):
        ssim_maps(x, x, padding="reflect")


def test_image_smaller_than_window_raises():
    x = np.zeros((1, 8, 16, 1), np.float32)
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        ssim_maps(x, x)
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        ms_ssim(x, x, power_factors=(1.0,))
    # a 7 window fits, and padding="same" handles the small image
    assert ssim_maps(x, x, window_size=7).ssim.shape == (1, 2, 10, 1)
    assert ssim_maps(x, x, padding="same").ssim.shape == (1, 8, 16, 1)
    # ... unless it is smaller than the mirror padding itself
    tiny = np.zeros((1, 4, 4, 1), np.float32)
    with pytest.raises(ValueError, match="too small"):
        ssim_maps(tiny, tiny, padding="same")


def test_small_image_same_padding_matches_reference():
    rng = np.random.default_rng(6)
    a = rng.uniform(size=(8, 9)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    ours = ssim_maps(to_batch(a), to_batch(b), padding="same").ssim.numpy()[0, ..., 0]
    np.testing.assert_allclose(ours, reference_components(a, b, padding="same")["ssim"], atol=MAP_ATOL, rtol=0)


# --------------------------------------------------------------------------- MS-SSIM
def _ms_pair(size, channels, seed):
    rng = np.random.default_rng(seed)
    x = ndi.gaussian_filter(rng.uniform(size=(2, size, size, channels)), (0, 2, 2, 0))
    y = ndi.gaussian_filter(np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1), (0, 1, 1, 0))
    if channels == 3:  # channels that differ, so per-channel vs pooled averaging is visible
        y[..., 0] = ndi.gaussian_filter(x[..., 0], (0, 4, 4))
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize(
    "size,channels,n_scales",
    [(192, 1, 4), (192, 3, 4), (181, 1, 4), (180, 1, 4), (176, 1, 5)],
    ids=["192-gray", "192-rgb", "181-odd", "180-odd-at-scale-3", "176-5-scales"],
)
def test_ms_ssim_matches_tf_ssim_multiscale(size, channels, n_scales):
    x, y = _ms_pair(size, channels, seed=size + channels)
    factors = STANDARD_MS_WEIGHTS[:n_scales]
    ours = ms_ssim(x, y, power_factors=factors).numpy()
    theirs = tf.image.ssim_multiscale(x, y, max_val=1.0, power_factors=factors).numpy()
    print(f"\nms_ssim {size}x{size}x{channels}, {n_scales} scales: max |ours - tf| = {np.abs(ours - theirs).max():.2e}")
    assert ours.shape == (2,)
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=0)
    assert 0.3 < ours.min() < 0.99


def test_ms_ssim_default_factors_on_a_patch():
    """128-pixel patch: four scales, the standard weights renormalised."""
    x, y = _ms_pair(128, 1, seed=7)
    w = STANDARD_MS_WEIGHTS[:4]
    w = tuple(v / sum(w) for v in w)
    theirs = tf.image.ssim_multiscale(x, y, 1.0, power_factors=w).numpy()
    np.testing.assert_allclose(ms_ssim(x, y).numpy(), theirs, atol=2e-5, rtol=0)
    np.testing.assert_allclose(ms_ssim(x, x).numpy(), 1.0, atol=1e-5)
    # one scale is plain SSIM
    np.testing.assert_allclose(ms_ssim(x, y, power_factors=(1.0,)).numpy(), ssim(x, y).numpy(), atol=1e-5)


def test_ms_ssim_too_many_scales_raises():
    x = np.zeros((1, 64, 64, 1), np.float32)
    with pytest.raises(ValueError, match="MS-SSIM scales"):
        ms_ssim(x, x, power_factors=STANDARD_MS_WEIGHTS)


def test_ms_ssim_gradient_finite_nonzero():
    x, y = _ms_pair(64, 1, seed=8)
    y = tf.Variable(y)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(ms_ssim(x, y))
    grad = tape.gradient(value, y).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).max() > 1e-5


# --------------------------------------------------------------------------- uniform window
@pytest.mark.parametrize("window", [7, 11])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_uniform_window_matches_skimage_plain_patch_means(real_pairs, window, padding):
    """``weighting="uniform"``: plain K x K means (Bergmann et al.'s definition), which is
    scikit-image's ``gaussian_weights=False`` (its full map mirror-pads like ``"same"``)."""
    a, b = real_pairs["grass", "blur"]
    ours = ssim_maps(a[None, ..., None], b[None, ..., None], window_size=window, weighting="uniform",
                     padding=padding).ssim.numpy()[0, ..., 0]
    mean, ref = structural_similarity(a.astype(np.float64), b.astype(np.float64), win_size=window,
                                      gaussian_weights=False, use_sample_covariance=False, data_range=1, full=True)
    r = window // 2
    np.testing.assert_allclose(ours, ref if padding == "same" else crop(ref, r), atol=MAP_ATOL)
    if padding == "valid":
        assert float(ssim(a[None, ..., None], b[None, ..., None], window_size=window, weighting="uniform")[0]) == \
            pytest.approx(mean, abs=MEAN_ATOL)
    # ... and it is not the Gaussian map.
    gaussian = ssim_maps(a[None, ..., None], b[None, ..., None], window_size=window, padding=padding).ssim.numpy()
    assert np.abs(gaussian[0, ..., 0] - ours).max() > 0.01


def test_window_kernel_and_bad_weighting():
    from tfssim.core.ssim import window_kernel

    np.testing.assert_allclose(window_kernel(5, weighting="uniform").numpy(), np.full(5, 0.2), rtol=1e-6)
    np.testing.assert_allclose(window_kernel(11, 1.5).numpy(), gaussian_kernel(11, 1.5).numpy())
    x = tf.zeros([1, 16, 16, 1])
    with pytest.raises(ValueError, match="weighting must be one of gaussian, uniform, got 'box'"):
        ssim_maps(x, x, weighting="box")


# --------------------------------------------------------------------------- other Keras backends
_JAX_CHECK = r"""
import json, sys
import numpy as np
import keras
from skimage import data as skdata
from skimage.metrics import structural_similarity
from tfssim.core.ssim import SSIMParams, ssim, ssim_maps

assert keras.backend.backend() == "jax", keras.backend.backend()
rng = np.random.default_rng(0)
a = skdata.brick()[100:164, 150:214].astype(np.float64) / 255.0
b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
x, y = a[None, ..., None].astype(np.float32), b[None, ..., None].astype(np.float32)
out = {}
# Gaussian window, mirror-padded full map: skimage's full=True map (reflect padding).
_, full = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0, full=True)
for blur in ("matmul", "conv"):
    ours = np.asarray(ssim_maps(x, y, padding="same", blur=blur).ssim)[0, ..., 0]
    out[f"gaussian_same_{blur}"] = float(np.abs(ours - full).max())
# Uniform 7x7 window (skimage's default box window), valid region.
_, box = structural_similarity(a, b, win_size=7, use_sample_covariance=False, data_range=1.0, full=True)
ours = np.asarray(ssim_maps(x, y, SSIMParams(window_size=7, weighting="uniform")).ssim)[0, ..., 0]
out["uniform_valid"] = float(np.abs(ours - box[3:-3, 3:-3]).max())
import jax
grad = jax.grad(lambda t: 1.0 - ssim(x, t)[0])(y)
out["grad_finite"] = bool(np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0)
out["tensorflow_imported"] = "tensorflow" in sys.modules
print(json.dumps(out))
"""


@pytest.mark.slow  # a JAX process: about 20 s here
def test_ssim_on_jax_backend_matches_skimage_without_tensorflow():
    """The keras.ops SSIM runs on JAX (a subprocess, KERAS_BACKEND=jax) and equals scikit-image."""
    import importlib.util
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install jax jaxlib: CPU wheels from PyPI)")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _JAX_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["gaussian_same_matmul"] < 1e-4, out
    assert out["gaussian_same_conv"] < 1e-4, out
    assert out["uniform_valid"] < 1e-4, out
    assert out["grad_finite"], out
    assert not out["tensorflow_imported"], out


def test_ssim_params_round_trip_validation_and_overrides():
    from tfssim.core.ssim import SSIMParams

    params = SSIMParams(window_size=7, sigma=1.0, weighting="uniform", k2=0.05, gamma=2.0, data_range=255.0)
    assert SSIMParams.from_dict(params.to_dict()) == params
    assert set(params.to_dict()) == set(SSIMParams.keys()) == {
        "window_size", "sigma", "weighting", "k1", "k2", "alpha", "beta", "gamma", "data_range"}
    assert SSIMParams.from_dict({"window_size": 5}) == SSIMParams(window_size=5)
    with pytest.raises(ValueError, match="unknown SSIM parameter"):
        SSIMParams.from_dict({"window": 5})
    with pytest.raises(ValueError, match="odd"):
        SSIMParams(window_size=4)
    with pytest.raises(ValueError, match="k1 must be a finite number > 0"):
        SSIMParams(k1=float("nan"))
    with pytest.raises(ValueError, match="data_range must be"):
        SSIMParams(data_range=0)
    # params= and keywords give the same maps, keywords overriding params
    rng = np.random.default_rng(3)
    x = rng.random((1, 32, 32, 1)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    np.testing.assert_array_equal(ssim(x, y, SSIMParams(window_size=7, k2=0.05)).numpy(),
                                  ssim(x, y, window_size=7, k2=0.05).numpy())
    np.testing.assert_array_equal(ssim(x, y, SSIMParams(window_size=7), window_size=5).numpy(),
                                  ssim(x, y, window_size=5).numpy())
