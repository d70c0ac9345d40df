"""The streamed evaluation (issue 24): ``tfssim.evaluation.evaluate`` keeps accumulators, not maps.

Every streamed number against an independent exact computation on small data (scikit-learn,
the in-memory :mod:`tfssim.evaluation.metrics` functions, counts written out here): the threshold, F1 / IoU
and the image AUROC exactly, the pixel AUROC within 1e-3 and within the histogram's stated
bound, the overlap curve point by point and its area within :data:`AUPRO_TOLERANCE`; maps
computed once per image; bad files refused before the first map; memory that does not grow with
the number of images."""
from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage import io
from skimage.measure import label
from sklearn.metrics import f1_score, jaccard_score, roc_auc_score

from tfssim.data.layouts import DatasetSplit
from tfssim.errors import InputError
from tfssim.evaluation import evaluate, metrics, per_type
from tfssim.export.metadata import ExportMetadata
from tfssim.serving import postprocess

# The overlap area's stated bound (two trapezoid sums of one monotone curve, each within half an
# FPR step of its area: 1 / (PRO_THRESHOLDS - 1) where no tie is wider than a step).
AUPRO_TOLERANCE = 1 / (evaluate.PRO_THRESHOLDS - 1)
# What the tests hold the area to on these maps: 30x tighter than the worst case (measured: 5e-5).
AUPRO_MEASURED = 1e-4
# The segmentation ROC's area against metrics.segmentation_roc's: its thresholds move by up to
# about one bin (a relative 2**-13), which an opening or a hull can turn into a jump of a region
# (measured: up to 2.6e-3 on these 7 maps of 70x90 pixels).
SEGROC_TOLERANCE = 5e-3


def _dataset(seed: int, case: str = "smooth", n_test: int = 7, shape=(70, 90)):
    """Validation maps, test maps, masks and labels: ``crack`` and ``stain`` images with one or
    two defect regions each (brighter by a random amount), and good ones."""
    rng = np.random.default_rng(seed)

    def field() -> np.ndarray:
        m = gaussian_filter(rng.random(shape), 3.0)
        if case == "ties":  # few distinct scores: ties everywhere
            m = np.round(m * 40) / 40
        elif case == "negative":
            m = m - 0.55
        elif case == "wide":  # many orders of magnitude, exact zeros included
            m = np.where(m < 0.45, 0.0, np.exp(40 * (m - 0.5)))
        return m.astype(np.float64 if case == "float64" else np.float32)

    kinds = ["crack", "stain", "good"]
    test, masks, labels = [], [], []
    for i in range(n_test):
        kind = kinds[i % 3]
        m, g = field(), np.zeros(shape, bool)
        if kind != "good":
            for _ in range(1 + i % 2):
                y, x = int(rng.integers(0, shape[0] - 20)), int(rng.integers(0, shape[1] - 20))
                g[y:y + int(rng.integers(3, 20)), x:x + int(rng.integers(3, 20))] = True
            m = m + (g * m.dtype.type(0.03 * (1 + rng.random()) * (m.max() - m.min() + 1e-3)))
        test.append(m)
        masks.append(g)
        labels.append(kind)
    val = [field() for _ in range(3)]
    return val, test, masks, labels


def _segment(maps, threshold, **settings):
    return [postprocess.segment(m, threshold, **settings) for m in maps]


def _pooled(arrays):
    return np.concatenate([np.asarray(a).ravel() for a in arrays])


def _overlaps_at(maps, masks, edge):
    """Each ground-truth region's share of pixels scoring >= ``edge`` (as float32), counted here
    with scikit-image's labelling."""
    shares = []
    for m, g in zip(maps, masks):
        regions = label(g, connectivity=2)
        flagged = np.asarray(m, np.float32) >= np.float32(edge)
        shares += [flagged[regions == r].mean() for r in range(1, regions.max() + 1)]
    return np.array(shares)


