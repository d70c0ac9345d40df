"""tfssim-tune's stride frontier: the stride chosen test-free, served by default by the new version."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from tfssim import data, export
from tfssim.data import defects
from tfssim.evaluation import tuning
from tfssim.export.metadata import ExportMetadata
from tfssim.serving import postprocess
from tfssim.serving.inference import ExportedModel


def _val_images(n: int = 2, size=(96, 96)) -> list[np.ndarray]:
    from skimage import data as skdata

    texture = skdata.gravel().astype(np.float32) / 255.0
    return [np.ascontiguousarray(texture[k * size[0]:(k + 1) * size[0], :size[1]]) for k in range(n)]


@dataclass
class StrideFake:
    """Stands in for an export whose served map is the painted-pixel indicator plus noise that grows
    with the stride by ``growth`` per 8 pixels (the same noise pattern at every stride, scaled)."""

    clean: list[np.ndarray]
    noise: float
    growth: float
    metadata: dict = field(default_factory=dict)
    path: Path = Path("fake/1")
    strides_served: list = field(default_factory=list)

    def __post_init__(self):
        self.metadata = ExportMetadata.from_dict({
            "format": 1, "name": "fake", "version": 1, "kind": "vae", "residual": "vae", "patch_size": 64,
            "map_sigma": 0.0, "stride": 16, "channels": 1, "opening_diameter": 0, "convex_hull": False})

    def predict(self, image, source=None, stride=None):
        stride = 16 if stride is None else stride
        self.strides_served.append(stride)
        image = np.asarray(image, np.float32).reshape(self.clean[0].shape)
        signal = np.min([np.abs(image - c) > 0 for c in self.clean], axis=0).astype(np.float32)
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(image.tobytes()).digest()[:8], "little"))
        scale = self.noise * self.growth ** ((stride - 16) / 8)
        return {"reconstruction": image[..., None],
                "anomaly_map": signal + scale * rng.standard_normal(signal.shape).astype(np.float32)}


def _tune(fake: StrideFake, clean: list[np.ndarray], **kwargs) -> tuning.Tuning:
    return tuning.tune(fake, clean, copies=2, seed=3, sigmas=[0], openings=[0], min_areas=[0], progress=False,
                       **kwargs)


def test_default_strides_are_the_exports_and_larger_shares_of_the_patch():
    assert tuning.default_strides(128, 30) == [30, 48, 64]
    assert tuning.default_strides(64, 16) == [16, 24, 32]
    assert tuning.default_strides(32, 16) == [16]  # 12 is not larger than 16
    assert tuning.default_strides(128, 64) == [64]


def test_equal_maps_at_every_stride_choose_the_largest_and_set_the_threshold_there():
    clean = _val_images()
    fake = StrideFake(clean, noise=1.0, growth=1.0)
    result = _tune(fake, clean)
    assert [r["stride"] for r in result.strides] == [16, 24, 32]
    assert len({r["pixel_auroc"] for r in result.strides}) == 1  # the same map at every stride: a tie
    assert result.choice.stride == 32 and [r["chosen"] for r in result.strides] == [False, False, True]
    assert [r["own"] for r in result.strides] == [True, False, False]
    own = result.strides[0]
    assert own["speedup"] == 1.0 and all(r["seconds_per_megapixel"] > 0 for r in result.strides)
    # The threshold and the post-processing are set on the maps served at stride 32.
    clean_maps = [fake.predict(c, stride=32)["anomaly_map"] for c in clean]
    assert result.choice.threshold == postprocess.threshold_at_fpr(clean_maps, 0.01)
    assert result.settings["strides"] == [16, 24, 32]
    assert tuning.stride_line(result.strides).startswith("stride 32 (export's 16): ")
    assert result.summary_lines()[-1] == tuning.stride_line(result.strides)
    assert "stride 32" in result.choice.describe()


def test_a_stride_that_loses_auc_is_not_chosen_and_the_rows_match_sklearn():
    clean = _val_images()
    fake = StrideFake(clean, noise=1.0, growth=3.0)
    result = _tune(fake, clean)
    assert result.choice.stride == 16
    painted = list(tuning.synthetic_copies(clean, 2, seed=3, size_range=defects.default_size_range(64),
                                           patch_size=64))
    labels = np.concatenate([m.ravel() for _, m, _ in painted])
    for row in result.strides:
        maps = [fake.predict(p, stride=row["stride"])["anomaly_map"] for p, _, _ in painted]
        scores = np.concatenate([m.ravel() for m in maps])
        assert row["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-3), row["stride"]
        assert row["pixel_pauc_0.3"] == pytest.approx(roc_auc_score(labels, scores, max_fpr=0.3), abs=2e-3)
        assert row["aupro_0.3"] == pytest.approx(_aupro(maps, [m for _, m, _ in painted]), abs=0.01), row["stride"]
    aurocs = [r["pixel_auroc"] for r in result.strides]
    assert aurocs[0] > aurocs[1] > aurocs[2]
    assert [r["eligible"] for r in result.strides] == [True, False, False]


def _aupro(maps: list[np.ndarray], masks: list[np.ndarray], max_fpr: float = 0.3, steps: int = 400) -> float:
    """PRO as MVTec AD defines it, directly: mean overlap per defect region at thresholds spaced in
    the good pixels' FPR, integrated up to ``max_fpr`` (trapezoids) and normalised."""
    good = np.sort(np.concatenate([m[~k] for m, k in zip(maps, masks)]))[::-1]
    fprs = np.linspace(0, max_fpr, steps)
    thresholds = good[np.minimum((fprs * good.size).astype(int), good.size - 1)]
    regions = []
    for m, k in zip(maps, masks):
        labels, n = ndimage.label(k, structure=np.ones((3, 3)))
        regions += [m[labels == r] for r in range(1, n + 1)]
    pro = [np.mean([np.mean(r > t) for r in regions]) for t in thresholds]
    fpr = [np.mean(good > t) for t in thresholds]
    return float(np.trapezoid(pro, fpr) / max_fpr)


