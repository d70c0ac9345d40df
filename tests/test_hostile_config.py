"""Hostile input to tfssim-train, -calibrate, -demo and -export (issue 13, items 5-7 and the smaller ones).

Every case goes through a command line (click's CliRunner; the config validator also directly,
with Hypothesis) and checks what the README promises: the exit status, exactly one ``Error:``
line, no traceback, no run folder or debris left where none is promised, and every input file
byte-identical afterwards. The corpus is built here, at test time.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage import io

from tfssim import run_record, training
from tfssim.cli import calibrate as calibrate_cli
from tfssim.cli import demo as demo_cli
from tfssim.cli import export as export_cli
from tfssim.cli import train as train_cli

ONE_STEP = ["--patch-size", "32", "--latent-dim", "8", "--batch-size", "16", "--patches-per-epoch", "16"]


# --- helpers -----------------------------------------------------------------------------------


def _texture(seed: int, shape=(48, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.clip(0.5 + 0.3 * np.sin(xx / 3.0 + seed) * np.cos(yy / 5.0) + rng.normal(0, 0.05, shape), 0, 1)


def _png(path: Path, seed: int = 0, shape=(48, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(path, (_texture(seed, shape) * 255).astype(np.uint8), check_contrast=False)
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "good"
    for i in range(3):
        _png(folder / f"img{i}.png", i)
    return folder


def _digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (or of ``root`` itself): inputs must come out byte-identical."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_one_error_line(result: Result, *parts: str, exit_code: int = 2) -> str:
    """Exit status, no exception but SystemExit (no traceback), exactly one ``Error:`` line holding ``parts``."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "Exception ignored" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


def _train(*args: str) -> Result:
    return CliRunner().invoke(train_cli.main, [str(a) for a in args])


# --- item 5: config values are checked as written, before any conversion --------------------------


@pytest.mark.parametrize(
    "name, text, key, wanted",
    [
        ("lr-true.yaml", "learning_rate: true\n", "learning_rate (--learning-rate)", "must be a number > 0, got True"),
        ("epochs-float.yaml", "epochs: 1.5\n", "epochs (--epochs)", "must be an integer >= 1, got 1.5"),
        ("epochs-true.yaml", "epochs: true\n", "epochs (--epochs)", "must be an integer >= 1, got True"),
        ("batch-float.yaml", "batch_size: 16.9\n", "batch_size (--batch-size)", "must be an integer >= 1, got 16.9"),
        ("gray-string.yaml", 'grayscale: "no"\n', "grayscale (--grayscale/--rgb)", "must be true or false, got 'no'"),
        ("epochs-list.yaml", "epochs: [1]\n", "epochs (--epochs)", "got a list [1]"),
        ("data-mapping.json", '{"data": {"a": 1}}', "data (DATA)", "must be a string, got a mapping {'a': 1}"),
        ("model-int.json", '{"model": 3}', "model (--model)", "must be a string, got 3"),
        ("seed-string.json", '{"seed": "3"}', "seed (--seed)", "must be an integer >= 0"),
        ("weights-list.yaml", "weights: [a, b]\n", "fm_weights (--weights)", "got a list ['a', 'b']"),
        ("sigma-bool.yaml", "ssim_sigma: false\n", "ssim_sigma", "must be a number > 0, got False"),
    ],
)
def test_config_value_of_the_wrong_type_is_refused_naming_key_type_and_file(
        name: str, text: str, key: str, wanted: str, images: Path, tmp_path: Path) -> None:
    cfg = tmp_path / name
    cfg.write_text(text)
    before = _digest(cfg) | _digest(images)
    result = _train(images, "--output", tmp_path / "run", "--config", cfg, *ONE_STEP)
    assert_one_error_line(result, f"config file {cfg}", key, wanted)
    assert not (tmp_path / "run").exists()
    assert _digest(cfg) | _digest(images) == before


