"""Choosing the map smoothing on synthetic defects (tfssim.tuning), cross-checked with SciPy and scikit-learn."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

from tfssim import data, tuning
from tfssim.inference import ExportedModel


@dataclass
class NoisyDetector:
    """Stands in for an export: its map is the painted-pixel indicator plus pixel noise."""

    clean: np.ndarray
    noise: float
    metadata: dict = field(default_factory=lambda: {"patch_size": 32, "map_sigma": 0.0})
    path: Path = Path("fake")
    calls: int = 0

    def predict(self, image, source=None):
        self.calls += 1
        rng = np.random.default_rng(self.calls)
        signal = (np.abs(np.asarray(image) - self.clean) > 1e-6).astype(np.float32)
        return {"anomaly_map": signal + self.noise * rng.standard_normal(signal.shape).astype(np.float32)}


def _clean(shape=(96, 112)) -> np.ndarray:
    image = data.texture_dataset("gravel", n_val=1, n_test=1, test_size=shape, seed=3).val[0]
    return image.reshape(image.shape[:2])


def test_noisy_maps_are_best_smoothed_and_exact_maps_are_not():
    clean = _clean()
    noisy = tuning.choose_map_sigma(NoisyDetector(clean, noise=2.0), [clean], [0, 1, 2, 4], copies=3, progress=False)
    assert noisy.images == 3 and 0 < noisy.defect_fraction < 0.5
    assert noisy.aurocs[0] < 0.75 and noisy.best_sigma > 0
    assert max(noisy.aurocs) - noisy.aurocs[0] > 0.1
    exact = tuning.choose_map_sigma(NoisyDetector(clean, noise=0.0), [clean], [0, 1, 2, 4], copies=3, progress=False)
    assert exact.aurocs[0] == pytest.approx(1.0) and exact.best_sigma == 0
    assert exact.aurocs[-1] < 1.0


def test_tolerance_prefers_the_smallest_sigma_near_the_best():
    clean = _clean()
    model = NoisyDetector(clean, noise=0.5)
    strict = tuning.choose_map_sigma(model, [clean], [0, 1, 2, 4], copies=2, progress=False)
    model.calls = 0
    loose = tuning.choose_map_sigma(model, [clean], [0, 1, 2, 4], copies=2, tolerance=1.0, progress=False)
    assert strict.aurocs == loose.aurocs
    assert loose.best_sigma == 0 and strict.best_sigma == strict.sigmas[int(np.argmax(strict.aurocs))]


def test_choice_on_a_real_export_matches_scipy_and_sklearn(exports, dataset):
    model = ExportedModel.load(exports[0])
    split = data.load_dataset(dataset)
    images = [data.read_image(p, 1) for p in split.val]
    sigmas = [0.0, 1.5, 3.0]
    choice = tuning.choose_map_sigma(model, images, sigmas, copies=2, seed=5, progress=False)

    rng = np.random.default_rng(5)
    maps, masks = [], []
    for image in images:
        count = max(1, round(image.shape[0] * image.shape[1] / 32**2))
        for _ in range(2):
            defective, mask = tuning.paint_defects(image, rng, count)
            maps.append(model.predict(defective)["anomaly_map"])
            masks.append(mask)
    labels = np.concatenate([m.ravel() for m in masks])
    for sigma, auc in zip(sigmas, choice.aurocs):
        smoothed = [gaussian_filter(m, sigma, mode="reflect") if sigma else m for m in maps]
        want = roc_auc_score(labels, np.concatenate([m.ravel() for m in smoothed]))
        assert auc == pytest.approx(want, abs=1e-4), sigma
    assert choice.best_sigma == sigmas[int(np.argmax(choice.aurocs))]
    assert choice.images == 2 * len(images)
    assert choice.defect_fraction == pytest.approx(labels.mean())


def test_colour_images_get_gray_defects():
    rng = np.random.default_rng(0)
    image = rng.random((64, 64, 3)).astype(np.float32)
    painted, mask = tuning.paint_defects(image, np.random.default_rng(1), 3)
    assert painted.shape == image.shape and mask.shape == (64, 64) and mask.any()
    np.testing.assert_array_equal(painted[~mask], image[~mask])
    np.testing.assert_array_equal(painted[mask][:, 1], painted[mask][:, 0])
    with pytest.raises(ValueError, match=r"\[H, W\] or \[H, W, C\], got shape \(4,\)"):
        tuning.paint_defects(np.zeros(4), rng, 1)


def test_bad_requests_are_refused_with_the_reason(exports, tmp_path):
    model = ExportedModel.load(exports[0])
    image = _clean((64, 64))
    with pytest.raises(ValueError, match="no validation images"):
        tuning.choose_map_sigma(model, [], progress=False)
    with pytest.raises(ValueError, match="no candidate sigmas"):
        tuning.choose_map_sigma(model, [image], [], progress=False)
    with pytest.raises(ValueError, match="copies must be >= 1"):
        tuning.choose_map_sigma(model, [image], copies=0, progress=False)
    with pytest.raises(ValueError, match="does not fit the 32-pixel patch"):
        tuning.choose_map_sigma(model, [image], [0, 8], progress=False)
    smoothed = shutil.copytree(exports[0], tmp_path / "ssim" / "1")
    smoothed_model = ExportedModel.load(smoothed)
    smoothed_model.metadata["map_sigma"] = 2.0
    with pytest.raises(ValueError, match="already smooths its maps \\(map_sigma 2\\).*without --map-sigma"):
        tuning.choose_map_sigma(smoothed_model, [image], progress=False)
