"""Issue 18: per-defect-type scores, relocatable run folders, a clear word without TensorFlow,
and the checkpoint an export took."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from skimage import io
from sklearn.metrics import f1_score, jaccard_score, roc_auc_score

from tfssim import data
from tfssim.cli.evaluate import main as evaluate_cli
from tfssim.evaluation import evaluate, per_type
from tfssim.serving.inference import ExportedModel

# ---------------------------------------------------------------------------------------------
# 1. Per-defect-type scores


def _synthetic_maps(seed: int = 0):
    """Maps and masks of 2 'crack' (separable), 2 'stain' (inverted) and 3 good test images."""
    rng = np.random.default_rng(seed)
    maps, masks, labels = [], [], []
    for kind, count in (("crack", 2), ("stain", 2), ("good", 3)):
        for _ in range(count):
            m = rng.uniform(0.2, 0.6, (24, 30))
            g = np.zeros((24, 30), bool)
            if kind != "good":
                y, x = rng.integers(2, 12), rng.integers(2, 18)
                g[y:y + 6, x:x + 8] = True
                # crack: every defect pixel above every good pixel; stain: below every good pixel.
                m[g] = rng.uniform(0.7, 0.9, int(g.sum())) if kind == "crack" else rng.uniform(0.0, 0.1, int(g.sum()))
            maps.append(m)
            masks.append(g)
            labels.append(kind)
    val = [rng.uniform(0.2, 0.6, (24, 30)) for _ in range(2)]
    return val, maps, masks, labels


def test_per_type_scores_match_sklearn_on_each_types_pixels():
    val, maps, masks, labels = _synthetic_maps()
    result = evaluate.evaluate_maps("m", val, maps, masks, fpr=0.05, opening_diameter=0, convex_hull=False,
                                      test_labels=labels)
    assert list(result.per_type) == ["crack", "stain"]
    threshold = result.scores["threshold"]
    good = [i for i, k in enumerate(labels) if k == "good"]
    for kind, scores in result.per_type.items():
        own = [i for i, k in enumerate(labels) if k == kind]
        chosen = own + good
        y = np.concatenate([masks[i].ravel() for i in chosen])
        s = np.concatenate([maps[i].ravel() for i in chosen])
        assert scores["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        image_labels = [1] * len(own) + [0] * len(good)
        assert scores["image_auroc"] == pytest.approx(roc_auc_score(image_labels, [maps[i].max() for i in chosen]))
        seg = s > threshold  # no opening, no hulls: the segmentation is the thresholded map
        assert scores["f1"] == pytest.approx(f1_score(y, seg, zero_division=1.0))
        assert scores["iou"] == pytest.approx(jaccard_score(y, seg, zero_division=1.0))
        assert (scores["images"], scores["good_images"]) == (2, 3)
    # Known by construction: crack's defect pixels outscore every good pixel, stain's none.
    assert result.per_type["crack"]["pixel_auroc"] == 1.0 and result.per_type["crack"]["aupro_0.3"] == 1.0
    assert result.per_type["stain"]["pixel_auroc"] == 0.0 and result.per_type["stain"]["aupro_0.3"] == 0.0
    # The other type's images are not in a type's pixels: the pooled score lies between the two.
    pooled = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
    assert result.scores["pixel_auroc"] == pytest.approx(pooled, abs=1e-12) and 0.2 < pooled < 0.8
    # Without labels: no per-type scores.
    assert evaluate.evaluate_maps("m", val, maps, masks, fpr=0.05).per_type is None


def _typed_folder(dataset: Path, root: Path) -> Path:
    """The conftest dataset re-sorted by defect type: test/crack (2), test/stain (1), test/good (1)."""
    shutil.copytree(dataset / "train", root / "train")
    shutil.copytree(dataset / "val", root / "val")
    tests = data.list_images(dataset / "test")
    for kind, images in (("crack", tests[:2]), ("stain", tests[2:])):
        (root / "test" / kind).mkdir(parents=True)
        (root / "ground_truth" / kind).mkdir(parents=True)
        for image in images:
            shutil.copy(image, root / "test" / kind / image.name)
            shutil.copy(dataset / "ground_truth" / f"{image.stem}_mask.png", root / "ground_truth" / kind)
    (root / "test" / "good").mkdir()
    train = io.imread(data.list_images(dataset / "train")[0])
    io.imsave(root / "test" / "good" / "ok_000.png", train[:64, :80], check_contrast=False)
    return root


def test_defect_types_of_each_layout(dataset, tmp_path):
    typed = _typed_folder(dataset, tmp_path / "typed")
    assert per_type.defect_types(data.load_dataset(typed)) == ["crack", "stain"]
    assert per_type.defect_types(data.load_dataset(dataset)) == []  # flat test/ folder
    mvtec = tmp_path / "mvtec"
    shutil.copytree(dataset / "train", mvtec / "train" / "good")
    shutil.copytree(typed / "test", mvtec / "test")
    shutil.copytree(typed / "ground_truth", mvtec / "ground_truth")
    split = data.load_dataset(mvtec)
    assert split.layout == "mvtec" and per_type.defect_types(split) == ["crack", "stain"]
    nano = tmp_path / "nano"
    (nano / "Anomalous").mkdir(parents=True)
    shutil.copytree(dataset / "val", nano / "Normal")
    shutil.copytree(dataset / "test", nano / "Anomalous" / "images")
    (nano / "Anomalous" / "gt").mkdir()
    for mask in (dataset / "ground_truth").iterdir():
        shutil.copy(mask, nano / "Anomalous" / "gt" / mask.name.replace("_mask", "_gt"))
    assert per_type.defect_types(data.load_dataset(nano)) == []


@pytest.mark.slow  # two evaluations of a tiny export: about 15 s here
def test_evaluate_reports_each_defect_type_beside_the_pooled_scores(exports, dataset, tmp_path):
    typed = _typed_folder(dataset, tmp_path / "typed")
    out = tmp_path / "eval"
    result = CliRunner().invoke(evaluate_cli, [str(typed), str(exports[0]), "--output", str(out), "--fpr", "0.05"])
    assert result.exit_code == 0, result.output
    assert result.exception is None
    payload = json.loads((out / "results.json").read_text())
    scores = payload["exports"]["ssim/1"]
    assert payload["counts"]["per_type"] == {"crack": 2, "stain": 1, "good": 1}
    assert set(scores["per_type"]) == {"crack", "stain"} and "pixel_auroc" in scores
    assert (out / "per_type.png").stat().st_size > 0 and "per_type.png" in result.output
    assert "per defect type" in result.output and "crack" in result.output and "stain" in result.output

    # Cross-check against scikit-learn on the model's own maps, type by type.
    split = data.load_dataset(typed)
    model = ExportedModel.load(exports[0])
    maps = [model.predict(data.read_image(p))["anomaly_map"] for p in split.test]
    masks = [np.zeros((64, 80), bool) if p is None else data.read_mask(p) for p in split.test_masks]
    good = [i for i, k in enumerate(split.test_labels) if k == "good"]
    for kind in ("crack", "stain"):
        own = [i for i, k in enumerate(split.test_labels) if k == kind]
        y = np.concatenate([masks[i].ravel() for i in own + good])
        s = np.concatenate([maps[i].ravel() for i in own + good])
        # Streamed (issue 24): within the histogram's stated bound of the exact AUC.
        bound = scores["per_type"][kind]["pixel_auroc_error_bound"]
        assert bound <= 1e-3
        assert scores["per_type"][kind]["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=bound + 1e-12)
        want = roc_auc_score([1] * len(own) + [0] * len(good), [maps[i].max() for i in own + good])
        assert scores["per_type"][kind]["image_auroc"] == pytest.approx(want, abs=1e-12)
        assert 0 <= scores["per_type"][kind]["aupro_0.3"] <= 1

    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["model"], r["defect_type"]) for r in rows] == [("ssim/1", "all"), ("ssim/1", "crack"),
                                                              ("ssim/1", "stain")]
    assert float(rows[0]["pixel_auroc"]) == scores["pixel_auroc"]
    assert float(rows[1]["pixel_auroc"]) == scores["per_type"]["crack"]["pixel_auroc"]
    assert float(rows[2]["f1"]) == scores["per_type"]["stain"]["f1"]
    assert rows[1]["threshold"] == rows[0]["threshold"] and rows[1]["segmentation_auroc"] == ""
    assert (rows[0]["test_images"], rows[1]["test_images"], rows[2]["test_images"]) == ("4", "3", "2")

    # A flat test folder keeps the pooled report alone.
    flat_out = tmp_path / "flat"
    flat = CliRunner().invoke(evaluate_cli, [str(dataset), str(exports[0]), "--output", str(flat_out)])
    assert flat.exit_code == 0, flat.output
    flat_payload = json.loads((flat_out / "results.json").read_text())
    assert "per_type" not in flat_payload["exports"]["ssim/1"] and "per_type" not in flat_payload["counts"]
    assert not (flat_out / "per_type.png").exists() and "per defect type" not in flat.output
    with (flat_out / "results.csv").open() as fh:
        assert next(csv.reader(fh)) == ["model", *evaluate.CSV_KEYS, "seconds"]


# ---------------------------------------------------------------------------------------------
# 2. Relocatable run folders

TINY_RUN = ["--patch-size", "32", "--latent-dim", "8", "--batch-size", "16", "--patches-per-epoch", "16",
            "--val-split", "0.25"]


def _one_error_line(result, *parts: str) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        io.imsave(folder / f"img{i}.png", rng.integers(0, 256, (48, 56), dtype=np.uint8), check_contrast=False)
    return folder


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow  # three tiny training legs: about 20 s here
def test_a_moved_run_folder_and_dataset_resume_with_their_history(images: Path, tmp_path: Path):
    from tfssim.cli.train import main as train_cli

    run = tmp_path / "disk1" / "run"
    first = CliRunner().invoke(train_cli, [str(images), "--output", str(run), "--epochs", "1", *TINY_RUN])
    assert first.exit_code == 0, first.output
    record = json.loads((run / "config.json").read_text())
    assert [name for name, _, _ in record["data_fingerprint"]["train"]] == \
        [Path(p).name for p in record["train_images"]]
    first_row = _history(run)[0]

    # The run folder moves to another disk and the dataset to another folder: resume there.
    moved = tmp_path / "disk2" / "run"
    shutil.copytree(run, moved)
    shutil.rmtree(run)
    data_moved = shutil.copytree(images, tmp_path / "elsewhere" / "images")
    resumed = CliRunner().invoke(train_cli, [str(data_moved), "--output", str(moved), "--epochs", "2", "--resume",
                                             *TINY_RUN])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming after epoch 1" in resumed.output
    rows = _history(moved)
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0] == first_row  # the history came along
    again = json.loads((moved / "config.json").read_text())
    assert again["config"]["output"] == str(moved) and again["config"]["data"] == str(data_moved)
    assert again["previous_locations"] == [{"output": str(run), "data": str(images)}]
    assert again["data_fingerprint"] == record["data_fingerprint"]
    assert not run.exists()
    # The export of the moved run records the epoch best.keras holds: the lowest val_loss's.
    from tfssim import export

    _, info = export.load_for_export(moved)
    lowest = min(rows, key=lambda r: float(r["val_loss"]))
    assert info["checkpoint"]["file"] == "best.keras" and info["checkpoint"]["epoch"] == int(lowest["epoch"])
    assert info["checkpoint"]["val_loss"] == float(lowest["val_loss"]) and info["checkpoint"]["epochs_configured"] == 2

    # Same names and sizes, one pixel changed: refused, naming the image, nothing touched.
    changed = shutil.copytree(images, tmp_path / "changed")
    pixels = io.imread(changed / "img0.png")
    pixels[0, 0] ^= 1
    io.imsave(changed / "img0.png", pixels, check_contrast=False)
    before = (moved / "history.csv").read_text()
    refused = CliRunner().invoke(train_cli, [str(changed), "--output", str(moved), "--epochs", "3", "--resume",
                                             *TINY_RUN])
    line = _one_error_line(refused, "img0.png", "differ", "give DATA the run's images")
    assert "SHA-256" in line
    assert (moved / "history.csv").read_text() == before

    # A run from before fingerprints: names decide; another name is refused.
    del again["data_fingerprint"]
    (moved / "config.json").write_text(json.dumps(again))
    renamed = shutil.copytree(images, tmp_path / "renamed")
    (renamed / "img3.png").rename(renamed / "img9.png")
    old = CliRunner().invoke(train_cli, [str(renamed), "--output", str(moved), "--epochs", "3", "--resume", *TINY_RUN])
    _one_error_line(old, "img9.png", "compared by names")
    assert (moved / "history.csv").read_text() == before


def test_resume_data_check_without_a_recorded_fingerprint_goes_by_names(images: Path, tmp_path: Path, caplog):
    from tfssim import run_record, training

    config = training.TrainConfig(data=str(images), output=str(tmp_path / "run"), val_split=0.25)
    split = data.load_dataset(images, val_fraction=0.25)
    previous = {"config": {"data": str(images)}, "train_images": [str(p) for p in split.train],
                "val_images": [str(p) for p in split.val]}
    # Same place: nothing is read; the fingerprint is made when the record is written.
    assert training.run_folder._check_same_data(previous, config, split, tmp_path) is None
    # Moved with the same names (one image's content changed: names cannot tell): accepted, with a warning.
    moved = shutil.copytree(images, tmp_path / "moved")
    pixels = io.imread(moved / "img1.png")
    io.imsave(moved / "img1.png", 255 - pixels, check_contrast=False)
    config.data = str(moved)
    moved_split = data.load_dataset(moved, val_fraction=0.25)
    with caplog.at_level("WARNING", logger="tfssim.training"):
        got = training.run_folder._check_same_data(previous, config, moved_split, tmp_path)
    assert "only the image names were compared" in caplog.text
    assert got == run_record.data_fingerprint(moved, moved_split.train, moved_split.val)
    # The fingerprint is recorded from now on: the next move compares contents.
    import hashlib

    name, size, digest = got["train"][0]
    path = moved / name
    assert (size, digest) == (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(ValueError, match="same size, other content|bytes"):
        training.run_folder._check_same_data({**previous, "data_fingerprint": run_record.data_fingerprint(
            images, split.train, split.val)}, config, moved_split, tmp_path)


# ---------------------------------------------------------------------------------------------
# 3. Without TensorFlow

# Runs a module as __main__ in a Python where `import tensorflow` fails as it does when the
# package is not installed (a meta-path finder raising ModuleNotFoundError for it).
_NO_TF = """
import importlib.abc, runpy, sys
class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoTensorFlow())
for module in [m for m in list(sys.modules) if m.split(".")[0] in ("tensorflow", "keras")]:
    del sys.modules[module]
