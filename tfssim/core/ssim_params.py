"""The parameter set of one SSIM (:class:`SSIMParams`) and its rules, without Keras or TensorFlow.

The loss, the anomaly map, the training config's ``ssim_*`` keys and the export metadata's
``"ssim"`` entry all describe their SSIM with :class:`SSIMParams` and check it by the rules
here (:func:`validate_window`, :data:`NUMBER_RANGES`). :mod:`tfssim.core.ssim` re-exports these
names; this module imports neither Keras nor TensorFlow, so :mod:`tfssim.export.metadata` can
validate an export's metadata in a client without them.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping

from tfssim.errors import InputError

__all__ = ["SSIMParams", "WEIGHTINGS", "NUMBER_RANGES", "describe_range", "in_range", "validate_window"]

# How the K x K window weights its pixels: Wang et al.'s (and tf.image.ssim's) Gaussian, or the
# plain patch means of Bergmann et al.'s definition (scikit-image's gaussian_weights=False).
WEIGHTINGS = ("gaussian", "uniform")


def _finite(value: numbers.Real) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past float's range
        return False


def validate_window(window_size: int, sigma: float = 1.5, weighting: str = "gaussian") -> None:
    """Raise ``ValueError`` unless ``window_size`` is an odd integer >= 1, ``sigma > 0`` and
    ``weighting`` is one of :data:`WEIGHTINGS`."""
    if weighting not in WEIGHTINGS:
        raise InputError(f"SSIM window weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise InputError(
            f"SSIM window size must be an odd positive integer (3, 7, 11, ...), got {window_size!r}; "
            "an even window has no centre pixel"
        )
    if not sigma > 0:
        raise InputError(f"SSIM Gaussian sigma must be positive, got {sigma!r}")


@dataclasses.dataclass(frozen=True)
class SSIMParams:
    """The parameters of one SSIM: the loss, the anomaly map, the training config and the export
    metadata all describe their SSIM with this one type.

    Args:
        window_size: Odd side K of the window (the paper's best: 11).
        sigma: Standard deviation of the Gaussian window in pixels (unused for ``"uniform"``).
        weighting: ``"gaussian"`` (``tf.image.ssim``'s window) or ``"uniform"`` (plain K x K
            patch means, the paper's definition; scikit-image's ``gaussian_weights=False``).
        k1: Luminance constant K1; ``C1 = (K1 * data_range) ** 2``.
        k2: Contrast/structure constant K2; ``C2 = (K2 * data_range) ** 2``, ``C3 = C2 / 2``.
        alpha: Exponent of the luminance term.
        beta: Exponent of the contrast term.
        gamma: Exponent of the structure term (applied sign-preserving).
        data_range: Dynamic range L of the pixel values (1 for images scaled to [0, 1]).

    Raises:
        ValueError: A parameter is out of range (see :func:`validate_window`; the numbers must
            be finite and within :data:`NUMBER_RANGES`: K1 and K2 in (0, 1), the data range > 0,
            the exponents >= 0).

    Example:
        >>> params = SSIMParams(window_size=7, weighting="uniform")
        >>> SSIMParams.from_dict(params.to_dict()) == params
        True
    """

    window_size: int = 11
    sigma: float = 1.5
    weighting: str = "gaussian"
    k1: float = 0.01
    k2: float = 0.03
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    data_range: float = 1.0

    def __post_init__(self) -> None:
        # The numbers first (sigma too): validate_window compares sigma, which a string (from a
        # tampered file) would turn into a TypeError; a 400-digit integer is no finite float.
        for name in ("sigma", "k1", "k2", "data_range", "alpha", "beta", "gamma"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not _finite(value)
                    or not in_range(value, *NUMBER_RANGES[name])):
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise InputError(f"SSIM {name} must be a finite number {describe_range(*NUMBER_RANGES[name])}, "
                                 f"got {shown}")
        validate_window(self.window_size, self.sigma, self.weighting)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The parameter names, in field order (the keys of :meth:`to_dict`)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """All parameters as a plain (JSON-ready) dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None, **overrides: Any) -> SSIMParams:
        """Parameters from a dict (missing keys keep their defaults), then ``overrides``.

        Raises:
            ValueError: An unknown key, or a value out of range.
        """
        merged = {**(values or {}), **overrides}
        unknown = set(merged) - set(cls.keys())
        if unknown:
            raise InputError(f"unknown SSIM parameter(s) {sorted(unknown)}; expected some of {', '.join(cls.keys())}")
        return cls(**merged)

    @classmethod
    def of(cls, params: SSIMParams | Mapping[str, Any] | None = None, **overrides: Any) -> SSIMParams:
        """``params`` (an :class:`SSIMParams`, a dict or ``None`` for the defaults) with ``overrides``."""
        if isinstance(params, SSIMParams):
            return dataclasses.replace(params, **overrides) if overrides else params
        return cls.from_dict(params, **overrides)


# The allowed range of each numeric parameter: (low, low excluded, high or None, high excluded).
# SSIMParams checks these, and the training config checks its ssim_* keys against the same
# entries, so there is one rule. K1 and K2 are fractions of the data range (C = (K L)**2).
NUMBER_RANGES: dict[str, tuple[float, bool, float | None, bool]] = {
    "sigma": (0.0, True, None, False),
    "k1": (0.0, True, 1.0, True),
    "k2": (0.0, True, 1.0, True),
    "alpha": (0.0, False, None, False),
    "beta": (0.0, False, None, False),
    "gamma": (0.0, False, None, False),
    "data_range": (0.0, True, None, False),
}


def describe_range(low: float, low_open: bool, high: float | None, high_open: bool) -> str:
    """``"> 0 and < 1"``-style text of a range of :data:`NUMBER_RANGES`."""
    text = f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        text += f" and {'<' if high_open else '<='} {high:g}"
    return text


def in_range(value: float, low: float, low_open: bool, high: float | None, high_open: bool) -> bool:
    """Whether the finite number ``value`` lies in the range ``(low, low_open, high, high_open)``."""
    return not (value < low or (low_open and value == low)
                or (high is not None and (value > high or (high_open and value == high))))
