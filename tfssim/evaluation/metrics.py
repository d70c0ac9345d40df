"""Segmentation metrics of the paper and of MVTec AD: pooled pixel ROC, per-region overlap, image AUROC.

Pixel metrics pool every pixel of every test image, as Bergmann et al. define them: the
true-positive rate is the share of all defect pixels that are flagged, the false-positive rate
the share of all good pixels that are flagged. The computations sort the pooled scores once
(float32 maps: ~5 bytes per pixel), so 28 M pixels take seconds.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from tfssim.data.io import check_binary_mask
from tfssim.errors import InputError, check_fpr

__all__ = [
    "pixel_roc", "pixel_roc_auc", "segmentation_roc", "SEGMENTATION_ROC_FPRS", "pro_curve", "aupro", "area_under_pro", "thin_curve", "image_roc_auc", "f1_iou",
    "PRO_QUANTILES", "ScoreHistogram", "fpr_rank", "value_of_rank", "FprThreshold", "region_overlaps",
    "PooledScores", "OVERLAP_BINS", "checked_pair", "checked_segmentation",
    "region_labels",
]

PRO_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _validate(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(maps) == 0:
        raise InputError("no anomaly maps given")
    if len(maps) != len(masks):
        raise InputError(f"{len(maps)} anomaly maps but {len(masks)} masks; give one mask per map")
    out_maps, out_masks = [], []
    for i, (m, g) in enumerate(zip(maps, masks)):
        # Float64 maps stay as they are: rounding to float32 would merge near-equal scores into ties.
        m, g = checked_pair(i, m, g)
        out_maps.append(m)
        out_masks.append(g)
    return out_maps, out_masks


def _pooled_counts(maps: list[np.ndarray], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Distinct thresholds (descending) and the cumulative TP / FP counts of ``score >= t``."""
    scores = np.concatenate([m.ravel() for m in maps])
    labels = np.concatenate([g.ravel() for g in masks])
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise InputError(
            f"ROC needs both defect and good pixels; the masks hold {positives} defect and {negatives} good pixels"
        )
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    labels = labels[order]
    del order
    tp = np.cumsum(labels, dtype=np.int64)
    fp = np.arange(1, labels.size + 1, dtype=np.int64) - tp
    # Keep the last index of each run of equal scores: a threshold flags all of its ties.
    last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
    return scores[last], tp[last], fp[last], positives, negatives


def pixel_roc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled pixel ROC curve.

    Args:
        maps (sequence of ndarray): Anomaly maps ``[H, W]`` (higher = more anomalous); sizes may differ between images.
        masks (sequence of ndarray): Binary ground truth of the same shapes.

    Returns:
        tuple of ndarray: ``(fpr, tpr, thresholds)``, starting at (0, 0) with threshold ``+inf``; a pixel is
            flagged when ``score >= threshold``.
    """
    maps, masks = _validate(maps, masks)
    thresholds, tp, fp, positives, negatives = _pooled_counts(maps, masks)
    fpr = np.r_[0.0, fp / negatives]
    tpr = np.r_[0.0, tp / positives]
    return fpr, tpr, np.r_[np.inf, thresholds]


def area_under_curve(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area under ``y(x)`` (``np.trapezoid``; ``np.trapz`` on NumPy < 2, which lacks it)."""
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return float(trapezoid(y, x))


def pixel_roc_auc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """Area under the pooled pixel ROC curve (ties count half, as ``sklearn.metrics.roc_auc_score``)."""
    fpr, tpr, _ = pixel_roc(maps, masks)
    return area_under_curve(fpr, tpr)


# Raw-map false-positive rates whose thresholds :func:`segmentation_roc` sweeps by default: dense
# where detectors operate (FPR <= 5 %), sparser up to 0.99 so that a weak model's curve is
# measured, not a straight line to (1, 1).
SEGMENTATION_ROC_FPRS = (0.99, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02,
                         0.015, 0.01, 0.007, 0.005, 0.003, 0.002, 0.001, 5e-4, 2e-4, 1e-4)


def segmentation_roc(
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    segment: Callable[[np.ndarray, float], np.ndarray],
    fprs: Sequence[float] = SEGMENTATION_ROC_FPRS,
) -> dict[str, np.ndarray | float]:
    """Pooled pixel ROC of the *segmentations* a post-processor makes, swept over thresholds.

    Bergmann et al. count "the percentage of pixels that were correctly classified as defect"
    after their whole pipeline (threshold, opening, convex hulls). That ROC differs from the raw
    map's (:func:`pixel_roc`): the opening removes thin false positives, the hulls fill defects.
    At each threshold (the raw good-pixel score quantile of each rate in ``fprs``) every map is
    segmented and the flagged good / defect pixels are pooled; the curve is closed with (0, 0)
    and (1, 1) and its area is the trapezoid area (linear between the sampled points).

    Args:
        maps, masks (sequences of ndarray): Test anomaly maps ``[H, W]`` and boolean ground truth of the same shapes; at least one
            defect pixel and one good pixel overall.
        segment (callable): ``segment(map, threshold) -> bool mask``, e.g. ``PostProcessor.segment`` with the
            threshold replaced (see :func:`tfssim.serving.postprocess.segment`).
        fprs (sequence of float): Raw-map false-positive rates in (0, 1) that pick the thresholds.

    Returns:
        dict: ``fpr``, ``tpr`` (curve, sorted by FPR, with the end points), ``thresholds`` (per
            sampled point, NaN at the end points) and ``auc``.
    """
    maps, masks = _validate(maps, masks)
    fprs = np.asarray(fprs, np.float64)
    if fprs.ndim != 1 or fprs.size == 0 or np.any((fprs <= 0) | (fprs >= 1)):
        raise InputError(f"fprs must be false-positive rates in (0, 1), got {fprs.tolist()}")
    good = np.concatenate([np.asarray(m, np.float32)[~k].ravel() for m, k in zip(maps, masks)])
    n_defect = sum(int(k.sum()) for k in masks)
    if good.size == 0 or n_defect == 0:
        raise InputError("a segmentation ROC needs both defect and good pixels in the test masks")
    thresholds = np.unique(np.quantile(good, 1.0 - fprs))
    n_good = good.size
    del good
    points = [(0.0, 0.0, np.nan), (1.0, 1.0, np.nan)]
    for threshold in thresholds:
        false_pos = true_pos = 0
        for anomaly_map, mask in zip(maps, masks):
            flagged = np.asarray(segment(anomaly_map, float(threshold)), bool)
            if flagged.shape != mask.shape:
                raise InputError(f"segment() returned a {flagged.shape} mask for a {mask.shape} map; "
                                 "it must return one boolean value per map pixel")
            true_pos += int(np.count_nonzero(flagged & mask))
            false_pos += int(np.count_nonzero(flagged & ~mask))
        points.append((false_pos / n_good, true_pos / n_defect, float(threshold)))
    # By FPR, then TPR, then falling threshold (ties stay in threshold order).
    points.sort(key=lambda p: (p[0], p[1], 0.0 if np.isnan(p[2]) else -p[2]))
    fpr, tpr, ths = (np.asarray(column) for column in zip(*points))
    return {"fpr": fpr, "tpr": tpr, "thresholds": ths, "auc": area_under_curve(fpr, tpr)}


