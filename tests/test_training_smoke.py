"""Smoke test: the SSIM autoencoder learns toy checkerboards with ``model.fit``.

The boards come from ``tfssim.data.synthetic.checkerboard_patches`` (rotated boards with 8-24 px
squares). Measured on the 2-core CPU, 300 steps of batch 16 (~10-15 s): held-out SSIM loss ratio
final/initial 0.51-0.60 (seeds 0-2, learning rate 2e-4 or 1e-3, latent 16 or 64); the test asks
for < 0.7. With Keras' default Glorot initialisation (before the He-init fix in cae.py) the same
runs gave ratios 0.86-0.89: this test catches that.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest

from tfssim.core.losses import SSIMLoss
from tfssim.data.synthetic import checkerboard_patches
from tfssim.models import build_autoencoder

PATCH = 32
STEPS = 300
BATCH = 16
MAX_RATIO = 0.7  # final / initial held-out loss; measured <= 0.60 (see the module docstring)


def training_boards(n: int, seed: int) -> np.ndarray:
    return np.asarray(checkerboard_patches(n, PATCH, seed=seed), np.float32)


def test_training_boards():
    boards = training_boards(8, seed=0)
    assert boards.shape == (8, PATCH, PATCH, 1) and boards.dtype == np.float32
    assert boards.min() >= 0 and boards.max() <= 1
    assert (boards.std(axis=(1, 2, 3)) > 0.1).all()  # every patch shows a pattern
    assert not np.array_equal(boards[0], boards[1])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_autoencoder_learns_checkerboards(seed):
    keras.utils.set_random_seed(seed)
    train = training_boards(STEPS * BATCH, seed)
    held_out = training_boards(64, 1000 + seed)

    model = build_autoencoder(PATCH, 1, 16)
    loss = SSIMLoss(window_size=7)
    # the paper's optimizer settings: Adam(W), learning rate 2e-4, weight decay 1e-5
    model.compile(optimizer=keras.optimizers.AdamW(2e-4, weight_decay=1e-5), loss=loss)
    initial = float(model.evaluate(held_out, held_out, batch_size=64, verbose=0))
    history = model.fit(train, train, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    final = float(model.evaluate(held_out, held_out, batch_size=64, verbose=0))

    print(f"\nseed {seed}: held-out SSIM loss {initial:.4f} -> {final:.4f} after {STEPS} steps "
          f"(train loss, running mean over the epoch: {history.history['loss'][-1]:.4f})")
    assert np.isfinite(final)
    assert initial > 0.5  # an untrained model reconstructs nothing
    assert final < MAX_RATIO * initial
