"""The streamed tuner (issue 24): bounded-memory accumulators against exact scikit-learn / SciPy values,
memory that does not grow with the number of images, the operating-point report, the threshold
rules, the warning of a choice that means little, and ``tfssim-tune EXPORT`` on a run's own images;
with the CLI promises of issue 25 (cases 1, 3, 7, 10) for tfssim-tune."""
from __future__ import annotations

import hashlib
import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.ndimage import gaussian_filter
from skimage import io
from skimage.measure import label
from sklearn.metrics import f1_score, roc_auc_score

from tfssim import data
from tfssim.evaluation import metrics, tuning
from tfssim.evaluation.metrics import ScoreHistogram
from tfssim.export.metadata import ExportMetadata
from tfssim.serving import postprocess

# --------------------------------------------------------------------------------------------
# The accumulators


def _maps(rng: np.random.Generator, n: int, shape=(120, 140), sigma: float = 4.0, shift: float = 0.02):
    maps, masks = [], []
    for _ in range(n):
        m = gaussian_filter(rng.random(shape), sigma).astype(np.float32)
        g = np.zeros(shape, bool)
        y, x = rng.integers(0, shape[0] - 30), rng.integers(0, shape[1] - 30)
        g[y:y + int(rng.integers(5, 30)), x:x + int(rng.integers(5, 30))] = True
        m[g] += shift * rng.random()
        maps.append(m)
        masks.append(g)
    return maps, masks


@pytest.mark.parametrize("case", ["smooth", "narrow", "ties", "negative", "wide"])
def test_histogram_auroc_is_within_its_bound_of_scikit_learns(case):
    rng = np.random.default_rng(["smooth", "narrow", "ties", "negative", "wide"].index(case))
    maps, masks = _maps(rng, 5, sigma=12.0 if case == "narrow" else 4.0)
    if case == "ties":  # few distinct scores: equal scores must count as ties, as scikit-learn counts them
        maps = [np.round(m * 20) / 20 for m in maps]
    elif case == "negative":
        maps = [m - 0.6 for m in maps]
    elif case == "wide":  # scores over many orders of magnitude, exact zeros included
        maps = [np.where(m < 0.45, 0.0, np.exp(40 * (m - 0.5))).astype(np.float32) for m in maps]
    hist = ScoreHistogram(2, tuning.HISTOGRAM_BITS)
    for m, g in zip(maps, masks):
        hist.update(m, g)
    exact = roc_auc_score(np.concatenate([g.ravel() for g in masks]),
                          np.concatenate([m.astype(np.float32).ravel() for m in maps]))
    got, bound = hist.roc_auc(1, 0), hist.roc_auc_error_bound(1, 0)
    assert abs(got - exact) <= bound + 1e-12
    assert abs(got - exact) <= 1e-3 and bound < 1e-3 if case != "ties" else abs(got - exact) < 1e-12
    assert got == pytest.approx(metrics.pixel_roc_auc(maps, masks), abs=max(bound, 1e-12))
    # Memory: only the bins between the smallest and largest score are kept.
    assert hist.counts.nbytes < 2 * 8 * 2 ** (tuning.HISTOGRAM_BITS + 6)
    # The standardised partial area (McClish) up to an FPR, as scikit-learn's max_fpr computes it.
    labels = np.concatenate([g.ravel() for g in masks])
    scores = np.concatenate([m.astype(np.float32).ravel() for m in maps])
    for max_fpr in (0.01, 0.05, 0.3):
        want = roc_auc_score(labels, scores, max_fpr=max_fpr)
        assert hist.partial_roc_auc(max_fpr) == pytest.approx(want, abs=2e-3 if case != "ties" else 1e-9), max_fpr
    assert hist.partial_roc_auc(1.0) == pytest.approx(got, abs=1e-12)
    with pytest.raises(ValueError, match="max_fpr must be in"):
        hist.partial_roc_auc(0.0)


