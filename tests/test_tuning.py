"""Synthetic defects (tfssim.data.defects) and the tuner (tfssim.evaluation.tuning, tfssim-tune), cross-checked with
SciPy and scikit-learn."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.ndimage import gaussian_filter
from sklearn.metrics import f1_score, roc_auc_score

from tfssim import data, export
from tfssim.data import defects
from tfssim.evaluation import tuning
from tfssim.export.metadata import ExportMetadata
from tfssim.serving import postprocess
from tfssim.serving.inference import ExportedModel


def _val_images(texture: str = "gravel", n: int = 3, size=(96, 96)) -> list[np.ndarray]:
    return [v[..., 0] for v in data.texture_dataset(texture, n_val=n, n_test=1, test_size=size, seed=3).val]


# --------------------------------------------------------------------------------------------
# Synthetic defects


@pytest.mark.parametrize("family", defects.FAMILIES)
def test_every_family_paints_exactly_its_mask(family):
    gray = _val_images(n=2)
    rgb = np.random.default_rng(0).random((80, 72, 3)).astype(np.float32)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        for image, sources in ((gray[0], gray[1:]), (rgb, ())):
            painted, mask, info = defects.paint_defect(image, rng, family, float(rng.uniform(4, 40)), sources=sources)
            assert painted.shape == image.shape and painted.dtype == np.float32 and mask.shape == image.shape[:2]
            changed = painted != image if image.ndim == 2 else np.any(painted != image, axis=-1)
            np.testing.assert_array_equal(changed, mask)  # exact: soft edges never leave the mask
            assert mask.any() and info["family"] == family
            assert 0 <= painted.min() and painted.max() <= 1
            # Every changed pixel changed visibly (the far tail of a soft edge is undone, not masked).
            diff = np.abs(painted - image).reshape(*mask.shape, -1).max(axis=-1)
            assert diff[mask].min() > defects.MIN_CHANGE


def test_several_defects_have_one_exact_mask_and_a_record_each():
    image = _val_images(n=1)[0]
    painted, mask, infos = defects.paint_defects(image, np.random.default_rng(4), 6, size_range=(6, 30))
    np.testing.assert_array_equal(painted != image, mask)
    assert len(infos) == 6
    for info in infos:  # the large families are painted larger, at most the image's side
        scale = defects.LARGE_FAMILIES.get(info["family"], 1.0)
        assert 6 * scale <= info["diameter"] <= min(30 * scale, 96), info
    with pytest.raises(ValueError, match="1 <= min <= max"):
        defects.paint_defects(image, np.random.default_rng(0), 1, size_range=(20, 10))
    with pytest.raises(ValueError, match="unknown defect family 'dent'"):
        defects.paint_defects(image, np.random.default_rng(0), 1, families=["dent"])
    with pytest.raises(ValueError, match=r"\[H, W\] or \[H, W, C\], got shape \(4,\)"):
        defects.paint_defect(np.zeros(4), np.random.default_rng(0), "smear", 5)


@pytest.mark.parametrize("diameter", [8, 24, 48])
def test_regions_have_the_requested_equivalent_diameter(diameter):
    rng = np.random.default_rng(diameter)
    measured = []
    for _ in range(10):
        region = defects.defect_region(rng, diameter, (256, 256))
        measured.append(2 * math.sqrt(region.sum() / math.pi))
        # Irregular, not a disc: a disc of that area would fill its bounding box to pi / 4.
    assert 0.75 * diameter <= np.median(measured) <= 1.1 * diameter


def test_same_seed_same_defects_other_seed_other_defects():
    images = _val_images(n=2)

    def paint(seed):
        rng = np.random.default_rng(seed)
        return [defects.paint_defects(image, rng, 3, size_range=(4, 32), sources=images)
                for image in images for _ in range(2)]

    a, b, c = paint(7), paint(7), paint(8)
    for (pa, ma, ia), (pb, mb, ib) in zip(a, b):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(ma, mb)
        for da, db in zip(ia, ib, strict=True):  # each defect's region is an array, the rest plain values
            np.testing.assert_array_equal(da.pop("region"), db.pop("region"))
            assert da == db
    assert any(not np.array_equal(ma, mc) for (_, ma, _), (_, mc, _) in zip(a, c))


def test_missing_material_is_flat_at_the_border_and_inside_the_images_range():
    """A missing area touches the image border, is one flat value, and that value lies between the
    image's 10th and 90th percentiles: a global threshold separates it only partly."""
    image = _val_images("gravel", n=1, size=(128, 128))[0]
    rng = np.random.default_rng(12)
    shares = []
    for _ in range(10):
        painted, mask, infos = defects.paint_defects(image, rng, 1, size_range=(8, 32), families=["missing"])
        (info,) = infos
        r0, r1, c0, c1 = info["box"]
        assert r0 == 0 or c0 == 0 or r1 == 128 or c1 == 128, info["box"]
        assert np.ptp(painted[mask]) < 1e-6  # flat (up to float32 rounding of the blend)
        level = painted[mask][0]
        assert np.quantile(image, 0.09) <= level <= np.quantile(image, 0.91)
        auc = roc_auc_score(mask.ravel(), painted.ravel())
        shares.append(max(auc, 1 - auc))
    assert np.mean(shares) < 0.85, shares


