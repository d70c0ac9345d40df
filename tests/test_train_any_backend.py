"""scripts/train_any_backend.py (Keras-3 trainer for any backend), run here on the TensorFlow backend.

Its SSIM loss is checked against scikit-image's ``structural_similarity`` and ``tf.image.ssim``,
its patch sampler against brute-force crop search, and ``main`` end to end on a tiny folder:
run folder contents, resume, ``--time-limit`` stops, the folder loading in ``tfssim-export``,
and bad input.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import scipy.ndimage as ndi
import tensorflow as tf
from skimage import data as skdata
from skimage import io
from skimage.metrics import structural_similarity

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_any_backend.py"
MODULE_NAME = "tfssim_test_train_any_backend"


def _load_script():
    # Loaded once per process: the script registers its losses as Keras serializables.
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    spec = importlib.util.spec_from_file_location(MODULE_NAME, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


tab = _load_script()

TINY = ["--patches-per-epoch", "32", "--batch-size", "16", "--patch-size", "32", "--latent-dim", "8",
        "--val-patches", "16"]


# --------------------------------------------------------------------------- SSIM
def _crop(image: np.ndarray, top: int, left: int, size: int = 64) -> np.ndarray:
    return image[top:top + size, left:left + size].astype(np.float64) / 255.0


def _degrade(a: np.ndarray, seed: int) -> np.ndarray:
    """Blurred and noisy version of ``a`` (float64 in [0, 1])."""
    rng = np.random.default_rng(seed)
    return np.clip(ndi.gaussian_filter(a, 1.0) + rng.normal(0, 0.05, a.shape), 0, 1)


def _skimage_valid_mean(a: np.ndarray, b: np.ndarray, win_size: int = 11, sigma: float = 1.5) -> float:
    """skimage's SSIM map (Wang et al. settings) averaged over the windows that lie inside the image.

    With ``gaussian_weights`` skimage's window is ``2 * int(3.5 * sigma + 0.5) + 1`` taps (11 for
    sigma 1.5, 7 for sigma 0.8); ``win_size`` only sets the border cropped here.
    """
    _, full = structural_similarity(a, b, gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
                                    data_range=1.0, win_size=win_size, full=True)
    r = (win_size - 1) // 2
    return float(full[r:-r, r:-r].mean())


def _tf_ssim(a: np.ndarray, b: np.ndarray, win_size: int = 11, sigma: float = 1.5) -> np.ndarray:
    return tf.image.ssim(tf.constant(a, tf.float32), tf.constant(b, tf.float32), max_val=1.0,
                         filter_size=win_size, filter_sigma=sigma, k1=0.01, k2=0.03).numpy()


@pytest.fixture(scope="module")
def gray_pairs() -> tuple[np.ndarray, np.ndarray]:
    """Two 64x64 texture crops (brick, grass) and their blurred+noisy versions, ``[2, 64, 64, 1]``."""
    a = np.stack([_crop(skdata.brick(), 100, 150), _crop(skdata.grass(), 200, 40)])
    b = np.stack([_degrade(a[0], 1), _degrade(a[1], 2)])
    return a[..., None], b[..., None]


@pytest.mark.parametrize(("size", "sigma"), [(11, 1.5), (7, 0.8), (3, 1.0)])
def test_gaussian_window_is_scipys_gaussian_filter(size, sigma):
    # An independent implementation: SciPy's 1-D Gaussian filter with the same radius, applied
    # to a unit impulse, returns its own (normalised, sampled) kernel. That the window is also
    # tf.image.ssim's is checked through the SSIM values against tf.image.ssim below.
    g = tab.gaussian_window(size, sigma)
    assert g.shape == (size,) and g.dtype == np.float32
    impulse = np.zeros(size)
    impulse[size // 2] = 1.0
    expected = ndi.gaussian_filter1d(impulse, sigma, radius=size // 2, mode="constant", cval=0.0)
    np.testing.assert_allclose(g, expected, rtol=1e-6, atol=1e-9)


def test_ssim_per_sample_matches_skimage_and_tf_on_textures(gray_pairs):
    a, b = gray_pairs
    ours = keras.ops.convert_to_numpy(tab.ssim_per_sample(a, b))
    assert ours.shape == (2,)
    sk = np.array([_skimage_valid_mean(a[i, ..., 0], b[i, ..., 0]) for i in range(2)])
    # The degradation is real: SSIM well below 1 and different for the two textures.
    assert np.all(sk < 0.9) and np.all(sk > 0.05) and abs(sk[0] - sk[1]) > 1e-3
    np.testing.assert_allclose(ours, sk, atol=1e-4)
    np.testing.assert_allclose(ours, _tf_ssim(a, b), atol=1e-5)
    # Per sample, not pooled: swapping the pairs swaps the results.
    swapped = keras.ops.convert_to_numpy(tab.ssim_per_sample(a[::-1], b[::-1]))
    np.testing.assert_allclose(swapped, ours[::-1], atol=1e-6)


def test_uniform_weighting_matches_skimage_plain_means_and_the_library(gray_pairs):
    from tfssim.ssim import ssim as library_ssim

    a, b = gray_pairs
    ours = keras.ops.convert_to_numpy(tab.ssim_per_sample(a, b, weighting="uniform"))
    for i in range(2):
        _, full = structural_similarity(a[i, ..., 0].astype(np.float64), b[i, ..., 0].astype(np.float64), win_size=11,
                                        gaussian_weights=False, use_sample_covariance=False, data_range=1.0, full=True)
        assert ours[i] == pytest.approx(full[5:-5, 5:-5].mean(), abs=1e-4)
    np.testing.assert_allclose(ours, library_ssim(a, b, weighting="uniform").numpy(), atol=1e-5)
    assert np.abs(ours - keras.ops.convert_to_numpy(tab.ssim_per_sample(a, b))).max() > 1e-3


@pytest.mark.slow  # 53 s measured here (trains, on a loaded 2-core machine)
def test_uniform_run_exports_with_its_weighting(grass_folder, tmp_path):
    from tfssim.export import load_for_export

    run = tmp_path / "uniform"
    assert tab.main([str(grass_folder), "--output", str(run), *TINY, "--epochs", "1", "--ssim-weighting", "uniform"]) == 0
    state = keras.saving.load_model(run / "state.keras")
    assert state.loss.weighting == "uniform"
    _, info = load_for_export(run)
    assert info["ssim"]["weighting"] == "uniform"


def test_ssim_per_sample_identical_images_is_one(gray_pairs):
    a, _ = gray_pairs
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tab.ssim_per_sample(a, a)), 1.0, atol=1e-5)


def test_ssim_per_sample_other_window_matches_skimage_and_tf(gray_pairs):
    a, b = gray_pairs
    # A 7-tap window with sigma 0.8 is what skimage's Gaussian filter truncates to at that sigma.
    ours = keras.ops.convert_to_numpy(tab.ssim_per_sample(a, b, window_size=7, sigma=0.8))
    sk = np.array([_skimage_valid_mean(a[i, ..., 0], b[i, ..., 0], win_size=7, sigma=0.8) for i in range(2)])
    np.testing.assert_allclose(ours, sk, atol=1e-4)
    np.testing.assert_allclose(ours, _tf_ssim(a, b, 7, 0.8), atol=1e-5)
    assert np.all(np.abs(ours - keras.ops.convert_to_numpy(tab.ssim_per_sample(a, b))) > 1e-4)


def test_ssim_per_sample_three_channels():
    # Three different textures as R, G, B, each channel degraded differently.
    a = np.stack([_crop(skdata.brick(), 10, 20), _crop(skdata.grass(), 300, 100),
                  _crop(skdata.gravel(), 50, 250)], axis=-1)
    b = np.stack([_degrade(a[..., c], 10 + c) for c in range(3)], axis=-1)
    b[..., 1] = np.clip(b[..., 1] * 0.8 + 0.1, 0, 1)  # a contrast/luminance change on one channel only
    ours = float(keras.ops.convert_to_numpy(tab.ssim_per_sample(a[None], b[None]))[0])
    per_channel = [_skimage_valid_mean(a[..., c], b[..., c]) for c in range(3)]
    assert max(per_channel) - min(per_channel) > 1e-2  # the channels really differ
    assert ours == pytest.approx(np.mean(per_channel), abs=1e-4)
    assert ours == pytest.approx(float(_tf_ssim(a[None], b[None])[0]), abs=1e-5)
    # Channels are not mixed: each channel alone gives skimage's value for that channel.
    for c in range(3):
        alone = keras.ops.convert_to_numpy(tab.ssim_per_sample(a[None, ..., c:c + 1], b[None, ..., c:c + 1]))[0]
        assert float(alone) == pytest.approx(per_channel[c], abs=1e-4)


def test_losses_are_one_minus_ssim_and_mse(gray_pairs):
    a, b = gray_pairs
    ssim = keras.ops.convert_to_numpy(tab.ssim_per_sample(a, b))
    loss = tab.BackendSSIMLoss()
    assert float(loss(a, b)) == pytest.approx(float(np.mean(1.0 - ssim)), abs=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss.call(a, b)), 1.0 - ssim, atol=1e-6)
    clone = tab.BackendSSIMLoss.from_config(tab.BackendSSIMLoss(window_size=7, sigma=1.0).get_config())
    assert (clone.window_size, clone.sigma, clone.k1, clone.k2) == (7, 1.0, 0.01, 0.03)
    l2 = tab.BackendL2Loss(name="l2_loss")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(l2.call(a, b)), np.mean((a - b) ** 2, axis=(1, 2, 3)),
                               rtol=1e-5)


# --------------------------------------------------------------------------- patches
def _dihedral(patch: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of a ``[p, p, C]`` patch."""
    out = []
    for base in (patch, patch[:, ::-1]):
        out.extend(np.rot90(base, k, axes=(0, 1)) for k in range(4))
    return out


