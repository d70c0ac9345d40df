"""Calibrating an export: the anomaly-map threshold from defect-free images.

Two rules: a pixel false-positive rate (the paper's; :func:`tfssim.serving.postprocess.threshold_at_fpr`),
or a minimum defect area (MVTec AD's protocol; :func:`threshold_at_min_defect_area`): the
smallest threshold at which no region of the post-processed segmentation of any defect-free
image is larger than a given number of pixels.

``tfssim-calibrate`` is this module's :func:`calibrate` behind a command line; a script calls it
the same way. The threshold is written as a **new export version** (a copy of the calibrated
one with the threshold in its metadata, ``calibrated_from`` naming the old version), never into
the version calibrated: that one may be served, and no version is ever overwritten.

Example:
    >>> from tfssim.evaluation.calibration import calibrate
    >>> result = calibrate("exported_models/nanotwice", ["good/*.png"], fpr=0.01)   # newest version
    >>> result.threshold, result.path, result.source
    (0.4123, PosixPath('exported_models/nanotwice/2'), PosixPath('exported_models/nanotwice/1'))
    >>> calibrate(result.path, ["good/*.png"], min_defect_area=100).path   # version 3, from 2
    PosixPath('exported_models/nanotwice/3')
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tfssim.errors import InputError, check_fpr
from tfssim.export.metadata import ExportMetadata
from tfssim.serving.postprocess import DEFAULT_FPR

__all__ = ["Calibration", "calibrate", "largest_region_area", "threshold_at_min_defect_area"]



@dataclasses.dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` found, and where it wrote it.

    Attributes:
        threshold: The threshold (pixels scoring above it are candidates).
        method: Its rule: ``"fpr"`` or ``"min_defect_area"`` (metadata ``threshold_method``).
        fpr: The pixel false-positive rate of rule ``"fpr"`` (else ``None``).
        min_defect_area: The area in pixels of rule ``"min_defect_area"`` (else ``None``).
        source: The version folder calibrated (its maps were computed; it is left unchanged).
        path: The new version folder holding the threshold (``None`` with ``write=False``): use
            this one afterwards (predict, evaluate, serve).
    """

    threshold: float
    method: str
    fpr: float | None
    min_defect_area: int | None
    source: Path
    path: Path | None


def _checked_area(min_defect_area: Any) -> int:
    if isinstance(min_defect_area, (bool, np.bool_)) or not isinstance(min_defect_area, (int, np.integer)) \
            or min_defect_area < 0:
        raise InputError(f"min_defect_area must be a whole number of pixels >= 0, got {min_defect_area!r}")
    return int(min_defect_area)


def largest_region_area(anomaly_map: np.ndarray, threshold: float, *, opening_diameter: int = ExportMetadata.opening_diameter,
                        convex_hull: bool = ExportMetadata.convex_hull, min_area: int = ExportMetadata.min_area) -> int:
    """Pixels of the largest connected region of the post-processed segmentation of one map.

    The segmentation is :func:`tfssim.serving.postprocess.segment`'s (threshold, opening, convex hull
    of each region, regions under ``min_area`` dropped); its regions are counted as
    :func:`tfssim.serving.postprocess.region_table` does (8-connected), so overlapping hulls form one
    region.

    Args:
        anomaly_map: ``[H, W]`` scores.
        threshold: Pixels with ``score > threshold`` are candidates.
        opening_diameter, convex_hull, min_area: The post-processing (an export's metadata).

    Returns:
        The area in pixels; 0 when the segmentation is empty.
    """
    from skimage.measure import label

    from tfssim.serving import postprocess

    mask = postprocess.segment(anomaly_map, threshold, opening_diameter=opening_diameter, convex_hull=convex_hull,
                               min_area=min_area)
    if not mask.any():
        return 0
    return int(np.bincount(label(mask, connectivity=2).ravel())[1:].max())


def _map_over(anomaly_map: np.ndarray, threshold: float, area: int, settings: dict[str, Any]) -> bool:
    """Whether :func:`largest_region_area` of one map exceeds ``area``, computing few convex hulls.

    Exact, with two shortcuts (hulls cost about a millisecond per region, and a map near the
    answer holds thousands of regions): every final region contains the opened components it
    grew from, so an opened component larger than ``area`` (kept by ``min_area``) decides
    "over" at once; and a region's hull lies inside the region's bounding box, so every final
    region lies inside one 8-connected blob of the kept components' boxes, and only blobs larger
    than ``area`` need their hulls. Those are computed by :func:`largest_region_area` on the map
    with everything outside them set to ``-inf``: the opening, the components and the hulls
    inside the blobs are the same as on the whole map (an opened component lies inside its box).
    """
    from scipy import ndimage

    from tfssim.serving import postprocess

    eight = np.ones((3, 3), bool)
    opened = postprocess.segment(anomaly_map, threshold, opening_diameter=settings["opening_diameter"],
                                 convex_hull=False)
    labels, count = ndimage.label(opened, structure=eight)
    if count == 0:
        return False
    sizes = np.bincount(labels.ravel())[1:]
    min_area = settings["min_area"]
    if ((sizes > area) & (sizes >= min_area)).any():
        return True
    if not settings["convex_hull"]:  # the regions are the components kept by min_area: none is over
        return False
    boxes = np.zeros(opened.shape, bool)
    for box in ndimage.find_objects(labels):
        if (box[0].stop - box[0].start) * (box[1].stop - box[1].start) >= min_area:  # else the hull is dropped
            boxes[box] = True
    blobs, _ = ndimage.label(boxes, structure=eight)
    big = np.bincount(blobs.ravel()) > area
    big[0] = False
    if not big.any():
        return False
    inside = np.where(big[blobs], np.asarray(anomaly_map, np.float64), -np.inf)
    return largest_region_area(inside, threshold, **settings) > area


