"""Plots write real PNG images of the expected size, atomically."""
from __future__ import annotations

import numpy as np
from skimage import io

from tfssim import plots


def _check_png(path, min_side=100):
    image = io.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= min_side
    assert image[..., :3].std() > 1  # not a blank canvas
    assert not list(path.parent.glob("*.tmp*"))


def test_all_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    fpr = np.linspace(0, 1, 50)
    _check_png(plots.plot_roc_curves({"ssim": (fpr, np.sqrt(fpr), 0.66), "l2": (fpr, fpr, 0.5)}, tmp_path / "roc.png"))
    q = np.stack([np.linspace(0, v, 30) for v in (0.2, 0.4, 0.6, 0.8, 0.9)])
    _check_png(plots.plot_pro_quantiles(np.linspace(0, 0.3, 30), q, tmp_path / "pro.png"))
    image = rng.random((60, 80))
    _check_png(plots.plot_anomaly_map(image, rng.random((60, 80)), tmp_path / "map.png"))
    seg = np.zeros((60, 80), bool)
    seg[10:20, 10:30] = True
    path = plots.plot_overlay(image[..., None], seg, seg.copy(), tmp_path / "overlay.png", )
    overlay = io.imread(path)[..., :3].astype(int)
    assert ((overlay[..., 1] - overlay[..., 0]) > 60).any()  # green segmentation
    assert ((overlay[..., 0] - overlay[..., 1]) > 60).any()  # red ground-truth contour
    _check_png(plots.plot_training_curves({"loss": [1.0, 0.5, 0.1, 0.05], "val_loss": [1.1, 0.6, 0.2, 0.1]},
                                          tmp_path / "curves.png"))
    _check_png(plots.plot_examples([image] * 2, [image] * 2, [rng.random((60, 80))] * 2, tmp_path / "ex.png"))