@pytest.mark.parametrize("case", ["smooth", "float64", "ties", "negative", "wide"])
def test_every_streamed_score_matches_the_exact_computation(case):
    val, test, masks, labels = _dataset(["smooth", "float64", "ties", "negative", "wide"].index(case), case)
    fpr = 0.02
    settings = {"opening_diameter": 2, "convex_hull": True, "min_area": 0}
    result = evaluate.evaluate_maps("m", val, test, masks, fpr=fpr, test_labels=labels, segmentation_auroc=True,
                                      **settings)
    scores = result.scores
    # The threshold and its FPR: exactly threshold_at_fpr's.
    threshold = postprocess.threshold_at_fpr(val, fpr)
    assert scores["threshold"] == threshold
    assert scores["val_fpr"] == np.mean(_pooled(val) > threshold)
    # Pixel AUROC: within the stated bound of scikit-learn's (and of the in-memory metric).
    y, s = _pooled(masks), _pooled(test)
    exact = roc_auc_score(y, s)
    bound = scores["pixel_auroc_error_bound"]
    assert abs(scores["pixel_auroc"] - exact) <= bound + 1e-12 and bound <= 1e-3
    assert abs(scores["pixel_auroc"] - metrics.pixel_roc_auc(test, masks)) <= bound + 1e-12
    if case == "ties":  # ties are ties in both: the histogram's AUC is exact
        assert scores["pixel_auroc"] == pytest.approx(exact, abs=1e-12)
    # F1 / IoU: exact, from the same segmentation counted independently.
    segs = _segment(test, threshold, **settings)
    assert (scores["f1"], scores["iou"]) == metrics.f1_iou(segs, masks)
    assert scores["f1"] == pytest.approx(f1_score(y, _pooled(segs)), abs=1e-12)
    assert scores["iou"] == pytest.approx(jaccard_score(y, _pooled(segs)), abs=1e-12)
    # Image AUROC: exact (the in-memory metric on the maps; scikit-learn's to rounding).
    assert scores["image_auroc"] == metrics.image_roc_auc(test, [g.any() for g in masks])
    assert scores["image_auroc"] == pytest.approx(roc_auc_score([g.any() for g in masks], [m.max() for m in test]),
                                                  abs=1e-12)
    # AUPRO: within the tolerance of the in-memory sweep.
    assert abs(scores["aupro_0.3"] - metrics.aupro(test, masks)) <= AUPRO_MEASURED
    # The segmentation ROC: every point recounted here at its threshold.
    curve = result.segmentation_roc
    good, defect = ~y, y
    inner = ~np.isnan(curve["thresholds"])
    assert inner.sum() >= 5
    for f, t, th in zip(curve["fpr"][inner], curve["tpr"][inner], curve["thresholds"][inner]):
        flagged = _pooled(_segment(test, th, **settings))
        assert (f, t) == (np.sum(flagged & good) / good.sum(), np.sum(flagged & defect) / defect.sum())
    assert scores["segmentation_auroc"] == metrics.area_under_curve(curve["fpr"], curve["tpr"])
    exact_curve = metrics.segmentation_roc(test, masks, lambda m, t: postprocess.segment(m, t, **settings))
    tolerance = 1e-12 if case == "ties" else SEGROC_TOLERANCE  # ties: the same thresholds' segmentations
    assert abs(scores["segmentation_auroc"] - exact_curve["auc"]) <= tolerance


@pytest.mark.parametrize("case", ["smooth", "float64", "negative"])
def test_the_curves_are_exact_at_their_thresholds(case):
    val, test, masks, labels = _dataset(10 + ["smooth", "float64", "negative"].index(case), case)
    result = evaluate.evaluate_maps("m", val, test, masks, fpr=0.05)
    y = _pooled(masks)
    s32 = _pooled(test).astype(np.float32)
    good = s32[~y]
    # The overlap curve: at each threshold (a bin edge), its FPR counted exactly on the good
    # pixels, the mean overlap over the regions exactly, the quantiles within half a level.
    pro = result.pro
    assert len(pro["fpr"]) == evaluate.PRO_THRESHOLDS and np.all(np.diff(pro["thresholds"]) <= 0)
    assert pro["fpr"][0] == 0 and pro["fpr"][-1] <= 0.3 + 1e-12
    for k in [0, 1, 7, 50, 150, 299]:
        edge = pro["thresholds"][k]
        assert pro["fpr"][k] == np.count_nonzero(good >= np.float32(edge)) / good.size
        shares = _overlaps_at(test, masks, edge)
        assert pro["mean"][k] == pytest.approx(shares.mean(), abs=1e-12)
        want = np.quantile(shares, list(metrics.PRO_QUANTILES))
        assert np.all(np.abs(pro["quantiles"][:, k] - want) <= 0.5 / metrics.OVERLAP_BINS + 1e-12)
    assert int(pro["regions"]) == sum(label(g, connectivity=2).max() for g in masks)
    # Each threshold is the upper edge of the bin holding the in-memory sweep's threshold: at
    # most one bin (a relative 2**-13) above it.
    exact = metrics.pro_curve(test, masks, evaluate.PRO_THRESHOLDS, 0.3)
    assert np.all(pro["thresholds"] >= exact["thresholds"])
    assert np.all(pro["thresholds"] - exact["thresholds"] <= np.abs(exact["thresholds"]) * 2.0 ** -12 + 1e-30)
    assert np.all(pro["fpr"] <= exact["fpr"] + 1e-12)  # the same counts, divided in another order
    assert metrics.area_under_pro(pro, 0.3) == result.scores["aupro_0.3"]
    # The ROC curve: its area is the AUROC, each of its points exact (scores >= threshold).
    fpr, tpr = result.roc
    assert metrics.area_under_curve(fpr, tpr) == pytest.approx(result.scores["pixel_auroc"], abs=1e-3)
    pooled = metrics.PooledScores()
    for m, g in zip(test, masks):
        pooled.add_scores(m, g)
    full_fpr, full_tpr, thresholds = pooled.roc_curve()
    assert metrics.area_under_curve(full_fpr, full_tpr) == pytest.approx(result.scores["pixel_auroc"], abs=1e-12)
    for k in np.linspace(1, thresholds.size - 1, 9).astype(int):
        flagged = s32 >= np.float32(thresholds[k])
        assert (full_fpr[k], full_tpr[k]) == (np.sum(flagged & ~y) / np.sum(~y), np.sum(flagged & y) / np.sum(y))