def _find_crop(patch: np.ndarray, images: list[np.ndarray]) -> list[tuple[int, int, int]]:
    """Every ``(image index, top, left)`` where ``patch`` is an exact crop."""
    p = patch.shape[0]
    hits = []
    for k, image in enumerate(images):
        windows = np.lib.stride_tricks.sliding_window_view(image, (p, p), axis=(0, 1))  # [h, w, C, p, p]
        match = np.all(windows == np.moveaxis(patch, -1, 0)[None, None], axis=(2, 3, 4))
        hits.extend((k, int(t), int(l)) for t, l in zip(*np.nonzero(match)))
    return hits


@pytest.fixture(scope="module")
def random_images() -> list[np.ndarray]:
    """Two noise images of different sizes (so every crop has exactly one origin)."""
    rng = np.random.default_rng(42)
    return [rng.integers(0, 256, (40, 52, 1), dtype=np.uint8), rng.integers(0, 256, (35, 24, 1), dtype=np.uint8)]


def test_sample_patches_without_augment_are_exact_crops(random_images):
    patches = tab.sample_patches(random_images, 60, 16, np.random.default_rng(7), augment=False)
    assert patches.shape == (60, 16, 16, 1) and patches.dtype == np.uint8
    used = set()
    for patch in patches:
        hits = _find_crop(patch, random_images)
        assert len(hits) == 1, "every patch must be one exact, unflipped crop"
        used.add(hits[0][0])
    assert used == {0, 1}  # both images (of different sizes) are sampled


