"""Strided tiling of whole images and overlap averaging, as pure TensorFlow graph ops.

The paper reconstructs a large image by sliding the autoencoder's patch over it with a stride
smaller than the patch (30 for 128) and averaging the overlapping reconstructions pixel-wise.
Here the tile origins along an axis of length ``n`` are ``min(i * stride, n - patch)`` for
``i = 0 .. ceil((n - patch) / stride)``: the last tile sits exactly on the right / bottom border,
so every pixel is covered, nothing is padded, and no tile is repeated. A 700x1024 image at
stride 30 with 128x128 patches has 21 x 31 = 651 tiles.

Everything works with a Python ``int`` or an int32 scalar tensor as the stride and with
unknown (dynamic) image sizes, so it can sit inside a serving signature. Bad arguments are
``ValueError`` when they are known while tracing and a ``tf.errors.InvalidArgumentError`` with
the same readable message when they are only known at run time.

:func:`reconstruct` runs the model on bounded chunks of tiles inside a ``tf.while_loop``:
each step gathers its chunk's tiles from the image, runs the model and scatter-adds the result
into a running sum, so memory grows with the image, not with the number of tiles (a 4096x4096
image at stride 30 has 17,689 tiles of 128x128: 1.2 GB if held at once).

Example:
    >>> image = tf.random.uniform([700, 1024, 1])
    >>> recon = reconstruct(lambda t: model(t, training=False), image, 128, 30, chunk_size=64)
    >>> recon.shape
    TensorShape([700, 1024, 1])
"""
from __future__ import annotations

from typing import Callable, Sequence

import tfssim._tensorflow  # noqa: F401,I001 - before keras: without TensorFlow, an ImportError naming the install command
import numpy as np
import tensorflow as tf

from tfssim.core.tiling_params import BLENDS, DEFAULT_BLEND, DEFAULT_CHUNK_SIZE, check_blend, check_chunk_size
from tfssim.errors import InputError

__all__ = [
    "blend_weights",
    "check_tiling",
    "checked_image",
    "tile_origins",
    "tile_grid",
    "num_tiles",
    "extract_tiles",
    "average_tiles",
    "coverage",
    "map_in_chunks",
    "reconstruct",
    "reconstruct_blends",
]

# The Gaussian blend's standard deviation as a share of the patch side (nnU-Net's sigma_scale).
GAUSSIAN_BLEND_SIGMA = 1 / 8


def blend_weights(patch_size: int, blend: str) -> np.ndarray:
    """The 1-D weights ``[p]`` (float32, at most 1) of a tile's rows and columns under ``blend``.

    A tile's pixel ``(i, j)`` weighs ``w[i] * w[j]``; overlapping tiles are combined by
    normalised weighted overlap-add, ``sum(w * tile) / sum(w)``. ``"mean"``: all ones (the
    paper's plain average). ``"gaussian"``: ``exp(-(i - c)^2 / (2 sigma^2))`` with
    ``c = (p - 1) / 2`` and ``sigma = p / 8``: an autoencoder reconstructs a tile's edges worse
    than its centre, so the centres of the overlapping tiles decide each pixel. The edge weight
    is about 4e-4 of the centre's for any p, never 0, so pixels at the image border (covered by
    tile edges only) stay defined.

    References:
        Isensee et al., "nnU-Net", Nature Methods 18, 2021 (Gaussian importance weighting of
        sliding-window predictions); MONAI ``sliding_window_inference(mode="gaussian")``.
    """
    check_blend(blend)
    if blend == "mean":
        return np.ones(patch_size, np.float32)
    offsets = np.arange(patch_size) - (patch_size - 1) / 2
    return np.exp(-0.5 * (offsets / (GAUSSIAN_BLEND_SIGMA * patch_size)) ** 2).astype(np.float32)


def _static_int(value: int | tf.Tensor) -> int | None:
    """``value`` as a Python int when it is known while tracing, else ``None``."""
    if isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    static = tf.get_static_value(value)
    return None if static is None else int(static)


def _stride_messages(patch_size: int) -> tuple[str, str]:
    return (
        "stride must be >= 1",
        f"stride must be <= the patch size {patch_size}: a larger stride leaves pixels between tiles that are "
        "never reconstructed (the paper uses 30 for 128)",
    )


