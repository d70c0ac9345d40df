"""Calibration writes a new export version (``tfssim.export.write_calibrated_version``), never into the old one.

The fixtures ``exports`` and ``dataset`` (tiny, built once per session) are in conftest.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tfssim import data, export
from tfssim.cli.calibrate import main as calibrate_cli
from tfssim.errors import InputError
from tfssim.export.metadata import METADATA_FILE, ExportMetadata

# The metadata keys a calibration may change; every other key and every other file is the source's.
CALIBRATION_KEYS = {"version", "threshold", "threshold_fpr", "threshold_method", "threshold_min_defect_area",
                    "calibrated_from"}


def _digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error(result) -> str:
    """Exit 2, no traceback, exactly one ``Error:`` line; returns it."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_new_version_is_a_copy_with_the_threshold_and_the_old_one_is_byte_identical(exports, tmp_path):
    source = shutil.copytree(exports[0], tmp_path / "ssim" / "1")
    before = _digest(source)
    new = export.write_calibrated_version(source, 0.3, fpr=0.02)
    assert new == tmp_path / "ssim" / "2"
    assert _digest(source) == before  # every file of the old version, byte for byte
    after = _digest(new)
    assert set(after) == set(before)
    # Every file but the metadata is the old version's (graph, variables, warm-up requests).
    assert {k: v for k, v in after.items() if k != str(METADATA_FILE)} == \
        {k: v for k, v in before.items() if k != str(METADATA_FILE)}
    old_meta = json.loads((source / METADATA_FILE).read_text())
    new_meta = json.loads((new / METADATA_FILE).read_text())
    assert {k for k in set(old_meta) | set(new_meta) if old_meta.get(k) != new_meta.get(k)} == \
        CALIBRATION_KEYS - {"threshold_min_defect_area"}  # None before and after (rule "fpr")
    assert {k: new_meta[k] for k in CALIBRATION_KEYS} == {
        "version": 2, "threshold": 0.3, "threshold_fpr": 0.02, "threshold_method": "fpr",
        "threshold_min_defect_area": None, "calibrated_from": 1}
    # Nothing else is left in the model folder (no partial folder).
    assert sorted(p.name for p in source.parent.iterdir()) == ["1", "2"]


@pytest.mark.slow  # loads and runs two SavedModels (7.5 s measured, 2 cores shared with other jobs)
def test_the_new_version_serves_the_same_maps_with_its_threshold(exports, dataset, tmp_path):
    from tfssim.serving import postprocess
    from tfssim.serving.inference import ExportedModel

    source = shutil.copytree(exports[0], tmp_path / "ssim" / "1")
    new = export.write_calibrated_version(source, 0.125, min_defect_area=7)
    old_model, new_model = ExportedModel.load(source), ExportedModel.load(new)
    assert (new_model.metadata.threshold, new_model.metadata.threshold_min_defect_area) == (0.125, 7)
    image = data.read_image(data.list_images(dataset / "test")[0])
    old_out, new_out = old_model.predict(image), new_model.predict(image)
    assert sorted(old_out) == sorted(new_out)
    for key in old_out:
        np.testing.assert_array_equal(new_out[key], old_out[key], err_msg=key)
    # What prediction reads: the new version's threshold and rule; the old one still has none.
    assert (new_model.threshold, old_model.threshold) == (0.125, None)
    processor = postprocess.PostProcessor.from_metadata(new_model.metadata)
    assert processor.threshold == 0.125


def test_the_version_is_the_next_free_one_beside_a_higher_version(exports, tmp_path):
    model = tmp_path / "ssim"
    source = shutil.copytree(exports[0], model / "1")
    (model / "7").mkdir()  # a higher version (even an empty folder is taken)
    (model / "notes").mkdir()  # not a version: ignored
    new = export.write_calibrated_version(source, 0.5)
    assert new == model / "8"
    meta = ExportMetadata.read(new)
    assert (meta.version, meta.calibrated_from, meta.threshold, meta.threshold_method) == (8, 1, 0.5, None)
    assert ExportMetadata.read(model) == meta  # the newest version, as TF Serving's default policy serves
    # Recalibrating the new version: 9, calibrated from 8.
    assert ExportMetadata.read(export.write_calibrated_version(new, 0.6, fpr=0.1)).calibrated_from == 8


def test_a_version_taken_meanwhile_makes_it_the_next_one(exports, tmp_path, monkeypatch):
    source = shutil.copytree(exports[0], tmp_path / "ssim" / "1")
    flush = export.calibrated._fsync_tree

    def concurrent_export(folder: Path) -> None:  # another export takes version 2 while this one is built
        (tmp_path / "ssim" / "2").mkdir()
        flush(folder)

    monkeypatch.setattr(export.calibrated, "_fsync_tree", concurrent_export)
    new = export.write_calibrated_version(source, 0.5, fpr=0.01)
    assert new == tmp_path / "ssim" / "3" and ExportMetadata.read(new).version == 3
    assert list((tmp_path / "ssim" / "2").iterdir()) == []  # the other one's folder is untouched


def test_a_failure_while_writing_leaves_no_version_and_a_dead_partial_is_removed(exports, tmp_path, monkeypatch):
    source = shutil.copytree(exports[0], tmp_path / "ssim" / "1")
    before = _digest(source)

    def disk_full(folder: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.calibrated, "_fsync_tree", disk_full)
    with pytest.raises(OSError, match="No space"):
        export.write_calibrated_version(source, 0.5, fpr=0.01)
    assert sorted(p.name for p in source.parent.iterdir()) == ["1"] and _digest(source) == before
    monkeypatch.undo()
    # A killed calibration's partial folder (its process no longer runs) goes with the next one.
    dead = tmp_path / "ssim" / ".2.partial-killed"
    (dead / "export").mkdir(parents=True)
    (dead / "owner.json").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "started": "1"}))
    assert export.write_calibrated_version(source, 0.5, fpr=0.01) == tmp_path / "ssim" / "2"
    assert sorted(p.name for p in source.parent.iterdir()) == ["1", "2"]