def test_sample_patches_reach_every_crop_origin():
    # 20x20 image, 16x16 patches: 5x5 possible origins; the sampler must reach the last row/column too.
    image = np.random.default_rng(3).integers(0, 256, (20, 20, 1), dtype=np.uint8)
    patches = tab.sample_patches([image], 400, 16, np.random.default_rng(0), augment=False)
    origins = {_find_crop(patch, [image])[0][1:] for patch in patches}
    assert origins == {(t, l) for t in range(5) for l in range(5)}


def test_sample_patches_with_augment_are_flipped_or_rotated_crops(random_images):
    patches = tab.sample_patches(random_images, 80, 16, np.random.default_rng(11), augment=True)
    assert patches.shape == (80, 16, 16, 1) and patches.dtype == np.uint8
    transformed = 0
    for patch in patches:
        exact = _find_crop(patch, random_images)
        found = [hit for variant in _dihedral(patch) for hit in _find_crop(variant, random_images)]
        assert found, "every augmented patch must be a flip/rotation of a crop"
        transformed += not exact
    # 7 of the 8 transforms change a noise patch: most patches are transformed, not all.
    assert 40 <= transformed < 80


def test_sample_patches_multichannel_and_deterministic():
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (30, 41, 3), dtype=np.uint8), rng.integers(0, 256, (48, 33, 3), dtype=np.uint8)]
    first = tab.sample_patches(images, 25, 16, np.random.default_rng([0, 4]), augment=True)
    again = tab.sample_patches(images, 25, 16, np.random.default_rng([0, 4]), augment=True)
    other = tab.sample_patches(images, 25, 16, np.random.default_rng([0, 5]), augment=True)
    assert first.shape == (25, 16, 16, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    for patch in first:  # the channels move together under flips and rotations
        assert any(_find_crop(variant, images) for variant in _dihedral(patch))
    plain = tab.sample_patches(images, 25, 16, np.random.default_rng([0, 4]), augment=False)
    assert all(len(_find_crop(patch, images)) == 1 for patch in plain)


def test_sample_patches_patch_as_large_as_image():
    image = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16, 1)
    patches = tab.sample_patches([image], 4, 16, np.random.default_rng(0), augment=False)
    np.testing.assert_array_equal(patches, np.broadcast_to(image, (4, 16, 16, 1)))