def test_the_overlap_area_stays_within_its_tolerance_over_many_datasets():
    worst = 0.0
    for seed in range(8):
        for case in ("smooth", "wide", "ties"):
            _, test, masks, _ = _dataset(100 + seed, case, n_test=4, shape=(50, 60))
            pooled = metrics.PooledScores()
            for m, g in zip(test, masks):
                pooled.add_scores(m, g)
            for m, g in zip(test, masks):
                pooled.add_segmentation(m, g, m > 0)
            worst = max(worst, abs(pooled.aupro() - metrics.aupro(test, masks)))
    assert worst <= AUPRO_MEASURED, worst
    assert AUPRO_MEASURED < AUPRO_TOLERANCE


def test_per_type_scores_match_the_exact_computation_on_each_types_pixels():
    val, test, masks, labels = _dataset(3, n_test=9)
    settings = {"opening_diameter": 0, "convex_hull": False}
    result = evaluate.evaluate_maps("m", val, test, masks, fpr=0.05, test_labels=labels, **settings)
    threshold = result.scores["threshold"]
    good = [i for i, k in enumerate(labels) if k == "good"]
    assert list(result.per_type) == ["crack", "stain"]
    for kind, scores in result.per_type.items():
        own = [i for i, k in enumerate(labels) if k == kind]
        chosen = own + good
        maps, gts = [test[i] for i in chosen], [masks[i] for i in chosen]
        y, s = _pooled(gts), _pooled(maps)
        bound = scores["pixel_auroc_error_bound"]
        assert abs(scores["pixel_auroc"] - roc_auc_score(y, s)) <= bound + 1e-12 and bound <= 1e-3
        assert abs(scores["aupro_0.3"] - metrics.aupro(maps, gts)) <= AUPRO_MEASURED
        image_labels = [True] * len(own) + [False] * len(good)
        assert scores["image_auroc"] == metrics.image_roc_auc(maps, image_labels)
        assert scores["image_auroc"] == pytest.approx(roc_auc_score(image_labels, [m.max() for m in maps]), abs=1e-12)
        seg = s > threshold  # no opening, no hulls: the segmentation is the thresholded map
        assert scores["f1"] == pytest.approx(f1_score(y, seg, zero_division=1.0), abs=1e-12)
        assert scores["iou"] == pytest.approx(jaccard_score(y, seg, zero_division=1.0), abs=1e-12)
        assert (scores["images"], scores["good_images"]) == (len(own), len(good))
    # per_type_scores (maps in memory, segmentations given) is the same accumulators.
    segs = _segment(test, threshold, **settings)
    assert per_type.per_type_scores(test, masks, labels, segs) == result.per_type