def pro_curve(
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    num_thresholds: int = 200,
    max_fpr: float = 0.3,
    quantiles: Sequence[float] = PRO_QUANTILES,
) -> dict[str, np.ndarray]:
    """Per-region overlap against the pixel false-positive rate.

    Every connected ground-truth region (8-connectivity) counts once: its overlap at a threshold
    is the share of its pixels the thresholded maps flag. Thresholds are chosen so that the
    pooled FPR on the good pixels sweeps ``num_thresholds`` values evenly from 0 to ``max_fpr``.

    Returns:
        dict: ``fpr`` (achieved FPR per threshold), ``thresholds``, ``mean`` (mean overlap over
            regions), ``quantiles`` (``[len(quantiles), num_thresholds]`` overlap quantiles),
            ``levels`` (the quantile levels) and ``regions`` (the number of regions).
    """
    from skimage.measure import label

    maps, masks = _validate(maps, masks)
    if not 0 < max_fpr <= 1:
        raise InputError(f"max_fpr must be in (0, 1], got {max_fpr}")
    good = np.concatenate([m[~g] for m, g in zip(maps, masks)])
    if good.size == 0:
        raise InputError("per-region overlap needs good pixels to measure the false-positive rate")
    targets = np.linspace(0.0, max_fpr, num_thresholds)
    good_sorted = np.sort(good)
    # The threshold t with share(good > t) <= target: the (1 - target) quantile of good scores.
    idx = np.clip(np.ceil((1.0 - targets) * good.size).astype(np.int64) - 1, 0, good.size - 1)
    thresholds = good_sorted[idx]
    thresholds[0] = np.nextafter(good_sorted[-1], np.float32(np.inf))  # FPR exactly 0
    fpr = 1.0 - np.searchsorted(good_sorted, thresholds, side="right") / good.size

    region_scores: list[np.ndarray] = []
    region_ids: list[np.ndarray] = []
    offset = 0
    for m, g in zip(maps, masks):
        labels = label(g, connectivity=2)
        inside = labels > 0
        region_scores.append(m[inside])
        region_ids.append(labels[inside] + offset - 1)
        offset += int(labels.max())
    if offset == 0:
        raise InputError("per-region overlap needs at least one ground-truth defect region")
    scores = np.concatenate(region_scores)
    ids = np.concatenate(region_ids)
    sizes = np.bincount(ids, minlength=offset).astype(np.float64)
    overlaps = np.empty((num_thresholds, offset))
    for i, t in enumerate(thresholds):
        overlaps[i] = np.bincount(ids, weights=(scores > t).astype(np.float64), minlength=offset) / sizes
    return {
        "fpr": fpr,
        "thresholds": thresholds,
        "mean": overlaps.mean(axis=1),
        "quantiles": np.quantile(overlaps, list(quantiles), axis=1),
        "levels": np.asarray(quantiles),
        "regions": np.asarray(offset),
    }


def aupro(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], max_fpr: float = 0.3, num_thresholds: int = 300) -> float:
    """Normalised area under the mean per-region-overlap curve up to ``max_fpr`` (MVTec AD standard)."""
    return area_under_pro(pro_curve(maps, masks, num_thresholds=num_thresholds, max_fpr=max_fpr), max_fpr)


def area_under_pro(curve: dict[str, np.ndarray], max_fpr: float = 0.3) -> float:
    """Normalised area under the ``mean`` overlap of a :func:`pro_curve` result up to ``max_fpr``.

    Use it with a curve built for the same ``max_fpr`` to get :func:`aupro` without sweeping twice.
    """
    fpr, pro = np.asarray(curve["fpr"]), np.asarray(curve["mean"])
    keep = fpr <= max_fpr
    fpr, pro = fpr[keep], pro[keep]
    if fpr[-1] < max_fpr:
        # The sweep's last point lies less than 1 / (number of good pixels) below max_fpr:
        # close that gap with a constant step at the last overlap (a lower bound, as overlap
        # only grows with the FPR), not an interpolation.
        fpr = np.r_[fpr, max_fpr]
        pro = np.r_[pro, pro[-1]]
    return area_under_curve(fpr, pro) / max_fpr