# --------------------------------------------------------------------------- end to end
def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def grass_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "good"
    folder.mkdir()
    grass = skdata.grass()
    for i, (top, left) in enumerate([(0, 0), (150, 200), (300, 350)]):
        io.imsave(folder / f"img_{i}.png", grass[top:top + 80, left:left + 96], check_contrast=False)
    return folder


@pytest.mark.slow  # 118 s measured here (trains, on a loaded 2-core machine)
def test_main_end_to_end_resume_time_limit_and_export(grass_folder, tmp_path, capsys):
    from tfssim.export import load_for_export

    run = tmp_path / "run"
    base = [str(grass_folder), "--output", str(run), *TINY]
    assert tab.main([*base, "--epochs", "2"]) == 0

    rows = _history(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "loss", "val_loss", "seconds"]
    for r in rows:
        for key in ("loss", "val_loss"):
            value = float(r[key])
            assert np.isfinite(value) and 0.0 < value < 1.5  # 1 - SSIM of [0, 1] images
    assert (run / "final.keras").is_file() and (run / "state.keras").is_file()
    assert not list(run.glob(".tmp-*"))

    record = json.loads((run / "config.json").read_text())
    assert record["model"] == "ssim" and record["patch_size"] == 32 and record["channels"] == 1
    assert record["latent_dim"] == 8
    assert record["ssim"] == {"window_size": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "data_range": 1.0,
                              "weighting": "gaussian"}
    assert record["config"]["epochs"] == 2 and record["config"]["patches_per_epoch"] == 32
    assert record["train_images"] == [str(grass_folder / "img_0.png"), str(grass_folder / "img_1.png")]
    assert record["val_images"] == [str(grass_folder / "img_2.png")]
    assert record["versions"]["backend"] == "tensorflow"

    # Resume: the same command with more epochs continues after epoch 2.
    capsys.readouterr()
    assert tab.main([*base, "--epochs", "3"]) == 0
    assert "resuming after epoch 2" in capsys.readouterr().out
    resumed = _history(run)
    assert [r["epoch"] for r in resumed] == ["1", "2", "3"]
    assert resumed[:2] == rows
    assert np.isfinite(float(resumed[2]["loss"])) and np.isfinite(float(resumed[2]["val_loss"]))
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 3
    state = keras.saving.load_model(run / "state.keras")
    # 3 epochs x 32 patches / 16 per batch: the optimizer state came through the resume.
    assert int(keras.ops.convert_to_numpy(state.optimizer.iterations)) == 6
    assert isinstance(state.loss, tab.BackendSSIMLoss)

    # The run folder loads as a tfssim-train run folder would.
    model, info = load_for_export(run)
    assert info["kind"] == "ssim"
    assert info["ssim"]["window_size"] == 11 and info["ssim"]["sigma"] == 1.5
    assert info["model_path"] == str(run / "final.keras")
    assert tuple(model.inputs[0].shape[1:]) == (32, 32, 1)
    x = tab.sample_patches([io.imread(grass_folder / "img_2.png")[..., None]], 2, 32,
                           np.random.default_rng(0), False).astype(np.float32) / 255.0
    np.testing.assert_allclose(model.predict(x, verbose=0), state.predict(x, verbose=0), atol=1e-6)

    # --time-limit: the check before each epoch adds 1.2 x the previous epoch's duration (0 before the
    # first epoch of this process), so a 0.5 s limit lets exactly one epoch run (an epoch, with the
    # fit/evaluate tracing of a freshly loaded model, takes far longer than 0.5 / 2.2 s), then exits 3.
    final_mtime = (run / "final.keras").stat().st_mtime_ns
    capsys.readouterr()
    assert tab.main([*base, "--epochs", "5", "--time-limit", "0.5"]) == 3
    assert "time limit: stopped after epoch 4" in capsys.readouterr().out
    limited = _history(run)
    assert [r["epoch"] for r in limited] == ["1", "2", "3", "4"] and limited[:3] == resumed
    assert (run / "final.keras").stat().st_mtime_ns == final_mtime  # not a finished run: no new final model

    # A zero limit stops before any epoch and writes nothing more.
    assert tab.main([*base, "--epochs", "5", "--time-limit", "0"]) == 3
    assert _history(run) == limited

    # Resuming with a setting that state.keras would silently override is refused, config.json kept.
    config_before = (run / "config.json").read_text()
    with pytest.raises(SystemExit) as err:
        tab.main([*base, "--epochs", "5", "--learning-rate", "1e-3"])
    assert "learning_rate 0.0002 -> 0.001" in str(err.value) and str(run) in str(err.value)
    assert (run / "config.json").read_text() == config_before and _history(run) == limited