def threshold_at_min_defect_area(maps: Sequence[np.ndarray], min_defect_area: int, *, opening_diameter: int = ExportMetadata.opening_diameter,
                                 convex_hull: bool = ExportMetadata.convex_hull, min_area: int = ExportMetadata.min_area) -> float:
    """The smallest threshold at which no region of any map's post-processed segmentation exceeds an area.

    MVTec AD's protocol (Bergmann et al., CVPR 2019): the threshold rises until the largest
    connected region of the segmentation of every defect-free validation image has at most
    ``min_defect_area`` pixels. The segmentation is the one served (:func:`largest_region_area`:
    threshold, opening, convex hulls, ``min_area``), so the rule holds for what prediction
    returns on those images.

    The search is exact for this definition. Let ``F(t)`` be the largest region area over all
    maps at threshold ``t``. ``F`` is non-increasing: raising ``t`` shrinks the thresholded set;
    the opening is an increasing operator (a subset opens to a subset); each opened component
    lies inside one component at the lower threshold, whose convex hull contains its hull and
    which passes ``min_area`` whenever it does; so the final mask at a higher threshold is a
    subset of the mask at a lower one, and every region of a subset lies inside a region of the
    superset. ``F`` is not *strictly* decreasing (after the opening a whole range of thresholds
    can give the same regions), and it only changes where ``t`` crosses a score: the mask
    ``score > t`` is the same for every ``t`` between two consecutive distinct scores. So the
    answer is one of the distinct scores ``s_0 < ... < s_m`` of the maps: the first ``s_k`` with
    ``F(s_k) <= min_defect_area``, found by bisection over ``k`` (about ``log2(m)`` evaluations
    of ``F``; ``F(s_m) = 0`` since nothing scores above the maximum). A final check evaluates
    ``F`` at the result and at the score below it. An evaluation stops at the first map over the
    area, and computes convex hulls only where they can matter (:func:`_map_over`).

    Args:
        maps: Anomaly maps ``[H, W]`` of defect-free validation images, any sizes.
        min_defect_area: Largest region allowed, in pixels of the maps.
        opening_diameter, convex_hull, min_area: The post-processing (an export's metadata).

    Returns:
        The threshold (one of the maps' scores): pixels scoring above it are candidates.

    Raises:
        InputError: no maps, a map that is not 2-D, empty or non-finite, ``min_defect_area``
            not a whole number >= 0, or so large that even every pixel of every image as one
            region is within it (then no threshold is the smallest).

    Example:
        >>> threshold_at_min_defect_area(val_maps, 100)   # no defect-free region over 100 pixels
        0.5217
    """

    area = _checked_area(min_defect_area)
    if len(maps) == 0:
        raise InputError("no validation maps to calibrate the threshold on; give defect-free images")
    arrays = []
    for m in maps:
        m = np.asarray(m)
        m = m[..., 0] if m.ndim == 3 and m.shape[-1] == 1 else m
        if m.ndim != 2 or m.size == 0 or not np.isfinite(m).all():
            raise InputError(f"validation maps must be 2-D, non-empty and finite, got one of shape {m.shape}")
        arrays.append(m)
    settings = {"opening_diameter": opening_diameter, "convex_hull": convex_hull, "min_area": min_area}

    def over(threshold: float) -> bool:
        """Whether some map has a region larger than ``area`` at ``threshold`` (F(threshold) > area)."""
        return any(_map_over(m, threshold, area, settings) for m in arrays)

    # The distinct scores, as float64 (exactly the maps' values): the candidates.
    scores = np.unique(np.concatenate([np.asarray(m, np.float64).ravel() for m in arrays]))
    below = float(np.nextafter(scores[0], -np.inf))  # every pixel set
    if not over(below):
        raise InputError(f"min_defect_area {area} is at least the largest region the validation images can hold "
                         "(every pixel set); every threshold meets it: give a smaller area")
    low, high = 0, scores.size - 1  # invariant: over(scores[high]) is false; every index < low is over
    while low < high:
        mid = (low + high) // 2
        if over(float(scores[mid])):
            low = mid + 1
        else:
            high = mid
    threshold = float(scores[high])
    # The final check: the result meets the area and the next lower candidate does not.
    previous = float(scores[high - 1]) if high > 0 else below
    if over(threshold) or not over(previous):  # impossible for a non-increasing F (see above)
        raise RuntimeError(f"minimum-defect-area search inconsistent at threshold {threshold!r}")
    return threshold