kind, target, *args = sys.argv[1:]
if kind == "run":
    sys.argv = [target, *args]
    runpy.run_module(target, run_name="__main__")
else:
    exec(target)
"""
INSTALL = "pip install 'tfssim[cpu]' (or 'tfssim[gpu]')"
COMMANDS = ("train", "export", "calibrate", "tune", "predict", "evaluate", "demo")


def _without_tf(kind: str, target: str, *args: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", _NO_TF, kind, target, *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_works_without_tensorflow(command):
    done = _without_tf("run", f"tfssim.cli.{command}", "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_says_how_to_install_tensorflow(command, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    args = {
        "train": [str(folder), "--output", str(tmp_path / "run")],
        "export": [str(folder), "--name", "x", "--output", str(tmp_path / "exports")],
        "calibrate": [str(folder), str(folder)],
        "tune": [str(folder), str(folder), "--output", str(tmp_path / "out")],
        "predict": [str(folder), str(folder / "a.png"), "--output", str(tmp_path / "out")],
        "evaluate": [str(folder), str(folder), "--output", str(tmp_path / "out")],
        "demo": ["--output", str(tmp_path / "out")],
    }[command]
    done = _without_tf("run", f"tfssim.cli.{command}", *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].endswith(INSTALL), done.stderr
    assert "TensorFlow is not installed" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]  # nothing written


def test_train_config_file_without_tensorflow(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 3\n")
    done = _without_tf("run", "tfssim.cli.train", "--config", str(config), str(tmp_path), "--output", str(tmp_path / "r"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("Error:")] == [
        f"Error: TensorFlow is not installed, and this needs it; install tfssim with a TensorFlow flavour: {INSTALL}"]


def test_importing_a_tensorflow_module_without_it_names_the_install_command():
    check = """
