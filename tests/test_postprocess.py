"""Threshold calibration, opening, convex hulls and region tables."""
from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.draw import disk

from tfssim.export.metadata import ExportMetadata
from tfssim.serving import postprocess


@pytest.mark.parametrize("fpr", [0.001, 0.01, 0.05])
def test_calibrated_threshold_gives_the_requested_fpr(fpr):
    rng = np.random.default_rng(0)
    maps = [rng.gamma(2.0, 0.1, (120 + i, 150)) for i in range(3)]
    t = postprocess.threshold_at_fpr(maps, fpr)
    achieved = np.mean(np.concatenate([m.ravel() for m in maps]) > t)
    assert abs(achieved - fpr) <= 0.001  # within 0.1 percentage point
    assert achieved <= fpr


def test_threshold_with_ties_never_exceeds_the_target():
    maps = [np.repeat(np.arange(10.0), 100).reshape(10, 100)]
    t = postprocess.threshold_at_fpr(maps, 0.15)
    assert np.mean(maps[0] > t) <= 0.15


def test_footprint_is_a_true_diameter_4_disk():
    fp = postprocess.opening_footprint(4)
    assert fp.shape == (4, 4) and fp.sum() == 12
    assert not fp[0, 0] and not fp[3, 3] and fp[1:3].all()


def test_opening_removes_a_3_pixel_blob_and_keeps_a_10_pixel_one():
    score = np.zeros((60, 60))
    score[10:13, 10:25] = 1.0  # a bar 3 px wide
    score[35:45, 35:45] = 1.0  # a square 10 px wide
    for hull in (False, True):
        mask = postprocess.segment(score, 0.5, convex_hull=hull)
        assert not mask[:30].any(), "the 3-pixel-wide blob is removed"
        # The 4x4 disk (a square without corners) fits everywhere but the square's 4 corner pixels.
        assert mask.sum() == 96 and mask[35:45, 35:45].sum() == 96
        assert not mask[35, 35] and not mask[44, 44] and mask[35, 36] and mask[40, 40]


def test_convex_hull_fills_a_ring_hole():
    score = np.zeros((60, 60))
    outer_r, outer_c = disk((30, 30), 15)
    inner_r, inner_c = disk((30, 30), 8)
    score[outer_r, outer_c] = 1.0
    score[inner_r, inner_c] = 0.0
    without = postprocess.segment(score, 0.5, convex_hull=False)
    with_hull = postprocess.segment(score, 0.5, convex_hull=True)
    assert not without[30, 30] and with_hull[30, 30]
    assert with_hull[inner_r, inner_c].all()


def test_min_area_drops_small_regions():
    score = np.zeros((50, 50))
    score[5:11, 5:11] = 1
    score[20:45, 20:45] = 1
    mask = postprocess.segment(score, 0.5, min_area=100)
    assert not mask[5:11, 5:11].any() and mask[30, 30]


def test_region_table_by_hand(tmp_path):
    mask = np.zeros((20, 30), bool)
    mask[2:6, 3:8] = True
    mask[10:12, 20:30] = True
    score = np.where(mask, 0.5, 0.0)
    score[3, 4] = 0.9
    table = postprocess.region_table(mask, score)
    assert len(table) == 2
    first = table[0]
    assert first["area"] == 20 and first["bbox"] == [2, 3, 6, 8]
    assert first["centroid"] == [3.5, 5.0] and first["max_score"] == pytest.approx(0.9)
    assert first["mean_score"] == pytest.approx((19 * 0.5 + 0.9) / 20)
    path = postprocess.regions_to_json(table, tmp_path / "r.json")
    assert json.loads(path.read_text()) == table


def test_postprocessor_from_metadata():
    meta = ExportMetadata.from_dict({"format": 1, "name": "m", "version": 1, "kind": "ssim", "residual": "ssim",
                                     "patch_size": 32, "channels": 1, "stride": 8, "threshold": 0.5})
    processor = postprocess.PostProcessor.from_metadata(meta)
    # The record's defaults: the paper's opening of diameter 4 and convex hulls, no minimum area.
    assert (processor.opening_diameter, processor.convex_hull, processor.min_area) == (4, True, 0)
    assert postprocess.PostProcessor(0.5) == processor
    score = np.zeros((30, 30))
    score[5:20, 5:20] = 1
    mask, regions = processor(score)
    assert mask.sum() == 225 - 4 and len(regions) == 1  # the round footprint trims one pixel per corner
    with pytest.raises(ValueError, match="no calibrated threshold"):
        postprocess.PostProcessor.from_metadata(meta.replace(threshold=None))
    with pytest.raises(ValueError, match="no calibrated threshold"):
        postprocess.PostProcessor.from_metadata(None)
    given = postprocess.PostProcessor.from_metadata(None, threshold=0.2, opening_diameter=0, convex_hull=False)
    assert (given.threshold, given.opening_diameter, given.convex_hull, given.min_area) == (0.2, 0, False, 0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: postprocess.threshold_at_fpr([np.zeros((3, 3))], 0.0), "between 0 and 1"),
        (lambda: postprocess.threshold_at_fpr([np.zeros((3, 3))], 1.5), "between 0 and 1"),
        (lambda: postprocess.threshold_at_fpr([], 0.01), "no validation maps"),
        (lambda: postprocess.segment(np.zeros((2, 3, 4)), 0.5), "must be 2-D"),
        (lambda: postprocess.region_table(np.zeros((3, 3), bool), np.zeros((4, 4))), "differs"),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
