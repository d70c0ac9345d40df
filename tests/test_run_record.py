"""tfssim.run_record: the run folder's record and its resume rule (one definition for both trainers)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tfssim import run_record
from tfssim.core.ssim_params import SSIMParams
from tfssim.errors import InputError


def test_resume_settings_keep_the_recorded_ones_and_refuse_given_differences(tmp_path):
    saved = {"data": "/old/data", "output": "/old/run", "epochs": 10, "latent_dim": 8, "seed": 3}
    # nothing given: the recorded settings (without where the run and its data were)
    assert run_record.resume_settings(saved, {}, tmp_path) == {"epochs": 10, "latent_dim": 8, "seed": 3,
                                                               "ssim_weighting": "gaussian"}
    # epochs and the locations may change; an equal setting given again is fine
    merged = run_record.resume_settings(saved, {"epochs": 20, "data": "/new", "latent_dim": 8}, tmp_path)
    assert merged["epochs"] == 20 and merged["data"] == "/new" and merged["latent_dim"] == 8
    with pytest.raises(InputError) as err:
        run_record.resume_settings(saved, {"latent_dim": 4, "seed": 3, "epochs": 1}, tmp_path)
    message = str(err.value)
    assert "latent_dim was 8, now 4" in message and "seed was" not in message and "epochs was" not in message
    assert str(tmp_path / "config.json") in message and "only --epochs may change" in message
    # a run recorded before --ssim-weighting existed trained with the Gaussian window
    with pytest.raises(InputError, match="ssim_weighting was 'gaussian', now 'uniform'"):
        run_record.resume_settings(saved, {"ssim_weighting": "uniform"}, tmp_path)
    # and one recorded before --scale / --image-size on images at their own size
    with pytest.raises(InputError, match="scale was 1.0, now 0.5"):
        run_record.resume_settings(saved, {"scale": 0.5}, tmp_path)


def test_run_record_and_reading_it_back(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.png"):
        (data / name).write_bytes(name.encode())
    config = {"data": str(data), "output": str(tmp_path / "run"), "model": "l2", "patch_size": 32, "latent_dim": 8,
              "grayscale": False}
    record = run_record.run_record(config, ssim=SSIMParams(window_size=7), versions={"keras": "3"},
                                   train_images=[data / "a.png"], val_images=[data / "b.png"], device="cpu")
    assert (record["model"], record["channels"], record["patch_size"], record["latent_dim"]) == ("l2", 3, 32, 8)
    assert record["ssim"]["window_size"] == 7 and record["device"] == "cpu"
    assert record["train_images"] == [str(data / "a.png")]
    # the fingerprint is hashlib's SHA-256 of each file, by its name under DATA
    import hashlib

    assert record["data_fingerprint"]["val"] == [["b.png", 5, hashlib.sha256(b"b.png").hexdigest()]]
    run = tmp_path / "run"
    assert run_record.read_run_record(run) is None
    run.mkdir()
    (run / "config.json").write_text(json.dumps(record))
    assert run_record.read_run_record(run) == record
    # moved data with the same images resumes; the record then names the old place
    moved = tmp_path / "moved"
    data.rename(moved)
    fingerprint = run_record.check_same_data(record, str(moved), [moved / "a.png"], [moved / "b.png"], run)
    assert fingerprint == record["data_fingerprint"]
    again = run_record.run_record({**config, "data": str(moved)}, ssim=SSIMParams(), versions={},
                                  train_images=[moved / "a.png"], val_images=[moved / "b.png"],
                                  fingerprint=fingerprint, previous=record)
    assert again["previous_locations"] == [{"output": config["output"], "data": str(data)}]
    for damaged in ("{not json", "[1, 2]", '{"config": 3}'):
        (run / "config.json").write_text(damaged)
        with pytest.raises(InputError, match="the run folder is damaged"):
            run_record.read_run_record(run)


def test_history_round_trip(tmp_path):
    path = tmp_path / "history.csv"
    assert run_record.read_history(path) == []
    run_record.write_history(path, [{"epoch": 1, "loss": 0.5, "seconds": 1.25},
                                    {"epoch": 2, "loss": 0.25, "seconds": 1.0}])
    # read back checked and typed: epoch an int, every other cell a float
    assert run_record.read_history(path) == [{"epoch": 1, "loss": 0.5, "seconds": 1.25},
                                             {"epoch": 2, "loss": 0.25, "seconds": 1.0}]
    assert [type(v) for v in run_record.read_history(path)[0].values()] == [int, float, float]
    assert not list(tmp_path.glob(".tmp*"))


# --- the lock file (S4, S5): opened only if it is a regular file ------------------------------------


def _lock_kinds(run, outside):
    """Ways a run folder's lock file can be something else than a regular file, by name."""
    lock = run / run_record.LOCK_NAME
    return {
        "symlink": lambda: lock.symlink_to(outside),
        "dangling symlink": lambda: lock.symlink_to(run / "nowhere"),
        "fifo": lambda: os.mkfifo(lock),
        "folder": lambda: lock.mkdir(),
    }


@pytest.mark.parametrize("kind, problem", [("symlink", "a symbolic link"), ("dangling symlink", "a symbolic link"),
                                           ("fifo", "a named pipe"), ("folder", "a folder")])
@pytest.mark.parametrize("create", [True, False], ids=["writer", "probe"])
def test_open_run_lock_refuses_what_is_no_regular_file(tmp_path, kind, problem, create):
    run, outside = tmp_path / "run", tmp_path / "precious.txt"
    run.mkdir()
    outside.write_text("keep me")
    _lock_kinds(run, outside)[kind]()
    started = time.monotonic()
    with pytest.raises(InputError) as err:
        run_record.open_run_lock(run, create=create)
    assert time.monotonic() - started < 5  # a FIFO never blocks the open
    assert str(err.value) == (f"{run / run_record.LOCK_NAME} is {problem}, not a lock file; remove it (tfssim-train "
                              "makes a new one when it trains into the folder)")
    assert outside.read_text() == "keep me"


