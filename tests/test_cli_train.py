"""tfssim-train end to end: run folder contents, bad input, resume after a killed process."""
from __future__ import annotations

import csv
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner, Result
from skimage import io

from tfssim.cli.train import main

TINY = ["--patch-size", "32", "--latent-dim", "8", "--batch-size", "8", "--patches-per-epoch", "32"]
# The cheapest real training run: one batch of 16 patches of 32x32 per epoch.
ONE_STEP = ["--patch-size", "32", "--latent-dim", "8", "--batch-size", "16", "--patches-per-epoch", "16"]


def _texture(seed: int, shape=(80, 96)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    stripes = 0.5 + 0.3 * np.sin(xx / 3.0 + rng.uniform(0, 6)) * np.cos(yy / 5.0)
    return np.clip(stripes + rng.normal(0, 0.05, shape), 0, 1)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "good"
    folder.mkdir()
    for i in range(4):
        io.imsave(folder / f"img{i}.png", (_texture(i) * 255).astype(np.uint8), check_contrast=False)
    return folder


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as fh:
        return list(csv.DictReader(fh))


def assert_one_error_line(result: Result, problem: str, fix: str, exit_code: int = 2) -> str:
    """A clean failure: the exit status, no exception but SystemExit, one ``Error:`` line with both parts."""
    assert result.exit_code == exit_code, result.output
    # CliRunner keeps an unhandled exception (which would print a traceback) in result.exception.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert problem in errors[0], errors[0]
    assert fix in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def vgg16_weights(tmp_path_factory) -> str:
    """A local VGG16 (no top) weights file with random weights: stands in for the ImageNet download."""
    path = tmp_path_factory.mktemp("vgg") / "vgg16_notop.weights.h5"
    keras.applications.VGG16(weights=None, include_top=False).save_weights(str(path))
    return str(path)


RUN_ARGS = ["--epochs", "2", "--val-split", "0.25", "--patch-size", "32", "--latent-dim", "8",
            "--batch-size", "16", "--patches-per-epoch", "64"]


# Only the SSIM model in the quick loop (``-m "not slow"``); the others took 25-53 s each there
# on the loaded 2-core machine.
_SLOW = pytest.mark.slow


@pytest.mark.parametrize("kind, extra", [("ssim", []), pytest.param("l2", [], marks=_SLOW),
                                         pytest.param("vae", [], marks=_SLOW), pytest.param("fm", ["<config>"], marks=_SLOW),
                                         pytest.param("ssim", ["--rgb"], marks=_SLOW)],
                         ids=["ssim", "l2", "vae", "fm", "ssim-rgb"])
def test_train_writes_complete_run_folder(kind: str, extra: list[str], image_folder: Path, tmp_path: Path,
                                          request: pytest.FixtureRequest) -> None:
    from tfssim.models import kind_of

    run = tmp_path / "run"
    if extra == ["<config>"]:  # fm: the weights file through the config key 'weights' (the option's name)
        cfg = tmp_path / "fm.yaml"
        cfg.write_text(f"weights: {request.getfixturevalue('vgg16_weights')}\nfm-weight: 0.5\n")
        extra = ["--config", str(cfg)]
    result = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--model", kind, *RUN_ARGS, *extra])
    assert result.exit_code == 0, result.output
    assert result.exception is None
    for name in ("config.json", "final.keras", "best.keras", "history.csv", "training_curves.png", "examples/examples.png"):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").rglob("*tfevents*"))
    config = json.loads((run / "config.json").read_text())
    channels = 3 if "--rgb" in extra else 1
    assert config["config"]["patch_size"] == 32 and config["model"] == kind and config["channels"] == channels
    assert config["versions"]["tensorflow"]
    if kind == "fm":
        assert config["config"]["fm_weights"] == request.getfixturevalue("vgg16_weights")
        assert config["config"]["fm_weight"] == 0.5
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["loss"])) and np.isfinite(float(r["val_loss"])) for r in rows)
    model = keras.saving.load_model(run / "final.keras", compile=False)
    assert kind_of(model) == kind
    assert np.asarray(model(np.zeros((1, 32, 32, channels), np.float32))).shape == (1, 32, 32, channels)

    out = result.output
    # start banner: data found, layout, patch count, device, precision, strategy
    assert f"data      {image_folder} (layout: folder): 3 training images" in out and "1 validation images" in out
    assert f"patches   64 of 32x32x{channels} per epoch, batch 16" in out
    assert "devices   /device:CPU:0" in out
    # --mixed-precision auto picks mixed_float16 where a GPU is visible, and 2+ GPUs mirror
    gpus = len(tf.config.list_physical_devices("GPU"))
    policy = "mixed_float16" if gpus else "float32"
    strategy = "default (1 device)" if gpus < 2 else f"MirroredStrategy ({gpus} replica(s))"
    assert f"precision {policy}; strategy {strategy}" in out
    assert config["precision"] == policy and config["strategy"] == ("default" if gpus < 2 else "MirroredStrategy")
    if not tf.config.list_physical_devices("GPU"):
        assert "precision: float32 (auto: no GPU visible" in out  # --mixed-precision auto says what it chose
    # one summary line per epoch
    for epoch in (1, 2):
        assert re.search(rf"epoch {epoch}/2  loss \d+\.\d{{5}}  val_loss \d+\.\d{{5}}  \(\d+\.\d s\)", out), out


