"""From anomaly maps to defect regions: threshold calibration, opening, convex hulls, region tables.

The paper's post-processing (Bergmann et al. 2019, section 4.2): threshold the map at a value
set from defect-free validation images at a chosen false-positive rate, open the binary result
with a circular structuring element of diameter 4 to delete regions only a few pixels wide, and
replace each remaining region by its convex hull to close spurious holes.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tfssim._io import atomic_write_json
from tfssim.errors import InputError, check_fpr
from tfssim.export.metadata import MAX_OPENING_DIAMETER, ExportMetadata

__all__ = ["DEFAULT_FPR", "threshold_at_fpr", "opening_footprint", "segment", "segment_regions", "regions_mask", "region_table",
           "regions_to_json", "PostProcessor"]


# The pixel false-positive rate a threshold is set at when none is named (tfssim-calibrate's,
# tfssim-tune's and tfssim-evaluate's default): 1% of defect-free pixels above the threshold.
DEFAULT_FPR = 0.01


def threshold_at_fpr(maps: Sequence[np.ndarray], fpr: float) -> float:
    """Threshold at which a share ``fpr`` of the pixels of defect-free ``maps`` scores above it.

    The smallest threshold ``t`` with ``share(score > t) <= fpr``: the false-positive rate on the
    validation pixels is as close to ``fpr`` as the scores allow without exceeding it (ties
    can make it lower).

    Args:
        maps (sequence of ndarray): Anomaly maps of defect-free validation images, any sizes.
        fpr (float): Target pixel false-positive rate, ``0 < fpr < 1``.

    Raises:
        ValueError: ``fpr`` out of range, no maps, or non-finite scores.
    """
    check_fpr(fpr)
    if len(maps) == 0:
        raise InputError("no validation maps to calibrate the threshold on; give defect-free images")
    scores = np.sort(np.concatenate([np.asarray(m, np.float64).ravel() for m in maps]))
    if scores.size == 0 or not np.isfinite(scores).all():
        raise InputError("validation maps are empty or hold NaN/infinite values")
    n = scores.size
    k = int(np.ceil((1.0 - fpr) * n)) - 1  # share(score > scores[k]) <= fpr
    return float(scores[min(max(k, 0), n - 1)])


def opening_footprint(diameter: int = 4) -> np.ndarray:
    """Circular structuring element of the given diameter in pixels.

    The paper opens with "a circular structuring element of diameter 4". scikit-image's
    ``disk(2)`` is 5 pixels wide (radius 2 around a centre pixel), so it is *not* used; a true
    diameter-4 disk has no centre pixel and is the 4x4 square without its corners::

        [[0 1 1 0]
         [1 1 1 1]
         [1 1 1 1]
         [0 1 1 0]]

    In general: the pixels whose centres lie within ``diameter / 2`` of the element's centre.
    """
    if diameter < 1:
        raise InputError(f"opening diameter must be >= 1, got {diameter}")
    if diameter > MAX_OPENING_DIAMETER:  # the export metadata's bound: wider erases every defect, slowly
        raise InputError(f"opening diameter must be at most {MAX_OPENING_DIAMETER} pixels (the paper's is 4), "
                         f"got {diameter}")
    c = (diameter - 1) / 2.0
    yy, xx = np.mgrid[:diameter, :diameter]
    return (yy - c) ** 2 + (xx - c) ** 2 <= (diameter / 2.0) ** 2


def segment(anomaly_map: np.ndarray, threshold: float, *, opening_diameter: int = ExportMetadata.opening_diameter, convex_hull: bool = ExportMetadata.convex_hull,
            min_area: int = ExportMetadata.min_area) -> np.ndarray:
    """Binary defect mask of one anomaly map: threshold, opening, convex hull per region.

    Args:
        anomaly_map (ndarray): ``[H, W]`` scores (higher = more anomalous).
        threshold (float): Pixels with ``score > threshold`` are candidates.
        opening_diameter (int): Diameter of the opening's circular element (:func:`opening_footprint`); 0 disables it.
        convex_hull (bool): Replace each connected region by its convex hull.
        min_area (int): Drop regions with fewer pixels (after the hull).
    """
    anomaly_map = _as_map(anomaly_map)
    if not (convex_hull or min_area):
        return _opened(anomaly_map, threshold, opening_diameter)
    return regions_mask(segment_regions(anomaly_map, threshold, opening_diameter=opening_diameter,
                                        convex_hull=convex_hull), anomaly_map.shape, min_area)


def _as_map(anomaly_map: np.ndarray) -> np.ndarray:
    anomaly_map = np.asarray(anomaly_map)
    if anomaly_map.ndim == 3 and anomaly_map.shape[-1] == 1:
        anomaly_map = anomaly_map[..., 0]
    if anomaly_map.ndim != 2:
        raise InputError(f"anomaly map must be 2-D [height, width], got shape {anomaly_map.shape}")
    return anomaly_map


def _opened(anomaly_map: np.ndarray, threshold: float, opening_diameter: int) -> np.ndarray:
    from skimage.morphology import opening

    mask = anomaly_map > np.float64(threshold)  # float64: 1e308 is no float32 (overflow warning)
    if opening_diameter:
        mask = opening(mask, opening_footprint(opening_diameter))
    return mask


def segment_regions(anomaly_map: np.ndarray, threshold: float, *, opening_diameter: int = ExportMetadata.opening_diameter,
                    convex_hull: bool = ExportMetadata.convex_hull) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """The regions :func:`segment` makes of one map before its ``min_area`` filter.

    For callers that try several minimum areas on one segmentation (the tuner): threshold,
    opening and hulls are computed once, :func:`regions_mask` applies each ``min_area``.

    Returns:
        One ``(box, shape)`` per connected region (8-connected) of the opened mask: ``box`` is
        ``(min_row, min_col, max_row, max_col)`` (max exclusive) and ``shape`` the boolean
        ``[rows, cols]`` crop of the region, or of its convex hull with ``convex_hull``.
    """
    from skimage.measure import label, regionprops

    mask = _opened(_as_map(anomaly_map), threshold, opening_diameter)
    return [(tuple(int(v) for v in region.bbox), region.image_convex if convex_hull else region.image)
            for region in regionprops(label(mask, connectivity=2))]


def regions_mask(regions: Sequence[tuple[tuple[int, int, int, int], np.ndarray]], shape: tuple[int, ...],
                 min_area: int = ExportMetadata.min_area) -> np.ndarray:
    """The ``[H, W]`` mask of the :func:`segment_regions` regions with at least ``min_area`` pixels."""
    out = np.zeros(shape[:2], bool)
    for (r0, c0, r1, c1), region in regions:
        if min_area <= 0 or np.count_nonzero(region) >= min_area:
            out[r0:r1, c0:c1] |= region
    return out


def region_table(mask: np.ndarray, anomaly_map: np.ndarray) -> list[dict[str, Any]]:
    """One JSON-ready dict per connected region of ``mask``: label, area, bbox
    (min_row, min_col, max_row, max_col; max exclusive), centroid (row, col), max and mean score."""
    from skimage.measure import label, regionprops

    mask = np.asarray(mask, bool)
    anomaly_map = np.asarray(anomaly_map)
    if anomaly_map.ndim == 3 and anomaly_map.shape[-1] == 1:
        anomaly_map = anomaly_map[..., 0]
    if mask.shape != anomaly_map.shape:
        raise InputError(f"mask shape {mask.shape} differs from anomaly map shape {anomaly_map.shape}")
    rows = []
    for region in regionprops(label(mask, connectivity=2), intensity_image=anomaly_map):
        rows.append({
            "label": int(region.label),
            "area": int(region.area),
            "bbox": [int(v) for v in region.bbox],
            "centroid": [round(float(v), 2) for v in region.centroid],
            "max_score": float(region.intensity_max),
            "mean_score": float(region.intensity_mean),
        })
    return rows


def regions_to_json(regions: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write a region table as JSON atomically."""
    return atomic_write_json(path, list(regions))