@pytest.mark.parametrize(
    "name, make, problem",
    [
        ("deep.json", lambda: "[" * 100_000 + "]" * 100_000, "nests deeper than 8 levels"),
        ("deep-value.json", lambda: '{"model": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests deeper than 8 levels"),
        ("deep.yaml", lambda: "model: " + "[" * 100_000 + "]" * 100_000 + "\n", "nests deeper than 8 levels"),
        ("bomb.yaml", lambda: "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"  # a billion laughs
                              + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
                                        for p, c in zip("abcdefgh", "bcdefghi"))
                              + "model: *i\n", "uses a YAML anchor or alias"),
        ("huge.yaml", lambda: "# padding\n" * 120_000 + "epochs: 1\n", "is larger than 1024 KiB"),
        ("binary.yaml", lambda: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "is not a text file"),
        ("nul.json", lambda: b'{"epochs": 1}\x00', "is not a text file"),
        ("digits.json", lambda: '{"epochs": ' + "9" * 5000 + "}", "is not valid JSON"),
    ],
)
def test_hostile_config_files_are_refused_fast_in_little_memory(name: str, make, problem: str, images: Path,
                                                                tmp_path: Path) -> None:
    cfg = tmp_path / name
    content = make()
    cfg.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = _digest(cfg)
    args = [images, "--output", tmp_path / "run", "--config", cfg, *ONE_STEP]
    started = time.perf_counter()
    result = _train(*args)
    seconds = time.perf_counter() - started
    assert_one_error_line(result, f"config file {cfg}", problem)
    assert seconds < 1.0, seconds  # the alias bomb took 59 s and 3.7 GB before
    tracemalloc.start()  # again, measuring memory (tracemalloc slows Python down several times)
    try:
        result = _train(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_one_error_line(result, f"config file {cfg}", problem)
    assert peak < 32 * 2**20, peak  # a 1 MiB file is read at most once, and decoded once
    assert not (tmp_path / "run").exists() and _digest(cfg) == before


def test_yaml_reads_exponent_floats_as_numbers(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("learning-rate: 1e-4\nweight_decay: 0\nepochs: 3\ngrayscale: no\nweights: null\n")
    assert training.load_config(cfg) == {"learning_rate": 1e-4, "weight_decay": 0, "epochs": 3, "grayscale": False,
                                         "fm_weights": None}


# The rule, written out independently of tfssim: which raw JSON values each field takes.
def _accepted(field: str, value: object) -> bool:
    ints = {"epochs", "patches_per_epoch", "batch_size", "patch_size", "latent_dim", "ssim_window", "seed",
            "val_patches", "vae_samples"}
    floats = {"ssim_sigma", "ssim_k1", "ssim_k2", "learning_rate", "weight_decay", "val_split", "vae_observation_std",
              "fm_weight", "scale"}
    bools = {"grayscale", "augment", "skip_bad_images", "jit_compile"}
    if field in ints:
        return type(value) is int
    if field in floats:
        return type(value) in (int, float)
    if field in bools:
        return type(value) is bool
    if field == "image_size":
        return value is None or (type(value) is list and len(value) == 2 and all(type(v) is int for v in value))
    return type(value) is str or (field == "fm_weights" and value is None)


_FIELDS = [f.name for f in dataclasses.fields(training.TrainConfig)]
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=False),
                    st.text(max_size=6), st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_FIELDS), value=_VALUES, dashes=st.booleans())
def test_config_validator_accepts_exactly_the_right_raw_types(field: str, value: object, dashes: bool,
                                                               tmp_path: Path) -> None:
    cfg = tmp_path / "run.json"
    key = field.replace("_", "-") if dashes else field
    cfg.write_text(json.dumps({key: value}, allow_nan=True))
    if _accepted(field, value):
        loaded = training.load_config(cfg)
        assert loaded == {field: value} and type(loaded[field]) is type(value)
    else:
        with pytest.raises(ValueError) as caught:
            training.load_config(cfg)
        message = str(caught.value)
        assert message.startswith(f"config file {cfg}: {field}") and "\n" not in message, message
        assert "must be" in message