def test_histogram_refinement_gives_threshold_at_fpr_exactly_and_counts_at_edges_are_exact():
    rng = np.random.default_rng(7)
    maps, _ = _maps(rng, 6, shape=(90, 100))
    hist = ScoreHistogram(1, tuning.HISTOGRAM_BITS)
    for m in maps:
        hist.update(m, 0)
    scores = np.concatenate([m.ravel() for m in maps])
    for fpr in (0.3, 0.05, 0.01, 0.001, 1 / scores.size):
        rank = metrics.fpr_rank(fpr, scores.size)
        low, high, below = hist.rank_bin(0, rank)
        inside = scores[(scores >= low) & (scores < high)]
        threshold = metrics.value_of_rank(inside, rank - below)
        assert threshold == postprocess.threshold_at_fpr(maps, fpr)
        assert np.mean(scores > threshold) <= fpr
        edge = hist.edge_at_fpr(fpr, 0)
        assert low == edge and hist.count_at_least(edge, 0) == np.count_nonzero(scores >= edge)
    with pytest.raises(ValueError, match="NaN or infinite"):
        hist.update(np.array([np.nan], np.float32), 0)


# --------------------------------------------------------------------------------------------
# The tuner on a stand-in export whose map depends only on its input image


class BlurExport:
    """An export stand-in (a VAE-like model: its served map is used as it is): the map is the
    difference between the image and its blur, the reconstruction the blur."""

    def __init__(self, patch_size: int = 32, **metadata) -> None:
        self.metadata = ExportMetadata.from_dict({
            "format": 1, "name": "stand-in", "version": 1, "kind": "vae", "residual": "vae", "patch_size": patch_size,
            "map_sigma": 0.0, "stride": 16, "channels": 1, "opening_diameter": 4, "convex_hull": True, **metadata})
        self.path = Path("stand-in/1")
        self.calls = 0

    def predict(self, image, source=None):
        self.calls += 1
        image = np.asarray(image, np.float32)
        image = image if image.ndim == 3 else image[..., None]
        blurred = gaussian_filter(image, (1.5, 1.5, 0))
        return {"reconstruction": blurred, "anomaly_map": np.abs(image - blurred)[..., 0] * 4}


def _image_files(folder: Path, count: int, size=(96, 104), seed: int = 0) -> list[Path]:
    textures = data.texture_dataset("gravel", n_val=count, n_test=1, test_size=size, seed=seed).val
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(textures):
        paths.append(folder / f"v{i:02d}.png")
        io.imsave(paths[-1], (image[..., 0] * 255).round().astype(np.uint8), check_contrast=False)
    return paths