def test_bad_strides_are_refused_before_any_work():
    clean = _val_images(n=1)
    fake = StrideFake(clean, noise=1.0, growth=1.0)
    for bad in (0, 65, 1.5, True):
        with pytest.raises(ValueError, match="strides must be integers between 1 and the patch size 64"):
            _tune(fake, clean, strides=[bad])
    with pytest.raises(ValueError, match="stride tolerance must be between 0 and 1"):
        _tune(fake, clean, stride_tolerance=1.5)
    assert fake.strides_served == []


# --------------------------------------------------------------------------------------------
# A real (tiny, untrained) export


@pytest.fixture(scope="module")
def small_export(tmp_path_factory) -> dict:
    """A saved, untrained 32-pixel SSIM model and its export at stride 16."""
    import keras

    from tfssim.models import build_model

    root = tmp_path_factory.mktemp("strides")
    keras.utils.set_random_seed(0)
    build_model("ssim", 32, 1, 8).save(root / "model.keras")
    old = export.export_model(root / "model.keras", root / "exports", name="product", stride=16)
    return {"root": root, "old": old, "keras": keras.models.load_model(root / "model.keras")}


def test_exported_model_serves_any_stride_as_the_library_tiles(small_export, dataset):
    from tfssim.models import scoring

    model = ExportedModel.load(small_export["old"])
    image = data.read_image(data.list_images(dataset / "val")[0], 1)
    for stride in (8, 16, 32):
        served = model.predict(image, stride=stride)["anomaly_map"]
        want = scoring.anomaly_maps(small_export["keras"], image, "ssim", 32, stride)["anomaly_map"]
        np.testing.assert_allclose(served, np.asarray(want), atol=1e-5)
        as_uint8 = model.predict(np.round(image * 255).astype(np.uint8), stride=stride)["anomaly_map"]
        np.testing.assert_allclose(as_uint8, served, atol=1e-5)  # the reader's 8-bit image, scaled the same way
    default = model.predict(image)["anomaly_map"]
    np.testing.assert_array_equal(default, model.predict(image, stride=16)["anomaly_map"])
    assert not np.allclose(default, model.predict(image, stride=8)["anomaly_map"])
    for bad in (0, 33, 2.5):
        with pytest.raises(ValueError, match="stride must be an integer between 1 and the patch size 32"):
            model.predict(image, stride=bad)


def test_tune_cli_refuses_a_stride_larger_than_the_patch(exports, dataset, tmp_path):
    from tfssim.cli.tune import main as tune_cli

    result = CliRunner().invoke(tune_cli, [str(exports[0]), str(dataset / "val"), "--stride", "33",
                                           "--output", str(tmp_path / "t")])
    assert result.exit_code == 2
    assert "strides must be integers between 1 and the patch size 32, got 33" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in exports[0].parent.iterdir()) == ["1"]


@pytest.mark.slow  # about 35 s: a tune with three strides and an export
def test_tuned_version_serves_its_chosen_stride_by_default(small_export, dataset):
    from tfssim.cli.tune import main as tune_cli
    from tfssim.models import scoring

    root = small_export["root"]
    # A tolerance of 0.9 makes every stride eligible: the largest is chosen, whatever the (untrained) maps.
    result = CliRunner().invoke(tune_cli, [str(small_export["old"]), str(dataset / "val"), "--copies", "1",
                                           "--seed", "3", "--defect-size", "3", "12", "--output", str(root / "t"),
                                           "--formula", "ssim", "--stride", "24", "--stride", "32",
                                           "--stride-tolerance", "0.9"])
    assert result.exit_code == 0, result.output
    assert "stride 32 (export's 16)" in result.output
    record = json.loads((root / "t" / "tuning.json").read_text())
    assert [r["stride"] for r in record["strides"]] == [16, 24, 32]
    assert record["choice"]["stride"] == 32 and record["synthetic"]["before"]["stride"] == 16
    new = ExportedModel.load(root / "exports" / "product" / "2")
    assert new.metadata.stride == 32 and ExportedModel.load(small_export["old"]).metadata.stride == 16
    image = data.read_image(data.list_images(dataset / "val")[0], 1)
    served = new.predict(np.round(image * 255).astype(np.uint8))["anomaly_map"]  # serving_default
    md = new.metadata
    want = scoring.anomaly_maps(small_export["keras"], (np.round(image * 255) / 255).astype(np.float32), "ssim", 32,
                                32, ssim_kwargs=md.ssim, map_sigma=md.map_sigma, border=md.border,
                                blend=md.blend)["anomaly_map"]
    np.testing.assert_allclose(served, np.asarray(want), atol=1e-5)
    assert (root / "t" / "tuning.png").stat().st_size > 0
