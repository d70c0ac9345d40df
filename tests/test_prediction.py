"""tfssim.serving.prediction.predict_files, the library behind tfssim-predict, on the session's tiny export (conftest.py)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from skimage import io

from tfssim import data
from tfssim.serving.inference import ExportedModel
from tfssim.serving.prediction import OUTPUT_SUFFIXES, PredictionSummary, expand_inputs, predict_files, speed_line


@pytest.fixture(scope="module")
def model(exports) -> ExportedModel:
    return ExportedModel.load(exports[0])


def test_predict_files_writes_results_and_records_a_skipped_image(model, dataset, tmp_path, capsys):
    images = shutil.copytree(dataset / "test", tmp_path / "imgs")
    (images / "broken.png").write_bytes(b"garbage")
    paths = expand_inputs([images])
    out = tmp_path / "pred"
    summary = predict_files(model, paths, out, threshold=0.3, mask_dir=dataset / "ground_truth", progress=False)

    assert capsys.readouterr() == ("", "")  # progress=False: silent, everything is in the summary
    assert isinstance(summary, PredictionSummary) and not summary.ok
    assert summary.images == 4 and summary.threshold == 0.3 and summary.export == model.path
    assert len(summary.failures) == 1 and "broken.png" in summary.failures[0]
    assert summary.images_without_mask == 0
    stems = [p.stem for p in data.list_images(dataset / "test")]
    assert [r.stem for r in summary.results] == stems
    for result in summary.results:
        assert result.ground_truth == dataset / "ground_truth" / f"{result.stem}_mask.png"
        assert set(result.files) == set(OUTPUT_SUFFIXES)
        for kind, suffix in OUTPUT_SUFFIXES.items():
            assert result.files[kind] == out / f"{result.stem}{suffix}" and result.files[kind].stat().st_size > 0
        saved = io.imread(result.files["anomaly_map_tif"])
        assert saved.shape == (64, 80) and saved.dtype == np.float32
        assert result.max_score == pytest.approx(float(saved.max()))
        assert json.loads(result.files["regions"].read_text()) == result.regions
        mask = io.imread(result.files["mask"]) > 0
        assert sum(r["area"] for r in result.regions) == mask.sum() and result.defect == bool(mask.any())
        assert result.summary_line().startswith(f"{result.stem}.png: {'DEFECT' if result.defect else 'ok'}  ")
    assert not list(out.glob("broken*")) and not list(out.glob("*tmp*"))
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary.to_dict() == {
        "export": str(model.path), "threshold": 0.3, "images": 4, "failed": summary.failures,
        "processed": [str(images / f"{stem}.png") for stem in stems], "images_without_mask": 0,
        "postprocess": {"threshold": 0.3, "opening_diameter": 4, "convex_hull": True, "min_area": 0},
        "interrupted": False, "error": None, "stride": 16,
        "seconds_per_megapixel": summary.serving.seconds_per_megapixel,
    }
    # The graph's time over the three images it scored (the broken one never reached it).
    assert summary.serving.megapixels == pytest.approx(3 * 64 * 80 / 1e6)
    assert 0 < summary.serving.seconds_per_megapixel == summary.serving.seconds / summary.serving.megapixels
    assert speed_line(on_disk) == f"{on_disk['seconds_per_megapixel']:.3g} s per megapixel in the export's graph at stride 16 (over every image, the graph's start-up included)"


def test_predict_files_needs_a_threshold_and_expand_inputs_names_bad_paths(model, dataset, tmp_path):
    with pytest.raises(ValueError, match="no calibrated threshold"):
        predict_files(model, data.list_images(dataset / "test"), tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        expand_inputs([tmp_path / "missing.png"])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.png")])


def _edited_copy(export_dir, folder, **changes):
    """A copy of an export whose metadata JSON has ``changes``."""
    target = shutil.copytree(export_dir, folder / "1")
    meta_path = target / "assets" / "tfssim.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), **changes}))
    return target


def test_predict_files_post_processes_as_the_export_metadata_says(exports, dataset, tmp_path, monkeypatch):
    from tfssim.serving import postprocess

    yy, xx = np.mgrid[:64, :80]
    radius = np.hypot(yy - 32, xx - 40)
    ring = ((radius > 9) & (radius < 17)).astype(np.float32)  # a hull fills its hole, a plain mask keeps it
    image = data.list_images(dataset / "test")[:1]

    def run(export_dir, out, **kwargs):
        model = ExportedModel.load(export_dir)
        monkeypatch.setattr(model, "predict", lambda image, source=None: {"anomaly_map": ring})
        summary = predict_files(model, image, tmp_path / f"{out}_predictions", progress=False, **kwargs)
        (result,) = summary.results
        return summary, result, io.imread(result.files["mask"]) > 0

    plain = _edited_copy(exports[0], tmp_path / "plain", threshold=0.5, convex_hull=False)
    summary, result, mask = run(plain, "plain")
    assert summary.postprocess == {"threshold": 0.5, "opening_diameter": 4, "convex_hull": False, "min_area": 0}
    np.testing.assert_array_equal(mask, postprocess.segment(ring, 0.5, convex_hull=False))
    assert not mask[32, 40] and mask[32, 40 + 13] and len(result.regions) == 1

    hull = _edited_copy(exports[0], tmp_path / "hull", threshold=0.5)  # convex_hull true, as exported
    _, _, mask = run(hull, "hull")
    np.testing.assert_array_equal(mask, postprocess.segment(ring, 0.5, convex_hull=True))
    assert mask[32, 40]

    # min_area from the metadata drops the ring; the caller's min_area (tfssim-predict --min-area)
    # and threshold override the metadata.
    big = _edited_copy(exports[0], tmp_path / "big", threshold=0.5, convex_hull=False, min_area=10_000)
    summary, result, mask = run(big, "big")
    assert summary.postprocess["min_area"] == 10_000 and not mask.any() and result.regions == []
    summary, result, mask = run(big, "big0", min_area=0, threshold=0.25)
    assert summary.postprocess == {"threshold": 0.25, "opening_diameter": 4, "convex_hull": False, "min_area": 0}
    assert summary.threshold == 0.25 and mask.any() and not mask[32, 40]
