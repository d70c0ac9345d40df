"""Pixel ROC AUC, per-region overlap and image AUROC against independent references."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from tfssim.evaluation import metrics


def _pooled(maps, masks):
    return np.concatenate([np.ravel(g) for g in masks]), np.concatenate([np.ravel(m) for m in maps])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_auc_matches_sklearn_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    masks = [rng.random((40 + i, 50)) < 0.1 for i in range(4)]
    maps = [rng.random(g.shape).astype(np.float32) + 0.4 * g for g in masks]
    labels, scores = _pooled(maps, masks)
    assert metrics.pixel_roc_auc(maps, masks) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)


def test_pixel_auc_matches_sklearn_with_many_ties():
    rng = np.random.default_rng(3)
    masks = [rng.random((64, 64)) < 0.2 for _ in range(3)]
    maps = [np.round(rng.random(g.shape) + 0.3 * g, 1).astype(np.float32) for g in masks]  # ~14 distinct values
    labels, scores = _pooled(maps, masks)
    assert metrics.pixel_roc_auc(maps, masks) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)


def test_pixel_auc_on_real_texture_maps():
    from skimage import data, filters

    image = data.brick().astype(np.float32) / 255
    mask = np.zeros(image.shape, bool)
    mask[100:140, 200:260] = True
    score = np.abs(filters.sobel(image)) + 0.05 * mask  # a real, structured map with a weak signal
    labels, scores = _pooled([score], [mask])
    got = metrics.pixel_roc_auc([score], [mask])
    assert got == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert 0.5 < got < 1.0


def test_roc_curve_ends_and_is_monotone():
    rng = np.random.default_rng(4)
    masks = [rng.random((30, 30)) < 0.3]
    fpr, tpr, thr = metrics.pixel_roc([rng.random((30, 30))], masks)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.isinf(thr[0])


@pytest.mark.slow  # 20 s measured in the not-slow run on the loaded 2-core machine
def test_28_million_pixels_work_and_random_scores_give_chance():
    rng = np.random.default_rng(5)
    masks = [rng.random((696, 1024)) < 0.05 for _ in range(40)]
    maps = [rng.random((696, 1024), dtype=np.float32) for _ in range(40)]
    assert 0.49 < metrics.pixel_roc_auc(maps, masks) < 0.51


def _slow_pro(maps, masks, thresholds):
    """Obviously-correct reference: loop over thresholds and labelled regions."""
    good = np.concatenate([m[~g] for m, g in zip(maps, masks)])
    fprs, means = [], []
    for t in thresholds:
        fprs.append(np.mean(good > t))
        overlaps = []
        for m, g in zip(maps, masks):
            labels, n = ndimage.label(g, structure=np.ones((3, 3)))
            for region in range(1, n + 1):
                pixels = labels == region
                overlaps.append(np.mean(m[pixels] > t))
        means.append(np.mean(overlaps))
    return np.array(fprs), np.array(means)


def test_pro_curve_matches_slow_reference():
    rng = np.random.default_rng(6)
    masks = []
    for _ in range(3):
        g = np.zeros((40, 40), bool)
        g[5:12, 5:15] = True
        g[25:35, 20 + rng.integers(0, 5) : 30] = True
        g[30, 2] = True  # a one-pixel region counts as much as a big one
        masks.append(g)
    maps = [rng.random((40, 40)) + 0.5 * g * rng.random((40, 40)) for g in masks]
    curve = metrics.pro_curve(maps, masks, num_thresholds=25)
    # The sweep points sit where they should: at most 1/N_good below each target FPR, never above.
    n_good = sum(int((~g).sum()) for g in masks)
    targets = np.linspace(0.0, 0.3, 25)
    assert np.all(curve["fpr"] <= targets + 1e-12) and np.all(targets - curve["fpr"] < 1.0 / n_good)
    fpr, mean = _slow_pro(maps, masks, curve["thresholds"])
    np.testing.assert_allclose(curve["fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(curve["mean"], mean, atol=1e-12)
    assert int(curve["regions"]) == 9
    assert np.all(np.diff(curve["fpr"]) >= 0) and curve["fpr"][-1] <= 0.3 + 1e-9


def test_aupro_perfect_random_and_range():
    rng = np.random.default_rng(7)
    masks = [rng.random((50, 50)) < 0.1 for _ in range(2)]
    perfect = [g.astype(float) + 0.01 * rng.random(g.shape) for g in masks]
    assert metrics.aupro(perfect, masks) == pytest.approx(1.0, abs=0.01)
    chance = [rng.random(g.shape) for g in masks]
    assert 0.10 < metrics.aupro(chance, masks) < 0.20  # mean overlap ~ FPR -> area / 0.3 ~ 0.15


def test_area_under_a_built_curve_equals_aupro():
    rng = np.random.default_rng(9)
    masks = [rng.random((40, 40)) < 0.1 for _ in range(2)]
    maps = [rng.random(g.shape) + 0.3 * g for g in masks]
    curve = metrics.pro_curve(maps, masks, num_thresholds=300, max_fpr=0.3)
    assert metrics.area_under_pro(curve, 0.3) == metrics.aupro(maps, masks, max_fpr=0.3)


def test_thinned_roc_keeps_ends_and_shape():
    rng = np.random.default_rng(10)
    masks = [rng.random((300, 300)) < 0.2]
    maps = [rng.random((300, 300)) + 0.5 * masks[0]]
    fpr, tpr, _ = metrics.pixel_roc(maps, masks)
    x, y = metrics.thin_curve(fpr, tpr, 2000)
    assert fpr.size > 50_000 and x.size <= 2002
    assert (x[0], y[0], x[-1], y[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) >= 0)
    # Every point of the full curve has a kept point below-left of it within one grid cell (1/1000).
    k = np.minimum(np.searchsorted(x, fpr, side="right"), np.searchsorted(y, tpr, side="right")) - 1
    assert np.all(fpr - x[k] < 1e-3 + 1e-12) and np.all(tpr - y[k] < 1e-3 + 1e-12)


def test_image_auroc_matches_sklearn_and_handles_one_class():
    rng = np.random.default_rng(8)
    maps = [rng.random((10, 10)) + (0.5 if i % 3 == 0 else 0) for i in range(12)]
    labels = [i % 3 == 0 for i in range(12)]
    assert metrics.image_roc_auc(maps, labels) == pytest.approx(roc_auc_score(labels, [m.max() for m in maps]))
    assert metrics.image_roc_auc(maps, [True] * 12) is None


def test_f1_iou_by_hand():
    seg = [np.array([[1, 1, 0, 0]], bool)]
    gt = [np.array([[1, 0, 1, 0]], bool)]
    f1, iou = metrics.f1_iou(seg, gt)
    assert f1 == pytest.approx(2 * 1 / (2 * 1 + 1 + 1)) and iou == pytest.approx(1 / 3)
    assert metrics.f1_iou([seg[0].astype(np.float32)], [gt[0].astype(np.uint8) * 255]) == (f1, iou)
    assert metrics.f1_iou([np.zeros((2, 3), bool)], [np.zeros((2, 3), bool)]) == (1.0, 1.0)
    with pytest.raises(ValueError, match=r"segmentation 0 has shape \(1, 4\) but its mask has shape \(1, 5\)"):
        metrics.f1_iou(seg, [np.zeros((1, 5), bool)])
    with pytest.raises(ValueError, match="not binary"):
        metrics.f1_iou(seg, [np.array([[0, 1, 2, 0]])])


@pytest.mark.parametrize(
    "maps, masks, message",
    [
        ([np.zeros((4, 4))], [np.zeros((4, 5), bool)], r"anomaly map 0 has shape \(4, 4\) but its mask has shape \(4, 5\)"),
        ([np.zeros((4, 4))], [np.array([[0, 1, 2, 0]] * 4)], "not binary"),
        ([], [], "no anomaly maps"),
        ([np.zeros((4, 4))], [np.zeros((4, 4), bool)], "both defect and good pixels"),
        ([np.zeros((4, 4))], [], "1 anomaly maps but 0 masks"),
    ],
)
def test_bad_input_is_a_clear_error(maps, masks, message):
    with pytest.raises(ValueError, match=message):
        metrics.pixel_roc_auc(maps, masks)


def _thresholded(anomaly_map, threshold):
    return anomaly_map > threshold


def test_segmentation_roc_without_postprocessing_is_sklearns_roc_at_those_thresholds():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(3)
    masks = [rng.random((40, 50)) < 0.1 for _ in range(3)]
    maps = [rng.normal(size=m.shape) + 1.5 * m for m in masks]
    fprs = (0.5, 0.2, 0.05, 0.01)
    curve = metrics.segmentation_roc(maps, masks, _thresholded, fprs)
    truth = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([m.ravel() for m in maps])
    ref_fpr, ref_tpr, ref_th = roc_curve(truth, scores, drop_intermediate=False)
    inner = ~np.isnan(curve["thresholds"])
    assert inner.sum() == len(fprs)
    for f, t, th in zip(curve["fpr"][inner], curve["tpr"][inner], curve["thresholds"][inner]):
        # sklearn flags score >= threshold; the next larger threshold gives our score > th.
        i = np.flatnonzero(ref_th > th)[-1]
        assert f == pytest.approx(ref_fpr[i]) and t == pytest.approx(ref_tpr[i])
    # The thresholds are raw good-pixel quantiles, so the sampled FPRs are the requested ones.
    np.testing.assert_allclose(sorted(curve["fpr"][inner]), sorted(fprs), atol=2 / (~truth).sum())
    assert curve["fpr"][0] == 0 and curve["tpr"][-1] == 1
    assert curve["auc"] == pytest.approx(np.trapezoid(curve["tpr"], curve["fpr"]) if hasattr(np, "trapezoid")
                                         else np.trapz(curve["tpr"], curve["fpr"]))
    # Sampled at a few thresholds, the piecewise-linear area lies below the full ROC's (a concave curve).
    assert 0.5 < curve["auc"] <= roc_auc_score(truth, scores) + 1e-9


def test_segmentation_roc_opening_and_hull_beat_the_raw_map_on_speckle():
    from tfssim.serving.postprocess import segment

    rng = np.random.default_rng(0)
    masks, maps = [], []
    for _ in range(4):
        mask = np.zeros((64, 64), bool)
        mask[20:40, 24:44] = True
        # Isolated one-pixel false alarms stronger than the defect, and a defect with pin holes.
        m = rng.random((64, 64)) * 0.5
        m[rng.random((64, 64)) < 0.03] = 0.9
        m[mask] = 0.8 + 0.05 * rng.random(mask.sum())
        m[mask & (rng.random((64, 64)) < 0.05)] = 0.0
        masks.append(mask)
        maps.append(m)
    raw = metrics.pixel_roc_auc(maps, masks)
    curve = metrics.segmentation_roc(maps, masks, lambda m, th: segment(m, th, opening_diameter=4, convex_hull=True))
    assert curve["auc"] > raw + 0.02
    # Opening and hulls are increasing operators: a lower threshold flags a superset, so the
    # sampled curve rises in both coordinates.
    assert np.all(np.diff(curve["tpr"]) >= 0)
    inner = ~np.isnan(curve["thresholds"])
    assert np.all(np.diff(curve["thresholds"][inner]) <= 0)
    # The pipeline finds 96 % of the defect pixels (the opening only rounds the square's corners)
    # with under 1 % false alarms: the opening removes the speckle, the hull fills the pin holes.
    # On the raw map the holes (5 %, scored 0) cost over half of the good pixels.
    assert np.any((curve["tpr"] >= 0.96) & (curve["fpr"] < 0.01))
    raw_fpr, raw_tpr, _ = metrics.pixel_roc(maps, masks)
    assert raw_fpr[np.argmax(raw_tpr >= 0.96)] > 0.5


@pytest.mark.parametrize("fprs", [(), (0.0, 0.5), (0.5, 1.0), ((0.1,),)])
def test_segmentation_roc_rejects_bad_rates(fprs):
    masks = [np.eye(8, dtype=bool)]
    with pytest.raises(ValueError, match="false-positive rates"):
        metrics.segmentation_roc([np.eye(8)], masks, _thresholded, fprs)


def test_segmentation_roc_needs_both_classes():
    with pytest.raises(ValueError, match="both defect and good pixels"):
        metrics.segmentation_roc([np.ones((4, 4))], [np.zeros((4, 4), bool)], _thresholded)


def test_segmentation_roc_rejects_a_segmenter_of_the_wrong_shape():
    masks = [np.eye(8, dtype=bool)]
    with pytest.raises(ValueError, match=r"returned a \(8, 8, 1\) mask for a \(8, 8\) map"):
        metrics.segmentation_roc([np.eye(8)], masks, lambda m, th: (m > th)[..., None])
