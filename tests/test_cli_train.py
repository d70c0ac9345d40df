"""tfssim-train end to end: run folder contents, bad input, resume after a killed process."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from skimage import io

from tfssim.cli.train import main

TINY = ["--patch-size", "32", "--latent-dim", "8", "--batch-size", "8", "--patches-per-epoch", "32"]


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


def test_train_writes_complete_run_folder(image_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--epochs", "2", "--val-split", "0.25", *TINY])
    assert result.exit_code == 0, result.output
    for name in ("config.json", "final.keras", "best.keras", "history.csv", "training_curves.png", "examples/examples.png"):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").rglob("*tfevents*"))
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["patch_size"] == 32 and config["model"] == "ssim"
    assert config["versions"]["tensorflow"]
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["val_loss"])) for r in rows)


def test_existing_run_folder_is_not_overwritten(image_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    result = CliRunner().invoke(main, [str(image_folder), "--output", str(run), "--epochs", "1", *TINY])
    assert result.exit_code == 2
    assert "already exists" in result.output and "--resume" in result.output
    assert (run / "keep.txt").read_text() == "x"


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "--output", "{run}"], "does not exist"),
        (["{empty}", "--output", "{run}"], "no images"),
        (["{small}", "--output", "{run}", "--patch-size", "128"], "smaller than the 128x128 patch"),
        (["{data}", "--output", "{run}", "--ssim-window", "10"], "odd"),
        (["{data}", "--output", "{run}", "--model", "gan"], "'gan' is not one of"),
        (["{data}", "--output", "{run}", "--config", "{badconfig}"], "unknown keys ['lerning_rate']"),
        (["{data}", "--output", "{run}", "--patch-size", "40"], "multiple of 16"),
        (["{data}"], "missing option --output"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(args: list[str], message: str, image_folder: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    small = tmp_path / "small"
    small.mkdir()
    io.imsave(small / "a.png", np.zeros((64, 64), np.uint8), check_contrast=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lerning_rate: 0.1\n")
    fill = {"missing": tmp_path / "nope", "empty": empty, "small": small, "data": image_folder,
            "run": tmp_path / "run", "badconfig": bad}
    result = CliRunner().invoke(main, [a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


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
    return [sys.executable, "-m", "tfssim.cli.train", str(data), "--output", str(run), "--epochs", "5",
            "--patch-size", "32", "--latent-dim", "8", "--batch-size", "8", "--patches-per-epoch", "800", *extra]


def _wait_for_rows(run: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "history.csv").exists() and len(_rows(run)) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no history rows in time")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_to_the_same_epoch_count(sig: int, image_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(_train_cmd(image_folder, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _wait_for_rows(run, 2, proc)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(sig)
    proc.wait(timeout=60)
    before = _rows(run)
    assert 2 <= len(before) < 5, "the kill must land mid-run"
    progress = json.loads((run / "state" / "progress.json").read_text())
    assert progress["epochs_done"] >= 2

    resumed = subprocess.run(_train_cmd(image_folder, run, "--resume"), capture_output=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert f"resuming after epoch {progress['epochs_done']}" in resumed.stderr.decode()
    after = _rows(run)
    assert [int(r["epoch"]) for r in after] == [1, 2, 3, 4, 5]
    # Rows written before the kill are kept as they were.
    for old, new in zip(before[: progress["epochs_done"]], after):
        assert old == new
    assert (run / "final.keras").exists()