def thin_curve(x: np.ndarray, y: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``max_points`` points of a monotone curve in the unit square, for plotting.

    Keeps the first point of every cell of a ``max_points / 2`` grid the curve enters (so
    steep and flat parts both keep their shape at 1 / (max_points / 2) resolution) and the
    last point. Compute areas on the full curve, then thin it.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.size <= max_points:
        return x, y
    cells = max(1, max_points // 2)
    key = np.floor(np.clip(x, 0, 1) * cells) + np.floor(np.clip(y, 0, 1) * cells)
    keep = np.r_[True, key[1:] != key[:-1]]
    keep[-1] = True
    return x[keep], y[keep]


def image_roc_auc(maps: Sequence[np.ndarray], labels: Sequence[bool]) -> float | None:
    """Image-level ROC AUC with the map maximum as the image score; ``None`` if only one class exists."""
    if len(maps) != len(labels):
        raise InputError(f"{len(maps)} maps but {len(labels)} labels")
    labels = np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return None
    scores = np.array([float(np.max(m)) for m in maps])
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks of ties (Mann-Whitney U).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    pos = labels.sum()
    neg = len(labels) - pos
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def f1_iou(segmentations: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[float, float]:
    """Pooled pixel F1 and IoU of binary segmentations against the ground truth.

    Every pixel of every image counts once (as the paper pools its pixel metrics). A
    segmentation is a bool array, or numbers where ``> 0.5`` is defect; masks as for
    :func:`pixel_roc`. Both scores are 1.0 when neither segmentations nor masks hold a defect pixel.

    Raises:
        ValueError: No segmentations, a count or shape mismatch, or a mask that is not binary.
    """
    if len(segmentations) == 0:
        raise InputError("no segmentations given")
    if len(segmentations) != len(masks):
        raise InputError(f"{len(segmentations)} segmentations but {len(masks)} masks; give one mask per segmentation")
    tp = fp = fn = 0
    for i, (s, g) in enumerate(zip(segmentations, masks)):
        s, g = np.asarray(s), np.asarray(g)
        s = s[..., 0] if s.ndim == 3 and s.shape[-1] == 1 else s
        g = g[..., 0] if g.ndim == 3 and g.shape[-1] == 1 else g
        if s.shape != g.shape:
            raise InputError(f"segmentation {i} has shape {s.shape} but its mask has shape {g.shape}; they must match")
        if s.dtype != bool:
            s = s > 0.5
        if g.dtype != bool:
            check_binary_mask(g, f"#{i}")
            g = g != 0
        tp += int(np.count_nonzero(s & g))
        fp += int(np.count_nonzero(s & ~g))
        fn += int(np.count_nonzero(~s & g))
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


# --- streaming: bounded-memory accumulators -----------------------------------------------------


def _order_keys(scores: np.ndarray) -> np.ndarray:
    """float32 scores -> uint32 keys in the same order (IEEE 754's sign-magnitude bits made monotone).

    ``-0.0`` is folded onto ``+0.0`` first, so equal scores always get equal keys.
    """
    bits = (np.asarray(scores, np.float32) + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 == +0.0
    negative = (bits & np.uint32(0x80000000)) != 0
    return np.where(negative, ~bits, bits | np.uint32(0x80000000))


def _key_values(keys: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_order_keys`: uint32 keys -> float32 scores."""
    keys = np.asarray(keys, np.uint32)
    positive = (keys & np.uint32(0x80000000)) != 0
    return np.where(positive, keys & np.uint32(0x7FFFFFFF), ~keys).astype(np.uint32).view(np.float32)


class ScoreHistogram:
    """Counts of pixel scores per class in fine, order-preserving bins: pooled ROC AUC and
    false-positive-rate thresholds over any number of maps, in memory that does not grow with them.

    A bin is a range of float32 values sharing their sign, exponent and the top
    ``mantissa_bits`` bits of the mantissa: every bin spans a relative width of at most
    ``2 ** -mantissa_bits`` (0.012 % at 13), from the smallest score to the largest, with no
    range to fix in advance. Bins are stored by binade (sign and exponent), a block of
    ``2 ** mantissa_bits`` counts per class for each binade a score fell in (64 kB per class at
    13; anomaly maps touch a few dozen binades). Two pixels fall in one bin only when their scores
    differ by less than that relative width, and ordered pairs are then counted as ties, which is
    the only error: :meth:`roc_auc_error_bound` gives its bound from the counts (the tests hold it
    against scikit-learn). Counts from a bin's lower edge up are exact, so a threshold at a bin
    edge has an exactly known false-positive rate, and :meth:`rank_bin` names the bin that holds
    a given rank for an exact second look (:func:`value_of_rank`).

    Args:
        classes: Number of pixel classes (e.g. good / defect pixels).
        mantissa_bits: Mantissa bits that tell bins apart (0-23; 23 makes every float32 its own bin).

    Example:
        >>> hist = ScoreHistogram(classes=2)
        >>> for anomaly_map, mask in zip(maps, masks):
        ...     hist.update(anomaly_map, mask)          # class 1 where the mask is set
        >>> hist.roc_auc(positive=1, negative=0)
    """

    def __init__(self, classes: int = 2, mantissa_bits: int = 13) -> None:
        if not 1 <= int(classes) <= 255:
            raise InputError(f"classes must be between 1 and 255, got {classes}")
        if not 0 <= int(mantissa_bits) <= 23:
            raise InputError(f"mantissa_bits must be between 0 and 23, got {mantissa_bits}")
        self.classes = int(classes)
        self.mantissa_bits = int(mantissa_bits)
        self._shift = 23 - self.mantissa_bits
        self._block = 1 << self.mantissa_bits
        self._slot = np.full(512, -1, np.int64)  # binade (sign and exponent: 9 bits) -> block slot
        self._binades: list[int] = []  # binade of each slot, in the order they were first seen
        self._blocks = np.zeros((self.classes, 0), np.int64)  # [class, slot * block + offset]

    def update(self, scores: np.ndarray, labels: np.ndarray | int) -> None:
        """Count ``scores`` (any shape, finite) under ``labels``: an int array of the same shape
        (or a bool mask: class 1 where set) or one class for all of them."""
        scores = np.asarray(scores)
        if scores.size == 0:
            return
        if not np.isfinite(scores).all():
            raise InputError("scores hold NaN or infinite values")
        bins = (_order_keys(scores).ravel() >> np.uint32(self._shift)).astype(np.int64)
        binades = bins >> self.mantissa_bits
        seen = np.flatnonzero(np.bincount(binades, minlength=512))
        new = [int(b) for b in seen if self._slot[b] < 0]
        if new:
            for b in new:
                self._slot[b] = len(self._binades)
                self._binades.append(b)
            grown = np.zeros((self.classes, len(self._binades) * self._block), np.int64)
            grown[:, :self._blocks.shape[1]] = self._blocks
            self._blocks = grown
        index = self._slot[binades] * self._block + (bins & (self._block - 1))
        width = self._blocks.shape[1]
        if np.isscalar(labels) or np.ndim(labels) == 0:
            cls = int(labels)
            if not 0 <= cls < self.classes:
                raise InputError(f"class {cls} out of range 0..{self.classes - 1}")
            self._blocks[cls] += np.bincount(index, minlength=width)
            return
        labels = np.asarray(labels)
        if labels.shape != scores.shape:
            raise InputError(f"labels of shape {labels.shape} for scores of shape {scores.shape}; they must match")
        labels = labels.astype(np.int64).ravel()
        if labels.min() < 0 or labels.max() >= self.classes:
            raise InputError(f"labels must lie in 0..{self.classes - 1}")
        self._blocks += np.bincount(labels * width + index, minlength=self.classes * width).reshape(self.classes, width)

    def _ordered(self) -> tuple[np.ndarray, np.ndarray]:
        """``(bins, counts)``: the global bin number of every stored bin, rising, and the counts
        ``[classes, bins]`` in that order."""
        order = np.argsort(self._binades, kind="stable")
        bins = (np.asarray(self._binades, np.int64)[order, None] * self._block
                + np.arange(self._block, dtype=np.int64)[None, :]).ravel()
        counts = self._blocks.reshape(self.classes, len(self._binades), self._block)[:, order].reshape(self.classes, -1)
        return bins, counts

    @property
    def counts(self) -> np.ndarray:
        """``[classes, bins]`` counts of the stored bins, in rising order of score."""
        return self._ordered()[1]

    def _edge(self, global_bin: int) -> float:
        """The lower edge (the smallest float32) of a global bin number."""
        return float(_key_values(np.uint32(int(global_bin) << self._shift)))

    def bin_edges(self) -> np.ndarray:
        """``[bins + 1]`` float64 edges of the stored bins in order: bin ``j`` holds the scores
        ``edges[j] <= s < `` the lower edge of the bin that follows it in value (the last entry is
        the lower edge of the bin above the last one stored)."""
        bins, _ = self._ordered()
        return np.array([self._edge(b) for b in bins] + ([self._edge(bins[-1] + 1)] if bins.size else []))

    def total(self, cls: int) -> int:
        """Pixels counted in class ``cls``."""
        return int(self._blocks[cls].sum())

    def roc_auc(self, positive: int = 1, negative: int = 0) -> float:
        """Area under the ROC curve of ``positive`` against ``negative`` pixels; pixels sharing a
        bin count as ties (half), as :func:`pixel_roc_auc` counts equal scores."""
        counts = self.counts
        pos, neg = counts[positive].astype(np.float64), counts[negative].astype(np.float64)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            raise InputError(f"ROC needs both classes; counted {int(n_pos)} positive and {int(n_neg)} negative pixels")
        below = np.cumsum(neg) - neg
        return float(np.sum(pos * (below + 0.5 * neg)) / (n_pos * n_neg))

    def roc_auc_error_bound(self, positive: int = 1, negative: int = 0) -> float:
        """The largest possible difference between :meth:`roc_auc` and the exact pooled AUC: half
        the share of positive-negative pairs that share a bin."""
        pos, neg = self._blocks[positive].astype(np.float64), self._blocks[negative].astype(np.float64)
        n = pos.sum() * neg.sum()
        return float(0.5 * np.sum(pos * neg) / n) if n else 0.0

    def count_at_least(self, edge: float, cls: int) -> int:
        """Pixels of ``cls`` in the bin of ``edge`` and above: exactly those scoring ``>= edge``
        when ``edge`` is a bin's lower edge (:meth:`bin_edges`, :meth:`edge_at_fpr`)."""
        bins, counts = self._ordered()
        first = int(_order_keys(np.float32(edge)) >> np.uint32(self._shift))
        return int(counts[cls, np.searchsorted(bins, first):].sum())

    def rank_bin(self, cls: int, rank: int) -> tuple[float, float, int]:
        """The bin holding the ``rank``-th smallest score (0-based) of class ``cls``.

        Returns:
            ``(low, high, below)``: the bin's value range ``low <= s < high`` and the number of
            the class's pixels below it, so that the wanted score is the ``rank - below``-th
            smallest of the class's scores in ``[low, high)`` (:func:`value_of_rank`).
        """
        bins, counts = self._ordered()
        counts = counts[cls]
        total = int(counts.sum())
        if not 0 <= rank < total:
            raise InputError(f"rank {rank} out of range: class {cls} has {total} pixels")
        cumulative = np.cumsum(counts)
        j = int(np.searchsorted(cumulative, rank, side="right"))
        return self._edge(bins[j]), self._edge(bins[j] + 1), int(cumulative[j] - counts[j])

    def edge_at_fpr(self, fpr: float | Sequence[float], cls: int) -> float | np.ndarray:
        """The lower edge of the bin that holds :func:`tfssim.serving.postprocess.threshold_at_fpr`'s
        threshold over the class's scores (an array of them for a sequence of rates): that
        threshold lies in ``[edge, next edge)``, and :meth:`count_at_least` counts exactly the
        scores ``>= edge``."""
        rates = np.atleast_1d(np.asarray(fpr, np.float64))
        bins, counts = self._ordered()
        n = int(counts[cls].sum())
        if n == 0:
            raise InputError(f"class {cls} has no pixels")
        ranks = np.clip(np.ceil((1.0 - rates) * n).astype(np.int64) - 1, 0, n - 1)
        columns = np.searchsorted(np.cumsum(counts[cls]), ranks, side="right")
        edges = np.array([self._edge(bins[j]) for j in columns])
        return float(edges[0]) if np.ndim(fpr) == 0 else edges

    def top_edge(self, cls: int) -> float:
        """The lower edge of the bin just above the class's largest score: nothing of it scores ``>=`` it."""
        bins, counts = self._ordered()
        occupied = np.flatnonzero(counts[cls])
        if occupied.size == 0:
            raise InputError(f"class {cls} has no pixels")
        return self._edge(bins[occupied[-1]] + 1)

    def edge_above_fpr(self, fpr: float | Sequence[float], cls: int) -> float | np.ndarray:
        """The upper edge of the bin that holds :func:`tfssim.serving.postprocess.threshold_at_fpr`'s
        threshold over the class's scores (the lower edge of the bin above it; an array of them
        for a sequence of rates): the scores ``>=`` it are those above every score of that bin,
        so its false-positive rate is at most the threshold's (equal when no other score of the
        bin lies above the threshold, as with ties), and :meth:`count_at_least` counts them
        exactly."""
        lower = np.atleast_1d(np.asarray(self.edge_at_fpr(np.atleast_1d(np.asarray(fpr, np.float64)), cls)))
        above = (_order_keys(lower.astype(np.float32)) >> np.uint32(self._shift)).astype(np.int64) + 1
        edges = _key_values((above << self._shift).astype(np.uint32)).astype(np.float64)
        return float(edges[0]) if np.ndim(fpr) == 0 else edges

    def counts_at_least(self, edges: Sequence[float], cls: int) -> np.ndarray:
        """:meth:`count_at_least` of every value of ``edges`` at once (int64, one per edge)."""
        bins, counts = self._ordered()
        above = np.r_[np.cumsum(counts[cls][::-1])[::-1], 0]  # above[j]: the class's pixels in bins j, j + 1, ...
        first = (_order_keys(np.asarray(edges, np.float32)) >> np.uint32(self._shift)).astype(np.int64)
        return above[np.searchsorted(bins, first)].astype(np.int64)

    def roc_curve(self, positive: int = 1, negative: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ROC curve of ``positive`` against ``negative`` pixels at the lower edges of the
        occupied bins, from the top: ``(fpr, tpr, thresholds)`` as :func:`pixel_roc` gives them
        (starting at (0, 0) with threshold ``+inf``; a point counts the scores ``>=`` its
        threshold, exactly). Its trapezoid area is :meth:`roc_auc`."""
        bins, counts = self._ordered()
        pos, neg = counts[positive], counts[negative]
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        if n_pos == 0 or n_neg == 0:
            raise InputError(f"ROC needs both classes; counted {n_pos} positive and {n_neg} negative pixels")
        occupied = np.flatnonzero(pos + neg)[::-1]  # falling scores
        edges = _key_values((bins[occupied] << self._shift).astype(np.uint32)).astype(np.float64)
        return (np.r_[0.0, np.cumsum(neg[occupied]) / n_neg], np.r_[0.0, np.cumsum(pos[occupied]) / n_pos],
                np.r_[np.inf, edges])

    def partial_roc_auc(self, max_fpr: float, positive: int = 1, negative: int = 0) -> float:
        """The ROC curve's area up to ``max_fpr``, standardised as McClish (1989) and
        ``sklearn.metrics.roc_auc_score(max_fpr=...)`` do: ``(1 + (A - A_min) / (A_max - A_min)) / 2``
        with ``A_min = max_fpr**2 / 2`` (chance) and ``A_max = max_fpr`` (perfect), so 0.5 is
        chance and 1 perfect, as for the full area. Pixels sharing a bin count as ties."""
        if not 0 < max_fpr <= 1:
            raise InputError(f"max_fpr must be in (0, 1], got {max_fpr}")
        fpr, tpr, _ = self.roc_curve(positive, negative)
        stop = int(np.searchsorted(fpr, max_fpr, side="right"))
        x, y = fpr[:stop], tpr[:stop]
        if stop < fpr.size:  # the curve's value at max_fpr, on the segment that crosses it
            x0, x1, y0, y1 = fpr[stop - 1], fpr[stop], tpr[stop - 1], tpr[stop]
            x, y = np.r_[x, max_fpr], np.r_[y, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)]
        area = area_under_curve(x, y)
        low, high = max_fpr**2 / 2, max_fpr
        return float(0.5 * (1 + (area - low) / (high - low)))


def fpr_rank(fpr: float, pixels: int) -> int:
    """The 0-based rank (ascending) of :func:`tfssim.serving.postprocess.threshold_at_fpr`'s threshold
    among ``pixels`` scores: ``ceil((1 - fpr) * pixels) - 1``, clipped to the scores."""
    return min(max(int(np.ceil((1.0 - fpr) * pixels)) - 1, 0), pixels - 1)


def value_of_rank(values: np.ndarray, rank: int) -> float:
    """The ``rank``-th smallest (0-based) of ``values``, e.g. the scores one bin of a
    :class:`ScoreHistogram` holds (:meth:`ScoreHistogram.rank_bin`)."""
    values = np.asarray(values).ravel()
    if not 0 <= rank < values.size:
        raise InputError(f"rank {rank} out of range for {values.size} values")
    return float(np.partition(values, rank)[rank])


class FprThreshold:
    """:func:`tfssim.serving.postprocess.threshold_at_fpr` over maps given one at a time, exactly, in
    memory that does not grow with their number.

    Two looks at the same maps: the first (:meth:`count`) counts every score in a
    :class:`ScoreHistogram`, which names the one bin holding the threshold's rank; the second
    (:meth:`look`) keeps the scores in that bin alone (a relative width of ``2 ** -mantissa_bits``)
    and picks the rank among them (:func:`value_of_rank`). The result is the value
    ``threshold_at_fpr`` returns, float64 maps included (a bin is chosen on the scores rounded to
    float32, which keeps their order; the value is taken from the scores as given).

    Args:
        fpr: Target false-positive rate, ``0 < fpr < 1``.
        mantissa_bits: Of the histogram (:class:`ScoreHistogram`).

    Example:
        >>> calibration = FprThreshold(0.01)
        >>> for m in maps: calibration.count(m)
        >>> for m in maps: calibration.look(m)
        >>> threshold, achieved_fpr = calibration.result()
    """

    def __init__(self, fpr: float, mantissa_bits: int = 13) -> None:
        self.fpr = check_fpr(fpr)
        self._histogram = ScoreHistogram(1, mantissa_bits)
        self._maps = 0
        self._bin: tuple[float, float, int, int] | None = None  # (low, high, below, rank) after the first look
        self._inside: list[np.ndarray] = []

    @property
    def histogram(self) -> ScoreHistogram:
        """The first look's counts (class 0): exact counts of the scores ``>=`` any bin edge."""
        return self._histogram

    def count(self, anomaly_map: np.ndarray) -> None:
        """First look: count one map's scores."""
        if self._bin is not None:
            raise RuntimeError("count() after look(): give every map to count() first")
        scores = np.asarray(anomaly_map)
        if not np.isfinite(scores).all():
            raise InputError("validation maps are empty or hold NaN/infinite values")
        self._histogram.update(scores, 0)
        self._maps += 1

    def look(self, anomaly_map: np.ndarray) -> None:
        """Second look: keep the scores of one map (the same maps as :meth:`count`'s, in any
        order) that fall in the threshold's bin."""
        if self._bin is None:
            if self._maps == 0:
                raise InputError("no validation maps to calibrate the threshold on; give defect-free images")
            total = self._histogram.total(0)
            if total == 0:
                raise InputError("validation maps are empty or hold NaN/infinite values")
            rank = fpr_rank(self.fpr, total)
            low, high, below = self._histogram.rank_bin(0, rank)
            self._bin = (low, high, below, rank)
        low, high = self._bin[:2]
        scores = np.asarray(anomaly_map).ravel()
        rounded = scores.astype(np.float32)
        self._inside.append(np.asarray(scores[(rounded >= low) & (rounded < high)], np.float64))

    def result(self) -> tuple[float, float]:
        """``(threshold, achieved rate)``: ``threshold_at_fpr``'s value and the share of the scores above it."""
        if self._bin is None:
            raise RuntimeError("result() before look(): give every map to look() first")
        low, high, below, rank = self._bin
        inside = np.concatenate(self._inside)
        total = self._histogram.total(0)
        in_bin = self._histogram.count_at_least(low, 0) - self._histogram.count_at_least(high, 0)
        if inside.size != in_bin:  # the second look must see the scores the first one counted
            raise RuntimeError(f"look() kept {inside.size} scores of the threshold's bin where count() counted "
                               f"{in_bin}: give both the same maps")
        threshold = value_of_rank(inside, rank - below)
        # Scores above the bin are above the threshold; below it, below.
        above = total - below - inside.size + int(np.count_nonzero(inside > threshold))
        return threshold, above / total


def checked_pair(index: int, anomaly_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One test map and its ground truth as the pooled metrics take them (the checks of
    :func:`pixel_roc`, one image at a time): ``[H, W, 1]`` squeezed to ``[H, W]``, the mask
    binary and made boolean, the shapes equal, the scores finite; integer maps as float32.

    Raises:
        InputError: naming ``anomaly map <index>``.
    """
    m, g = np.asarray(anomaly_map), np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if g.ndim == 3 and g.shape[-1] == 1:
        g = g[..., 0]
    if m.shape != g.shape:
        raise InputError(f"anomaly map {index} has shape {m.shape} but its mask has shape {g.shape}; they must match")
    if g.dtype != bool:
        check_binary_mask(g, f"#{index}")
        g = g != 0
    if not np.isfinite(m).all():
        raise InputError(f"anomaly map {index} holds NaN or infinite values")
    return (m if np.issubdtype(m.dtype, np.floating) else m.astype(np.float32)), g


def checked_segmentation(index: int, segmentation: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One segmentation as :func:`f1_iou` takes it: ``[H, W, 1]`` squeezed, numbers ``> 0.5``
    as defect, the shape of its (checked) mask."""
    s = np.asarray(segmentation)
    s = s[..., 0] if s.ndim == 3 and s.shape[-1] == 1 else s
    if s.shape != np.shape(mask):
        raise InputError(f"segmentation {index} has shape {s.shape} but its mask has shape {np.shape(mask)}; "
                         "they must match")
    return s if s.dtype == bool else s > 0.5


def region_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``(labels, count)``: the 8-connected regions of a mask (as :func:`pro_curve` counts them,
    scikit-image's connectivity 2), for :func:`region_overlaps`."""
    from scipy import ndimage

    labels, count = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3), bool))
    return labels, int(count)


def region_overlaps(anomaly_map: np.ndarray, mask: np.ndarray, edges: np.ndarray,
                    regions: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """Per connected region of ``mask`` (8-connected) and per threshold of ``edges``, the share
    of the region's pixels scoring ``>= edge`` (scores and edges compared as float32, as a
    :class:`ScoreHistogram` counts them).

    Args:
        anomaly_map, mask: One map ``[H, W]`` and its boolean ground truth.
        edges: Thresholds in any order.
        regions: ``(labels, count)`` of ``mask`` if already labelled (``scipy.ndimage.label``
            with a 3x3 structure).

    Returns:
        float64 ``[regions, len(edges)]``.
    """
    edges = np.asarray(edges, np.float32)
    labels, count = regions if regions is not None else region_labels(mask)
    if count == 0:
        return np.zeros((0, edges.size))
    order = np.argsort(edges, kind="stable")
    ascending = edges[order]
    inside = labels > 0
    ids = labels[inside].astype(np.int64) - 1
    # A pixel counts at ascending[j] exactly when ascending[j] <= its score: for j < passed.
    passed = np.searchsorted(ascending, np.asarray(anomaly_map)[inside].astype(np.float32), side="right")
    table = np.bincount(ids * (edges.size + 1) + passed, minlength=count * (edges.size + 1))
    table = table.reshape(count, edges.size + 1)
    at_least = np.cumsum(table[:, ::-1], axis=1)[:, ::-1][:, 1:]  # [region, j]: pixels with passed > j
    shares = at_least / table.sum(axis=1, keepdims=True)
    out = np.empty_like(shares)
    out[:, order] = shares
    return out


# Resolution of the streamed overlap quantiles: each region's overlap is counted in the nearest of
# OVERLAP_BINS + 1 levels 0, 1/OVERLAP_BINS, ..., 1, so a quantile is off by at most half a level.
OVERLAP_BINS = 1000


class PooledScores:
    """The pooled pixel metrics of a set of test images, accumulated image by image in two
    passes over the same maps, in memory that does not grow with their number.

    Pass 1 (:meth:`add_scores`): every pixel's score into a :class:`ScoreHistogram` of good and
    defect pixels, and each image's maximum. That gives the pixel ROC (AUC within
    :meth:`auroc_error_bound` of :func:`pixel_roc_auc`, which is at most about 1e-4 at 13
    mantissa bits for smooth maps), the image ROC AUC (exact: :func:`image_roc_auc` of the maxima)
    and the thresholds of the overlap curve (:attr:`pro_edges`). Pass 2
    (:meth:`add_segmentation`): TP / FP / FN of a given segmentation (F1 / IoU exact, as
    :func:`f1_iou`) and, per ground-truth region, its overlap at each threshold of
    :attr:`pro_edges`.

    The overlap curve (:meth:`pro_curve`) is :func:`pro_curve`'s with its thresholds moved to bin
    edges: :func:`pro_curve` flags the scores above each of its thresholds (a good pixel's score),
    this curve the scores above the bin holding it (a pixel counts when it scores ``>=`` the
    bin's upper edge), so every point's FPR and mean overlap are exact for its threshold and
    differ from :func:`pro_curve`'s by the pixels scoring inside that one bin above its
    threshold (nothing where the bin holds one value, as with ties). The area (:meth:`aupro`) is
    another trapezoid sum of the same monotone curve at those nearby points: within
    ``1 / (num_thresholds - 1)`` of :func:`aupro` where the sweep's FPR moves in steps of at most
    ``max_fpr / (num_thresholds - 1)`` (each of the two sums then lies within half a step of the
    curve's area), within 1e-4 on the tests' maps (smooth, over many orders of magnitude, and
    equal where ties make wider steps: both sweeps then stop at the same points). Its overlap
    quantiles are counted in
    :data:`OVERLAP_BINS` levels: within ``0.5 / OVERLAP_BINS`` of the exact quantiles at the same
    threshold.

    Args:
        mantissa_bits: Of the histogram.
        num_thresholds, max_fpr: The overlap sweep (:func:`pro_curve`'s).
        quantiles: Overlap quantile levels of :meth:`pro_curve`; ``()`` keeps none (less memory).
    """

    GOOD, DEFECT = 0, 1

    def __init__(self, *, mantissa_bits: int = 13, num_thresholds: int = 300, max_fpr: float = 0.3,
                 quantiles: Sequence[float] = PRO_QUANTILES) -> None:
        if not 0 < max_fpr <= 1:
            raise InputError(f"max_fpr must be in (0, 1], got {max_fpr}")
        self.histogram = ScoreHistogram(2, mantissa_bits)
        self.num_thresholds = int(num_thresholds)
        self.max_fpr = float(max_fpr)
        self.levels = np.asarray(quantiles, np.float64)
        self.maxima: list[float] = []  # per image: its score for the image ROC
        self.defective: list[bool] = []
        self.tp = self.fp = self.fn = 0
        self._edges: np.ndarray | None = None
        self._overlap_sums: np.ndarray | None = None
        self._overlap_counts: np.ndarray | None = None  # [edge, level]: regions per overlap level
        self.regions = 0

    # --- pass 1

    def add_scores(self, anomaly_map: np.ndarray, mask: np.ndarray, defective: bool | None = None) -> None:
        """Pass 1: one map ``[H, W]`` and its boolean ground truth (of the same shape, checked
        by the caller); ``defective`` is the image's label for the image ROC (default: its mask
        holds a defect pixel)."""
        if self._edges is not None:
            raise RuntimeError("add_scores() after add_segmentation(): pass 1 is over")
        mask = np.asarray(mask, bool)
        self.histogram.update(anomaly_map, mask)
        self.maxima.append(float(np.max(anomaly_map)))
        self.defective.append(bool(mask.any()) if defective is None else bool(defective))

    @property
    def pro_edges(self) -> np.ndarray:
        """The ``num_thresholds`` thresholds of the overlap curve, falling (its FPR rising from 0
        to at most ``max_fpr``): above every good pixel, then at FPRs evenly spaced up to
        ``max_fpr`` the upper edges of the good pixels' bins that hold
        :func:`tfssim.serving.postprocess.threshold_at_fpr`'s thresholds
        (:meth:`ScoreHistogram.edge_above_fpr`; :func:`pro_curve` flags the scores above those
        thresholds, these the scores above their bins). Fixed once pass 2 starts."""
        if self._edges is None:
            if self.histogram.total(self.GOOD) == 0:
                raise InputError("per-region overlap needs good pixels to measure the false-positive rate")
            targets = np.linspace(0.0, self.max_fpr, self.num_thresholds)[1:]
            self._edges = np.r_[self.histogram.top_edge(self.GOOD), self.histogram.edge_above_fpr(targets, self.GOOD)]
        return self._edges

    def pixel_auroc(self) -> float:
        """Pooled pixel ROC AUC (ties within a bin count half; see :meth:`auroc_error_bound`)."""
        self._both_classes()
        return self.histogram.roc_auc(self.DEFECT, self.GOOD)

    def auroc_error_bound(self) -> float:
        """The largest possible difference between :meth:`pixel_auroc` and :func:`pixel_roc_auc`."""
        return self.histogram.roc_auc_error_bound(self.DEFECT, self.GOOD)

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(fpr, tpr, thresholds)`` at the bin edges (:meth:`ScoreHistogram.roc_curve`)."""
        self._both_classes()
        return self.histogram.roc_curve(self.DEFECT, self.GOOD)

    def image_auroc(self) -> float | None:
        """Image ROC AUC with the map maximum as the image's score; ``None`` with one class only."""
        return image_roc_auc(self.maxima, self.defective)

    def _both_classes(self) -> None:
        positives, negatives = self.histogram.total(self.DEFECT), self.histogram.total(self.GOOD)
        if positives == 0 or negatives == 0:
            raise InputError(f"ROC needs both defect and good pixels; the masks hold {positives} defect and "
                             f"{negatives} good pixels")

    # --- pass 2

    def add_segmentation(self, anomaly_map: np.ndarray, mask: np.ndarray, segmentation: np.ndarray,
                         regions: tuple[np.ndarray, int] | None = None) -> None:
        """Pass 2: the same map and mask as in pass 1 (any order) with its segmentation (bool, the
        same shape); ``regions``: the mask's ``(labels, count)`` if already labelled."""
        mask = np.asarray(mask, bool)
        segmentation = np.asarray(segmentation, bool)
        self.tp += int(np.count_nonzero(segmentation & mask))
        self.fp += int(np.count_nonzero(segmentation & ~mask))
        self.fn += int(np.count_nonzero(~segmentation & mask))
        if not mask.any():
            return
        edges = self.pro_edges
        shares = region_overlaps(anomaly_map, mask, edges, regions)
        if self._overlap_sums is None:
            self._overlap_sums = np.zeros(edges.size)
            if self.levels.size:
                self._overlap_counts = np.zeros((edges.size, OVERLAP_BINS + 1), np.int64)
        self._overlap_sums += shares.sum(axis=0)
        self.regions += shares.shape[0]
        if self._overlap_counts is not None:
            level = np.rint(shares * OVERLAP_BINS).astype(np.int64)  # [region, edge]
            flat = np.arange(edges.size)[None, :] * (OVERLAP_BINS + 1) + level
            self._overlap_counts += np.bincount(flat.ravel(), minlength=self._overlap_counts.size).reshape(
                self._overlap_counts.shape)

    def f1_iou(self) -> tuple[float, float]:
        """Pooled pixel F1 and IoU of the segmentations (1.0 and 1.0 when nothing is defective)."""
        tp, fp, fn = self.tp, self.fp, self.fn
        if tp + fp + fn == 0:
            return 1.0, 1.0
        return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)

    def pro_curve(self) -> dict[str, np.ndarray]:
        """The overlap curve as :func:`pro_curve` returns it: ``fpr`` (exact at each threshold),
        ``thresholds`` (:attr:`pro_edges`), ``mean``, ``quantiles`` ``[levels, thresholds]``,
        ``levels`` and ``regions``."""
        edges = self.pro_edges
        if self.regions == 0:
            raise InputError("per-region overlap needs at least one ground-truth defect region")
        fpr = self.histogram.counts_at_least(edges, self.GOOD) / self.histogram.total(self.GOOD)
        quantiles = np.zeros((self.levels.size, edges.size))
        if self._overlap_counts is not None:
            # np.quantile's linear rule on the regions' overlaps, each counted at its nearest level.
            cumulative = np.cumsum(self._overlap_counts, axis=1)  # [edge, level]
            for k, q in enumerate(self.levels):
                h = (self.regions - 1) * q
                lo, hi = int(np.floor(h)), min(int(np.floor(h)) + 1, self.regions - 1)
                low = (cumulative <= lo).sum(axis=1) / OVERLAP_BINS
                high = (cumulative <= hi).sum(axis=1) / OVERLAP_BINS
                quantiles[k] = low + (h - lo) * (high - low)
        return {"fpr": fpr, "thresholds": edges.astype(np.float64), "mean": self._overlap_sums / self.regions,
                "quantiles": quantiles, "levels": self.levels, "regions": np.asarray(self.regions)}

    def aupro(self) -> float:
        """Normalised area under the mean overlap up to ``max_fpr`` (:func:`area_under_pro` of :meth:`pro_curve`)."""
        return area_under_pro(self.pro_curve(), self.max_fpr)