def _intensity_aurocs(family: str) -> tuple[float, float]:
    """Pixel ROC AUC of two detectors that see intensity only: the raw value, and the distance of
    the local mean (Gaussian, sigma 2) from the image mean."""
    images = _val_images("gravel", n=3, size=(128, 128))
    rng = np.random.default_rng(11)
    labels, raw, local = [], [], []
    for i in range(12):
        painted, mask, _ = defects.paint_defects(images[i % 3], rng, 2, size_range=(4, 32), families=[family],
                                                 sources=images)
        labels.append(mask.ravel())
        raw.append(painted.ravel())
        local.append(np.abs(gaussian_filter(painted, 2) - painted.mean()).ravel())
    y = np.concatenate(labels)
    return roc_auc_score(y, np.concatenate(raw)), roc_auc_score(y, np.concatenate(local))


@pytest.mark.slow
def test_transplants_smears_and_shading_are_not_separable_by_intensity_but_foreign_bodies_are():
    for family in ("transplant", "smear", "shading"):
        raw, local = _intensity_aurocs(family)
        assert abs(raw - 0.5) < 0.12, (family, raw)  # neither brighter nor darker
        assert local < 0.6, (family, local)  # the local mean stays that of the surroundings
    # The same detectors do find defects that differ in intensity: the test can fail.
    raw, local = _intensity_aurocs("foreign")
    assert local > 0.75


# --------------------------------------------------------------------------------------------
# The tuner with fake detectors whose right choice is known


@dataclass
class FakeExport:
    """Stands in for an export: a VAE-like model (its served map is used as is) whose map is the
    painted-pixel indicator plus noise that depends only on the image (the same image, the same map)."""

    clean: list[np.ndarray]
    noise: float
    convex_hull: bool = False
    metadata: dict = field(default_factory=dict)
    path: Path = Path("fake/1")
    calls: int = 0

    def __post_init__(self):
        self.metadata = ExportMetadata.from_dict({
            "format": 1, "name": "fake", "version": 1, "kind": "vae", "residual": "vae", "patch_size": 64,
            "map_sigma": 0.0, "stride": 16, "channels": 1, "opening_diameter": 4, "convex_hull": self.convex_hull,
            **self.metadata})

    def predict(self, image, source=None, stride=None):
        self.calls += 1
        image = np.asarray(image, np.float32).reshape(self.clean[0].shape)
        signal = np.min([np.abs(image - c) > 0 for c in self.clean], axis=0).astype(np.float32)
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(image.tobytes()).digest()[:8], "little"))
        noise = self.noise * rng.standard_normal(signal.shape).astype(np.float32)
        return {"reconstruction": image[..., None], "anomaly_map": signal + noise}


def test_noisy_maps_are_best_smoothed_and_the_aucs_match_scipy_and_sklearn():
    clean = _val_images(n=2)
    fake = FakeExport(clean, noise=2.0)
    result = tuning.tune(fake, clean, copies=2, seed=5, sigmas=[0, 1, 2, 4], strides=[16], progress=False)
    assert fake.calls == 2 * 2 + 2  # each painted copy and each clean image through the export once
    assert result.strides == [] and result.choice.stride == 16  # one stride: no frontier
    aucs = {c["map_sigma"]: c["pixel_auroc"] for c in result.map_candidates}
    assert result.choice.map_sigma > 0 and aucs[result.choice.map_sigma] - aucs[0] > 0.1
    assert [c["window_size"] for c in result.map_candidates] == [None] * 4  # no SSIM candidates for a VAE

    painted = list(tuning.synthetic_copies(clean, 2, seed=5, size_range=defects.default_size_range(64), patch_size=64))
    maps = [fake.predict(p)["anomaly_map"] for p, _, _ in painted]
    labels = np.concatenate([m.ravel() for _, m, _ in painted])
    assert result.settings["defect_fraction"] == pytest.approx(labels.mean())
    for c in result.map_candidates:  # streamed: within the histogram's stated bound of scikit-learn's AUC
        sigma = c["map_sigma"]
        want = roc_auc_score(labels, np.concatenate([(gaussian_filter(m, sigma, mode="reflect") if sigma else m).ravel()
                                                     for m in maps]))
        assert abs(c["pixel_auroc"] - want) <= 1e-3 and c["auroc_error_bound"] < 1e-3, sigma
    # The threshold is exactly threshold_at_fpr's on the clean maps: the requested share lies above it.
    clean_maps = [gaussian_filter(fake.predict(c)["anomaly_map"], result.choice.map_sigma, mode="reflect")
                  for c in clean]
    assert result.choice.threshold == postprocess.threshold_at_fpr(clean_maps, 0.01)
    share = np.mean(np.concatenate([m.ravel() for m in clean_maps]) > result.choice.threshold)
    assert share <= 0.01 and share == pytest.approx(0.01, abs=1e-4) and result.choice.val_fpr == share


