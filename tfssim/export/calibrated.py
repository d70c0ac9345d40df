"""A calibrated threshold written as a new export version (:func:`write_calibrated_version`); no TensorFlow.

The new version is a copy of the calibrated one's files (:func:`tfssim.export.layout.copy_version`:
regular files and folders only, links never followed) with the threshold in its metadata, moved
into place beside it without replacing anything (:mod:`tfssim.export.layout`).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tfssim.errors import InputError
from tfssim.export.layout import (
    _fsync_tree,
    _move_into_place,
    _record_owner,
    _remove_dead_partials,
    check_version_files,
    copy_version,
    next_version,
    version_folder,
)
from tfssim.export.metadata import check_value, read_export_metadata, renumber_export

__all__ = ["write_calibrated_version"]

logger = logging.getLogger(__name__)



def _threshold_rule(threshold: float, fpr: float | None,
                    min_defect_area: int | None) -> tuple[float, float | None, int | None, str | None]:
    """The checked ``(threshold, fpr, min_defect_area, threshold_method)`` of a calibration."""
    # The metadata's rules (a 400-digit number is refused, not an OverflowError); NumPy scalars as floats.
    threshold = float(threshold) if isinstance(threshold, (np.floating, np.integer)) else threshold
    check_value("threshold", threshold, "threshold")
    if fpr is not None:
        fpr = float(fpr) if isinstance(fpr, (np.floating, np.integer)) else fpr
        check_value("threshold_fpr", fpr, "fpr")
    if min_defect_area is not None and (isinstance(min_defect_area, (bool, np.bool_))
                                        or not isinstance(min_defect_area, (int, np.integer)) or min_defect_area < 0):
        raise InputError(f"min_defect_area must be a whole number of pixels >= 0, got {min_defect_area!r}")
    if fpr is not None and min_defect_area is not None:
        raise InputError("a threshold is set either at an fpr or by a min_defect_area, not both")
    method = "fpr" if fpr is not None else "min_defect_area" if min_defect_area is not None else None
    return (float(threshold), None if fpr is None else float(fpr),
            None if min_defect_area is None else int(min_defect_area), method)


def write_calibrated_version(export_dir: str | os.PathLike, threshold: float, fpr: float | None = None, *,
                             min_defect_area: int | None = None) -> Path:
    """Write a calibrated threshold as a **new version** beside an export; the given one is not touched.

    A version TF Serving serves must not change meaning under it, and no version is ever
    overwritten: the new version is a copy of ``export_dir``'s files (SavedModel, variables,
    warm-up requests) whose metadata differs only in ``version``, ``threshold``, the rule
    (``threshold_method`` with ``threshold_fpr`` or ``threshold_min_defect_area``: ``"fpr"``
    with ``fpr``, ``"min_defect_area"`` with ``min_defect_area``, ``None`` with neither) and
    ``calibrated_from`` (``export_dir``'s version). Its number is the next free one in the model
    folder (:func:`next_version`), so TF Serving's default policy (the newest version) moves to
    it by itself and can be rolled back by removing it. It is built in a hidden
    ``.<version>.partial-*`` folder, flushed to disk and renamed into place without replacing
    anything, taking the next number if a concurrent export took this one meanwhile (as
    :func:`export_model`); a killed calibration leaves only such a folder, removed by a later
    export or calibration of the model.

    Args:
        export_dir: A version folder ``<root>/<name>/<version>`` (TF Serving's layout).
        threshold: The threshold, a finite number.
        fpr: The pixel false-positive rate it was set at, in (0, 1).
        min_defect_area: Or the largest defect-free region it allows, in pixels (>= 0).

    Returns:
        The new version folder ``<root>/<name>/<new version>``.

    Raises:
        InputError: a threshold that is not finite, an ``fpr`` outside (0, 1), a
            ``min_defect_area`` that is not a whole number >= 0, both given, metadata that
            :func:`~tfssim.export.metadata.read_export_metadata` refuses, or ``export_dir`` not a numbered version folder (a
            bare SavedModel folder: move it into ``<name>/1`` first).
        FileNotFoundError: ``export_dir`` does not exist.
        FileExistsError: concurrent exports took :data:`MAX_VERSION_RETRIES` versions in a row.

    Example:
        >>> write_calibrated_version("exported_models/nanotwice/1", 0.41, fpr=0.01)
        PosixPath('exported_models/nanotwice/2')
    """
    threshold, fpr, min_defect_area, method = _threshold_rule(threshold, fpr, min_defect_area)
    source = Path(export_dir)
    if not source.is_dir():
        raise FileNotFoundError(f"export {source} does not exist (or is not a folder)")
    model_root, from_version = version_folder(source)
    check_version_files(source)  # a link or device inside is refused before anything is read or written
    # The file's checks, naming it; every field but these is the source's, unknown keys (a newer
    # tfssim's, tune's) included.
    changed = read_export_metadata(source).replace(
        threshold=threshold, threshold_fpr=fpr, threshold_method=method, threshold_min_defect_area=min_defect_area,
        calibrated_from=from_version)
    version = next_version(model_root)  # refuses past int64 before anything is removed or written
    _remove_dead_partials(model_root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_root))
    try:
        _record_owner(tmp)
        copy = tmp / "export"
        copy_version(source, copy)
        changed.replace(version=version).write(copy)
        _fsync_tree(copy)
        destination = _move_into_place(copy, model_root, version, auto=True, renumber=renumber_export)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("calibrated %s as new version %s (threshold %.6g)", source, destination, threshold)
    return destination
