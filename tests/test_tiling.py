"""In-graph tiling, chunking and overlap averaging against plain NumPy references; scoring."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfssim.core import tiling
from tfssim.core.ssim import ssim_maps
from tfssim.models import build_model, reconstruction_nll, scoring

KERNEL = np.array([[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]], np.float32)


def numpy_origins(n: int, patch: int, stride: int) -> list[int]:
    """Obvious reference: every multiple of the stride that still fits, plus the border tile."""
    origins = list(range(0, n - patch + 1, stride))
    if origins[-1] != n - patch:
        origins.append(n - patch)
    return origins


def numpy_reconstruct(image: np.ndarray, patch: int, stride: int, fn) -> np.ndarray:
    """Loop over tile origins, sum the tile outputs and count the covering tiles per pixel."""
    h, w, _ = image.shape
    total = np.zeros(image.shape, np.float64)
    count = np.zeros((h, w, 1))
    for y in numpy_origins(h, patch, stride):
        for x in numpy_origins(w, patch, stride):
            total[y : y + patch, x : x + patch] += fn(image[y : y + patch, x : x + patch])
            count[y : y + patch, x : x + patch] += 1
    assert count.min() >= 1, "reference must cover every pixel"
    return total / count


def tile_model_np(tile: np.ndarray) -> np.ndarray:
    """A tiny 'model' for one tile [p, p, 1]: zero-padded 3x3 blur (so tiles disagree at their
    borders and the averaging matters) plus a ramp across the tile (so misplaced tiles show)."""
    p = tile.shape[0]
    padded = np.pad(tile[..., 0], 1)
    out = sum(KERNEL[i, j] * padded[i : i + p, j : j + p] for i in range(3) for j in range(3))
    return (out + np.linspace(0, 0.3, p, dtype=np.float32)[None, :])[..., None]


def tile_model_tf(tiles: tf.Tensor) -> tf.Tensor:
    p = tiles.shape[1]
    out = tf.nn.conv2d(tiles, tf.constant(KERNEL)[..., None, None], strides=1, padding="SAME")
    return out + tf.linspace(0.0, 0.3, p)[None, None, :, None]


# One graph (dynamic image size, tensor stride), as in the serving signature: traced once.
RECONSTRUCT_GRAPH = tf.function(
    lambda image, stride: tiling.reconstruct(tile_model_tf, image, 128, stride, chunk_size=50),
    input_signature=[tf.TensorSpec([None, None, 1], tf.float32), tf.TensorSpec([], tf.int32)],
)


@pytest.mark.parametrize("size", [(128, 128), (130, 257), (700, 1024), (696, 1024)])
@pytest.mark.parametrize("stride", [30, 64, 128])
def test_graph_reconstruction_equals_numpy_reference(size, stride):
    image = np.random.default_rng(size[0] + stride).random((*size, 1)).astype(np.float32)
    got = RECONSTRUCT_GRAPH(tf.constant(image), tf.constant(stride)).numpy()
    want = numpy_reconstruct(image, 128, stride, tile_model_np)
    assert got.shape == image.shape
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_eager_reconstruction_with_a_python_stride_equals_the_reference():
    image = np.random.default_rng(5).random((130, 257, 1)).astype(np.float32)
    got = tiling.reconstruct(tile_model_tf, image, 128, 30, chunk_size=7).numpy()
    np.testing.assert_allclose(got, numpy_reconstruct(image, 128, 30, tile_model_np), atol=1e-5)


def test_origins_cover_borders_exactly_without_repeats():
    for n, p, s in [(700, 128, 30), (1024, 128, 30), (696, 128, 64), (130, 128, 30), (257, 128, 128), (33, 32, 1)]:
        got = tiling.tile_origins(n, p, s).numpy().tolist()
        assert got == numpy_origins(n, p, s), (n, p, s)
        assert got[0] == 0 and got[-1] == n - p and len(set(got)) == len(got)
    assert tiling.tile_origins(700, 128, tf.constant(30)).shape == (21,)
    assert tiling.tile_grid(700, 1024, 128, 30).shape == (651, 2)  # the paper's 21 x 31 tiles
    assert tiling.num_tiles(700, 1024, 128, 30) == 651
    assert tiling.tile_origins(128, 128, 30).numpy().tolist() == [0]


def test_extract_tiles_gathers_the_right_pixels():
    image = np.random.default_rng(1).random((70, 95, 3)).astype(np.float32)
    tiles, origins = tiling.extract_tiles(image, 32, 20)
    oy, ox = numpy_origins(70, 32, 20), numpy_origins(95, 32, 20)
    assert tiles.shape == (len(oy) * len(ox), 32, 32, 3)
    want = [(y, x) for y in oy for x in ox]
    assert origins.numpy().tolist() == [list(o) for o in want]
    for tile, (y, x) in zip(tiles.numpy(), want):
        np.testing.assert_array_equal(tile, image[y : y + 32, x : x + 32])
    # Tensor stride and dynamic size in a graph give the same tiles.
    graph = tf.function(lambda im, s: tiling.extract_tiles(im, 32, s),
                        input_signature=[tf.TensorSpec([None, None, 3]), tf.TensorSpec([], tf.int32)])
    np.testing.assert_array_equal(graph(image, tf.constant(20))[0].numpy(), tiles.numpy())


def test_average_tiles_is_the_overlap_mean():
    rng = np.random.default_rng(2)
    tiles = rng.random((5, 16, 16, 2)).astype(np.float32)
    oy, ox = np.array([0, 0, 10, 20, 4]), np.array([0, 9, 3, 30, 30])
    got = tiling.average_tiles(tiles, oy, ox, 40, 50).numpy()
    total, count = np.zeros((40, 50, 2)), np.zeros((40, 50, 1))
    for t, y, x in zip(tiles, oy, ox):
        total[y : y + 16, x : x + 16] += t
        count[y : y + 16, x : x + 16] += 1
    np.testing.assert_allclose(got, np.where(count > 0, total / np.maximum(count, 1), 0), atol=1e-6)
    # Averaging the extracted tiles of an image gives the image back.
    image = rng.random((70, 95, 1)).astype(np.float32)
    tiles, origins = tiling.extract_tiles(image, 32, 17)
    np.testing.assert_allclose(tiling.average_tiles(tiles, origins[:, 0], origins[:, 1], 70, 95), image, atol=1e-6)


def test_coverage_counts_tiles_per_pixel():
    cov = tiling.coverage(100, 100, 64, 18).numpy()[..., 0]
    ref = np.zeros((100, 100))
    for y in numpy_origins(100, 64, 18):
        for x in numpy_origins(100, 64, 18):
            ref[y : y + 64, x : x + 64] += 1
    np.testing.assert_array_equal(cov, ref)


def test_model_sees_bounded_chunks_and_every_tile_once():
    """Memory is bounded by the chunk: the model never gets more than chunk_size tiles."""
    seen = tf.Variable(0)

    def fn(tiles):
        tf.debugging.assert_less_equal(tf.shape(tiles)[0], 10, message="chunk too large")
        seen.assign_add(tf.shape(tiles)[0])
        return tiles

    image = np.random.default_rng(3).random((300, 1000, 1)).astype(np.float32)  # 9 x 31 tiles
    graph = tf.function(lambda im: tiling.reconstruct(fn, im, 32, 32, chunk_size=10),
                        input_signature=[tf.TensorSpec([None, None, 1])])
    np.testing.assert_allclose(graph(image).numpy(), image, atol=1e-6)
    assert int(seen.numpy()) == tiling.num_tiles(300, 1000, 32, 32) == 10 * 32


def test_map_in_chunks_equals_one_call():
    tiles = tf.random.uniform([23, 8, 8, 1], seed=1)
    calls = tf.Variable(0)

    def fn(t):
        calls.assign_add(1)
        return tf.sqrt(t) * 2.0

    got = tf.function(lambda t: tiling.map_in_chunks(fn, t, 5))(tiles)
    np.testing.assert_allclose(got.numpy(), tf.sqrt(tiles).numpy() * 2.0, atol=1e-6)
    assert int(calls.numpy()) == 5  # ceil(23 / 5) chunks


def test_chunk_size_and_tensor_stride_do_not_change_the_result():
    image = np.random.default_rng(1).random((150, 170, 2)).astype(np.float32)
    fn = lambda t: tf.sqrt(t + 1.0)  # noqa: E731
    a = tiling.reconstruct(fn, image, 64, 20, chunk_size=1).numpy()
    b = tiling.reconstruct(fn, image, 64, tf.constant(20), chunk_size=1000).numpy()
    c = tiling.reconstruct(fn, image, 64, 20, chunk_size=5).numpy()  # a part of a tile row per step
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)
    np.testing.assert_allclose(a, np.sqrt(image + 1.0), atol=1e-6)  # pointwise fn: averaging is exact


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stride": 0}, "stride must be >= 1"),
        ({"stride": 129}, "stride must be <= the patch size 128"),
        ({"shape": (100, 200, 1)}, "smaller than the 128x128 patch"),
        ({"chunk_size": 0}, "chunk size must be a positive integer"),
    ],
)
def test_bad_arguments_are_clear_value_errors(kwargs, message):
    image = np.zeros(kwargs.pop("shape", (200, 200, 1)), np.float32)
    with pytest.raises(ValueError, match=message):
        tiling.reconstruct(lambda t: t, image, 128, **{"stride": 30, **kwargs})


@pytest.mark.parametrize(
    "shape, stride, message",
    [((200, 200), 0, "stride must be >= 1"), ((200, 200), 129, "stride must be <= the patch size 128"),
     ((200, 100), 30, "at least the patch size 128")],
)
def test_dynamic_bad_arguments_fail_in_the_graph_with_a_message(shape, stride, message):
    graph = tf.function(lambda im, s: tiling.reconstruct(lambda t: t, im, 128, s),
                        input_signature=[tf.TensorSpec([None, None, 1]), tf.TensorSpec([], tf.int32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        graph(tf.zeros([*shape, 1]), tf.constant(stride))


def test_sampled_reconstruction_averages_each_sample_separately():
    image = np.random.default_rng(2).random((90, 110, 2)).astype(np.float32)
    fn = lambda t: tf.stack([t, 2 * t, 3 * t])  # noqa: E731  three "samples"
    got = tiling.reconstruct(fn, image, 32, 10, chunk_size=7, samples=3).numpy()
    np.testing.assert_allclose(got, np.stack([image, 2 * image, 3 * image]), atol=1e-5)
    ramp = lambda t: tf.stack([tile_model_tf(t), -tile_model_tf(t)])  # noqa: E731
    got = tiling.reconstruct(ramp, image[..., :1], 32, 12, chunk_size=4, samples=2).numpy()
    want = numpy_reconstruct(image[..., :1], 32, 12, tile_model_np)
    np.testing.assert_allclose(got[0], want, atol=1e-5)
    np.testing.assert_allclose(got[1], -want, atol=1e-5)


SSIM = {"window_size": 7, "sigma": 1.5, "k1": 0.01, "k2": 0.03}


@pytest.mark.slow  # 11 s measured (2 cores shared with other jobs)
def test_ssim_anomaly_map_equals_ssim_of_input_and_averaged_reconstruction():
    model = build_model("ssim", 32, 1, 8)
    image = np.random.default_rng(3).random((70, 90, 1)).astype(np.float32)
    out = scoring.anomaly_maps(model, image, "ssim", stride=8, ssim_kwargs=SSIM)
    recon = numpy_reconstruct(image, 32, 8, lambda t: model(t[None], training=False).numpy()[0])
    np.testing.assert_allclose(out["reconstruction"].numpy(), recon, atol=1e-5)
    maps = ssim_maps(image[None], out["reconstruction"][None], padding="same", **SSIM)
    for key, component in [("anomaly_map", maps.ssim), ("luminance_map", maps.luminance),
                           ("contrast_map", maps.contrast), ("structure_map", maps.structure)]:
        assert out[key].shape == (70, 90)
        np.testing.assert_allclose(out[key].numpy(), 1 - component.numpy()[0, ..., 0], atol=1e-5, err_msg=key)


def test_l2_and_fm_maps_are_the_squared_error():
    model = build_model("l2", 32, 3, 8)
    image = np.random.default_rng(4).random((40, 50, 3)).astype(np.float32)
    for kind in ("l2", "fm"):
        out = scoring.anomaly_maps(model, image, kind, stride=16)
        assert set(out) == {"reconstruction", "anomaly_map"}
        want = np.mean((image - out["reconstruction"].numpy()) ** 2, axis=-1)
        np.testing.assert_allclose(out["anomaly_map"].numpy(), want, atol=1e-6)
    assert scoring.residual_of("fm") == "l2" and scoring.residual_of("vae") == "vae"


def test_vae_map_is_the_nll_of_per_sample_averaged_reconstructions():
    model = build_model("vae", 32, 1, 8)
    image = np.random.default_rng(5).random((40, 50, 1)).astype(np.float32)
    out = scoring.anomaly_maps(model, image, stride=16, vae_samples=4, chunk_size=3)  # kind inferred: vae
    samples = tiling.reconstruct(lambda t: model.sample_reconstructions(t, 4, seed=0), image, 32, 16, 3, samples=4)
    want = reconstruction_nll(image[None], samples[:, None], model.observation_std)[0]
    np.testing.assert_allclose(out["anomaly_map"].numpy(), want.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["reconstruction"].numpy(), tf.reduce_mean(samples, 0).numpy(), atol=1e-6)
    again = scoring.anomaly_maps(model, image, "vae", stride=16, vae_samples=4, chunk_size=3)
    np.testing.assert_array_equal(again["anomaly_map"].numpy(), out["anomaly_map"].numpy())  # fixed seed


def test_unknown_ssim_parameter_is_refused():
    with pytest.raises(ValueError, match="unknown SSIM parameter"):
        scoring.ssim_residual_maps(tf.zeros([40, 40, 1]), tf.zeros([40, 40, 1]), window=7)