def test_exact_maps_keep_sigma_0_and_no_post_processing():
    clean = _val_images(n=2)
    result = tuning.tune(FakeExport(clean, noise=0.0), clean, copies=2, seed=1, sigmas=[0, 2, 4], progress=False)
    aucs = {c["map_sigma"]: c["pixel_auroc"] for c in result.map_candidates}
    assert aucs[0] == pytest.approx(1.0) and aucs[4] < 1.0 and result.choice.map_sigma == 0
    # The map is the mask itself: thresholding alone segments it exactly; an opening eats scratches.
    assert (result.choice.opening_diameter, result.choice.min_area) == (0, 0)
    f1s = {(c["opening_diameter"], c["min_area"]): c["f1"] for c in result.post_candidates}
    assert f1s[(0, 0)] == pytest.approx(1.0) and f1s[(8, 0)] < 0.99
    painted = list(tuning.synthetic_copies(clean, 2, seed=1, size_range=defects.default_size_range(64), patch_size=64))
    segs = [postprocess.segment(m.astype(np.float32), result.choice.threshold, opening_diameter=8,
                                convex_hull=False) for _, m, _ in painted]
    want = f1_score(np.concatenate([m.ravel() for _, m, _ in painted]), np.concatenate([s.ravel() for s in segs]))
    assert f1s[(8, 0)] == pytest.approx(want)


def test_same_seed_same_choice_and_near_ties_go_to_the_simpler_setting():
    clean = _val_images(n=1)
    first = tuning.tune(FakeExport(clean, 0.7), clean, copies=2, seed=2, sigmas=[0, 2, 4], progress=False)
    again = tuning.tune(FakeExport(clean, 0.7), clean, copies=2, seed=2, sigmas=[0, 2, 4], progress=False)
    assert first.map_candidates == again.map_candidates and first.choice == again.choice
    loose = tuning.tune(FakeExport(clean, 0.7), clean, copies=2, seed=2, sigmas=[0, 2, 4], tolerance=1.0,
                        progress=False)
    assert loose.map_candidates == first.map_candidates and loose.choice.map_sigma == 0
    assert (loose.choice.opening_diameter, loose.choice.min_area) == (4, 0)  # the export's own


def test_bad_requests_are_refused_with_the_reason():
    clean = _val_images(n=1)
    fake = FakeExport(clean, 0.0)
    with pytest.raises(ValueError, match="no validation images"):
        tuning.tune(fake, [], progress=False)
    with pytest.raises(ValueError, match="copies must be >= 1"):
        tuning.tune(fake, clean, copies=0, progress=False)
    with pytest.raises(ValueError, match="does not fit the 64-pixel patch"):
        tuning.tune(fake, clean, sigmas=[0, 16], progress=False)
    with pytest.raises(ValueError, match="1 <= min <= max"):
        tuning.tune(fake, clean, size_range=(0.5, 8), progress=False)
    smoothed = FakeExport(clean, 0.0, metadata={"map_sigma": 2.0})
    with pytest.raises(ValueError, match=r"already smooths its maps \(map_sigma 2\)"):
        tuning.tune(smoothed, clean, progress=False)
    with pytest.raises(ValueError, match="does not record the Keras model"):
        tuning.find_source(fake)
    with pytest.raises(ValueError, match=r"small\.png: image of shape \(40, 96\) is smaller than the export's 64"):
        tuning.tune(fake, [clean[0][:40]], sources=["small.png"], progress=False)


