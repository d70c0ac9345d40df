"""tfssim-calibrate, tfssim-predict and tfssim-evaluate end to end on a tiny export."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from skimage import io
from sklearn.metrics import roc_auc_score

from tfssim import data, export
from tfssim.cli.calibrate import main as calibrate_cli
from tfssim.cli.evaluate import main as evaluate_cli
from tfssim.cli.predict import main as predict_cli
from tfssim.errors import InputError
from tfssim.evaluation import evaluate, metrics, splits
from tfssim.serving import postprocess
from tfssim.serving.inference import ExportedModel

# The fixtures `dataset` and `exports` (tiny, built once per session) are in conftest.py.


@pytest.mark.slow  # 9 s measured (2 cores shared with other jobs)
def test_calibrate_writes_a_threshold_with_the_requested_fpr(exports, dataset, tmp_path):
    source = shutil.copytree(exports[0], tmp_path / "ssim" / "1")
    result = CliRunner().invoke(calibrate_cli, [str(source), str(dataset / "val"), "--fpr", "0.05"])
    assert result.exit_code == 0, result.output
    # The threshold is in a new version (printed), not in the version calibrated.
    target = tmp_path / "ssim" / "2"
    assert f"new version {target} " in result.output and export.read_export_metadata(source).threshold is None
    threshold = export.read_export_metadata(target).threshold
    model = ExportedModel.load(target)
    maps = [model.predict(data.read_image(p))["anomaly_map"] for p in data.list_images(dataset / "val")]
    achieved = np.mean(np.concatenate([m.ravel() for m in maps]) > threshold)
    assert abs(achieved - 0.05) <= 0.001


@pytest.mark.slow  # 9 s measured (2 cores shared with other jobs)
def test_library_calibrate_sets_the_fpr_on_paths_or_arrays(exports, dataset, tmp_path):
    from tfssim.evaluation.calibration import calibrate

    source = shutil.copytree(exports[0], tmp_path / "ssim" / "1")
    result = calibrate(source.parent, [dataset / "val"], 0.05, progress=False)  # model folder: newest version
    target = tmp_path / "ssim" / "2"
    assert (result.source, result.path, result.method, result.fpr) == (source, target, "fpr", 0.05)
    threshold = result.threshold
    meta = export.read_export_metadata(target)
    assert meta.threshold == threshold and meta.threshold_fpr == 0.05 and meta.calibrated_from == 1
    # Checked against the served maps directly: 5 % of the defect-free pixels lie above it.
    model = ExportedModel.load(target)
    images = [data.read_image(p) for p in data.list_images(dataset / "val")]
    pixels = np.concatenate([model.predict(img)["anomaly_map"].ravel() for img in images])
    assert abs(np.mean(pixels > threshold) - 0.05) <= 0.001
    # Arrays and a loaded model give the same threshold; write=False writes no version.
    unwritten = calibrate(model, images, 0.05, write=False, progress=False)
    assert (unwritten.threshold, unwritten.path) == (threshold, None)
    assert calibrate(model, images, 0.2, write=False, progress=False).threshold < threshold
    assert sorted(p.name for p in source.parent.iterdir()) == ["1", "2"]
    for bad in (0, 1, 1.5, True):
        with pytest.raises(InputError, match="fpr"):
            calibrate(model, images, bad, write=False)
    with pytest.raises(InputError, match="no images"):
        calibrate(model, [], 0.05, write=False)


def test_library_load_split_uses_the_training_split(exports, dataset, tmp_path):
    a = _with_training_config(exports[0], tmp_path / "a", {"val_split": 0.5, "seed": 3})
    split, val_split, seed = splits.load_split(dataset, [a])
    expected = data.load_dataset(dataset, val_fraction=0.5, seed=3)
    assert (val_split, seed) == (0.5, 3) and split.val == expected.val and split.train == expected.train
    split, val_split, seed = splits.load_split(dataset, [ExportedModel.load(a)], val_split=0.25, seed=1)
    assert (val_split, seed) == (0.25, 1) and split.val == data.load_dataset(dataset, val_fraction=0.25, seed=1).val


def test_predict_writes_maps_masks_overlays_and_regions(exports, dataset, tmp_path):
    out = tmp_path / "pred"
    result = CliRunner().invoke(predict_cli, [str(exports[0]), str(dataset / "test" / "*.png"), "--output", str(out),
                                              "--threshold", "0.3", "--masks", str(dataset / "ground_truth")])
    assert result.exit_code == 0, result.output
    assert "s per megapixel in the export's graph at stride 16 (over every image, the graph's start-up included)\n" in result.output
    stems = [p.stem for p in data.list_images(dataset / "test")]
    for stem in stems:
        for suffix in ("_anomaly_map.tif", "_anomaly_map.png", "_mask.png", "_overlay.png", "_regions.json"):
            assert (out / f"{stem}{suffix}").stat().st_size > 0
        saved = io.imread(out / f"{stem}_anomaly_map.tif")
        assert saved.shape == (64, 80) and saved.dtype == np.float32
        regions = json.loads((out / f"{stem}_regions.json").read_text())
        mask = io.imread(out / f"{stem}_mask.png") > 0
        assert sum(r["area"] for r in regions) == mask.sum()
        assert f"{stem}.png: " in result.output and "max score" in result.output


@pytest.mark.slow  # 12 s measured (2 cores shared with other jobs)
def test_predict_reports_a_bad_image_and_processes_the_rest(exports, dataset, tmp_path):
    images = tmp_path / "imgs"
    shutil.copytree(dataset / "test", images)
    (images / "broken.png").write_bytes(b"garbage")
    result = CliRunner().invoke(predict_cli, [str(exports[0]), str(images), "--output", str(tmp_path / "o"),
                                              "--threshold", "0.3"])
    assert result.exit_code == 1
    assert "broken.png" in result.output
    assert len(list((tmp_path / "o").glob("*_overlay.png"))) == 3


@pytest.mark.slow  # 15 s measured in the not-slow run on the loaded 2-core machine
def test_predict_reports_an_image_smaller_than_the_patch_and_processes_the_rest(exports, dataset, tmp_path):
    images = tmp_path / "imgs"
    shutil.copytree(dataset / "test", images)
    io.imsave(images / "small.png", np.full((20, 60), 128, np.uint8), check_contrast=False)
    result = CliRunner().invoke(predict_cli, [str(exports[0]), str(images), "--output", str(tmp_path / "o"),
                                              "--threshold", "0.3"])
    assert result.exit_code == 1, result.output
    # CliRunner keeps an uncaught exception in result.exception (never in the output): a clean
    # exit is a SystemExit with the status, not a crash.
    assert isinstance(result.exception, SystemExit) and result.exception.code == 1, repr(result.exception)
    assert f"{images / 'small.png'}: " in result.output and "at least the patch size 32" in result.output
    assert len(list((tmp_path / "o").glob("*_overlay.png"))) == 3
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert len(summary["failed"]) == 1 and "small.png" in summary["failed"][0]


def test_calibrate_reports_an_image_smaller_than_the_patch_in_one_line(exports, dataset, tmp_path):
    small = tmp_path / "small.png"
    io.imsave(small, np.full((20, 60), 128, np.uint8), check_contrast=False)
    result = CliRunner().invoke(calibrate_cli, [str(exports[1]), str(dataset / "val"), str(small)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Error: " in result.output
    assert str(small) in result.output and "at least the patch size 32" in result.output


def _red_pixels(path: Path) -> int:
    rgb = io.imread(path)[..., :3].astype(int)
    return int(np.count_nonzero((rgb[..., 0] > 180) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)))


@pytest.mark.slow  # 11 s measured (2 cores shared with other jobs)
def test_predict_finds_nanotwice_gt_masks_and_warns_about_missing_ones(exports, dataset, tmp_path):
    stems = [p.stem for p in data.list_images(dataset / "test")]
    gt = tmp_path / "gt"
    gt.mkdir()
    for stem in stems[:2]:  # NanoTWICE names: <stem>_gt.png; the third image has no mask
        shutil.copy(dataset / "ground_truth" / f"{stem}_mask.png", gt / f"{stem}_gt.png")
    out = tmp_path / "pred"
    result = CliRunner().invoke(predict_cli, [str(exports[0]), str(dataset / "test"), "--output", str(out),
                                              "--threshold", "1e9", "--masks", str(gt)])
    assert result.exit_code == 0, result.output
    assert f"no ground-truth mask for {dataset / 'test' / stems[2]}.png" in result.output
    assert "_gt.*" in result.output and result.output.count("no ground-truth mask") == 1
    # The threshold flags nothing, so any red comes from the ground-truth contours.
    assert _red_pixels(out / f"{stems[0]}_overlay.png") > 20 and _red_pixels(out / f"{stems[1]}_overlay.png") > 20
    assert _red_pixels(out / f"{stems[2]}_overlay.png") == 0
    assert json.loads((out / "summary.json").read_text())["images_without_mask"] == 1


def test_predict_names_same_stem_images_by_their_folder(exports, dataset, tmp_path):
    source = data.list_images(dataset / "test")[0]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(source, tmp_path / folder / "x.png")
    out = tmp_path / "pred"
    result = CliRunner().invoke(predict_cli, [str(exports[1]), str(tmp_path / "a"), str(tmp_path / "b"),
                                              "--output", str(out), "--threshold", "0.3"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*_overlay.png")) == ["a_x_overlay.png", "b_x_overlay.png"]


def test_predict_without_threshold_is_a_usage_error(exports, dataset, tmp_path):
    result = CliRunner().invoke(predict_cli, [str(exports[1]), str(dataset / "test"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "tfssim-calibrate" in result.output


@pytest.mark.slow  # 32 s measured (2 cores shared with other jobs)
def test_evaluate_compares_exports_and_matches_independent_scores(exports, dataset, tmp_path):
    ds = shutil.copytree(dataset, tmp_path / "ds")
    # One defect-free test image (no mask: it counts as good), cut from the training texture.
    train = io.imread(data.list_images(ds / "train")[0])
    io.imsave(ds / "test" / "brick_good_000.png", train[:64, :80], check_contrast=False)
    # A calibrated l2 export: version 2 beside a copy of version 1 (calibration writes a new version).
    l2 = export.write_calibrated_version(shutil.copytree(exports[1], tmp_path / "l2" / "1"), 0.125)
    assert l2 == tmp_path / "l2" / "2"
    out = tmp_path / "eval"
    result = CliRunner().invoke(evaluate_cli, [str(ds), str(exports[0]), str(l2), "--output",
                                               str(out), "--fpr", "0.05", "--segmentation-auroc"])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text())
    results = payload["exports"]
    assert set(results) == {"ssim/1", "l2/2"} and payload["counts"] == {"val": 2, "test": 4, "defective": 3}
    for name in results:  # each export's graph time over the 6 images it scored, at its stride
        assert results[name]["stride"] == 16 and results[name]["seconds_per_megapixel"] > 0
        assert f"{name}: {results[name]['seconds_per_megapixel']:.3g} s per megapixel" in result.output
    for name in ("roc.png", "results.csv", "pro_ssim_1.png", "pro_l2_2.png", "roc_ssim_1.csv", "roc_l2_2.csv",
                 "pro_ssim_1.csv", "pro_l2_2.csv", "segroc_ssim_1.csv", "segroc_l2_2.csv"):
        assert (out / name).stat().st_size > 0
    assert "roc_*.csv" in result.output and "pro_*.csv" in result.output
    assert not [p.name for p in out.iterdir() if "tmp" in p.name]
    for name, safe in (("ssim/1", "ssim_1"), ("l2/2", "l2_2")):
        # The curves behind the plots: the thinned ROC's area is the full curve's AUC to 1e-3,
        # and the PRO CSV's mean overlap gives aupro_0.3 back.
        with (out / f"roc_{safe}.csv").open() as fh:
            roc = list(csv.DictReader(fh))
        assert list(roc[0]) == ["fpr", "tpr"] and 10 < len(roc) <= 2 * evaluate.ROC_POINTS
        fpr, tpr = (np.array([float(r[k]) for r in roc]) for k in ("fpr", "tpr"))
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
        assert metrics.area_under_curve(fpr, tpr) == pytest.approx(results[name]["pixel_auroc"], abs=1e-3)
        with (out / f"pro_{safe}.csv").open() as fh:
            pro = list(csv.DictReader(fh))
        assert list(pro[0]) == ["fpr", "threshold", "mean", "q0.1", "q0.25", "q0.5", "q0.75", "q0.9"]
        assert len(pro) == evaluate.PRO_THRESHOLDS
        curve = {k: np.array([float(r[k]) for r in pro]) for k in ("fpr", "mean")}
        assert metrics.area_under_pro(curve, 0.3) == pytest.approx(results[name]["aupro_0.3"], abs=1e-12)
        assert all(float(r["q0.1"]) <= float(r["q0.5"]) <= float(r["q0.9"]) for r in pro)
    assert "pixel_auroc" in result.output and "ssim/1" in result.output
    assert results["ssim/1"]["export_threshold"] is None and results["l2/2"]["export_threshold"] == 0.125
    assert "threshold stored in the export 0.1250" in result.output

    split = data.load_dataset(ds)
    defective = [m is not None for m in split.test_masks]
    assert sorted(defective) == [False, True, True, True]
    masks = [np.zeros((64, 80), bool) if p is None else data.read_mask(p) for p in split.test_masks]
    labels = np.concatenate([m.ravel() for m in masks])
    for name, path in (("ssim/1", exports[0]), ("l2/2", l2)):
        scores = results[name]
        model = ExportedModel.load(path)
        maps = [model.predict(data.read_image(p))["anomaly_map"] for p in split.test]
        # Pooled pixel AUC and image AUC (score = map maximum) against sklearn.
        want = roc_auc_score(labels, np.concatenate([m.ravel() for m in maps]))
        # Streamed (issue 24): within the histogram's stated bound of the exact AUC.
        assert scores["pixel_auroc_error_bound"] <= 1e-3
        assert scores["pixel_auroc"] == pytest.approx(want, abs=scores["pixel_auroc_error_bound"] + 1e-12)
        assert scores["image_auroc"] == pytest.approx(roc_auc_score(defective, [m.max() for m in maps]), abs=1e-12)
        # F1 and IoU: segment at the reported threshold, count the pooled pixels here.
        seg = np.concatenate([postprocess.segment(m, scores["threshold"]).ravel() for m in maps])
        tp, fp, fn = np.sum(seg & labels), np.sum(seg & ~labels), np.sum(~seg & labels)
        assert scores["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert scores["iou"] == pytest.approx(tp / (tp + fp + fn))
        assert 0 <= scores["aupro_0.3"] <= 1
        # The segmentation ROC: at each threshold of its CSV, segment (threshold, opening, hulls)
        # and count the pooled pixels here.
        with (out / f"segroc_{name.replace('/', '_')}.csv").open() as fh:
            rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
        assert (rows[0]["fpr"], rows[0]["tpr"], rows[-1]["fpr"], rows[-1]["tpr"]) == (0, 0, 1, 1)
        inner = [r for r in rows if not np.isnan(r["threshold"])]
        assert len(inner) >= 5
        for r in inner:
            seg = np.concatenate([postprocess.segment(m, r["threshold"]).ravel() for m in maps])
            assert r["fpr"] == pytest.approx(np.sum(seg & ~labels) / np.sum(~labels))
            assert r["tpr"] == pytest.approx(np.sum(seg & labels) / np.sum(labels))
        area = metrics.area_under_curve(np.array([r["fpr"] for r in rows]), np.array([r["tpr"] for r in rows]))
        assert scores["segmentation_auroc"] == pytest.approx(area, abs=1e-12) and 0 <= area <= 1

    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model"] for r in rows] == list(results)
    for row in rows:
        scores = results[row["model"]]
        assert set(row) == {"model", "seconds", *evaluate.CSV_KEYS}
        for key in evaluate.CSV_KEYS:
            if scores[key] is None:
                assert row[key] == "", key
            else:
                assert float(row[key]) == scores[key], key


def _copy_dataset(dataset: Path, tmp_path: Path) -> Path:
    return shutil.copytree(dataset, tmp_path / "ds")


def test_evaluate_rejects_bad_input(exports, dataset, tmp_path):
    runner = CliRunner()
    ds = _copy_dataset(dataset, tmp_path)
    mask = sorted((ds / "ground_truth").iterdir())[0]
    io.imsave(mask, np.zeros((10, 10), np.uint8), check_contrast=False)
    wrong_size = runner.invoke(evaluate_cli, [str(ds), str(exports[0]), "--output", str(tmp_path / "e1")])
    assert wrong_size.exit_code == 2 and "is 10x10 but its image is 64x80" in wrong_size.output

    io.imsave(mask, (np.arange(64 * 80).reshape(64, 80) % 7 * 30).astype(np.uint8), check_contrast=False)
    not_binary = runner.invoke(evaluate_cli, [str(ds), str(exports[0]), "--output", str(tmp_path / "e2")])
    assert not_binary.exit_code == 2 and "not binary" in not_binary.output

    empty = tmp_path / "empty"
    empty.mkdir()
    no_images = runner.invoke(evaluate_cli, [str(empty), str(exports[0]), "--output", str(tmp_path / "e3")])
    assert no_images.exit_code == 2 and "no images" in no_images.output

    fake = tmp_path / "fake" / "1"
    shutil.copytree(exports[0], fake)
    (fake / "assets" / "tfssim.json").unlink()
    no_meta = runner.invoke(evaluate_cli, [str(dataset), str(fake), "--output", str(tmp_path / "e4")])
    assert no_meta.exit_code == 2 and "no assets/tfssim.json metadata" in no_meta.output
    for r in (wrong_size, not_binary, no_images, no_meta):
        assert isinstance(r.exception, SystemExit) and r.exception.code == 2, repr(r.exception)
        assert r.output.count("Error: ") == 1


def _with_training_config(export_dir: Path, folder: Path, config: dict | None) -> Path:
    """A copy of ``export_dir`` whose metadata holds ``config`` as its training_config."""
    target = shutil.copytree(export_dir, folder / "1")
    meta_path = target / "assets" / "tfssim.json"
    meta = json.loads(meta_path.read_text())
    meta["training_config"] = config
    meta_path.write_text(json.dumps(meta))
    return target


def test_evaluate_splits_validation_as_the_export_was_trained(exports, dataset, tmp_path, monkeypatch):
    # A model trained with --val-split 0.5 --seed 3 must be calibrated on that run's validation
    # images, not on the default 0.1 / 0 split (which could be its own training images).
    seen = []

    def load_dataset(root, layout="auto", val_fraction=0.1, seed=0):  # stops before any model is loaded
        seen.append((val_fraction, seed))
        raise InputError("stop after the split")  # bad input: one Error: line, exit 2

    monkeypatch.setattr(data, "load_dataset", load_dataset)
    a = _with_training_config(exports[0], tmp_path / "a", {"val_split": 0.5, "seed": 3, "epochs": 2})
    b = _with_training_config(exports[1], tmp_path / "b", {"val_split": 0.25, "seed": 4})
    partial = _with_training_config(exports[1], tmp_path / "c", {"seed": 5})
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(evaluate_cli, [str(dataset), *map(str, args), "--output", str(tmp_path / "out")])
        assert result.exit_code == 2 and "stop after the split" in result.output, result.output
        return result

    assert "warning" not in run(a).output.lower() and seen[-1] == (0.5, 3)
    run(a, "--val-split", "0.2", "--seed", "7")
    assert seen[-1] == (0.2, 7)
    run(exports[0])  # no training_config: tfssim-train's defaults
    assert seen[-1] == (0.1, 0)
    run(partial)
    assert seen[-1] == (0.1, 5)
    both = run(a, b)
    assert seen[-1] == (0.5, 3)
    assert f"different val_split ({a}: 0.5, {b}: 0.25); using 0.5 from {a}" in both.output
    assert f"different seed ({a}: 3, {b}: 4); using 3 from {a}" in both.output and "--seed" in both.output
    given = run(a, b, "--seed", "3", "--val-split", "0.5")
    assert "different" not in given.output and seen[-1] == (0.5, 3)


def test_split_settings_prefers_given_values_then_the_first_training_config():
    from tfssim.evaluation.splits import split_settings

    configs = [{"val_split": 0.3, "seed": 2}, None, {}]
    assert split_settings(configs, None, None) == (0.3, 2, [])
    assert split_settings(configs[1:], None, None) == (0.1, 0, [])
    assert split_settings(configs, 0.2, None) == (0.2, 2, [])
    _, _, warnings = split_settings([configs[0], {"val_split": 0.3, "seed": 9}], None, None, ["x", "y"])
    assert len(warnings) == 1 and "different seed (x: 2, y: 9); using 2 from x" in warnings[0]