@pytest.mark.slow  # 15 s measured in the not-slow run on the loaded 2-core machine
def test_layout_forced_overrides_detection(tmp_path: Path) -> None:
    # Images directly in the folder, plus empty Normal/ and Anomalous/ folders: auto-detection
    # takes it for NanoTWICE (and fails on the empty Normal/); --layout folder trains on the images.
    data = tmp_path / "mixed"
    (data / "Normal").mkdir(parents=True)
    (data / "Anomalous").mkdir()
    for i in range(2):
        io.imsave(data / f"img{i}.png", (_texture(i, (48, 48)) * 255).astype(np.uint8), check_contrast=False)
    auto = CliRunner().invoke(main, [str(data), "--output", str(tmp_path / "r1"), "--epochs", "1", *ONE_STEP])
    assert_one_error_line(auto, f"no images (png, tif, tiff, jpg, jpeg, bmp) found in {data / 'Normal'}", "put the image files")
    forced = CliRunner().invoke(
        main, [str(data), "--output", str(tmp_path / "r2"), "--epochs", "1", "--layout", "folder", *ONE_STEP]
    )
    assert forced.exit_code == 0, forced.output
    assert f"data      {data} (layout: folder): 1 training images" in forced.output
    assert json.loads((tmp_path / "r2" / "config.json").read_text())["layout"] == "folder"
    # a forced layout that does not fit says which layout it tried and how to fix it
    wrong = CliRunner().invoke(main, [str(data), "--output", str(tmp_path / "r3"), "--layout", "mvtec", *ONE_STEP])
    assert_one_error_line(wrong, "does not look like a mvtec dataset", "use --layout auto")
    assert "train/good" in wrong.output


