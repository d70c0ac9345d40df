"""The research scripts (scripts/ablation.py, reproduce_nanotwice.py, weighting_experiment.py):
their command lines, and one tiny train -> export -> evaluate through _experiments."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    return load_script(name)


@pytest.mark.parametrize("name", ["ablation", "reproduce_nanotwice", "weighting_experiment"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        _load(name).main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--output" in out and "--epochs" in out


def test_ablation_rejects_a_bad_grid(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        _load("ablation").main([str(tmp_path), "--output", str(tmp_path / "out"), "--grid", "stride=3"])
    assert done.value.code == 2 and "--grid 'stride=3'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def texture_folder(tmp_path_factory) -> Path:
    from tfssim.data import texture_dataset, write_dataset

    return write_dataset(texture_dataset("brick", n_val=2, n_test=3, test_size=(64, 64)),
                         tmp_path_factory.mktemp("data") / "brick")


@pytest.mark.slow  # trains, exports and evaluates a tiny model (14 s measured here)
def test_ablation_tiny_run_trains_exports_evaluates_and_resumes(texture_folder, tmp_path, capsys):
    ablation = _load("ablation")
    out = tmp_path / "ablation"
    argv = [str(texture_folder), "--output", str(out), "--sweep", "patch", "--grid", "patch=32",
            "--epochs", "1", "--patches-per-epoch", "64"]
    ablation.main(argv)
    results = json.loads((out / "ablation.json").read_text())
    assert list(results) == ["patch=32"] and 0.0 <= results["patch=32"] <= 1.0
    assert (out / "runs" / "patch_32" / "final.keras").is_file()
    assert (out / "exported_models" / "patch_32" / "1" / "saved_model.pb").is_file()
    evaluated = json.loads((out / "evaluation" / "patch_32" / "results.json").read_text())
    assert next(iter(evaluated["exports"].values()))["pixel_auroc"] == results["patch=32"]
    assert "| 32 |" in (out / "ablation.md").read_text()
    # A second call reuses everything: no training, the same table.
    mtime = (out / "runs" / "patch_32" / "final.keras").stat().st_mtime_ns
    ablation.main(argv)
    assert (out / "runs" / "patch_32" / "final.keras").stat().st_mtime_ns == mtime
    assert json.loads((out / "ablation.json").read_text()) == results
    # Another budget in the same folder is refused.
    with pytest.raises(SystemExit, match="budget"):
        ablation.main([*argv[:-1], "128"])


def test_train_export_evaluate_refuses_repeated_names(tmp_path):
    from _experiments import Experiment, train_export_evaluate

    with pytest.raises(ValueError, match="distinct names"):
        train_export_evaluate(tmp_path, tmp_path / "out", [Experiment("a"), Experiment("a")])
    with pytest.raises(ValueError, match="distinct names"):
        train_export_evaluate(tmp_path, tmp_path / "out", [])
