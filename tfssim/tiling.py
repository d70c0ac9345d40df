"""Strided tiling of whole images and overlap averaging, as pure TensorFlow graph ops.

The paper reconstructs a large image by sliding the autoencoder's patch over it with a stride
smaller than the patch (30 for 128) and averaging the overlapping reconstructions pixel-wise.
Here the tile origins along an axis of length ``n`` are ``min(i * stride, n - patch)`` for
``i = 0 .. ceil((n - patch) / stride)``: the last tile sits exactly on the right / bottom border,
so every pixel is covered, nothing is padded, and no tile is repeated.

The model runs on bounded chunks of tiles inside a ``tf.while_loop`` that scatter-adds each
chunk's reconstructions into a running sum, so memory grows with the image, not with the
number of tiles (a 4096x4096 image at stride 30 has 17,689 tiles of 128x128).
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf

__all__ = ["tile_origins", "tile_grid", "extract_tiles", "coverage", "reconstruct", "check_tiling"]


def check_tiling(patch_size: int, stride: int) -> None:
    """Raise ``ValueError`` for a stride that would divide by zero or leave pixels uncovered."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if stride > patch_size:
        raise ValueError(
            f"stride {stride} is larger than the patch size {patch_size}: pixels between tiles would never be "
            "reconstructed; use a stride <= the patch size (the paper: 30 for 128)"
        )


def tile_origins(length: tf.Tensor, patch_size: int, stride: tf.Tensor) -> tf.Tensor:
    """Origins ``[n]`` int32 of the tiles along one axis; the last one ends exactly at ``length``."""
    length = tf.cast(length, tf.int32)
    stride = tf.cast(stride, tf.int32)
    count = (length - patch_size + stride - 1) // stride + 1
    return tf.minimum(tf.range(count) * stride, length - patch_size)


def tile_grid(height: tf.Tensor, width: tf.Tensor, patch_size: int, stride: tf.Tensor) -> tf.Tensor:
    """Row-major origins ``[num_tiles, 2]`` (y, x) of all tiles of an image."""
    oy = tile_origins(height, patch_size, stride)
    ox = tile_origins(width, patch_size, stride)
    yy, xx = tf.meshgrid(oy, ox, indexing="ij")
    return tf.reshape(tf.stack([yy, xx], axis=-1), [-1, 2])


def _pixel_indices(origins: tf.Tensor, patch_size: int) -> tf.Tensor:
    """``[T, p, p, 2]`` (row, col) indices of the pixels of tiles with the given origins."""
    offsets = tf.range(patch_size)
    rows = origins[:, 0:1] + offsets[None]  # [T, p]
    cols = origins[:, 1:2] + offsets[None]
    rows = tf.broadcast_to(rows[:, :, None], [tf.shape(origins)[0], patch_size, patch_size])
    cols = tf.broadcast_to(cols[:, None, :], [tf.shape(origins)[0], patch_size, patch_size])
    return tf.stack([rows, cols], axis=-1)


def extract_tiles(image: tf.Tensor, origins: tf.Tensor, patch_size: int) -> tf.Tensor:
    """Tiles ``[T, p, p, C]`` of ``image [H, W, C]`` at ``origins [T, 2]``."""
    return tf.gather_nd(image, _pixel_indices(origins, patch_size))


def coverage(height: tf.Tensor, width: tf.Tensor, patch_size: int, stride: tf.Tensor) -> tf.Tensor:
    """``[H, W, 1]`` float32: how many tiles cover each pixel (the separable product of 1-D counts)."""

    def axis_counts(length: tf.Tensor) -> tf.Tensor:
        origins = tile_origins(length, patch_size, stride)
        covered = tf.reshape(origins[:, None] + tf.range(patch_size)[None], [-1])
        return tf.cast(tf.math.bincount(covered, minlength=length, maxlength=length), tf.float32)

    return (axis_counts(height)[:, None] * axis_counts(width)[None, :])[..., None]


def reconstruct(
    model_fn: Callable[[tf.Tensor], tf.Tensor],
    image: tf.Tensor,
    patch_size: int,
    stride: tf.Tensor | int,
    chunk_size: int = 64,
    samples: int | None = None,
) -> tf.Tensor:
    """Reconstruct a whole image by strided tiling and overlap averaging.

    Args:
        model_fn: Maps tiles ``[T, p, p, C]`` float32 to reconstructions of the same shape, or,
            with ``samples = N``, to ``[N, T, p, p, C]`` (e.g. a VAE's posterior samples).
        image: ``[H, W, C]`` float32 with ``H, W >= patch_size``.
        patch_size: Tile side p.
        stride: Tile stride (Python int or int32 scalar tensor), ``1 <= stride <= p``.
        chunk_size: Tiles per model call; bounds the memory of one step.
        samples: ``None`` for a deterministic model, else the number of samples per tile.

    Returns:
        ``[H, W, C]`` (or ``[N, H, W, C]``) float32: every pixel the mean of the
        reconstructions of all tiles that cover it.
    """
    if isinstance(stride, int):
        check_tiling(patch_size, stride)
    image = tf.convert_to_tensor(image, tf.float32)
    shape = tf.shape(image)
    height, width, channels = shape[0], shape[1], shape[2]
    origins = tile_grid(height, width, patch_size, stride)
    num_tiles = tf.shape(origins)[0]
    dims = tf.stack([height, width, channels]) if samples is None else tf.stack([samples, height, width, channels])
    total = tf.zeros(dims, tf.float32)

    def body(start: tf.Tensor, total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        chunk = origins[start : start + chunk_size]
        indices = _pixel_indices(chunk, patch_size)
        tiles = tf.ensure_shape(tf.gather_nd(image, indices), [None, patch_size, patch_size, image.shape[-1]])
        recon = tf.cast(model_fn(tiles), tf.float32)
        if samples is None:
            total = tf.tensor_scatter_nd_add(total, indices, recon)
        else:
            # Scatter every sample's tiles: move the sample axis behind the pixel axes.
            moved = tf.transpose(recon, [1, 2, 3, 0, 4])  # [T, p, p, N, C]
            total = tf.transpose(
                tf.tensor_scatter_nd_add(tf.transpose(total, [1, 2, 0, 3]), indices, moved), [2, 0, 1, 3]
            )
        return start + chunk_size, total

    _, total = tf.while_loop(
        lambda start, _: start < num_tiles, body, (tf.constant(0), total),
        parallel_iterations=1, maximum_iterations=None,
    )
    return total / coverage(height, width, patch_size, stride)
