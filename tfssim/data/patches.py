"""The ``tf.data`` training pipeline: random patches of decoded images, index-seeded.

Patch ``i`` of a run is a pure function of ``(seed, i)`` (stateless random ops pick the image,
the crop origin and the flips/rotation), so a pipeline is deterministic, parallel ``map``
cannot reorder randomness, and a resumed run starts at patch ``start_batch * batch_size``
without recomputing anything before it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tfssim._tensorflow  # noqa: F401,I001 - before keras: without TensorFlow, an ImportError naming the install command
import tensorflow as tf

from tfssim.data.sampling import image_probabilities
from tfssim.errors import InputError

__all__ = ["patch_dataset", "steps_per_epoch", "fixed_patches", "validate_images"]


def validate_images(images: Sequence[np.ndarray], patch_size: int) -> int:
    """Check a list of ``[H, W, C]`` images against a patch size; return the channel count.

    Raises:
        ValueError: Empty list, wrong rank, mixed channel counts, or an image smaller than the patch.
    """
    if len(images) == 0:
        raise InputError("no images to draw patches from; give at least one defect-free image")
    if patch_size < 1:
        raise InputError(f"patch size must be positive, got {patch_size}")
    channels = None
    for i, image in enumerate(images):
        shape = np.shape(image)
        if len(shape) != 3:
            raise InputError(f"image {i} has shape {shape}; expected [height, width, channels]")
        if channels is None:
            channels = shape[2]
        elif shape[2] != channels:
            raise InputError(f"image {i} has {shape[2]} channels but image 0 has {channels}; convert all to gray or all to RGB")
        if shape[0] < patch_size or shape[1] < patch_size:
            raise InputError(
                f"image {i} is {shape[0]}x{shape[1]}, smaller than the {patch_size}x{patch_size} patch; "
                "use a smaller --patch-size or larger images"
            )
    return int(channels)


def _storage_dtype(images: Sequence[np.ndarray]) -> tuple[np.dtype, float | None]:
    """The smallest dtype that holds every image exactly: 8- or 16-bit codes, else float32.

    Images read from 8-/16-bit files are ``code / 255`` or ``code / 65535`` in float32; storing
    the codes and dividing per patch (the same float32 division) gives bit-identical patches
    in a quarter or half of the memory.
    """
    for dtype, scale in ((np.uint8, 255.0), (np.uint16, 65535.0)):
        exact = True
        for img in images:
            img = np.asarray(img, np.float32)
            codes = np.round(img * scale)
            if codes.min() < 0 or codes.max() > scale or not np.array_equal(
                codes.astype(dtype).astype(np.float32) / np.float32(scale), img
            ):
                exact = False
                break
        if exact:
            return np.dtype(dtype), scale
    return np.dtype(np.float32), None


def steps_per_epoch(patches_per_epoch: int, batch_size: int) -> int:
    """Batches per epoch: ``patches_per_epoch // batch_size`` (at least 1)."""
    return max(1, patches_per_epoch // batch_size)


def patch_dataset(
    images: Sequence[np.ndarray],
    patch_size: int = 128,
    patches_per_epoch: int = 20000,
    batch_size: int = 32,
    seed: int = 0,
    augment: bool = True,
    start_batch: int = 0,
    repeat: bool = True,
) -> tf.data.Dataset:
    """Batches of random patches as ``(x, x)`` pairs for autoencoder ``fit``.

    Args:
        images (sequence of ndarray): Decoded float32 images ``[H, W, C]`` in [0, 1] (sizes may differ; see
            :func:`tfssim.data.read_image`). They are held in memory once, unpadded, as 8- or
            16-bit codes when they came from 8-/16-bit files (bit-identical patches), else float32.
        patch_size (int): Side of the square patches (the paper: 128).
        patches_per_epoch (int): Patches per epoch (the paper: 20,000); with ``repeat=False`` the dataset holds
            exactly ``steps_per_epoch(patches_per_epoch, batch_size)`` batches.
        batch_size (int): Patches per batch (the global batch under a distribution strategy).
        seed (int): Seed of everything random; the same seed gives the same patches.
        augment (bool): Random horizontal/vertical flips and 90-degree rotations.
        start_batch (int): Index of the first batch: a resumed run passes ``epochs_done * steps_per_epoch``.
        repeat (bool): Infinite stream (use with ``fit(steps_per_epoch=...)``) or one epoch.

    Returns:
        tf.data.Dataset: Elements ``(x, x)``, float32 ``[batch_size, patch_size, patch_size, C]`` in [0, 1].

    Examples:
        >>> ds = patch_dataset([np.random.rand(200, 300, 1).astype("float32")], 64, 256, 32)
        >>> x, y = next(iter(ds))
        >>> x.shape
        TensorShape([32, 64, 64, 1])
    """
    channels = validate_images(images, patch_size)
    if batch_size < 1 or patches_per_epoch < 1 or start_batch < 0:
        raise InputError("batch_size and patches_per_epoch must be >= 1 and start_batch >= 0")
    heights = np.array([img.shape[0] for img in images], np.int32)
    widths = np.array([img.shape[1] for img in images], np.int32)
    # All images in one flat buffer, unpadded, as 8-/16-bit codes when that is exact (see
    # _storage_dtype): memory is the images' own pixel count times 1, 2 or 4 bytes.
    dtype, scale = _storage_dtype(images)
    sizes = heights.astype(np.int64) * widths * channels
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    flat = np.empty(int(sizes.sum()), dtype)
    for img, offset, size in zip(images, offsets, sizes):
        img = np.asarray(img, np.float32)
        flat[offset : offset + size] = (np.round(img * scale) if scale else img).astype(dtype).ravel()
    # Images are picked with probability proportional to the number of patch origins they offer.
    logits = tf.constant(np.log(image_probabilities([img.shape for img in images], patch_size))[None], tf.float32)
    flat_t = tf.constant(flat)
    offsets_t = tf.constant(offsets)
    heights_t = tf.constant(heights)
    widths_t = tf.constant(widths)
    p = patch_size

    def make_patch(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        def sub(k: int) -> tf.Tensor:
            return tf.stack([tf.constant(seed, tf.int64) * 7919 + k, index])

        k = tf.random.stateless_categorical(logits, 1, seed=sub(0), dtype=tf.int32)[0, 0]
        y = tf.random.stateless_uniform([], sub(1), 0, heights_t[k] - p + 1, dtype=tf.int32)
        x = tf.random.stateless_uniform([], sub(2), 0, widths_t[k] - p + 1, dtype=tf.int32)
        # rows y .. y+p of image k are one contiguous run of the buffer: slice, view, crop
        row_stride = tf.cast(widths_t[k], tf.int64) * channels
        start = offsets_t[k] + tf.cast(y, tf.int64) * row_stride
        band = tf.reshape(flat_t[start : start + p * row_stride], tf.stack([p, widths_t[k], channels]))
        patch = band[:, x : x + p, :]
        patch = tf.cast(patch, tf.float32) / scale if scale else patch
        # The augmentation is drawn here, per patch index, and applied to the whole batch in
        # _augment_batch (the same flips and turns as tf.image.rot90 per patch, in a few batch ops).
        flips = tf.random.stateless_uniform([2], sub(3)) if augment else tf.ones([2])
        turns = tf.random.stateless_uniform([], sub(4), 0, 4, dtype=tf.int32) if augment else tf.constant(0)
        return tf.ensure_shape(patch, [p, p, channels]), flips, turns

    def pair(patches: tf.Tensor, flips: tf.Tensor, turns: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if augment:
            patches = _augment_batch(patches, flips, turns)
        return patches, patches

    first = start_batch * batch_size
    if repeat:
        indices = tf.data.Dataset.counter(first, dtype=tf.int64)
    else:
        indices = tf.data.Dataset.range(first, first + steps_per_epoch(patches_per_epoch, batch_size) * batch_size)
    ds = indices.map(make_patch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True).map(pair)
    return ds.prefetch(tf.data.AUTOTUNE)


def _augment_batch(patches: tf.Tensor, flips: tf.Tensor, turns: tf.Tensor) -> tf.Tensor:
    """Flip and rotate each square patch of ``[B, p, p, C]`` as its draws say, in one gather.

    Patch ``i`` is flipped left-right when ``flips[i, 0] < 0.5``, then up-down when
    ``flips[i, 1] < 0.5``, then turned ``turns[i]`` times by 90 degrees counter-clockwise: the
    same pixels as ``tf.image.rot90`` of the per-patch flips. Each of the 16 draw combinations
    is a fixed permutation of the ``p * p`` pixels, so the batch is one ``gather`` from a table
    of them. Done per batch because per patch the flips' ``tf.cond`` and ``rot90``'s transposes
    cost more CPU than the crop itself (profiled: ~40-60 ms of transposes per 32-patch step of
    64x64 or 128x128 patches on 2 cores, time taken from the training step), and whole-batch
    reverse/select ops were as slow at 128x128.
    """
    shape = tf.shape(patches)
    p = patches.shape[1]
    pixels = np.arange(p * p, dtype=np.int32).reshape(p, p)
    table = []
    for left_right in (True, False):  # the draw < 0.5 flips: combination 8 * (not lr) + 4 * (not ud) + turns
        for up_down in (True, False):
            flipped = pixels[:, ::-1] if left_right else pixels
            flipped = flipped[::-1] if up_down else flipped
            table.extend(np.rot90(flipped, k).ravel() for k in range(4))
    combination = (8 * tf.cast(flips[:, 0] >= 0.5, tf.int32) + 4 * tf.cast(flips[:, 1] >= 0.5, tf.int32)
                   + tf.math.floormod(turns, 4))
    order = tf.gather(tf.constant(np.stack(table)), combination)  # [B, p * p]
    flat = tf.reshape(patches, tf.stack([shape[0], p * p, shape[3]]))
    return tf.reshape(tf.gather(flat, order, axis=1, batch_dims=1), shape)


def fixed_patches(images: Sequence[np.ndarray], patch_size: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` deterministic random patches ``[count, p, p, C]`` (no augmentation), e.g. for validation."""
    validate_images(images, patch_size)
    rng = np.random.default_rng(seed)
    areas = np.array([(img.shape[0] - patch_size + 1) * (img.shape[1] - patch_size + 1) for img in images], float)
    picks = rng.choice(len(images), size=count, p=areas / areas.sum())
    out = np.empty((count, patch_size, patch_size, images[0].shape[2]), np.float32)
    for j, k in enumerate(picks):
        img = images[k]
        y = rng.integers(0, img.shape[0] - patch_size + 1)
        x = rng.integers(0, img.shape[1] - patch_size + 1)
        out[j] = img[y : y + patch_size, x : x + patch_size]
    return out
