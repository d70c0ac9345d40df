"""tfssim-calibrate, tfssim-predict and tfssim-evaluate end to end on a tiny export."""
from __future__ import annotations

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
from tfssim.inference import ExportedModel
from tfssim.models import build_model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    ds = data.texture_dataset("brick", n_val=2, n_test=3, test_size=(64, 80), seed=1)
    return data.write_dataset(ds, tmp_path_factory.mktemp("data") / "brick")


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("exports")
    return [export.export_model(build_model(kind, 32, 1, 8), root, name=kind, stride=16) for kind in ("ssim", "l2")]


def test_calibrate_writes_a_threshold_with_the_requested_fpr(exports, dataset, tmp_path):
    target = shutil.copytree(exports[0], tmp_path / "ssim" / "1")
    result = CliRunner().invoke(calibrate_cli, [str(target), str(dataset / "val"), "--fpr", "0.05"])
    assert result.exit_code == 0, result.output
    threshold = export.read_metadata(target)["threshold"]
    model = ExportedModel.load(target)
    maps = [model.predict(data.read_image(p))["anomaly_map"] for p in data.list_images(dataset / "val")]
    achieved = np.mean(np.concatenate([m.ravel() for m in maps]) > threshold)
    assert abs(achieved - 0.05) <= 0.001


def test_predict_writes_maps_masks_overlays_and_regions(exports, dataset, tmp_path):
    out = tmp_path / "pred"
    result = CliRunner().invoke(predict_cli, [str(exports[0]), str(dataset / "test" / "*.png"), "--output", str(out),
                                              "--threshold", "0.3", "--masks", str(dataset / "ground_truth")])
    assert result.exit_code == 0, result.output
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


def test_predict_reports_a_bad_image_and_processes_the_rest(exports, dataset, tmp_path):
    images = tmp_path / "imgs"
    shutil.copytree(dataset / "test", images)
    (images / "broken.png").write_bytes(b"garbage")
    result = CliRunner().invoke(predict_cli, [str(exports[0]), str(images), "--output", str(tmp_path / "o"),
                                              "--threshold", "0.3"])
    assert result.exit_code == 1
    assert "broken.png" in result.output
    assert len(list((tmp_path / "o").glob("*_overlay.png"))) == 3


def test_predict_without_threshold_is_a_usage_error(exports, dataset, tmp_path):
    result = CliRunner().invoke(predict_cli, [str(exports[1]), str(dataset / "test"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "tfssim-calibrate" in result.output


def test_evaluate_compares_exports_and_matches_sklearn(exports, dataset, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(evaluate_cli, [str(dataset), *map(str, exports), "--output", str(out), "--fpr", "0.05"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())["exports"]
    assert set(results) == {"ssim/1", "l2/1"}
    for name, scores in results.items():
        for key in ("pixel_auroc", "aupro_0.3", "image_auroc", "threshold", "f1", "iou"):
            assert key in scores
        assert scores["image_auroc"] is None  # every test image has a defect
        assert 0 <= scores["aupro_0.3"] <= 1 and 0 <= scores["f1"] <= 1
    for name in ("roc.png", "results.csv", "pro_ssim_1.png", "pro_l2_1.png"):
        assert (out / name).stat().st_size > 0
    assert "pixel_auroc" in result.output and "ssim/1" in result.output
    # Independent check of the pooled pixel AUC.
    model = ExportedModel.load(exports[0])
    split = data.load_dataset(dataset)
    maps = [model.predict(data.read_image(p))["anomaly_map"] for p in split.test]
    masks = [data.read_mask(p) for p in split.test_masks]
    labels = np.concatenate([m.ravel() for m in masks])
    want = roc_auc_score(labels, np.concatenate([m.ravel() for m in maps]))
    assert results["ssim/1"]["pixel_auroc"] == pytest.approx(want, abs=1e-6)


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
        assert "Traceback" not in r.output