def _peak_bytes(model, paths, tmp_path: Path) -> int:
    tracemalloc.start()
    try:
        tuning.tune(model, paths, copies=2, seed=1, sigmas=[0, 2], openings=[0, 4], min_areas=[0], progress=False,
                    cache_dir=tmp_path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow  # 20 tunings' worth of images (about 20 s)
def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Images as files: the tuner holds about one image's working set, whatever their number."""
    shape = (192, 336)  # the largest crops the texture's held-out part gives
    paths = _image_files(tmp_path / "val", 16, size=shape)
    model = BlurExport()
    tuning.tune(model, paths[:2], copies=1, sigmas=[0], progress=False)  # imports and caches outside the count
    four, sixteen = _peak_bytes(model, paths[:4], tmp_path), _peak_bytes(model, paths, tmp_path)
    one_map = shape[0] * shape[1] * 4  # float32 bytes
    # Keeping even one candidate's maps of the painted copies would add 12 images x 2 copies = 24 maps; what
    # may grow is the histograms' blocks of newly seen binades (128 kB each, at most 512 of them).
    assert sixteen - four < 8 * one_map, (four, sixteen)
    assert sixteen < 1.2 * four, (four, sixteen)


def _family_labels(mask: np.ndarray, infos: list[dict]) -> np.ndarray:
    """The family name of each defect pixel ("" elsewhere); a later defect over an earlier one wins."""
    out = np.full(mask.shape, "", dtype=object)
    for info in infos:
        r0, r1, c0, c1 = info["box"]
        region = info["region"] & mask[r0:r1, c0:c1]
        out[r0:r1, c0:c1][region] = info["family"]
    return out


def test_the_report_matches_an_independent_count_and_the_threshold_rules(tmp_path):
    paths = _image_files(tmp_path / "val", 3)
    model = BlurExport()
    fpr = 0.02
    result = tuning.tune(model, paths, copies=2, seed=3, sigmas=[0, 2], fpr=fpr, size_range=(4, 16),
                         progress=False)
    choice, op = result.choice, result.operating_point
    assert model.calls == 3 * 2 + 3  # every copy and clean image through the export once
    images = [data.read_image(p, 1)[..., 0] for p in paths]
    copies = list(tuning.synthetic_copies(images, 2, seed=3, size_range=(4, 16), patch_size=32))

    def served(image):
        m = model.predict(image)["anomaly_map"]
        return gaussian_filter(m, choice.map_sigma, mode="reflect") if choice.map_sigma else m

    def segment(m, t):
        return postprocess.segment(m, t, opening_diameter=choice.opening_diameter, convex_hull=True,
                                   min_area=choice.min_area)

    clean_maps = [served(im) for im in images]
    assert choice.threshold_rule == "fpr" and choice.threshold == postprocess.threshold_at_fpr(clean_maps, fpr)
    segs = [segment(served(p), choice.threshold) for p, _, _ in copies]
    truth = np.concatenate([m.ravel() for _, m, _ in copies])
    assert op["pixel_f1"] == pytest.approx(f1_score(truth, np.concatenate([s.ravel() for s in segs])))
    found = total = 0
    by_family: dict[str, list[int]] = {}
    for seg, (_, mask, infos) in zip(segs, copies):
        for info in infos:
            r0, r1, c0, c1 = info["box"]
            region = info["region"] & mask[r0:r1, c0:c1]
            if region.any():
                hit = seg[r0:r1, c0:c1][region].mean() >= tuning.REGION_FOUND_SHARE
                found, total = found + hit, total + 1
                by_family.setdefault(info["family"], []).append(hit)
    assert (op["regions"], op["regions_found"]) == (total, found)
    assert op["region_recall"] == pytest.approx(found / total)
    for family, hits in by_family.items():
        assert op["region_recall_by_family"][family]["recall"] == pytest.approx(np.mean(hits))
    assert sum(b["defects"] for b in op["region_recall_by_size"]) == total
    false_regions = [label(segment(m, choice.threshold), connectivity=2).max() for m in clean_maps]
    assert op["false_regions_per_clean_image"] == pytest.approx(np.mean(false_regions))
    assert "recall" in " ".join(op) and any("region recall" in line for line in result.summary_lines())
    # AUPRO from the streamed overlap sums, against the exact sweep over the same maps.
    maps = [served(p) for p, _, _ in copies]
    # Each family's pixel ROC AUC: its defect pixels against every good pixel (scikit-learn's).
    scores = np.concatenate([m.ravel() for m in maps])
    family_of = np.concatenate([_family_labels(mask, infos).ravel() for _, mask, infos in copies])
    for family, auroc in result.synthetic["pixel_auroc_by_family"].items():
        keep = (family_of == family) | ~truth
        want = roc_auc_score(truth[keep], scores[keep]) if (family_of == family).any() else None
        assert auroc == (None if want is None else pytest.approx(want, abs=1e-3)), family
    assert result.synthetic["aupro_0.3"] == pytest.approx(metrics.aupro(maps, [m for _, m, _ in copies]), abs=5e-3)
    assert result.synthetic["pixel_auroc"] == pytest.approx(metrics.pixel_roc_auc(maps, [m for _, m, _ in copies]),
                                                            abs=result.synthetic["auroc_error_bound"] + 1e-12)

    f1_rule = tuning.tune(model, paths, copies=2, seed=3, sigmas=[0, 2], fpr=fpr, size_range=(4, 16),
                          threshold_rule="f1", progress=False)
    point = f1_rule.operating_point
    assert f1_rule.choice.threshold_rule == "f1" and f1_rule.choice.threshold >= choice.threshold
    assert f1_rule.choice.val_fpr <= fpr and point["pixel_f1"] >= op["pixel_f1"]
    assert point["fpr_rule"]["threshold"] == choice.threshold  # both rules recorded
    assert point["pixel_f1"] == max(p["pixel_f1"] for p in point["thresholds"])
    for p in point["thresholds"]:  # every threshold tried keeps the clean FPR within fpr, counted exactly
        share = np.mean(np.concatenate([m.ravel() for m in clean_maps]) > p["threshold"])
        assert share == pytest.approx(p["val_fpr"], abs=1e-12) and share <= fpr


def test_a_map_blind_to_the_defects_gets_a_warning(tmp_path):
    class Blind(BlurExport):
        def predict(self, image, source=None):  # the same noise whatever the image
            out = super().predict(image)
            out["anomaly_map"] = np.random.default_rng(0).random(out["anomaly_map"].shape).astype(np.float32)
            return out

    class Seeing(BlurExport):
        def __init__(self, clean):
            super().__init__()
            self.clean = clean

        def predict(self, image, source=None):  # what differs from the nearest clean image
            out = super().predict(image)
            image = np.asarray(image, np.float32).reshape(self.clean[0].shape)
            out["anomaly_map"] = np.min([np.abs(image - c) for c in self.clean], axis=0)[..., 0]
            return out

    paths = _image_files(tmp_path / "val", 2)
    result = tuning.tune(Blind(), paths, copies=1, sigmas=[0], progress=False)
    assert result.synthetic["pixel_auroc"] < tuning.WEAK_AUROC
    assert len(result.warnings) == 1 and result.warnings[0].startswith("Warning: ")
    assert "--defect-size" in result.warnings[0] and "train" in result.warnings[0]
    seeing = tuning.tune(Seeing([data.read_image(p, 1) for p in paths]), paths, copies=1, sigmas=[0], progress=False)
    assert seeing.synthetic["pixel_auroc"] > 0.9 and seeing.warnings == []


# --------------------------------------------------------------------------------------------
# tfssim-tune on a trained run's export


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _errors(result) -> list[str]:
    assert "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


@pytest.fixture(scope="module")
def run_export(tmp_path_factory, dataset):
    """A tiny trained run (its config.json records the dataset's validation images) and its export."""
    from tfssim import export
    from tfssim.training import TrainConfig, train

    root = tmp_path_factory.mktemp("tune_run")
    data_dir = shutil.copytree(dataset, root / "data")
    train(TrainConfig(data=str(data_dir), output=str(root / "run"), epochs=1, patch_size=32, latent_dim=8,
                      batch_size=8, patches_per_epoch=16, val_patches=8, strategy="none"))
    return root, Path(export.export_model(root / "run", root / "exports", name="product", stride=16))


def _tune(*args):
    from tfssim.cli.tune import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow  # trains a tiny run, then exports and tunes it
def test_tune_with_no_images_uses_the_runs_validation_images(run_export, tmp_path):
    root, export_dir = run_export
    result = _tune(export_dir, "--copies", "1", "--output", tmp_path / "t")
    assert result.exit_code == 0, result.output
    assert f"validation images: 2 from the training run folder {root / 'run'} (its config.json)" in result.output
    record = json.loads((tmp_path / "t" / "tuning.json").read_text())
    assert [Path(p).name for p in record["validation_images"]] == sorted(p.name for p in (root / "data" / "val").iterdir())
    assert "region recall" in result.output and "false regions per clean validation image" in result.output
    assert record["operating_point"]["region_recall_by_size"] and "warnings" in record
    warnings = [line for line in result.output.splitlines() if line.startswith("Warning:")]
    assert warnings == record["warnings"] == (
        warnings if record["synthetic"]["pixel_auroc"] < tuning.WEAK_AUROC else [])
    assert not list((tmp_path / "t").glob(".tfssim-tune-cache-*"))  # the cache is gone
    new = export_dir.parent / "2"
    assert new.is_dir() and json.loads((new / "assets" / "tfssim.json").read_text())["tuned"]["threshold_rule"] == "fpr"
    shutil.rmtree(new)


@pytest.mark.slow
def test_tune_refuses_before_writing_anything(run_export, tmp_path):
    """Issue 25 cases 1, 3, 7 and the no-images errors: exit 2, one Error line, no new version, inputs untouched."""
    root, export_dir = run_export
    val = root / "data" / "val"
    versions = sorted(p.name for p in export_dir.parent.iterdir())
    before = {"val": _hashes(val), "export": _hashes(export_dir)}

    def refused(*args, expect: str, images: Path = val) -> None:
        result = _tune(*args)
        assert result.exit_code == 2, result.output
        errors = _errors(result)
        assert len(errors) == 1 and expect in errors[0], result.output
        assert sorted(p.name for p in export_dir.parent.iterdir()) == versions
        assert _hashes(images) == before["val"] and _hashes(export_dir) == before["export"]

    # 1: the output folder may not be (or lie inside) an input folder, nor inside the export.
    refused(export_dir, val, "--output", val, expect="holds the input")
    refused(export_dir, val, "--output", root / "data", expect="holds the input")
    refused(export_dir, val, "--output", export_dir / "tuning", expect="inside the input")
    refused(export_dir, val, "--output", val / "sub", expect="inside the input")  # inside the folder given
    refused(export_dir, val, "--output", export_dir.parent / "7", expect="inside the input")  # a fake version
    # No images given: nor inside the run folder or the dataset the run's images came from.
    refused(export_dir, "--output", root / "run" / "state", expect="inside the input")
    refused(export_dir, "--output", root / "data" / "newtune", expect="inside the input")
    # 3: an output path under a regular file fails before the version is written.
    (tmp_path / "file").write_text("x")
    refused(export_dir, val, "--output", tmp_path / "file" / "sub", expect="a parent of it is a file")
    # 3: --model of another channel count, or a file Keras refuses, is found before the tuning.
    import keras

    from tfssim.models import build_model

    build_model("ssim", 32, 3, 8).save(tmp_path / "rgb.keras")
    refused(export_dir, val, "--model", tmp_path / "rgb.keras", "--output", tmp_path / "t1",
            expect="takes 32x32x3 patches")
    (tmp_path / "junk.keras").write_bytes(b"not a zip file")
    refused(export_dir, val, "--model", tmp_path / "junk.keras", "--output", tmp_path / "t2", expect="junk.keras")
    keras.utils.set_random_seed(5)
    build_model("ssim", 32, 1, 8).save(tmp_path / "other.keras")  # the right shape, other weights
    refused(export_dir, val, "--model", tmp_path / "other.keras", "--output", tmp_path / "t3",
            expect="is not the one exported")
    # 7: a second tune into a folder another one holds is refused at once.
    from tfssim._io import output_dir_lock, prepare_output_dir

    held = prepare_output_dir(tmp_path / "held")
    with output_dir_lock(held, "tfssim-tune"):
        refused(export_dir, val, "--output", held, expect="is in use by tfssim-tune")
    # No images given: the run's images are gone; an export without a run.
    moved = root / "moved_val"
    val.rename(moved)
    try:
        refused(export_dir, "--output", tmp_path / "t4", expect="validation images the run", images=moved)
    finally:
        moved.rename(val)
    keras.utils.set_random_seed(0)
    from tfssim import export

    build_model("ssim", 32, 1, 8).save(tmp_path / "bare.keras")
    bare = Path(export.export_model(tmp_path / "bare.keras", tmp_path / "exports", name="bare", stride=16))
    result = _tune(bare, "--output", tmp_path / "t5")
    assert result.exit_code == 2 and len(_errors(result)) == 1 and "not in a training run folder" in result.output


def test_ctrl_c_in_tune_and_calibrate_exits_130_with_one_line(exports, dataset, tmp_path, monkeypatch):
    """Issue 25 case 10: Ctrl-C is exit status 130 and one ``Interrupted:`` line, not click's ``Aborted!``."""
    from tfssim.cli.calibrate import main as calibrate_main
    from tfssim.evaluation import calibration

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tuning, "tune_export", interrupt)
    result = _tune(exports[0], dataset / "val", "--output", tmp_path / "t")
    assert result.exit_code == 130 and "Aborted" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("Interrupted:")] == [
        "Interrupted: no new version was written; the export is unchanged"]
    monkeypatch.setattr(calibration, "calibrate", interrupt)
    result = CliRunner().invoke(calibrate_main, [str(exports[0]), str(dataset / "val")])
    assert result.exit_code == 130 and "Aborted" not in result.output
    assert sum(line.startswith("Interrupted:") for line in result.output.splitlines()) == 1