def test_extra_metadata_cannot_rewrite_what_the_graph_does(tmp_path):
    from tfssim.models import build_model

    with pytest.raises(ValueError, match=r"extra metadata may not set \['map_sigma', 'stride'\]"):
        export.export_model(build_model("l2", 32, 1, 8), tmp_path, name="x",
                            extra_metadata={"stride": 4, "map_sigma": 2.0, "min_area": 3})
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------
# A real (tiny, untrained) export


def test_l2_export_aucs_match_an_independent_computation(exports, dataset):
    model = ExportedModel.load(exports[1])
    images = [data.read_image(p, 1) for p in data.list_images(dataset / "val")]
    result = tuning.tune(model, images, copies=1, seed=4, progress=False)
    assert {c["map_sigma"] for c in result.map_candidates} == {0.0, 2.0, 4.0}  # 8 would not fit the 32-px patch
    painted = list(tuning.synthetic_copies(images, 1, seed=4, size_range=defects.default_size_range(32),
                                           patch_size=32))
    labels = np.concatenate([m.ravel() for _, m, _ in painted])
    raw = []
    for p, _, _ in painted:
        recon = model.predict(p)["reconstruction"]
        raw.append(np.mean((p.reshape(recon.shape) - recon) ** 2, axis=-1))
    for c in result.map_candidates:
        sigma = c["map_sigma"]
        scores = np.concatenate([(gaussian_filter(m, sigma, mode="reflect") if sigma else m).ravel() for m in raw])
        assert c["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-3), sigma


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, dataset):
    """tfssim-tune run end to end on an export of a saved .keras model, with a folder of validation
    images and no test set."""
    import keras

    from tfssim.cli.tune import main as tune_cli
    from tfssim.models import build_model

    root = tmp_path_factory.mktemp("tune")
    keras.utils.set_random_seed(0)
    build_model("ssim", 32, 1, 8).save(root / "model.keras")
    old = export.export_model(root / "model.keras", root / "exports", name="product", stride=16)
    product = root / "product"  # only defect-free images: no test folder, no masks
    product.mkdir()
    for p in data.list_images(dataset / "val"):
        shutil.copy(p, product / p.name)
    before = _hashes(old)
    result = CliRunner().invoke(tune_cli, [str(old), str(product), "--copies", "1", "--seed", "3",
                                           "--defect-size", "3", "12", "--fpr", "0.02", "--output", str(root / "t"),
                                           "--border", "none", "--border", "reflect"])
    return {"root": root, "old": old, "before": before, "result": result, "product": product}


