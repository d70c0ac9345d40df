"""Hostile input, round 3, case 8: a damaged run folder (issue 25).

One real run folder is trained once (``tfssim-train``, one tiny epoch); each case copies it, damages
one file, and runs ``tfssim-train --resume`` and/or ``tfssim-export`` on the copy through click's
CliRunner. What the README promises for bad input: exit status 2, exactly one ``Error:`` line
naming the damaged file (and the key or line), no traceback, and every file of the run folder
byte-identical afterwards (the lock file included). ``scripts/train_any_backend.py``, which reads
the same files through the same readers, is checked the same way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import load_script
from skimage import io

from tfssim import run_record
from tfssim.cli import export as export_cli
from tfssim.cli import train as train_cli
from tfssim.run_record import LOCK_NAME
from tfssim.training import TrainConfig

ONE_STEP = ["--patch-size", "32", "--latent-dim", "8", "--batch-size", "16", "--patches-per-epoch", "16"]
WEIGHTS = "state/epoch-00001.weights.h5"


# --- the run folder --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(images, run folder) of one finished one-epoch tfssim-train run; tests copy the folder before damaging it."""
    root = tmp_path_factory.mktemp("trained")
    images = root / "good"
    images.mkdir()
    for seed in range(3):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:48, :48]
        texture = 0.5 + 0.3 * np.sin(xx / 3.0 + seed) * np.cos(yy / 5.0) + rng.normal(0, 0.05, (48, 48))
        io.imsave(images / f"img{seed}.png", (np.clip(texture, 0, 1) * 255).astype(np.uint8), check_contrast=False)
    run = root / "run"
    result = CliRunner().invoke(train_cli.main, [str(images), "--output", str(run), "--epochs", "1", *ONE_STEP])
    assert result.exit_code == 0, result.output
    assert (run / WEIGHTS).is_file() and (run / LOCK_NAME).read_bytes() == b""  # the lock is emptied on release
    return images, run