def test_existing_run_folder_is_not_overwritten(image_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    result = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--epochs", "1", *TINY])
    assert_one_error_line(result, "already exists", "pass --resume to continue it or choose another --output")
    assert (run / "keep.txt").read_text() == "x"


def test_resume_refuses_changed_settings_and_folders_without_a_run(image_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--epochs", "1", *ONE_STEP])
    assert first.exit_code == 0, first.output
    before = (run / "history.csv").read_text()
    changed = CliRunner().invoke(
        main, [str(image_folder), "--output", str(run), "--epochs", "2", "--resume", *ONE_STEP, "--latent-dim", "4"]
    )
    assert_one_error_line(changed, "latent_dim was 8, now 4", "only --epochs may change")
    assert (run / "history.csv").read_text() == before  # the run was left alone
    # A config file's values are given settings too: refused where they differ.
    cfg = tmp_path / "other.yaml"
    cfg.write_text("patches-per-epoch: 32\n")
    from_file = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--resume", "--config", str(cfg)])
    assert_one_error_line(from_file, "patches_per_epoch was 16, now 32", "leave them out to keep the run's settings")
    assert (run / "history.csv").read_text() == before
    # Options left out keep the run's recorded values, not the options' defaults (patch 128, latent
    # 100, 20000 patches of a batch of 32, which would not even fit these 80x96 images).
    recorded = json.loads((run / "config.json").read_text())["config"]
    resumed = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--resume", "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert resumed.exception is None
    assert "resuming after epoch 1" in resumed.output and "patches   16 of 32x32x1 per epoch, batch 16" in resumed.output
    assert [int(r["epoch"]) for r in _rows(run)] == [1, 2]
    assert json.loads((run / "config.json").read_text())["config"] == {**recorded, "epochs": 2}
    # Without --epochs the recorded count stands, not the option's default 200.
    from tfssim.training import resume_config

    assert resume_config(image_folder, run, {}).epochs == 2
    assert resume_config(image_folder, run, {"epochs": 5}).to_dict() == {**recorded, "epochs": 5}
    for folder in (tmp_path / "never-made", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        nothing = CliRunner().invoke(main, [str(image_folder), "--output", str(folder), "--resume", *ONE_STEP])
        assert_one_error_line(nothing, "holds no run", "drop --resume to start one")


@pytest.mark.slow  # 26 s measured in the not-slow run on the loaded 2-core machine
def test_ssim_weighting_uniform_trains_records_and_exports(image_folder: Path, tmp_path: Path) -> None:
    """--ssim-weighting uniform reaches the loss, config.json and the export; resume keeps it."""
    from skimage.metrics import structural_similarity

    from tfssim import export

    run = tmp_path / "run"
    result = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--epochs", "1",
                                       "--ssim-window", "7", "--ssim-weighting", "uniform", *ONE_STEP])
    assert result.exit_code == 0, result.output
    assert "SSIM window 7 (uniform)" in result.output
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["ssim_weighting"] == "uniform" and config["ssim"]["weighting"] == "uniform"
    trained = keras.saving.load_model(run / "final.keras")
    assert trained.loss.weighting == "uniform" and trained.loss.window_size == 7
    assert type(trained.optimizer).__name__ == "FusedAdamW"  # tfssim-train's optimizer, saved and reloaded
    # The compiled loss is 1 - mean SSIM with plain 7x7 means: scikit-image's gaussian_weights=False.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (1, 32, 32, 1)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    want = 1.0 - structural_similarity(x[0, ..., 0], y[0, ..., 0], win_size=7, gaussian_weights=False,
                                       use_sample_covariance=False, data_range=1.0)
    assert abs(float(trained.loss(x, y)) - want) < 1e-3
    _, info = export.load_for_export(run)
    assert info["ssim"]["weighting"] == "uniform" and info["ssim"]["window_size"] == 7
    flat = {k: v for k, v in config.items() if k != "ssim"}  # config.json with only the ssim_* keys
    (run / "config.json").write_text(json.dumps(flat))
    _, info = export.load_for_export(run)
    assert info["ssim"]["weighting"] == "uniform" and info["ssim"]["window_size"] == 7
    (run / "config.json").write_text(json.dumps(config))

    before = (run / "history.csv").read_text()
    changed = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--epochs", "2", "--resume",
                                        "--ssim-window", "7", "--ssim-weighting", "gaussian", *ONE_STEP])
    assert_one_error_line(changed, "ssim_weighting was 'uniform', now 'gaussian'", "only --epochs may change")
    # A run folder from before the option (no ssim_weighting key) trained with the Gaussian window.
    del config["config"]["ssim_weighting"]
    (run / "config.json").write_text(json.dumps(config))
    old = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--epochs", "2", "--resume",
                                    "--ssim-window", "7", "--ssim-weighting", "uniform", *ONE_STEP])
    assert_one_error_line(old, "ssim_weighting was 'gaussian', now 'uniform'", "only --epochs may change")
    assert (run / "history.csv").read_text() == before
    bad = CliRunner().invoke(main, [str(image_folder), "--output", str(tmp_path / "r2"), "--ssim-weighting", "box"])
    assert_one_error_line(bad, "'box' is not one of", "'gaussian', 'uniform'")