@pytest.mark.slow
def test_tune_cli_writes_a_new_version_and_leaves_the_old_one_alone(tuned):
    result, old, root = tuned["result"], tuned["old"], tuned["root"]
    assert result.exit_code == 0, result.output
    assert result.exception is None
    new = old.parent / "2"
    assert f"new version: {new}" in result.output
    assert _hashes(old) == tuned["before"]  # byte-identical
    record = json.loads((root / "t" / "tuning.json").read_text())
    assert (root / "t" / "tuning.png").stat().st_size > 0
    assert record["settings"]["seed"] == 3 and record["settings"]["defect_size"] == [3.0, 12.0]
    # windows x weightings x sigmas that fit 32 px on the export's tiling; 3 other tilings (border x
    # blend: the fixture asks for both borders) with the window and weighting best on it x those sigmas
    plain = [c for c in record["map_candidates"] if c["map_formula"] == {"name": "ssim"}]
    assert len(plain) == 3 * 2 * 3 + 3 * 3
    # Then the map formulas on the best plain map: low-frequency sigma 2 and 4 (32 / 16, 32 / 8), the
    # wider windows 2K + 1 and 4K + 1 that fit 32 px; max and three weighted sums; its sigma.
    formulas = [c for c in record["map_candidates"] if c not in plain]
    window = formulas[0]["window_size"]
    wider = [w for w in (2 * window + 1, 4 * window + 1) if w <= 32]
    assert len(formulas) == (2 + len(wider)) * 4
    assert {c["map_formula"].get("lowfreq_sigma") or c["map_formula"]["window_size"] for c in formulas} == {
        2.0, 4.0, *wider}
    assert len({(c["window_size"], c["weighting"], c["border"], c["blend"], c["map_sigma"]) for c in formulas}) == 1
    assert {(c["border"], c["blend"]) for c in record["map_candidates"]} == {
        ("none", "mean"), ("none", "gaussian"), ("reflect", "mean"), ("reflect", "gaussian")}
    own = [c for c in record["map_candidates"] if (c["border"], c["blend"]) == ("none", "mean")]
    # The tuner's own rule: the best AUROC within its tolerance, smaller sigma first, then the export's
    # own window and weighting (Gaussian 11).
    best_own = tuning._pick(own, "pixel_auroc", 0.001, lambda c: (
        c["map_sigma"], (c["window_size"], c["weighting"]) != (11, "gaussian"), own.index(c)))
    assert {(c["window_size"], c["weighting"]) for c in plain if c not in own} == {
        (best_own["window_size"], best_own["weighting"])}
    assert len(record["post_candidates"]) == len(tuning.DEFAULT_OPENINGS) * 4
    assert record["objective"]["map"] == tuning.MAP_OBJECTIVE
    choice = record["choice"]
    best = max(c["pixel_auroc"] for c in record["map_candidates"] if c.get("eligible", True))
    keys = ("window_size", "weighting", "map_sigma", "border", "blend", "map_formula")
    chosen = next(c for c in record["map_candidates"] if all(c[k] == choice[k] for k in keys))
    assert chosen["pixel_auroc"] >= best - 0.001
    meta = export.read_export_metadata(new).to_dict()
    assert meta["version"] == 2 and meta["ssim"]["window_size"] == choice["window_size"]
    assert meta["ssim"]["weighting"] == choice["weighting"] and meta["map_sigma"] == choice["map_sigma"]
    assert (meta["border"], meta["blend"], meta["map_formula"]) == (choice["border"], choice["blend"],
                                                                   choice["map_formula"])
    assert meta["threshold"] == choice["threshold"] and meta["threshold_fpr"] == 0.02
    assert (meta["opening_diameter"], meta["min_area"]) == (choice["opening_diameter"], choice["min_area"])
    assert meta["tuned"]["from_version"] == 1 and meta["tuned"]["settings"]["seed"] == 3
    assert meta["source"] == str(root / "model.keras") and meta["stride"] == 16

    from tfssim.cli.tune import main as tune_cli

    again = CliRunner().invoke(tune_cli, [str(old), str(tuned["product"]), "--output", str(root / "t")])
    assert again.exit_code == 2 and isinstance(again.exception, SystemExit)
    assert [line for line in again.output.splitlines() if line.startswith("Error:")] == [
        f"Error: {root / 't' / 'tuning.json'} exists (an earlier tuning's record); choose another --output"]
    assert sorted(p.name for p in old.parent.iterdir()) == ["1", "2"]


@pytest.mark.slow
def test_tuned_version_serves_the_librarys_map_with_the_chosen_settings(tuned):
    import keras

    from tfssim.models import scoring

    assert tuned["result"].exit_code == 0, tuned["result"].output
    new = ExportedModel.load(tuned["old"].parent / "2")
    meta = new.metadata.to_dict()
    model = keras.saving.load_model(tuned["root"] / "model.keras", compile=False)
    images = [data.read_image(p, 1) for p in data.list_images(tuned["product"])]
    served = [new.predict(im)["anomaly_map"] for im in images]
    for image, got in zip(images, served):
        want = scoring.anomaly_maps(model, image, "ssim", 32, 16, ssim_kwargs=meta["ssim"],
                                    map_sigma=meta["map_sigma"], border=meta["border"],
                                    blend=meta["blend"], map_formula=meta["map_formula"])["anomaly_map"]
        np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)
    # The stored threshold is the served maps' own at the requested FPR.
    assert meta["threshold"] == pytest.approx(postprocess.threshold_at_fpr(served, 0.02), abs=1e-5)


def test_tune_cli_refuses_an_export_without_its_keras_model(exports, dataset, tmp_path):
    from tfssim.cli.tune import main as tune_cli

    old = shutil.copytree(exports[0], tmp_path / "ssim" / "1")
    before = _hashes(old)
    result = CliRunner().invoke(tune_cli, [str(old), str(dataset / "val"), "--output", str(tmp_path / "t")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "does not record the Keras model" in errors[0] and "--model" in errors[0]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in old.parent.iterdir()) == ["1"] and _hashes(old) == before

    result = CliRunner().invoke(tune_cli, [str(old), str(dataset / "val"), "--defect-size", "9", "3"])
    assert result.exit_code == 2 and "Error: --defect-size MIN MAX needs MIN <= MAX" in result.output
    result = CliRunner().invoke(tune_cli, [str(old), str(tmp_path / "nowhere" / "*.png")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert [line for line in result.output.splitlines() if line.startswith("Error:")] == [
        f"Error: no file matches {str(tmp_path / 'nowhere' / '*.png')!r}"]