def check_tiling(patch_size: int, stride: int | tf.Tensor) -> None:
    """Raise ``ValueError`` for a patch size < 1 or a static stride outside ``[1, patch_size]``.

    A stride of 0 would divide by zero; one larger than the patch would leave gaps that no tile
    covers (NaN after averaging). A stride only known at run time is checked in the graph by
    :func:`reconstruct` instead.
    """
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise InputError(f"patch size must be a positive integer, got {patch_size!r}")
    value = _static_int(stride)
    if value is None:
        return
    too_small, too_large = _stride_messages(patch_size)
    if value < 1:
        raise InputError(f"{too_small}, got {value}")
    if value > patch_size:
        raise InputError(f"{too_large}; got stride {value}")


def _checked(patch_size: int, stride: int | tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tuple:
    """Validate stride and image size (statically where possible, else in the graph).

    Returns ``stride, height, width`` as int32 tensors that depend on the run-time checks, so
    nothing downstream (a division by the stride, a negative range) runs before them.
    """
    check_tiling(patch_size, stride)
    static = [_static_int(height), _static_int(width)]
    if None not in static and min(static) < patch_size:
        raise InputError(
            f"image of {static[0]}x{static[1]} pixels is smaller than the {patch_size}x{patch_size} patch; "
            f"height and width must be at least the patch size {patch_size}"
        )
    stride = tf.cast(stride, tf.int32)
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    checks = []
    if _static_int(stride) is None:
        too_small, too_large = _stride_messages(patch_size)
        checks += [
            tf.debugging.assert_greater_equal(stride, 1, message=too_small),
            tf.debugging.assert_less_equal(stride, patch_size, message=too_large),
        ]
    if None in static:
        checks.append(
            tf.debugging.assert_greater_equal(
                tf.minimum(height, width), patch_size,
                message=f"image height and width must be at least the patch size {patch_size}",
            )
        )
    if checks:
        with tf.control_dependencies(checks):
            stride, height, width = tf.identity(stride), tf.identity(height), tf.identity(width)
    return stride, height, width


def checked_image(image: tf.Tensor, patch_size: int, stride: int | tf.Tensor) -> tf.Tensor:
    """``image [H, W, C]`` as float32, after the checks :func:`reconstruct` makes (a stride in
    ``[1, patch]``, sides of at least the patch): ``ValueError`` while tracing where they are
    known, else in the graph, before anything that uses the returned image runs. For callers
    that change the image before tiling it (``border="reflect"`` pads it)."""
    image = tf.cast(_as_image(image), tf.float32)
    _, height, width = _checked(patch_size, stride, *_height_width(image))
    with tf.control_dependencies([height, width]):
        return tf.identity(image)


def tile_origins(length: int | tf.Tensor, patch_size: int, stride: int | tf.Tensor) -> tf.Tensor:
    """Origins ``[n]`` int32 of the tiles along one axis: ``min(i * stride, length - patch)``.

    ``n = ceil((length - patch) / stride) + 1``; the first origin is 0 and the last one is
    ``length - patch``, so the tiles cover the axis exactly. ``length`` and ``stride`` may be
    tensors. Raises ``ValueError`` (static) or ``InvalidArgumentError`` (dynamic) for a stride
    outside ``[1, patch]`` or a length below the patch.
    """
    stride, length, _ = _checked(patch_size, stride, length, length)
    return _origins(length, patch_size, stride)


def _origins(length: tf.Tensor, patch_size: int, stride: tf.Tensor) -> tf.Tensor:
    """:func:`tile_origins` of already checked int32 tensors."""
    count = (length - patch_size + stride - 1) // stride + 1
    return tf.minimum(tf.range(count) * stride, length - patch_size)


def tile_grid(height: int | tf.Tensor, width: int | tf.Tensor, patch_size: int, stride: int | tf.Tensor) -> tf.Tensor:
    """Row-major origins ``[num_tiles, 2]`` int32 (y, x) of all tiles of an image."""
    oy = tile_origins(height, patch_size, stride)
    ox = tile_origins(width, patch_size, stride)
    yy, xx = tf.meshgrid(oy, ox, indexing="ij")
    return tf.reshape(tf.stack([yy, xx], axis=-1), [-1, 2])


def num_tiles(height: int, width: int, patch_size: int, stride: int) -> int:
    """Number of tiles of a ``height x width`` image (Python ints), e.g. 651 for 700x1024 at 30."""
    check_tiling(patch_size, stride)
    if min(height, width) < patch_size:
        raise InputError(f"image of {height}x{width} pixels is smaller than the {patch_size}x{patch_size} patch")
    per_axis = lambda n: -(-(n - patch_size) // stride) + 1  # noqa: E731
    return per_axis(height) * per_axis(width)


def _pixel_indices(origins_y: tf.Tensor, origins_x: tf.Tensor, patch_size: int) -> tf.Tensor:
    """``[T, p, p, 2]`` (row, col) indices of the pixels of tiles with the given origins."""
    offsets = tf.range(patch_size)
    rows = origins_y[:, None] + offsets[None]  # [T, p]
    cols = origins_x[:, None] + offsets[None]
    shape = tf.stack([tf.shape(rows)[0], patch_size, patch_size])
    rows = tf.broadcast_to(rows[:, :, None], shape)
    cols = tf.broadcast_to(cols[:, None, :], shape)
    return tf.stack([rows, cols], axis=-1)


def _as_image(image: tf.Tensor) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise InputError(f"expected one image [height, width, channels], got shape {image.shape}")
    return image


def _height_width(image: tf.Tensor) -> tuple[int | tf.Tensor, int | tf.Tensor]:
    """Static height and width where known, else the dynamic ones."""
    shape = tf.shape(image)
    h, w = image.shape[0], image.shape[1]
    return (shape[0] if h is None else h), (shape[1] if w is None else w)


def extract_tiles(image: tf.Tensor, patch_size: int, stride: int | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """All tiles of ``image [H, W, C]`` at the given stride, in row-major order.

    Gathers rows then columns (no ``tf.image.extract_patches``, which needs a Python stride).
    This holds every tile at once; for large images use :func:`reconstruct`, which extracts
    them chunk by chunk.

    Returns:
        ``tiles [N, p, p, C]`` (the image's dtype) and ``origins [N, 2]`` int32 (y, x).
    """
    image = _as_image(image)
    shape = tf.shape(image)
    stride, height, width = _checked(patch_size, stride, *_height_width(image))
    oy = _origins(height, patch_size, stride)
    ox = _origins(width, patch_size, stride)
    offsets = tf.range(patch_size)
    rows = tf.gather(image, oy[:, None] + offsets[None], axis=0)  # [ny, p, W, C]
    tiles = tf.gather(rows, ox[:, None] + offsets[None], axis=2)  # [ny, p, nx, p, C]
    tiles = tf.transpose(tiles, [0, 2, 1, 3, 4])  # [ny, nx, p, p, C]
    tiles = tf.reshape(tiles, tf.concat([[-1, patch_size, patch_size], shape[2:3]], axis=0))
    tiles = tf.ensure_shape(tiles, [None, patch_size, patch_size, image.shape[-1]])
    yy, xx = tf.meshgrid(oy, ox, indexing="ij")
    return tiles, tf.reshape(tf.stack([yy, xx], axis=-1), [-1, 2])


def average_tiles(
    tiles: tf.Tensor,
    origins_y: tf.Tensor,
    origins_x: tf.Tensor,
    height: int | tf.Tensor,
    width: int | tf.Tensor,
) -> tf.Tensor:
    """Place tiles ``[N, p, p, C]`` at their origins and average where they overlap.

    Args:
        tiles: ``[N, p, p, C]`` float tiles (e.g. reconstructions).
        origins_y: ``[N]`` int32 row of each tile's top-left pixel.
        origins_x: ``[N]`` int32 column of each tile's top-left pixel.
        height: Output height.
        width: Output width.

    Returns:
        ``[height, width, C]`` float32: each pixel the mean of the tiles covering it, 0 where
        no tile does.
    """
    tiles = tf.cast(tf.convert_to_tensor(tiles), tf.float32)
    patch_size = tiles.shape[1]
    if patch_size is None or tiles.shape[2] != patch_size:
        raise InputError(f"tiles must be square with a static size [N, p, p, C], got shape {tiles.shape}")
    indices = _pixel_indices(tf.cast(origins_y, tf.int32), tf.cast(origins_x, tf.int32), patch_size)
    dims = tf.stack([tf.cast(height, tf.int32), tf.cast(width, tf.int32), tf.shape(tiles)[-1]])
    total = tf.tensor_scatter_nd_add(tf.zeros(dims, tf.float32), indices, tiles)
    count = tf.tensor_scatter_nd_add(tf.zeros(dims[:2], tf.float32), indices, tf.ones(tf.shape(tiles)[:3]))
    return tf.math.divide_no_nan(total, count[..., None])


def coverage(height: int | tf.Tensor, width: int | tf.Tensor, patch_size: int, stride: int | tf.Tensor) -> tf.Tensor:
    """``[H, W, 1]`` float32: how many tiles cover each pixel (the product of the 1-D counts)."""
    stride, height, width = _checked(patch_size, stride, height, width)
    return _coverage(height, width, patch_size, stride)


def _coverage(height: tf.Tensor, width: tf.Tensor, patch_size: int, stride: tf.Tensor,
              weights: np.ndarray | None = None) -> tf.Tensor:
    """``[H, W, 1]``: the summed tile weights of every pixel (the tile count when ``weights`` is
    None). The 2-D weights are the outer product of 1-D ones, so the sum is the product of the
    per-axis sums."""
    def axis_counts(length: tf.Tensor) -> tf.Tensor:
        origins = _origins(length, patch_size, stride)
        covered = tf.reshape(origins[:, None] + tf.range(patch_size)[None], [-1])
        if weights is None:
            return tf.cast(tf.math.bincount(covered, minlength=length, maxlength=length), tf.float32)
        per_pixel = tf.tile(tf.constant(weights, tf.float32), tf.size(origins)[None])
        return tf.math.bincount(covered, weights=per_pixel, minlength=length, maxlength=length)

    return (axis_counts(height)[:, None] * axis_counts(width)[None, :])[..., None]


def _num_chunks(total: tf.Tensor, chunk_size: int) -> tf.Tensor:
    return (total + chunk_size - 1) // chunk_size


def map_in_chunks(fn: Callable[[tf.Tensor], tf.Tensor], tiles: tf.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tf.Tensor:
    """``fn`` applied to ``tiles`` in chunks of at most ``chunk_size`` along the first axis.

    A ``tf.while_loop`` (one chunk at a time) writes each chunk's result into a
    ``TensorArray``; the model's activations are bounded by the chunk, the output is
    ``tf.concat`` of all chunk results, float32. ``fn`` must map ``[T, ...]`` to ``[T, ...]``.
    """
    check_chunk_size(chunk_size)  # int32 tile counts stay exact
    tiles = tf.convert_to_tensor(tiles)
    count = tf.shape(tiles)[0]
    chunks = _num_chunks(count, chunk_size)
    array = tf.TensorArray(tf.float32, size=chunks, infer_shape=False, element_shape=None)

    def body(i: tf.Tensor, array: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
        chunk = tiles[i * chunk_size : (i + 1) * chunk_size]
        return i + 1, array.write(i, tf.cast(fn(chunk), tf.float32))

    _, array = tf.while_loop(lambda i, _: i < chunks, body, (tf.constant(0), array), parallel_iterations=1)
    return array.concat()


def reconstruct(
    model_fn: Callable[[tf.Tensor], tf.Tensor],
    image: tf.Tensor,
    patch_size: int,
    stride: int | tf.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    samples: int | None = None,
    blend: str = DEFAULT_BLEND,
) -> tf.Tensor:
    """Reconstruct a whole image by strided tiling, chunked model calls and overlap averaging.

    Args:
        model_fn: Maps tiles ``[T, p, p, C]`` float32 (``T <= chunk_size``) to reconstructions of
            the same shape, or, with ``samples = N``, to ``[N, T, p, p, C]`` (e.g. a VAE's
            posterior samples).
        image: ``[H, W, C]`` float with ``H, W >= patch_size``; cast to float32.
        patch_size: Tile side p.
        stride: Tile stride (Python int or int32 scalar tensor), ``1 <= stride <= p``.
        chunk_size: Tiles per model call; bounds the memory of one step.
        samples: ``None`` for a deterministic model, else the number of samples per tile.
        blend: How overlapping tiles are combined (:data:`BLENDS`): ``"mean"`` (the paper's
            plain average) or ``"gaussian"`` (normalised weighted overlap-add with
            :func:`blend_weights`).

    Returns:
        ``[H, W, C]`` (or ``[N, H, W, C]``) float32: every pixel the (weighted) mean of the
        reconstructions of all tiles that cover it.

    Raises:
        ValueError: stride outside ``[1, p]``, image smaller than the patch, or a bad chunk
            size or blend, when known while tracing; the same checks run in the graph otherwise.
    """
    return _reconstruct(model_fn, image, patch_size, stride, chunk_size, samples, [blend])[0]


def reconstruct_blends(
    model_fn: Callable[[tf.Tensor], tf.Tensor],
    image: tf.Tensor,
    patch_size: int,
    stride: int | tf.Tensor,
    blends: Sequence[str] = BLENDS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, tf.Tensor]:
    """:func:`reconstruct` under several blends from one pass of the model over the tiles.

    The tiles and their reconstructions do not depend on the blend, only their weights do, so
    one model call per chunk serves every blend (``tfssim-tune`` compares them this way).

    Returns:
        ``{blend: [H, W, C] float32}``, each equal to ``reconstruct(..., blend=blend)``.
    """
    blends = list(dict.fromkeys(blends))
    if not blends:
        raise InputError("no tile blends given")
    return dict(zip(blends, _reconstruct(model_fn, image, patch_size, stride, chunk_size, None, blends)))


def _reconstruct(model_fn: Callable[[tf.Tensor], tf.Tensor], image: tf.Tensor, patch_size: int,
                 stride: int | tf.Tensor, chunk_size: int, samples: int | None, blends: list[str]) -> list[tf.Tensor]:
    """:func:`reconstruct` for each of ``blends`` (one model pass): the blends ride along as
    extra channels of the running sum, as the VAE's samples do."""
    check_chunk_size(chunk_size)  # int32 tile counts stay exact
    for blend in blends:
        check_blend(blend)
    image = tf.cast(_as_image(image), tf.float32)
    shape = tf.shape(image)
    stride, height, width = _checked(patch_size, stride, *_height_width(image))
    p = patch_size
    channels = image.shape[-1] if image.shape[-1] is not None else shape[2]
    depth = channels * (samples or 1)  # samples ride along as extra channels while summing
    weights = {b: blend_weights(p, b) for b in blends}
    # Per blend, the [p, p, 1] weight of each tile pixel (None: all ones, nothing to multiply).
    tile_weights = [None if b == "mean" else tf.constant(np.outer(weights[b], weights[b])[..., None]) for b in blends]
    oy = _origins(height, p, stride)
    ox = _origins(width, p, stride)
    ny, nx = tf.size(oy), tf.size(ox)
    # Each step takes a block of `block_rows` tile rows x `block_cols` tile columns, at most
    # `chunk_size` tiles: a whole tile row (several when they are short), or a part of one.
    block_cols = tf.minimum(nx, chunk_size)
    block_rows = tf.maximum(1, chunk_size // block_cols)
    col_blocks = (nx + block_cols - 1) // block_cols
    steps = (ny + block_rows - 1) // block_rows * col_blocks
    offsets = tf.range(p)
    tile_shape = [None, p, p, image.shape[-1]]
    all_depth = depth * len(blends)

    def body(step: tf.Tensor, total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        row0 = step // col_blocks * block_rows
        col0 = step % col_blocks * block_cols
        rows = oy[row0 : row0 + block_rows][:, None] + offsets[None]  # [R, p] image rows
        cols = ox[col0 : col0 + block_cols][:, None] + offsets[None]  # [K, p] image columns
        r, k = tf.shape(rows)[0], tf.shape(cols)[0]
        # Tiles by two gathers: the bands of rows, then the columns of each tile.
        tiles = tf.gather(tf.gather(image, rows), cols, axis=2)  # [R, p, K, p, C]
        tiles = tf.reshape(tf.transpose(tiles, [0, 2, 1, 3, 4]), tf.stack([r * k, p, p, channels]))
        recon = tf.cast(model_fn(tf.ensure_shape(tiles, tile_shape)), tf.float32)
        if samples is not None:
            recon = tf.transpose(recon, [1, 2, 3, 0, 4])  # [T, p, p, N, C]
        recon = tf.reshape(recon, tf.stack([r * k, p, p, depth]))
        recon = tf.concat([recon if w is None else recon * w for w in tile_weights], axis=-1)
        # Overlap-add: sum the tiles of each band along the columns ([W, R, p, D]), then add
        # the bands into the running sum by rows; both scatters move whole rows of pixels.
        recon = tf.reshape(recon, tf.stack([r, k, p, p, all_depth]))
        recon = tf.reshape(tf.transpose(recon, [1, 3, 0, 2, 4]), tf.stack([k * p, r, p, all_depth]))
        bands = tf.scatter_nd(tf.reshape(cols, [-1, 1]), recon, tf.stack([width, r, p, all_depth]))
        bands = tf.reshape(tf.transpose(bands, [1, 2, 0, 3]), tf.stack([r * p, width, all_depth]))
        return step + 1, tf.tensor_scatter_nd_add(total, tf.reshape(rows, [-1, 1]), bands)

    total = tf.zeros(tf.stack([height, width, all_depth]), tf.float32)
    _, total = tf.while_loop(lambda step, _: step < steps, body, (tf.constant(0), total), parallel_iterations=1)
    out = []
    for i, blend in enumerate(blends):
        part = total if len(blends) == 1 else total[..., i * depth:(i + 1) * depth]
        part = part / _coverage(height, width, p, stride, None if blend == "mean" else weights[blend])
        if samples is not None:
            part = tf.transpose(tf.reshape(part, tf.stack([height, width, samples, channels])), [2, 0, 1, 3])
        out.append(part)
    return out
