"""Residual (anomaly) maps of whole images from the input and its averaged reconstruction.

* ``ssim`` models: ``1 - SSIM`` map (and ``1 - l``, ``1 - c``, ``1 - s``) with the parameters the
  model was trained with, full-size via mirror padding (:func:`tfssim.core.ssim.ssim_maps`,
  ``padding="same"``).
* ``l2`` and ``fm`` (feature-matching) models: the squared error.
* ``vae``: ``-log`` of the per-pixel reconstruction probability over N posterior samples, each
  sample's tiles averaged over the overlaps first.

All maps are ``[H, W]`` float32, averaged over channels. :func:`smooth_map` optionally blurs
them with a Gaussian (``map_sigma``; not in the paper, off by default): a residual map is noisy
at the scale of single fibres or grains, a defect is not. :func:`anomaly_maps` runs the whole
pipeline (tiling, chunked model calls, overlap averaging, residual) for one image without
exporting; the exported serving signatures call this same function inside their graph
(``tfssim.export``), so there is one implementation.

Example:
    >>> maps = anomaly_maps(model, image, "ssim", stride=30)   # image [H, W, C] in [0, 1]
    >>> maps["anomaly_map"].shape                             # [H, W]
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import tfssim._tensorflow  # noqa: F401,I001 - before keras: without TensorFlow, an ImportError naming the install command
import keras
import numpy as np
import tensorflow as tf

from tfssim.core import resize, tiling
from tfssim.core.map_formula import MapFormula
from tfssim.core.ssim import SSIMParams, ssim_maps
from tfssim.core.tiling_params import (
    DEFAULT_BLEND,
    DEFAULT_BORDER,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAP_SIGMA,
    DEFAULT_STRIDE,
    check_blend,
    check_border,
)
from tfssim.errors import InputError
from tfssim.models.registry import get_spec, kind_of
from tfssim.models.vae import VariationalAutoencoder, reconstruction_nll

__all__ = [
    "RESIDUALS",
    "border_padding",
    "pad_border",
    "SSIM_KEYS",
    "ssim_residual_maps",
    "l2_residual_map",
    "vae_residual_map",
    "residual_of",
    "model_patch_size",
    "smoothing_radius",
    "validate_map_sigma",
    "smooth_map",
    "second_term",
    "anomaly_maps",
]

RESIDUALS = ("ssim", "l2", "vae")
# The keyword arguments of tfssim.core.ssim.ssim_maps that describe the SSIM itself.
SSIM_KEYS = SSIMParams.keys()


def residual_of(kind: str) -> str:
    """The residual map a model kind is scored with: ``ssim``, ``l2`` (also for ``fm``) or ``vae``."""
    if kind in RESIDUALS:
        return kind
    return get_spec(kind).residual


def _batched(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, bool]:
    x = tf.convert_to_tensor(x)
    y = tf.convert_to_tensor(y)
    if x.shape.rank not in (3, 4):
        raise InputError(f"expected images [H, W, C] or [B, H, W, C], got shape {x.shape}")
    if x.shape.rank == 3:
        return x[None], y[None], False
    return x, y, True


def ssim_residual_maps(x: tf.Tensor, reconstruction: tf.Tensor, params: SSIMParams | dict[str, Any] | None = None,
                       **ssim_kwargs: Any) -> dict[str, tf.Tensor]:
    """``1 -`` the SSIM, luminance, contrast and structure maps, full-size, averaged over channels.

    Args:
        x: Images ``[H, W, C]`` or ``[B, H, W, C]`` in ``[0, data_range]``.
        reconstruction: Their reconstructions, same shape.
        params: The SSIM's :class:`tfssim.core.ssim.SSIMParams` (or a dict of its fields); default
            the paper's.
        **ssim_kwargs: Fields of :class:`tfssim.core.ssim.SSIMParams`, overriding ``params``.

    Returns:
        ``anomaly_map`` (``1 - SSIM``), ``luminance_map``, ``contrast_map``, ``structure_map``:
        float32 ``[H, W]`` (or ``[B, H, W]``), computed with ``padding="same"`` (mirror padding).
        The Gaussian blur runs as two 1-D convolutions: O(HWK) work and memory, and the fastest
        blur for whole images here (700x1024: 32 ms against 71 ms with whole-axis band-matrix
        matmuls; 1536x1536: 113 ms against 344 ms; best of 5 on 2 CPU cores).
    """
    params = SSIMParams.of(params, **ssim_kwargs)  # an unknown key raises here, before any work
    x, reconstruction, batched = _batched(x, reconstruction)
    maps = ssim_maps(x, reconstruction, params, padding="same", blur="conv")
    out = {
        "anomaly_map": 1.0 - tf.reduce_mean(maps.ssim, axis=-1),
        "luminance_map": 1.0 - tf.reduce_mean(maps.luminance, axis=-1),
        "contrast_map": 1.0 - tf.reduce_mean(maps.contrast, axis=-1),
        "structure_map": 1.0 - tf.reduce_mean(maps.structure, axis=-1),
    }
    return out if batched else {k: v[0] for k, v in out.items()}


def l2_residual_map(x: tf.Tensor, reconstruction: tf.Tensor) -> tf.Tensor:
    """Squared error averaged over channels: ``[H, W]`` (or ``[B, H, W]``) float32."""
    return tf.reduce_mean(tf.square(tf.cast(x, tf.float32) - tf.cast(reconstruction, tf.float32)), axis=-1)


def vae_residual_map(x: tf.Tensor, samples: tf.Tensor, observation_std: float) -> tf.Tensor:
    """``-log p(x)`` per pixel of ``x [H, W, C]`` from whole-image sample reconstructions ``[N, H, W, C]``."""
    return reconstruction_nll(tf.convert_to_tensor(x)[None], tf.convert_to_tensor(samples)[:, None], observation_std)[0]


def smoothing_radius(sigma: float) -> int:
    """Half-width of :func:`smooth_map`'s kernel: ``int(4 * sigma + 0.5)`` pixels, the truncation
    of ``scipy.ndimage.gaussian_filter`` (the kernel has ``2 * radius + 1`` taps)."""
    return int(4.0 * float(sigma) + 0.5)


def validate_map_sigma(sigma: float, patch_size: int | None = None) -> float:
    """Return ``sigma`` as a float; raise ``ValueError`` unless it is finite and ``>= 0`` and,
    given the patch size (the smallest image a model scores), its kernel fits inside a patch."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(sigma) or sigma < 0:
        raise InputError(f"map smoothing sigma must be a finite number >= 0 (0 = no smoothing), got {sigma!r}")
    sigma = float(sigma)
    if patch_size is not None and smoothing_radius(sigma) >= patch_size:
        raise InputError(
            f"map smoothing sigma {sigma:g} needs a {smoothing_radius(sigma)}-pixel kernel radius, which does not fit "
            f"the {patch_size}-pixel patch (the smallest image scored); use sigma < {(patch_size - 0.5) / 4:g}"
        )
    return sigma