@pytest.mark.slow  # 33 s measured here (trains, on a loaded 2-core machine)
def test_main_l2_loss_writes_l2_run(grass_folder, tmp_path):
    run = tmp_path / "l2"
    assert tab.main([str(grass_folder), "--output", str(run), *TINY, "--epochs", "1", "--loss", "l2",
                     "--no-augment", "--steps-per-execution", "1"]) == 0
    record = json.loads((run / "config.json").read_text())
    assert record["model"] == "l2" and record["config"]["augment"] is False
    (row,) = _history(run)
    assert np.isfinite(float(row["loss"])) and 0.0 < float(row["loss"]) < 1.0  # MSE of [0, 1] images


# --------------------------------------------------------------------------- bad input
def test_too_few_images_names_the_folder(tmp_path):
    folder = tmp_path / "only_one"
    folder.mkdir()
    io.imsave(folder / "a.png", skdata.grass()[:80, :96], check_contrast=False)
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(SystemExit) as err:
        tab.main([str(folder), "--output", str(tmp_path / "run"), *TINY, "--epochs", "1"])
    assert str(folder) in str(err.value.code) and "1 images" in str(err.value.code)
    assert not (tmp_path / "run").exists()


def test_missing_folder_and_small_images_are_rejected(tmp_path):
    with pytest.raises(SystemExit, match="not a folder"):
        tab.main([str(tmp_path / "nope"), "--output", str(tmp_path / "run"), *TINY])
    folder = tmp_path / "small"
    folder.mkdir()
    for i in range(2):
        io.imsave(folder / f"{i}.png", skdata.grass()[:24, :40], check_contrast=False)
    with pytest.raises(SystemExit, match="smaller than the patch") as err:
        tab.main([str(folder), "--output", str(tmp_path / "run"), *TINY])
    assert str(folder / "0.png") in str(err.value.code)


@pytest.mark.parametrize("bad", [["--ssim-window", "4"], ["--ssim-window", "0"], ["--epochs", "0"],
                                 ["--batch-size", "0"], ["--val-count", "0"], ["--patch-size", "40"],
                                 ["--patch-size", "0"], ["--ssim-window", "35"]])
def test_bad_arguments_are_argparse_errors(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as err:
        tab.main([str(tmp_path), "--output", str(tmp_path / "run"), *TINY, *bad])
    assert err.value.code == 2
    assert bad[0] in capsys.readouterr().err


@pytest.mark.slow  # 60 s measured here (trains, on a loaded 2-core machine)
def test_resume_refuses_other_images_and_keeps_where_earlier_legs_ran(grass_folder, tmp_path):
    run = tmp_path / "run"
    assert tab.main([str(grass_folder), "--output", str(run), *TINY, "--epochs", "1"]) == 0
    # An earlier leg on another device: its name stays on record after a resume here.
    record = json.loads((run / "config.json").read_text())
    record["device"] = "NVIDIA H100 80GB HBM3"
    (run / "config.json").write_text(json.dumps(record))
    assert tab.main([str(grass_folder), "--output", str(run), *TINY, "--epochs", "2"]) == 0
    record = json.loads((run / "config.json").read_text())
    assert record["devices"] == ["NVIDIA H100 80GB HBM3", "cpu"] and record["device"] == "NVIDIA H100 80GB HBM3 + cpu"

    other = tmp_path / "other"
    other.mkdir()
    for i in range(3):
        io.imsave(other / f"x_{i}.png", skdata.grass()[:80, :96], check_contrast=False)
    with pytest.raises(SystemExit, match="train_images"):
        tab.main([str(other), "--output", str(run), *TINY, "--epochs", "3"])
    assert len(_history(run)) == 2


def test_sixteen_bit_images_are_a_clear_error(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    for i in range(2):
        io.imsave(folder / f"{i}.png", (skdata.grass()[:80, :96].astype(np.uint16) * 257), check_contrast=False)
    with pytest.raises(SystemExit, match="uint16 image"):
        tab.main([str(folder), "--output", str(tmp_path / "run"), *TINY])
