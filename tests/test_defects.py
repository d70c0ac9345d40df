"""Box-local painting of synthetic defects (tfssim.data.defects): each defect's own region and box,
exact masks where defects touch the image border, and the box-local distance transforms, dilation
and blur cross-checked with SciPy over the whole image."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion, distance_transform_edt, gaussian_filter
from skimage import data as skdata

from tfssim.data import defects


def _texture(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A gray [0, 1] crop of scikit-image's gravel texture (a real, defect-free surface)."""
    gravel = skdata.gravel().astype(np.float32) / 255
    rng = np.random.default_rng(seed)
    y = int(rng.integers(0, gravel.shape[0] - shape[0] + 1))
    x = int(rng.integers(0, gravel.shape[1] - shape[1] + 1))
    return np.ascontiguousarray(gravel[y : y + shape[0], x : x + shape[1]])


def _changed(painted: np.ndarray, image: np.ndarray) -> np.ndarray:
    return painted != image if image.ndim == 2 else np.any(painted != image, axis=-1)


def _check_record(info: dict, shape: tuple[int, int]) -> None:
    """``box`` is four ints inside the image, ``region`` a boolean crop of its size that fills it tightly."""
    r0, r1, c0, c1 = info["box"]
    assert all(type(v) is int for v in info["box"])
    assert 0 <= r0 <= r1 <= shape[0] and 0 <= c0 <= c1 <= shape[1]
    region = info["region"]
    assert region.dtype == bool and region.shape == (r1 - r0, c1 - c0)
    if region.size:  # the tight box of the changed pixels: every edge row and column has one
        assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()


def _placed(info: dict, shape: tuple[int, int]) -> np.ndarray:
    r0, r1, c0, c1 = info["box"]
    full = np.zeros(shape, bool)
    full[r0:r1, c0:c1] = info["region"]
    return full


# --------------------------------------------------------------------------------------------
# Each defect's region


@pytest.mark.parametrize("family", defects.FAMILIES)
def test_one_defects_region_is_its_mask_cut_to_its_box(family):
    image = _texture((96, 112), seed=1)
    sources = [_texture((96, 112), seed=2)]
    for seed in range(5):
        rng = np.random.default_rng(seed)
        painted, mask, info = defects.paint_defect(image, rng, family, float(rng.uniform(4, 48)), sources=sources)
        _check_record(info, image.shape)
        np.testing.assert_array_equal(_placed(info, image.shape), mask)
        np.testing.assert_array_equal(_changed(painted, image), mask)


def test_each_defects_region_is_what_it_changed_and_together_they_cover_the_mask():
    image = _texture((128, 128), seed=3)
    before = image.copy()
    sources = [_texture((128, 128), seed=4)]
    lo, hi, count = 6.0, 48.0, 24  # many large defects on a small image: they overlap
    for seed in range(4):
        painted, mask, infos = defects.paint_defects(image, np.random.default_rng(seed), count,
                                                     size_range=(lo, hi), sources=sources)
        np.testing.assert_array_equal(image, before)  # the input is not painted into
        np.testing.assert_array_equal(_changed(painted, image), mask)
        union = np.zeros(mask.shape, bool)
        for info in infos:
            _check_record(info, image.shape)
            union |= _placed(info, image.shape)
        assert np.all(union[mask])  # every masked pixel belongs to some defect
        # Replay one defect after another with paint_defect (the same draws): each region is
        # exactly the pixels that defect changed in the image as the earlier ones left it.
        rng = np.random.default_rng(seed)
        current = image
        for info in infos:
            family = defects.FAMILIES[int(rng.integers(len(defects.FAMILIES)))]
            diameter = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            if family in defects.LARGE_FAMILIES:  # painted larger, at most the image's side
                diameter = min(diameter * defects.LARGE_FAMILIES[family], 128.0)
            step, step_mask, step_info = defects.paint_defect(current, rng, family, diameter, sources=sources)
            assert step_info["family"] == info["family"] == family
            assert step_info["box"] == info["box"]
            np.testing.assert_array_equal(_placed(info, image.shape), step_mask)
            np.testing.assert_array_equal(_changed(step, current), step_mask)
            current = step
        final = np.abs(current - image) > defects.MIN_CHANGE
        np.testing.assert_array_equal(final, mask)
        np.testing.assert_array_equal(painted[mask], current[mask])