@pytest.fixture
def copied(trained: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    images, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return images, copy


def _digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, by path: a refused command must leave each byte-identical."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _edit_history(run: Path, change: Callable[[list[list[str]]], object]) -> None:
    lines = [line.split(",") for line in (run / "history.csv").read_text().splitlines()]
    change(lines)
    (run / "history.csv").write_text("".join(",".join(cells) + "\n" for cells in lines))


def _set_cell(lines: list[list[str]], column: str, value: str) -> None:
    lines[1][lines[0].index(column)] = value


def _drop_column(lines: list[list[str]], column: str) -> None:
    at = lines[0].index(column)
    for cells in lines:
        del cells[at]


def _truncate(path: Path, keep: int) -> None:
    """Keep the first ``keep`` bytes (negative: all but the last ``-keep``), as a disk that filled up would."""
    path.write_bytes(path.read_bytes()[:keep])


def _set(*keys: str, value: object) -> Callable[[dict], object]:
    """A change setting ``record[keys[0]][keys[1]]... = value``."""
    def change(record: dict) -> None:
        for key in keys[:-1]:
            record = record[key]
        record[keys[-1]] = value
    return change


# Each case: (id, the damaged file, how, a part of the one Error line, the commands that refuse it). Both commands
# read config.json and history.csv; only a resume reads progress.json and the checkpoint it names, and checks
# best.keras (export's own check of the model file it loads is the test after these).
BOTH, RESUME = ("resume", "export"), ("resume",)
CASES: list[tuple[str, str, Callable[[Path], object], str, tuple[str, ...]]] = [
    # the cases
    ("history cut mid-line", "history.csv", lambda run: _truncate(run / "history.csv", -4),
     "line 2 is cut short", BOTH),
    ("progress holds a string", "state/progress.json", lambda run: (run / "state/progress.json").write_text('"x"'),
     "holds a string, not a JSON object", RESUME),
    ("config is a list", "config.json", lambda run: (run / "config.json").write_text("[1, 2]"),
     "holds a list, not a JSON object", BOTH),
    ("patch_size abc", "config.json", lambda run: _edit_json(run / "config.json", _set("config", "patch_size",
                                                                                        value="abc")),
     "config.patch_size must be an integer >= 16, got 'abc'", BOTH),
    ("epochs a string", "config.json", lambda run: _edit_json(run / "config.json", _set("config", "epochs", value="5")),
     "config.epochs must be an integer >= 1, got '5'", BOTH),
    ("junk weights", WEIGHTS, lambda run: _truncate(run / WEIGHTS, 100_000),
     "the resume checkpoint does not load", RESUME),
    # history.csv: missing columns, cells that are no numbers, NaN, epochs out of order, fewer than progress.json says
    ("history without loss", "history.csv", lambda run: _edit_history(run, lambda h: _drop_column(h, "loss")),
     "the header has no loss column", BOTH),
    ("history cell not a number", "history.csv", lambda run: _edit_history(run, lambda h: _set_cell(h, "loss", "abc")),
     "line 2: loss is 'abc', not a finite number", BOTH),
    ("history NaN", "history.csv", lambda run: _edit_history(run, lambda h: _set_cell(h, "val_loss", "nan")),
     "line 2: val_loss is 'nan', not a finite number", BOTH),
    ("history short row", "history.csv", lambda run: _edit_history(run, lambda h: h[1].pop()),
     "line 2 has 3 cells, the header 4", BOTH),
    ("history epoch out of order", "history.csv", lambda run: _edit_history(run, lambda h: _set_cell(h, "epoch", "3")),
     "line 2: epoch is '3', expected 1", BOTH),
    ("history not utf-8", "history.csv", lambda run: (run / "history.csv").write_bytes(b"epoch,loss\n1,\xff\n"),
     "not UTF-8 text", BOTH),
    ("history behind progress", "history.csv", lambda run: _edit_history(run, lambda h: h.pop()),
     "holds 0 epoch(s), but", RESUME),
    # progress.json: keys missing, of the wrong type, a weights name that leaves the state folder
    ("progress without epochs_done", "state/progress.json",
     lambda run: _edit_json(run / "state/progress.json", lambda p: p.pop("epochs_done")), "has no 'epochs_done'",
     RESUME),
    ("progress epochs_done a string", "state/progress.json",
     lambda run: _edit_json(run / "state/progress.json", _set("epochs_done", value="1")),
     "epochs_done must be an integer >= 1, got '1'", RESUME),
    ("progress best NaN", "state/progress.json",
     lambda run: _edit_json(run / "state/progress.json", _set("best", value=float("nan"))),
     "best must be a finite number, got nan", RESUME),
    ("progress weights outside state", "state/progress.json",
     lambda run: _edit_json(run / "state/progress.json", _set("weights", value="../config.json")),
     "weights must be a file name ending in .weights.h5", RESUME),
    ("progress cut", "state/progress.json", lambda run: _truncate(run / "state/progress.json", 20),
     "not valid JSON", RESUME),
    ("weights missing", WEIGHTS, lambda run: (run / WEIGHTS).unlink(), "missing: ", RESUME),
    ("weights not hdf5", WEIGHTS, lambda run: (run / WEIGHTS).write_bytes(b"junk"),
     "the resume checkpoint does not load", RESUME),
    ("best.keras not a zip", "best.keras", lambda run: (run / "best.keras").write_bytes(b"junk"),
     "not a .keras archive", RESUME),
    # config.json: not JSON, no settings, each kind of setting and each part of the record of the wrong type
    ("config cut", "config.json", lambda run: _truncate(run / "config.json", 50), "not valid JSON", BOTH),
    ("config binary", "config.json", lambda run: (run / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00"),
     "not UTF-8 text", BOTH),
    ("config without settings", "config.json", lambda run: _edit_json(run / "config.json", lambda r: r.pop("config")),
     "holds no run settings", BOTH),
    ("switch a string", "config.json", lambda run: _edit_json(run / "config.json", _set("config", "augment",
                                                                                         value="yes")),
     "config.augment must be true or false, got 'yes'", BOTH),
    ("number a string", "config.json", lambda run: _edit_json(run / "config.json", _set("config", "learning_rate",
                                                                                         value="fast")),
     "config.learning_rate must be a number > 0", BOTH),
    ("number out of range", "config.json", lambda run: _edit_json(run / "config.json", _set("config", "scale",
                                                                                             value=5)),
     "config.scale must be a number > 0 and <= 1, got 5", BOTH),
    ("integer a float", "config.json", lambda run: _edit_json(run / "config.json", _set("config", "latent_dim",
                                                                                         value=8.5)),
     "config.latent_dim must be an integer >= 1, got 8.5", BOTH),
    ("string a number", "config.json", lambda run: _edit_json(run / "config.json", _set("config", "model", value=5)),
     "config.model must be a string, got 5", BOTH),
    ("image_size one number", "config.json", lambda run: _edit_json(run / "config.json", _set("config", "image_size",
                                                                                               value=[64])),
     "config.image_size must be null or a list of two integers", BOTH),
    ("ssim window even", "config.json", lambda run: _edit_json(run / "config.json", _set("config", "ssim_window",
                                                                                          value=4)),
     "config.ssim_*: ", BOTH),
    # a choice TrainConfig refuses, in both the setting and its copy: export read it as a kind before (S6)
    ("unknown model", "config.json", lambda run: _edit_json(run / "config.json", lambda r: r.update(
        model="xyz", config={**r["config"], "model": "xyz"})),
     "its settings are refused (unknown model 'xyz' for model (--model); choose one of ssim, l2, vae, fm)", BOTH),
    ("record patch_size", "config.json", lambda run: _edit_json(run / "config.json", _set("patch_size", value="abc")),
     "patch_size must be an integer >= 16, got 'abc'", BOTH),
    ("record channels", "config.json", lambda run: _edit_json(run / "config.json", _set("channels", value=2)),
     "channels must be 1 or 3, got 2", BOTH),
    # S6: a copy of a setting outside config that differs from it: resume kept config's and rewrote the file,
    # export took the copy (and refused it, or exported a model the run's settings do not describe)
    ("record model", "config.json", lambda run: _edit_json(run / "config.json", _set("model", value="vae2")),
     "model is 'vae2' but config.model is 'ssim': the trainer records the same setting in both", BOTH),
    ("record channels 3", "config.json", lambda run: _edit_json(run / "config.json", _set("channels", value=3)),
     "channels is 3 but config.grayscale is true (1 channel)", BOTH),
    ("config model", "config.json", lambda run: _edit_json(run / "config.json", _set("config", "model",
                                                                                      value="vae2")),
     "model is 'ssim' but config.model is 'vae2'", BOTH),
    ("record patch_size differs", "config.json", lambda run: _edit_json(run / "config.json", _set("patch_size",
                                                                                                   value=64)),
     "patch_size is 64 but config.patch_size is 32", BOTH),
    ("record latent_dim differs", "config.json", lambda run: _edit_json(run / "config.json", _set("latent_dim",
                                                                                                    value=9)),
     "latent_dim is 9 but config.latent_dim is 8", BOTH),
    ("record ssim differs", "config.json", lambda run: _edit_json(run / "config.json", _set("ssim", "window_size",
                                                                                             value=7)),
     "ssim.window_size is 7 but config.ssim_window is 11", BOTH),
    ("record resize differs", "config.json", lambda run: _edit_json(run / "config.json", _set("resize", "scale",
                                                                                               value=0.5)),
     "resize.scale is 0.5 but config.scale is 1.0", BOTH),
    # S6: top-level keys the trainer writes, of the wrong type (resume and export both took them)
    ("record resize scale x", "config.json", lambda run: _edit_json(run / "config.json", _set("resize", "scale",
                                                                                               value="x")),
     "resize.scale must be a number > 0 and <= 1, got 'x'", BOTH),
    ("record resize a list", "config.json", lambda run: _edit_json(run / "config.json", _set("resize", value=[1])),
     "resize must be an object of scale, image_size and interpolation, got [1]", BOTH),
    ("record replicas", "config.json", lambda run: _edit_json(run / "config.json", _set("replicas", value="2")),
     "replicas must be an integer >= 1, got '2'", BOTH),
    ("record layout", "config.json", lambda run: _edit_json(run / "config.json", _set("layout", value=3)),
     "layout must be a string, got 3", BOTH),
    # a copy without its setting: the choice is checked on the copy (export read it as the model's kind)
    ("record model, config without", "config.json", lambda run: _edit_json(run / "config.json", lambda r: (
        r.update(model="vae2"), r["config"].pop("model"))),
     "model must be one of ssim, l2, vae, fm, got 'vae2'", BOTH),
    # S6, the other way round: resume refused these settings, export copied them into training_config
    ("config batch_size 10**30", "config.json", lambda run: _edit_json(run / "config.json", _set(
        "config", "batch_size", value=10**30)),
     "its settings are refused (patches-per-epoch (16) must be at least the batch size (10000000000", BOTH),
    ("record ssim", "config.json", lambda run: _edit_json(run / "config.json", _set("ssim", "window_size", value=4)),
     "ssim: ", BOTH),
    ("record fingerprint", "config.json", lambda run: _edit_json(run / "config.json", _set(
        "data_fingerprint", "train", value=[["img1.png", "big"]])), "data_fingerprint must be", BOTH),
    ("record previous_locations", "config.json",
     lambda run: _edit_json(run / "config.json", _set("previous_locations", value="elsewhere")),
     "previous_locations must be", BOTH),
    ("record image list", "config.json", lambda run: _edit_json(run / "config.json", _set("train_images", value=3)),
     "train_images must be a list of paths", BOTH),
]


def assert_refused(result: Result, run: Path, damaged: str, part: str, before: dict[str, str]) -> str:
    """Exit 2, no traceback, exactly one ``Error:`` line naming the damaged file and ``part``; the run unchanged."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "Exception ignored" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert str(run / damaged) in errors[0] and part in errors[0], errors[0]
    assert _digest(run) == before  # nothing written, removed or added (the lock file included)
    return errors[0]


def _run(command: str, images: Path, run: Path, exports: Path) -> Result:
    if command == "resume":
        return CliRunner().invoke(train_cli.main, [str(images), "--output", str(run), "--resume", "--epochs", "2"])
    return CliRunner().invoke(export_cli.main, [str(run), "--name", "damaged", "--output", str(exports)])


@pytest.mark.parametrize("case, command", [(case, command) for case in CASES for command in case[4]],
                         ids=[f"{case[0]}-{command}" for case in CASES for command in case[4]])
def test_a_damaged_run_folder_is_one_error_line_and_changes_nothing(case, command: str, copied: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    _, damaged, damage, part, _ = case
    images, run = copied
    damage(run)
    before = _digest(run)
    line = assert_refused(_run(command, images, run, tmp_path / "exports"), run, damaged, part, before)
    assert "the run folder is damaged" in line
    # the fix names each command's way out besides repairing the file
    assert ("train into a new --output" if command == "resume" else f"export {run / 'best.keras'} itself") in line
    assert not (tmp_path / "exports" / "damaged" / "1").exists()


S6_CASES = [case for case in CASES if case[0] in (
    "record model", "record channels 3", "config model", "record resize scale x", "unknown model",
    "config batch_size 10**30")]


@pytest.mark.parametrize("case", S6_CASES, ids=[case[0] for case in S6_CASES])
def test_resume_and_export_read_the_record_alike(case, copied: tuple[Path, Path], tmp_path: Path) -> None:
    """One reader: the same problem in the same words from both commands, only the way out differs."""
    _, damaged, damage, part, _ = case
    images, run = copied
    damage(run)
    before = _digest(run)
    lines = [assert_refused(_run(command, images, run, tmp_path / "exports"), run, damaged, part, before)
             for command in ("resume", "export")]
    problems = [line.split("; the run folder is damaged: ")[0] for line in lines]
    assert problems[0] == problems[1], lines


def test_an_intact_record_is_read_alike_by_both_readers(copied: tuple[Path, Path]) -> None:
    """The strict reader accepts what the trainer wrote: every check above can only fail on damage."""
    from tfssim.training.run_folder import read_run

    _, run = copied
    record = json.loads((run / "config.json").read_text())
    assert read_run(run) == record == run_record.read_run_record(run)
    assert record["resize"] == {"scale": 1.0, "image_size": None, "interpolation": "bilinear_antialias"}


# --- S4/S5: the lock file is opened only if it is a regular file ------------------------------------------------------


@pytest.fixture
def no_hang():
    """Fail a test whose command blocks (a FIFO opened without O_NONBLOCK) instead of hanging the suite."""
    import signal

    def alarm(signum, frame):
        raise TimeoutError("the command blocked for 60 s (opening the lock file?)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _symlink_outside(run: Path) -> Path:
    target = run.parent / "precious.txt"
    target.write_text("not a lock: must survive\n")
    (run / LOCK_NAME).unlink()
    (run / LOCK_NAME).symlink_to(target)
    return target


LOCKS: list[tuple[str, Callable[[Path], object], str, tuple[str, ...]]] = [
    # S4: tfssim-train --resume truncated the link's target to 0 bytes and exited 0
    ("symlink", _symlink_outside, "is a symbolic link, not a lock file", BOTH),
    ("dangling symlink", lambda run: ((run / LOCK_NAME).unlink(), (run / LOCK_NAME).symlink_to(run / "nowhere")),
     "is a symbolic link, not a lock file", BOTH),
    # S5: tfssim-export (and resume) blocked forever opening the FIFO
    ("fifo", lambda run: ((run / LOCK_NAME).unlink(), os.mkfifo(run / LOCK_NAME)), "is a named pipe, not a lock file",
     BOTH),
    ("folder", lambda run: ((run / LOCK_NAME).unlink(), (run / LOCK_NAME).mkdir()), "is a folder, not a lock file",
     BOTH),
    # the trainer writes the lock in place: through a second name it would change another file (export only reads)
    ("hard link", lambda run: ((run / LOCK_NAME).unlink(), os.link(run / "history.csv", run / LOCK_NAME)),
     "is a hard link to a file with 2 names", RESUME),
]


@pytest.mark.parametrize("case, command", [(case, command) for case in LOCKS for command in case[3]],
                         ids=[f"{case[0]}-{command}" for case in LOCKS for command in case[3]])
def test_a_lock_file_that_is_no_regular_file_is_refused_not_followed(case, command: str, copied: tuple[Path, Path],
                                                                     tmp_path: Path, no_hang) -> None:
    _, make, part, _ = case
    images, run = copied
    make(run)
    outside = run.parent / "precious.txt"
    before, outside_before = _digest(run), outside.read_bytes() if outside.exists() else None
    result = _run(command, images, run, tmp_path / "exports")
    line = assert_refused(result, run, LOCK_NAME, part, before)
    assert line.endswith("; remove it (tfssim-train makes a new one when it trains into the folder)"), line
    assert (outside.read_bytes() if outside.exists() else None) == outside_before  # the link's target untouched
    assert not (tmp_path / "exports").exists()


@pytest.mark.parametrize("case", [case for case in LOCKS if case[0] in ("symlink", "fifo")], ids=["symlink", "fifo"])
def test_a_new_run_refuses_a_lock_file_that_is_no_regular_file(case, trained: tuple[Path, Path], tmp_path: Path,
                                                                no_hang) -> None:
    _, make, part, _ = case
    images, _ = trained
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).touch()
    make(run)
    before = _digest(run)
    result = CliRunner().invoke(train_cli.main, [str(images), "--output", str(run), "--epochs", "1", *ONE_STEP])
    assert_refused(result, run, LOCK_NAME, part, before)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
    if case[0] == "symlink":
        assert (tmp_path / "precious.txt").read_text() == "not a lock: must survive\n"


def test_a_refused_resume_leaves_a_killed_trainers_lock_file_as_it_was(copied: tuple[Path, Path]) -> None:
    # a trainer that was killed leaves its process id in the lock; the resume below is refused after it
    # took the lock (history.csv is read then), and must leave that file byte-identical too
    images, run = copied
    (run / LOCK_NAME).write_bytes(b"4242\n")
    _truncate(run / "history.csv", -4)
    before = _digest(run)
    result = _run("resume", images, run, run.parent / "exports")
    assert_refused(result, run, "history.csv", "line 2 is cut short", before)
    assert (run / LOCK_NAME).read_bytes() == b"4242\n"


@pytest.mark.parametrize("junk", ["best.keras", "final.keras"])
def test_export_of_a_run_whose_model_file_is_junk_names_the_file(junk: str, copied: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    _, run = copied
    if junk == "final.keras":
        (run / "best.keras").unlink()  # export takes best.keras where there is one
    (run / junk).write_bytes(b"PK\x03\x04 not really a zip")
    before = _digest(run)
    result = CliRunner().invoke(export_cli.main, [str(run), "--name", "junk", "--output", str(tmp_path / "exports")])
    assert_refused(result, run, junk, "is not a readable Keras file", before)


def test_the_run_folders_values_reach_the_export_typed(copied: tuple[Path, Path]) -> None:
    """What export takes from an intact run folder: numbers as numbers (metadata's training_config, checkpoint)."""
    from tfssim.export import load_for_export

    _, run = copied
    _, info = load_for_export(run)
    config = info["training_config"]
    assert type(config["epochs"]) is int and type(config["patch_size"]) is int and type(config["augment"]) is bool
    assert type(config["learning_rate"]) is float
    checkpoint = info["checkpoint"]
    assert (checkpoint["epoch"], checkpoint["epochs_done"], checkpoint["epochs_configured"]) == (1, 1, 1)
    assert type(checkpoint["epoch"]) is int and type(checkpoint["val_loss"]) is float


def test_the_schema_types_every_setting_and_reads_back_what_the_trainer_writes(tmp_path: Path) -> None:
    """run_record's table covers every TrainConfig field, and a validated config passes its own checks."""
    typed = {*run_record.INT_SETTINGS, *run_record.FLOAT_SETTINGS, *run_record.BOOL_SETTINGS,
             *run_record.STR_SETTINGS, "image_size"}
    assert typed == {f.name for f in dataclasses.fields(TrainConfig)}
    for config in (TrainConfig(data="d", output="o"), TrainConfig(data="d", output="o", image_size=(256, 256),
                                                                   fm_weights=None, patch_size=64)):
        config.validate()
        assert {k: run_record.setting_problem(k, v) for k, v in config.to_dict().items()} == dict.fromkeys(
            config.to_dict())
    # --config files take the same raw types (their ranges are TrainConfig.validate's, after conversion)
    assert run_record.setting_problem("epochs", 0, ranges=False) is None
    assert run_record.setting_problem("epochs", 0) == "an integer >= 1"
    assert run_record.setting_problem("epochs", "5", ranges=False) == "an integer >= 1"
    assert run_record.setting_problem("learning_rate", 10**400) == "a number > 0"  # beyond float: not finite
    # unknown keys are kept, unchecked (a newer trainer's, the script's val_count)
    (tmp_path / "config.json").write_text(json.dumps({"config": {"val_count": "x", "epochs": 3}, "future": [1]}))
    assert run_record.read_run_record(tmp_path)["future"] == [1]


# --- scripts/train_any_backend.py: the same readers ------------------------------------------------------------------


@pytest.mark.parametrize("damaged, damage, part", [
    ("history.csv", lambda run: _truncate(run / "history.csv", -4), "line 2 is cut short"),
    ("config.json", lambda run: _edit_json(run / "config.json", _set("config", "patch_size", value="abc")),
     "config.patch_size must be an integer >= 16"),
    ("state.keras", lambda run: (run / "state.keras").write_bytes(b"junk"), "the resume state does not load"),
], ids=["history cut", "patch_size abc", "junk state"])
def test_train_any_backend_refuses_a_damaged_run_folder_naming_the_file(damaged: str, damage, part: str,
                                                                       copied: tuple[Path, Path]) -> None:
    images, run = copied
    shutil.copy(run / "final.keras", run / "state.keras")  # the script's resume state: a whole .keras model
    damage(run)
    before = _digest(run)
    with pytest.raises(SystemExit) as exit_:
        load_script("train_any_backend").main([str(images), "--output", str(run), "--epochs", "2"])
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert str(run / damaged) in message and part in message and "the run folder is damaged" in message, message
    assert _digest(run) == before
