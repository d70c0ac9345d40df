"""The patch sampling rule, without TensorFlow: which image a random patch comes from.

An image is picked with probability proportional to the number of patch origins it offers,
``(H - p + 1) * (W - p + 1)``, so every patch position of the training set is equally likely
whatever the image sizes. The ``tf.data`` pipeline (:func:`tfssim.data.patches.patch_dataset`)
and the NumPy sampler of ``scripts/train_any_backend.py`` both draw with these weights.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["image_probabilities"]


def image_probabilities(shapes: Sequence[Sequence[int]], patch_size: int) -> np.ndarray:
    """Probability of each image of a patch draw: its share of all patch origins.

    Args:
        shapes: Image shapes ``(H, W, ...)``, each at least ``patch_size`` on both sides.
        patch_size: Side ``p`` of the square patches.

    Returns:
        float64 ``[len(shapes)]``, summing to 1.

    Example:
        >>> image_probabilities([(130, 130, 1), (128, 128, 1)], 128)
        array([0.9, 0.1])
    """
    heights = np.array([s[0] for s in shapes], np.float64)
    widths = np.array([s[1] for s in shapes], np.float64)
    origins = (heights - patch_size + 1) * (widths - patch_size + 1)
    return origins / origins.sum()
