"""Calibrating an export: the anomaly-map threshold at a pixel false-positive rate on defect-free images.

``tfssim-calibrate`` is this module's :func:`calibrate` behind a command line; a script calls it
the same way.

Example:
    >>> from tfssim.calibration import calibrate
    >>> calibrate("exported_models/nanotwice", ["good/*.png"], fpr=0.01)   # newest version
    0.4123
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tfssim.errors import InputError

__all__ = ["calibrate"]


def calibrate(export: str | os.PathLike | Any, images: Sequence[str | os.PathLike | np.ndarray], fpr: float = 0.01, *,
              write: bool = True, progress: bool = True) -> float:
    """Set an export's threshold so that a share ``fpr`` of defect-free pixels lies above it.

    The anomaly maps are the export's own (the served graph, with its map settings), so the
    threshold applies to what serving returns. With ``write``, the threshold and ``fpr`` are
    stored in the export's metadata (``assets/tfssim.json``, rewritten atomically; nothing else
    changes).

    Args:
        export: An export version folder, its model folder (the newest version is used) or a
            loaded :class:`tfssim.inference.ExportedModel`.
        images: Defect-free images: file paths, folders or globs (as ``tfssim-calibrate`` takes
            them), or arrays ``[H, W]`` / ``[H, W, C]`` in [0, 1] (or uint8).
        fpr: Pixel false-positive rate, strictly between 0 and 1.
        write: Store the threshold in the export's metadata.
        progress: Show a progress bar over the images.

    Returns:
        The threshold.

    Raises:
        InputError: ``fpr`` out of range, no images, an image or file the export cannot take
            (the message names it), or damaged export metadata.
        FileNotFoundError: the export or an image file does not exist.
    """
    from tfssim import data, postprocess
    from tfssim.evaluation import compute_maps
    from tfssim.export import update_threshold
    from tfssim.inference import ExportedModel
    from tfssim.prediction import expand_inputs

    if isinstance(fpr, bool) or not isinstance(fpr, (int, float, np.floating)) or not 0 < float(fpr) < 1:
        raise InputError(f"fpr must be a number between 0 and 1 (exclusive), got {fpr!r}")
    model = export if isinstance(export, ExportedModel) else ExportedModel.load(export)
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if not len(images):
        raise InputError("no images to calibrate on; give defect-free images")
    if all(isinstance(image, (str, os.PathLike)) for image in images):
        paths: list[Any] = list(expand_inputs([os.fspath(image) for image in images]))
        arrays = [data.read_image(p, model.channels) for p in paths]
    elif any(isinstance(image, (str, os.PathLike)) for image in images):
        raise InputError("give images either as paths or as arrays, not both")
    else:
        paths, arrays = [f"image {i}" for i in range(len(images))], [np.asarray(image) for image in images]
    maps = compute_maps(model, arrays, "calibrate", progress=progress, sources=paths)
    threshold = float(postprocess.threshold_at_fpr(maps, float(fpr)))
    if write:
        update_threshold(Path(model.path), threshold, fpr=float(fpr))
    return threshold