def smooth_map(anomaly_map: tf.Tensor, sigma: float) -> tf.Tensor:
    """Gaussian blur of an anomaly map, with mirrored borders.

    The same filter as ``scipy.ndimage.gaussian_filter(map, sigma, mode="reflect")`` (kernel
    truncated at 4 sigma): float32 ``[H, W]`` or ``[B, H, W]`` in, same shape out. ``sigma == 0``
    returns the map unchanged. Both sides must exceed :func:`smoothing_radius`.

    Args:
        anomaly_map: Map(s) ``[H, W]`` or ``[B, H, W]``.
        sigma: Standard deviation of the Gaussian in pixels (``>= 0``).

    Returns:
        The smoothed map(s), float32, same shape.

    Example:
        >>> smooth_map(tf.random.uniform([64, 64]), 2.0).shape
        TensorShape([64, 64])
    """
    sigma = validate_map_sigma(sigma)
    x = tf.cast(tf.convert_to_tensor(anomaly_map), tf.float32)
    if sigma == 0:
        return x
    if x.shape.rank not in (2, 3):
        raise InputError(f"anomaly map must be [H, W] or [B, H, W], got shape {x.shape}")
    radius = smoothing_radius(sigma)
    sides = x.shape[-2:]
    if any(side is not None and side <= radius for side in sides):
        raise InputError(
            f"anomaly map of shape {x.shape} is too small for smoothing sigma {sigma:g} "
            f"(kernel radius {radius}); use a smaller sigma"
        )
    batched = x.shape.rank == 3
    x = x if batched else x[None]
    x = tf.pad(x, [[0, 0], [radius, radius], [radius, radius]], mode="SYMMETRIC")
    taps = np.exp(-0.5 * ((np.arange(2 * radius + 1) - radius) / sigma) ** 2)
    taps = [float(t) for t in taps / taps.sum()]
    x = _shifted_sum(_shifted_sum(x, taps, axis=1), taps, axis=2)
    return x if batched else x[0]


