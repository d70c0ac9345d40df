"""Evaluate exports on a labelled dataset: the paper's metrics, figures and a results table.

For each export: anomaly maps of the defect-free validation images set the threshold at the
requested pixel false-positive rate (the paper's procedure); the test maps give the pooled
pixel ROC AUC, the per-region overlap (PRO) curve and its normalised area up to FPR 0.3,
the image-level ROC AUC (score = map maximum) where good test images exist, and F1 / IoU of
the post-processed segmentation (threshold, opening, convex hulls) at the calibrated threshold.
On request, also the ROC of the post-processed segmentations swept over thresholds
(``segmentation_auroc``, :func:`tfssim.evaluation.metrics.segmentation_roc`): the paper counts pixels
"classified as defect" by its whole pipeline.

Datasets whose test images are sorted by defect type (MVTec AD, a folder with
``test/<type>/``) are also scored per type (:func:`~tfssim.evaluation.per_type.per_type_scores`), as MVTec AD reports do.

**Memory is bounded by one image**, whatever the number of images: :func:`evaluate` reads the
images one at a time when they are needed, caches each export's maps on disk (a temporary folder
in the output folder, removed when the export is done) and keeps only accumulators
(:class:`tfssim.evaluation.metrics.FprThreshold`, :class:`tfssim.evaluation.metrics.PooledScores`,
:class:`tfssim.evaluation.per_type.TypePools`). :func:`evaluate_maps` runs the same accumulators over maps
in memory. Per export, the passes:

1. the validation maps (computed, cached): a histogram of their scores;
2. the validation maps again (from the cache): the scores in the one bin that holds the
   threshold's rank, so the threshold is exactly :func:`tfssim.serving.postprocess.threshold_at_fpr`'s;
3. the test maps (computed, cached): a histogram of good and defect pixel scores per defect type
   and pooled, each image's maximum;
4. the test maps again (from the cache): the segmentation at the threshold (TP / FP / FN), each
   ground-truth region's overlap at the overlap curve's thresholds, with ``segmentation_auroc``
   the segmentations at its thresholds (TP / FP).

The maps are cached rather than computed twice: writing and reading a map (4 bytes per pixel,
4 MB for 1024x1024) takes milliseconds, the export's forward pass seconds. How each number
compares with the exact in-memory computation (:mod:`tfssim.evaluation.metrics`):

* ``threshold``, ``val_fpr``, ``f1``, ``iou``, ``image_auroc``: exact;
* ``pixel_auroc``: within ``pixel_auroc_error_bound`` (also reported; about 1e-4 for smooth
  maps, at most 1e-3 in the tests) of :func:`tfssim.evaluation.metrics.pixel_roc_auc`: pixels whose scores
  differ by less than 2**-13 relatively count as ties. The ROC curve (``roc_*.csv``) has a point
  at each occupied bin edge, every point exact for its threshold;
* ``aupro_0.3``: the overlap curve at bin edges next to :func:`tfssim.evaluation.metrics.pro_curve`'s
  thresholds, every point exact for its threshold (:class:`tfssim.evaluation.metrics.PooledScores`); the
  area is within 1 / (PRO_THRESHOLDS - 1) of :func:`tfssim.evaluation.metrics.aupro` without wide ties
  (each sum within half an FPR step of the curve's area), within 1e-4 on the tests' maps (equal
  with ties); the overlap quantiles of ``pro_*.csv`` within 5e-4 of the exact ones at the same
  threshold;
* ``segmentation_auroc``: every point counted exactly at its threshold, the thresholds the top of
  the good test pixels' bin that holds the score quantile at each rate, which may differ from
  :func:`tfssim.evaluation.metrics.segmentation_roc`'s interpolated quantiles by about one bin; an opening or
  a hull can turn that into a region's jump, so the area differs by up to a few 1e-3 on the
  tests' small maps (equal with ties).

By seam: which validation split sets the threshold is :mod:`tfssim.evaluation.splits` (:func:`~tfssim.evaluation.splits.load_split`),
the per-type pooling :mod:`tfssim.evaluation.per_type`. This module is the metric
loop (:func:`evaluate_maps`, :func:`evaluate`) and its files (curves, ``results.csv``, the table).
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tfssim._io import atomic_write, atomic_write_json, output_dir_lock, prepare_output_dir, progress_bar, save_array
from tfssim.errors import InputError
from tfssim.evaluation import metrics
from tfssim.evaluation.per_type import GOOD, TYPE_KEYS, TypePools, defect_types
from tfssim.export.metadata import ExportMetadata
from tfssim.serving import postprocess
from tfssim.serving.inference import ExportedModel, ServingTime

logger = logging.getLogger(__name__)

__all__ = ["ExportEvaluation", "compute_maps", "evaluate_maps", "evaluate", "format_table", "write_curves"]

RESULT_KEYS = ("pixel_auroc", "segmentation_auroc", "aupro_0.3", "image_auroc", "threshold", "fpr_target", "val_fpr", "f1", "iou")
# Columns of results.csv: the scores, then the threshold stored in the export (null if never calibrated).
CSV_KEYS = (*RESULT_KEYS, "export_threshold")
ROC_POINTS = 2000  # the stored / plotted ROC curve is thinned to about this many points
PRO_THRESHOLDS = 300  # FPR sweep of the overlap curve (that of metrics.aupro)
PRO_MAX_FPR = 0.3
# Mantissa bits of the score histograms: bins 2**-13 (0.012 %) wide, relatively (tfssim.evaluation.tuning's).
HISTOGRAM_BITS = 13


@dataclasses.dataclass
class ExportEvaluation:
    """Scores of one export and the curves behind them (``roc``: thinned to about
    :data:`ROC_POINTS` points after its area was computed on the full curve). ``scores`` holds
    :data:`RESULT_KEYS` and ``pixel_auroc_error_bound`` (see the module docstring)."""

    name: str
    scores: dict[str, float | None]
    roc: tuple[np.ndarray, np.ndarray]
    pro: dict[str, np.ndarray]
    seconds: float
    segmentation_roc: dict[str, Any] | None = None
    # Per defect type (:func:`~tfssim.evaluation.per_type.per_type_scores`): None for datasets without defect types.
    per_type: dict[str, dict[str, Any]] | None = None
    # Time in the export's graph per megapixel, over the validation and test images it scored.
    seconds_per_megapixel: float | None = None
    stride: int | None = None  # the export's (default) stride, at which it served them


def compute_maps(model: ExportedModel, images: Sequence[np.ndarray], desc: str = "maps", progress: bool = True,
                 sources: Sequence[Any] | None = None) -> list[np.ndarray]:
    """Anomaly maps ``[H, W]`` of ``images`` with ``model``.

    ``sources`` (e.g. the image paths) name the image in the ``ValueError`` of one the export refuses.
    """
    if sources is not None and len(sources) != len(images):
        raise InputError(f"{len(images)} images but {len(sources)} sources")
    names = sources if sources is not None else [None] * len(images)
    pairs = list(zip(images, names))
    return [model.predict(img, source=name)["anomaly_map"]
            for img, name in progress_bar(pairs, desc=desc, enabled=progress)]


def evaluate_maps(
    name: str,
    val_maps: Sequence[np.ndarray],
    test_maps: Sequence[np.ndarray],
    test_masks: Sequence[np.ndarray],
    *,
    fpr: float = postprocess.DEFAULT_FPR,
    opening_diameter: int = ExportMetadata.opening_diameter,
    convex_hull: bool = ExportMetadata.convex_hull,
    min_area: int = ExportMetadata.min_area,
    segmentation_auroc: bool = False,
    test_labels: Sequence[str] | None = None,
) -> ExportEvaluation:
    """All metrics of one model from its validation and test maps (no model needed).

    The accumulators :func:`evaluate` streams the maps of files through, run over maps in
    memory: the same numbers, with the errors the module docstring states.

    Args:
        name: Label of the model in tables and plots.
        val_maps: Maps of defect-free validation images (set the threshold).
        test_maps: Maps of the test images.
        test_masks: Boolean ground truth of the test images (all False for good images).
        fpr: Target pixel false-positive rate of the threshold.
        opening_diameter, convex_hull, min_area: Post-processing of the segmentation scored by
            F1 / IoU (:class:`tfssim.serving.postprocess.PostProcessor`); :func:`evaluate` takes them
            from each export's metadata.
        segmentation_auroc: Also sweep the post-processed segmentation over thresholds (the
            ROC of :func:`tfssim.evaluation.metrics.segmentation_roc`, at thresholds on histogram bin edges;
            about a minute per model on the 40 NanoTWICE test images); the score is ``None``
            otherwise.
        test_labels: Defect type of each test image (``"good"`` for defect-free ones, see
            :func:`~tfssim.evaluation.per_type.defect_types`): also score each type (:func:`~tfssim.evaluation.per_type.per_type_scores`, in
            ``per_type``). ``None`` (default): the pooled scores only.
    """
    if len(test_maps) == 0:
        raise InputError("no anomaly maps given")
    if len(test_maps) != len(test_masks):
        raise InputError(f"{len(test_maps)} anomaly maps but {len(test_masks)} masks; give one mask per map")
    masks = [np.asarray(m, dtype=bool) for m in test_masks]
    processor = postprocess.PostProcessor(0.0, opening_diameter, convex_hull, min_area)
    return _score(name, val_maps, test_maps, masks, fpr=fpr, processor=processor,
                  segmentation_auroc=segmentation_auroc, test_labels=test_labels, progress=False)


class _SegmentationCounts:
    """The segmentation ROC accumulated image by image: TP / FP of the post-processed
    segmentation at each threshold of :func:`tfssim.evaluation.metrics.segmentation_roc`'s sweep, a
    threshold being the largest float32 of the good test pixels' bin that holds the score
    quantile at a rate of :data:`metrics.SEGMENTATION_ROC_FPRS` (``score > threshold``: the
    scores above that bin)."""

    def __init__(self, pooled: metrics.PooledScores, processor: postprocess.PostProcessor) -> None:
        hist = pooled.histogram
        self.n_good, self.n_defect = hist.total(pooled.GOOD), hist.total(pooled.DEFECT)
        if self.n_good == 0 or self.n_defect == 0:
            raise InputError("a segmentation ROC needs both defect and good pixels in the test masks")
        above = hist.edge_above_fpr(metrics.SEGMENTATION_ROC_FPRS, pooled.GOOD).astype(np.float32)
        self.thresholds = np.unique(np.nextafter(above, np.float32(-np.inf)).astype(np.float64))
        self._processors = [dataclasses.replace(processor, threshold=float(t)) for t in self.thresholds]
        self.tp = np.zeros(self.thresholds.size, np.int64)
        self.fp = np.zeros(self.thresholds.size, np.int64)

    def add(self, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
        for k, processor in enumerate(self._processors):
            flagged = processor.segment(anomaly_map)
            self.tp[k] += int(np.count_nonzero(flagged & mask))
            self.fp[k] += int(np.count_nonzero(flagged & ~mask))

    def curve(self) -> dict[str, Any]:
        """As :func:`tfssim.evaluation.metrics.segmentation_roc` returns it."""
        points = [(0.0, 0.0, np.nan), (1.0, 1.0, np.nan)]
        points += [(int(fp) / self.n_good, int(tp) / self.n_defect, float(t))
                   for t, tp, fp in zip(self.thresholds, self.tp, self.fp)]
        # By FPR, then TPR, then falling threshold (ties stay in threshold order).
        points.sort(key=lambda p: (p[0], p[1], 0.0 if np.isnan(p[2]) else -p[2]))
        fpr, tpr, ths = (np.asarray(column) for column in zip(*points))
        return {"fpr": fpr, "tpr": tpr, "thresholds": ths, "auc": metrics.area_under_curve(fpr, tpr)}


def _score(name: str, val_maps: Sequence[np.ndarray], test_maps: Sequence[np.ndarray],
           masks: Sequence[np.ndarray], *, fpr: float, processor: postprocess.PostProcessor,
           segmentation_auroc: bool, test_labels: Sequence[str] | None, progress: bool) -> ExportEvaluation:
    """The metrics of one model in the passes of the module docstring.

    ``val_maps``, ``test_maps`` and ``masks`` are read by index, once per pass, and must give the
    same arrays each time (lists in memory, or :class:`_ExportMaps` / :class:`_MaskFiles`).
    ``processor``: the post-processing; its threshold is replaced by the calibrated one.
    """
    started = time.perf_counter()
    n = len(test_maps)
    if test_labels is not None and len(test_labels) != n:
        raise InputError(f"{n} maps, {len(masks)} masks and {len(test_labels)} labels; give one of each per test image")
    if len(val_maps) == 0:
        raise InputError("no validation maps to calibrate the threshold on; give defect-free images")
    calibration = metrics.FprThreshold(fpr, HISTOGRAM_BITS)
    for i in progress_bar(range(len(val_maps)), desc=f"{name}: validation", enabled=progress):
        calibration.count(val_maps[i])
    for i in progress_bar(range(len(val_maps)), desc=f"{name}: threshold", enabled=progress):
        calibration.look(val_maps[i])
    threshold, val_fpr = calibration.result()
    processor = dataclasses.replace(processor, threshold=threshold)

    pooled = metrics.PooledScores(mantissa_bits=HISTOGRAM_BITS, num_thresholds=PRO_THRESHOLDS, max_fpr=PRO_MAX_FPR)
    types = None if test_labels is None else TypePools(test_labels, max_fpr=PRO_MAX_FPR,
                                                       num_thresholds=PRO_THRESHOLDS, mantissa_bits=HISTOGRAM_BITS)
    for i in progress_bar(range(n), desc=f"{name}: test", enabled=progress):
        anomaly_map, mask = metrics.checked_pair(i, test_maps[i], masks[i])
        pooled.add_scores(anomaly_map, mask)
        if types is not None:
            types.add_scores(i, anomaly_map, mask)
    auroc = pooled.pixel_auroc()  # before the second pass: a test set without defect or good pixels fails now
    fpr_curve, tpr_curve, _ = pooled.roc_curve()
    roc = metrics.thin_curve(fpr_curve, tpr_curve, ROC_POINTS)  # the AUC above used every point
    del fpr_curve, tpr_curve
    seg_counts = _SegmentationCounts(pooled, processor) if segmentation_auroc else None

    for i in progress_bar(range(n), desc=f"{name}: scores", enabled=progress):
        anomaly_map, mask = metrics.checked_pair(i, test_maps[i], masks[i])
        segmentation = processor.segment(anomaly_map)
        regions = metrics.region_labels(mask) if mask.any() else None  # labelled once for every pool
        pooled.add_segmentation(anomaly_map, mask, segmentation, regions)
        if types is not None:
            types.add_segmentation(i, anomaly_map, mask, segmentation, regions)
        if seg_counts is not None:
            seg_counts.add(anomaly_map, mask)
    # One sweep serves both the plotted overlap curve and its area.
    pro = pooled.pro_curve()
    f1, iou = pooled.f1_iou()
    seg_roc = None if seg_counts is None else seg_counts.curve()
    scores: dict[str, float | None] = {
        "pixel_auroc": auroc,
        "segmentation_auroc": None if seg_roc is None else float(seg_roc["auc"]),
        "aupro_0.3": metrics.area_under_pro(pro, PRO_MAX_FPR),
        "image_auroc": pooled.image_auroc(),
        "threshold": float(threshold),
        "fpr_target": float(fpr),
        "val_fpr": float(val_fpr),
        "f1": float(f1),
        "iou": float(iou),
        "pixel_auroc_error_bound": pooled.auroc_error_bound(),
    }
    per_type = None if types is None else types.results()
    return ExportEvaluation(name, scores, roc, pro, time.perf_counter() - started, seg_roc, per_type)


class _ExportMaps:
    """The anomaly maps of one export on image files, by index: computed on first access and
    cached on disk (``.npy``, exact), read back from there by the later passes."""

    def __init__(self, model: ExportedModel, paths: Sequence[Path], channels: int, cache: Path, prefix: str,
                 serving: ServingTime) -> None:
        self._model, self._paths, self._channels = model, list(paths), channels
        self._cache, self._prefix, self._serving = cache, prefix, serving

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i: int) -> np.ndarray:
        from tfssim import data

        cached = self._cache / f"{self._prefix}_{i}.npy"
        if cached.exists():
            return np.load(cached)
        image = data.read_image(self._paths[i], self._channels)
        anomaly_map = np.asarray(self._serving.predict(self._model, image, source=self._paths[i])["anomaly_map"])
        save_array(cached, anomaly_map)
        return anomaly_map


class _MaskFiles:
    """The ground truth of the test images, by index, read when needed (all False for a test
    image without a mask)."""

    def __init__(self, paths: Sequence[Path | None], shapes: Sequence[tuple[int, int]]) -> None:
        self._paths, self._shapes = list(paths), list(shapes)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i: int) -> np.ndarray:
        from tfssim import data

        path, shape = self._paths[i], self._shapes[i]
        return np.zeros(shape, bool) if path is None else data.read_mask(path, shape=shape)


def _write_csv(path: Path, header: Sequence[str], columns: Sequence[np.ndarray]) -> Path:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(zip(*(np.asarray(c, np.float64).tolist() for c in columns)))  # repr: exact floats

    return atomic_write(path, write)


def write_curves(result: ExportEvaluation, output: str | Path, stem: str | None = None) -> tuple[Path, Path]:
    """Write the curves behind the plots of one export as CSV, atomically.

    ``roc_<stem>.csv``: columns ``fpr, tpr`` of the pixel ROC curve as plotted (thinned to about
    :data:`ROC_POINTS` points; its trapezoid area is within about 1e-3 of ``pixel_auroc``, which
    used every point). ``pro_<stem>.csv``: ``fpr``, ``threshold``, ``mean`` (the overlap whose
    normalised area is ``aupro_0.3``) and one column ``q<level>`` per overlap quantile plotted
    (``q0.1`` ... ``q0.9``). With a segmentation ROC, also ``segroc_<stem>.csv``: ``fpr, tpr,
    threshold`` (NaN threshold at the end points). ``stem`` defaults to the export's name with ``/`` and spaces as ``_``.

    Returns:
        The two paths.
    """
    output = Path(output)
    stem = stem or result.name.replace("/", "_").replace(" ", "_")
    roc = _write_csv(output / f"roc_{stem}.csv", ["fpr", "tpr"], result.roc)
    levels = [f"q{float(level):g}" for level in np.asarray(result.pro["levels"])]
    pro = _write_csv(output / f"pro_{stem}.csv", ["fpr", "threshold", "mean", *levels],
                     [result.pro["fpr"], result.pro["thresholds"], result.pro["mean"], *np.asarray(result.pro["quantiles"])])
    if result.segmentation_roc is not None:
        curve = result.segmentation_roc
        _write_csv(output / f"segroc_{stem}.csv", ["fpr", "tpr", "threshold"], [curve["fpr"], curve["tpr"], curve["thresholds"]])
    return roc, pro


def format_table(results: Sequence[ExportEvaluation]) -> str:
    """A one-screen text table of the scores."""
    widths = {k: max(12, len(k) + 2) for k in RESULT_KEYS}
    header = f"{'model':<24}" + "".join(f"{k:>{widths[k]}}" for k in RESULT_KEYS)
    lines = [header, "-" * len(header)]
    for r in results:
        cells = "".join(f"{'-' if r.scores.get(k) is None else format(r.scores[k], '.4f'):>{widths[k]}}" for k in RESULT_KEYS)
        lines.append(f"{r.name[:24]:<24}{cells}")
    for r in results:
        if r.seconds_per_megapixel is not None:
            lines.append(f"{r.name}: {r.seconds_per_megapixel:.3g} s per megapixel in the export's graph at stride "
                         f"{r.stride} (over every image, the graph's start-up included)")
    for r in results:
        stored = r.scores.get("export_threshold")
        if stored is not None:
            lines.append(f"{r.name}: threshold stored in the export {stored:.4f} "
                         f"(recalibrated here: {r.scores['threshold']:.4f})")
    typed = [r for r in results if r.per_type]
    if typed:
        goods = sorted({s["good_images"] for r in typed for s in r.per_type.values()})
        plural = "" if goods == [1] else "s"
        lines += ["", f"per defect type (each type's images with the {'/'.join(map(str, goods))} good test "
                      f"image{plural}; the threshold above):"]
        head = f"{'model':<24}{'defect type':<20}{'images':>8}" + "".join(f"{k:>{widths[k]}}" for k in TYPE_KEYS)
        lines += [head, "-" * len(head)]
        for r in typed:
            for kind, s in r.per_type.items():
                cells = "".join(f"{'-' if s.get(k) is None else format(s[k], '.4f'):>{widths[k]}}" for k in TYPE_KEYS)
                lines.append(f"{r.name[:24]:<24}{kind[:19]:<20}{s['images']:>8}{cells}")
    return "\n".join(lines)


def _unique_names(exports: Sequence[ExportedModel]) -> list[str]:
    names: list[str] = []
    for model in exports:
        base = f"{model.name}/{model.path.name}"
        name, i = base, 2
        while name in names:
            name, i = f"{base} ({i})", i + 1
        names.append(name)
    return names


def evaluate(
    split: Any,
    exports: Sequence[ExportedModel],
    output: str | Path,
    *,
    fpr: float = postprocess.DEFAULT_FPR,
    max_overlays: int = 8,
    progress: bool = True,
    segmentation_auroc: bool = False,
) -> list[ExportEvaluation]:
    """Evaluate ``exports`` on a :class:`tfssim.data.DatasetSplit` and write the reports.

    Writes to ``output``: ``results.json`` (per export the scores and wall time),
    ``results.csv``, ``roc.png`` (all exports), per export ``roc_<name>.csv`` and
    ``pro_<name>.csv`` (the curves, see :func:`write_curves`) and ``pro_<name>.png`` (overlap
    quantiles vs FPR), with ``segmentation_auroc`` ``segroc_<name>.csv`` (the ROC of the
    post-processed segmentations), and overlays of the first test images for each export under
    ``overlays/``. ``<name>`` is the export's ``name/version`` with ``/`` as ``_``.

    A dataset with defect types (:func:`~tfssim.evaluation.per_type.defect_types`) is also scored per type
    (:func:`~tfssim.evaluation.per_type.per_type_scores`, which says which pixels count): ``per_type`` per export in
    ``results.json`` (and ``counts.per_type``), one ``results.csv`` row per export and type after
    its pooled row (``defect_type`` column, ``all`` for the pooled one), and ``per_type.png`` (a
    bar chart). Datasets without types get exactly the pooled files.
    """
    if not split.test:
        raise InputError(f"dataset {split.root} has no test images to evaluate on")
    if not split.val:
        raise InputError(
            f"dataset {split.root} has no defect-free validation images to set the threshold from"
        )
    names = _unique_names(exports)
    safe_names = [name.replace("/", "_").replace(" ", "_") for name in names]
    # Every output-side problem before the first image: never inside the dataset or an export.
    inputs = [split.root, *split.val, *split.test, *[m for m in split.test_masks if m is not None],
              *[m.path for m in exports], *[m.path.parent for m in exports]]
    output = prepare_output_dir(output, inputs)
    with output_dir_lock(output, "tfssim-evaluate"):  # one command at a time writes the folder
        return _evaluate_into(split, exports, output, names, safe_names, fpr=fpr, max_overlays=max_overlays,
                              progress=progress, segmentation_auroc=segmentation_auroc)


def _evaluate_into(split: Any, exports: Sequence[ExportedModel], output: Path, names: list[str],
                   safe_names: list[str], *, fpr: float, max_overlays: int, progress: bool,
                   segmentation_auroc: bool) -> list[ExportEvaluation]:
    """:func:`evaluate` once its output folder is checked and held."""
    from tfssim import data, plots  # matplotlib loads here, not when the module (or the CLI's --help) does
    from tfssim.serving.prediction import output_stems

    channels = {m.channels for m in exports}
    if len(channels) > 1:
        raise InputError("the exports take different channel counts; evaluate grayscale and RGB models separately")
    (ch,) = channels
    # Every image and mask read (and checked) once before the first map, one at a time: a bad
    # file fails in seconds, not after an export's maps. Only the shapes are kept.
    for path in progress_bar(split.val, desc="checking validation images", enabled=progress):
        data.read_image(path, ch)
    shapes: list[tuple[int, int]] = []
    defective = 0
    for path, mask_path in progress_bar(list(zip(split.test, split.test_masks)), desc="checking test images",
                                        enabled=progress):
        image = data.read_image(path, ch)
        (mask,) = data.read_test_masks([mask_path], [image])
        shapes.append(tuple(image.shape[:2]))
        defective += bool(mask.any())
    del image, mask
    masks = _MaskFiles(split.test_masks, shapes)
    types = defect_types(split)
    labels = list(split.test_labels) if types else None
    # Named as tfssim-predict names its outputs: MVTec AD's good/000.png and scratch/000.png
    # become good_000.png and scratch_000.png, not one file written twice.
    stems = output_stems([Path(p) for p in split.test])

    results: list[ExportEvaluation] = []
    for name, model in zip(names, exports):
        started = time.perf_counter()
        logger.info("evaluating %s on %d validation and %d test images", name, len(split.val), len(split.test))
        # Segment as prediction and serving users do: the export's post-processing settings,
        # at the threshold calibrated here.
        settings = postprocess.PostProcessor.from_metadata(model.metadata, threshold=0.0)
        # The maps of this export, cached for the later passes, gone when it is done.
        with tempfile.TemporaryDirectory(prefix=".tfssim-evaluate-cache-", dir=output) as cache:
            serving = ServingTime()
            val_maps = _ExportMaps(model, split.val, ch, Path(cache), "val", serving)
            test_maps = _ExportMaps(model, split.test, ch, Path(cache), "test", serving)
            result = _score(name, val_maps, test_maps, masks, fpr=fpr, processor=settings,
                            segmentation_auroc=segmentation_auroc, test_labels=labels, progress=progress)
            safe = safe_names[len(results)]
            processor = dataclasses.replace(settings, threshold=result.scores["threshold"])
            overlay_dir = output / "overlays" / safe
            overlay_dir.mkdir(parents=True, exist_ok=True)
            for i in range(min(max_overlays, len(split.test))):
                image = data.read_image(split.test[i], ch)
                plots.plot_overlay(image, processor.segment(test_maps[i]), masks[i], overlay_dir / f"{stems[i]}.png")
        # Beside the threshold recalibrated here: the one stored in the export (what serving uses).
        result.scores["export_threshold"] = model.threshold
        result.seconds = time.perf_counter() - started
        result.seconds_per_megapixel, result.stride = serving.seconds_per_megapixel, model.metadata.stride
        results.append(result)
        plots.plot_pro_quantiles(result.pro["fpr"], result.pro["quantiles"], output / f"pro_{safe}.png")
        write_curves(result, output, safe)

    plots.plot_roc_curves(
        {r.name: (r.roc[0], r.roc[1], r.scores["pixel_auroc"]) for r in results}, output / "roc.png"
    )
    payload = {
        "dataset": str(split.root), "layout": split.layout, "fpr_target": fpr,
        "counts": {"val": len(split.val), "test": len(split.test), "defective": defective},
        "exports": {r.name: {**r.scores, "path": str(m.path), "seconds": round(r.seconds, 2),
                             "stride": r.stride, "seconds_per_megapixel": r.seconds_per_megapixel}
                    for r, m in zip(results, exports)},
    }
    if types:
        # Beside the pooled scores, never instead of them: datasets without types keep today's files.
        payload["counts"]["per_type"] = {kind: split.test_labels.count(kind) for kind in [*types, GOOD]}
        payload["per_type_pixels"] = ("each type's images and the good test images, all of their pixels "
                                      "(positives: the type's defect pixels)")
        for r in results:
            payload["exports"][r.name]["per_type"] = r.per_type
        plots.plot_per_type({r.name: r.per_type or {} for r in results}, output / "per_type.png")
    atomic_write_json(output / "results.json", payload)

    def write_csv(path: Path) -> None:
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            if not types:
                writer.writerow(["model", *CSV_KEYS, "seconds"])
                for r in results:
                    writer.writerow([r.name, *[r.scores.get(k) for k in CSV_KEYS], round(r.seconds, 2)])  # None -> ""
                return
            # One row per export and type after the pooled row ("all"); a type row holds the
            # per-type scores and the threshold settings they were taken at (segmentation_auroc
            # and seconds are pooled only). test_images: the images the row scores.
            writer.writerow(["model", "defect_type", *CSV_KEYS, "seconds", "test_images"])
            shared = ("threshold", "fpr_target", "val_fpr", "export_threshold")
            for r in results:
                writer.writerow([r.name, "all", *[r.scores.get(k) for k in CSV_KEYS], round(r.seconds, 2),
                                 len(split.test)])
                for kind, s in (r.per_type or {}).items():
                    row = [s.get(k) if k in TYPE_KEYS else r.scores.get(k) if k in shared else None for k in CSV_KEYS]
                    writer.writerow([r.name, kind, *row, None, s["images"] + s["good_images"]])

    atomic_write(output / "results.csv", write_csv)
    return results
