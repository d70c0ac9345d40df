"""tfssim.run_record: the run folder's record and its resume rule (one definition for both trainers)."""
from __future__ import annotations

import json

import pytest

from tfssim import run_record
from tfssim.errors import InputError
from tfssim.ssim_params import SSIMParams


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
