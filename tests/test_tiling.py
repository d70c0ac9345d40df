"""In-graph tiling and overlap averaging against a plain NumPy reference."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfssim import scoring, tiling
from tfssim.models import build_model
from tfssim.ssim import ssim_maps


def numpy_reconstruct(image: np.ndarray, patch: int, stride: int, fn) -> np.ndarray:
    """Obvious reference: loop over tile origins min(i*s, n-p), sum and count."""
    h, w, _ = image.shape
    oy = sorted({min(v, h - patch) for v in range(0, h, stride)})
    ox = sorted({min(v, w - patch) for v in range(0, w, stride)})
    total = np.zeros_like(image, dtype=np.float64)
    count = np.zeros((h, w, 1))
    for y in oy:
        for x in ox:
            total[y : y + patch, x : x + patch] += fn(image[y : y + patch, x : x + patch])
            count[y : y + patch, x : x + patch] += 1
    assert count.min() >= 1, "reference must cover every pixel"
    return total / count


def position_dependent(t):
    """A tile function whose output depends on the position inside the tile, so misplaced tiles show."""
    ramp = np.linspace(0, 0.3, 128, dtype=np.float32)
    if isinstance(t, np.ndarray):
        return t**2 + ramp[None, :, None]
    return t**2 + tf.constant(ramp)[None, None, :, None]


@pytest.mark.parametrize("size", [(128, 128), (130, 257), (700, 1024), (696, 1024)])
@pytest.mark.parametrize("stride", [30, 64, 128])
def test_reconstruction_equals_numpy_reference(size, stride):
    image = np.random.default_rng(size[0] + stride).random((*size, 1)).astype(np.float32)
    got = tiling.reconstruct(position_dependent, image, 128, stride, chunk_size=97).numpy()
    want = numpy_reconstruct(image, 128, stride, position_dependent)
    assert got.shape == image.shape
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_origins_cover_borders_exactly_without_repeats():
    origins = tiling.tile_origins(700, 128, 30).numpy()
    assert origins[0] == 0 and origins[-1] == 700 - 128
    assert len(set(origins)) == len(origins) == 21
    assert np.all(np.diff(origins) <= 30)
    assert tiling.tile_grid(700, 1024, 128, 30).shape == (651, 2)  # the paper's 21 x 31 tiles
    assert tiling.tile_origins(128, 128, 30).numpy().tolist() == [0]


def test_chunk_size_and_tensor_stride_do_not_change_the_result():
    image = np.random.default_rng(1).random((150, 170, 2)).astype(np.float32)
    fn = lambda t: tf.sqrt(t + 1.0)  # noqa: E731
    a = tiling.reconstruct(fn, image, 64, 20, chunk_size=1).numpy()
    b = tiling.reconstruct(fn, image, 64, tf.constant(20), chunk_size=1000).numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, np.sqrt(image + 1.0), atol=1e-6)  # identity-like fn: averaging is exact


def test_coverage_counts_tiles_per_pixel():
    cov = tiling.coverage(100, 100, 64, 18).numpy()[..., 0]
    ref = np.zeros((100, 100))
    for y in tiling.tile_origins(100, 64, 18).numpy():
        for x in tiling.tile_origins(100, 64, 18).numpy():
            ref[y : y + 64, x : x + 64] += 1
    np.testing.assert_array_equal(cov, ref)


@pytest.mark.parametrize("stride, message", [(0, ">= 1"), (129, "larger than the patch size")])
def test_bad_stride_is_a_clear_error(stride, message):
    with pytest.raises(ValueError, match=message):
        tiling.reconstruct(lambda t: t, np.zeros((200, 200, 1), np.float32), 128, stride)


def test_sampled_reconstruction_averages_each_sample_separately():
    image = np.random.default_rng(2).random((90, 110, 1)).astype(np.float32)
    fn = lambda t: tf.stack([t, 2 * t, 3 * t])  # noqa: E731  three "samples"
    got = tiling.reconstruct(fn, image, 32, 10, chunk_size=7, samples=3).numpy()
    np.testing.assert_allclose(got, np.stack([image, 2 * image, 3 * image]), atol=1e-5)


def test_ssim_anomaly_map_equals_ssim_of_input_and_averaged_reconstruction():
    model = build_model("ssim", 32, 1, 8)
    image = np.random.default_rng(3).random((70, 90, 1)).astype(np.float32)
    out = scoring.anomaly_maps(model, image, residual="ssim", patch_size=32, stride=8,
                               ssim_kwargs={"window_size": 7, "sigma": 1.5, "k1": 0.01, "k2": 0.03})
    recon = numpy_reconstruct(image, 32, 8, lambda t: model(t[None], training=False).numpy()[0])
    np.testing.assert_allclose(out["reconstruction"].numpy(), recon, atol=1e-5)
    # The maps are SSIM of the input and the (reference-checked) averaged reconstruction.
    maps = ssim_maps(image[None], out["reconstruction"][None], window_size=7, padding="same", blur="conv")
    np.testing.assert_allclose(out["anomaly_map"].numpy(), 1 - maps.ssim.numpy()[0, ..., 0], atol=1e-5)
    np.testing.assert_allclose(out["structure_map"].numpy(), 1 - maps.structure.numpy()[0, ..., 0], atol=1e-5)
