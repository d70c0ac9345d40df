"""Resizing images before training and inside the serving graph: one method, one size rule.

A model trained with ``--scale S`` (or ``--image-size H W``) sees every image resized before its
patches are drawn; its export resizes every request the same way inside the serving graph, tiles,
reconstructs and scores at that size, and resizes the reconstruction and every map back to the
request's exact height and width. Both sides call :func:`resize_image`, so training and serving
resample alike.

The method (:data:`INTERPOLATION`, recorded in the run folder and the export's metadata) is
``tf.image.resize(image, size, method="bilinear", antialias=True)``: a triangle (tent) filter
with half-pixel centres, widened by the reduction factor when shrinking, so a downscale averages
every input pixel (anti-aliased; without ``antialias`` bilinear samples only 2x2 pixels per output
pixel and aliases fine textures), and plain bilinear interpolation when enlarging. Its weights are
non-negative and sum to 1, so values stay in the input's range. ``PIL.Image.resize`` with
``Image.BILINEAR`` on float (``"F"``) images computes the same filter.

The size rule: a side of ``n`` pixels at scale ``S`` becomes ``floor(n * S + 0.5)`` pixels (at
least 1), computed in float64 both here (Python) and in the graph, so they agree exactly;
``image_size`` sets both sides outright (aspect not kept, as MVTec AD's protocol resizes).

The size helpers import no TensorFlow (a client checks the smallest image an export takes with
:func:`min_input_size`); :func:`resize_image` and :func:`resize_to` import it when called.

Example:
    >>> target_size(2048, 2448, scale=0.5)
    (1024, 1224)
    >>> min_input_size(128, scale=0.5)      # the smallest side a scale-0.5 model with 128-px patches takes
    255
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

from tfssim.errors import InputError

__all__ = [
    "INTERPOLATION", "TF_METHOD", "ANTIALIAS", "is_identity", "check_scale", "check_image_size", "scaled_length",
    "target_size", "min_input_size", "describe", "resize_image", "resize_to",
]

# The method's name in run folders and export metadata, and its tf.image.resize arguments.
INTERPOLATION = "bilinear_antialias"
TF_METHOD = "bilinear"
ANTIALIAS = True


def check_scale(scale: Any) -> float:
    """``scale`` as a float; ``InputError`` unless it is a finite number with ``0 < scale <= 1``."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) \
            or not 0 < float(scale) <= 1:
        raise InputError(f"scale must be a number > 0 and <= 1 (1: no resizing), got {scale!r}")
    return float(scale)


def check_image_size(image_size: Any) -> tuple[int, int] | None:
    """``image_size`` as ``(height, width)`` positive ints, or ``None``; ``InputError`` otherwise."""
    if image_size is None:
        return None
    items = list(image_size) if isinstance(image_size, (list, tuple)) else []
    if len(items) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
                                  for v in items):
        raise InputError(f"image size must be two positive integers [height, width], got {image_size!r}")
    return int(items[0]), int(items[1])


def is_identity(scale: float = 1.0, image_size: Sequence[int] | None = None) -> bool:
    """True when nothing is resized: ``scale == 1`` and no ``image_size``."""
    return image_size is None and float(scale) == 1.0


def scaled_length(length: int, scale: float) -> int:
    """A side of ``length`` pixels at ``scale``: ``floor(length * scale + 0.5)``, at least 1."""
    return max(1, math.floor(float(length) * float(scale) + 0.5))


def target_size(height: int, width: int, scale: float = 1.0,
                image_size: Sequence[int] | None = None) -> tuple[int, int]:
    """The ``(height, width)`` an image of ``height x width`` is resized to (``image_size`` if given)."""
    if image_size is not None:
        return int(image_size[0]), int(image_size[1])
    return scaled_length(height, scale), scaled_length(width, scale)


def min_input_size(patch_size: int, scale: float = 1.0, image_size: Sequence[int] | None = None) -> int:
    """The smallest height and width an export takes: its resized image must hold one patch.

    ``patch_size`` without resizing; the smallest ``n`` with ``scaled_length(n, scale) >=
    patch_size`` at a scale; 1 with an ``image_size`` (every image is resized to it, and it is
    at least the patch).
    """
    if image_size is not None:
        return 1
    if float(scale) == 1.0:
        return int(patch_size)
    n = max(1, math.floor((patch_size - 0.5) / float(scale)) - 1)
    while scaled_length(n, scale) < patch_size:
        n += 1
    return n


def describe(scale: float = 1.0, image_size: Sequence[int] | None = None) -> str:
    """In words, for logs and messages: ``"none"``, ``"scale 0.5"`` or ``"to 256x256"``."""
    if image_size is not None:
        return f"to {image_size[0]}x{image_size[1]}"
    return "none" if float(scale) == 1.0 else f"scale {float(scale):g}"


def resize_image(image: Any, size: Any) -> Any:
    """``image [H, W, C]`` (or ``[B, H, W, C]``) resized to ``size = (height, width)``, float32.

    :data:`INTERPOLATION`: ``tf.image.resize(..., method="bilinear", antialias=True)``. ``size``
    may be a tensor (inside a graph). Maps ``[H, W]`` are resized as ``map[..., None]``.
    """
    import tfssim._tensorflow  # noqa: F401 - without TensorFlow, an ImportError naming the install command
    import tensorflow as tf

    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    return tf.image.resize(image, size, method=TF_METHOD, antialias=ANTIALIAS)


def resize_to(image: Any, scale: float = 1.0, image_size: Sequence[int] | None = None) -> Any:
    """``image [H, W, C]`` resized by ``scale`` or to ``image_size`` (:func:`target_size`), float32.

    Works on an eager array (training) and on a tensor of unknown size (the serving graph: the
    target size is computed in the graph, in float64 like :func:`scaled_length`).
    """
    import tfssim._tensorflow  # noqa: F401 - without TensorFlow, an ImportError naming the install command
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    if image_size is not None:
        size = tf.constant([int(image_size[0]), int(image_size[1])], tf.int32)
    else:
        hw = tf.cast(tf.shape(image)[-3:-1], tf.float64)
        size = tf.maximum(tf.cast(tf.floor(hw * float(scale) + 0.5), tf.int32), 1)
    return resize_image(image, size)
