"""``tfssim.export.metadata.ExportMetadata``: the metadata of real exports, round trips, and refused files."""
from __future__ import annotations

import json
import math
import shutil

import pytest

from tfssim import export
from tfssim.export.metadata import METADATA_FILE, ExportMetadata, metadata_path
from tfssim.serving import postprocess

# The fixture `exports` (untrained 32x32 SSIM and l2 exports, built once per session) is in conftest.py.


@pytest.mark.parametrize("index", [0, 1], ids=["ssim", "l2"])
def test_every_key_export_model_writes_is_a_field_and_round_trips(exports, index):
    written = json.loads((exports[index] / METADATA_FILE).read_text())
    meta = ExportMetadata.read(exports[index])
    # a key export_model adds without a field here would land in `extra`: the type must know them all
    assert meta.extra == {}, f"export_model writes keys ExportMetadata does not know: {sorted(meta.extra)}"
    assert meta.to_dict() == written
    assert list(meta.to_dict()) == list(written)  # the exporter's order, too
    assert (meta.kind, meta.patch_size, meta.channels, meta.stride, meta.version) == (
        written["kind"], 32, 1, 16, int(exports[index].name))
    assert meta.threshold is None and meta.map_sigma == 0.0
    assert ExportMetadata.from_dict(meta.to_dict()) == meta


def test_read_accepts_the_model_folder_the_version_folder_and_the_file(exports, tmp_path):
    model = tmp_path / "ssim"
    shutil.copytree(exports[0], model / "1")
    shutil.copytree(exports[0], model / "10")  # numerically newest, not alphabetically
    assert metadata_path(model) == model / "10" / METADATA_FILE
    # Calibrating version 1 writes version 11 (the next free one), the newest now.
    assert export.write_calibrated_version(model / "1", 0.25, fpr=0.01) == model / "11"
    assert metadata_path(model) == model / "11" / METADATA_FILE
    newest = ExportMetadata.read(model)
    assert (newest.threshold, newest.threshold_fpr, newest.version, newest.calibrated_from) == (0.25, 0.01, 11, 1)
    assert ExportMetadata.read(model / "1").threshold is None and ExportMetadata.read(model / "10").threshold is None
    assert ExportMetadata.read(model / "11" / METADATA_FILE) == newest
    processor = postprocess.PostProcessor.from_metadata(newest)
    assert (processor.threshold, processor.opening_diameter, processor.convex_hull) == (0.25, 4, True)


def test_unknown_keys_are_kept_and_written_back(exports):
    values = json.loads((exports[0] / METADATA_FILE).read_text())
    values["written_by_a_newer_tfssim"] = {"nested": [1, 2]}
    meta = ExportMetadata.from_dict(values)
    assert meta.extra == {"written_by_a_newer_tfssim": {"nested": [1, 2]}}
    assert meta.to_dict() == values
    changed = meta.replace(threshold=0.5, threshold_fpr=0.02).to_dict()
    assert changed["threshold"] == 0.5 and changed["written_by_a_newer_tfssim"] == {"nested": [1, 2]}


def test_missing_optional_keys_take_what_older_exporters_did(exports):
    values = json.loads((exports[0] / METADATA_FILE).read_text())
    for key in ("map_sigma", "jit_compile", "chunk_size", "opening_diameter", "convex_hull", "float_signature"):
        del values[key]
    meta = ExportMetadata.from_dict(values)
    assert (meta.map_sigma, meta.jit_compile, meta.chunk_size) == (0.0, False, 64)
    assert (meta.opening_diameter, meta.convex_hull, meta.float_signature) == (4, True, "serve_float")
    # Metadata rewritten before chunk_size and min_area had values of their own holds null there.
    older = ExportMetadata.from_dict({**values, "chunk_size": None, "min_area": None})
    assert (older.chunk_size, older.min_area) == (64, 0) and older.to_dict()["min_area"] == 0
    with pytest.raises(ValueError, match="'opening_diameter' must be an integer"):  # no other key reads null so
        ExportMetadata.from_dict({**values, "opening_diameter": None})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("patch_size", "32", "'patch_size' must be a positive integer of at most 65536, got '32'"),
    ("patch_size", 32.0, "'patch_size' must be a positive integer of at most 65536, got 32.0"),
    ("channels", True, "'channels' must be 1 or 3, got True"),  # bool is not an int here
    ("channels", 2, "'channels' must be 1 or 3, got 2"),
    ("min_area", -1, "'min_area' must be an integer from 0 to 9007199254740992 (pixels), got -1"),
    ("stride", 0, "'stride' must be a positive integer, got 0"),
    ("stride", 33, "stride 33 is larger than its patch size 32"),
    ("threshold", "0.3", "'threshold' must be a finite number, got '0.3'"),
    ("threshold", math.nan, "'threshold' must be a finite number, got nan"),
    ("threshold_fpr", 1.5, "'threshold_fpr' must be a number between 0 and 1, got 1.5"),
    ("convex_hull", 1, "'convex_hull' must be true or false, got 1"),
    ("outputs", ["anomaly_map", 3], "'outputs' must be a list of output names from reconstruction, "),
    ("map_sigma", None, "'map_sigma' must be a number >= 0 and at most 65536, got None"),
    ("name", None, "'name' must be a plain folder name (no slashes, control characters or leading dot, at most "
             "255 bytes), got None"),
    ("format", 2, "format 2 is newer than this tfssim reads (1); upgrade tfssim"),
    # the "ssim" entry is checked as an SSIMParams (its one rule), not just as some object
    ("ssim", {"window_size": 4}, "'ssim' is not a valid SSIM parameter set: SSIM window size must be an odd"),
    ("ssim", {"window_size": 11, "k2": 1.5}, "'ssim' is not a valid SSIM parameter set: SSIM k2 must be a finite"),
    ("ssim", {"window": 11}, "'ssim' is not a valid SSIM parameter set: unknown SSIM parameter(s) ['window']"),
])
def test_known_keys_of_the_wrong_type_or_range_are_refused_in_one_line(exports, tmp_path, key, value, message):
    values = json.loads((exports[0] / METADATA_FILE).read_text())
    values[key] = value
    with pytest.raises(ValueError) as info:
        ExportMetadata.from_dict(values, source="x.json")
    text = str(info.value)
    assert text.startswith("x.json: ") and message in text and "\n" not in text
    # the same from a file names the file
    file = tmp_path / "tfssim.json"
    file.write_text(json.dumps(values))
    # A file is strict JSON: Python writes NaN as a bare NaN, which the reader refuses as such.
    pattern = f"{file} is not valid JSON \\(NaN is not a JSON number\\)" if value is math.nan else f"^{file}: .*{key}"
    with pytest.raises(ValueError, match=pattern):
        ExportMetadata.read(file)


def test_files_that_are_not_metadata_are_refused(exports, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ExportMetadata.read(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has no assets/tfssim.json; it is not a tfssim export"):
        ExportMetadata.read(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 1,')
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON \(line 1, column 14"):
        ExportMetadata.read(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        ExportMetadata.read(bad)
    values = json.loads((exports[0] / METADATA_FILE).read_text())
    del values["kind"], values["residual"]
    with pytest.raises(ValueError, match="lacks kind, residual; is this a tfssim export"):
        ExportMetadata.from_dict(values)