def calibrate(export: str | os.PathLike | Any, images: Sequence[str | os.PathLike | np.ndarray],
              fpr: float | None = None, *, min_defect_area: int | None = None, write: bool = True,
              progress: bool = True) -> Calibration:
    """Calibrate an export's threshold on defect-free images, by a pixel FPR or a minimum defect area,
    and write it as a new export version.

    With ``fpr`` (default :data:`DEFAULT_FPR` when neither rule is given), a share ``fpr`` of
    the defect-free pixels lies above the threshold (:func:`tfssim.serving.postprocess.threshold_at_fpr`).
    With ``min_defect_area``, the threshold is the smallest at which no connected region of the
    post-processed segmentation (the export's opening, convex hull and minimum area, as served)
    of any of the images is larger than that many pixels (:func:`threshold_at_min_defect_area`;
    MVTec AD's protocol).

    The anomaly maps are the export's own (the served graph, with its map settings), so the
    threshold applies to what serving returns. With ``write``, the threshold and its rule
    (``threshold_method``, with ``threshold_fpr`` or ``threshold_min_defect_area``) go into a
    **new version** beside the calibrated one: the next free number in its model folder, a copy
    of its files whose metadata also records ``calibrated_from``
    (:func:`tfssim.export.write_calibrated_version`). The calibrated version is never changed,
    so a version TF Serving serves keeps its meaning; TF Serving's default policy moves to the
    new one by itself.

    Args:
        export: An export version folder ``<root>/<name>/<version>``, its model folder (the
            newest version is used) or a loaded :class:`tfssim.serving.inference.ExportedModel`. A
            SavedModel folder outside that layout can be calibrated only with ``write=False``.
        images: Defect-free images: file paths, folders or globs (as ``tfssim-calibrate`` takes
            them), or arrays ``[H, W]`` / ``[H, W, C]`` in [0, 1] (or uint8).
        fpr: Pixel false-positive rate, strictly between 0 and 1.
        min_defect_area: Largest region allowed on the images, in pixels at their resolution
            (a whole number >= 0); not together with ``fpr``.
        write: Write the new version (else only compute the threshold).
        progress: Show a progress bar over the images.

    Returns:
        A :class:`Calibration`: the threshold, its rule, the version calibrated (``source``)
        and the new version (``path``; ``None`` without ``write``).

    Raises:
        InputError: ``fpr`` out of range, ``min_defect_area`` not a whole number >= 0 or too
            large for the images, both rules given, no images, an image or file the export
            cannot take (the message names it), damaged export metadata, or (with ``write``)
            an export that is not a numbered version folder, whose model folder holds TF
            Serving's last version (2**63 - 1), or that holds a link, device or pipe (these
            three checked before any map is computed).
        FileNotFoundError: the export or an image file does not exist.
    """
    from tfssim import data
    from tfssim.evaluation.evaluate import compute_maps
    from tfssim.export import check_version_files, next_version, version_folder, write_calibrated_version
    from tfssim.serving import postprocess
    from tfssim.serving.inference import ExportedModel
    from tfssim.serving.prediction import expand_inputs

    if fpr is not None and min_defect_area is not None:
        raise InputError("give either fpr or min_defect_area, not both: they are two rules for the threshold")
    if min_defect_area is not None:
        min_defect_area = _checked_area(min_defect_area)
    else:
        fpr = DEFAULT_FPR if fpr is None else fpr
        fpr = check_fpr(fpr, "fpr")
    model = export if isinstance(export, ExportedModel) else ExportedModel.load(export)
    source = Path(model.path)
    if write:
        # Everything that would stop the new version is said before the maps: a bare SavedModel
        # folder (no place for a new version), a model folder at TF Serving's last version, a
        # link or device inside the version (never copied).
        model_root, _ = version_folder(source)
        next_version(model_root)
        check_version_files(source)
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
    if min_defect_area is not None:
        # The post-processing the export prescribes (its metadata), as prediction applies it.
        settings = postprocess.PostProcessor.from_metadata(model.metadata, threshold=0.0)
        threshold = threshold_at_min_defect_area(maps, min_defect_area, opening_diameter=settings.opening_diameter,
                                                 convex_hull=settings.convex_hull, min_area=settings.min_area)
        method = "min_defect_area"
    else:
        threshold = float(postprocess.threshold_at_fpr(maps, fpr))
        method = "fpr"
    path = write_calibrated_version(source, threshold, fpr, min_defect_area=min_defect_area) if write else None
    return Calibration(threshold=float(threshold), method=method, fpr=fpr, min_defect_area=min_defect_area,
                       source=source, path=path)