@pytest.mark.slow  # computes the maps once (5-8 s measured, 2 cores shared with other jobs)
def test_a_bare_savedmodel_folder_is_refused(exports, dataset, tmp_path):
    from tfssim.evaluation.calibration import calibrate

    bare = shutil.copytree(exports[0], tmp_path / "my_savedmodel")
    before = _digest(bare)
    with pytest.raises(InputError, match="not a version folder of TensorFlow Serving's layout NAME/VERSION") as err:
        export.write_calibrated_version(bare, 0.5)
    assert "exported_models/my_model/1" in str(err.value) and "\n" not in str(err.value)
    for name in ("0", "-1", "1.5", "٣"):  # not a version TF Serving or export_model would write
        with pytest.raises(InputError, match="NAME/VERSION"):
            export.layout.version_folder(tmp_path / "m" / name)
    # The library refuses before computing any map; without writing, the bare folder calibrates.
    with pytest.raises(InputError, match="NAME/VERSION"):
        calibrate(bare, [dataset / "missing.png"], 0.05)  # the layout is checked before the images
    assert calibrate(bare, [dataset / "val"], 0.05, write=False, progress=False).path is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_savedmodel"] and _digest(bare) == before


def test_cli_refuses_a_bare_folder_in_one_error_line(exports, dataset, tmp_path):
    bare = shutil.copytree(exports[1], tmp_path / "my_savedmodel")
    line = _one_error(CliRunner().invoke(calibrate_cli, [str(bare), str(dataset / "val")]))
    assert str(bare) in line and "NAME/VERSION" in line and "move the SavedModel into a numbered folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_savedmodel"]


def test_cli_writes_a_new_version_and_prints_it(exports, dataset, tmp_path):
    model = tmp_path / "l2"
    source = shutil.copytree(exports[1], model / "1")
    before = _digest(source)
    result = CliRunner().invoke(calibrate_cli, [str(model), str(dataset / "val"), "--fpr", "0.1"])
    assert result.exit_code == 0, result.output
    assert f"written as new version {model / '2'} (calibrated from {source}, which is unchanged)" in result.output
    assert _digest(source) == before
    meta = ExportMetadata.read(model / "2")
    assert (meta.threshold_method, meta.threshold_fpr, meta.calibrated_from) == ("fpr", 0.1, 1)
    assert f"threshold {meta.threshold:.6f} at pixel FPR 0.1" in result.output


def test_calibrated_from_is_optional_and_checked(exports):
    values = json.loads((exports[0] / METADATA_FILE).read_text())
    assert "calibrated_from" in values and values["calibrated_from"] is None  # export_model writes the key
    old = {k: v for k, v in values.items() if k != "calibrated_from"}  # an export from before the key
    assert ExportMetadata.from_dict(old).calibrated_from is None
    for bad in (0, "1", True, 1.0):
        with pytest.raises(InputError, match="'calibrated_from' must be a version number from 1 to "):
            ExportMetadata.from_dict({**values, "calibrated_from": bad})


def test_experiments_reuse_the_version_they_calibrated(exports, tmp_path):
    from _experiments import _calibrated_before

    source = shutil.copytree(exports[0], tmp_path / "ssim" / "1")
    assert _calibrated_before(source, 30) is None
    export.write_calibrated_version(source, 0.2, fpr=0.01)  # another rule: not this one
    new = export.write_calibrated_version(source, 0.4, min_defect_area=30)
    assert _calibrated_before(source, 30) == (new, 0.4)
    assert _calibrated_before(source, 31) is None
    assert _calibrated_before(new, 30) is None  # calibrated from 1, not from 3


def test_symlinked_model_folder_names_are_kept(exports, tmp_path):
    # The new version goes beside the given path's version folder, as given (no resolving of links).
    real = tmp_path / "real"
    shutil.copytree(exports[0], real / "1")
    os.symlink(real, tmp_path / "link")
    new = export.write_calibrated_version(tmp_path / "link" / "1", 0.5)
    assert new == tmp_path / "link" / "2" and (real / "2" / METADATA_FILE).is_file()


def test_predicting_with_the_uncalibrated_version_names_the_calibrated_one(exports, dataset, tmp_path):
    from tfssim.cli.predict import main as predict_cli
    from tfssim.export.metadata import calibrated_versions

    source = shutil.copytree(exports[1], tmp_path / "l2" / "1")
    assert calibrated_versions(source) == []
    line = _one_error(CliRunner().invoke(predict_cli, [str(source), str(dataset / "test"), "-o", str(tmp_path / "o")]))
    assert "run tfssim-calibrate on defect-free images first or pass --threshold" in line
    second = export.write_calibrated_version(source, 0.2, fpr=0.01)
    third = export.write_calibrated_version(source, 0.3, fpr=0.02)
    export.write_calibrated_version(second, 0.4, fpr=0.03)  # 4: calibrated from 2, not from 1
    assert calibrated_versions(source) == [third, second] and calibrated_versions(tmp_path / "bare") == []
    line = _one_error(CliRunner().invoke(predict_cli, [str(source), str(dataset / "test"), "-o", str(tmp_path / "o")]))
    assert f"export {source} has no calibrated threshold, but {third} was calibrated from it" in line
    assert "use that one, or pass --threshold" in line
