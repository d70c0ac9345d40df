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
  mirror padding that repeats the edge pixel (``tf.pad(mode="SYMMETRIC")``, the same as
  SciPy's ``mode="reflect"`` that scikit-image uses for ``full=True``); maps are ``H x W``.
  Zero padding would be wrong here: it invents dark borders and drops SSIM by up to 0.9.

All arithmetic runs in float32 whatever the inputs' dtype (in float16 the map is off by up to
0.36), so the functions are safe under a ``mixed_float16`` policy. Everything is
differentiable; the Gaussian blur is separable and runs either as two band-matrix matmuls
(fast for training patches) or as two 1-D convolutions (memory-light for large images).
"""
from __future__ import annotations

from typing import NamedTuple

import tfssim._tensorflow  # noqa: F401,I001 - before keras: without TensorFlow, an ImportError naming the install command
import tensorflow as tf

__all__ = [
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

    ssim: tf.Tensor
    luminance: tf.Tensor
    contrast: tf.Tensor
    structure: tf.Tensor


# How the K x K window weights its pixels: Wang et al.'s (and tf.image.ssim's) Gaussian, or the
# plain patch means of Bergmann et al.'s definition (scikit-image's gaussian_weights=False).
WEIGHTINGS = ("gaussian", "uniform")


def validate_window(window_size: int, sigma: float = 1.5, weighting: str = "gaussian") -> None:
    """Raise ``ValueError`` unless ``window_size`` is an odd integer >= 1, ``sigma > 0`` and
    ``weighting`` is one of :data:`WEIGHTINGS`."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"SSIM window weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise ValueError(
            f"SSIM window size must be an odd positive integer (3, 7, 11, ...), got {window_size!r}; "
            "an even window has no centre pixel"
        )
    if not sigma > 0:
        raise ValueError(f"SSIM Gaussian sigma must be positive, got {sigma!r}")


def gaussian_kernel(window_size: int = 11, sigma: float = 1.5) -> tf.Tensor:
    """Normalised 1-D Gaussian window of ``window_size`` taps, float32."""
    validate_window(window_size, sigma)
    coords = tf.range(window_size, dtype=tf.float32) - (window_size - 1) / 2.0
    g = tf.exp(-0.5 * tf.square(coords / sigma))
    return g / tf.reduce_sum(g)


def window_kernel(window_size: int = 11, sigma: float = 1.5, weighting: str = "gaussian") -> tf.Tensor:
    """The normalised 1-D window: :func:`gaussian_kernel`, or ``1 / K`` taps for ``"uniform"``
    (whose separable product is the K x K box of plain patch means; ``sigma`` is then unused)."""
    validate_window(window_size, sigma, weighting)
    if weighting == "uniform":
        return tf.fill([window_size], 1.0 / window_size)
    return gaussian_kernel(window_size, sigma)


