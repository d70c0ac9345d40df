"""Scores per defect type: which test images form a type, and how its pixels are pooled.

MVTec AD categories (and plain folders with ``test/<type>/`` subfolders) sort their test images
by defect type; :func:`tfssim.evaluation.evaluate.evaluate` scores each type beside the pooled scores with
:class:`TypePools` (the accumulators of :class:`tfssim.evaluation.metrics.PooledScores`, one per type, fed
image by image), :func:`per_type_scores` with maps in memory. Imports no TensorFlow.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tfssim.errors import InputError
from tfssim.evaluation import metrics

__all__ = ["GOOD", "TYPE_KEYS", "defect_types", "per_type_scores", "TypePools"]

# The scores computed per defect type (the rest are global: threshold, FPR, segmentation ROC).
TYPE_KEYS = ("pixel_auroc", "aupro_0.3", "image_auroc", "f1", "iou")
# The label of defect-free test images (tfssim.data.DatasetSplit.test_labels).
GOOD = "good"


def defect_types(split: Any) -> list[str]:
    """The defect types of a :class:`tfssim.data.DatasetSplit`'s test set, sorted; ``[]`` if it has none.

    An MVTec AD category has types (``test/<type>/``, even a single one); so does a plain folder
    with at least one ``test/<type>/`` subfolder (images directly in ``test/`` then form the type
    ``"defect"``). NanoTWICE and a folder whose test images all lie directly in ``test/`` have no
    types: their report stays the pooled one.
    """
    labels = list(getattr(split, "test_labels", None) or [])
    types = sorted({label for label in labels if label != GOOD})
    if split.layout == "mvtec" or (split.layout == "folder" and any(lb not in (GOOD, "defect") for lb in labels)):
        return types
    return []


class TypePools:
    """Per-type scores accumulated image by image: one :class:`tfssim.evaluation.metrics.PooledScores` per
    defect type, over the type's images and the good test images (the pixels
    :func:`per_type_scores` describes), in two passes over the same maps.

    Args:
        labels: Defect type of each test image, ``"good"`` for the defect-free ones.
        max_fpr, num_thresholds: The overlap sweep (as :func:`per_type_scores`).
        mantissa_bits: Of the pools' histograms.
    """

    def __init__(self, labels: Sequence[str], *, max_fpr: float = 0.3, num_thresholds: int = 300,
                 mantissa_bits: int = 13) -> None:
        self.labels = list(labels)
        self.types = sorted({label for label in self.labels if label != GOOD})
        # The per-type overlap curves keep no quantiles: only their area is reported.
        self.pools = {kind: metrics.PooledScores(mantissa_bits=mantissa_bits, num_thresholds=num_thresholds,
                                                 max_fpr=max_fpr, quantiles=()) for kind in self.types}

    def _pools_of(self, i: int) -> list[metrics.PooledScores]:
        """The pools image ``i`` belongs to: its type's, or every type's for a good image."""
        label = self.labels[i]
        return list(self.pools.values()) if label == GOOD else [self.pools[label]]

    def add_scores(self, i: int, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
        """Pass 1 for test image ``i`` (:meth:`tfssim.evaluation.metrics.PooledScores.add_scores`); its
        image-ROC label is its type (defective) or good, not its mask."""
        for pool in self._pools_of(i):
            pool.add_scores(anomaly_map, mask, defective=self.labels[i] != GOOD)

    def add_segmentation(self, i: int, anomaly_map: np.ndarray, mask: np.ndarray, segmentation: np.ndarray,
                         regions: tuple[np.ndarray, int] | None = None) -> None:
        """Pass 2 for test image ``i`` (:meth:`tfssim.evaluation.metrics.PooledScores.add_segmentation`)."""
        for pool in self._pools_of(i):
            pool.add_segmentation(anomaly_map, mask, segmentation, regions)

    def results(self) -> dict[str, dict[str, Any]]:
        """The scores of :func:`per_type_scores`, in sorted type order."""
        good = self.labels.count(GOOD)
        results: dict[str, dict[str, Any]] = {}
        for kind, pool in self.pools.items():
            has_defect_pixels = pool.histogram.total(pool.DEFECT) > 0
            f1, iou = pool.f1_iou()
            results[kind] = {
                "pixel_auroc": pool.pixel_auroc() if has_defect_pixels else None,
                "aupro_0.3": pool.aupro() if has_defect_pixels else None,
                "image_auroc": pool.image_auroc(),
                "f1": float(f1),
                "iou": float(iou),
                "images": self.labels.count(kind),
                "good_images": good,
                "pixel_auroc_error_bound": pool.auroc_error_bound() if has_defect_pixels else None,
            }
        return results


def per_type_scores(
    test_maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    labels: Sequence[str],
    segmentations: Sequence[np.ndarray],
    *,
    max_fpr: float = 0.3,
    num_thresholds: int = 300,
) -> dict[str, dict[str, Any]]:
    """Pixel AUROC, AUPRO@0.3, image AUROC, F1 and IoU of each defect type.

    Which pixels count: a type is scored on *its images together with the good
    (defect-free) test images*, every pixel of each: the defect pixels of the type's images are
    the positives; the defect-free pixels of those images and all pixels of the good images
    are the negatives. This is the pooling MVTec AD and anomalib use for a category (all pixels
    of all of its test images, good ones included), restricted to one defect type, and the same
    subset the per-type image AUROC uses (the type's images against the good test images), so the
    false-positive rates of all types are measured on the same good images. Images of the other
    defect types are left out.

    The scores are those :func:`tfssim.evaluation.evaluate.evaluate` streams (:class:`TypePools`, of
    :class:`tfssim.evaluation.metrics.PooledScores`): ``pixel_auroc`` within ``pixel_auroc_error_bound``
    of the exact pooled AUC (:func:`tfssim.evaluation.metrics.pixel_roc_auc`), ``aupro_0.3`` with its
    thresholds at histogram bin edges (see :class:`tfssim.evaluation.metrics.PooledScores`), the image
    AUROC, F1 and IoU exact.

    Args:
        test_maps: Anomaly maps of all test images.
        masks: Boolean ground truth of each (all False for good images).
        labels: Defect type of each image, ``"good"`` for the defect-free ones.
        segmentations: The post-processed segmentation of each map at the calibrated threshold
            (for F1 / IoU).
        max_fpr: The FPR limit of the overlap area (``aupro_0.3``: 0.3, as
            :func:`tfssim.evaluation.evaluate.evaluate_maps` passes it).
        num_thresholds: The thresholds of the overlap sweep (:func:`tfssim.evaluation.metrics.aupro`).

    Returns:
        ``{type: {"pixel_auroc", "aupro_0.3", "image_auroc", "f1", "iou", "images",
        "good_images", "pixel_auroc_error_bound"}}`` in sorted type order. ``image_auroc`` is
        ``None`` without good test images; ``pixel_auroc``, its bound and ``aupro_0.3`` are
        ``None`` when the type's masks hold no defect pixel.

    Raises:
        ValueError: the four sequences differ in length.

    Example:
        >>> scores = per_type_scores(maps, masks, split.test_labels, segmentations)
        >>> scores["crack"]["pixel_auroc"]
    """
    if not len(test_maps) == len(masks) == len(labels) == len(segmentations):
        raise InputError(f"{len(test_maps)} maps, {len(masks)} masks, {len(labels)} labels and "
                         f"{len(segmentations)} segmentations; give one of each per test image")
    pools = TypePools(labels, max_fpr=max_fpr, num_thresholds=num_thresholds)
    pairs = [metrics.checked_pair(i, m, g) for i, (m, g) in enumerate(zip(test_maps, masks))]
    for i, (m, g) in enumerate(pairs):
        pools.add_scores(i, m, g)
    for i, ((m, g), s) in enumerate(zip(pairs, segmentations)):
        pools.add_segmentation(i, m, g, metrics.checked_segmentation(i, s, g))
    return pools.results()