def _shifted_sum(x: tf.Tensor, taps: list[float], axis: int) -> tf.Tensor:
    """Valid 1-D correlation of ``[B, H, W]`` ``x`` with ``taps`` along ``axis`` (1 or 2), as a sum
    of shifted slices. Not ``tf.nn.conv2d``: in an exported graph on CPU (TensorFlow 2.21), oneDNN's
    convolution with a long constant filter (97 taps for sigma 12) on a 700x1024 map asks for a
    16 GB scratchpad, fails, and aborts the process (``Check failed: dtype() == expected_dtype``)."""
    n = len(taps)
    size = tf.shape(x)[axis] - (n - 1)

    def shifted(i: int) -> tf.Tensor:
        return x[:, i:i + size, :] if axis == 1 else x[:, :, i:i + size]

    # The taps are symmetric: add each mirrored pair of slices before weighting it. A running
    # sum (not tf.add_n) keeps the memory at a few maps, whatever the kernel length.
    out = taps[n // 2] * shifted(n // 2)
    for i in range(n // 2):
        out += taps[i] * (shifted(i) + shifted(n - 1 - i))
    return out


def second_term(x: tf.Tensor, reconstruction: tf.Tensor, formula: MapFormula | dict[str, Any],
                ssim_params: SSIMParams | dict[str, Any] | None = None) -> tf.Tensor:
    """The second term of a map formula (:mod:`tfssim.core.map_formula`), ``[H, W]`` (or ``[B, H, W]``) float32.

    * ``"ssim_lowfreq"``: ``|G_s * mean_c(x - reconstruction)|``, the blur of :func:`smooth_map`
      at ``formula.lowfreq_sigma``;
    * ``"ssim_multiscale"``: ``1 - SSIM`` with :meth:`MapFormula.second_ssim` of ``ssim_params``.

    Args:
        x: Images ``[H, W, C]`` or ``[B, H, W, C]`` in ``[0, 1]``.
        reconstruction: Their reconstructions, same shape.
        formula: A formula with a second term.
        ssim_params: The anomaly map's SSIM (default the paper's).

    Returns:
        The term, full-size.
    """
    formula = MapFormula.of(formula)
    if formula.lowfreq_sigma is not None:
        x, reconstruction, batched = _batched(x, reconstruction)
        diff = tf.reduce_mean(tf.cast(x, tf.float32) - tf.cast(reconstruction, tf.float32), axis=-1)
        term = tf.abs(smooth_map(diff, formula.lowfreq_sigma))
        return term if batched else term[0]
    if formula.window_size is not None:
        return ssim_residual_maps(x, reconstruction, formula.second_ssim(ssim_params))["anomaly_map"]
    raise InputError(f"map formula {formula.name!r} has no second term")


def border_padding(patch_size: int, border: str) -> int:
    """Pixels added on each side of the image by ``border``: ``patch_size // 2`` for
    ``"reflect"`` (then every image pixel is at most a quarter patch from some tile's centre
    row and column at the paper's stride), 0 for ``"none"``."""
    return patch_size // 2 if check_border(border) == "reflect" else 0


def pad_border(image: np.ndarray, padding: int) -> np.ndarray:
    """``image [..., H, W, C]`` mirrored outward by ``padding`` pixels on each side, as the served
    graph does for ``border="reflect"``: ``numpy.pad(mode="reflect")`` (the edge pixel is not
    repeated), which is ``tf.pad(mode="REFLECT")``."""
    image = np.asarray(image)
    if not padding:
        return image
    widths = [(0, 0)] * (image.ndim - 3) + [(padding, padding), (padding, padding), (0, 0)]
    return np.pad(image, widths, mode="reflect")


def model_patch_size(model: keras.Model) -> int:
    """The square input side of a tfssim model (static)."""
    size = getattr(model, "patch_size", None)
    if size is None and getattr(model, "inputs", None):
        size = model.inputs[0].shape[1]
    if size is None:
        raise InputError(f"cannot tell the patch size of model {model.name!r}; pass patch_size")
    return int(size)


def anomaly_maps(
    model: keras.Model,
    image: tf.Tensor,
    kind: str | None = None,
    patch_size: int | None = None,
    stride: int | tf.Tensor = DEFAULT_STRIDE,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ssim_kwargs: SSIMParams | dict[str, Any] | None = None,
    vae_samples: int | None = None,
    vae_seed: int = 0,
    jit_compile: bool = False,
    map_sigma: float = DEFAULT_MAP_SIGMA,
    scale: float = 1.0,
    image_size: tuple[int, int] | None = None,
    border: str = DEFAULT_BORDER,
    blend: str = DEFAULT_BLEND,
    map_formula: MapFormula | dict[str, Any] | str | None = None,
) -> dict[str, tf.Tensor]:
    """Reconstruction and anomaly maps of one whole image, by strided tiling and averaging.

    Args:
        model: A tfssim autoencoder (``[B, p, p, C] -> [B, p, p, C]``) or VAE.
        image: ``[H, W, C]`` float in ``[0, 1]`` with ``H, W >= p``.
        kind: ``"ssim"``, ``"l2"``, ``"vae"`` or ``"fm"`` (default: :func:`tfssim.models.kind_of`).
        patch_size: Tile side; default the model's input size.
        stride: Tile stride, ``1 <= stride <= p`` (the paper: 30 for 128).
        chunk_size: Tiles per model call (bounds memory).
        ssim_kwargs: SSIM parameters of the anomaly map for SSIM models, an
            :class:`tfssim.core.ssim.SSIMParams` or a dict of its fields (default: the paper's).
        vae_samples: Posterior samples per tile for the VAE (default: the model's ``num_samples``).
        vae_seed: Seed of the VAE's sampling (a fixed seed gives the same map every call).
        jit_compile: Compile the model call on each chunk with XLA (a ``tf.function`` made per
            call: meant for use inside a traced function such as the exported signatures).
        map_sigma: Gaussian smoothing of every map (:func:`smooth_map`); 0 (default, the paper)
            leaves them as computed. In pixels of ``image``: with resizing, the maps are
            smoothed after they are resized back.
        scale: Resize ``image`` by this factor (``0 < scale <= 1``; :mod:`tfssim.core.resize`) first,
            then tile, reconstruct and score at that size, and resize the reconstruction and
            every map back to ``[H, W]`` (the model was trained with ``--scale``). 1: none.
        image_size: ``(height, width)`` to resize ``image`` to instead (``--image-size``).
        border: ``"none"`` (the paper) or ``"reflect"``: mirror the (resized) image outward by
            half a patch (:func:`border_padding`), tile, reconstruct and score that, and crop
            the reconstruction and every map back (before any smoothing), so that border pixels
            are reconstructed by tile centres and scored with SSIM windows over real
            (mirrored) content. Not free: on an oriented texture the mirrored strip is a
            pattern the model never saw.
        blend: How overlapping tiles are combined (:data:`tfssim.core.tiling_params.BLENDS`): ``"mean"``
            (the paper) or ``"gaussian"`` (:func:`tfssim.core.tiling.blend_weights`).
        map_formula: How ``anomaly_map`` is made (:class:`tfssim.core.map_formula.MapFormula` or a
            record of one): ``None`` / ``"ssim"`` is ``1 - SSIM`` (the paper); the
            others combine it with a second term (:func:`second_term`) computed on the same
            (mirrored) image, before cropping and smoothing. SSIM models only.

    Returns:
        Float32 tensors: ``reconstruction [H, W, C]``, ``anomaly_map [H, W]`` and, for SSIM
        models, ``luminance_map``, ``contrast_map``, ``structure_map`` (``1 -`` each component
        of the first SSIM; the formula changes ``anomaly_map`` only).
        For the VAE the reconstruction is the mean of the averaged samples.
    """
    residual = residual_of(kind or kind_of(model))
    patch_size = patch_size or model_patch_size(model)
    map_sigma = validate_map_sigma(map_sigma, patch_size)
    formula = MapFormula.of(map_formula).check_model(residual, patch_size)
    tiles = _Tiling(patch_size, stride, chunk_size, check_border(border), check_blend(blend), formula)
    if resize.is_identity(scale, image_size):
        maps = _maps(model, image, residual, tiles, ssim_kwargs, vae_samples, vae_seed, jit_compile)
    else:
        maps = _resized_maps(model, image, residual, tiles, ssim_kwargs, vae_samples, vae_seed, jit_compile, scale,
                             image_size)
    if map_sigma == 0:
        return maps
    keys = [k for k in maps if k.endswith("_map")]
    # One batched blur of all maps: a quarter of the graph and of the work of four calls.
    smoothed = tf.unstack(smooth_map(tf.stack([maps[k] for k in keys]), map_sigma))
    return {**maps, **dict(zip(keys, smoothed))}


@dataclasses.dataclass(frozen=True)
class _Tiling:
    """How :func:`anomaly_maps` tiles an image: patch, stride, chunk, border and blend."""

    patch_size: int
    stride: int | tf.Tensor
    chunk_size: int
    border: str
    blend: str
    formula: MapFormula


def _resized_maps(model: keras.Model, image: tf.Tensor, residual: str, tiles: _Tiling,
                  ssim_kwargs: SSIMParams | dict[str, Any] | None, vae_samples: int | None,
                  vae_seed: int, jit_compile: bool, scale: float,
                  image_size: tuple[int, int] | None) -> dict[str, tf.Tensor]:
    """:func:`_maps` of ``image`` resized by ``scale`` / to ``image_size``, every output resized back."""
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    small = resize.resize_to(image, resize.check_scale(scale), resize.check_image_size(image_size))
    maps = _maps(model, small, residual, tiles, ssim_kwargs, vae_samples, vae_seed, jit_compile)
    size = tf.shape(image)[:2]
    out = {"reconstruction": resize.resize_image(maps["reconstruction"], size)}
    # The maps stacked as channels: one resize (the same filter per channel), one pass.
    keys = [k for k in maps if k != "reconstruction"]
    back = resize.resize_image(tf.stack([maps[k] for k in keys], axis=-1), size)
    out.update({k: back[..., i] for i, k in enumerate(keys)})
    return out


def _maps(model: keras.Model, image: tf.Tensor, residual: str, tiles: _Tiling,
          ssim_kwargs: SSIMParams | dict[str, Any] | None, vae_samples: int | None, vae_seed: int,
          jit_compile: bool) -> dict[str, tf.Tensor]:
    """:func:`anomaly_maps` before smoothing (and after resizing)."""
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    pad = border_padding(tiles.patch_size, tiles.border)
    if not pad:
        return _tiled_maps(model, image, residual, tiles, ssim_kwargs, vae_samples, vae_seed, jit_compile)
    # The image itself must hold a patch (as without the border), which also keeps REFLECT's
    # padding below each side.
    image = tiling.checked_image(image, tiles.patch_size, tiles.stride)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    maps = _tiled_maps(model, padded, residual, tiles, ssim_kwargs, vae_samples, vae_seed, jit_compile)
    return {k: v[..., pad:-pad, pad:-pad, :] if k == "reconstruction" else v[..., pad:-pad, pad:-pad]
            for k, v in maps.items()}


def _tiled_maps(model: keras.Model, image: tf.Tensor, residual: str, tiles: _Tiling,
                ssim_kwargs: SSIMParams | dict[str, Any] | None, vae_samples: int | None, vae_seed: int,
                jit_compile: bool) -> dict[str, tf.Tensor]:
    """The reconstruction and raw maps of ``image`` as tiled (no border handling)."""
    patch_size, stride, chunk_size = tiles.patch_size, tiles.stride, tiles.chunk_size
    if residual == "vae":
        if not isinstance(model, VariationalAutoencoder):
            raise InputError("the 'vae' residual needs a tfssim VariationalAutoencoder")
        n = int(vae_samples or model.num_samples)
        fn = lambda t: model.sample_reconstructions(t, n, seed=vae_seed)  # noqa: E731
    else:
        fn = lambda t: model(t, training=False)  # noqa: E731
    if jit_compile:
        fn = tf.function(fn, jit_compile=True)
    if residual == "vae":
        samples = tiling.reconstruct(fn, image, patch_size, stride, chunk_size, samples=n, blend=tiles.blend)
        return {"reconstruction": tf.reduce_mean(samples, axis=0),
                "anomaly_map": vae_residual_map(image, samples, model.observation_std)}
    recon = tiling.reconstruct(fn, image, patch_size, stride, chunk_size, blend=tiles.blend)
    if residual == "ssim":
        maps = {"reconstruction": recon, **ssim_residual_maps(image, recon, ssim_kwargs)}
        if not tiles.formula.plain:
            second = second_term(image, recon, tiles.formula, ssim_kwargs)
            maps["anomaly_map"] = tiles.formula.combine_maps(maps["anomaly_map"], second)
        return maps
    return {"reconstruction": recon, "anomaly_map": l2_residual_map(image, recon)}