def _band_matrix(kernel: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """``[length - K + 1, length]`` matrix M with ``M[i, i + k] = kernel[k]``: a valid 1-D blur."""
    k = tf.shape(kernel)[0]
    rows = tf.range(length - k + 1)[:, None]
    cols = tf.range(length)[None, :]
    offset = cols - rows
    inside = (offset >= 0) & (offset < k)
    return tf.where(inside, tf.gather(kernel, tf.clip_by_value(offset, 0, k - 1)), 0.0)


def _blur_matmul(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    shape = tf.shape(x)
    m_h = _band_matrix(kernel, shape[1])
    m_w = _band_matrix(kernel, shape[2])
    x = tf.einsum("uh,bhwc->buwc", m_h, x)
    return tf.einsum("vw,buwc->buvc", m_w, x)


def _blur_conv(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    # Fold channels into the batch so one [K,1,1,1] kernel serves every channel.
    shape = tf.shape(x)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    x = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), tf.stack([b * c, h, w, 1]))
    k = tf.shape(kernel)[0]
    x = tf.nn.conv2d(x, tf.reshape(kernel, tf.stack([k, 1, 1, 1])), strides=1, padding="VALID")
    x = tf.nn.conv2d(x, tf.reshape(kernel, tf.stack([1, k, 1, 1])), strides=1, padding="VALID")
    out = tf.shape(x)
    return tf.transpose(tf.reshape(x, tf.stack([b, c, out[1], out[2]])), [0, 2, 3, 1])


def gaussian_blur(x: tf.Tensor, kernel: tf.Tensor, method: str = "auto") -> tf.Tensor:
    """Valid separable blur of ``[B, H, W, C]`` float32 ``x`` with a 1-D ``kernel``.

    ``method`` is ``"matmul"`` (band matrices; fastest for patches up to a few hundred pixels),
    ``"conv"`` (two 1-D convolutions; O(HWK) memory, for whole images) or ``"auto"``, which
    picks ``"matmul"`` when both static spatial sides are at most 256 and ``"conv"`` otherwise.
    """
    if method == "auto":
        h, w = x.shape[1], x.shape[2]
        method = "matmul" if h is not None and w is not None and max(h, w) <= _MATMUL_MAX_SIDE else "conv"
    if method == "matmul":
        return _blur_matmul(x, kernel)
    if method == "conv":
        return _blur_conv(x, kernel)
    raise ValueError(f"blur method must be 'auto', 'matmul' or 'conv', got {method!r}")


def _check_pair(x: tf.Tensor, y: tf.Tensor, window_size: int, padding: str) -> None:
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    if x.shape.rank != 4 or y.shape.rank != 4:
        raise ValueError(
            f"SSIM expects two image batches [batch, height, width, channels]; got shapes {x.shape} and {y.shape}"
        )
    if not x.shape.is_compatible_with(y.shape):
        raise ValueError(f"SSIM needs images of the same shape; got {x.shape} and {y.shape}")
    h, w = x.shape[1], x.shape[2]
    if padding == "valid" and ((h is not None and h < window_size) or (w is not None and w < window_size)):
        raise ValueError(
            f"images of {h}x{w} pixels are smaller than the {window_size}x{window_size} SSIM window; "
            "use a smaller window or padding='same'"
        )
    r = window_size // 2
    if padding == "same" and ((h is not None and h < r) or (w is not None and w < r)):
        # tf.pad(mode="SYMMETRIC") cannot pad by more than the image side.
        raise ValueError(
            f"images of {h}x{w} pixels are too small for padding='same' with a {window_size}x{window_size} "
            f"SSIM window: the mirror padding needs sides of at least {r} pixels; use a smaller window"
        )


def _contrast_structure(var_x: tf.Tensor, var_y: tf.Tensor, cov: tf.Tensor, c2: float) -> tf.Tensor:
    return (2.0 * cov + c2) / (var_x + var_y + c2)


def _signed_pow(v: tf.Tensor, exponent: float) -> tf.Tensor:
    if exponent == 1:
        return v
    # Structure lies in [-1, 1]; a fractional power of a negative number would be NaN.
    return tf.sign(v) * tf.pow(tf.abs(v), exponent)


def ssim_maps(
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    weighting: str = "gaussian",
    padding: str = "valid",
    blur: str = "auto",
) -> SSIMMaps:
    """Per-pixel SSIM of two image batches and its luminance, contrast and structure maps.

    Args:
        x: Images ``[B, H, W, C]``, any float or integer dtype, values in ``[0, data_range]``.
        y: Images of the same shape (for an autoencoder: the reconstructions).
        window_size: Side K of the Gaussian window; odd. The paper's best is 11.
        sigma: Standard deviation of the Gaussian window in pixels.
        k1: Luminance constant K1; ``C1 = (K1 * data_range) ** 2``.
        k2: Contrast/structure constant K2; ``C2 = (K2 * data_range) ** 2``, ``C3 = C2 / 2``.
        data_range: Dynamic range L of the pixel values (1 for images scaled to [0, 1]).
        alpha: Exponent of the luminance term.
        beta: Exponent of the contrast term.
        gamma: Exponent of the structure term (applied sign-preserving, as s can be negative).
        weighting: ``"gaussian"`` (default, as ``tf.image.ssim``) or ``"uniform"`` (plain K x K
            patch means, as the paper defines SSIM and scikit-image's ``gaussian_weights=False``).
        padding: ``"valid"`` or ``"same"``; see the module docstring for the border handling.
        blur: Gaussian blur implementation, see :func:`gaussian_blur`.

    Returns:
        :class:`SSIMMaps` of four float32 tensors ``[B, H', W', C]`` (per channel; average
        over the last axis for one map per pixel as ``tf.image.ssim`` does).

    Example:
        >>> x = tf.random.uniform([2, 64, 64, 1])
        >>> maps = ssim_maps(x, x * 0.9)
        >>> maps.ssim.shape
        TensorShape([2, 54, 54, 1])
    """
    validate_window(window_size, sigma, weighting)
    x = tf.convert_to_tensor(x)
    y = tf.convert_to_tensor(y)
    _check_pair(x, y, window_size, padding)
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.float32)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    c3 = c2 / 2.0

    if padding == "same":
        r = window_size // 2
        pads = [[0, 0], [r, r], [r, r], [0, 0]]
        x = tf.pad(x, pads, mode="SYMMETRIC")
        y = tf.pad(y, pads, mode="SYMMETRIC")

    kernel = window_kernel(window_size, sigma, weighting)
    # One blur over the five stacked statistics instead of five separate blurs.
    # (Co)variances are shift-invariant: computing them on images centred by their global mean
    # avoids most of the float32 cancellation in E[x^2] - mu^2 on flat regions.
    shift_x = tf.stop_gradient(tf.reduce_mean(x, axis=[1, 2], keepdims=True))
    shift_y = tf.stop_gradient(tf.reduce_mean(y, axis=[1, 2], keepdims=True))
    xc, yc = x - shift_x, y - shift_y
    stats = tf.concat([xc, yc, xc * xc, yc * yc, xc * yc], axis=-1)
    mu_xc, mu_yc, e_xx, e_yy, e_xy = tf.split(gaussian_blur(stats, kernel, blur), 5, axis=-1)
    mu_x, mu_y = mu_xc + shift_x, mu_yc + shift_y

    mu_xy = mu_x * mu_y
    mu_sq = tf.square(mu_x) + tf.square(mu_y)
    var_x = e_xx - tf.square(mu_xc)
    var_y = e_yy - tf.square(mu_yc)
    cov = e_xy - mu_xc * mu_yc

    luminance = (2.0 * mu_xy + c1) / (mu_sq + c1)
    # sigma_x * sigma_y; the tiny epsilon keeps the sqrt differentiable on flat patches.
    sd_xy = tf.sqrt(tf.maximum(var_x, 0.0) * tf.maximum(var_y, 0.0) + 1e-12)
    contrast = (2.0 * sd_xy + c2) / (var_x + var_y + c2)
    structure = (cov + c3) / (sd_xy + c3)

    if alpha == beta == gamma == 1:
        # c * s collapses to one fraction when C3 = C2 / 2; this is tf.image.ssim's formula.
        ssim_value = luminance * _contrast_structure(var_x, var_y, cov, c2)
    else:
        ssim_value = (
            _signed_pow(luminance, alpha) * _signed_pow(contrast, beta) * _signed_pow(structure, gamma)
        )
    return SSIMMaps(ssim_value, luminance, contrast, structure)


