"""Residual (anomaly) maps of whole images from the input and its averaged reconstruction.

* SSIM models: ``1 - SSIM`` map (and ``1 - l``, ``1 - c``, ``1 - s``) with the parameters the
  model was trained with, full-size via mirror padding (``tfssim.ssim``, ``padding="same"``).
* l2 and feature-matching models: the squared error.
* VAE: ``-log`` of the per-pixel reconstruction probability over N posterior samples, each
  sample's tiles averaged over the overlaps first.

All maps are ``[H, W]`` float32, averaged over channels.
"""
from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tfssim import tiling
from tfssim.models import VariationalAutoencoder, get_spec, reconstruction_nll
from tfssim.ssim import ssim_maps

__all__ = ["ssim_residual_maps", "l2_residual_map", "anomaly_maps", "RESIDUALS"]

RESIDUALS = ("ssim", "l2", "vae")


def ssim_residual_maps(x: tf.Tensor, reconstruction: tf.Tensor, **ssim_kwargs: Any) -> dict[str, tf.Tensor]:
    """``1 -`` the SSIM, luminance, contrast and structure maps of ``[H, W, C]`` or ``[B, H, W, C]`` images."""
    batched = x.shape.rank == 4
    if not batched:
        x, reconstruction = x[None], reconstruction[None]
    # Whole images: the 1-D convolution blur (O(HWK) memory; band matrices grow with H*H).
    maps = ssim_maps(x, reconstruction, padding="same", blur="conv", **ssim_kwargs)
    out = {
        "anomaly_map": 1.0 - tf.reduce_mean(maps.ssim, axis=-1),
        "luminance_map": 1.0 - tf.reduce_mean(maps.luminance, axis=-1),
        "contrast_map": 1.0 - tf.reduce_mean(maps.contrast, axis=-1),
        "structure_map": 1.0 - tf.reduce_mean(maps.structure, axis=-1),
    }
    return out if batched else {k: v[0] for k, v in out.items()}


def l2_residual_map(x: tf.Tensor, reconstruction: tf.Tensor) -> tf.Tensor:
    """Squared error averaged over channels."""
    return tf.reduce_mean(tf.square(tf.cast(x, tf.float32) - tf.cast(reconstruction, tf.float32)), axis=-1)


def anomaly_maps(
    model: keras.Model,
    image: tf.Tensor,
    *,
    residual: str,
    patch_size: int,
    stride: tf.Tensor | int = 30,
    chunk_size: int = 64,
    ssim_kwargs: dict[str, Any] | None = None,
    vae_samples: int = 10,
    vae_seed: int = 0,
) -> dict[str, tf.Tensor]:
    """Reconstruction and anomaly maps of one image ``[H, W, C]`` float32 in [0, 1].

    Returns a dict of float32 tensors: ``reconstruction [H, W, C]``, ``anomaly_map [H, W]``
    and, for ``residual="ssim"``, ``luminance_map``, ``contrast_map``, ``structure_map``.
    """
    if residual not in RESIDUALS:
        raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
    image = tf.convert_to_tensor(image, tf.float32)
    if residual == "vae":
        if not isinstance(model, VariationalAutoencoder):
            raise ValueError("the 'vae' residual needs a tfssim VariationalAutoencoder")
        samples = tiling.reconstruct(
            lambda t: model.sample_reconstructions(t, vae_samples, seed=vae_seed), image, patch_size, stride,
            chunk_size, samples=vae_samples,
        )
        nll = reconstruction_nll(image[None], samples[:, None], model.observation_std)[0]
        return {"reconstruction": tf.reduce_mean(samples, axis=0), "anomaly_map": nll}
    recon = tiling.reconstruct(lambda t: model(t, training=False), image, patch_size, stride, chunk_size)
    if residual == "ssim":
        return {"reconstruction": recon, **ssim_residual_maps(image, recon, **(ssim_kwargs or {}))}
    return {"reconstruction": recon, "anomaly_map": l2_residual_map(image, recon)}


def residual_of(kind: str) -> str:
    """The residual map a model kind is scored with (``"fm"`` -> ``"l2"``)."""
    return get_spec(kind).residual