@dataclass
class PostProcessor:
    """The paper's post-processing with its settings, e.g. from an export's metadata.

    The defaults are :class:`tfssim.export.metadata.ExportMetadata`'s (the record that owns them).

    Example
    -------
    >>> processor = PostProcessor.from_metadata(exported_model.metadata)
    >>> mask, regions = processor(anomaly_map)
    """

    threshold: float
    opening_diameter: int = ExportMetadata.opening_diameter
    convex_hull: bool = ExportMetadata.convex_hull
    min_area: int = ExportMetadata.min_area

    @classmethod
    def from_metadata(cls, metadata: ExportMetadata | None, *, threshold: float | None = None,
                      opening_diameter: int | None = None, convex_hull: bool | None = None,
                      min_area: int | None = None) -> "PostProcessor":
        """The settings stored in an export's metadata, each replaced by its keyword argument unless ``None``.

        Args:
            metadata: The export's metadata (checked when it was read); ``None``: no export at hand
                (a TF Serving client without it), so the settings are :class:`ExportMetadata`'s
                defaults and the threshold must be given.
            threshold, opening_diameter, convex_hull, min_area: Values that replace the stored ones
                (e.g. command-line options); ``None``: the stored value.

        Returns:
            The post-processor.

        Raises:
            InputError: neither the metadata nor ``threshold`` gives a threshold, or a given value is
                malformed: a threshold that is not a finite number (NaN, infinite, text), a diameter
                or minimum area that is not a whole number >= 0 (a diameter above
                :data:`tfssim.export.metadata.MAX_OPENING_DIAMETER`), a convex_hull that is not
                true/false.
        """
        def number(value: Any) -> bool:
            return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))

        def finite(value: Any) -> bool:  # a 400-digit integer is no float: not finite, no OverflowError
            try:
                return bool(np.isfinite(float(value)))
            except OverflowError:
                return False

        stored: dict[str, Any] = {"threshold": None, "opening_diameter": cls.opening_diameter,
                                  "convex_hull": cls.convex_hull, "min_area": cls.min_area}
        if metadata is not None:
            stored = {key: getattr(metadata, key) for key in stored}
        if threshold is None:
            threshold = stored["threshold"]
            if threshold is None:
                raise InputError("the export has no calibrated threshold; run tfssim-calibrate on defect-free "
                                 "images first")
        elif not (number(threshold) and finite(threshold)):
            raise InputError(f"threshold must be a finite number, got {threshold!r}")
        settings: dict[str, int] = {}
        for key, given in (("opening_diameter", opening_diameter), ("min_area", min_area)):
            if given is None:
                settings[key] = stored[key]
                continue
            if not (number(given) and finite(given) and float(given).is_integer() and given >= 0):
                raise InputError(f"{key} must be a whole number >= 0, got {given!r}")
            if key == "opening_diameter" and given > MAX_OPENING_DIAMETER:
                raise InputError(f"{key} must be at most {MAX_OPENING_DIAMETER} pixels (the paper's is 4), "
                                 f"got {given!r}")
            settings[key] = int(given)
        if convex_hull is not None and not isinstance(convex_hull, (bool, np.bool_)):
            raise InputError(f"convex_hull must be true or false, got {convex_hull!r}")
        hull = stored["convex_hull"] if convex_hull is None else bool(convex_hull)
        return cls(float(threshold), settings["opening_diameter"], hull, settings["min_area"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def segment(self, anomaly_map: np.ndarray) -> np.ndarray:
        """The binary mask alone (:func:`segment` with these settings)."""
        return segment(anomaly_map, self.threshold, opening_diameter=self.opening_diameter,
                       convex_hull=self.convex_hull, min_area=self.min_area)

    def __call__(self, anomaly_map: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The mask and its region table (:func:`region_table`)."""
        mask = self.segment(anomaly_map)
        return mask, region_table(mask, anomaly_map)