@pytest.mark.parametrize("case", ["smooth", "float64", "negative", "ties"])
def test_the_two_look_threshold_is_threshold_at_fpr_exactly(case):
    val, test, _, _ = _dataset(20, case)
    maps = val + test
    scores = _pooled(maps)
    for fpr in (0.5, 0.1, 0.01, 1e-3, 1.5 / scores.size, 1e-9):
        calibration = metrics.FprThreshold(fpr)
        for m in maps:
            calibration.count(m)
        for m in reversed(maps):  # any order
            calibration.look(m)
        threshold, achieved = calibration.result()
        assert threshold == postprocess.threshold_at_fpr(maps, fpr)
        assert achieved == np.mean(scores > threshold) and achieved <= fpr
    calibration = metrics.FprThreshold(0.1)
    calibration.count(maps[0])
    calibration.look(maps[1])
    with pytest.raises(RuntimeError, match="give both the same maps"):
        calibration.result()
    with pytest.raises(InputError, match="NaN"):
        metrics.FprThreshold(0.1).count(np.array([np.nan]))
    with pytest.raises(InputError, match="between 0 and 1"):
        metrics.FprThreshold(1.0)


def test_bad_maps_are_named_as_the_in_memory_metrics_name_them():
    val, test, masks, _ = _dataset(4)
    bad = [m.copy() for m in test]
    bad[2][0, 0] = np.nan
    with pytest.raises(InputError, match="anomaly map 2 holds NaN or infinite values"):
        evaluate.evaluate_maps("m", val, bad, masks)
    with pytest.raises(InputError, match=r"anomaly map 1 has shape \(70, 90\) but its mask has shape \(7, 9\)"):
        evaluate.evaluate_maps("m", val, test, [masks[0], np.zeros((7, 9), bool), *masks[2:]])
    with pytest.raises(InputError, match="ROC needs both defect and good pixels"):
        evaluate.evaluate_maps("m", val, test, [np.zeros_like(g) for g in masks])
    with pytest.raises(InputError, match="no validation maps"):
        evaluate.evaluate_maps("m", [], test, masks)


# --------------------------------------------------------------------------------------------
# evaluate() on files, with an export stand-in whose map depends only on its input image


class BlurExport:
    """Stands in for an ExportedModel: the map is the difference between the image and its blur
    (plus ``offset``)."""

    channels = 1
    threshold = None

    def __init__(self, root: Path, offset: float = 0.0) -> None:
        self.name = "blur"
        self.path = root / "blur" / "1"
        self.path.mkdir(parents=True, exist_ok=True)
        self.metadata = ExportMetadata.from_dict({
            "format": 1, "name": "blur", "version": 1, "kind": "l2", "residual": "l2", "patch_size": 32,
            "channels": 1, "stride": 30, "opening_diameter": 4, "convex_hull": True})
        self.offset = np.float32(offset)
        self.calls = 0

    def predict(self, image, source=None):
        self.calls += 1
        image = np.asarray(image, np.float32)[..., 0]
        return {"anomaly_map": self.offset + np.abs(image - gaussian_filter(image, 2.0)) * 4}


def _image_dataset(root: Path, n_test: int, shape=(96, 128), seed: int = 0) -> DatasetSplit:
    """Files: 2 validation images, ``n_test`` test images (crack / stain / good) with masks."""
    rng = np.random.default_rng(seed)

    def texture() -> np.ndarray:
        return np.clip(0.5 + 0.25 * gaussian_filter(rng.normal(size=shape), 1.5), 0, 1)

    def save(path: Path, array: np.ndarray) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        io.imsave(path, (array * 255).round().astype(np.uint8), check_contrast=False)
        return path

    val = [save(root / "val" / f"v{i}.png", texture()) for i in range(2)]
    test, test_masks, labels = [], [], []
    for i in range(n_test):
        kind = ("crack", "stain", "good")[i % 3]
        image = texture()
        mask_path = None
        if kind != "good":
            mask = np.zeros(shape, bool)
            y, x = int(rng.integers(0, shape[0] - 24)), int(rng.integers(0, shape[1] - 24))
            mask[y:y + int(rng.integers(6, 24)), x:x + int(rng.integers(6, 24))] = True
            image[mask] = rng.random(int(mask.sum()))  # noise: the blur's difference finds it
            mask_path = save(root / "ground_truth" / kind / f"{i:03d}_mask.png", mask.astype(float))
        test.append(save(root / "test" / kind / f"{i:03d}.png", image))
        test_masks.append(mask_path)
        labels.append(kind)
    return DatasetSplit("folder", root, [], val, test, test_masks, labels)


