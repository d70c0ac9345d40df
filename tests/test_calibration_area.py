"""The minimum-defect-area threshold (MVTec AD's rule): hand-computed cases, a brute-force scan
with SciPy's labelling, the metadata it writes, and ``tfssim-calibrate --min-defect-area``."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage

from tfssim import data, export
from tfssim.cli.calibrate import main as calibrate_cli
from tfssim.errors import InputError
from tfssim.evaluation.calibration import largest_region_area, threshold_at_min_defect_area
from tfssim.export.metadata import METADATA_FILE, ExportMetadata
from tfssim.serving import postprocess

# The fixtures `dataset` and `exports` (tiny, built once per session) are in conftest.py.

EIGHT = np.ones((3, 3), bool)  # 8-connectivity for scipy.ndimage.label (tfssim counts regions so)
RAW = {"opening_diameter": 0, "convex_hull": False}  # no post-processing: regions are the thresholded pixels


def _blocks() -> np.ndarray:
    """A 20x20 map of zeros with blocks whose regions are known (areas at each threshold in the test)."""
    m = np.zeros((20, 20), np.float32)
    m[1:4, 1:4] = 0.5         # 3x3 = 9 px
    m[4:6, 4:6] = 0.6         # 2x2 = 4 px, touching the 3x3 block at a corner only
    m[10:12, 1:6] = 0.7       # 2x5 = 10 px
    m[12:16, 12:16] = 0.3     # 4x4 = 16 px ...
    m[13:15, 13:15] = 0.8     # ... whose inner 2x2 (4 px) scores higher
    return m


# Largest region of _blocks() (8-connected) at each threshold, by hand:
#   t = 0.0: 3x3 + corner 2x2 = 13, 2x5 = 10, 4x4 = 16      -> 16
#   t = 0.3: 13, 10, inner 2x2 = 4                           -> 13
#   t = 0.5: the 3x3 is gone; 2x2 = 4, 10, 4                 -> 10
#   t = 0.6: 10, 4                                           -> 10
#   t = 0.7: inner 2x2 = 4                                   ->  4
#   t = 0.8: nothing                                         ->  0
@pytest.mark.parametrize("area, expected", [
    (399, 0.0), (16, 0.0), (15, np.float32(0.3)), (13, np.float32(0.3)), (12, np.float32(0.5)), (10, np.float32(0.5)),
    (9, np.float32(0.7)), (4, np.float32(0.7)), (3, np.float32(0.8)), (0, np.float32(0.8)),
])
def test_hand_computed_thresholds_without_post_processing(area, expected):
    m = _blocks()
    assert threshold_at_min_defect_area([m], area, **RAW) == float(expected)
    # 8-connected: with 4-connectivity the 3x3 and the 2x2 were two regions (9 and 4) and an area
    # of 12 would already be met at 0.3.
    assert ndimage.label(m > 0.3)[1] == 4 and ndimage.label(m > 0.3, structure=EIGHT)[1] == 3


def test_an_area_every_threshold_meets_is_refused():
    with pytest.raises(InputError, match="min_defect_area 400 .*every threshold meets it"):
        threshold_at_min_defect_area([_blocks()], 400, **RAW)  # the whole 20x20 image is one region of 400


def test_the_opening_removes_thin_regions_before_they_are_counted():
    m = np.zeros((24, 40), np.float32)
    m[2, 2:32] = 0.9          # a 1-pixel line of 30 px: no diameter-4 disk fits in it
    m[10:15, 10:15] = 0.4     # a 5x5 block: opened, it loses its 4 corner pixels (21 px)
    opened = {"opening_diameter": 4, "convex_hull": False}
    assert largest_region_area(m, 0.0, **opened) == 21 and largest_region_area(m, 0.0, **RAW) == 30
    assert threshold_at_min_defect_area([m], 25, **opened) == 0.0
    assert threshold_at_min_defect_area([m], 25, **RAW) == float(np.float32(0.9))
    assert threshold_at_min_defect_area([m], 20, **opened) == float(np.float32(0.4))


def test_convex_hulls_that_touch_form_one_region():
    # Two L-shaped regions, 9 and 5 px, apart in 8-connectivity. Their convex hulls are the
    # triangles r + c <= 4 (15 px) and r + c >= 6 in the lower right 3x3 (6 px); (2, 2) of one
    # and (3, 3) of the other touch diagonally, so the segmentation is one region of 21 px.
    m = np.zeros((10, 10), np.float32)
    m[1, 1:6] = m[1:6, 1] = 0.5
    m[3:6, 5] = m[5, 3:6] = 0.5
    hull = {"opening_diameter": 0, "convex_hull": True}
    assert ndimage.label(m > 0, structure=EIGHT)[1] == 2
    labels, count = ndimage.label(postprocess.segment(m, 0.0, **hull), structure=EIGHT)
    assert count == 1 and np.sum(labels == 1) == 21
    assert largest_region_area(m, 0.0, **hull) == 21 and largest_region_area(m, 0.0, **RAW) == 9
    assert threshold_at_min_defect_area([m], 20, **hull) == float(np.float32(0.5))
    assert threshold_at_min_defect_area([m], 21, **hull) == 0.0
    assert threshold_at_min_defect_area([m], 9, **RAW) == 0.0


def test_the_largest_region_over_several_maps_counts():
    small = np.zeros((20, 20), np.float32)
    small[5:7, 5:7] = 0.9
    # 0.3 meets the area on _blocks() alone (13 px), but the other map has a 4 px region above it.
    assert threshold_at_min_defect_area([_blocks()], 13, **RAW) == float(np.float32(0.3))
    assert threshold_at_min_defect_area([_blocks(), small], 3, **RAW) == float(np.float32(0.9))


@pytest.mark.parametrize("settings", [
    {"opening_diameter": 4, "convex_hull": True, "min_area": 0},
    {"opening_diameter": 4, "convex_hull": True, "min_area": 12},
    {"opening_diameter": 0, "convex_hull": True, "min_area": 0},
    {"opening_diameter": 3, "convex_hull": False, "min_area": 5},
])
def test_the_search_equals_a_scan_of_every_candidate_labelled_by_scipy(settings):
    # Smooth random maps quantised to a few dozen levels: every candidate threshold is scanned from the
    # bottom, each segmentation's regions counted by SciPy; the first one within the area is the answer.
    rng = np.random.default_rng(3)
    maps = [np.round(ndimage.gaussian_filter(rng.random((28, 36)), 2.5) * 100) / 100 for _ in range(3)]
    maps = [m.astype(np.float32) for m in maps]
    candidates = np.unique(np.concatenate([m.ravel() for m in maps]).astype(np.float64))
    assert 10 < candidates.size < 60

    def largest(t: float) -> int:
        areas = [0]
        for m in maps:
            labels, count = ndimage.label(postprocess.segment(m, t, **settings), structure=EIGHT)
            areas += [int(np.sum(labels == i)) for i in range(1, count + 1)]
        return max(areas)

    scan = [largest(float(t)) for t in candidates]
    assert all(a >= b for a, b in zip(scan, scan[1:]))  # non-increasing, as the search assumes
    assert len(set(scan)) < len(scan)  # ... and not strictly: plateaus exist
    everything = largest(-np.inf)  # every pixel set: no threshold is the smallest for this area or more
    for area in sorted({0, 7, *scan, *(a - 1 for a in scan)}):
        if not 0 <= area < everything:
            continue
        expected = next(float(t) for t, a in zip(candidates, scan) if a <= area)
        assert threshold_at_min_defect_area(maps, area, **settings) == expected, area
    with pytest.raises(InputError, match="every threshold meets it"):
        threshold_at_min_defect_area(maps, everything, **settings)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10", None])
def test_bad_areas_are_refused(bad):
    with pytest.raises(InputError, match="min_defect_area must be a whole number"):
        threshold_at_min_defect_area([_blocks()], bad)


def test_bad_maps_are_refused():
    with pytest.raises(InputError, match="no validation maps"):
        threshold_at_min_defect_area([], 5)
    with pytest.raises(InputError, match="2-D, non-empty and finite"):
        threshold_at_min_defect_area([np.full((4, 4), np.nan)], 5)


# --- the metadata ---------------------------------------------------------------------------------------


def test_metadata_records_the_method_and_reads_old_exports(exports, tmp_path):
    target = shutil.copytree(exports[0], tmp_path / "m" / "1")
    old = json.loads((target / METADATA_FILE).read_text())
    for key in ("threshold_method", "threshold_min_defect_area"):
        old.pop(key)  # an export written before these keys existed
    old_meta = ExportMetadata.from_dict({**old, "threshold": 0.2, "threshold_fpr": 0.01})
    assert old_meta.threshold_method is None and old_meta.threshold_min_defect_area is None

    # Each calibration is a new version; recalibrating it replaces the rule, never mixes the two.
    second = export.write_calibrated_version(target, 0.3, fpr=0.02)
    values = ExportMetadata.read(second).to_dict()
    assert (values["threshold_method"], values["threshold_fpr"], values["threshold_min_defect_area"]) == ("fpr", 0.02, None)
    third = export.write_calibrated_version(second, 0.4, min_defect_area=50)
    values = ExportMetadata.read(third).to_dict()
    assert (values["threshold_method"], values["threshold_fpr"], values["threshold_min_defect_area"]) == (
        "min_defect_area", None, 50)
    assert (values["version"], values["calibrated_from"]) == (3, 2)
    with pytest.raises(InputError, match="not both"):
        export.write_calibrated_version(target, 0.4, fpr=0.01, min_defect_area=50)
    for bad in (-1, 1.5):
        with pytest.raises(InputError, match="min_defect_area must be a whole number"):
            export.write_calibrated_version(target, 0.4, min_defect_area=bad)
    assert sorted(p.name for p in target.parent.iterdir()) == ["1", "2", "3"]  # refusals write nothing
    # the method and its parameter must agree
    for changes, message in (({"threshold_method": "min_defect_area"}, "needs threshold_min_defect_area"),
                             ({"threshold_min_defect_area": 5}, "threshold_method is None"),
                             ({"threshold_method": "fpr"}, "needs threshold_fpr"),
                             ({"threshold_method": "area"}, "'threshold_method' must be one of")):
        with pytest.raises(InputError, match=message):
            ExportMetadata.from_dict({**old, **changes})


# --- the command line -----------------------------------------------------------------------------------


def _errors(result) -> list[str]:
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


@pytest.mark.parametrize("args, message", [
    (["--fpr", "0.01", "--min-defect-area", "10"], "--fpr and --min-defect-area are mutually exclusive"),
    (["--min-defect-area", "-1"], "Invalid value for '--min-defect-area'"),
])
def test_cli_refuses_both_rules_or_a_negative_area_in_one_line(exports, dataset, tmp_path, args, message):
    target = shutil.copytree(exports[0], tmp_path / "m" / "1")
    before = (target / METADATA_FILE).read_bytes()
    result = CliRunner().invoke(calibrate_cli, [str(target), str(dataset / "val"), *args])
    assert result.exit_code == 2, result.output
    errors = _errors(result)
    assert len(errors) == 1 and message in errors[0], result.output
    assert (target / METADATA_FILE).read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["1"]  # no new version


@pytest.mark.slow  # loads and runs a SavedModel twice (about 8 s measured here)
def test_cli_min_defect_area_round_trip(exports, dataset, tmp_path):
    from tfssim.serving.inference import ExportedModel

    first = shutil.copytree(exports[0], tmp_path / "m" / "1")
    before = (first / METADATA_FILE).read_bytes()
    target = export.write_calibrated_version(first, 0.5, fpr=0.05)  # an FPR calibration is replaced, not mixed in
    result = CliRunner().invoke(calibrate_cli, [str(target), str(dataset / "val"), "--min-defect-area", "40"])
    assert result.exit_code == 0, result.output
    assert "no region over 40 px" in result.output
    # Calibrating version 2 wrote version 3 (printed); 2 keeps its FPR threshold, 1 none.
    assert f"new version {tmp_path / 'm' / '3'} (calibrated from {target}" in result.output
    assert ExportMetadata.read(target).threshold_method == "fpr" and (first / METADATA_FILE).read_bytes() == before
    target = tmp_path / "m" / "3"
    meta = ExportMetadata.read(target)
    assert meta.calibrated_from == 2
    assert (meta.threshold_method, meta.threshold_min_defect_area, meta.threshold_fpr) == ("min_defect_area", 40, None)
    # What serving returns on the validation images, post-processed as the metadata prescribes
    # (as tfssim-predict does), has no region over 40 px; at the next lower score, some image has one.
    model = ExportedModel.load(target)
    maps = [model.predict(data.read_image(p))["anomaly_map"] for p in data.list_images(dataset / "val")]
    processor = postprocess.PostProcessor.from_metadata(meta)

    def largest(threshold: float) -> int:
        sizes = [0]
        for m in maps:
            labels, _ = ndimage.label(dataclasses.replace(processor, threshold=threshold).segment(m), structure=EIGHT)
            sizes += list(np.bincount(labels.ravel())[1:])
        return int(max(sizes))

    scores = np.unique(np.concatenate([m.ravel() for m in maps]).astype(np.float64))
    index = int(np.searchsorted(scores, meta.threshold))
    assert index > 0 and scores[index] == meta.threshold  # one of the served scores, not the lowest
    assert largest(meta.threshold) <= 40 < largest(float(scores[index - 1]))
    # The library on the same maps, without writing, agrees; --fpr afterwards switches the method back.
    from tfssim.evaluation.calibration import calibrate

    again = calibrate(model, [dataset / "val"], min_defect_area=40, write=False, progress=False)
    assert (again.threshold, again.path, again.method) == (meta.threshold, None, "min_defect_area")
    result = CliRunner().invoke(calibrate_cli, [str(target), str(dataset / "val"), "--fpr", "0.05"])
    assert result.exit_code == 0, result.output
    meta = ExportMetadata.read(tmp_path / "m" / "4")
    assert (meta.threshold_method, meta.threshold_min_defect_area, meta.threshold_fpr) == ("fpr", None, 0.05)