@pytest.mark.parametrize("kind, problem", [("symlink", "a symbolic link"), ("fifo", "a named pipe")])
def test_open_run_lock_checks_what_it_opened_not_only_the_name(tmp_path, monkeypatch, kind, problem):
    # the name may change between lstat and open: O_NOFOLLOW, O_NONBLOCK and fstat catch what lstat missed
    run = tmp_path / "run"
    run.mkdir()
    regular = tmp_path / "regular"
    regular.write_text("")
    _lock_kinds(run, regular)[kind]()
    lock, real_lstat = run / run_record.LOCK_NAME, os.lstat
    monkeypatch.setattr(os, "lstat", lambda path, *a, **k: real_lstat(regular if Path(path) == lock else path, *a, **k))
    for create in (True, False):
        with pytest.raises(InputError, match=f"is {problem}, not a lock file; remove it"):
            run_record.open_run_lock(run, create=create)
    assert regular.read_text() == ""


def test_open_run_lock_opens_a_regular_lock_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert run_record.open_run_lock(run, create=False) is None  # a probe creates nothing
    assert not (run / run_record.LOCK_NAME).exists()
    fd = run_record.open_run_lock(run, create=True)
    try:
        os.write(fd, b"123\n")
    finally:
        os.close(fd)
    fd = run_record.open_run_lock(run, create=False)
    try:
        assert os.read(fd, 10) == b"123\n"
    finally:
        os.close(fd)
    # a second name: the trainer's writes would change the other file; a probe only reads it
    os.link(run / run_record.LOCK_NAME, tmp_path / "other")
    with pytest.raises(InputError, match="is a hard link to a file with 2 names"):
        run_record.open_run_lock(run, create=True)
    os.close(run_record.open_run_lock(run, create=False))
    assert (tmp_path / "other").read_bytes() == b"123\n"


# --- S6: the record's copies of a setting must agree with config -----------------------------------


def _written_record(tmp_path):
    """A record as run_record writes it (with tfssim-train's resize), in a run folder."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"a")
    config = {"data": str(data), "output": str(tmp_path / "run"), "model": "ssim", "patch_size": 32,
              "latent_dim": 8, "grayscale": True, "ssim_window": 11, "scale": 1.0, "image_size": None}
    record = run_record.run_record(config, ssim=SSIMParams(), versions={"keras": "3"}, train_images=[data / "a.png"],
                                   val_images=[], layout="folder", replicas=1,
                                   resize={"scale": 1.0, "image_size": None, "interpolation": "bilinear_antialias"})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(record))
    return run, record


@pytest.mark.parametrize("change, problem", [
    (lambda r: r.update(model="vae2"), "model is 'vae2' but config.model is 'ssim'"),
    (lambda r: r["config"].update(model="l2"), "model is 'ssim' but config.model is 'l2'"),
    (lambda r: r.update(channels=3), "channels is 3 but config.grayscale is true (1 channel)"),
    (lambda r: r["config"].update(grayscale=False), "channels is 1 but config.grayscale is false (3 channels)"),
    (lambda r: r.update(patch_size=64), "patch_size is 64 but config.patch_size is 32"),
    (lambda r: r.update(latent_dim=4), "latent_dim is 4 but config.latent_dim is 8"),
    (lambda r: r["ssim"].update(window_size=7), "ssim.window_size is 7 but config.ssim_window is 11"),
    (lambda r: r["resize"].update(scale=0.5), "resize.scale is 0.5 but config.scale is 1.0"),
    (lambda r: r["resize"].update(image_size=[64, 64]), "resize.image_size is [64, 64] but config.image_size is None"),
    (lambda r: r["resize"].update(scale="x"), "resize.scale must be a number > 0 and <= 1, got 'x'"),
    (lambda r: r["resize"].update(interpolation=3), "resize.interpolation must be a string or null, got 3"),
    (lambda r: r.update(resize=None), "resize must be an object of scale, image_size and interpolation, got None"),
    (lambda r: r.update(replicas=0), "replicas must be an integer >= 1, got 0"),
    (lambda r: r.update(layout=["folder"]), "layout must be a string, got ['folder']"),
], ids=["model", "config.model", "channels", "grayscale", "patch_size", "latent_dim", "ssim", "resize.scale",
        "resize.image_size", "resize.scale-type", "interpolation", "resize-null", "replicas", "layout"])
def test_read_run_record_refuses_a_record_that_contradicts_itself(tmp_path, change, problem):
    run, record = _written_record(tmp_path)
    assert run_record.read_run_record(run) == record  # as written: accepted
    change(record)
    (run / "config.json").write_text(json.dumps(record))
    before = (run / "config.json").read_bytes()
    with pytest.raises(InputError) as err:
        run_record.read_run_record(run)
    message = str(err.value)
    assert message.startswith(f"{run / 'config.json'}: {problem}") and "the run folder is damaged" in message, message
    assert "\n" not in message and (run / "config.json").read_bytes() == before


def test_read_run_record_compares_only_what_both_record(tmp_path):
    # older records (and scripts/train_any_backend.py's) lack some settings or copies: nothing to compare
    run, record = _written_record(tmp_path)
    for key in ("scale", "image_size", "grayscale", "ssim_window"):
        del record["config"][key]
    del record["model"]
    (run / "config.json").write_text(json.dumps(record))
    assert run_record.read_run_record(run) == record
