"""scripts/benchmark_mvtec.py: category discovery, the table and resuming (fast), and a tiny
MVTec-layout folder built here, run end to end (slow)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

from tfssim.errors import InputError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_mvtec.py"


def _load():
    return load_script("benchmark_mvtec")


def _save(path: Path, image: np.ndarray) -> None:
    from skimage import io

    path.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(path, image, check_contrast=False)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(image, np.float64) * 255), 0, 255).astype(np.uint8)


def write_category(root: Path, name: str, crops: list[np.ndarray], n_train: int, seed: int) -> None:
    """MVTec AD's layout from defect-free ``crops``: the first ``n_train`` train, two test as good,
    the rest get synthetic defects (tfssim.data.defects) and their exact masks under ground_truth/."""
    from tfssim.data.defects import paint_defects

    rng = np.random.default_rng(seed)
    for i, crop in enumerate(crops[:n_train]):
        _save(root / name / "train" / "good" / f"{i:03d}.png", _to_uint8(crop))
    for i, crop in enumerate(crops[n_train:n_train + 2]):
        _save(root / name / "test" / "good" / f"{i:03d}.png", _to_uint8(crop))
    for i, crop in enumerate(crops[n_train + 2:]):
        # Defects painted on the 8-bit image, so that the mask is exactly the pixels that changed.
        original = _to_uint8(crop).astype(np.float32) / 255
        painted, mask, _ = paint_defects(original, rng, count=2, size_range=(6, 14))
        painted = _to_uint8(painted)
        mask = np.any(painted.reshape(*mask.shape, -1) != _to_uint8(original).reshape(*mask.shape, -1), axis=-1)
        _save(root / name / "test" / "defect" / f"{i:03d}.png", painted)
        _save(root / name / "ground_truth" / "defect" / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory) -> Path:
    """A tiny MVTec AD: "carpet" from scikit-image's brick texture (gray 64x64 crops) and "bottle"
    from its astronaut photograph (RGB 72x80 crops; the object protocol resizes them to a square)."""
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("mvtec")
    rng = np.random.default_rng(0)
    brick = skdata.brick().astype(np.float32) / 255
    crops = [brick[y:y + 64, x:x + 64] for y, x in rng.integers(0, 512 - 64, size=(10, 2))]
    write_category(root, "carpet", crops, n_train=6, seed=1)
    photo = skdata.astronaut().astype(np.float32) / 255
    crops = [photo[y:y + 72, x:x + 80] for y, x in rng.integers(100, 400, size=(10, 2))]
    write_category(root, "bottle", crops, n_train=6, seed=2)
    (root / "readme.txt").write_text("not a category")
    (root / "notes").mkdir()
    return root


# --- fast: discovery, table, resume ---------------------------------------------------------------------


def test_help_names_the_protocol_and_the_published_source(capsys):
    with pytest.raises(SystemExit) as done:
        _load().main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--min-defect-area" in out and "--budget" in out
    assert "Table 2" in out and "LeapMind/MLF-SC" in out and "maximum of the anomaly map" in out


def test_categories_are_found_in_mvtec_order_and_bad_ones_refused(mvtec_root):
    bench = _load()
    assert bench.find_categories(mvtec_root, None) == ["carpet", "bottle"]
    assert bench.find_categories(mvtec_root, ["bottle", "carpet"]) == ["carpet", "bottle"]
    with pytest.raises(InputError, match="unknown categories \\['brick'\\]"):
        bench.find_categories(mvtec_root, ["brick"])
    with pytest.raises(InputError, match="has no screw/train/good"):
        bench.find_categories(mvtec_root, ["screw"])
    with pytest.raises(InputError, match="no MVTec AD category"):
        bench.find_categories(mvtec_root / "notes", None)


def _refused(bench, argv, capsys, code: int = 2) -> str:
    """Run the script's main on ``argv``; it must exit with ``code`` and one ``Error:`` line on stderr."""
    with pytest.raises(SystemExit) as done:
        bench.main(argv)
    assert done.value.code == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_bad_input_is_one_error_line_with_exit_status_2(mvtec_root, tmp_path, capsys):
    bench = _load()
    out = tmp_path / "bench"
    assert "unknown categories" in _refused(bench, [str(mvtec_root), "--output", str(out), "--categories", "brick"],
                                            capsys)
    assert "is not a folder" in _refused(bench, [str(tmp_path / "missing"), "--output", str(out)], capsys)
    assert "EPOCHSxPATCHES" in _refused(bench, [str(mvtec_root), "--budget", "ten"], capsys)
    assert "EPOCHSxPATCHES" in _refused(bench, [str(mvtec_root), "--budget", "²x4"], capsys)
    assert "--min-defect-area" in _refused(bench, [str(mvtec_root), "--min-defect-area", "-1"], capsys)
    # An output folder inside the dataset would put results where images are read.
    assert "inside the input" in _refused(bench, [str(mvtec_root), "--output", str(mvtec_root / "carpet")], capsys)
    assert not any((mvtec_root / "carpet").glob("*.json"))
    # Settings tfssim-train would refuse are refused before settings.json records them.
    assert "batch_size" in _refused(bench, [str(mvtec_root), "--output", str(out), "--batch-size", "0"], capsys)
    assert "learning-rate" in _refused(bench, [str(mvtec_root), "--output", str(out), "--learning-rate", "nan"],
                                       capsys)
    assert not out.exists()
    # A damaged settings file of an earlier benchmark is named.
    out.mkdir()
    (out / bench.SETTINGS_FILE).write_text("{cut")
    assert "settings.json is not valid JSON" in _refused(bench, [str(mvtec_root), "--output", str(out)], capsys)


