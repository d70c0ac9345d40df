"""Scores per defect type: which test images form a type, and how its pixels are pooled.

MVTec AD categories (and plain folders with ``test/<type>/`` subfolders) sort their test images
by defect type; :func:`tfssim.evaluation.evaluate` scores each type with :func:`per_type_scores`
beside the pooled scores. Imports no TensorFlow.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tfssim import metrics
from tfssim.errors import InputError

__all__ = ["GOOD", "TYPE_KEYS", "defect_types", "per_type_scores"]

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

    Args:
        test_maps: Anomaly maps of all test images.
        masks: Boolean ground truth of each (all False for good images).
        labels: Defect type of each image, ``"good"`` for the defect-free ones.
        segmentations: The post-processed segmentation of each map at the calibrated threshold
            (for F1 / IoU).
        max_fpr: The FPR limit of the overlap area (``aupro_0.3``: 0.3, as
            :func:`tfssim.evaluation.evaluate_maps` passes it).
        num_thresholds: The thresholds of the overlap sweep (:func:`tfssim.metrics.aupro`).

    Returns:
        ``{type: {"pixel_auroc", "aupro_0.3", "image_auroc", "f1", "iou", "images",
        "good_images"}}`` in sorted type order. ``image_auroc`` is ``None`` without good test
        images; ``pixel_auroc`` and ``aupro_0.3`` are ``None`` when the type's masks hold no
        defect pixel.

    Raises:
        ValueError: the four sequences differ in length.

    Example:
        >>> scores = per_type_scores(maps, masks, split.test_labels, segmentations)
        >>> scores["crack"]["pixel_auroc"]
    """
    if not len(test_maps) == len(masks) == len(labels) == len(segmentations):
        raise InputError(f"{len(test_maps)} maps, {len(masks)} masks, {len(labels)} labels and "
                         f"{len(segmentations)} segmentations; give one of each per test image")
    good = [i for i, label in enumerate(labels) if label == GOOD]
    results: dict[str, dict[str, Any]] = {}
    for kind in sorted({label for label in labels if label != GOOD}):
        own = [i for i, label in enumerate(labels) if label == kind]
        chosen = own + good
        maps = [test_maps[i] for i in chosen]
        gts = [np.asarray(masks[i], bool) for i in chosen]
        has_defect_pixels = any(g.any() for g in gts)
        f1, iou = metrics.f1_iou([segmentations[i] for i in chosen], gts)
        results[kind] = {
            "pixel_auroc": metrics.pixel_roc_auc(maps, gts) if has_defect_pixels else None,
            "aupro_0.3": metrics.aupro(maps, gts, max_fpr, num_thresholds) if has_defect_pixels else None,
            "image_auroc": metrics.image_roc_auc(maps, [True] * len(own) + [False] * len(good)),
            "f1": float(f1),
            "iou": float(iou),
            "images": len(own),
            "good_images": len(good),
        }
    return results