@pytest.mark.parametrize("channels", [0, 3])
def test_masks_stay_exact_where_large_defects_touch_the_image_border(channels):
    shape = (48, 40)
    rng = np.random.default_rng(5)
    image = _texture(shape, seed=5) if not channels else rng.random((*shape, channels)).astype(np.float32)
    touching = 0
    for seed in range(12):
        painted, mask, infos = defects.paint_defects(image, np.random.default_rng(seed), 10, size_range=(8, 60),
                                                     sources=[image[::-1].copy()])
        assert painted.shape == image.shape and painted.dtype == np.float32
        np.testing.assert_array_equal(_changed(painted, image), mask)
        diff = np.abs(painted - image).reshape(*shape, -1).max(axis=-1)
        assert mask.any() and diff[mask].min() > defects.MIN_CHANGE
        assert 0 <= painted.min() and painted.max() <= 1
        union = np.zeros(shape, bool)
        for info in infos:
            _check_record(info, shape)
            union |= _placed(info, shape)
            r0, r1, c0, c1 = info["box"]
            touching += r0 == 0 or c0 == 0 or r1 == shape[0] or c1 == shape[1]
        assert np.all(union[mask])
    assert touching > 20  # the border case is what this test is about


@pytest.mark.parametrize("family", defects.FAMILIES)
def test_every_family_is_exact_on_a_small_image(family):
    image = _texture((48, 40), seed=6)
    for seed in range(8):
        rng = np.random.default_rng(seed)
        painted, mask, info = defects.paint_defect(image, rng, family, float(rng.uniform(20, 70)))
        np.testing.assert_array_equal(_changed(painted, image), mask)
        _check_record(info, image.shape)
        np.testing.assert_array_equal(_placed(info, image.shape), mask)


def test_regions_are_dropped_for_json():
    import json

    _, _, infos = defects.paint_defects(_texture((64, 64)), np.random.default_rng(0), 4, size_range=(6, 20))
    text = json.dumps([{k: v for k, v in info.items() if k != "region"} for info in infos])
    assert all("box" in record for record in json.loads(text))


# --------------------------------------------------------------------------------------------
# The box-local helpers equal SciPy over the whole image


