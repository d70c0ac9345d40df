"""Per-pixel structural similarity (SSIM) and its luminance, contrast and structure maps.

SSIM (Wang et al. 2004) compares two images window by window. With Gaussian-weighted local
means ``mu``, variances ``sigma**2`` and covariance ``sigma_xy`` it is the product of

* luminance ``l = (2 mu_x mu_y + C1) / (mu_x**2 + mu_y**2 + C1)``
* contrast  ``c = (2 sigma_x sigma_y + C2) / (sigma_x**2 + sigma_y**2 + C2)``
* structure ``s = (sigma_xy + C3) / (sigma_x sigma_y + C3)``

as ``SSIM = l**alpha * c**beta * s**gamma`` with ``C1 = (K1 L)**2``, ``C2 = (K2 L)**2``,
``C3 = C2 / 2`` and ``L`` the data range. Bergmann et al. use ``K1 = 0.01``, ``K2 = 0.03``,
``alpha = beta = gamma = 1`` and an 11x11 window; those are the defaults here, and with them
the result equals ``tf.image.ssim`` (the same Gaussian window, sigma 1.5).

Border handling (``padding``):

* ``"valid"`` (default, as ``tf.image.ssim``): only windows that lie wholly inside the image;
  maps are ``(H - K + 1) x (W - K + 1)``.
* ``"same"``: the statistics are computed on the image padded by ``K // 2`` pixels with
  mirror padding that repeats the edge pixel (``keras.ops.pad(mode="symmetric")``, the same as
  SciPy's ``mode="reflect"`` that scikit-image uses for ``full=True``); maps are ``H x W``.
  Zero padding would be wrong here: it invents dark borders and drops SSIM by up to 0.9.

Everything is written in ``keras.ops``, so the same code runs in TensorFlow's graph (training,
the exported serving signatures) and on the JAX and PyTorch backends; the parameters of one
SSIM are one :class:`SSIMParams`. All arithmetic runs in float32 whatever the inputs' dtype (in float16 the map is off by up to
0.36), so the functions are safe under a ``mixed_float16`` policy. Everything is
differentiable; the Gaussian blur is separable and runs either as two band-matrix matmuls
(fast for training patches) or as two 1-D convolutions (memory-light for large images).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import keras
import numpy as np
from keras import ops

# The parameter set lives in a keras-free module (the metadata reads it without TensorFlow).
from tfssim.core.ssim_params import WEIGHTINGS, SSIMParams, validate_window
from tfssim.errors import InputError

__all__ = [
    "SSIMParams",
    "SSIMMaps",
    "gaussian_kernel",
    "window_kernel",
    "WEIGHTINGS",
    "gaussian_blur",
    "ssim_maps",
    "ssim_map",
    "ssim",
    "ms_ssim",
    "validate_window",
]

# Above this many pixels per side the band-matrix blur costs more than 1-D convolutions.
_MATMUL_MAX_SIDE = 256
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


class SSIMMaps(NamedTuple):
    """Per-pixel SSIM and its three component maps, each ``[B, H', W', C]`` float32."""

    ssim: Any
    luminance: Any
    contrast: Any
    structure: Any


def gaussian_kernel(window_size: int = 11, sigma: float = 1.5) -> Any:
    """Normalised 1-D Gaussian window of ``window_size`` taps, float32."""
    return ops.convert_to_tensor(_window_taps(window_size, sigma, "gaussian"))


def window_kernel(window_size: int = 11, sigma: float = 1.5, weighting: str = "gaussian") -> Any:
    """The normalised 1-D window: :func:`gaussian_kernel`, or ``1 / K`` taps for ``"uniform"``
    (whose separable product is the K x K box of plain patch means; ``sigma`` is then unused)."""
    return ops.convert_to_tensor(_window_taps(window_size, sigma, weighting))


def _window_taps(window_size: int, sigma: float, weighting: str) -> np.ndarray:
    """The 1-D window as a NumPy float32 array (a constant in every backend's graph)."""
    validate_window(window_size, sigma, weighting)
    if weighting == "uniform":
        return np.full(window_size, 1.0 / window_size, np.float32)
    coords = np.arange(window_size, dtype=np.float32) - np.float32((window_size - 1) / 2.0)
    g = np.exp(np.float32(-0.5) * np.square(coords / np.float32(sigma)))
    return (g / g.sum()).astype(np.float32)


def _band_matrix(kernel: np.ndarray, length: Any) -> Any:
    """``[length - K + 1, length]`` matrix M with ``M[i, i + k] = kernel[k]``: a valid 1-D blur."""
    k = kernel.shape[0]
    if isinstance(length, int):  # static side: a NumPy constant, no ops in the graph
        m = np.zeros((length - k + 1, length), np.float32)
        for i in range(k):
            m[np.arange(length - k + 1), np.arange(length - k + 1) + i] = kernel[i]
        return ops.convert_to_tensor(m)
    rows = ops.expand_dims(ops.arange(length - k + 1), 1)
    cols = ops.expand_dims(ops.arange(length), 0)
    offset = cols - rows
    inside = ops.logical_and(offset >= 0, offset < k)
    return ops.where(inside, ops.take(ops.convert_to_tensor(kernel), ops.clip(offset, 0, k - 1)), 0.0)


def _blur_matmul(x: Any, kernel: np.ndarray) -> Any:
    # Batched matmuls on [B, C, W, H] with the band matrices on the right: on TensorFlow's CPU
    # kernels twice as fast (loss + gradient) as the same contraction written as two einsums.
    shape = ops.shape(x)
    m_h = ops.transpose(_band_matrix(kernel, shape[1]))  # [H, H']
    m_w = ops.transpose(_band_matrix(kernel, shape[2]))  # [W, W']
    x = ops.matmul(ops.transpose(x, (0, 3, 2, 1)), m_h)  # [B, C, W, H']
    x = ops.matmul(ops.swapaxes(x, 2, 3), m_w)  # [B, C, H', W']
    return ops.transpose(x, (0, 2, 3, 1))


def _blur_conv(x: Any, kernel: np.ndarray) -> Any:
    # Two 1-D depthwise convolutions, one kernel per channel: on TensorFlow's CPU kernels 2.6x
    # faster than folding channels into the batch for one plain convolution (700x1024x5: 15 ms
    # against 39 ms), and no transposes.
    k, c = kernel.shape[0], x.shape[3]
    rows = np.tile(kernel.reshape(k, 1, 1, 1), (1, 1, c, 1))
    cols = np.tile(kernel.reshape(1, k, 1, 1), (1, 1, c, 1))
    x = ops.depthwise_conv(x, ops.convert_to_tensor(rows), strides=1, padding="valid")
    return ops.depthwise_conv(x, ops.convert_to_tensor(cols), strides=1, padding="valid")


def _blur_planes_matmul(images: list[Any], kernel: np.ndarray) -> list[Any]:
    """The valid separable blur of each of several ``[B, H, W, C]`` tensors, two matmuls each.

    Each tensor's channel planes ``[B * C, H, W]`` are blurred along the width by one matmul
    with the band matrix on the right and along the height by one with the band matrix on the
    left (broadcast over the planes): no transposes for one channel (``reshape`` only), where
    the ``[B, H, W, 5C]`` formulation of :func:`_blur_matmul` needs three per blur and its
    gradient as many again. Not stacked into one blur: the concatenation (and its gradient's
    split) cost more than the four extra matmul calls save (loss + gradient, batch 32 of
    128x128 on 2 cores: 40 ms separate, 55 ms stacked, 71 ms as :func:`_blur_matmul`).
    The result equals :func:`_blur_matmul`'s up to float32 rounding of the matmul kernels.
    """
    shape = ops.shape(images[0])
    h, w, c = shape[1], shape[2], images[0].shape[3]
    m_w = ops.transpose(_band_matrix(kernel, w))  # [W, W']
    m_h = _band_matrix(kernel, h)  # [H', H]
    out_h, out_w = h - kernel.shape[0] + 1, w - kernel.shape[0] + 1
    blurred = []
    for v in images:
        if c != 1:
            v = ops.transpose(v, (0, 3, 1, 2))  # [B, C, H, W]
        v = ops.matmul(m_h, ops.matmul(ops.reshape(v, (-1, h, w)), m_w))  # [B * C, H', W']
        if c == 1:
            blurred.append(ops.expand_dims(v, -1))
        else:
            blurred.append(ops.transpose(ops.reshape(v, (-1, c, out_h, out_w)), (0, 2, 3, 1)))
    return blurred


def _blur_method(x: Any, method: str) -> str:
    """``"matmul"`` or ``"conv"`` for ``method`` (``"auto"`` decides by the static sides)."""
    if method == "auto":
        h, w = x.shape[1], x.shape[2]
        return "matmul" if h is not None and w is not None and max(h, w) <= _MATMUL_MAX_SIDE else "conv"
    if method in ("matmul", "conv"):
        return method
    raise InputError(f"blur method must be 'auto', 'matmul' or 'conv', got {method!r}")


def gaussian_blur(x: Any, kernel: Any, method: str = "auto") -> Any:
    """Valid separable blur of ``[B, H, W, C]`` float32 ``x`` with a 1-D ``kernel``.

    ``method`` is ``"matmul"`` (band matrices; fastest for patches up to a few hundred pixels),
    ``"conv"`` (two 1-D convolutions; O(HWK) memory, for whole images) or ``"auto"``, which
    picks ``"matmul"`` when both static spatial sides are at most 256 and ``"conv"`` otherwise.
    The channel count must be static.
    """
    kernel = np.asarray(keras.ops.convert_to_numpy(kernel) if not isinstance(kernel, np.ndarray) else kernel,
                        np.float32)
    if method == "auto":
        h, w = x.shape[1], x.shape[2]
        method = "matmul" if h is not None and w is not None and max(h, w) <= _MATMUL_MAX_SIDE else "conv"
    if method == "matmul":
        return _blur_matmul(x, kernel)
    if method == "conv":
        return _blur_conv(x, kernel)
    raise InputError(f"blur method must be 'auto', 'matmul' or 'conv', got {method!r}")


def _static_shape(x: Any) -> tuple[int | None, ...]:
    return tuple(None if d is None else int(d) for d in x.shape)


def _check_pair(x: Any, y: Any, window_size: int, padding: str) -> None:
    if padding not in ("valid", "same"):
        raise InputError(f"padding must be 'valid' or 'same', got {padding!r}")
    xs, ys = _static_shape(x), _static_shape(y)
    if len(xs) != 4 or len(ys) != 4:
        raise InputError(
            f"SSIM expects two image batches [batch, height, width, channels]; got shapes {xs} and {ys}"
        )
    if any(a is not None and b is not None and a != b for a, b in zip(xs, ys)):
        raise InputError(f"SSIM needs images of the same shape; got {xs} and {ys}")
    h, w = xs[1], xs[2]
    if padding == "valid" and ((h is not None and h < window_size) or (w is not None and w < window_size)):
        raise InputError(
            f"images of {h}x{w} pixels are smaller than the {window_size}x{window_size} SSIM window; "
            "use a smaller window or padding='same'"
        )
    r = window_size // 2
    if padding == "same" and ((h is not None and h < r) or (w is not None and w < r)):
        # Mirror padding cannot pad by more than the image side.
        raise InputError(
            f"images of {h}x{w} pixels are too small for padding='same' with a {window_size}x{window_size} "
            f"SSIM window: the mirror padding needs sides of at least {r} pixels; use a smaller window"
        )


def _contrast_structure(var_x: Any, var_y: Any, cov: Any, c2: float) -> Any:
    return (2.0 * cov + c2) / (var_x + var_y + c2)


def _signed_pow(v: Any, exponent: float) -> Any:
    if exponent == 1:
        return v
    # Structure lies in [-1, 1]; a fractional power of a negative number would be NaN.
    return ops.sign(v) * ops.power(ops.abs(v), exponent)


def ssim_maps(
    x: Any,
    y: Any,
    params: SSIMParams | Mapping[str, Any] | None = None,
    *,
    padding: str = "valid",
    blur: str = "auto",
    **ssim_kwargs: Any,
) -> SSIMMaps:
    """Per-pixel SSIM of two image batches and its luminance, contrast and structure maps.

    Written in ``keras.ops``: the same code runs eagerly, inside a TensorFlow graph (training,
    the exported serving signatures) and on the JAX and PyTorch backends.

    Args:
        x: Images ``[B, H, W, C]`` (static ``C``), any float or integer dtype, values in
            ``[0, data_range]``.
        y: Images of the same shape (for an autoencoder: the reconstructions).
        params: The SSIM's :class:`SSIMParams` (or a dict of them); default the paper's.
        padding: ``"valid"`` or ``"same"``; see the module docstring for the border handling.
        blur: Gaussian blur implementation, see :func:`gaussian_blur`.
        **ssim_kwargs: Fields of :class:`SSIMParams` (``window_size``, ``sigma``, ``weighting``,
            ``k1``, ``k2``, ``alpha``, ``beta``, ``gamma``, ``data_range``), overriding ``params``.

    Returns:
        :class:`SSIMMaps` of four float32 tensors ``[B, H', W', C]`` (per channel; average
        over the last axis for one map per pixel as ``tf.image.ssim`` does).

    Raises:
        ValueError: Bad parameters, shapes that differ, or images too small for the window.

    Example:
        >>> x = keras.random.uniform([2, 64, 64, 1])
        >>> maps = ssim_maps(x, x * 0.9, window_size=11)
        >>> tuple(maps.ssim.shape)
        (2, 54, 54, 1)
    """
    p = SSIMParams.of(params, **ssim_kwargs)
    x = ops.convert_to_tensor(x)
    y = ops.convert_to_tensor(y)
    _check_pair(x, y, p.window_size, padding)
    x = ops.cast(x, "float32")
    y = ops.cast(y, "float32")
    c1 = (p.k1 * p.data_range) ** 2
    c2 = (p.k2 * p.data_range) ** 2
    c3 = c2 / 2.0

    if padding == "same":
        r = p.window_size // 2
        pads = ((0, 0), (r, r), (r, r), (0, 0))
        x = ops.pad(x, pads, mode="symmetric")
        y = ops.pad(y, pads, mode="symmetric")

    kernel = _window_taps(p.window_size, p.sigma, p.weighting)
    # One blur over the five stacked statistics instead of five separate blurs.
    # (Co)variances are shift-invariant: computing them on images centred by their global mean
    # avoids most of the float32 cancellation in E[x^2] - mu^2 on flat regions.
    shift_x = ops.stop_gradient(ops.mean(x, axis=(1, 2), keepdims=True))
    shift_y = ops.stop_gradient(ops.mean(y, axis=(1, 2), keepdims=True))
    xc, yc = x - shift_x, y - shift_y
    stats = [xc, yc, xc * xc, yc * yc, xc * yc]
    if _blur_method(x, blur) == "matmul":
        mu_xc, mu_yc, e_xx, e_yy, e_xy = _blur_planes_matmul(stats, kernel)
    else:
        mu_xc, mu_yc, e_xx, e_yy, e_xy = ops.split(gaussian_blur(ops.concatenate(stats, axis=-1), kernel, blur), 5,
                                                   axis=-1)
    mu_x, mu_y = mu_xc + shift_x, mu_yc + shift_y

    mu_xy = mu_x * mu_y
    mu_sq = ops.square(mu_x) + ops.square(mu_y)
    var_x = e_xx - ops.square(mu_xc)
    var_y = e_yy - ops.square(mu_yc)
    cov = e_xy - mu_xc * mu_yc

    luminance = (2.0 * mu_xy + c1) / (mu_sq + c1)
    # sigma_x * sigma_y; the tiny epsilon keeps the sqrt differentiable on flat patches.
    sd_xy = ops.sqrt(ops.maximum(var_x, 0.0) * ops.maximum(var_y, 0.0) + 1e-12)
    contrast = (2.0 * sd_xy + c2) / (var_x + var_y + c2)
    structure = (cov + c3) / (sd_xy + c3)

    if p.alpha == p.beta == p.gamma == 1:
        # c * s collapses to one fraction when C3 = C2 / 2; this is tf.image.ssim's formula.
        ssim_value = luminance * _contrast_structure(var_x, var_y, cov, c2)
    else:
        ssim_value = (
            _signed_pow(luminance, p.alpha) * _signed_pow(contrast, p.beta) * _signed_pow(structure, p.gamma)
        )
    return SSIMMaps(ssim_value, luminance, contrast, structure)


def ssim_map(x: Any, y: Any, params: SSIMParams | Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """Per-pixel SSIM ``[B, H', W']`` averaged over channels; arguments as :func:`ssim_maps`."""
    return ops.mean(ssim_maps(x, y, params, **kwargs).ssim, axis=-1)


def ssim(x: Any, y: Any, params: SSIMParams | Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """Mean SSIM per image ``[B]``; with default arguments equal to ``tf.image.ssim(x, y, 1.0)``."""
    return ops.mean(ssim_maps(x, y, params, **kwargs).ssim, axis=(1, 2, 3))


def ms_ssim(
    x: Any,
    y: Any,
    *,
    power_factors: tuple[float, ...] | None = None,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
) -> Any:
    """Multi-scale SSIM per image ``[B]`` (Wang et al. 2003).

    The contrast-structure term is averaged at every scale and luminance at the coarsest;
    images are halved by 2x2 average pooling between scales (an odd side is first extended
    by repeating its last row/column). As in ``tf.image.ssim_multiscale``, MS-SSIM is
    computed per channel and then averaged over channels; with the same ``power_factors``
    the two agree. ``power_factors`` defaults to the standard five weights, truncated (and
    renormalised) to as many scales as the image size allows for the window: a 128-pixel
    patch with an 11 window gets four scales.
    """
    validate_window(window_size, sigma)
    x = ops.cast(ops.convert_to_tensor(x), "float32")
    y = ops.cast(ops.convert_to_tensor(y), "float32")
    _check_pair(x, y, window_size, "valid")
    side = min(s for s in (x.shape[1], x.shape[2]) if s is not None) if None not in (x.shape[1], x.shape[2]) else None
    if power_factors is None:
        if side is None:
            raise InputError("ms_ssim needs static image sizes unless power_factors is given")
        scales = 1
        while scales < len(_MS_SSIM_WEIGHTS) and _halved(side, scales) >= window_size:
            scales += 1
        weights = _MS_SSIM_WEIGHTS[:scales]
        power_factors = tuple(w / sum(weights) for w in weights)
    elif side is not None and _halved(side, len(power_factors) - 1) < window_size:
        raise InputError(
            f"{len(power_factors)} MS-SSIM scales need images of at least "
            f"{(window_size - 1) * 2 ** (len(power_factors) - 1) + 1} pixels for a {window_size} window; got {side}"
        )
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    kernel = _window_taps(window_size, sigma, "gaussian")
    result = 1.0  # becomes [B, C]: MS-SSIM per channel, averaged at the end
    for i, weight in enumerate(power_factors):
        stats = ops.concatenate([x, y, x * x, y * y, x * y], axis=-1)
        mu_x, mu_y, e_xx, e_yy, e_xy = ops.split(gaussian_blur(stats, kernel), 5, axis=-1)
        cs = _contrast_structure(e_xx - mu_x * mu_x, e_yy - mu_y * mu_y, e_xy - mu_x * mu_y, c2)
        if i == len(power_factors) - 1:
            cs = cs * (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
        else:
            x, y = _halve(x), _halve(y)
        # relu as in tf.image.ssim_multiscale: a negative term would make the power undefined.
        result = result * ops.power(ops.relu(ops.mean(cs, axis=(1, 2))) + 1e-12, weight)
    return ops.mean(result, axis=-1)


def _halved(side: int, times: int) -> int:
    """Side length after ``times`` halvings by :func:`_halve` (odd sides round up)."""
    for _ in range(times):
        side = (side + 1) // 2
    return side


def _halve(x: Any) -> Any:
    """2x2 average pooling; an odd side is first padded by repeating its last row/column."""
    h, w = x.shape[1], x.shape[2]
    if h is None or w is None:
        shape = ops.shape(x)
        h, w = shape[1], shape[2]
    pads = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))
    return ops.average_pool(ops.pad(x, pads, mode="symmetric"), 2, 2, "valid")