# --- item 6: tfssim-calibrate's inputs ------------------------------------------------------------------


@pytest.mark.parametrize("which, problem", [("missing", "does not exist"), ("glob", "no file matches"),
                                            ("empty", "no images found in")])
def test_calibrate_bad_image_arguments_exit_2_with_one_line(which: str, problem: str, tmp_path: Path) -> None:
    export = tmp_path / "export"  # any folder: the images are checked before the export is loaded
    export.mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    arg = {"missing": tmp_path / "nope.png", "glob": tmp_path / "*.tif", "empty": tmp_path / "empty"}[which]
    result = CliRunner().invoke(calibrate_cli.main, [str(export), str(arg)])
    assert_one_error_line(result, "IMAGES", problem)


# --- item 7: everything that can be checked is checked before anything is written -----------------------


def test_ssim_window_larger_than_the_patch_is_refused_before_writing(images: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = _train(images, "--output", run, "--ssim-window", "33", *ONE_STEP)
    line = assert_one_error_line(result, "ssim_window (--ssim-window) 33 is larger than the 32x32 patch",
                                 "use --ssim-window 31 or smaller")
    assert "padding" not in line  # no such option
    assert not run.exists()  # so the corrected command is not refused ("already exists")


def test_demo_stride_larger_than_the_patch_is_refused_before_training(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(demo_cli.main, ["--output", str(out), "--stride", "100", "--patch-size", "32"])
    assert_one_error_line(result, "--stride", "stride must be <= the patch size 32", "use --stride 32 or smaller")
    assert not out.exists()


def test_demo_patch_larger_than_its_images_is_refused_before_training(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(demo_cli.main, ["--output", str(out), "--patch-size", "512"])
    assert_one_error_line(result, "--patch-size 512 is larger than the demo's", "use --patch-size 128 or smaller")
    assert not out.exists()


def test_run_that_fails_before_its_first_epoch_removes_only_what_it_created(images: Path, tmp_path: Path) -> None:
    (images / "broken.png").write_bytes(b"not a png")  # found only after the run folder is claimed
    before = _digest(images)
    # a new, nested --output: every folder this command made goes again
    run = tmp_path / "a" / "b" / "run"
    result = _train(images, "--output", run, *ONE_STEP)
    assert_one_error_line(result, "unreadable images", "broken.png")
    assert not (tmp_path / "a").exists()
    # an existing empty --output (the user's folder) stays, empty
    mine = tmp_path / "mine"
    mine.mkdir()
    result = _train(images, "--output", mine, *ONE_STEP)
    assert_one_error_line(result, "unreadable images")
    assert mine.is_dir() and not any(mine.iterdir())
    assert _digest(images) == before


def test_interrupted_first_epoch_removes_the_new_run_folder(images: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C during the first epoch

    monkeypatch.setattr(keras.Model, "fit", interrupted)
    run = tmp_path / "run"
    result = _train(images, "--output", run, *ONE_STEP)
    assert result.exit_code == 130 and isinstance(result.exception, SystemExit), result.output  # Ctrl-C's status
    assert "Traceback" not in result.output and "Aborted" not in result.output
    assert sum(line.startswith("Interrupted:") for line in result.output.splitlines()) == 1
    assert not run.exists()


def test_failed_resume_never_removes_the_runs_files(images: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    record = {"config": training.TrainConfig(data=str(images), output=str(run), patch_size=32, latent_dim=8,
                                             batch_size=16, patches_per_epoch=16).to_dict()}
    (run / "config.json").write_text(json.dumps(record))
    (run / "history.csv").write_text("epoch,loss\n1,0.5\n")
    (images / "broken.png").write_bytes(b"not a png")
    before = _digest(run)
    result = _train(images, "--output", run, "--resume", *ONE_STEP)
    assert_one_error_line(result)
    after = _digest(run)
    assert {k: after.get(k) for k in before} == before  # the run's files, untouched
    assert sorted(p.name for p in run.iterdir()) == sorted(["config.json", "history.csv", run_record.LOCK_NAME])


def test_out_of_memory_from_a_huge_latent_dim_is_one_line_and_leaves_no_run_folder(images: Path,
                                                                                   tmp_path: Path) -> None:
    # A real allocation failure: the 2x2x32x10^9 latent kernel (512 GB) under an address-space limit of
    # 8 GiB more than this process uses now (so that no machine's overcommit setting lets it through).
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    in_use = int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                      if line.startswith("VmSize:"))) * 1024
    run = tmp_path / "run"
    resource.setrlimit(resource.RLIMIT_AS, (in_use + 8 * 2**30, hard))
    try:
        result = _train(images, "--output", run, "--epochs", "1", "--patch-size", "32", "--latent-dim", "1000000000",
                        "--batch-size", "16", "--patches-per-epoch", "16")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert_one_error_line(result, "out of memory", "latent dim 1000000000", "lower --batch-size, --latent-dim",
                          exit_code=1)
    assert not run.exists()


def test_out_of_memory_in_the_first_epoch_is_one_line_and_leaves_no_run_folder(
        images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What --batch-size 100000000 --patches-per-epoch 100000000 ends in (measured: 40 s to get there).
    def oom(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(
            None, None,
            "{{function_node __wrapped__X}} OOM when allocating tensor with shape[100000000,32,32,1] and type float")

    monkeypatch.setattr(keras.Model, "fit", oom)
    run = tmp_path / "run"
    result = _train(images, "--output", run, *ONE_STEP)
    line = assert_one_error_line(result, "out of memory", "OOM when allocating tensor with shape[100000000,32,32,1]",
                                 "lower --batch-size", exit_code=1)
    assert "function_node" not in line
    assert not run.exists()


# --- the smaller ones ------------------------------------------------------------------------------------


def test_second_train_on_a_locked_run_folder_is_refused_with_one_line(images: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with open(run / run_record.LOCK_NAME, "a+") as held:  # another tfssim-train holds the run
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = _digest(run)
        result = _train(images, "--output", run, "--resume", *ONE_STEP)
        assert_one_error_line(result, f"run folder {run} is in use by another tfssim-train", "wait for it to finish")
        assert _digest(run) == before
        # a new run racing for the same (empty) folder loses the same way
        (run / "config.json").unlink()
        result = _train(images, "--output", run, *ONE_STEP)
        assert_one_error_line(result, "is in use by another tfssim-train")
        assert sorted(p.name for p in run.iterdir()) == [run_record.LOCK_NAME]


@pytest.mark.slow
def test_full_disk_while_checkpointing_is_one_line_and_leaves_no_temporary_file(
        images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The checkpoint's temporary file becomes a link to /dev/full just before Keras writes it: h5py
    # really fails with ENOSPC, as on a full disk (its message spans two lines, and freeing its
    # half-written file printed two "Exception ignored" tracebacks).
    save_weights = keras.Model.save_weights

    def onto_full_disk(self, filepath, *args, **kwargs):
        os.symlink("/dev/full", filepath)
        return save_weights(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", onto_full_disk)
    run = tmp_path / "run"
    result = _train(images, "--output", run, "--epochs", "1", "--val-split", "0", *ONE_STEP)
    assert_one_error_line(result, "No space left on device", "epoch-00001.weights.h5", "free disk space", exit_code=1)
    assert "h5py" not in result.output
    assert not run.exists()  # no epoch finished: the run folder this command made is gone, temporary file too


def _tiny_keras(path: Path) -> Path:
    from tfssim.models import get_spec

    model = get_spec("l2").build_model(32, 1, 8)
    model.save(path)
    return path


def _export(*args: object) -> Result:
    return CliRunner().invoke(export_cli.main, [str(a) for a in args])


@pytest.mark.slow
def test_export_skips_stray_version_files_and_removes_only_dead_debris(tmp_path: Path) -> None:
    model = _tiny_keras(tmp_path / "m.keras")
    root = tmp_path / "exported" / "demo"
    root.mkdir(parents=True)
    (root / "1").write_text("a stray file named like a version")
    dead = root / ".1.partial-dead"  # a killed export: its process is gone
    (dead / "export").mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (dead / "owner.json").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": None}))
    live = root / ".2.partial-live"  # a running export (this process)
    live.mkdir()
    (live / "owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": None}))
    old = root / ".3.partial-old"  # no owner record (an older tfssim), two days old
    old.mkdir()
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    young = root / ".4.partial-young"  # no owner record, recent: could be running
    young.mkdir()
    before = _digest(root / "1") | _digest(model)
    result = _export(model, "--name", "demo", "--output", tmp_path / "exported", "--stride", "16")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(str(root / "2"))
    assert (root / "2" / "saved_model.pb").exists()
    assert not dead.exists() and not old.exists() and live.exists() and young.exists()
    assert _digest(root / "1") | _digest(model) == before
    assert not list((root / "2").rglob("owner.json"))  # the record stays out of the export


@pytest.mark.parametrize("args, problem", [
    (["--name", "bad\nname"], "invalid model name 'bad\\nname'"),
    (["--name", "ok", "--version", str(2**63)], "--version"),
    (["--name", "ok", "--version", str(2**64 + 5)], "--version"),
])
def test_export_refuses_control_characters_in_name_and_versions_beyond_int64(args: list[str], problem: str,
                                                                               tmp_path: Path) -> None:
    model = tmp_path / "m.keras"
    model.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # never read: the arguments are refused first
    result = _export(model, *args, "--output", tmp_path / "exported")
    assert_one_error_line(result, problem)
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("where", ["file", "run-best", "run-final"])
def test_export_of_a_junk_keras_file_says_it_is_not_a_readable_keras_file(where: str, tmp_path: Path) -> None:
    junk = b"this is not a zip archive\n" * 4
    if where == "file":
        source = path = tmp_path / "junk.keras"
    else:
        source = tmp_path / "run"
        path = source / ("best.keras" if where == "run-best" else "final.keras")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(junk)
    result = _export(source, "--name", "demo", "--output", tmp_path / "exported")
    line = assert_one_error_line(result, f"{path} is not a readable Keras file", "give a .keras file written by")
    assert "not found" not in line.lower()
    assert path.read_bytes() == junk and not (tmp_path / "exported").exists()


@pytest.mark.parametrize("layout", ["flat", "typed", "mvtec"])
def test_orphan_masks_are_refused_in_flat_and_typed_test_folders(layout: str, images: Path, tmp_path: Path) -> None:
    data = tmp_path / "ds"
    for i in range(2):
        _png(data / "train" / ("good" if layout == "mvtec" else "") / f"t{i}.png", i)
    if layout == "flat":
        _png(data / "test" / "a.png")
        _png(data / "ground_truth" / "a_gt.png")
        _png(data / "ground_truth" / "zz-label.png")  # fits no test image
        orphan = "zz-label.png"
    else:
        _png(data / "test" / "good" / "g.png")
        _png(data / "test" / "crack" / "c1.png")
        _png(data / "ground_truth" / "crack" / "c1_mask.png")
        _png(data / "ground_truth" / "crack" / "c9_mask.png")  # fits no test image
        orphan = os.path.join("crack", "c9_mask.png")
    before = _digest(data)
    result = _train(data, "--output", tmp_path / "run", *ONE_STEP)
    assert_one_error_line(result, "1 mask(s) in", "fit no image", orphan, "rename or remove those masks")
    assert not (tmp_path / "run").exists() and _digest(data) == before
