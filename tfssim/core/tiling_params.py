"""The settings of scoring a whole image tile by tile (stride, chunk size, blend, border, smoothing):
their names, defaults and bounds.

One definition for the serving graph (:mod:`tfssim.core.tiling`, :mod:`tfssim.models.scoring`),
the export's metadata (:mod:`tfssim.export.metadata` checks its stored fields against them) and
the commands' options. Imports no TensorFlow.
"""
from __future__ import annotations

from typing import Any

from tfssim.errors import InputError

__all__ = ["BLENDS", "BORDERS", "DEFAULT_BLEND", "DEFAULT_BORDER", "DEFAULT_CHUNK_SIZE", "DEFAULT_MAP_SIGMA", "DEFAULT_STRIDE",
           "MAX_CHUNK_SIZE", "check_blend", "check_border", "check_chunk_size", "is_chunk_size"]

# The tiling stride when none is named: the paper's 30 for 128-pixel patches.
DEFAULT_STRIDE = 30
# Tiles per model call by default, and of exports from before the metadata held the key.
DEFAULT_CHUNK_SIZE = 64
# The graph counts tiles and chunks in int32, and one call of 2**20 tiles already holds 4 GiB of
# 32x32 patches: a larger chunk only overflows the counts.
MAX_CHUNK_SIZE = 2**20
# How the image border is scored (``anomaly_maps``' ``border``) and how overlapping tiles are
# combined (``reconstruct``'s ``blend``); the first of each is the paper's.
BORDERS = ("none", "reflect")
BLENDS = ("mean", "gaussian")
DEFAULT_BORDER, DEFAULT_BLEND = BORDERS[0], BLENDS[0]
# The Gaussian smoothing of the map, in pixels: 0 serves the maps unsmoothed (the paper).
DEFAULT_MAP_SIGMA = 0.0


def is_chunk_size(value: Any) -> bool:
    """Whether ``value`` is a whole number of tiles per model call from 1 to :data:`MAX_CHUNK_SIZE` (``bool`` is not)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CHUNK_SIZE


def check_chunk_size(value: Any, what: str = "chunk size") -> int:
    """``value`` if it is a whole number of tiles from 1 to :data:`MAX_CHUNK_SIZE`, else one ``InputError`` line.

    Args:
        value: The number of tiles per model call.
        what: How the message names it.

    Returns:
        ``value`` unchanged.

    Raises:
        InputError: ``value`` is not an ``int`` (``bool`` is not one) in range.
    """
    if not is_chunk_size(value):
        shown = f"an integer of {value.bit_length()} bits" if isinstance(value, int) and value.bit_length() > 64 else repr(value)
        raise InputError(f"{what} must be a positive integer of at most {MAX_CHUNK_SIZE}, got {shown[:80]}")
    return value


def check_blend(blend: str) -> str:
    """``blend`` if it is one of :data:`BLENDS`, else one ``InputError`` line."""
    if blend not in BLENDS:
        raise InputError(f"unknown tile blend {blend!r}; choose one of {', '.join(BLENDS)}")
    return blend


def check_border(border: str) -> str:
    """``border`` if it is one of :data:`BORDERS`, else one ``InputError`` line."""
    if border not in BORDERS:
        raise InputError(f"unknown border handling {border!r}; choose one of {', '.join(BORDERS)}")
    return border
