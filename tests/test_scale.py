"""Resizing (``--scale`` / ``--image-size``): the options, training on resized images, and the export that
resizes inside its serving graph and returns maps at the input's size."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from skimage import io

from tfssim import resize
from tfssim.cli.train import main as train_main
from tfssim.training import TrainConfig, load_config

ONE_STEP = ["--patch-size", "32", "--latent-dim", "8", "--batch-size", "16", "--patches-per-epoch", "16",
            "--epochs", "1"]


def one_error_line(result, *parts: str, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "good"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:80, :96]
    for i in range(4):
        img = 0.5 + 0.3 * np.sin(xx / 3.0 + i) * np.cos(yy / 5.0) + rng.normal(0, 0.05, (80, 96))
        io.imsave(folder / f"img{i}.png", (np.clip(img, 0, 1) * 255).astype(np.uint8), check_contrast=False)
    return folder


# --- the size rule (no TensorFlow) -----------------------------------------------------------


def test_size_rule_and_smallest_input() -> None:
    assert resize.target_size(2048, 2448, 0.5) == (1024, 1224)
    assert resize.target_size(777, 1001, 0.5) == (389, 501)  # 388.5 -> 389: half up
    assert resize.target_size(10, 20, 1.0, image_size=(256, 255)) == (256, 255)
    for patch, scale in ((128, 0.5), (32, 0.3), (32, 0.7), (128, 1.0), (16, 0.123)):
        n = resize.min_input_size(patch, scale)
        assert resize.scaled_length(n, scale) >= patch and resize.scaled_length(n - 1, scale) < patch
    assert resize.min_input_size(128, 0.5) == 255
    assert resize.min_input_size(256, 1.0, image_size=(256, 256)) == 1
    for bad in (0, -0.5, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="scale must be a number > 0 and <= 1"):
            resize.check_scale(bad)


# --- options and config ----------------------------------------------------------------------


@pytest.mark.parametrize("args, parts", [
    (["--scale", "0"], ("--scale", "0.0 is not in the range 0<x<=1")),
    (["--scale", "-0.5"], ("--scale", "-0.5 is not in the range 0<x<=1")),
    (["--scale", "1.5"], ("--scale", "1.5 is not in the range 0<x<=1")),
    (["--image-size", "16", "40"], ("image_size (--image-size) 16 40 is smaller than the 32x32 patch",
                                    "use --image-size of at least 32 32")),
    (["--image-size", "0", "40"], ("--image-size", "0 is not in the range x>=1")),
    (["--image-size", "64"], ("'--image-size' requires 2 arguments",)),
    (["--scale", "0.5", "--image-size", "64", "64"], ("both resize the images", "give one of them")),
], ids=["scale-0", "scale-negative", "scale-above-1", "size-under-patch", "size-0", "size-one-number", "both"])
def test_bad_resize_options_exit_2_with_one_line(args: list[str], parts: tuple[str, ...], image_folder: Path,
                                                 tmp_path: Path) -> None:
    result = CliRunner().invoke(train_main, [str(image_folder), "--output", str(tmp_path / "run"), *ONE_STEP, *args])
    one_error_line(result, *parts)
    assert not (tmp_path / "run").exists()


def test_config_file_takes_scale_and_image_size_with_strict_types(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("scale: 0.5\nimage-size: [256, 200]\n")
    assert load_config(good) == {"scale": 0.5, "image_size": [256, 200]}
    for text, part in (("image_size: 256\n", "must be a list of two integers [H, W] (or null), got 256"),
                       ("image_size: [256, 256.0]\n", "must be a list of two integers"),
                       ("image_size: [256, true]\n", "must be a list of two integers"),
                       ("image_size: [256]\n", "must be a list of two integers"),
                       ("scale: '0.5'\n", "scale (--scale) must be a number > 0 and <= 1"),
                       ("scale: true\n", "scale (--scale) must be a number")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match="config file") as caught:
            load_config(bad)
        assert part in str(caught.value) and "\n" not in str(caught.value)
    config = TrainConfig(data="d", output="o", patch_size=32, image_size=[64, "48"])
    config.validate()
    assert config.image_size == (64, 48) and config.to_dict()["image_size"] == [64, 48]
    for scale in (0, 1.01, float("inf")):
        with pytest.raises(ValueError, match=r"scale \(--scale\) must be a number > 0 and <= 1"):
            TrainConfig(data="d", output="o", scale=scale).validate()


def test_config_file_scale_reaches_the_run(image_folder: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"image_size": [24, 40], "patch_size": 64}))
    result = CliRunner().invoke(train_main, [str(image_folder), "--output", str(tmp_path / "run"), "--config", str(cfg),
                                             *ONE_STEP])
    # patch 32 from the flags overrides the file's 64; image_size comes from the file
    one_error_line(result, "image_size (--image-size) 24 40", "smaller than the 32x32 patch")


@pytest.mark.slow
def test_scaled_training_records_scale_and_resume_checks_it(image_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = CliRunner().invoke(train_main, [str(image_folder), "--output", str(run), "--scale", "0.5", *ONE_STEP])
    assert result.exit_code == 0, result.output
    assert "images resized scale 0.5 (bilinear_antialias)" in result.output
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["scale"] == 0.5 and record["config"]["image_size"] is None
    assert record["resize"] == {"scale": 0.5, "image_size": None, "interpolation": "bilinear_antialias"}
    before = (run / "history.csv").read_text()
    resumed = CliRunner().invoke(train_main, [str(image_folder), "--output", str(run), "--resume", *ONE_STEP])
    one_error_line(resumed, "scale was 0.5, now 1.0", "only --epochs may change")
    # A run from before the option (no scale key) trained on unresized images.
    del record["config"]["scale"]
    (run / "config.json").write_text(json.dumps(record))
    old = CliRunner().invoke(train_main, [str(image_folder), "--output", str(run), "--resume", "--scale", "0.5",
                                          *ONE_STEP])
    one_error_line(old, "scale was 1.0, now 0.5", "only --epochs may change")
    assert (run / "history.csv").read_text() == before
    # Images too small once scaled: named with their resized sizes, and the fix.
    small = CliRunner().invoke(train_main, [str(image_folder), "--output", str(tmp_path / "r2"), "--scale", "0.3",
                                            *ONE_STEP])
    one_error_line(small, "smaller than the 32x32 patch at --scale 0.3 (sizes after resizing)", "24x29",
                   "or a larger --scale")
    assert not (tmp_path / "r2").exists()
