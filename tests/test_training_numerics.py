"""The training step's numerics against an independent loss: a seeded run of ``tfssim.training.train``
with tfssim's fast SSIM loss (band-matrix matmuls per statistic) gives the losses of the same run
with TensorFlow's own ``tf.image.ssim`` as the loss.

``tf.image.ssim`` blurs with an 11x11 depthwise convolution, summing in another order, and
computes the (co)variances as ``E[x^2] - mu^2`` on the raw images, where ours centre them first
(tests/test_ssim.py: ours is the closer of the two to a float64 SSIM). On these 32x32 brick
patches the two losses differ by 3-5e-5 absolute (0.9-1.2e-4 relative, measured) from the first
epoch on: TensorFlow's own float32 rounding, so the tolerance is 3e-4. A wrong blur, window or
gradient differs by orders of magnitude more. (The comparison with the code before the speed
work, at the paper's patch size, is scripts/check_seeded_losses.py.)
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfssim.training import TrainConfig, loop, train


class _TFImageSSIMLoss(keras.losses.Loss):
    """``1 - tf.image.ssim`` per patch: TensorFlow's SSIM (Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03)."""

    def call(self, y_true, y_pred):
        return 1.0 - tf.image.ssim(tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32), max_val=1.0)


@pytest.fixture(scope="module")
def brick(tmp_path_factory) -> Path:
    from tfssim.data import texture_dataset, write_dataset

    return write_dataset(texture_dataset("brick", n_val=1, n_test=1, test_size=(32, 32)),
                         tmp_path_factory.mktemp("data") / "brick")


@pytest.mark.slow  # two tiny 3-epoch runs (~15 s on the shared 2-core CPU)
def test_seeded_ssim_run_matches_a_run_with_tf_image_ssim(brick, tmp_path, monkeypatch):
    def config(name: str) -> TrainConfig:
        return TrainConfig(data=str(brick), output=str(tmp_path / name), model="ssim", epochs=3, patches_per_epoch=64,
                           batch_size=16, patch_size=32, latent_dim=8, val_patches=16, learning_rate=1e-3)

    ours = train(config("ours"), verbose=0).history
    monkeypatch.setattr(loop, "_build_loss", lambda _config: _TFImageSSIMLoss())
    theirs = train(config("theirs"), verbose=0).history
    # Three epochs, and the weights moved (equal losses could hide an untrained model).
    assert len(ours["loss"]) == 3 and len(set(ours["loss"])) == 3, ours
    np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=3e-4)
    np.testing.assert_allclose(ours["val_loss"], theirs["val_loss"], rtol=3e-4)