def _random_regions(seed: int, count: int = 40):
    """Random irregular regions (thresholded blurred noise in a random rectangle, often cut by the
    border) on images of several shapes, as ``(full mask, box)``."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        shape = (int(rng.integers(5, 70)), int(rng.integers(5, 70)))
        h, w = shape
        bh, bw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        if rng.random() < 0.4:  # push it against a border
            y = 0 if rng.random() < 0.5 else h - bh
        if rng.random() < 0.4:
            x = 0 if rng.random() < 0.5 else w - bw
        full = np.zeros(shape, bool)
        full[y : y + bh, x : x + bw] = gaussian_filter(rng.standard_normal((bh, bw)), 1.0) > 0
        if not full.any():
            full[y, x] = True
        rows, cols = np.nonzero(full)
        r0, c0 = int(rows.min()), int(cols.min())
        box = defects._Box(full[r0 : rows.max() + 1, c0 : cols.max() + 1].copy(), r0, c0)
        yield full, box


def test_box_distance_transforms_equal_scipy_over_the_whole_image():
    for full, box in _random_regions(0):
        shape = full.shape
        inside = distance_transform_edt(full)
        np.testing.assert_array_equal(defects._distance_inside(box, shape), inside[box.slices])
        reach = 3
        around, grown = defects._distance_around(box, reach, shape)
        np.testing.assert_array_equal(around, distance_transform_edt(~full)[grown.slices])
        # Nothing nearer than `reach` lies outside the grown box.
        outside = np.ones(shape, bool)
        outside[grown.slices] = False
        assert np.all(distance_transform_edt(~full)[outside] > reach)


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_box_dilation_and_local_stats_equal_scipy_over_the_whole_image(iterations):
    rng = np.random.default_rng(iterations)
    for full, box in _random_regions(iterations):
        shape = full.shape
        want = binary_dilation(full, iterations=iterations)
        np.testing.assert_array_equal(defects._dilated(box, iterations, shape).full(shape), want)
        image = rng.random((*shape, 2)).astype(np.float32)
        mean, std = defects._local_stats(image, box, iterations)
        np.testing.assert_array_equal(mean, image[want].mean(axis=0))
        assert std == float(image[want].std()) + 1e-3


@pytest.mark.parametrize("sigma", [0.5, 1.2, 3.0])
def test_box_blur_equals_scipy_over_the_whole_image(sigma):
    for full, box in _random_regions(10 + int(sigma * 10)):
        want = gaussian_filter(full.astype(np.float32), sigma)  # SciPy's defaults: mirror, 4 sigma
        np.testing.assert_array_equal(defects._blurred(box, sigma, full.shape), want[box.slices])


def test_box_noise_has_the_statistics_of_a_large_field():
    """Foreign bodies draw their texture for their box only; any window, however small, must look
    like a window of one large smooth-noise field (unit spread, the same correlation), not be
    normalized to itself."""
    rng = np.random.default_rng(0)
    scale = 1.5
    field = gaussian_filter(rng.standard_normal((768, 768)), scale, mode="wrap")
    field /= field.std()
    windows = np.stack([defects._stationary_noise(rng, (4, 4), scale) for _ in range(4000)])
    reference = field[:744, :744].reshape(186, 4, 186, 4).transpose(0, 2, 1, 3).reshape(-1, 4, 4)
    assert abs(windows.std() - 1) < 0.05
    assert abs(windows.mean()) < 0.05
    # Windows vary as a whole like windows of the large field (their means spread alike) ...
    np.testing.assert_allclose(windows.mean(axis=(1, 2)).std(), reference.mean(axis=(1, 2)).std(), rtol=0.08)
    # ... and neighbours correlate alike.
    lag = lambda a: np.corrcoef(a[:, :, :-1].ravel(), a[:, :, 1:].ravel())[0, 1]  # noqa: E731
    np.testing.assert_allclose(lag(windows), lag(reference), atol=0.03)
    big = defects._stationary_noise(rng, (300, 300), scale)
    np.testing.assert_allclose(np.corrcoef(big[:, :-2].ravel(), big[:, 2:].ravel())[0, 1],
                               np.corrcoef(field[:, :-2].ravel(), field[:, 2:].ravel())[0, 1], atol=0.03)


def test_opaque_foreign_bodies_keep_their_faint_texture():
    """The texture of an opaque body spreads 0.3 local standard deviations, as before the noise
    was drawn for the box only (checked on the body's interior, away from its soft edge)."""
    ratios = []
    image = _texture((160, 160), seed=7)
    for seed in range(60):
        painted, mask, info = defects.paint_defect(image, np.random.default_rng(seed), "foreign", 40)
        if not info["opaque"] or info["particles"] > 1:
            continue
        interior = binary_erosion(mask, iterations=4)
        ring = binary_dilation(mask, iterations=10) & ~mask
        values = painted[interior]
        if interior.sum() < 100 or values.min() <= 0 or values.max() >= 1:  # clipped: no spread to see
            continue
        ratios.append(values.std() / image[ring].std())
    assert len(ratios) >= 5
    assert 0.2 < np.median(ratios) < 0.4