@pytest.mark.parametrize(
    "args, problem, fix",
    [
        (["{missing}", "--output", "{run}"], "folder '{missing}' does not exist", "pass the folder of defect-free"),
        (["{afile}", "--output", "{run}"], "is a file, not a folder", "pass the folder that holds"),
        (["{empty}", "--output", "{run}"], "no images (png", "put the image files directly in it"),
        (["{small}", "--output", "{run}", "--patch-size", "128"], "smaller than the 128x128 patch: ",
         "use --patch-size 64 or smaller"),
        (["{data}", "--output", "{run}", "--ssim-window", "10"], "must be an odd size >= 1 (got 10", "use an odd size such as 7, 11"),
        (["{data}", "--output", "{run}", "--model", "gan"], "'gan' is not one of", "'ssim', 'l2', 'vae', 'fm'"),
        (["{data}", "--output", "{run}", "--config", "{badconfig}"], "unknown keys: 'lerning_rate'",
         "did you mean 'learning_rate'?"),
        (["{data}", "--output", "{run}", "--config", "{badyaml}"], "is not valid YAML", "fix the syntax"),
        (["{data}", "--output", "{run}", "--config", "{badjson}"], "is not valid JSON", "fix the syntax"),
        (["{data}", "--output", "{run}", "--config", "{missing}.yaml"], "cannot read", "check the --config path"),
        (["{data}", "--output", "{run}", "--patch-size", "40"], "multiple of 16", "the paper uses 32, 64 or 128"),
        (["{data}"], "missing option --output", "the run folder to create"),
    ],
    ids=["missing-data", "data-is-file", "empty-folder", "too-small", "even-window", "unknown-model",
         "unknown-config-key", "bad-yaml", "bad-json", "missing-config", "patch-not-16", "no-output"],
)
def test_bad_input_exits_2_with_one_clear_line(args: list[str], problem: str, fix: str, image_folder: Path,
                                               tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    small = tmp_path / "small"
    small.mkdir()
    io.imsave(small / "a.png", np.zeros((64, 72), np.uint8), check_contrast=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lerning_rate: 0.1\n")
    badyaml = tmp_path / "broken.yaml"
    badyaml.write_text("epochs: [1, 2\nseed: 3\n")
    badjson = tmp_path / "broken.json"
    badjson.write_text('{"epochs": 1,}')
    afile = tmp_path / "a.png"
    afile.write_bytes(b"x")
    fill = {"missing": tmp_path / "nope", "empty": empty, "small": small, "data": image_folder,
            "run": tmp_path / "run", "badconfig": bad, "badyaml": badyaml, "badjson": badjson, "afile": afile}
    result = CliRunner().invoke(main, [a.format(**fill) for a in args])
    assert_one_error_line(result, problem.format(**fill), fix)
    assert not (tmp_path / "run").exists()  # nothing written on bad input


def test_failed_imagenet_download_is_a_clean_error_naming_weights(image_folder: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        if kwargs.get("weights") == "imagenet":
            raise OSError("URL fetch failure on https://storage.googleapis.com/...: [Errno -3] name resolution")
        raise AssertionError("only the ImageNet download is simulated here")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--model", "fm", *ONE_STEP])
    line = assert_one_error_line(result, "could not download the ImageNet weights of vgg16", "--weights FILE")
    assert "URL fetch failure" in line
    assert not run.exists()  # nothing half-made: the same command with --weights FILE can run next


def test_virtual_cpus_after_tensorflow_started_is_a_clean_error(image_folder: Path, tmp_path: Path) -> None:
    have = len(tf.config.list_logical_devices("CPU"))  # starts the runtime: devices are fixed from here on
    result = CliRunner().invoke(
        main, [str(image_folder), "--output", str(tmp_path / "run"), "--virtual-cpus", str(have + 1), *ONE_STEP]
    )
    assert_one_error_line(result, f"--virtual-cpus {have + 1} cannot be applied", "run tfssim-train in a new process")
    assert len(tf.config.list_logical_devices("CPU")) == have


def test_nan_loss_stops_with_one_line_and_exit_1(image_folder: Path, tmp_path: Path) -> None:
    # A learning rate of 1e30 makes the first update blow the weights up: the loss is NaN in epoch 1.
    run = tmp_path / "run"
    result = CliRunner().invoke(
        main, [str(image_folder), "--output", str(run), "--epochs", "3", "--learning-rate", "1e30", "--patch-size", "32",
               "--latent-dim", "8", "--batch-size", "16", "--patches-per-epoch", "64"]
    )
    assert re.search(r"epoch 1/3  loss nan", result.output)  # the epoch's line: the loss really was NaN
    assert_one_error_line(result, "training failed: the loss became NaN or infinite in epoch 1",
                          "lower --learning-rate (was 1e+30)", exit_code=1)
    assert "no epoch finished" in result.output
    assert not (run / "final.keras").exists() and not (run / "best.keras").exists()
    assert "trained ssim" not in result.output


@pytest.mark.slow  # 16 s measured in the not-slow run on the loaded 2-core machine
def test_nan_in_a_later_epoch_keeps_the_last_good_checkpoint(image_folder: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import tfssim.data

    real = tfssim.data.patch_dataset

    def poisoned_after_epoch_1(*args, **kwargs):  # every patch from the second epoch on is NaN
        steps = tfssim.data.steps_per_epoch(kwargs["patches_per_epoch"], kwargs["batch_size"])
        ds = real(*args, **kwargs).enumerate()
        return ds.map(lambda i, xy: tuple(x + tf.where(i >= steps, np.nan, 0.0) for x in xy))

    monkeypatch.setattr(tfssim.data, "patch_dataset", poisoned_after_epoch_1)
    run = tmp_path / "run"
    result = CliRunner().invoke(
        main, [str(image_folder), "--output", str(run), "--epochs", "3", "--val-split", "0.25", "--patch-size", "32",
               "--latent-dim", "8", "--batch-size", "16", "--patches-per-epoch", "32"]
    )
    line = assert_one_error_line(result, "the loss became NaN or infinite in epoch 2",
                                 "lower --learning-rate (was 0.0002)", exit_code=1)
    assert "the last good state (epoch 1) is kept" in line and "best.keras" in line
    assert [int(r["epoch"]) for r in _rows(run)] == [1]
    progress = json.loads((run / "state" / "progress.json").read_text())
    assert progress["epochs_done"] == 1
    assert not (run / "final.keras").exists()
    best = keras.saving.load_model(run / "best.keras", compile=False)
    assert all(np.isfinite(w).all() for w in best.get_weights())
    x = np.full((2, 32, 32, 1), 0.5, np.float32)
    assert np.isfinite(np.asarray(best(x))).all()
    # the resume checkpoint holds the same (good) weights
    assert sorted(p.name for p in (run / "state").glob("*.weights.h5")) == [progress["weights"]]
    best.load_weights(run / "state" / progress["weights"])
    assert all(np.isfinite(w).all() for w in best.get_weights())


@pytest.mark.slow  # 12 s measured in the not-slow run on the loaded 2-core machine
def test_corrupt_image_is_reported_or_skipped(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "broken.png").write_bytes(b"not a png at all")
    result = CliRunner().invoke(main, [str(image_folder), "--output", str(tmp_path / "r1"), "--epochs", "1", *TINY])
    assert result.exit_code == 2
    assert "broken.png" in result.output and "--skip-bad-images" in result.output
    result = CliRunner().invoke(
        main, [str(image_folder), "--output", str(tmp_path / "r2"), "--epochs", "1", "--skip-bad-images", *TINY]
    )
    assert result.exit_code == 0, result.output
    assert any("broken.png" in s for s in json.loads((tmp_path / "r2" / "config.json").read_text())["skipped_images"])


@pytest.mark.slow  # 22 s measured in the not-slow run on the loaded 2-core machine
def test_config_file_values_and_flag_override(image_folder: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 1\npatch-size: 32\nlatent_dim: 8\nbatch_size: 8\npatches_per_epoch: 16\nlearning_rate: 0.001\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--config", str(cfg), "--latent-dim", "4"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["learning_rate"] == 0.001 and saved["epochs"] == 1
    assert saved["latent_dim"] == 4  # the flag wins over the file


def _train_cmd(data: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tfssim.cli.train", str(data), "--output", str(run), "--epochs", "4",
            "--patch-size", "32", "--latent-dim", "8", "--batch-size", "8", "--patches-per-epoch", "800", *extra]


def _wait_for_epochs(run: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``count`` epochs are committed (state/progress.json, written after the history row)."""
    progress = run / "state" / "progress.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if progress.exists() and json.loads(progress.read_text())["epochs_done"] >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"not {count} epochs in time")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_to_the_same_epoch_count(sig: int, image_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # A shell runs background jobs (nohup, `cmd &`) with SIGINT ignored, and Python then keeps it
    # ignored: restore the default so that SIGINT means Ctrl-C in the child, wherever pytest runs.
    proc = subprocess.Popen(_train_cmd(image_folder, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_epochs(run, 2, proc)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(sig)
    proc.wait(timeout=60)
    before = _rows(run)
    assert 2 <= len(before) < 4, "the kill must land mid-run"
    progress = json.loads((run / "state" / "progress.json").read_text())
    assert progress["epochs_done"] >= 2

    resumed = subprocess.run(_train_cmd(image_folder, run, "--resume"), capture_output=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert f"resuming after epoch {progress['epochs_done']}" in resumed.stderr.decode()
    after = _rows(run)
    assert [int(r["epoch"]) for r in after] == [1, 2, 3, 4]
    # Rows written before the kill are kept as they were.
    for old, new in zip(before[: progress["epochs_done"]], after):
        assert old == new
    assert (run / "final.keras").exists()


def test_validation_images_smaller_than_the_patch_are_named_in_a_warning(tmp_path: Path, caplog) -> None:
    from tfssim.training import TrainConfig
    from tfssim.training.loop import _load_images

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "val").mkdir()
    io.imsave(data / "train" / "big.png", (_texture(0, (64, 64)) * 255).astype(np.uint8), check_contrast=False)
    io.imsave(data / "val" / "tiny.png", (_texture(1, (24, 40)) * 255).astype(np.uint8), check_contrast=False)
    config = TrainConfig(data=str(data), output=str(tmp_path / "run"), patch_size=32)
    with caplog.at_level("WARNING", logger="tfssim.training"):
        _, train, val, _ = _load_images(config)
    assert len(train) == 1 and val == []
    assert "validation images smaller than the 32x32 patch are not used" in caplog.text
    assert f"{data / 'val' / 'tiny.png'} 24x40" in caplog.text
    assert "best.keras is chosen by the training loss" in caplog.text
    # a large enough validation image stays, without a warning
    io.imsave(data / "val" / "fine.png", (_texture(2, (48, 48)) * 255).astype(np.uint8), check_contrast=False)
    caplog.clear()
    with caplog.at_level("WARNING", logger="tfssim.training"):
        _, _, val, _ = _load_images(config)
    assert len(val) == 1 and "training loss" not in caplog.text and "tiny.png" in caplog.text


@pytest.mark.parametrize(
    "text, problem, fix",
    [
        ('jit_compile: "no"\n', "jit_compile must be true or false, got 'no'", "write jit_compile: true or jit_compile: false"),
        ("val_patches: 0\n", "val_patches must be an integer >= 1, got 0", "set val_patches to an integer >= 1"),
        ("val-patches: 2.5\n", "val_patches must be an integer >= 1, got 2.5", "set val_patches to an integer >= 1"),
        ("ssim_sigma: -1.5\n", "ssim_sigma must be a number > 0, got -1.5", "set ssim_sigma to a number > 0"),
        ("ssim_k2: 2\n", "ssim_k2 must be a number > 0 and < 1, got 2", "set ssim_k2 to a number > 0 and < 1"),
        ("vae_observation_std: .nan\n", "vae_observation_std must be a number > 0, got nan", "set vae_observation_std"),
        ("seed: -1\n", "seed (--seed) must be an integer >= 0 and <= 4294967295, got -1", "set seed to an integer"),
    ],
    ids=["bool-as-string", "zero-val-patches", "fractional-val-patches", "negative-sigma", "k2-above-1", "nan-std",
         "negative-seed"],
)
def test_config_file_only_keys_are_checked(text: str, problem: str, fix: str, image_folder: Path, tmp_path: Path) -> None:
    # These keys have no option, so click checks nothing: TrainConfig.validate must.
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--config", str(cfg), *ONE_STEP])
    assert_one_error_line(result, problem, fix)
    assert not run.exists()


def test_train_config_validate_coerces_every_field(tmp_path: Path) -> None:
    import dataclasses

    from tfssim.training import TrainConfig

    config = TrainConfig(data=tmp_path, output=tmp_path / "run", epochs=np.int64(3), val_patches=8.0,
                         learning_rate="1e-4", ssim_sigma=2, jit_compile=np.bool_(True), fm_weights=None)
    config.validate()
    assert config.data == str(tmp_path) and config.output == str(tmp_path / "run")
    assert (config.epochs, config.val_patches, config.learning_rate, config.ssim_sigma) == (3, 8, 1e-4, 2.0)
    assert [type(v) for v in (config.epochs, config.val_patches, config.learning_rate, config.ssim_sigma)] == \
        [int, int, float, float]
    assert config.jit_compile is True
    json.dumps(config.to_dict())  # plain Python types: config.json can hold them
    good = dataclasses.asdict(TrainConfig(data="d", output="o"))
    for field, value, message in [
        ("grayscale", 1, "grayscale (--grayscale/--rgb) must be true or false, got 1"),
        ("skip_bad_images", "false", "skip_bad_images (--skip-bad-images) must be true or false"),
        ("epochs", True, "epochs (--epochs) must be an integer >= 1, got True"),
        ("batch_size", "many", "batch_size (--batch-size) must be an integer >= 1, got 'many'"),
        ("patch_size", 8, "patch_size (--patch-size) must be an integer >= 16, got 8"),
        ("val_split", 1.0, "val_split (--val-split) must be a number >= 0 and < 1, got 1.0"),
        ("learning_rate", float("inf"), "learning_rate (--learning-rate) must be a number > 0"),
        ("weight_decay", -1e-5, "weight_decay (--weight-decay) must be a number >= 0"),
        ("ssim_k1", 0, "ssim_k1 must be a number > 0 and < 1, got 0"),
        ("model", 3, "unknown model 3 for model (--model); choose one of ssim, l2, vae, fm"),
        ("mixed_precision", True, "unknown mixed precision True"),
        ("fm_weights", "", "fm_weights (--weights) must be 'imagenet' or a weights file path"),
        ("data", 5, "data (DATA) must be a path, got 5"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            TrainConfig(**{**good, field: value}).validate()


@pytest.mark.slow  # 16 s measured in the not-slow run on the loaded 2-core machine
def test_train_restores_the_global_dtype_policy(image_folder: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tfssim import training

    def config(run: str) -> training.TrainConfig:
        return training.TrainConfig(data=str(image_folder), output=str(tmp_path / run), epochs=1, patch_size=32,
                                    latent_dim=8, batch_size=16, patches_per_epoch=16, mixed_precision="on",
                                    strategy="none")

    original = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        training.train(config("run"), verbose=0)
        assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "mixed_float16"
        assert keras.config.dtype_policy().name == "float32"  # not left in mixed_float16 after returning
        seen = []

        def failing_load(cfg):
            seen.append(keras.config.dtype_policy().name)
            raise ValueError("stop here")

        monkeypatch.setattr(training.loop, "_load_images", failing_load)  # where train looks it up
        with pytest.raises(ValueError, match="stop here"):
            training.train(config("run2"))
        assert seen == ["mixed_float16"]  # it failed while the run's policy was set ...
        assert keras.config.dtype_policy().name == "float32"  # ... and raising restored the caller's
    finally:
        keras.config.set_dtype_policy(original)


def test_output_that_cannot_be_created_is_one_line_naming_it(image_folder: Path, tmp_path: Path) -> None:
    from tfssim.cli._common import usage_errors

    afile = tmp_path / "afile"
    afile.write_text("x")
    runs = [afile / "run"]  # under a file: NotADirectoryError, for root too
    locked = tmp_path / "locked"
    locked.mkdir()
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root ignores the permission bits
        locked.chmod(0o500)
        runs.append(locked / "run")
    try:
        for run in runs:
            result = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--epochs", "1", *ONE_STEP])
            assert_one_error_line(result, f"cannot use {str(run)!r}: ", "that you may write there")
            assert not run.exists()
    finally:
        locked.chmod(0o700)
    # the same line for any OSError with a path; tfssim's own messages are kept as they are
    with pytest.raises(click.UsageError, match=re.escape("cannot use '/data/run': Permission denied; check")):
        with usage_errors():
            raise PermissionError(13, "Permission denied", "/data/run")
    with pytest.raises(click.UsageError, match=r"^no images here; add some$"):
        with usage_errors():
            raise FileNotFoundError("no images here; add some")
    # a full disk is a run-time failure (exit 1), not bad input (exit 2)
    with pytest.raises(click.ClickException) as caught:
        with usage_errors():
            raise OSError(errno.ENOSPC, "No space left on device", "/data/run/state.keras")
    assert not isinstance(caught.value, click.UsageError) and caught.value.exit_code == 1
    assert caught.value.message.startswith("No space left on device ('/data/run/state.keras'); free disk")


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device", "/run/state.keras"),
                                   tf.errors.ResourceExhaustedError(None, None, "/run/x.pb; No space left on device")],
                         ids=["oserror", "tensorflow"])
def test_full_disk_during_training_exits_1_with_one_line(error: Exception, image_folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*args, **kwargs):
        raise error

    monkeypatch.setattr("tfssim.training.train", full_disk)
    result = CliRunner().invoke(main, [str(image_folder), "--output", str(tmp_path / "run"), *ONE_STEP])
    assert_one_error_line(result, "No space left on device", "free disk space", exit_code=1)
    assert "--resume" in result.output


def test_options_take_their_defaults_and_choices_from_the_library() -> None:
    """Every tfssim-train option that is a TrainConfig field defaults to the field's default, and the
    choice lists are the library's (TrainConfig's checks, the model kinds, the layouts, the weightings)."""
    import dataclasses

    from tfssim.cli.export import main as export_main
    from tfssim.core.ssim_params import WEIGHTINGS
    from tfssim.data.layouts import LAYOUT_CHOICES
    from tfssim.models.kinds import MODEL_KINDS
    from tfssim.training.config import PRECISION_MODES, STRATEGIES, TrainConfig

    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    options = {p.name: p for p in main.params if isinstance(p, click.Option)}
    checked = sorted(set(options) & set(fields))
    assert len(checked) >= 22, checked  # every option but --output, --virtual-cpus, --resume, --verbose
    for name in checked:
        assert options[name].default == fields[name], name
    choices = {"model": MODEL_KINDS, "layout": LAYOUT_CHOICES, "mixed_precision": PRECISION_MODES,
               "strategy": STRATEGIES, "ssim_weighting": WEIGHTINGS}
    for name, expected in choices.items():
        assert tuple(options[name].type.choices) == expected, name
    export_weighting = next(p for p in export_main.params if p.name == "ssim_weighting")
    assert tuple(export_weighting.type.choices) == WEIGHTINGS


def test_help_is_fast_and_imports_no_tensorflow() -> None:
    """``tfssim-train --help`` reads TrainConfig's defaults without loading TensorFlow or Keras."""
    code = ("import sys, time\n"
            "started = time.perf_counter()\n"
            "from tfssim.cli.train import main\n"
            "try:\n"
            "    main(['--help'])\n"
            "except SystemExit as err:\n"
            "    assert err.code == 0, err.code\n"
            "print('SECONDS', time.perf_counter() - started)\n"
            "print('LOADED', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--patches-per-epoch" in done.stdout and "[ssim|l2|vae|fm]" in done.stdout
    assert "LOADED []" in done.stdout, done.stdout[-300:]
    seconds = float(re.search(r"SECONDS (\S+)", done.stdout).group(1))
    assert seconds < 5, seconds  # TensorFlow alone takes several seconds to import