def test_protocols_of_textures_and_objects():
    bench = _load()
    kind, train, export = bench.Protocol().category_settings("grid")
    assert (kind, train["grayscale"], train["patch_size"], export["stride"]) == ("texture", True, 128, 30)
    assert "image_size" not in train and "scale" not in train
    kind, train, _ = bench.Protocol(texture_scale=0.5).category_settings("wood")
    assert train["scale"] == 0.5
    kind, train, _ = bench.Protocol().category_settings("hazelnut")
    assert (kind, train["grayscale"], train["patch_size"], train["image_size"]) == ("object", False, 256, [256, 256])
    assert bench.Protocol().category_settings("screw")[1]["grayscale"] is True
    assert set(bench.PUBLISHED) == set(bench.CATEGORIES) and len(bench.CATEGORIES) == 15


def _result(category: str, kind: str, pixel: float, aupro: float, image: float | None) -> dict:
    return {"category": category, "kind": kind, "min_defect_area": 30, "threshold": 0.25,
            "scores": {"pixel_auroc": pixel, "aupro_0.3": aupro, "image_auroc": image}}


def test_table_lists_scores_beside_the_published_ones_with_means():
    bench = _load()
    markdown, payload = bench.table([_result("carpet", "texture", 0.8, 0.5, 0.7),
                                     _result("bottle", "object", 0.9, 0.7, 0.9)])
    lines = markdown.splitlines()
    assert lines[2] == "| carpet | texture | 0.800 | 0.500 | 0.700 | 0.2500 (30 px) | 0.87 | 0.59 |"
    assert lines[3].startswith("| bottle | object |") and lines[3].endswith("| 0.93 | 0.86 |")
    assert lines[4] == "| mean (2) | | 0.850 | 0.600 | 0.800 | | 0.900 | 0.725 |"
    assert "maximum of its anomaly map" in markdown
    assert payload["mean"]["pixel_auroc"] == pytest.approx(0.85)
    assert [row["published_ae_ssim"] for row in payload["rows"]] == [0.87, 0.93]
    # A missing score (no good test images: no image AUROC) shows as "-", and no mean is made of the rest.
    markdown, payload = bench.table([_result("carpet", "texture", 0.8, 0.5, None),
                                     _result("bottle", "object", 0.9, 0.7, 0.9)])
    assert "| 0.800 | 0.500 | - |" in markdown and payload["mean"]["image_auroc"] is None