def test_evaluate_on_files_gives_evaluate_maps_numbers_and_every_file(tmp_path):
    from tfssim import data

    split = _image_dataset(tmp_path / "data", 7)
    model = BlurExport(tmp_path / "exports")
    out = tmp_path / "eval"
    (result,) = evaluate.evaluate(split, [model], out, fpr=0.02, max_overlays=3, progress=False,
                                    segmentation_auroc=True)
    assert model.calls == len(split.val) + len(split.test)  # each map computed once: the passes read the cache
    # The same accumulators as over the maps in memory: the same numbers.
    val = [model.predict(data.read_image(p))["anomaly_map"] for p in split.val]
    test = [model.predict(data.read_image(p))["anomaly_map"] for p in split.test]
    masks = data.read_test_masks(split.test_masks, test)
    again = evaluate.evaluate_maps("blur/1", val, test, masks, fpr=0.02, opening_diameter=4, convex_hull=True,
                                     segmentation_auroc=True, test_labels=split.test_labels)
    assert {k: v for k, v in result.scores.items() if k != "export_threshold"} == again.scores
    assert result.per_type == again.per_type
    assert result.scores["threshold"] == postprocess.threshold_at_fpr(val, 0.02)
    # The files, as before; no cache left behind.
    for name in ("results.json", "results.csv", "roc.png", "roc_blur_1.csv", "pro_blur_1.csv", "pro_blur_1.png",
                 "segroc_blur_1.csv", "per_type.png"):
        assert (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in (out / "overlays" / "blur_1").iterdir()) == ["000.png", "001.png", "002.png"]
    assert sorted(p.name for p in out.iterdir() if p.name != ".tfssim-output.lock") == sorted(
        ["results.json", "results.csv", "roc.png", "roc_blur_1.csv", "pro_blur_1.csv", "pro_blur_1.png",
         "segroc_blur_1.csv", "per_type.png", "overlays"])
    payload = json.loads((out / "results.json").read_text())
    assert payload["counts"]["test"] == 7 and payload["counts"]["defective"] == 5
    assert payload["exports"]["blur/1"]["pixel_auroc"] == result.scores["pixel_auroc"]
    with (out / "pro_blur_1.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == evaluate.PRO_THRESHOLDS
    curve = {k: np.array([float(r[k]) for r in rows]) for k in ("fpr", "mean")}
    assert metrics.area_under_pro(curve, 0.3) == result.scores["aupro_0.3"]


def test_bad_files_are_refused_before_the_first_map(tmp_path):
    split = _image_dataset(tmp_path / "data", 4)
    model = BlurExport(tmp_path / "exports")
    io.imsave(split.test_masks[1], np.zeros((10, 10), np.uint8), check_contrast=False)
    with pytest.raises(InputError, match="mask .* is 10x10 but its image is 96x128"):
        evaluate.evaluate(split, [model], tmp_path / "e1", progress=False)
    split.test[-1].write_bytes(b"not an image")
    with pytest.raises(InputError):
        evaluate.evaluate(split, [model], tmp_path / "e2", progress=False)
    assert model.calls == 0


def _peak_bytes(split, model, out: Path) -> int:
    tracemalloc.start()
    try:
        evaluate.evaluate(split, [model], out, max_overlays=1, progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Images as files: evaluation holds about one image's working set, whatever their number."""
    shape = (256, 320)
    big = _image_dataset(tmp_path / "data", 16, shape=shape)
    small = DatasetSplit("folder", big.root, [], big.val, big.test[:4], big.test_masks[:4], big.test_labels[:4])
    # The offset keeps the scores in a few binades (powers of two), all seen in the first 4 images:
    # a histogram grows by a block (128 kB per pool) for each binade its scores first reach, a
    # bounded growth (at most 512 blocks) that would blur what this test measures.
    model = BlurExport(tmp_path / "exports", offset=0.25)
    evaluate.evaluate(small, [model], tmp_path / "warm", max_overlays=1, progress=False)  # imports, caches
    four, sixteen = _peak_bytes(small, model, tmp_path / "e4"), _peak_bytes(big, model, tmp_path / "e16")
    one_map = shape[0] * shape[1] * 4  # float32 bytes
    # Keeping the 12 more maps (or images) would add 12 maps: not even one is kept.
    assert sixteen - four < one_map, (four, sixteen)
    assert sixteen < 1.1 * four, (four, sixteen)


def test_the_benchmark_scripts_dataset_is_typed_and_its_help_runs(tmp_path, capsys):
    from conftest import load_script

    from tfssim import data

    bench = load_script("benchmark_evaluate")
    with pytest.raises(SystemExit) as done:
        bench.main(["--help"])
    assert done.value.code == 0 and "--checkouts" in capsys.readouterr().out
    split = data.load_dataset(bench.dataset(tmp_path / "d", val=1, test=8, size=64))
    assert per_type.defect_types(split) == ["scratch", "spot"] and len(split.test) == 8
    assert split.test_labels.count("good") == 2 and sum(m is not None for m in split.test_masks) == 6
