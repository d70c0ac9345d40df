"""Hostile input round 3 (issue 25), the cases of predict, evaluate and the output folder rule:
names with glob characters taken literally (case 2), output folders inside or holding an input
refused by every command that writes (case 1), evaluation outputs named by type and stem (case 6),
Ctrl-C as exit status 130 (case 10). tfssim-tune's cases are in test_tune_streaming.py."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from skimage import io

from tfssim import data
from tfssim._io import check_output_location, output_dir_lock, prepare_output_dir
from tfssim.errors import InputError
from tfssim.serving.prediction import expand_inputs


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error(result, expect: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expect in errors[0], result.output


def _png(path: Path, seed: int, shape=(64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(path, np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), check_contrast=False)
    return path


# --- case 2: a path that exists is taken as it is -------------------------------------------------


def test_existing_names_with_glob_characters_are_taken_literally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    literal = _png(tmp_path / "pl" / "a[1].png", 1)
    other = _png(tmp_path / "pl" / "a1.png", 2)
    assert expand_inputs(["pl/a[1].png"]) == [Path("pl/a[1].png")]
    assert expand_inputs([str(literal)]) == [literal]
    assert expand_inputs(["pl/a[1]*"]) == [Path("pl/a1.png")]  # does not exist: a pattern
    folder = _png(tmp_path / "r[1]" / "x.png", 3).parent
    _png(tmp_path / "r1" / "y.png", 4)
    assert expand_inputs(["r[1]/*.png"]) == [Path("r[1]/x.png")]  # the existing folder, literally
    assert expand_inputs([folder]) == [folder / "x.png"]
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_inputs(["pl/b[1].png"])
    assert other.exists()


def test_predict_processes_the_named_file_not_a_pattern_match(exports, tmp_path, monkeypatch):
    from tfssim.cli.predict import main

    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "pl" / "a[1].png", 1)
    _png(tmp_path / "pl" / "a1.png", 2)
    result = CliRunner().invoke(main, [str(exports[0]), "pl/a[1].png", "--output", "out", "--threshold", "0.5"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["processed"] == ["pl/a[1].png"]
    assert (tmp_path / "out" / "a[1]_mask.png").is_file() and not (tmp_path / "out" / "a1_mask.png").exists()


# --- case 1: one output folder rule -----------------------------------------------------------------


def test_the_output_folder_rule(tmp_path):
    image = _png(tmp_path / "data" / "val" / "a.png", 1)
    dataset = image.parent.parent
    refused = {
        dataset / "val": "holds the input",          # beside an input file
        dataset: "holds the input",                  # above one
        dataset / "val" / "sub": "lies inside the input",
    }
    for out, message in refused.items():
        with pytest.raises(InputError, match=message):
            check_output_location(out, [image, dataset])
    link = tmp_path / "links" / "b.png"
    link.parent.mkdir()
    link.symlink_to(image)
    with pytest.raises(InputError, match="holds the input"):  # the link's target lies in the output
        check_output_location(dataset / "val", [link])
    with pytest.raises(InputError, match="holds the input"):  # the link itself lies in the output
        check_output_location(link.parent, [link])
    (tmp_path / "gt").mkdir()
    with pytest.raises(InputError, match="lies inside the ground-truth mask folder"):
        check_output_location(tmp_path / "gt" / "out", [image], masks=tmp_path / "gt")
    check_output_location(tmp_path / "results", [image, dataset])  # beside the data: fine
    with pytest.raises(InputError, match="a parent of it is a file"):
        prepare_output_dir(image / "sub", [])
    held = prepare_output_dir(tmp_path / "held")
    with output_dir_lock(held, "tfssim-evaluate"):
        with pytest.raises(InputError, match="in use by tfssim-evaluate"):
            with output_dir_lock(held, "tfssim-predict"):
                pass
    with output_dir_lock(held, "tfssim-predict"):  # released when the first one ended
        pass


@pytest.fixture
def mvtec(tmp_path) -> Path:
    """An MVTec AD category whose good and scratch test images share their names (000.png, 001.png)."""
    root = tmp_path / "bottle"
    for i in range(4):
        _png(root / "train" / "good" / f"{i:03d}.png", i)
    for kind in ("good", "scratch"):
        for i in range(2):
            _png(root / "test" / kind / f"{i:03d}.png", 10 + i + (5 if kind == "scratch" else 0))
    for i in range(2):
        mask = np.zeros((64, 64), np.uint8)
        mask[10 + 5 * i:30, 20:40] = 255
        (root / "ground_truth" / "scratch").mkdir(parents=True, exist_ok=True)
        io.imsave(root / "ground_truth" / "scratch" / f"{i:03d}_mask.png", mask, check_contrast=False)
    return root


def test_evaluate_refuses_an_output_folder_in_the_dataset_or_an_export(exports, mvtec, tmp_path):
    from tfssim.cli.evaluate import main

    export = shutil.copytree(exports[0], tmp_path / "exports" / "ssim" / "1")
    before, export_before = _hashes(mvtec), _hashes(export)
    for out, message in [(mvtec / "test" / "good", "lies inside the input"), (mvtec, "is the input"),
                         (export / "eval", "lies inside the input"), (tmp_path, "holds the input")]:
        result = CliRunner().invoke(main, [str(mvtec), str(export), "--output", str(out), "--val-split", "0.5"])
        _one_error(result, message)
        assert _hashes(mvtec) == before and _hashes(export) == export_before
    assert sorted(p.name for p in (mvtec / "test" / "good").iterdir()) == ["000.png", "001.png"]


def test_evaluate_names_overlays_by_type_and_stem(exports, mvtec, tmp_path):
    from tfssim.evaluation import evaluate
    from tfssim.serving.inference import ExportedModel

    split = data.load_dataset(mvtec, val_fraction=0.5, seed=0)
    assert sorted(Path(p).name for p in split.test) == ["000.png", "000.png", "001.png", "001.png"]
    evaluate.evaluate(split, [ExportedModel.load(exports[0])], tmp_path / "eval", progress=False)
    overlays = sorted(p.name for p in (tmp_path / "eval" / "overlays").rglob("*.png"))
    assert overlays == ["good_000.png", "good_001.png", "scratch_000.png", "scratch_001.png"]


# --- case 10: Ctrl-C ---------------------------------------------------------------------------------


def test_ctrl_c_is_exit_status_130_in_every_command(exports, dataset, tmp_path, monkeypatch):
    from tfssim.cli.evaluate import main as evaluate_main
    from tfssim.cli.export import main as export_main
    from tfssim.evaluation import evaluate

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate", interrupt)
    result = CliRunner().invoke(evaluate_main, [str(dataset), str(exports[0]), "--output", str(tmp_path / "e")])
    assert result.exit_code == 130 and "Aborted" not in result.output
    assert sum(line.startswith("Interrupted:") for line in result.output.splitlines()) == 1

    import tfssim.export

    monkeypatch.setattr(tfssim.export, "export_model", interrupt)
    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(export_main, [str(tmp_path / "run"), "--name", "x"])
    assert result.exit_code == 130 and "Aborted" not in result.output


# --- the reviewer's siblings ---------------------------------------------------------------------------


def test_output_folders_stay_out_of_the_model_folder_and_the_folders_given(exports, dataset, tmp_path):
    """A numbered folder of results inside the model folder would be a version TF Serving serves; results
    inside a folder of images given would be read as images by the next run on it."""
    from tfssim.cli.evaluate import main as evaluate_main
    from tfssim.cli.predict import main as predict_main

    export = shutil.copytree(exports[0], tmp_path / "exports" / "ssim" / "1")
    images = shutil.copytree(dataset / "test", tmp_path / "images")
    before = _hashes(tmp_path / "exports"), _hashes(images)
    for out, message in [(export.parent / "7", "lies inside the input"), (images / "out", "lies inside the input")]:
        result = CliRunner().invoke(predict_main, [str(export), str(images), "-o", str(out), "--threshold", "0.5"])
        _one_error(result, message)
    result = CliRunner().invoke(evaluate_main, [str(dataset), str(export), "-o", str(export.parent / "9")])
    _one_error(result, "lies inside the input")
    assert (_hashes(tmp_path / "exports"), _hashes(images)) == before
    assert sorted(p.name for p in export.parent.iterdir()) == ["1"]


def test_export_paths_tensorflow_cannot_load_are_refused_in_one_line(exports, tmp_path):
    from tfssim.cli.predict import main as predict_main

    odd = shutil.copytree(exports[0], tmp_path / "x[2]" / "ssim" / "1")
    image = _png(tmp_path / "a.png", 1)
    result = CliRunner().invoke(predict_main, [str(odd), str(image), "-o", str(tmp_path / "out"), "--threshold", "0.5"])
    _one_error(result, "which TensorFlow takes as wildcards")
    from tfssim import export
    from tfssim.models import build_model

    with pytest.raises(InputError, match="which TensorFlow takes as wildcards"):
        export.export_model(build_model("l2", 32, 1, 8), tmp_path / "y[1]", name="m")
    assert not (tmp_path / "y[1]").exists()


def test_a_lock_file_that_is_a_link_or_a_pipe_is_refused_and_its_target_kept(tmp_path):
    import os

    from tfssim._io import OUTPUT_LOCK_NAME

    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    linked = prepare_output_dir(tmp_path / "linked")
    (linked / OUTPUT_LOCK_NAME).symlink_to(victim)
    with pytest.raises(InputError, match="is a symbolic link, not a lock file"):
        with output_dir_lock(linked, "tfssim-predict"):
            pass
    assert victim.read_bytes() == b"precious"
    piped = prepare_output_dir(tmp_path / "piped")
    os.mkfifo(piped / OUTPUT_LOCK_NAME)
    with pytest.raises(InputError, match="is a named pipe, not a lock file"):  # and no hang
        with output_dir_lock(piped, "tfssim-predict"):
            pass


def test_float_options_refuse_nan_and_messages_stay_one_line(exports, dataset, tmp_path):
    from tfssim.cli.evaluate import main as evaluate_main
    from tfssim.cli.predict import main as predict_main

    for option in ("--fpr", "--val-split"):
        result = CliRunner().invoke(evaluate_main, [str(dataset), str(exports[0]), "-o", str(tmp_path / "e"),
                                                    option, "nan"])
        _one_error(result, "is not a finite number")
    assert not (tmp_path / "e").exists()
    result = CliRunner().invoke(predict_main, [str(exports[0]), str(tmp_path / "nl\nError: y.png"),
                                               "-o", str(tmp_path / "o"), "--threshold", "0.5"])
    _one_error(result, "nl\\nError: y.png")


def test_a_mask_holding_nan_is_refused(tmp_path):
    import tifffile

    mask = np.zeros((8, 8), np.float32)
    mask[2:4, 2:4] = np.nan
    tifffile.imwrite(tmp_path / "m.tif", mask)
    with pytest.raises(InputError, match="holds NaN or infinite values"):
        data.read_mask(tmp_path / "m.tif")


def test_a_short_write_of_a_working_array_is_a_full_disk(tmp_path, monkeypatch):
    import errno

    from tfssim._io import save_array

    def short(*args, **kwargs):
        raise OSError("15360 requested and 9184 written")  # what NumPy says on a full disk

    monkeypatch.setattr(np, "save", short)
    with pytest.raises(OSError) as err:
        save_array(tmp_path / "a.npy", np.zeros(4))
    assert err.value.errno == errno.ENOSPC


def test_defect_sizes_beyond_the_images_are_refused(tmp_path):
    from test_tune_streaming import BlurExport

    from tfssim.evaluation import tuning

    paths = [_png(tmp_path / f"v{i}.png", i) for i in range(2)]
    for size in ((1, 1e308), (1, 100000), (65, 70)):
        with pytest.raises(InputError, match="larger than the smallest validation image side"):
            tuning.tune(BlurExport(), paths, size_range=size, copies=1, progress=False)
    from tfssim.data import defects

    with pytest.raises(InputError, match="far larger than the 64x64 image"):
        defects.paint_defects(np.zeros((64, 64), np.float32), np.random.default_rng(0), 1, size_range=(1, 1e6))


def test_a_failed_demo_leaves_its_output_folder_reusable(tmp_path, monkeypatch):
    from tfssim.cli import demo

    def fail(config):
        raise MemoryError("out of memory")

    import tfssim.training

    monkeypatch.setattr(tfssim.training, "train", fail)
    result = CliRunner().invoke(demo.main, ["--output", str(tmp_path / "demo"), "--epochs", "1",
                                            "--patches-per-epoch", "32", "--patch-size", "32", "--latent-dim", "8"])
    assert result.exit_code == 1 and "training failed" in result.output
    assert not (tmp_path / "demo").exists()
