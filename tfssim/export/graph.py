"""The serving graph: the traced functions of every signature around one Keras model.

Tiling, chunked reconstruction, overlap averaging and the residual maps run inside the graph
(:mod:`tfssim.core.tiling`, :mod:`tfssim.models.scoring`); a bad request fails with ``INVALID_ARGUMENT`` and
a readable message.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from tfssim.core import resize
from tfssim.core.tiling_params import DEFAULT_BLEND, DEFAULT_BORDER, DEFAULT_MAP_SIGMA
from tfssim.errors import InputError
from tfssim.models import VariationalAutoencoder, scoring

SIGNATURES = {
    "serving_default": {"inputs": {"image": "uint8 [H, W, C] or [1, H, W, C], 0..255"}, "stride": "export default"},
    "serve_float": {"inputs": {"image": "float32 [H, W, C] or [1, H, W, C], in [0, 1]"}, "stride": "export default"},
    "serve_with_stride": {"inputs": {"image": "float32 [H, W, C] or [1, H, W, C], in [0, 1]",
                                     "stride": "int32 scalar, 1 <= stride <= patch_size"}, "stride": "input"},
}
# Seed of the VAE's posterior sampling in exported graphs (metadata "vae_seed").
VAE_SEED = 0
# Float inputs may stray this far outside [0, 1] (resampling overshoot) before they are refused.
_FLOAT_TOLERANCE = 1e-3


def _model_geometry(model: keras.Model) -> tuple[int, int]:
    """``(patch_size, channels)`` of a tfssim model."""
    if isinstance(model, VariationalAutoencoder):
        return int(model.patch_size), int(model.channels)
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    if shape is None or shape.__len__() != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] is None:
        raise InputError(f"model {model.name!r} does not take square [batch, p, p, C] patches (input {shape})")
    return int(shape[1]), int(shape[3])


@dataclasses.dataclass(eq=False, kw_only=True)
class _Scorer:
    """The traced serving functions around one model; built by keyword (its settings are many and alike)."""

    model: keras.Model
    residual: str
    patch_size: int
    channels: int
    stride: int
    chunk_size: int
    ssim_kwargs: dict[str, Any]
    vae_samples: int
    jit_compile: bool
    map_sigma: float = DEFAULT_MAP_SIGMA
    scale: float = 1.0
    image_size: tuple[int, int] | None = None
    border: str = DEFAULT_BORDER
    blend: str = DEFAULT_BLEND
    map_formula: dict[str, Any] | None = None

    def _size_message(self) -> tuple[int, str]:
        """The smallest height and width a request may have, and the message refusing a smaller one."""
        p = self.patch_size
        smallest = resize.min_input_size(p, self.scale, self.image_size)
        if resize.is_identity(self.scale, self.image_size):
            return smallest, f"image height and width must be at least the patch size {p}"
        if self.image_size is not None:
            return smallest, "image height and width must be at least 1"
        return smallest, (f"image height and width must be at least {smallest}: the model scores images resized "
                          f"by {self.scale:g}, which must hold its {p}x{p} patch")

    def _prepare(self, image: tf.Tensor) -> tf.Tensor:
        """Validate one request's image and return it as ``[H, W, C]``."""
        c = self.channels
        smallest, too_small = self._size_message()
        rank_ok = tf.debugging.assert_rank_in(
            image, [3, 4], message=f"image must be [height, width, {c}] or [1, height, width, {c}]"
        )
        with tf.control_dependencies([rank_ok]):  # nothing below may index a wrong-rank shape first
            shape = tf.shape(image)
            checks = [
                tf.debugging.assert_equal(
                    tf.logical_or(tf.equal(tf.size(shape), 3), tf.equal(shape[0], 1)), True,
                    message="send one image per request: a leading batch dimension must be 1",
                ),
                tf.debugging.assert_equal(shape[-1], c, message=f"image must have {c} channel(s) (the model's)"),
                tf.debugging.assert_greater_equal(
                    tf.reduce_min(shape[-3:-1]), smallest, message=too_small,
                ),
            ]
        with tf.control_dependencies(checks):
            return tf.ensure_shape(tf.reshape(image, shape[-3:]), [None, None, c])

    def _in_range(self, image: tf.Tensor) -> tf.Tensor:
        lo, hi = tf.reduce_min(image), tf.reduce_max(image)
        check = tf.debugging.assert_equal(
            tf.logical_and(lo >= -_FLOAT_TOLERANCE, hi <= 1.0 + _FLOAT_TOLERANCE), True,
            message="float image values must be finite and in [0, 1] (send uint8 0..255 to serving_default)",
        )
        with tf.control_dependencies([check]):
            return tf.clip_by_value(image, 0.0, 1.0)

    def maps(self, image: tf.Tensor, stride: tf.Tensor | int) -> dict[str, tf.Tensor]:
        """The library's pipeline (:func:`tfssim.models.scoring.anomaly_maps`), traced into the graph.

        The VAE's noise is seeded with 0 (metadata ``vae_seed``), so its maps are reproducible.
        A model trained on resized images (``scale`` / ``image_size``) gets the request resized
        the same way, and every output resized back to the request's height and width.
        """
        return scoring.anomaly_maps(
            self.model, image, self.residual, self.patch_size, stride, chunk_size=self.chunk_size,
            ssim_kwargs=self.ssim_kwargs, vae_samples=self.vae_samples, vae_seed=VAE_SEED,
            jit_compile=self.jit_compile, map_sigma=self.map_sigma, scale=self.scale, image_size=self.image_size,
            border=self.border, blend=self.blend, map_formula=self.map_formula,
        )

    def serve_uint8(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.maps(tf.cast(self._prepare(image), tf.float32) / 255.0, self.stride)

    def serve_float(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.maps(self._in_range(self._prepare(image)), self.stride)

    def serve_with_stride(self, image: tf.Tensor, stride: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.maps(self._in_range(self._prepare(image)), stride)