import tfssim, tfssim.serving.inference, tfssim.serving.postprocess, tfssim.plots, tfssim.data, tfssim.cli._common  # no TF needed
# tfssim.core.ssim and tfssim.core.losses are keras.ops code for any Keras backend (JAX too): not listed.
# tfssim.export itself is TensorFlow-free (its layout serves tfssim.export.metadata); export_model's module is not.
for name in ("tfssim.training.precision", "tfssim.export.savedmodel", "tfssim.models.registry", "tfssim.data.patches",
             "tfssim.models.scoring"):
    try:
        __import__(name)
    except ModuleNotFoundError as err:
        assert err.name == "tensorflow" and str(err).endswith(INSTALL), (name, str(err))
    else:
        raise AssertionError(name + " imported without TensorFlow")
try:
    tfssim.serving.inference.ExportedModel.load(".")
except ImportError as err:
    assert str(err).endswith(INSTALL), str(err)
else:
    raise AssertionError("loaded")
print("ok")
""".replace("INSTALL", repr(INSTALL))
    done = _without_tf("exec", check)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_broken_tensorflow_is_one_line_too():
    from tfssim._requirements import is_tensorflow_import_error, tensorflow_message

    err = ImportError("libcudart.so.12: cannot open shared object file\nmore", name="tensorflow")
    line = tensorflow_message(err)
    assert line == f"TensorFlow is installed but does not import (libcudart.so.12: cannot open shared object " \
                   f"file); reinstall it: {INSTALL}"
    assert is_tensorflow_import_error(err) and not is_tensorflow_import_error(ModuleNotFoundError("x", name="yaml"))



# ---------------------------------------------------------------------------------------------
# 4. The checkpoint an export took


def _hold_lock(path: Path, how: str):
    """A process that holds ``how`` ('flock' or 'lockf') on ``path`` until it is killed."""
    import subprocess
    import sys

    code = ("import fcntl, sys\nf = open(sys.argv[1], 'a')\n"
            f"fcntl.{how}(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _write_run(run: Path, val_losses, epochs: int = 5) -> None:
    """A run folder as tfssim-train leaves it: config.json, history.csv, best.keras and final.keras."""
    from tfssim.models import build_model

    run.mkdir(parents=True)
    model = build_model("ssim", 32, 1, 8)
    model.save(run / "final.keras")
    model.save(run / "best.keras")
    (run / "config.json").write_text(json.dumps({"config": {"epochs": epochs, "model": "ssim", "patch_size": 32},
                                                 "model": "ssim", "channels": 1, "patch_size": 32}))
    with (run / "history.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "loss", "val_loss", "seconds"])
        for i, v in enumerate(val_losses):
            writer.writerow([i + 1, 0.9 - 0.1 * i, v, 1.0])


def test_training_running_sees_a_held_lock(tmp_path):
    from tfssim.export import training_running
    from tfssim.run_record import LOCK_NAME

    assert training_running(tmp_path) is None  # no lock file: cannot tell
    (tmp_path / LOCK_NAME).touch()
    assert training_running(tmp_path) is False
    for how in ("flock", "lockf"):
        holder = _hold_lock(tmp_path / LOCK_NAME, how)
        try:
            assert training_running(tmp_path) is True, how
        finally:
            holder.kill()
            holder.wait()
        assert training_running(tmp_path) is False, how


def test_checkpoint_info_reads_the_epoch_from_history(tmp_path):
    import os

    from tfssim.export import checkpoint_info

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").touch()
    (run / "final.keras").touch()
    val = [0.5, 0.3, 0.4, 0.3]
    with (run / "history.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["epoch", "loss", "val_loss", "seconds"],
                                  *[[i + 1, 1.0 / (i + 1), v, 2.0] for i, v in enumerate(val)]])
    best = checkpoint_info(run, run / "best.keras", {"config": {"epochs": 10}})
    assert (best["epoch"], best["val_loss"], best["loss"]) == (2, 0.3, 0.5)  # the first of two equal lowest
    assert (best["epochs_done"], best["epochs_configured"], best["monitor"]) == (4, 10, "val_loss")
    assert best["training_running"] is None
    # final.keras written after the last history row: the last epoch; older than history: unknown.
    os.utime(run / "history.csv", (1_000_000, 1_000_000))
    assert checkpoint_info(run, run / "final.keras")["epoch"] == 4
    os.utime(run / "final.keras", (999_000, 999_000))
    assert checkpoint_info(run, run / "final.keras")["epoch"] is None
    # No validation images: best.keras is chosen by the training loss.
    with (run / "history.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["epoch", "loss", "seconds"], [1, 0.4, 1], [2, 0.2, 1], [3, 0.25, 1]])
    best = checkpoint_info(run, run / "best.keras")
    assert (best["epoch"], best["monitor"], best["loss"], best["val_loss"]) == (2, "loss", 0.2, None)


def test_export_says_when_it_cannot_tell_whether_training_runs(tmp_path, caplog):
    from tfssim import export

    run = tmp_path / "run"
    run.mkdir()
    checkpoint = {"file": "final.keras", "path": str(run / "final.keras"), "epoch": 4, "epochs_configured": 4,
                  "epochs_done": 4, "monitor": "loss", "loss": 0.25, "training_running": None}
    with caplog.at_level("INFO", logger="tfssim.export"):
        export.source._report_checkpoint(run, checkpoint)
    assert f"checkpoint: {run / 'final.keras'}: epoch 4 of 4 (4 done; loss 0.25)" in caplog.text
    assert "cannot tell whether training" in caplog.text and "warning" not in caplog.text


@pytest.mark.slow  # a tiny export: about 10 s here
def test_export_records_and_prints_its_checkpoint_and_warns_while_training_runs(tmp_path):
    from tfssim.cli.export import main as export_cli
    from tfssim.export import read_export_metadata
    from tfssim.run_record import LOCK_NAME

    run = tmp_path / "run"
    _write_run(run, [0.5, 0.2, 0.3])
    (run / LOCK_NAME).touch()
    holder = _hold_lock(run / LOCK_NAME, "flock")
    try:
        done = CliRunner().invoke(export_cli, [str(run), "--name", "m", "--output", str(tmp_path / "exports")])
    finally:
        holder.kill()
        holder.wait()
    assert done.exit_code == 0 and done.exception is None, done.output
    meta = read_export_metadata(tmp_path / "exports" / "m" / "1")
    checkpoint = meta.checkpoint
    assert (checkpoint["file"], checkpoint["epoch"], checkpoint["val_loss"]) == ("best.keras", 2, 0.2)
    assert checkpoint["epochs_done"] == 3 and checkpoint["epochs_configured"] == 5
    assert checkpoint["training_running"] is True
    assert f"checkpoint: {run / 'best.keras'}: epoch 2 of 5 (3 done; val_loss 0.2, the lowest)" in done.output
    warnings = [line for line in done.output.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "best.keras" in warnings[0] and "export again" in warnings[0], done.output


def test_export_sees_the_lock_tfssim_train_holds(tmp_path):
    """The lock the trainer takes (training.run_folder._claim_run_folder) is the one the export looks for."""
    from tfssim import training
    from tfssim.export import training_running

    run = tmp_path / "run"
    with training.run_folder._claim_run_folder(run, resume=False):
        assert training_running(run) is True
    assert training_running(run) is False  # released with the run; the lock file stays