def test_a_finished_category_is_skipped_and_other_settings_refused(mvtec_root, tmp_path, monkeypatch, capsys):
    bench = _load()
    out = tmp_path / "bench"
    calls = []
    monkeypatch.setattr(bench, "run_category", lambda root, output, category, protocol, **kw: (
        calls.append(category), _result(category, "object", 0.9, 0.7, 0.9))[1])
    (out / "carpet").mkdir(parents=True)
    (out / "carpet" / bench.RESULT_FILE).write_text(json.dumps(_result("carpet", "texture", 0.8, 0.5, 0.7)))
    argv = [str(mvtec_root), "--output", str(out), "--budget", "1x32", "--min-defect-area", "30"]
    bench.main(argv)
    assert calls == ["bottle"]  # carpet's result existed
    assert "carpet: done before" in capsys.readouterr().out
    table = (out / "mvtec_table.md").read_text()
    assert "| carpet | texture |" in table and "| bottle | object |" in table
    saved = json.loads((out / "mvtec_table.json").read_text())
    assert [row["category"] for row in saved["rows"]] == ["carpet", "bottle"]
    assert saved["settings"]["epochs"] == 1 and saved["settings"]["min_defect_area"] == 30
    # The same folder with another budget or area is refused before anything runs.
    capsys.readouterr()
    for changed in (["--budget", "2x32"], ["--min-defect-area", "31"]):
        assert "holds a benchmark with settings" in _refused(bench, [*argv, *changed], capsys)
    _refused(bench, [*argv[:-4], "--budget", "ten"], capsys)
    assert calls == ["bottle"]


# --- slow: the whole pipeline on the tiny folder ---------------------------------------------------------


@pytest.mark.slow  # trains, exports, calibrates and evaluates two tiny models
def test_tiny_benchmark_trains_calibrates_evaluates_and_resumes(mvtec_root, tmp_path):
    from scipy import ndimage

    from tfssim import data
    from tfssim.serving import postprocess
    from tfssim.serving.inference import ExportedModel

    bench = _load()
    out = tmp_path / "bench"
    argv = [str(mvtec_root), "--output", str(out), "--budget", "1x64", "--batch-size", "16", "--latent-dim", "8",
            "--texture-patch", "32", "--stride", "16", "--object-size", "32", "--min-defect-area", "30"]
    bench.main(argv)
    saved = json.loads((out / "mvtec_table.json").read_text())
    assert [row["category"] for row in saved["rows"]] == ["carpet", "bottle"]
    table = (out / "mvtec_table.md").read_text()
    assert "| carpet | patches 32, stride 16, gray |" in table and "| bottle | whole image 32x32, RGB |" in table
    for row in saved["rows"]:
        for key in ("pixel_auroc", "aupro_0.3", "image_auroc"):
            assert 0.0 <= row[key] <= 1.0, (row["category"], key)
    for category, channels in (("carpet", 1), ("bottle", 3)):
        result = json.loads((out / category / bench.RESULT_FILE).read_text())
        # The calibrated version is a new one (2) beside the export (1), which keeps no threshold.
        export = out / category / "exported_models" / category / "2"
        assert result["export_dir"] == str(export)
        assert export.parent.joinpath("1").is_dir() and ExportedModel.load(export.parent / "1").metadata.threshold is None
        model = ExportedModel.load(export)
        meta = model.metadata
        assert meta.calibrated_from == 1 and meta.version == 2
        assert model.channels == channels
        # Objects are served as whole images resized to the object size (one tile), textures as they are.
        assert meta.image_size == ([32, 32] if category == "bottle" else None) and meta.patch_size == 32
        assert (meta.threshold_method, meta.threshold_min_defect_area) == ("min_defect_area", 30)
        assert meta.threshold == result["threshold"]
        # The stored threshold meets the rule on the validation images the run held out, at their
        # full resolution (the served maps have the input's size).
        split = data.load_dataset(mvtec_root / category, layout="mvtec")
        assert len(split.val) == 1
        processor = postprocess.PostProcessor.from_metadata(meta)
        for path in split.val:
            image = data.read_image(path, channels)
            anomaly_map = model.predict(image)["anomaly_map"]
            assert anomaly_map.shape == image.shape[:2]
            labels, count = ndimage.label(processor.segment(anomaly_map), structure=np.ones((3, 3)))
            assert count == 0 or np.bincount(labels.ravel())[1:].max() <= 30
    # Everything is reused on a second call: same table, no retraining.
    stamp = (out / "carpet" / "runs" / "carpet" / "final.keras").stat().st_mtime_ns
    bench.main(argv)
    assert (out / "carpet" / "runs" / "carpet" / "final.keras").stat().st_mtime_ns == stamp
    assert json.loads((out / "mvtec_table.json").read_text()) == saved
    assert sorted(p.name for p in (out / "carpet" / "exported_models" / "carpet").iterdir()) == ["1", "2"]
