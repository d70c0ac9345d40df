"""Named anomaly-map formulas: the SSIM map alone, or combined with a term that sees more than local structure.

The paper's anomaly map is ``1 - SSIM`` at one window (formula ``"ssim"``). It sees local
structure; a smooth shading change over half a patch, or a flat area where material is
missing, is reconstructed well and scores low. Two formulas add a second term ``t2`` to the
SSIM map ``t1``:

* ``"ssim_lowfreq"``: the low-frequency intensity residual ``|G_s * mean_c(x - x_hat)|``,
  ``G_s`` the Gaussian of ``lowfreq_sigma`` pixels (the filter of
  :func:`tfssim.models.scoring.smooth_map`: mirrored borders, truncated at 4 sigma);
* ``"ssim_multiscale"``: ``1 - SSIM`` at a wider window ``window_size`` (the Gaussian window's
  sigma scaled with it, :meth:`MapFormula.second_ssim`).

The two terms live on different scales, so each is normalised by its scores on defect-free
validation images, ``n_i = (t_i - offsets[i]) / scales[i]`` (``tfssim-tune`` sets ``offsets``
to the median and ``scales`` to the ``1 - fpr`` quantile minus the median: both terms reach 1
at their own clean tail), and combined::

    max:  map = max(n_1, n_2)
    sum:  map = (1 - weight) * n_1 + weight * n_2

The map is then smoothed by the export's ``map_sigma`` like any other. This module holds the
record and its rules (no TensorFlow): :func:`tfssim.models.scoring.anomaly_maps` computes the terms in
the served graph, ``tfssim-tune`` chooses the formula on synthetic defects, and the export's
metadata stores it as ``map_formula`` (:meth:`MapFormula.to_dict`).

Example:
    >>> formula = MapFormula("ssim_lowfreq", combine="max", lowfreq_sigma=16.0,
    ...                      offsets=(0.05, 0.002), scales=(0.3, 0.01))
    >>> formula.combine_maps(ssim_map, lowfreq_map)   # NumPy arrays or TensorFlow tensors

References:
    Bergmann et al., "Improving Unsupervised Defect Segmentation by Applying Structural
    Similarity to Autoencoders", VISAPP 2019 (the ``"ssim"`` formula). Wang, Simoncelli and
    Bovik, "Multiscale structural similarity for image quality assessment", 2003 (SSIM at
    several scales).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping

from tfssim.core.ssim_params import SSIMParams
from tfssim.errors import InputError

__all__ = ["FORMULAS", "COMBINES", "PLAIN", "MapFormula"]

# The first is the paper's map (one term); the others add a second term (module docstring).
FORMULAS = ("ssim", "ssim_lowfreq", "ssim_multiscale")
COMBINES = ("max", "sum")
_KEYS = ("name", "combine", "weight", "lowfreq_sigma", "window_size", "offsets", "scales")
# Largest sigma / window accepted from a stored record (the side of a patch: tfssim.export.metadata.MAX_SIDE).
_MAX_SIDE = 2**16
_FLOAT32_MAX = 3.4028234663852886e38


def _number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


@dataclasses.dataclass(frozen=True)
class MapFormula:
    """How the served ``anomaly_map`` is made from the SSIM map and, optionally, a second term.

    Args:
        name: One of :data:`FORMULAS`.
        combine: ``"max"`` or ``"sum"`` of the normalised terms (second-term formulas only).
        weight: Weight of the second term in ``"sum"`` (``0 < weight < 1``).
        lowfreq_sigma: Gaussian sigma in pixels of ``"ssim_lowfreq"``'s residual.
        window_size: Odd SSIM window of ``"ssim_multiscale"``'s second term.
        offsets: Subtracted from each term (``(t1, t2)``).
        scales: Each term is divided by its scale after the offset (positive).

    Raises:
        InputError: a field out of range, or ``lowfreq_sigma`` / ``window_size`` missing where
            the formula needs it or given where it does not (the plain ``"ssim"`` ignores the
            combination fields, and :meth:`to_dict` does not record them).
    """

    name: str = "ssim"
    combine: str = "max"
    weight: float = 0.5
    lowfreq_sigma: float | None = None
    window_size: int | None = None
    offsets: tuple[float, float] = (0.0, 0.0)
    scales: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.name not in FORMULAS:
            raise InputError(f"unknown map formula {self.name!r}; choose one of {', '.join(FORMULAS)}")
        if self.combine not in COMBINES:
            raise InputError(f"map formula combine must be one of {', '.join(COMBINES)}, got {self.combine!r}")
        if not _number(self.weight) or not 0 < self.weight < 1:
            raise InputError(f"map formula weight must be a number between 0 and 1 (exclusive), got {self.weight!r}")
        for key in ("offsets", "scales"):
            value = getattr(self, key)
            if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_number(v) for v in value):
                raise InputError(f"map formula {key} must be two finite numbers, got {value!r}")
            object.__setattr__(self, key, tuple(float(v) for v in value))
        # 1 / scale multiplies float32 maps: it must stay finite there.
        if not all(s > 0 and 1.0 / s < _FLOAT32_MAX for s in self.scales):
            raise InputError(f"map formula scales must be positive (and at least {1 / _FLOAT32_MAX:.3g}), got "
                             f"{self.scales!r}")
        object.__setattr__(self, "weight", float(self.weight))
        wants_sigma, wants_window = self.name == "ssim_lowfreq", self.name == "ssim_multiscale"
        if wants_sigma != (self.lowfreq_sigma is not None):
            raise InputError(f"map formula {self.name!r} " + ("needs" if wants_sigma else "takes no") + " lowfreq_sigma")
        if wants_window != (self.window_size is not None):
            raise InputError(f"map formula {self.name!r} " + ("needs" if wants_window else "takes no") + " window_size")
        if wants_sigma:
            if not _number(self.lowfreq_sigma) or not 0 < self.lowfreq_sigma <= _MAX_SIDE:
                raise InputError(f"map formula lowfreq_sigma must be a number > 0 (pixels), got {self.lowfreq_sigma!r}")
            object.__setattr__(self, "lowfreq_sigma", float(self.lowfreq_sigma))
        if wants_window:
            w = self.window_size
            if isinstance(w, bool) or not isinstance(w, int) or not 3 <= w <= _MAX_SIDE or w % 2 == 0:
                raise InputError(f"map formula window_size must be an odd integer >= 3, got {w!r}")

    @property
    def plain(self) -> bool:
        """Whether this is the paper's map (``"ssim"``: no second term)."""
        return self.name == "ssim"

    def second_ssim(self, first: SSIMParams | Mapping[str, Any] | None) -> SSIMParams:
        """The SSIM of ``"ssim_multiscale"``'s second term: ``first`` at :attr:`window_size`,
        the Gaussian window's sigma scaled by the same factor (the window keeps its shape)."""
        first = SSIMParams.of(first)
        if self.window_size is None:
            raise InputError(f"map formula {self.name!r} has no second SSIM")
        return SSIMParams.of(first, window_size=self.window_size,
                             sigma=first.sigma * self.window_size / first.window_size)

    def check_model(self, residual: str, patch_size: int) -> MapFormula:
        """This formula if a model with this residual and patch can serve it, else one ``InputError``
        line: a second term needs an SSIM model and must read less than a patch around each pixel
        (the smallest image scored is one patch)."""
        if not self.plain and residual != "ssim":
            raise InputError(f"map formula {self.name!r} needs an SSIM model, not a {residual!r} one")
        if self.reach() >= patch_size:
            raise InputError(f"map formula {self.describe()} reads {self.reach()} pixels around each pixel, which "
                             f"does not fit the {patch_size}-pixel patch (the smallest image scored)")
        return self

    def reach(self) -> int:
        """How far (pixels) the second term reads around a pixel: the blur's or window's radius."""
        if self.lowfreq_sigma is not None:
            return int(4.0 * self.lowfreq_sigma + 0.5)  # tfssim.models.scoring.smoothing_radius
        return (self.window_size or 1) // 2

    def combine_maps(self, first: Any, second: Any) -> Any:
        """The formula's map from its two terms (NumPy arrays or TensorFlow tensors, same shape).

        Written with arithmetic and ``abs`` only (``max(a, b) = (a + b + |a - b|) / 2``), so the
        served graph and the tuner run this one implementation.
        """
        if self.plain:
            return first
        return self.combine_normalised(*self.normalise(first, second))

    def normalise(self, first: Any, second: Any) -> tuple[Any, Any]:
        """Both terms on the common scale: ``(t_i - offsets[i]) / scales[i]``."""
        return (first - self.offsets[0]) * (1.0 / self.scales[0]), (second - self.offsets[1]) * (1.0 / self.scales[1])

    def combine_normalised(self, a: Any, b: Any) -> Any:
        """The map from the normalised terms (:meth:`normalise`): their max or weighted sum."""
        if self.combine == "max":
            return (a + b + abs(a - b)) * 0.5
        return a * (1.0 - self.weight) + b * self.weight

    def to_dict(self) -> dict[str, Any]:
        """The metadata record: ``{"name": "ssim"}`` for the plain map, else every field."""
        if self.plain:
            return {"name": "ssim"}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def of(cls, value: MapFormula | Mapping[str, Any] | str | None) -> MapFormula:
        """A formula from a record (:meth:`to_dict`), ``"ssim"`` or ``None`` (both the plain map;
        the other names need their parameters, so they come as records).

        Raises:
            InputError: an unknown key or a bad value.
        """
        if value is None:
            return PLAIN
        if isinstance(value, MapFormula):
            return value
        if isinstance(value, str):
            return cls(value)
        if not isinstance(value, Mapping):
            raise InputError(f"a map formula must be an object of {', '.join(_KEYS)}, got {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in _KEYS)
        if unknown:
            raise InputError(f"unknown map formula key(s) {unknown}; known: {', '.join(_KEYS)}")
        return cls(**dict(value))

    def describe(self) -> str:
        """One line, e.g. ``ssim_lowfreq (sigma 16, max)``."""
        if self.plain:
            return "ssim"
        second = f"sigma {self.lowfreq_sigma:g}" if self.lowfreq_sigma is not None else f"window {self.window_size}"
        how = "max" if self.combine == "max" else f"sum, weight {self.weight:g}"
        return f"{self.name} ({second}, {how})"


PLAIN = MapFormula()