def ssim_map(x: tf.Tensor, y: tf.Tensor, **kwargs) -> tf.Tensor:
    """Per-pixel SSIM ``[B, H', W']`` averaged over channels; keyword arguments as :func:`ssim_maps`."""
    return tf.reduce_mean(ssim_maps(x, y, **kwargs).ssim, axis=-1)


def ssim(x: tf.Tensor, y: tf.Tensor, **kwargs) -> tf.Tensor:
    """Mean SSIM per image ``[B]``; with default arguments equal to ``tf.image.ssim(x, y, 1.0)``."""
    return tf.reduce_mean(ssim_maps(x, y, **kwargs).ssim, axis=[1, 2, 3])


def ms_ssim(
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    power_factors: tuple[float, ...] | None = None,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
) -> tf.Tensor:
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
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.float32)
    _check_pair(x, y, window_size, "valid")
    side = min(s for s in (x.shape[1], x.shape[2]) if s is not None) if None not in (x.shape[1], x.shape[2]) else None
    if power_factors is None:
        if side is None:
            raise ValueError("ms_ssim needs static image sizes unless power_factors is given")
        scales = 1
        while scales < len(_MS_SSIM_WEIGHTS) and _halved(side, scales) >= window_size:
            scales += 1
        weights = _MS_SSIM_WEIGHTS[:scales]
        power_factors = tuple(w / sum(weights) for w in weights)
    elif side is not None and _halved(side, len(power_factors) - 1) < window_size:
        raise ValueError(
            f"{len(power_factors)} MS-SSIM scales need images of at least "
            f"{(window_size - 1) * 2 ** (len(power_factors) - 1) + 1} pixels for a {window_size} window; got {side}"
        )
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    kernel = gaussian_kernel(window_size, sigma)
    result = tf.ones(tf.shape(x)[::3])  # [B, C]: MS-SSIM per channel, averaged at the end
    for i, weight in enumerate(power_factors):
        stats = tf.concat([x, y, x * x, y * y, x * y], axis=-1)
        mu_x, mu_y, e_xx, e_yy, e_xy = tf.split(gaussian_blur(stats, kernel), 5, axis=-1)
        cs = _contrast_structure(e_xx - mu_x * mu_x, e_yy - mu_y * mu_y, e_xy - mu_x * mu_y, c2)
        if i == len(power_factors) - 1:
            cs = cs * (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
        else:
            x, y = _halve(x), _halve(y)
        # relu as in tf.image.ssim_multiscale: a negative term would make the power undefined.
        result = result * tf.pow(tf.nn.relu(tf.reduce_mean(cs, axis=[1, 2])) + 1e-12, weight)
    return tf.reduce_mean(result, axis=-1)


def _halved(side: int, times: int) -> int:
    """Side length after ``times`` halvings by :func:`_halve` (odd sides round up)."""
    for _ in range(times):
        side = (side + 1) // 2
    return side


def _halve(x: tf.Tensor) -> tf.Tensor:
    """2x2 average pooling; an odd side is first padded by repeating its last row/column."""
    shape = tf.shape(x)
    pads = [[0, 0], [0, shape[1] % 2], [0, shape[2] % 2], [0, 0]]
    return tf.nn.avg_pool2d(tf.pad(x, pads, mode="SYMMETRIC"), 2, 2, "VALID")
