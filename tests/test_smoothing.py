"""Gaussian smoothing of anomaly maps (tfssim.models.scoring.smooth_map), cross-checked with SciPy."""
from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import gaussian_filter

from tfssim.models import build_model, scoring


@pytest.mark.parametrize("sigma", [0.6, 2.0, 4.5])
def test_smooth_map_equals_scipy_gaussian_filter(sigma):
    rng = np.random.default_rng(0)
    one = rng.random((37, 53)).astype(np.float32)
    batch = rng.random((3, 40, 29)).astype(np.float32)
    np.testing.assert_allclose(scoring.smooth_map(one, sigma).numpy(), gaussian_filter(one, sigma, mode="reflect"),
                               atol=1e-6)
    want = np.stack([gaussian_filter(m, sigma, mode="reflect") for m in batch])
    np.testing.assert_allclose(scoring.smooth_map(tf.constant(batch), sigma).numpy(), want, atol=1e-6)


def test_sigma_zero_leaves_the_map_unchanged_and_bad_sigmas_are_refused():
    m = np.random.default_rng(1).random((20, 20)).astype(np.float32)
    np.testing.assert_array_equal(scoring.smooth_map(m, 0).numpy(), m)
    for bad in (-1.0, float("nan"), float("inf"), "2", True):
        with pytest.raises(ValueError, match="finite number >= 0"):
            scoring.smooth_map(m, bad)
    with pytest.raises(ValueError, match=r"shape \(20, 20\) is too small for smoothing sigma 5 \(kernel radius 20\)"):
        scoring.smooth_map(m, 5.0)
    with pytest.raises(ValueError, match="must be \\[H, W\\] or \\[B, H, W\\]"):
        scoring.smooth_map(m[None, None], 1.0)
    assert scoring.validate_map_sigma(np.float32(7.8), 32) == pytest.approx(7.8)
    with pytest.raises(ValueError, match="does not fit the 32-pixel patch.*sigma < 7.875"):
        scoring.validate_map_sigma(7.9, 32)


@pytest.mark.slow  # 10 s measured (2 cores shared with other jobs)
def test_anomaly_maps_smooths_every_map_but_not_the_reconstruction():
    keras.utils.set_random_seed(0)
    model = build_model("ssim", 32, 1, 8)
    image = np.random.default_rng(2).random((45, 61, 1)).astype(np.float32)
    plain = scoring.anomaly_maps(model, image, "ssim", stride=12, ssim_kwargs={"window_size": 7})
    smooth = scoring.anomaly_maps(model, image, "ssim", stride=12, ssim_kwargs={"window_size": 7}, map_sigma=2.5)
    np.testing.assert_array_equal(smooth["reconstruction"].numpy(), plain["reconstruction"].numpy())
    for key in ("anomaly_map", "luminance_map", "contrast_map", "structure_map"):
        want = gaussian_filter(plain[key].numpy(), 2.5, mode="reflect")
        np.testing.assert_allclose(smooth[key].numpy(), want, atol=1e-5, err_msg=key)
        assert np.std(smooth[key].numpy()) < np.std(plain[key].numpy())
    with pytest.raises(ValueError, match="does not fit the 32-pixel patch"):
        scoring.anomaly_maps(model, image, "ssim", stride=12, map_sigma=10.0)


@pytest.mark.slow  # 273 s measured (2 cores shared with other jobs)
def test_an_export_with_wide_smoothing_scores_a_large_image(tmp_path):
    """Regression: with oneDNN's convolution as the blur, this export (sigma 12: 97 taps) asked for
    a 16 GB scratchpad on a 700x1024 image and aborted the whole process ("Check failed: dtype()
    == expected_dtype"), hence the fresh interpreter. The map must also still equal SciPy's blur
    of the unsmoothed map."""
    script = f"""
import numpy as np, keras
from scipy.ndimage import gaussian_filter
from tfssim import export
from tfssim.serving.inference import ExportedModel
from tfssim.models import build_model
keras.utils.set_random_seed(0)
model = build_model("ssim", 128, 1, 16)
image = np.random.default_rng(0).random((700, 1024, 1)).astype(np.float32)
maps = {{s: ExportedModel.load(export.export_model(model, r"{tmp_path}", name=f"s{{s}}", stride=64, map_sigma=s))
         .predict(image)["anomaly_map"] for s in (0.0, 12.0)}}
err = np.abs(maps[12.0] - gaussian_filter(maps[0.0], 12.0, mode="reflect")).max()
print("max error", err)
assert err < 1e-5, err
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max error" in result.stdout
