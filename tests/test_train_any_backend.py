"""scripts/train_any_backend.py (Keras-3 trainer for any backend), run here on the TensorFlow backend.

Its SSIM, losses, reader and sampling rule are the library's (checked in their own tests); here:
its patch sampler against brute-force crop search and the library's image weights, its reader
on 16-bit files, and ``main`` end to end on a tiny folder:
run folder contents, resume, ``--time-limit`` stops, the folder loading in ``tfssim-export``,
and bad input; and, in a subprocess on JAX where ``import tensorflow`` fails, that it runs without
TensorFlow and resumes with the run's recorded settings (the library's rule, :mod:`tfssim.run_record`).
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
from skimage import data as skdata
from skimage import io

from tfssim.core.losses import SSIMLoss
from tfssim.core.ssim import SSIMParams

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


# --------------------------------------------------------------------------- losses
# The script's SSIM is the library's (tfssim.core.losses.SSIMLoss on tfssim.core.ssim, checked against
# tf.image.ssim and scikit-image in tests/test_ssim.py, on JAX too); here: that it is used, with
# the arguments' parameters.
@pytest.mark.slow  # 53 s measured here (trains, on a loaded 2-core machine)
def test_uniform_run_exports_with_its_weighting(grass_folder, tmp_path):
    from tfssim.export import load_for_export

    run = tmp_path / "uniform"
    assert tab.main([str(grass_folder), "--output", str(run), *TINY, "--epochs", "1", "--ssim-weighting", "uniform"]) == 0
    state = keras.saving.load_model(run / "state.keras")
    assert state.loss.weighting == "uniform"
    _, info = load_for_export(run)
    assert info["ssim"]["weighting"] == "uniform"


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
        hits.extend((k, int(t), int(c)) for t, c in zip(*np.nonzero(match)))
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
    assert origins == {(t, c) for t in range(5) for c in range(5)}


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
                              "weighting": "gaussian", "alpha": 1.0, "beta": 1.0, "gamma": 1.0}
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
    assert isinstance(state.loss, SSIMLoss) and state.loss.params == SSIMParams(window_size=11)

    # The run folder loads as a tfssim-train run folder would.
    model, info = load_for_export(run)
    assert info["kind"] == "ssim"
    assert info["ssim"]["window_size"] == 11 and info["ssim"]["sigma"] == 1.5
    assert info["model_path"] == str(run / "final.keras")
    assert tuple(model.inputs[0].shape[1:]) == (32, 32, 1)
    x = tab.sample_patches([io.imread(grass_folder / "img_2.png")[..., None] / np.float32(255)], 2, 32,
                           np.random.default_rng(0), False)
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
    assert "learning_rate was 0.0002, now 0.001" in str(err.value) and str(run) in str(err.value)
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
    with pytest.raises(SystemExit, match="whose images differ from those the run") as err:
        tab.main([str(other), "--output", str(run), *TINY, "--epochs", "3"])
    assert "2 training image(s) missing (img_0.png, img_1.png)" in str(err.value.code)
    assert len(_history(run)) == 2


def test_sixteen_bit_images_are_read_at_full_depth(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    codes = [(skdata.grass()[:80, :96].astype(np.uint16) * 257 + i) for i in range(3)]
    for i, image in enumerate(codes):
        io.imsave(folder / f"{i}.png", image, check_contrast=False)
    train_files, val_files, train, val = tab.read_split(folder, 1, 32)
    assert [p.name for p in train_files] == ["0.png", "1.png"] and [p.name for p in val_files] == ["2.png"]
    for image, expected in zip(train + val, codes):
        assert image.dtype == np.float32 and image.shape == (80, 96, 1)
        np.testing.assert_allclose(image[..., 0], expected / 65535.0, atol=1e-7)


def test_images_are_drawn_by_their_number_of_patch_origins():
    # A 47x47 image offers 16x16 = 256 origins for 32-pixel patches, a 32x32 one 1: 256/257 of the draws.
    big = np.zeros((47, 47, 1), np.float32)
    small = np.ones((32, 32, 1), np.float32)
    patches = tab.sample_patches([big, small], 4000, 32, np.random.default_rng(0), augment=False)
    share_small = float(np.mean(patches[:, 0, 0, 0] == 1.0))
    assert share_small == pytest.approx(1 / 257, abs=0.004)


# --------------------------------------------------------------------------- the run folder's record
def test_parse_args_tells_given_arguments_from_defaults(tmp_path):
    args, given = tab.parse_args([str(tmp_path), "--output", str(tmp_path / "run"), "--epochs", "3", "--no-augment"])
    assert (args.epochs, args.augment, args.latent_dim) == (3, False, 100)
    assert given == {"images", "output", "epochs", "augment"}
    config = tab.run_config(args)
    # the record's settings are TrainConfig's fields (one schema), plus the script's val_count
    from tfssim.training import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__)
    assert set(config) - fields == {"val_count"}
    assert config["model"] == "ssim" and config["epochs"] == 3 and config["augment"] is False


def _run_script_without_tensorflow(run_without_tensorflow, *argv: str):
    """``main(argv)`` of the script in a fresh interpreter where ``import tensorflow`` fails (the
    test sets ``KERAS_BACKEND=jax``); prints ``EXIT <message>`` for a SystemExit, and what it loaded."""
    code = (
        "import runpy, sys\n"
        "script = runpy.run_path('scripts/train_any_backend.py', run_name='tfssim_any_backend')\n"
        "try:\n"
        "    code = script['main'](sys.argv[1:])\n"
        "except SystemExit as err:\n"
        "    print('EXIT', err.code); code = 9\n"
        "print('TENSORFLOW_LOADED', 'tensorflow' in sys.modules, 'BACKEND', script['keras'].backend.backend())\n"
        "sys.exit(code)\n"
    )
    return run_without_tensorflow(code, *argv, timeout=600)


@pytest.fixture
def on_jax(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("jax") is None:  # not in the test extra: CI stays within its time
        pytest.skip("jax is not installed (pip install jax jaxlib: CPU wheels from PyPI)")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")


@pytest.mark.slow  # three fresh JAX interpreters, two tiny runs: 295 s measured on the loaded 2-core machine (86 s CPU)
def test_runs_and_resumes_on_jax_where_tensorflow_cannot_be_imported(run_without_tensorflow, on_jax, grass_folder,
                                                                     tmp_path):
    run = tmp_path / "run"
    first = _run_script_without_tensorflow(run_without_tensorflow, str(grass_folder), "--output", str(run), *TINY,
                                           "--epochs", "1", "--seed", "5", "--steps-per-execution", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "TENSORFLOW_LOADED False BACKEND jax" in first.stdout
    record = json.loads((run / "config.json").read_text())
    assert record["versions"]["backend"] == "jax" and record["config"]["seed"] == 5
    assert record["data_fingerprint"]["algorithm"] == "sha256"
    # Resumed with DATA and --output alone: the recorded settings, not the defaults (patch 128 would not
    # even fit these 80x96 images), and only --epochs given anew.
    again = _run_script_without_tensorflow(run_without_tensorflow, str(grass_folder), "--output", str(run),
                                           "--epochs", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming after epoch 1" in again.stdout and "TENSORFLOW_LOADED False" in again.stdout
    assert [r["epoch"] for r in _history(run)] == ["1", "2"]
    assert json.loads((run / "config.json").read_text())["config"] == {**record["config"], "epochs": 2}
    # a given setting that differs is refused by the library's rule, naming it
    changed = _run_script_without_tensorflow(run_without_tensorflow, str(grass_folder), "--output", str(run),
                                             "--epochs", "3", "--latent-dim", "4")
    assert "EXIT error: --resume with settings that differ" in changed.stdout
    assert "latent_dim was 8, now 4" in changed.stdout
    assert [r["epoch"] for r in _history(run)] == ["1", "2"]


def test_script_imports_without_tensorflow(run_without_tensorflow, on_jax, tmp_path):
    """Importing the script (keras on JAX, the library's TF-free modules) loads no TensorFlow."""
    code = (
        "import runpy, sys, json\n"
        "script = runpy.run_path('scripts/train_any_backend.py', run_name='tfssim_any_backend')\n"
        "args, given = script['parse_args']([sys.argv[1], '--output', sys.argv[2], '--latent-dim', '8'])\n"
        "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'backend': script['keras'].backend.backend(),\n"
        "                  'given': sorted(given), 'model': script['run_config'](args)['model']}))\n"
    )
    done = run_without_tensorflow(code, str(tmp_path), str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"tf": False, "backend": "jax", "given": ["images", "latent_dim", "output"], "model": "ssim"}
