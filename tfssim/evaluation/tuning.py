"""Choosing an export's scoring from defect-free images alone (synthetic defects), and writing it as a new version.

A user with a new product has good images and no labelled defects. :func:`tune` paints
realistic synthetic defects with exact masks (:mod:`tfssim.data.defects`: texture transplants,
smeared areas, foreign bodies, scratches and cracks) into copies of the defect-free validation
images, runs the export **once** per painted copy and per clean image to get its reconstruction
(the served ``reconstruction`` output), and scores every candidate setting from (input,
reconstruction) in the library, since the candidates differ only in scoring:

* the anomaly map: for SSIM models the SSIM window (7 / 11 / 15) and its weighting (Gaussian /
  uniform), and for every model the map's Gaussian smoothing sigma (0, 2, 4, 8, 12, 16, those
  that fit the patch); and, given the export's Keras model, the tiling the map is computed from:
  the tile blend (``mean`` / ``gaussian``) and, when asked for, the image border (``none`` /
  ``reflect``: one more model pass per image), each other tiling scored with the window and
  weighting best on the export's own one; and the map formula (:mod:`tfssim.core.map_formula`): the
  SSIM map alone, or with a low-frequency intensity residual or a wider-window SSIM, each term
  normalised by its clean-image quantiles and combined by max or a weighted sum, scored on the
  best plain map's window, weighting, tiling and sigma.
  **Objective: pixel ROC AUC on the synthetic masks** - threshold-free, so
  the map is judged before any threshold exists, and it is the paper's headline metric;
* the tiling stride the new version serves by default: the chosen map at the export's stride and
  at larger ones (:func:`default_strides`), each scored on the copies and timed serving the clean
  images; **the largest stride whose pixel ROC AUC (and ROC area up to FPR 0.3) is within
  ``stride_tolerance`` of the best stride's** - serving time falls with the square of the stride,
  so the cheapest stride that keeps the map is taken;
* the threshold, at ``fpr`` on the clean validation images (the paper's rule), or with
  ``threshold_rule="f1"`` the one with the best synthetic F1 among those whose clean-pixel FPR
  stays within ``fpr``;
* the post-processing (opening diameter, minimum region area), on the chosen map at the
  ``fpr`` threshold. **Objective: pooled pixel F1 of the segmentation** - post-processing acts
  on the thresholded mask only, so a threshold-free score cannot tell its candidates apart.

Near-ties (within ``tolerance``) go to the simpler setting: the plain SSIM map, the export's own
tiling, the smaller sigma, the export's own window and weighting, the export's own post-processing.

**Memory is bounded by one image**, whatever the number of validation images: the images are
read one at a time, each image's reconstructions go to a cache on disk, and every candidate
keeps only accumulators - a :class:`tfssim.evaluation.metrics.ScoreHistogram` per map candidate (pooled
ROC AUC within its stated error bound, about 1e-4; clean-pixel counts), exact threshold
refinement on a second look at the chosen map, and TP / FP / FN and region counts per
post-processing candidate. Time is linear in the number of images. The passes:

1. per image: paint ``copies`` copies (each seeded by ``(seed, image, copy)``, so it can be
   painted again later), reconstruct them and the clean image under every tiling, score every
   map candidate of the export's own tiling; 1b. with other tilings: score them, from the cache;
   1c. with map formulas: each second term's quantiles on the clean images, then every
   combination on the copies, from the cache; 1d. with several strides: the chosen map at each
   (one more model pass per image and copy for each other stride), its serving time;
2. the chosen map on the clean images: the exact threshold at ``fpr``
   (:func:`tfssim.serving.postprocess.threshold_at_fpr`'s value);
3. the chosen map on the copies and the clean images: every post-processing candidate at that
   threshold, the per-region overlap curve (AUPRO), the operating-point report;
4. with ``threshold_rule="f1"`` only: the chosen post-processing at thresholds from ``fpr``
   down to ``fpr / 100`` on the clean pixels.

The **operating-point report** (:attr:`Tuning.operating_point`) says what the chosen threshold
finds: the share of synthetic defect regions found (a region is found when at least
:data:`REGION_FOUND_SHARE` of its pixels are flagged, as in PRO) by defect size and by family,
false regions per clean validation image, pooled pixel F1 / IoU. When the chosen map's
synthetic ROC AUC is below :data:`WEAK_AUROC` the choice means little: :attr:`Tuning.warnings`
says so (the version is still written; the user decides).

The synthetic defects are a proxy: the choice is as good as their likeness to the real ones
(set ``size_range`` from the sizes that must be found); confirm it where labelled defects exist.

Example:
    >>> model = ExportedModel.load("exported_models/nanotwice_ssim/1")
    >>> result = tune(model, ["val/a.png", "val/b.png"], fpr=0.01, copies=4, seed=0)
    >>> result.choice.map_sigma, result.choice.threshold, result.operating_point["region_recall"]
    >>> new_version = write_tuned_export(model, result, load_source(model))
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from tfssim._io import progress_bar, save_array
from tfssim.core import resize
from tfssim.core.map_formula import FORMULAS, PLAIN, MapFormula
from tfssim.core.ssim_params import WEIGHTINGS, SSIMParams
from tfssim.core.tiling_params import DEFAULT_BLEND, DEFAULT_BORDER, DEFAULT_MAP_SIGMA
from tfssim.data import defects
from tfssim.errors import InputError, check_fpr, input_checks
from tfssim.evaluation import metrics
from tfssim.serving import postprocess
from tfssim.serving.inference import ExportedModel

__all__ = [
    "DEFAULT_WINDOWS", "DEFAULT_WEIGHTINGS", "DEFAULT_SIGMAS", "DEFAULT_OPENINGS", "DEFAULT_FORMULAS",
    "LOWFREQ_SIGMA_SHARES", "MULTISCALE_FACTORS", "SUM_WEIGHTS", "MIN_AREA_FRACTIONS",
    "STRIDE_SHARES", "STRIDE_TOLERANCE", "TIMED_IMAGES", "TIMING_ROUNDS", "default_strides",
    "THRESHOLD_RULES", "REGION_FOUND_SHARE", "WEAK_AUROC", "MAP_OBJECTIVE", "POST_OBJECTIVE", "MapCandidate",
    "TuningChoice", "Tuning", "SourceModel", "TuneRun", "defects_per_copy", "synthetic_copy", "synthetic_copies",
    "library_map", "tune", "find_source", "load_source", "write_tuned_export", "recorded_validation_images",
    "tune_export",
]

DEFAULT_WINDOWS = (7, 11, 15)
DEFAULT_WEIGHTINGS = WEIGHTINGS  # every weighting SSIMParams knows
DEFAULT_SIGMAS = (0.0, 2.0, 4.0, 8.0, 12.0, 16.0)
DEFAULT_OPENINGS = (0, 2, 4, 8)
# Map formulas (tfssim.core.map_formula) tried by default, and their second terms: the low-frequency
# residual's sigma as shares of the patch side (its 4-sigma kernel then reaches a quarter or half
# a patch around each pixel: the scale of a smooth defect a patch or two wide), the multi-scale
# SSIM's wider window as 2K+1 and 4K+1 of the chosen window K.
DEFAULT_FORMULAS = FORMULAS
LOWFREQ_SIGMA_SHARES = (1 / 16, 1 / 8)
MULTISCALE_FACTORS = (2, 4)
# How the two normalised terms are combined: max, or a weighted sum with these second-term weights.
SUM_WEIGHTS = (0.25, 0.5, 0.75)
# Tiling strides compared by default beside the export's own: these shares of the patch side (48
# and 64 for the paper's 128-pixel patch), those larger than the export's stride. A stride trades
# serving time (tiles ~ 1 / stride^2) against the number of tiles averaged per pixel.
STRIDE_SHARES = (3 / 8, 1 / 2)
# The largest stride whose synthetic pixel ROC AUC (and ROC area up to FPR 0.3) is within this of
# the best stride's is chosen.
STRIDE_TOLERANCE = 0.005
# Clean validation images timed per stride (after one untimed call that builds the graph), and
# rounds over the strides in turn, the fastest of each counted.
TIMED_IMAGES, TIMING_ROUNDS = 3, 2
# Minimum region areas tried, as shares of the area of the smallest defect size asked for.
MIN_AREA_FRACTIONS = (0.0, 0.25, 0.5, 1.0)
THRESHOLD_RULES = ("fpr", "f1")
# Defective copies painted per validation image, and the painter's seed (tfssim-tune's defaults).
DEFAULT_COPIES = 4
DEFAULT_DEFECT_SEED = 0
# The folder for tuning.json and tuning.png when none is named.
DEFAULT_OUTPUT = "tuning"
# A synthetic defect region counts as found when at least this share of its pixels is flagged
# (the overlap PRO measures per region).
REGION_FOUND_SHARE = 0.3
# Below this synthetic pixel ROC AUC the chosen map barely tells the painted defects apart.
WEAK_AUROC = 0.6
# Defect size bins of the report: log-spaced over the requested size range.
SIZE_BINS = 4
# threshold_rule "f1": clean-pixel false-positive rates tried, as shares of fpr.
F1_FPR_SHARES = (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05, 0.025, 0.01)
# The per-region overlap curve (AUPRO@0.3), as tfssim.evaluation.metrics.aupro sweeps it.
PRO_MAX_FPR, PRO_THRESHOLDS = 0.3, 300
# Mantissa bits of the candidates' score histograms (bins 2**-13 = 0.012 % wide, relatively).
HISTOGRAM_BITS = 13
MAP_OBJECTIVE = "pixel ROC AUC of the raw map on the synthetic defect masks (threshold-free; the paper's metric)"
POST_OBJECTIVE = ("pooled pixel F1 of the post-processed segmentation on the synthetic defects at the threshold "
                  "calibrated on the clean validation images (post-processing acts only on the thresholded mask)")
# Histogram classes of the map candidates.
_GOOD, _DEFECT = 0, 1


@dataclasses.dataclass(frozen=True)
class MapCandidate:
    """One anomaly-map setting: SSIM window and weighting (``None`` for other maps), smoothing,
    the tiling it is computed from (border handling and tile blend) and the map formula."""

    window_size: int | None
    weighting: str | None
    map_sigma: float
    border: str = DEFAULT_BORDER
    blend: str = DEFAULT_BLEND
    formula: MapFormula = PLAIN

    @property
    def scoring(self) -> tuple[int | None, str | None]:
        return self.window_size, self.weighting

    @property
    def tiling(self) -> tuple[str, str]:
        return self.border, self.blend


@dataclasses.dataclass(frozen=True)
class TuningChoice:
    """What :func:`tune` chose: the export's new scoring, post-processing and threshold.

    Attributes:
        window_size, weighting: SSIM window and weighting (``None`` for non-SSIM models).
        map_sigma: Gaussian smoothing of the map.
        border, blend: The tiling the map is computed from (``tfssim-export --border / --blend``).
        map_formula: The map formula's record (:meth:`tfssim.core.map_formula.MapFormula.to_dict`),
            with its normalisation from the clean validation images (``None`` for non-SSIM models).
        stride: The tiling stride the new version serves by default (``None``: the export's own).
        opening_diameter, min_area, convex_hull: The post-processing.
        threshold: The threshold (pixels scoring above it are defects).
        threshold_rule: ``"fpr"`` or ``"f1"`` (:data:`THRESHOLD_RULES`).
        fpr: The clean-pixel false-positive rate asked for.
        val_fpr: The one the threshold gives on the clean validation images.
    """

    window_size: int | None
    weighting: str | None
    map_sigma: float
    opening_diameter: int
    min_area: int
    convex_hull: bool
    threshold: float
    threshold_rule: str
    fpr: float
    val_fpr: float
    border: str = DEFAULT_BORDER
    blend: str = DEFAULT_BLEND
    map_formula: dict[str, Any] | None = None
    stride: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line: ``SSIM window 11 (uniform), map sigma 12, border none, blend mean, opening 4, min area 0;
        threshold ...``."""
        scoring = f"SSIM window {self.window_size} ({self.weighting}), " if self.window_size is not None else ""
        if self.map_formula is not None:
            scoring += f"map {MapFormula.of(self.map_formula).describe()}, "
        scoring += f"border {self.border}, blend {self.blend}, "
        scoring += f"stride {self.stride}, " if self.stride is not None else ""
        rule = f"pixel FPR {self.fpr:g}" if self.threshold_rule == "fpr" else \
            f"best synthetic F1 within pixel FPR {self.fpr:g} (clean FPR {self.val_fpr:.4g})"
        return (f"{scoring}map sigma {self.map_sigma:g}, opening {self.opening_diameter}, min area {self.min_area}; "
                f"threshold {self.threshold:.6f} at {rule}")


@dataclasses.dataclass
class Tuning:
    """What :func:`tune` measured and chose (``as_dict`` is the content of ``tuning.json``).

    Attributes:
        residual: ``ssim``, ``l2`` or ``vae``.
        map_candidates: One dict per anomaly-map candidate: ``window_size``, ``weighting``
            (``None`` for non-SSIM models), ``map_sigma``, ``border``, ``blend``, ``map_formula``
            (its record), ``pixel_auroc``, ``auroc_error_bound``, ``pixel_pauc_0.3`` (the ROC
            curve's standardised area up to FPR 0.3, :meth:`tfssim.evaluation.metrics.ScoreHistogram.partial_roc_auc`);
            formula candidates also ``eligible`` (see :func:`tune`'s ``formulas``).
        post_candidates: One dict per post-processing candidate: ``opening_diameter``,
            ``min_area``, ``f1``, ``iou``, ``region_recall``, ``false_regions_per_clean_image`` (on
            the chosen map at the ``fpr`` threshold).
        choice: The :class:`TuningChoice`.
        synthetic: Scores of the chosen map on the synthetic defects: ``pixel_auroc``,
            ``auroc_error_bound``, ``aupro_0.3``, ``f1``, ``iou``, ``pixel_auroc_by_family`` (each
            family's defect pixels against the good ones); and the export's own map's AUROC
            (``before``).
        operating_point: What the chosen threshold finds (see the module docstring); with the
            ``f1`` rule also every threshold tried (``thresholds``) and the ``fpr`` rule's point.
        settings: seed, copies, defect size range, families, defects per copy, counts, seconds
            per stage.
        warnings: Lines starting with ``Warning:`` (e.g. a synthetic AUROC below :data:`WEAK_AUROC`).
        strides: One dict per tiling stride compared (the speed/quality frontier), on the
            chosen map: ``stride``, ``pixel_auroc``, ``pixel_pauc_0.3``, ``aupro_0.3`` (synthetic
            defects), ``seconds_per_megapixel`` (serving time measured on this machine),
            ``speedup`` (against the export's own stride), ``own`` (the export's stride),
            ``eligible`` and ``chosen``; empty
            when only the export's own stride was tried.
    """

    residual: str
    map_candidates: list[dict[str, Any]]
    post_candidates: list[dict[str, Any]]
    choice: TuningChoice
    synthetic: dict[str, Any]
    operating_point: dict[str, Any]
    settings: dict[str, Any]
    warnings: list[str] = dataclasses.field(default_factory=list)
    strides: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def ssim_params(self, base: SSIMParams | dict[str, Any] | None) -> dict[str, Any] | None:
        """The export's SSIM parameters ``base`` with the chosen window and weighting, as
        :meth:`SSIMParams.to_dict` (None for non-SSIM)."""
        if self.residual != "ssim":
            return None
        return SSIMParams.of(base, window_size=self.choice.window_size, weighting=self.choice.weighting).to_dict()

    def as_dict(self) -> dict[str, Any]:
        return {"objective": {"map": MAP_OBJECTIVE, "post_processing": POST_OBJECTIVE},
                **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "choice"},
                "choice": self.choice.to_dict()}

    def summary_lines(self) -> list[str]:
        """The printed summary: the choice, the synthetic scores and the operating point."""
        op, syn = self.operating_point, self.synthetic
        lines = [f"chosen: {self.choice.describe()}",
                 f"synthetic defects: pixel ROC AUC {syn['pixel_auroc']:.4f}, AUPRO@0.3 {syn['aupro_0.3']:.4f}, "
                 f"F1 {op['pixel_f1']:.4f}, IoU {op['pixel_iou']:.4f}",
                 f"at this threshold: region recall {_percent(op['region_recall'])} of "
                 f"{op['regions']} synthetic defects (found: >= {REGION_FOUND_SHARE:.0%} of a region flagged); "
                 f"{op['false_regions_per_clean_image']:.2f} false regions per clean validation image"]
        sizes = ", ".join(f"{b['min']:g}-{b['max']:g} px {_percent(b['recall'])}" for b in op["region_recall_by_size"])
        by_family = syn.get("pixel_auroc_by_family", {})
        families = ", ".join(f"{name} {_percent(b['recall'])}"
                             + (f" (AUROC {by_family[name]:.3f})" if by_family.get(name) is not None else "")
                             for name, b in op["region_recall_by_family"].items())
        lines.append(f"region recall by size: {sizes}")
        lines.append(f"region recall by family: {families}")
        if self.strides:
            lines.append(stride_line(self.strides))
        return lines


def stride_line(rows: Sequence[dict[str, Any]]) -> str:
    """One line on the stride chosen from :attr:`Tuning.strides`: its speed-up and what it costs."""
    chosen = next(r for r in rows if r["chosen"])
    own = next(r for r in rows if r["own"])
    return (f"stride {chosen['stride']} (export's {own['stride']}): {chosen['seconds_per_megapixel']:.3g} s per "
            f"megapixel, {chosen['speedup']:.2f}x the export's speed; synthetic pixel ROC AUC "
            f"{chosen['pixel_auroc']:.4f} (stride {own['stride']}: {own['pixel_auroc']:.4f}); strides tried: "
            + ", ".join(f"{r['stride']} ({r['pixel_auroc']:.4f}, {r['seconds_per_megapixel']:.3g} s/MPx)" for r in rows))


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f} %"


# --- the synthetic copies -----------------------------------------------------------------------


def defects_per_copy(shape: Sequence[int], patch_size: int, defects_per_patch: float = 1.0) -> int:
    """``max(1, round(defects_per_patch * H * W / patch_size**2))``: one defect per patch-sized area."""
    h, w = shape[:2]
    return max(1, int(round(defects_per_patch * h * w / patch_size**2)))


def default_strides(patch_size: int, stride: int) -> list[int]:
    """The export's ``stride`` and the :data:`STRIDE_SHARES` of ``patch_size`` larger than it."""
    larger = {int(round(share * patch_size)) for share in STRIDE_SHARES}
    return sorted({int(stride)} | {s for s in larger if stride < s <= patch_size})


def _check_strides(strides: Sequence[int], patch_size: int, own: int) -> list[int]:
    """The strides asked for, with the export's own, sorted; each an integer in ``[1, patch_size]``."""
    for s in strides:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= s <= patch_size:
            raise InputError(f"strides must be integers between 1 and the patch size {patch_size}, got {s!r}")
    return sorted({int(s) for s in strides} | {own})


def synthetic_copy(image: np.ndarray, index: int, copy: int, *, seed: int, count: int, size_range: Sequence[float],
                   families: Sequence[str] = defects.LOCAL_FAMILIES,
                   source: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Defective copy ``copy`` of validation image ``index``, as :func:`tune` paints it.

    Each copy has its own generator, seeded by ``(seed, index, copy)``: the same copy can be
    painted again without painting the others (the tuner paints every copy twice rather than
    keeping it), and a seed gives the same defects whatever the number of images.

    Args:
        image: The defect-free image ``[H, W]`` or ``[H, W, C]`` in [0, 1].
        index, copy: Which image and which of its copies.
        seed: The tuning's seed.
        count: Defects in the copy (:func:`defects_per_copy`).
        size_range: ``(min, max)`` equivalent diameter in pixels.
        families: Defect families (:data:`tfssim.data.defects.FAMILIES`; the tuner paints
            :data:`tfssim.data.defects.LOCAL_FAMILIES` by default).
        source: Another defect-free image a transplant may take its texture from (the tuner
            gives the next validation image).

    Returns:
        ``(painted, mask, infos)`` as :func:`tfssim.data.defects.paint_defects`.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), int(copy)]))
    sources = [] if source is None else [source]
    return defects.paint_defects(image, rng, count, size_range=size_range, families=families, sources=sources)


def synthetic_copies(images: Sequence[np.ndarray], copies: int, *, seed: int, size_range: Sequence[float],
                     patch_size: int, defects_per_patch: float = 1.0,
                     families: Sequence[str] = defects.LOCAL_FAMILIES,
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]:
    """Every synthetic copy :func:`tune` paints into ``images`` (in memory), in its order."""
    for i, image in enumerate(images):
        count = defects_per_copy(np.shape(image), patch_size, defects_per_patch)
        source = images[(i + 1) % len(images)] if len(images) > 1 else None
        for k in range(copies):
            yield synthetic_copy(image, i, k, seed=seed, count=count, size_range=size_range, families=families,
                                 source=source)


def library_map(residual: str, image: np.ndarray, reconstruction: np.ndarray, *,
                ssim_params: dict[str, Any] | None = None, map_sigma: float = DEFAULT_MAP_SIGMA,
                served_map: np.ndarray | None = None) -> np.ndarray:
    """The anomaly map of ``image`` from its reconstruction, as an export with these settings serves it.

    Args:
        residual: ``ssim``, ``l2`` or ``vae``.
        image: ``[H, W]`` or ``[H, W, C]`` input in [0, 1] (or a batch ``[B, H, W, C]`` with
            ``reconstruction`` of the same shape).
        reconstruction: The export's ``reconstruction`` output ``[H, W, C]``.
        ssim_params: SSIM parameters (``ssim`` only).
        map_sigma: Gaussian smoothing of the map (that of :func:`tfssim.models.scoring.smooth_map`:
            ``scipy.ndimage.gaussian_filter`` with mirrored borders, truncated at 4 sigma).
        served_map: For ``vae``, the export's unsmoothed ``anomaly_map`` (its posterior samples
            are not in the reconstruction, so the map cannot be recomputed from it).

    Returns:
        The ``[H, W]`` (or ``[B, H, W]``) float32 map.
    """
    from tfssim.models import scoring

    reconstruction = np.asarray(reconstruction, np.float32)
    image = np.asarray(image, np.float32).reshape(reconstruction.shape)
    if residual == "ssim":
        raw = np.asarray(scoring.ssim_residual_maps(image, reconstruction, **(ssim_params or {}))["anomaly_map"])
    elif residual == "l2":
        raw = np.asarray(scoring.l2_residual_map(image, reconstruction))
    elif residual == "vae":
        if served_map is None:
            raise InputError("a VAE's map needs the export's served anomaly_map")
        raw = np.asarray(served_map, np.float32)
    else:
        raise InputError(f"unknown residual {residual!r}; expected one of ssim, l2, vae")
    return _smooth(raw, map_sigma)


def _smooth(raw: np.ndarray, sigma: float) -> np.ndarray:
    """:func:`tfssim.models.scoring.smooth_map`'s filter in SciPy (6x faster here than eager TensorFlow at
    sigma 16): the last two axes blurred, mirrored borders, truncated at 4 sigma."""
    from scipy.ndimage import gaussian_filter

    raw = np.asarray(raw, np.float32)
    if not sigma:
        return raw
    return gaussian_filter(raw, sigma, mode="reflect", truncate=4.0, axes=(-2, -1))


def _tiling_candidates(borders: Sequence[str] | None, blends: Sequence[str] | None, own: tuple[str, str],
                       fixed: str | None) -> list[tuple[str, str]]:
    """The tiling variants ``(border, blend)`` to compare, the export's own first.

    Other tilings need reconstructions the export does not serve. ``fixed`` says why they cannot
    be had here (``None``: they can); asked for anyway, one ``InputError`` line.
    """
    from tfssim.core.tiling_params import BLENDS, BORDERS

    given = borders is not None or blends is not None
    # Another border costs a model pass over the mirrored image per image and copy (about doubling
    # the tuning time), so only when asked for; the blends share one pass, so every one by default.
    borders = list([own[0]] if borders is None else [borders] if isinstance(borders, str) else borders)
    blends = list(BLENDS if blends is None else [blends] if isinstance(blends, str) else blends)
    for value, known, what in [(b, BORDERS, "border") for b in borders] + [(b, BLENDS, "blend") for b in blends]:
        if value not in known:
            raise InputError(f"unknown {what} candidate {value!r}; choose from {', '.join(known)}")
    if not borders or not blends:
        raise InputError("give at least one border and one blend candidate")
    wanted = list(dict.fromkeys([own] + [(b, g) for b in borders for g in blends]))
    if fixed is not None:
        if given and wanted != [own]:
            raise InputError(f"cannot compare tile borders or blends here: {fixed}; the export's own is "
                             f"border {own[0]}, blend {own[1]}")
        return [own]
    return wanted


def _formula_candidates(formulas: Sequence[str] | None, fixed: str | None, own: str) -> list[str]:
    """The map formulas to compare (names), the plain one first. ``fixed`` says why only the
    export's own (``own``) can be had here (``None``: every one can); others asked for anyway are
    one ``InputError`` line."""
    given = formulas is not None
    formulas = list(DEFAULT_FORMULAS if formulas is None else [formulas] if isinstance(formulas, str) else formulas)
    for name in formulas:
        if name not in FORMULAS:
            raise InputError(f"unknown map formula {name!r}; choose from {', '.join(FORMULAS)}")
    if fixed is not None:
        if given and any(name != own for name in formulas):
            raise InputError(f"cannot compare map formulas here: {fixed}; the export's own is {own}")
        return [own]
    return list(dict.fromkeys([PLAIN.name] + formulas))


def _second_terms(formulas: Sequence[str], window: int | None, patch_size: int) -> list[MapFormula]:
    """The second terms tried for ``formulas`` on an SSIM map of ``window``, as formulas with the
    default combination and no normalisation yet: those whose reach fits the patch."""
    if window is None:
        return []
    terms = []
    if "ssim_lowfreq" in formulas:
        terms += [MapFormula("ssim_lowfreq", lowfreq_sigma=patch_size * share) for share in LOWFREQ_SIGMA_SHARES]
    if "ssim_multiscale" in formulas:
        terms += [MapFormula("ssim_multiscale", window_size=f * window + 1) for f in MULTISCALE_FACTORS
                  if f * window + 1 <= patch_size]
    return [t for t in dict.fromkeys(terms) if t.reach() < patch_size]


def _pick(candidates: list[dict[str, Any]], score: str, tolerance: float, preference: Any) -> dict[str, Any]:
    """The candidate with the best ``score``; among those within ``tolerance`` of it, the one
    ``preference`` (a sort key, smaller = simpler) ranks first."""
    best = max(c[score] for c in candidates)
    near = [c for c in candidates if c[score] >= best - tolerance]
    return min(near, key=preference)


# --- the validation images, read one at a time ---------------------------------------------------


class _Images:
    """The validation images as given (arrays or files), each read when it is needed."""

    def __init__(self, images: Sequence[Any], channels: int, names: Sequence[Any] | None) -> None:
        self._items = list(images)
        self._channels = channels
        if names is not None and len(names) != len(self._items):
            raise InputError(f"{len(names)} names for {len(self._items)} images")
        self.names = [str(n) for n in names] if names is not None else [
            os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"validation image {i}"
            for i, item in enumerate(self._items)]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> np.ndarray:
        from tfssim import data

        item = self._items[i]
        image = data.read_image(item, self._channels) if isinstance(item, (str, os.PathLike)) else item
        return np.asarray(image, np.float32)

    def neighbour(self, i: int) -> int | None:
        """The image a transplant into image ``i`` may take its texture from (the next one)."""
        return (i + 1) % len(self) if len(self) > 1 else None


# --- one pass's map computation ------------------------------------------------------------------


@dataclasses.dataclass
class _Maps:
    """How the tuner computes candidate maps of one export from (image, reconstruction)."""

    residual: str
    base_ssim: dict[str, Any]
    # The export's served map is the one raw map: a VAE, an export that resizes its requests, or
    # one that mirrors its border when its Keras model is not given.
    served: bool
    workers: int

    def params(self, scoring: tuple[int | None, str | None]) -> dict[str, Any] | None:
        """The SSIM of a ``(window, weighting)`` candidate (``None`` for other residuals)."""
        window, weighting = scoring
        return {**self.base_ssim, "window_size": window, "weighting": weighting} if self.residual == "ssim" else None

    def raw(self, images: np.ndarray, bases: np.ndarray, scoring: tuple[int | None, str | None],
            margin: int = 0, formula: MapFormula = PLAIN) -> np.ndarray:
        """Raw maps ``[B, H, W]`` of images ``[B, H, W, C]`` from their cached bases (reconstructions
        or served maps). ``margin > 0``: the bases are reconstructions of the images mirrored
        outward by at least ``margin`` pixels (``border="reflect"``), cut to that margin; the map is
        computed on the mirrored images and cropped back, as the served graph does (a margin of
        the widest reach of the SSIM window or formula term holds everything the cropped map
        depends on). ``formula``: the map formula's combination of this map and its second term."""
        if self.served:
            return np.asarray(bases, np.float32)
        from tfssim.models.scoring import pad_border

        window_bases, window_margin = _trimmed(bases, margin, (scoring[0] or 1) // 2)
        out = library_map(self.residual, pad_border(images, window_margin), window_bases,
                          ssim_params=self.params(scoring))
        out = np.ascontiguousarray(out[..., window_margin:-window_margin, window_margin:-window_margin]) \
            if window_margin else out
        if formula.plain:
            return out
        return formula.combine_maps(out, self.term(images, bases, scoring, margin, formula))

    def term(self, images: np.ndarray, bases: np.ndarray, scoring: tuple[int | None, str | None], margin: int,
             formula: MapFormula) -> np.ndarray:
        """The second term of ``formula`` (:func:`tfssim.models.scoring.second_term`), ``[B, H, W]``; the
        low-frequency residual's blur in SciPy (:func:`_smooth`, the same filter, faster here)."""
        from tfssim.models.scoring import pad_border, second_term

        bases, margin = _trimmed(bases, margin, formula.reach())
        padded = np.asarray(pad_border(images, margin), np.float32)
        bases = np.asarray(bases, np.float32).reshape(padded.shape)
        if formula.lowfreq_sigma is not None:
            out = np.abs(_smooth(np.mean(padded - bases, axis=-1), formula.lowfreq_sigma))
        else:
            out = np.asarray(second_term(padded, bases, formula, self.params(scoring)))
        return np.ascontiguousarray(out[..., margin:-margin, margin:-margin], np.float32) if margin else out

    def smooth(self, raw: np.ndarray, sigma: float) -> np.ndarray:
        """The map as served (:func:`_smooth`)."""
        return _smooth(raw, sigma)

    def as_served(self, candidate: MapCandidate, images: np.ndarray, bases: np.ndarray, margin: int) -> np.ndarray:
        """``candidate``'s maps ``[B, H, W]`` of ``images`` as the export serves them: raw map with its
        formula (:meth:`raw`), then smoothed exactly (:meth:`smooth`, no FFT shortcut)."""
        return self.smooth(self.raw(images, bases, candidate.scoring, margin, candidate.formula), candidate.map_sigma)

    def smooth_many(self, raw: np.ndarray, sigmas: Sequence[float]) -> dict[float, np.ndarray]:
        """``raw [B, H, W]`` smoothed by every sigma, for the candidate sweep: one FFT of the
        mirrored map serves every sigma (4x faster than :func:`_smooth` per sigma at sigmas 2-16
        on 1024x1024), equal to the served maps up to float32 rounding (about 1e-6 of the map's
        range). The sweep only ranks the candidates: the chosen one is then computed as served."""
        import scipy.fft as sfft

        raw = np.asarray(raw, np.float32)
        out = {float(s): raw for s in sigmas if not s}
        smoothed = [float(s) for s in sigmas if s]
        if not smoothed:
            return out
        from tfssim.models.scoring import smoothing_radius

        reach = max(smoothing_radius(s) for s in smoothed)
        h, w = raw.shape[-2:]
        # Mirrored like scipy's "reflect" (d c b a | a b c d), then zeros up to a fast FFT size: every
        # output pixel's kernel stays inside the mirrored part, so nothing wraps around.
        padded = np.pad(raw, [(0, 0)] * (raw.ndim - 2) + [(reach, reach), (reach, reach)], mode="symmetric")
        shape = (sfft.next_fast_len(h + 2 * reach, real=True), sfft.next_fast_len(w + 2 * reach, real=True))
        spectrum = sfft.rfft2(padded, s=shape, workers=self.workers)
        for sigma in smoothed:
            radius = smoothing_radius(sigma)
            taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
            taps /= taps.sum()
            rows, cols = np.zeros(shape[0]), np.zeros(shape[1])
            rows[:radius + 1], rows[shape[0] - radius:] = taps[radius:], taps[:radius]
            cols[:radius + 1], cols[shape[1] - radius:] = taps[radius:], taps[:radius]
            # A symmetric kernel centred at 0 has a real spectrum.
            kernel = (np.fft.fft(rows).real[:, None] * np.fft.rfft(cols).real[None, :]).astype(np.float32)
            full = sfft.irfft2(spectrum * kernel, s=shape, workers=self.workers)
            out[sigma] = np.ascontiguousarray(full[..., reach:reach + h, reach:reach + w], dtype=np.float32)
        return out


def _trimmed(bases: np.ndarray, margin: int, reach: int) -> tuple[np.ndarray, int]:
    """Bases ``[..., H + 2 margin, W + 2 margin, C]`` cut to the margin a map of this ``reach`` needs
    (what it reads around a pixel), and that margin. A map computed on the mirrored image with at
    least its reach, or with the whole mirrored strip the graph adds, is the served one; a smaller
    margin is less work."""
    keep = min(margin, reach)
    cut = margin - keep
    if not cut:
        return bases, margin
    return bases[..., cut:bases.shape[-3] - cut, cut:bases.shape[-2] - cut, :], keep


class _Cache:
    """The reconstructions (or served maps) of pass 1, on disk, read back by the later passes:
    one pair of files per image and tiling variant, until :meth:`keep` drops all but the chosen
    variant's."""

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix=".tfssim-tune-cache-", dir=folder)
        self.path = Path(self._dir.name)
        self.variant = 0

    def save(self, i: int, variant: int, copies: np.ndarray, clean: np.ndarray) -> None:
        from tfssim._io import save_array

        save_array(self.path / f"{i}_{variant}_copies.npy", copies)
        save_array(self.path / f"{i}_{variant}_clean.npy", clean)

    def keep(self, variant: int) -> None:
        """From here on read ``variant``'s files; delete the others'."""
        self.variant = variant
        for file in self.path.glob("*.npy"):
            if file.name.split("_")[1] != str(variant):
                file.unlink()

    def copies(self, i: int, variant: int | None = None) -> np.ndarray:
        return np.load(self.path / f"{i}_{self.variant if variant is None else variant}_copies.npy")

    def clean(self, i: int, variant: int | None = None) -> np.ndarray:
        return np.load(self.path / f"{i}_{self.variant if variant is None else variant}_clean.npy")

    def close(self) -> None:
        self._dir.cleanup()


def _hwc(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else image[..., None]


def _images_of(copies: Sequence[tuple[np.ndarray, np.ndarray, Any]]) -> np.ndarray:
    """The painted images of :func:`synthetic_copy` results, stacked ``[B, H, W, C]``."""
    return np.stack([_hwc(p) for p, _, _ in copies])


def _labels_of(copies: Sequence[tuple[np.ndarray, np.ndarray, Any]]) -> np.ndarray:
    """Their defect masks as histogram classes ``[B, H, W]`` (``_GOOD`` 0, ``_DEFECT`` 1)."""
    return np.stack([m for _, m, _ in copies]).astype(np.uint8)


class _Reconstructions:
    """What pass 1 caches of one image under each tiling variant ``(border, blend)`` it compares.

    With the export's Keras model (``source_model``) the library reconstructs, in one traced
    function: one model pass over the tiles per border serves every blend
    (:func:`tfssim.core.tiling.reconstruct_blends`), and a mirrored image's reconstruction is kept
    with a margin of ``margins[border]`` pixels around the image (what the SSIM window at the
    border sees). Without it the export itself serves its own variant: its ``reconstruction``,
    or its ``anomaly_map`` where maps cannot be recomputed (``key``).
    """

    def __init__(self, model: ExportedModel, source_model: Any, variants: list[tuple[str, str]],
                 margins: dict[str, int], key: str, stride: int | None = None) -> None:
        md = model.metadata
        self.model, self.variants, self.margins, self.key = model, variants, margins, key
        # Another stride than the export's own: through its serve_with_stride signature.
        self.stride = None if stride is None or stride == md.stride else int(stride)
        self._graph = None
        if source_model is None:
            return
        import tensorflow as tf

        from tfssim.core import tiling

        patch, chunk = md.patch_size, md.chunk_size
        stride = md.stride if stride is None else int(stride)
        blends = list(dict.fromkeys(blend for _, blend in variants))
        fn = lambda t: source_model(t, training=False)  # noqa: E731
        self._graph = tf.function(
            lambda image: tiling.reconstruct_blends(fn, image, patch, stride, blends, chunk),
            input_signature=[tf.TensorSpec([None, None, model.channels], tf.float32)])
        self._patch = patch

    def __call__(self, x: np.ndarray, name: str) -> list[np.ndarray]:
        """The bases of image ``x [H, W, C]``, one per variant (in :attr:`variants`' order)."""
        if self._graph is None:
            at_stride = {} if self.stride is None else {"stride": self.stride}
            return [self.model.predict(x, source=name, **at_stride)[self.key]]
        from tfssim.models.scoring import border_padding, pad_border

        out: dict[tuple[str, str], np.ndarray] = {}
        for border in dict.fromkeys(b for b, _ in self.variants):
            pad = border_padding(self._patch, border)
            cut = pad - self.margins[border]
            recon = self._graph(pad_border(x, pad).astype(np.float32))
            for variant in self.variants:
                if variant[0] == border:
                    r = recon[variant[1]].numpy()
                    out[variant] = np.ascontiguousarray(r[cut:r.shape[0] - cut, cut:r.shape[1] - cut]) if cut else r
        return [out[v] for v in self.variants]


class _StrideFrontier:
    """Pass 1d: the chosen map at each tiling stride - on the painted copies its pixel ROC AUC, ROC
    area up to FPR 0.3 and AUPRO (accumulated image by image), and its serving time.

    The export's own stride reads the cache of pass 1; every other stride reconstructs once more
    and caches its reconstructions (``cache`` variants from ``first_variant`` on) so that the
    passes after it can run at the stride chosen. Two looks per stride, as pass 3 does it: the
    scores' histogram (:meth:`add`, which keeps each image's maps in the cache until the second
    look), then the per-region overlaps (:meth:`add_overlaps`) at bin edges of that histogram's
    good pixels up to FPR 0.3, where its FPR is counted exactly.
    """

    def __init__(self, model: ExportedModel, source_model: Any, chosen: MapCandidate, margin: int, cache: _Cache,
                 first_variant: int, key: str, *, ssim_params: dict[str, Any] | None) -> None:
        self.model, self.source_model, self.chosen, self.margin = model, source_model, chosen, margin
        self.cache, self.key, self.ssim_params = cache, key, ssim_params
        self.own = model.metadata.stride
        self._variants = {self.own: cache.variant}
        self._first_variant = first_variant
        self.histograms: dict[int, metrics.ScoreHistogram] = {}
        self._overlap_sums: dict[int, np.ndarray] = {}
        self._regions: dict[int, int] = {}
        self._reconstructions: dict[int, _Reconstructions] = {}
        self._edges: dict[int, np.ndarray] = {}

    def variant(self, stride: int) -> int:
        """The cache variant holding ``stride``'s reconstructions."""
        return self._variants[stride]

    def add(self, stride: int, i: int, x: np.ndarray, copies_i: Sequence[tuple[np.ndarray, np.ndarray, Any]],
            maps: _Maps, name: str) -> None:
        """Score image ``i`` (clean ``x``, its painted ``copies_i``) at ``stride``."""
        if stride not in self.histograms:
            self.histograms[stride] = metrics.ScoreHistogram(2, HISTOGRAM_BITS)
            self._variants.setdefault(stride, self._first_variant + len(self._variants) - 1)
        if stride == self.own:
            bases = self.cache.copies(i, self._variants[stride])
        else:
            if stride not in self._reconstructions:
                self._reconstructions[stride] = _Reconstructions(
                    self.model, self.source_model, [self.chosen.tiling], {self.chosen.border: self.margin}, self.key,
                    stride=stride)
            reconstruct = self._reconstructions[stride]
            bases = np.stack([reconstruct(_hwc(p), f"synthetic copy {k} of {name}")[0]
                              for k, (p, _, _) in enumerate(copies_i)])
            self.cache.save(i, self._variants[stride], bases, reconstruct(x, name)[0])
        scores = maps.as_served(self.chosen, _images_of(copies_i), bases, self.margin)
        self.histograms[stride].update(scores, _labels_of(copies_i))
        # Kept on disk for the second look (computing the map again costs more than reading it).
        save_array(self._maps_file(stride, i), scores)

    def _maps_file(self, stride: int, i: int) -> Path:
        return self.cache.path / f"{i}_frontier-{stride}_maps.npy"

    def add_overlaps(self, stride: int, i: int, copies_i: Sequence[tuple[np.ndarray, np.ndarray, Any]]) -> None:
        """Image ``i``'s per-region overlaps at ``stride`` (after every image's :meth:`add`)."""
        if stride not in self._edges:
            hist = self.histograms[stride]
            fprs = np.linspace(0.0, PRO_MAX_FPR, PRO_THRESHOLDS)[1:]
            self._edges[stride] = np.unique(np.r_[hist.top_edge(_GOOD), hist.edge_at_fpr(fprs, _GOOD)])[::-1]
            self._overlap_sums[stride], self._regions[stride] = np.zeros(self._edges[stride].size), 0
        scores = np.load(self._maps_file(stride, i))
        self._maps_file(stride, i).unlink()
        for m, (_, mask, _) in zip(scores, copies_i):
            overlaps = metrics.region_overlaps(m, mask, self._edges[stride])
            self._overlap_sums[stride] += overlaps.sum(axis=0)
            self._regions[stride] += overlaps.shape[0]

    def _serving_function(self, stride: int) -> Any:
        """The chosen map's serving function at ``stride``: with the Keras model the function the
        export traces into its graph (:func:`tfssim.models.scoring.anomaly_maps`), else the export's
        ``serve_with_stride`` signature (its own map)."""
        if self.source_model is None:
            return lambda x: self.model.predict(x, stride=stride)
        import tensorflow as tf

        from tfssim.models import scoring

        md, c = self.model.metadata, self.chosen
        graph = tf.function(
            lambda image: scoring.anomaly_maps(
                self.source_model, image, md.kind, md.patch_size, stride,
                chunk_size=md.chunk_size, ssim_kwargs=self.ssim_params,
                jit_compile=md.jit_compile, map_sigma=c.map_sigma, border=c.border,
                blend=c.blend, map_formula=None if self.ssim_params is None else c.formula),
            input_signature=[tf.TensorSpec([None, None, self.model.channels], tf.float32)])
        return lambda x: {k: v.numpy() for k, v in graph(tf.constant(x, tf.float32)).items()}

    def seconds_per_megapixel(self, images: Sequence[np.ndarray]) -> dict[int, float]:
        """Serving time of ``images`` per megapixel at every stride: each stride's function called
        once untimed (it builds the graph), then :data:`TIMING_ROUNDS` rounds over the strides in
        turn, the fastest round of each (other load on the machine then hits every stride alike)."""
        serve = {stride: self._serving_function(stride) for stride in sorted(self.histograms)}
        for fn in serve.values():
            fn(images[0])
        best = {stride: math.inf for stride in serve}
        for _ in range(TIMING_ROUNDS):
            for stride, fn in serve.items():
                tick = time.perf_counter()
                for x in images:
                    fn(x)
                best[stride] = min(best[stride], time.perf_counter() - tick)
        megapixels = sum(x.shape[0] * x.shape[1] for x in images) / 1e6
        return {stride: seconds / megapixels for stride, seconds in best.items()}

    def result(self, tolerance: float, timed: Sequence[np.ndarray]) -> tuple[list[dict[str, Any]], int]:
        """The frontier's rows (:attr:`Tuning.strides`) and the stride chosen: the largest whose
        pixel ROC AUC and ROC area up to FPR 0.3 are within ``tolerance`` of the best stride's."""
        rows = []
        seconds = self.seconds_per_megapixel(timed)
        for stride in sorted(self.histograms):
            hist = self.histograms[stride]
            fpr = np.array([hist.count_at_least(t, _GOOD) for t in self._edges[stride]]) / hist.total(_GOOD)
            mean = self._overlap_sums[stride] / max(self._regions[stride], 1)
            aupro = metrics.area_under_pro({"fpr": fpr, "mean": mean}, PRO_MAX_FPR)
            rows.append({"stride": stride, "pixel_auroc": hist.roc_auc(_DEFECT, _GOOD),
                         "pixel_pauc_0.3": hist.partial_roc_auc(PRO_MAX_FPR, _DEFECT, _GOOD), "aupro_0.3": aupro,
                         "seconds_per_megapixel": seconds[stride],
                         "own": stride == self.own})
        best_auroc = max(r["pixel_auroc"] for r in rows)
        best_pauc = max(r["pixel_pauc_0.3"] for r in rows)
        own_seconds = next(r["seconds_per_megapixel"] for r in rows if r["own"])
        for r in rows:
            r["eligible"] = r["pixel_auroc"] >= best_auroc - tolerance and r["pixel_pauc_0.3"] >= best_pauc - tolerance
            r["speedup"] = own_seconds / r["seconds_per_megapixel"]
        chosen = max(r["stride"] for r in rows if r["eligible"])
        for r in rows:
            r["chosen"] = r["stride"] == chosen
        return rows, chosen


# --- the tuner ------------------------------------------------------------------------------------


@dataclasses.dataclass
class _PostCounts:
    """Accumulated counts of one post-processing setting at one threshold."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    clean_regions: int = 0
    clean_images_flagged: int = 0
    found: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)  # (family, size bin) -> found

    def f1_iou(self) -> tuple[float, float]:
        if self.tp + self.fp + self.fn == 0:
            return 1.0, 1.0
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn), self.tp / (self.tp + self.fp + self.fn)


def _size_bins(size_range: tuple[float, float], families: Sequence[str], shortest: int) -> np.ndarray:
    """Log-spaced size bins over the sizes painted: the range asked for, up to what the large
    families (:data:`tfssim.data.defects.LARGE_FAMILIES`) paint."""
    lo, hi = size_range
    scale = max([defects.LARGE_FAMILIES[f] for f in families if f in defects.LARGE_FAMILIES], default=1.0)
    hi = max(hi, min(hi * scale, float(shortest)))
    return np.geomspace(lo, hi, SIZE_BINS + 1) if hi > lo else np.array([lo, hi])


def _defect_regions(infos: Sequence[dict[str, Any]], mask: np.ndarray, bins: np.ndarray
                    ) -> list[tuple[str, int, tuple[slice, slice], np.ndarray]]:
    """``(family, size bin, box, region)`` per painted defect: its pixels that are defective in the end."""
    out = []
    for info in infos:
        r0, r1, c0, c1 = info["box"]
        region = info["region"] & mask[r0:r1, c0:c1]
        if region.any():
            size_bin = int(np.clip(np.searchsorted(bins, info["diameter"], side="right") - 1, 0, len(bins) - 2))
            out.append((info["family"], size_bin, (slice(r0, r1), slice(c0, c1)), region))
    return out


def _count(counts: _PostCounts, segmentation: np.ndarray, mask: np.ndarray,
           regions: list[tuple[str, int, tuple[slice, slice], np.ndarray]]) -> None:
    counts.tp += int(np.count_nonzero(segmentation & mask))
    counts.fp += int(np.count_nonzero(segmentation & ~mask))
    counts.fn += int(np.count_nonzero(~segmentation & mask))
    for family, size_bin, box, region in regions:
        if np.count_nonzero(segmentation[box] & region) >= REGION_FOUND_SHARE * np.count_nonzero(region):
            counts.found[family, size_bin] = counts.found.get((family, size_bin), 0) + 1


def _count_clean(counts: _PostCounts, segmentation: np.ndarray) -> None:
    from scipy import ndimage

    regions = int(ndimage.label(segmentation, structure=np.ones((3, 3), bool))[1])
    counts.clean_regions += regions
    counts.clean_images_flagged += int(regions > 0)


def _report(counts: _PostCounts, totals: dict[tuple[str, int], int], bins: np.ndarray, families: Sequence[str],
            clean_images: int) -> dict[str, Any]:
    """The operating-point numbers of one (post-processing, threshold) from its counts."""
    def recall(keys: list[tuple[str, int]]) -> tuple[int, int, float | None]:
        total = sum(totals.get(k, 0) for k in keys)
        found = sum(counts.found.get(k, 0) for k in keys)
        return total, found, (found / total if total else None)

    keys = list(totals)
    regions, found, overall = recall(keys)
    f1, iou = counts.f1_iou()
    by_size = []
    for b in range(len(bins) - 1):
        n, k, r = recall([key for key in keys if key[1] == b])
        by_size.append({"min": round(float(bins[b]), 2), "max": round(float(bins[b + 1]), 2), "defects": n,
                        "found": k, "recall": r})
    by_family = {}
    for family in families:
        n, k, r = recall([key for key in keys if key[0] == family])
        by_family[family] = {"defects": n, "found": k, "recall": r}
    return {"pixel_f1": f1, "pixel_iou": iou, "regions": regions, "regions_found": found, "region_recall": overall,
            "region_recall_by_size": by_size, "region_recall_by_family": by_family,
            "false_regions_per_clean_image": counts.clean_regions / clean_images,
            "clean_images_with_false_regions": counts.clean_images_flagged}


def _check_run(images: Sequence[Any], copies: int, fpr: float, threshold_rule: str) -> None:
    """Refuse an empty image list, a copy count below 1, an fpr outside (0, 1) or an unknown rule."""
    if len(images) == 0:
        raise InputError("no validation images: tuning needs at least one defect-free image")
    if isinstance(copies, bool) or int(copies) != copies or copies < 1:
        raise InputError(f"copies must be >= 1, got {copies}")
    check_fpr(fpr)
    if threshold_rule not in THRESHOLD_RULES:
        raise InputError(f"unknown threshold rule {threshold_rule!r}; choose one of {', '.join(THRESHOLD_RULES)}")


def _shortest_side(store: _Images, smallest: int, patch_size: int) -> int:
    """Read (and check) every image once, before any work, so that a bad file is found in seconds;
    the shortest side among them."""
    shortest = None
    for i in range(len(store)):
        image = store[i]
        if image.ndim not in (2, 3) or min(image.shape[:2]) < smallest:
            what = f"{patch_size}-pixel patch" if smallest == patch_size else \
                f"smallest input ({smallest} pixels: its {patch_size}-pixel patch once resized)"
            raise InputError(f"{store.names[i]}: image of shape {image.shape} is smaller than the export's {what} "
                             "(or not [H, W] / [H, W, C]); tune on images at least one patch high and wide")
        shortest = min(image.shape[:2]) if shortest is None else min(shortest, *image.shape[:2])
    assert shortest is not None  # at least one image (_check_run)
    return shortest


def _checked_min_areas(min_areas: Sequence[int] | None, size_range: tuple[float, float]) -> list[int]:
    """The minimum region areas to try: ``min_areas`` checked, else :data:`MIN_AREA_FRACTIONS` of the
    smallest defect's area."""
    if min_areas is None:
        smallest_area = math.pi * size_range[0] ** 2 / 4
        min_areas = sorted({int(round(f * smallest_area)) for f in MIN_AREA_FRACTIONS})
    if any(isinstance(a, bool) or int(a) != a or a < 0 for a in min_areas) or not min_areas:
        raise InputError(f"minimum areas must be integers >= 0, got {list(min_areas)}")
    return [int(a) for a in min_areas]


class _Tuner:
    """One run of :func:`tune`: its checked settings, and the passes that accumulate and choose.

    Each pass is one method and leaves what the next ones need on the instance (the ranked map
    candidates, the chosen map, its threshold, ...); :meth:`result` assembles the :class:`Tuning`.
    """

    def __init__(self, model: ExportedModel, images: Sequence[Any], *, size_range: Sequence[float] | None,
                 fpr: float, threshold_rule: str, copies: int, seed: int, windows: Sequence[int],
                 weightings: Sequence[str], sigmas: Sequence[float] | None, openings: Sequence[int],
                 min_areas: Sequence[int] | None, defects_per_patch: float, families: Sequence[str],
                 tolerance: float, progress: bool, sources: Sequence[Any] | None, workers: int | None,
                 borders: Sequence[str] | None, blends: Sequence[str] | None, source_model: Any,
                 formulas: Sequence[str] | None, strides: Sequence[int] | None, stride_tolerance: float) -> None:
        """Check every setting and image against the export, and set up the candidates."""
        _check_run(images, copies, fpr, threshold_rule)
        md = model.metadata
        self.model, self.source_model, self.progress = model, source_model, progress
        self.fpr, self.threshold_rule, self.copies, self.seed = fpr, threshold_rule, copies, seed
        self.defects_per_patch, self.tolerance, self.stride_tolerance = defects_per_patch, tolerance, stride_tolerance
        self.residual = residual = md.residual
        self.patch_size = patch_size = md.patch_size
        self.exported_sigma = exported_sigma = float(md.map_sigma)
        self.own_tiling = (md.border, md.blend)
        if residual == "vae" and exported_sigma:
            raise InputError(f"VAE export {model.path} already smooths its maps (map_sigma {exported_sigma:g}); "
                             "tune an export made without --map-sigma")
        # An export that resizes requests scores them at the resized size: its maps cannot be
        # recomputed from the full-size input and reconstruction, so (as for the VAE) the served map
        # is the one candidate map, smoothed by each sigma.
        resized = not resize.is_identity(md.scale, md.image_size)
        if resized and exported_sigma:
            raise InputError(f"export {model.path} resizes its requests and already smooths its maps (map_sigma "
                             f"{exported_sigma:g}); tune an export made without --map-sigma")
        # The served reconstruction of a mirrored-border export is cropped: the map at the border needs
        # the mirrored strip, so without the Keras model the served map is the one candidate too.
        self.served = served = residual == "vae" or resized or (self.own_tiling[0] != DEFAULT_BORDER and source_model is None)
        if served and exported_sigma:
            raise InputError(f"export {model.path} mirrors its border and already smooths its maps (map_sigma "
                             f"{exported_sigma:g}); give its Keras model (tfssim-tune --model) or tune an export "
                             "made without --map-sigma")
        fixed = ("a VAE's served map is the one candidate" if residual == "vae" else
                 "an export that resizes its requests serves the one candidate map" if resized else
                 "other tilings need the export's Keras model (tfssim-tune --model)" if source_model is None else None)
        self.tilings = _tiling_candidates(borders, blends, self.own_tiling, fixed)
        self.own_formula = MapFormula.of(md.map_formula)
        self.formulas = _formula_candidates(formulas, "the export's maps are its served ones" if served else
                                            None if residual == "ssim" else f"a {residual!r} export's map has no SSIM "
                                            "term", self.own_formula.name)
        self.size_range = defects._check_size_range(size_range or defects.default_size_range(patch_size))
        self.sigmas = self._checked_sigmas(sigmas)
        self.own, self.scorings = self._scorings(windows, weightings)
        if any(isinstance(d, bool) or int(d) != d or d < 0 for d in openings) or not openings:
            raise InputError(f"opening diameters must be integers >= 0, got {list(openings)}")
        self.openings = [int(d) for d in openings]
        self.own_stride = md.stride
        self.strides = _check_strides(default_strides(patch_size, self.own_stride) if strides is None else strides,
                                      patch_size, self.own_stride)
        if not 0 <= stride_tolerance < 1:
            raise InputError(f"stride tolerance must be between 0 and 1, got {stride_tolerance}")
        self.store = _Images(images, md.channels, sources)
        self.n_images = len(self.store)
        shortest = _shortest_side(self.store, md.min_input_size, patch_size)
        if self.size_range[1] > shortest:
            raise InputError(f"the largest synthetic defect size {self.size_range[1]:g} px is larger than the "
                             f"smallest validation image side ({shortest} px); give --defect-size MIN MAX within "
                             "the images")
        self.min_areas = _checked_min_areas(min_areas, self.size_range)
        self.families = list(families)
        for family in self.families:
            if family not in defects.FAMILIES:
                raise InputError(f"unknown defect family {family!r}; choose from {', '.join(defects.FAMILIES)}")
        self._prepare_sweep(workers, shortest)

    def _prepare_sweep(self, workers: int | None, shortest: int) -> None:
        """Set up pass 1: the map computation, each tiling's margin, the reconstructions, the map
        candidates and their accumulators."""
        from tfssim.models import scoring

        model, residual, served, patch_size = self.model, self.residual, self.served, self.patch_size
        self.maps = _Maps(residual, dict(model.metadata.ssim or {}), served=served,
                          workers=workers or min(4, os.cpu_count() or 1))
        # Each tiling's margin: the mirrored strip the widest SSIM window or formula term at the border reads.
        widest = max((w for w, _ in self.scorings if w is not None), default=1)
        reach = max([widest // 2, self.own_formula.reach()]
                    + [t.reach() for w, _ in self.scorings if w is not None
                       for t in _second_terms(self.formulas, w, patch_size)])
        self.margins = {border: min(scoring.border_padding(patch_size, border), reach if residual == "ssim" else 0)
                        for border, _ in self.tilings}
        self.reconstructions = _Reconstructions(model, None if served else self.source_model, self.tilings,
                                                self.margins, "anomaly_map" if served else "reconstruction")
        # The export's own tiling (tilings[0]) with every map candidate; the other tilings later, with
        # the window and weighting best on it and every sigma.
        self.candidates = [MapCandidate(*scoring_, s, *self.own_tiling) for scoring_ in self.scorings
                           for s in self.sigmas]
        # An export tuned before with a formula: its own map (formula, normalisation, sigma) competes too.
        self.own_candidate = MapCandidate(*self.own, self.exported_sigma, *self.own_tiling, self.own_formula) \
            if not self.own_formula.plain and not served else None
        self.candidates += [self.own_candidate] if self.own_candidate is not None else []
        self.sweep_histograms = {c: metrics.ScoreHistogram(2, HISTOGRAM_BITS) for c in self.candidates}
        self.bins = _size_bins(self.size_range, self.families, shortest)
        self.seconds = {"painting": 0.0, "reconstructions": 0.0, "map_candidates": 0.0, "tilings": 0.0,
                        "formulas": 0.0, "strides": 0.0, "threshold": 0.0, "post_processing": 0.0,
                        "threshold_rule": 0.0}
        self.family_counts: dict[str, int] = {}
        self.totals: dict[tuple[str, int], int] = {}  # (family, size bin) -> regions
        self.ranked: list[dict[str, Any]] = []  # one row per map candidate scored, in ranked_candidates' order
        self.ranked_candidates: list[MapCandidate] = []
        self.stride_rows: list[dict[str, Any]] = []
        self.chosen_stride = self.own_stride

    def _checked_sigmas(self, sigmas: Sequence[float] | None) -> list[float]:
        """The map smoothing candidates: ``sigmas`` checked, else :data:`DEFAULT_SIGMAS` that fit the patch."""
        from tfssim.models import scoring

        if sigmas is None:
            sigmas = [s for s in DEFAULT_SIGMAS if scoring.smoothing_radius(s) < self.patch_size]
        with input_checks():  # tfssim.models.scoring checks the candidates with ValueError
            checked = sorted({scoring.validate_map_sigma(float(s), self.patch_size) for s in sigmas})
        if not checked:
            raise InputError("no candidate map sigmas given")
        return checked

    def _scorings(self, windows: Sequence[int], weightings: Sequence[str],
                  ) -> tuple[tuple[int | None, str | None], list[tuple[int | None, str | None]]]:
        """The export's own ``(window, weighting)`` and the candidates (its own alone where the map is not
        recomputed or has no SSIM term)."""
        from tfssim.core.ssim import validate_window

        if self.residual != "ssim":
            return (None, None), [(None, None)]
        params = SSIMParams.of(self.model.metadata.ssim)  # the export's SSIM; SSIMParams' defaults where unset
        own = (params.window_size, params.weighting)
        if self.served:
            return own, [own]
        with input_checks():  # tfssim.core.ssim checks the candidates with ValueError
            for w in windows:
                validate_window(w, params.sigma, "gaussian")
            for weighting in weightings:
                validate_window(params.window_size, params.sigma, weighting)
        return own, sorted({(int(w), str(g)) for w in windows for g in weightings if w <= self.patch_size} | {own})

    def open_cache(self, folder: str | os.PathLike | None) -> _Cache:
        """The on-disk cache of the reconstructions, in ``folder`` (the caller closes it)."""
        self.cache = _Cache(folder)
        return self.cache

    def painted(self, i: int, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]:
        """Image ``i``'s synthetic copies (the same on every call: seeded by ``(seed, i, copy)``)."""
        tick = time.perf_counter()
        j = self.store.neighbour(i)
        source = self.store[j] if j is not None else None
        count = defects_per_copy(image.shape, self.patch_size, self.defects_per_patch)
        out = [synthetic_copy(image, i, k, seed=self.seed, count=count, size_range=self.size_range,
                              families=self.families, source=source) for k in range(self.copies)]
        self.seconds["painting"] += time.perf_counter() - tick
        return out

    def _bar(self, total: int, desc: str) -> Any:
        return progress_bar(total=total, desc=desc, enabled=self.progress)

    def _ranked_rows(self, cands: list[MapCandidate]) -> list[dict[str, Any]]:
        """The rows of ``cands`` (scored), recorded in :attr:`ranked_candidates`."""
        self.ranked_candidates.extend(cands)
        hists = self.sweep_histograms
        return [{"window_size": c.window_size, "weighting": c.weighting, "map_sigma": c.map_sigma,
                 "border": c.border, "blend": c.blend,
                 "map_formula": None if self.residual != "ssim" else
                 (self.own_formula if self.served else c.formula).to_dict(),
                 "pixel_auroc": hists[c].roc_auc(_DEFECT, _GOOD),
                 "pixel_pauc_0.3": hists[c].partial_roc_auc(PRO_MAX_FPR, _DEFECT, _GOOD),
                 "auroc_error_bound": hists[c].roc_auc_error_bound(_DEFECT, _GOOD)} for c in cands]

    def _preference(self, c: dict[str, Any]) -> tuple[Any, ...]:
        """Ties go to the plain map formula, the export's own tiling, then the smaller sigma, then its
        own window and weighting."""
        return (MapFormula.of(c["map_formula"]) != PLAIN, (c["border"], c["blend"]) != self.own_tiling,
                c["map_sigma"], (c["window_size"], c["weighting"]) != self.own, self.ranked.index(c))

    def _best_plain(self) -> dict[str, Any]:
        """The best row of the plain map (what the other tilings and the formulas are built on)."""
        plain = [c for c in self.ranked if MapFormula.of(c["map_formula"]).plain]
        return _pick(plain, "pixel_auroc", self.tolerance, self._preference)

    def rank_map_candidates(self) -> None:
        """Pass 1: paint, reconstruct every copy and clean image once, score every map candidate."""
        store, cache, maps, own_tiling = self.store, self.cache, self.maps, self.own_tiling
        bar = self._bar(self.n_images, "tune: reconstructions and map candidates")
        for i in range(self.n_images):
            x = _hwc(store[i])
            copies_i = self.painted(i, x)
            for _, mask, infos in copies_i:
                for info in infos:
                    self.family_counts[info["family"]] = self.family_counts.get(info["family"], 0) + 1
                for family, size_bin, _, _ in _defect_regions(infos, mask, self.bins):
                    self.totals[family, size_bin] = self.totals.get((family, size_bin), 0) + 1
            tick = time.perf_counter()
            names = [f"synthetic copy {k} of {store.names[i]}" for k in range(self.copies)]
            per_copy = [self.reconstructions(_hwc(p), name) for (p, _, _), name in zip(copies_i, names)]
            clean_bases = self.reconstructions(x, store.names[i])
            self.seconds["reconstructions"] += time.perf_counter() - tick
            copy_bases = [np.stack([bases[v] for bases in per_copy]) for v in range(len(self.tilings))]
            del per_copy
            for v in range(len(self.tilings)):
                cache.save(i, v, copy_bases[v], clean_bases[v])
            tick = time.perf_counter()
            stack, labels = _images_of(copies_i), _labels_of(copies_i)
            for scoring_ in self.scorings:
                raw = maps.raw(stack, copy_bases[0], scoring_, self.margins[own_tiling[0]])
                for sigma, smoothed in maps.smooth_many(raw, self.sigmas).items():
                    self.sweep_histograms[MapCandidate(*scoring_, sigma, *own_tiling)].update(smoothed, labels)
            if self.own_candidate is not None:
                raw = maps.raw(stack, copy_bases[0], self.own, self.margins[own_tiling[0]], self.own_formula)
                self.sweep_histograms[self.own_candidate].update(maps.smooth(raw, self.exported_sigma), labels)
            del copy_bases
            self.seconds["map_candidates"] += time.perf_counter() - tick
            bar.update()
        bar.close()
        self.ranked = self._ranked_rows(self.candidates)

    def rank_tilings(self) -> None:
        """Pass 1b: the other tilings, from the cache, with the window and weighting best on the
        export's own tiling (the one the tuner would pick without them) and every sigma."""
        tick, painting_before = time.perf_counter(), self.seconds["painting"]
        best = self._best_plain()
        best_scoring = (best["window_size"], best["weighting"])
        others = [MapCandidate(*best_scoring, s, *t) for t in self.tilings[1:] for s in self.sigmas]
        self.sweep_histograms.update({c: metrics.ScoreHistogram(2, HISTOGRAM_BITS) for c in others})
        bar = self._bar(self.n_images, "tune: tile border and blend")
        for i in range(self.n_images):
            copies_i = self.painted(i, _hwc(self.store[i]))
            stack, labels = _images_of(copies_i), _labels_of(copies_i)
            for v, tiling_ in enumerate(self.tilings[1:], 1):
                raw = self.maps.raw(stack, self.cache.copies(i, v), best_scoring, self.margins[tiling_[0]])
                for sigma, smoothed in self.maps.smooth_many(raw, self.sigmas).items():
                    self.sweep_histograms[MapCandidate(*best_scoring, sigma, *tiling_)].update(smoothed, labels)
            bar.update()
        bar.close()
        self.ranked += self._ranked_rows(others)
        self.seconds["tilings"] = time.perf_counter() - tick - (self.seconds["painting"] - painting_before)

    def rank_formulas(self) -> None:
        """Pass 1c: the map formulas with a second term, on the best plain map's window, weighting,
        tiling and sigma: each term's clean-image quantiles (its normalisation), then every
        combination, from the cache."""
        tick, painting_before = time.perf_counter(), self.seconds["painting"]
        maps, cache, n_images = self.maps, self.cache, self.n_images
        plain = self.ranked_candidates[self.ranked.index(self._best_plain())]
        v, margin = self.tilings.index(plain.tiling), self.margins[plain.border]
        terms = _second_terms(self.formulas, plain.window_size, self.patch_size)
        clean_hists = [metrics.ScoreHistogram(2, HISTOGRAM_BITS) for _ in range(len(terms) + 1)]
        bar = self._bar(2 * n_images, "tune: map formulas")
        for i in range(n_images):
            x, clean = _hwc(self.store[i])[None], cache.clean(i, v)[None]
            clean_hists[0].update(maps.raw(x, clean, plain.scoring, margin), _GOOD)
            for hist, term in zip(clean_hists[1:], terms):
                hist.update(maps.term(x, clean, plain.scoring, margin, term), _GOOD)
            bar.update()
        # Each term's median and 1 - fpr quantile on the clean images; a term flat there (no
        # spread to normalise by) is dropped.
        quantiles = [(float(h.edge_at_fpr(0.5, _GOOD)), float(h.edge_at_fpr(self.fpr, _GOOD))) for h in clean_hists]
        combined = {term: [dataclasses.replace(term, combine=how, weight=weight,
                                               offsets=(quantiles[0][0], quantiles[k][0]),
                                               scales=(quantiles[0][1] - quantiles[0][0],
                                                       quantiles[k][1] - quantiles[k][0]))
                           for how, weight in [("max", 0.5)] + [("sum", w) for w in SUM_WEIGHTS]]
                    for k, term in enumerate(terms, 1)
                    if quantiles[k][1] > quantiles[k][0] and quantiles[0][1] > quantiles[0][0]}
        # At the best plain map's sigma only: 16 combinations at every sigma would cost as much
        # again as the whole candidate sweep.
        sigma = plain.map_sigma
        others = [MapCandidate(*plain.scoring, sigma, *plain.tiling, formula) for group in combined.values()
                  for formula in group]
        self.sweep_histograms.update({c: metrics.ScoreHistogram(2, HISTOGRAM_BITS) for c in others})
        for i in range(n_images if combined else 0):
            copies_i = self.painted(i, _hwc(self.store[i]))
            stack, labels = _images_of(copies_i), _labels_of(copies_i)
            bases = cache.copies(i, v)
            first = maps.raw(stack, bases, plain.scoring, margin)
            for term, group in combined.items():
                a, b = group[0].normalise(first, maps.term(stack, bases, plain.scoring, margin, term))
                # A weighted sum commutes with the (normalised, linear) blur: the smoothed terms
                # are combined; a max is smoothed after combining, as served.
                a_smooth, b_smooth = (maps.smooth_many(t, [sigma])[sigma] for t in (a, b))
                for formula in group:
                    scores = maps.smooth_many(formula.combine_normalised(a, b), [sigma])[sigma] \
                        if formula.combine == "max" else formula.combine_normalised(a_smooth, b_smooth)
                    self.sweep_histograms[MapCandidate(*plain.scoring, sigma, *plain.tiling, formula)].update(
                        scores, labels)
            bar.update()
        bar.close()
        plain_row = self.ranked[self.ranked_candidates.index(plain)]
        formula_rows = self._ranked_rows(others)
        # A formula must also not lose on the low-FPR part of the curve, where thresholds are set: its
        # smooth second term can raise the whole curve's area through the high-FPR part alone.
        for row in formula_rows:
            row["eligible"] = row["pixel_pauc_0.3"] >= plain_row["pixel_pauc_0.3"] - self.tolerance
        self.ranked += formula_rows
        self.seconds["formulas"] = time.perf_counter() - tick - (self.seconds["painting"] - painting_before)

    def choose_map(self) -> None:
        """Pick the best eligible map candidate (ties to the simpler one) and keep only its cache."""
        self.current = next((c for c in self.ranked if (c["window_size"], c["weighting"]) == self.own
                             and (c["border"], c["blend"]) == self.own_tiling and c["map_sigma"] == self.exported_sigma
                             and MapFormula.of(c["map_formula"]) == self.own_formula), None)
        self.chosen_map = _pick([c for c in self.ranked if c.get("eligible", True)], "pixel_auroc", self.tolerance,
                                self._preference)
        self.chosen = next(c for row, c in zip(self.ranked, self.ranked_candidates) if row is self.chosen_map)
        self.sweep = self.sweep_histograms[self.chosen]
        self.sweep_histograms.clear()  # only the chosen candidate's counts are needed from here
        self.cache.keep(self.tilings.index(self.chosen.tiling))
        self.margin = self.margins[self.chosen.border]

    def compare_strides(self) -> None:
        """Pass 1d: the chosen map at every stride (the speed/quality frontier), and the stride chosen."""
        tick, painting_before = time.perf_counter(), self.seconds["painting"]
        frontier = _StrideFrontier(
            self.model, None if self.served else self.source_model, self.chosen, self.margin, self.cache,
            len(self.tilings), "anomaly_map" if self.served else "reconstruction",
            ssim_params=self.maps.params(self.chosen.scoring))
        bar = self._bar(2 * self.n_images * len(self.strides), "tune: strides")
        # Each image painted once per look, for every stride.
        for i in range(self.n_images):
            x = _hwc(self.store[i])
            copies_i = self.painted(i, x)
            for stride in self.strides:
                frontier.add(stride, i, x, copies_i, self.maps, self.store.names[i])
                bar.update()
        for i in range(self.n_images):
            copies_i = self.painted(i, _hwc(self.store[i]))
            for stride in self.strides:
                frontier.add_overlaps(stride, i, copies_i)
                bar.update()
        bar.close()
        timed = [_hwc(self.store[i]) for i in range(min(TIMED_IMAGES, self.n_images))]
        self.stride_rows, self.chosen_stride = frontier.result(self.stride_tolerance, timed)
        if self.chosen_stride != self.own_stride:
            self.sweep = frontier.histograms[self.chosen_stride]
        self.cache.keep(frontier.variant(self.chosen_stride))
        self.seconds["strides"] = time.perf_counter() - tick - (self.seconds["painting"] - painting_before)

    def _chosen_maps(self, x: np.ndarray, bases: np.ndarray, stack: np.ndarray | None = None) -> np.ndarray:
        """The chosen map as the export will serve it (from here on, no FFT shortcut)."""
        return self.maps.as_served(self.chosen, x[None] if stack is None else stack, bases, self.margin)

    def _image_again(self, i: int) -> tuple[list[tuple[np.ndarray, np.ndarray, list]], np.ndarray, np.ndarray]:
        """Image ``i``'s copies painted again, their chosen maps and its clean image's, from the cache."""
        x = _hwc(self.store[i])
        copies_i = self.painted(i, x)
        stack = _images_of(copies_i)
        return (copies_i, self._chosen_maps(x, self.cache.copies(i), stack),
                self._chosen_maps(x, self.cache.clean(i)[None])[0])

    def set_threshold(self) -> None:
        """Pass 2: the clean images' scores of the chosen map, twice: a histogram, then the one bin
        holding the threshold's rank, looked at exactly (:class:`tfssim.evaluation.metrics.FprThreshold`)."""
        tick = time.perf_counter()
        calibration = metrics.FprThreshold(self.fpr, HISTOGRAM_BITS)
        bar = self._bar(2 * self.n_images, "tune: threshold")
        for look in (calibration.count, calibration.look):
            for i in range(self.n_images):
                look(self._chosen_maps(_hwc(self.store[i]), self.cache.clean(i)[None])[0])
                bar.update()
        bar.close()
        self.threshold, self.val_fpr = calibration.result()
        self.clean_hist = calibration.histogram
        self.final_threshold, self.final_fpr = float(self.threshold), self.val_fpr
        self.seconds["threshold"] = time.perf_counter() - tick

    def choose_post_processing(self) -> None:
        """Pass 3: every post-processing candidate at the threshold, the per-region overlap curve
        (AUPRO) and the operating-point report."""
        tick = time.perf_counter()
        md, threshold, bins, families = self.model.metadata, self.threshold, self.bins, self.families
        openings, min_areas = self.openings, self.min_areas
        self.convex_hull = convex_hull = md.convex_hull
        own_post = (md.opening_diameter, md.min_area)
        post_counts = {(o, a): _PostCounts() for o in openings for a in min_areas}
        # The per-region overlap curve at bin edges of the good pixels' scores (from the sweep's
        # counts), its FPR counted exactly on the served maps (a bin edge: count_at_least).
        top = self.sweep.top_edge(_GOOD)  # above every good pixel: FPR 0
        pro_edges = np.unique(np.r_[top, self.sweep.edge_at_fpr(np.linspace(0.0, PRO_MAX_FPR, PRO_THRESHOLDS)[1:],
                                                                _GOOD)])
        pro_edges = pro_edges[::-1]  # falling thresholds: rising FPR, as the curve's area needs
        self.served_hist = served_hist = metrics.ScoreHistogram(2, HISTOGRAM_BITS)  # the chosen map as served
        # The same map's scores by family: class 0 the good pixels, class k + 1 family k's defect pixels.
        family_hist = metrics.ScoreHistogram(1 + len(families), HISTOGRAM_BITS)
        overlap_sums = np.zeros(pro_edges.size)
        pro_regions = 0
        bar = self._bar(self.n_images, "tune: post-processing")
        for i in range(self.n_images):
            copies_i, defect_maps, clean_map = self._image_again(i)
            for m, (_, mask, infos) in zip(defect_maps, copies_i):
                served_hist.update(m, mask.astype(np.uint8))
                regions = _defect_regions(infos, mask, bins)
                family_labels = np.zeros(mask.shape, np.uint8)
                for family, _, box, region in regions:
                    family_labels[box][region] = families.index(family) + 1
                family_hist.update(m, family_labels)
                for o in openings:
                    found = postprocess.segment_regions(m, threshold, opening_diameter=o, convex_hull=convex_hull)
                    for a in min_areas:
                        _count(post_counts[o, a], postprocess.regions_mask(found, m.shape, a), mask, regions)
                overlaps = metrics.region_overlaps(m, mask, pro_edges)  # [regions, edges]
                overlap_sums += overlaps.sum(axis=0)
                pro_regions += overlaps.shape[0]
            for o in openings:
                found = postprocess.segment_regions(clean_map, threshold, opening_diameter=o, convex_hull=convex_hull)
                for a in min_areas:
                    _count_clean(post_counts[o, a], postprocess.regions_mask(found, clean_map.shape, a))
            bar.update()
        bar.close()
        reports = {key: _report(c, self.totals, bins, families, self.n_images) for key, c in post_counts.items()}
        self.post_candidates = post_candidates = [
            {"opening_diameter": o, "min_area": a, "f1": reports[o, a]["pixel_f1"],
             "iou": reports[o, a]["pixel_iou"], "region_recall": reports[o, a]["region_recall"],
             "false_regions_per_clean_image": reports[o, a]["false_regions_per_clean_image"]}
            for o in openings for a in min_areas]
        chosen_post = _pick(post_candidates, "f1", self.tolerance,
                            lambda c: ((c["opening_diameter"], c["min_area"]) != own_post, post_candidates.index(c)))
        self.post = (chosen_post["opening_diameter"], chosen_post["min_area"])
        n_good = served_hist.total(_GOOD)
        pro_fpr = np.array([served_hist.count_at_least(t, _GOOD) for t in pro_edges]) / n_good
        self.aupro = metrics.area_under_pro({"fpr": pro_fpr, "mean": overlap_sums / max(pro_regions, 1)}, PRO_MAX_FPR)
        self.operating_point = {"threshold": float(threshold), "threshold_rule": "fpr", "val_fpr": self.val_fpr,
                                **reports[self.post]}
        self.auroc_by_family = {family: (family_hist.roc_auc(k + 1, _GOOD) if family_hist.total(k + 1) else None)
                                for k, family in enumerate(families)}
        self.seconds["post_processing"] = time.perf_counter() - tick

    def apply_f1_rule(self) -> None:
        """Pass 4 (``threshold_rule="f1"``): the chosen post-processing at thresholds of lower clean
        FPRs, and the one with the best synthetic F1."""
        # Each threshold tried is the float just under a bin edge, so it flags exactly the scores >= the
        # edge, which the clean histogram counts.
        tick = time.perf_counter()
        threshold, clean_hist, post, convex_hull = self.threshold, self.clean_hist, self.post, self.convex_hull
        edges = set(clean_hist.edge_at_fpr([self.fpr * share for share in F1_FPR_SHARES[1:]], 0).tolist())
        below_edge = {float(np.nextafter(np.float32(e), np.float32(-np.inf))): e for e in edges}
        tried = [float(threshold)] + sorted(t for t in below_edge if t > threshold)
        sweep_counts = {t: _PostCounts() for t in tried}
        bar = self._bar(self.n_images, "tune: threshold rule f1")
        for i in range(self.n_images):
            copies_i, defect_maps, clean_map = self._image_again(i)
            for t in tried:
                for m, (_, mask, infos) in zip(defect_maps, copies_i):
                    seg = postprocess.segment(m, t, opening_diameter=post[0], convex_hull=convex_hull,
                                              min_area=post[1])
                    _count(sweep_counts[t], seg, mask, _defect_regions(infos, mask, self.bins))
                _count_clean(sweep_counts[t], postprocess.segment(clean_map, t, opening_diameter=post[0],
                                                                  convex_hull=convex_hull, min_area=post[1]))
            bar.update()
        bar.close()
        n_clean = clean_hist.total(0)
        points = []
        for t in tried:
            clean_fpr = self.val_fpr if t == threshold else clean_hist.count_at_least(below_edge[t], 0) / n_clean
            points.append({"threshold": t, "val_fpr": clean_fpr,
                           **_report(sweep_counts[t], self.totals, self.bins, self.families, self.n_images)})
        best = max(points, key=lambda p: (p["pixel_f1"], -p["threshold"]))
        self.final_threshold, self.final_fpr = best["threshold"], best["val_fpr"]
        self.operating_point = {**best, "threshold_rule": "f1", "fpr_rule": self.operating_point,
                                "thresholds": [{k: p[k] for k in ("threshold", "val_fpr", "pixel_f1", "pixel_iou",
                                                                  "region_recall", "false_regions_per_clean_image")}
                                               for p in points]}
        self.seconds["threshold_rule"] = time.perf_counter() - tick

    def result(self, seconds: float) -> Tuning:
        """The :class:`Tuning` of the passes run (``seconds``: the whole run's time)."""
        chosen, chosen_map, operating_point, served_hist = self.chosen, self.chosen_map, self.operating_point, \
            self.served_hist
        choice = TuningChoice(window_size=chosen.window_size, weighting=chosen.weighting, map_sigma=chosen.map_sigma,
                              opening_diameter=self.post[0], min_area=self.post[1], convex_hull=self.convex_hull,
                              threshold=float(self.final_threshold), threshold_rule=self.threshold_rule,
                              fpr=float(self.fpr), val_fpr=float(self.final_fpr), border=chosen.border,
                              blend=chosen.blend, map_formula=chosen_map["map_formula"], stride=self.chosen_stride)
        synthetic = {"pixel_auroc": served_hist.roc_auc(_DEFECT, _GOOD),
                     "auroc_error_bound": served_hist.roc_auc_error_bound(_DEFECT, _GOOD),
                     "aupro_0.3": self.aupro, "f1": operating_point["pixel_f1"], "iou": operating_point["pixel_iou"],
                     "pixel_auroc_by_family": self.auroc_by_family,
                     "before": {"window_size": self.own[0], "weighting": self.own[1], "map_sigma": self.exported_sigma,
                                "border": self.own_tiling[0], "blend": self.own_tiling[1], "stride": self.own_stride,
                                "map_formula": self.own_formula.to_dict() if self.residual == "ssim" else None,
                                "pixel_auroc": None if self.current is None else self.current["pixel_auroc"]}}
        warnings = []
        if chosen_map["pixel_auroc"] < WEAK_AUROC:
            size_range = self.size_range
            warnings.append(
                f"Warning: the best anomaly map tells the synthetic defects apart only at pixel ROC AUC "
                f"{chosen_map['pixel_auroc']:.3f} (below {WEAK_AUROC}), so this choice means little; paint defect "
                f"sizes that match the defects you must find (--defect-size, now {size_range[0]:g}-"
                f"{size_range[1]:g} px) or train the model longer")
        defect_pixels = served_hist.total(_DEFECT)
        copy_pixels = defect_pixels + served_hist.total(_GOOD)
        settings = {
            "seed": int(self.seed), "copies": int(self.copies),
            "defect_size": [float(self.size_range[0]), float(self.size_range[1])],
            "families": self.families, "defects_per_patch": float(self.defects_per_patch),
            "tolerance": float(self.tolerance),
            "tilings": [{"border": b, "blend": g} for b, g in self.tilings], "formulas": list(self.formulas),
            "strides": self.strides, "stride_tolerance": float(self.stride_tolerance),
            "validation_images": self.n_images, "defective_copies": self.n_images * self.copies,
            "defects": self.family_counts, "defect_fraction": float(defect_pixels / copy_pixels),
            "threshold_rule": self.threshold_rule, "region_found_share": REGION_FOUND_SHARE,
            "export": str(self.model.path), "seconds": round(seconds, 2),
            "stage_seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }
        return Tuning(self.residual, self.ranked, self.post_candidates, choice, synthetic, operating_point, settings,
                      warnings, self.stride_rows)


def tune(
    model: ExportedModel,
    images: Sequence[np.ndarray | str | os.PathLike],
    *,
    size_range: Sequence[float] | None = None,
    fpr: float = postprocess.DEFAULT_FPR,
    threshold_rule: str = THRESHOLD_RULES[0],
    copies: int = DEFAULT_COPIES,
    seed: int = DEFAULT_DEFECT_SEED,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    weightings: Sequence[str] = DEFAULT_WEIGHTINGS,
    sigmas: Sequence[float] | None = None,
    openings: Sequence[int] = DEFAULT_OPENINGS,
    min_areas: Sequence[int] | None = None,
    defects_per_patch: float = 1.0,
    families: Sequence[str] = defects.LOCAL_FAMILIES,
    tolerance: float = 0.001,
    progress: bool = True,
    sources: Sequence[Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    borders: Sequence[str] | None = None,
    blends: Sequence[str] | None = None,
    source_model: Any = None,
    formulas: Sequence[str] | None = None,
    strides: Sequence[int] | None = None,
    stride_tolerance: float = STRIDE_TOLERANCE,
) -> Tuning:
    """Choose the anomaly-map settings, post-processing and threshold of an export from defect-free images.

    Memory is bounded by about one image's working set whatever the number of images (see the
    module docstring); time grows linearly with it.

    Args:
        model: A loaded export (any map smoothing: maps are recomputed from its reconstruction,
            or with ``source_model`` from the Keras model's, equal to the served ones up to float
            rounding, about 1e-6; a VAE export must serve unsmoothed maps). An export that
            resizes its requests (``scale`` / ``image_size``) scores at the resized size, so its
            own served map is the one map candidate (the SSIM window and weighting are not
            tuned; only the smoothing, post-processing and threshold) and it must serve
            unsmoothed maps; so is that of an export with ``border="reflect"`` when
            ``source_model`` is not given.
        images: Defect-free validation images: arrays ``[H, W]`` / ``[H, W, C]`` in [0, 1], or
            image files (read one at a time, when needed).
        size_range: ``(min, max)`` defect size (equivalent diameter, pixels); default 1/16
            to 1/2 of the patch side (:func:`tfssim.data.defects.default_size_range`).
        fpr: Pixel false-positive rate of the threshold on the clean images.
        threshold_rule: ``"fpr"`` (the paper's: the threshold at ``fpr``) or ``"f1"`` (the
            threshold with the best synthetic F1 among those whose clean-pixel FPR is at most
            ``fpr``).
        copies: Defective copies painted per image.
        seed: Seed of the synthetic defects (the same seed gives the same choice).
        windows, weightings: SSIM candidates (SSIM models only); windows larger than the
            patch are dropped.
        sigmas: Map smoothing candidates; default :data:`DEFAULT_SIGMAS` that fit the patch
            (:func:`tfssim.models.scoring.validate_map_sigma`); given ones must fit.
        openings: Opening diameters tried (0 = none).
        min_areas: Minimum region areas tried; default :data:`MIN_AREA_FRACTIONS` of the
            smallest defect size's area.
        defects_per_patch: Defects per patch-sized area of an image (at least one per copy).
        families: Defect families (from :data:`tfssim.data.defects.FAMILIES`); default the
            four of local structure (:data:`tfssim.data.defects.LOCAL_FAMILIES`). ``shading``
            and ``missing`` paint large low-contrast and flat areas: add them to learn from the
            report (region recall and AUROC by family) what the model misses, or where the
            product's defects are of that kind; not by default, since they then dominate the pixel
            ROC AUC the map is chosen by (docs/results.md: on synthetic defects of an unused
            seed, the choice loses on the local families and no candidate sees shading).
        tolerance: A candidate within this of the best score counts as tied (the synthetic
            estimate is noisy at that level); ties go to the simpler setting.
        progress: Show progress bars with an ETA (on a terminal only).
        sources: Names of the images (e.g. their paths) for messages.
        cache_dir: Folder for the temporary cache of reconstructions (removed at the end; about
            ``(copies + 1) * H * W * C * 4`` bytes per image and tiling compared, a little more
            for a mirrored border's margin); default the system's.
        workers: Threads of the candidate sweep's FFTs (default: the CPU count, at most 4).
        borders, blends: Tiling candidates (``tfssim-export --border / --blend``); default the
            export's own border and every one of :data:`tfssim.core.tiling_params.BLENDS` when
            ``source_model`` is given (the blends share one model pass; another border costs one
            more pass per image and copy, about twice the tuning time, so it is compared only when
            given, e.g. ``borders=("none", "reflect")``), else only the export's own. The
            export's own tiling is scored with every map candidate; then each other tiling with
            the SSIM window and weighting best on the export's own tiling, and every sigma. Not
            for VAE exports or exports that resize their requests (their served map
            is the one candidate).
        source_model: The export's Keras model (:func:`load_source`), which reconstructs the
            tiling candidates; ``None``: the export's reconstructions, its own tiling only.
        formulas: Map formulas tried (:data:`tfssim.core.map_formula.FORMULAS`; default all of them
            for SSIM exports whose maps the tuner recomputes, else the export's own). Each formula
            with a second term is scored on the best plain map's window, weighting and tiling,
            and sigma, with every second term (:data:`LOWFREQ_SIGMA_SHARES`,
            :data:`MULTISCALE_FACTORS`), each term normalised by its median and ``1 - fpr``
            quantile on the clean validation images, combined by max or a weighted sum
            (:data:`SUM_WEIGHTS`). A formula is chosen only if its ROC curve's area up to FPR 0.3
            (standardised) is also within ``tolerance`` of the plain map's: a smooth second term
            can raise the whole curve's area through its high-FPR part alone, where no threshold
            is ever set.
        strides: Tiling strides compared (``1 <= stride <= patch``; the export's own is always
            one); default :func:`default_strides`. Each other stride reconstructs every copy and
            clean image once more (through the Keras model, or the export's ``serve_with_stride``
            signature), scored with the chosen map (its normalisation and sigma as chosen at the
            export's stride); its serving time is measured on up to :data:`TIMED_IMAGES` clean
            images. The largest stride whose synthetic pixel ROC AUC and ROC area up to FPR 0.3
            are both within ``stride_tolerance`` of the best stride's is chosen
            (:attr:`Tuning.strides` holds the frontier); the threshold and post-processing are
            then set at that stride.
        stride_tolerance: See ``strides``.

    Returns:
        A :class:`Tuning`.

    Raises:
        InputError: no images, ``copies < 1``, a bad size range, fpr, rule, sigma, window or
            post-processing candidate, an image smaller than the export takes, or a VAE
            export that smooths its maps.
    """
    started = time.perf_counter()
    tuner = _Tuner(model, images, size_range=size_range, fpr=fpr, threshold_rule=threshold_rule, copies=copies,
                   seed=seed, windows=windows, weightings=weightings, sigmas=sigmas, openings=openings,
                   min_areas=min_areas, defects_per_patch=defects_per_patch, families=families, tolerance=tolerance,
                   progress=progress, sources=sources, workers=workers, borders=borders, blends=blends,
                   source_model=source_model, formulas=formulas, strides=strides, stride_tolerance=stride_tolerance)
    cache = tuner.open_cache(cache_dir)
    try:
        tuner.rank_map_candidates()
        if len(tuner.tilings) > 1:
            tuner.rank_tilings()
        if len(tuner.formulas) > 1:
            tuner.rank_formulas()
        tuner.choose_map()
        if len(tuner.strides) > 1:
            tuner.compare_strides()
        tuner.set_threshold()
        tuner.choose_post_processing()
        if threshold_rule == "f1":
            tuner.apply_f1_rule()
    finally:
        cache.close()
    return tuner.result(time.perf_counter() - started)


# --- writing the result ----------------------------------------------------------------------------


def find_source(model: ExportedModel, source: str | os.PathLike | None = None) -> Path:
    """The run folder or ``.keras`` file to re-export ``model`` from: ``source``, else the one its
    metadata records (``source``, written by :func:`tfssim.export.export_model`).

    Raises:
        InputError: none recorded or given, or it does not exist (the message says what to pass).
    """
    source = source if source is not None else model.metadata.source
    if source is None:
        raise InputError(f"export {model.path} does not record the Keras model it was made from (metadata 'source'); "
                         "give the run folder or .keras file of that model (tfssim-tune --model)")
    if not Path(source).exists():
        raise InputError(f"the Keras model of export {model.path} ({source}) no longer exists; "
                         "give the run folder or .keras file of that model (tfssim-tune --model)")
    return Path(source)


@dataclasses.dataclass
class SourceModel:
    """The Keras model an export was made from, loaded and checked (:func:`load_source`)."""

    path: Path
    model: Any
    info: dict[str, Any]


def load_source(model: ExportedModel, source: str | os.PathLike | None = None, *,
                check_image: np.ndarray | None = None) -> SourceModel:
    """Load and check the Keras model to re-export ``model`` from, before any tuning work.

    A SavedModel's graph cannot be re-scored without the Keras model behind it. Checked here,
    so that a wrong model fails in seconds and not after the tuning: it loads (Keras's safe mode
    included), takes the export's channel count and patch size, and (with ``check_image``)
    reconstructs that image as the export does - a source overwritten since the export, e.g. by
    a resumed training run, is refused.

    Args:
        model: The export to tune.
        source: A run folder or ``.keras`` file, when the export records none or it moved.
        check_image: A validation image ``[H, W]`` / ``[H, W, C]`` in [0, 1].

    Raises:
        InputError: no source known, or it does not load, does not fit the export, or
            reconstructs differently (one line naming it and what to pass instead).
    """
    from tfssim import export as export_lib
    from tfssim.models import scoring

    path = find_source(model, source)
    fix = "give the run folder or .keras file the export was made from (tfssim-tune --model)"
    try:
        keras_model, info = export_lib.load_for_export(path)
    except InputError as err:
        raise InputError(f"{err}; {fix}") from None
    except (ValueError, TypeError, OSError, KeyError, AttributeError) as err:  # Keras's refusals of a file
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise InputError(f"cannot load the Keras model {path}: {reason}; {fix}") from None
    md = model.metadata
    shape = tuple(keras_model.input_shape[1:])
    channels, patch = shape[-1], shape[0]
    if channels != model.channels or patch != md.patch_size:
        raise InputError(f"the Keras model {path} takes {patch}x{patch}x{channels} patches but export {model.path} "
                         f"takes {md.patch_size}x{md.patch_size}x{model.channels}: it is not the exported model; "
                         f"{fix}")
    if check_image is not None:
        want = model.predict(check_image)["reconstruction"]
        image = np.asarray(check_image, np.float32).reshape(want.shape)
        # A VAE export records its sampling seed; the other kinds sample nothing (anomaly_maps' own default).
        seed = {} if md.vae_seed is None else {"vae_seed": md.vae_seed}
        have = scoring.anomaly_maps(keras_model, image, md.kind, md.patch_size, md.stride,
                                    chunk_size=md.chunk_size, ssim_kwargs=md.ssim, vae_samples=md.vae_samples,
                                    scale=md.scale, image_size=md.image_size, border=md.border, blend=md.blend,
                                    **seed)["reconstruction"]
        diff = float(np.max(np.abs(np.asarray(have) - want)))
        if diff > 1e-4:
            raise InputError(f"the model in {path} is not the one exported as {model.path} (reconstructions differ "
                             f"by up to {diff:.3g}); {fix}")
    return SourceModel(path, keras_model, info)


def write_tuned_export(model: ExportedModel, tuning: Tuning, source: SourceModel) -> Path:
    """Write the tuned settings as a **new version** beside ``model`` (the old one is not touched).

    The new version is re-exported from ``source`` (:func:`load_source`) with the chosen stride as
    its default (what ``serving_default`` serves), the export's own chunk size and kind, the chosen
    SSIM window / weighting, map sigma, tiling and map formula in its graph,
    and in its metadata the threshold (and its FPR), the post-processing and a ``tuned`` record.
    The version number is the next free one, moved into place without ever replacing anything
    (:func:`tfssim.export.export_model`).

    Returns:
        The new version folder.
    """
    from tfssim import export as export_lib

    md = model.metadata
    choice = tuning.choice
    tuned = {
        "by": "tfssim.evaluation.tuning", "from_version": md.version, "from_path": str(model.path),
        "objective": {"map": MAP_OBJECTIVE, "post_processing": POST_OBJECTIVE},
        "threshold_rule": choice.threshold_rule, "synthetic": tuning.synthetic,
        "operating_point": {k: v for k, v in tuning.operating_point.items() if k not in ("thresholds", "fpr_rule")},
        "warnings": list(tuning.warnings),
        "settings": {k: v for k, v in tuning.settings.items() if k not in ("seconds", "stage_seconds")},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return export_lib.export_model(
        source.model, output_root=model.path.parent.parent, name=model.path.parent.name,
        stride=md.stride if choice.stride is None else choice.stride,
        kind=md.kind, ssim_kwargs=tuning.ssim_params(md.ssim), chunk_size=md.chunk_size,
        training_config=md.training_config, threshold=choice.threshold, vae_samples=md.vae_samples,
        jit_compile=md.jit_compile, map_sigma=choice.map_sigma,
        scale=md.scale, image_size=md.image_size, border=choice.border, blend=choice.blend,
        map_formula=choice.map_formula, extra_metadata={"threshold_fpr": choice.fpr, "opening_diameter": choice.opening_diameter,
                        "min_area": choice.min_area, "convex_hull": choice.convex_hull,
                        "source": source.info.get("model_path", str(source.path)), "tuned": tuned},
    )


# --- the whole job: tfssim-tune ---------------------------------------------------------------------


@dataclasses.dataclass
class TuneRun:
    """What :func:`tune_export` did.

    Attributes:
        tuning: The :class:`Tuning`.
        new_version: The version folder written.
        record: ``tuning.json``; ``plot``: ``tuning.png``.
        images: The validation images tuned on; ``images_from``: where they came from.
    """

    tuning: Tuning
    new_version: Path
    record: Path
    plot: Path
    images: list[Path]
    images_from: str


def recorded_validation_images(model: ExportedModel, source: str | os.PathLike | None = None) -> tuple[list[Path], Path]:
    """The validation images the training run behind ``model`` recorded (its run record's ``val_images``).

    The run folder is ``source`` or the one the export's metadata records (its model file's
    folder).

    Returns:
        ``(images, run folder)``.

    Raises:
        InputError: the export was not made from a run folder, the run recorded no validation
            images, or they are gone (the message says to give images instead).
    """
    from tfssim.run_record import CONFIG_NAME, read_run_record

    path = find_source(model, source)
    run_dir = path if path.is_dir() else path.parent
    fix = "give the defect-free validation images on the command line"
    record = read_run_record(run_dir)
    if record is None:
        raise InputError(f"export {model.path} was made from {path}, which is not in a training run folder (no "
                         f"{CONFIG_NAME} beside it), so no validation images are recorded; {fix}")
    recorded = record.get("val_images")
    if not isinstance(recorded, list) or not recorded or not all(isinstance(p, str) for p in recorded):
        raise InputError(f"the training run {run_dir} recorded no validation images ({CONFIG_NAME} 'val_images'; "
                         f"trained with --val-split 0?); {fix}")
    images = [Path(p) for p in recorded]
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise InputError(f"{len(missing)} of the {len(images)} validation images the run {run_dir} recorded are gone "
                         f"(e.g. {missing[0]}; paths as given to tfssim-train); {fix}")
    return images, run_dir


def tune_export(export: str | os.PathLike | ExportedModel, images: Sequence[str | os.PathLike] | None = None,
                output: str | os.PathLike = DEFAULT_OUTPUT, *, source: str | os.PathLike | None = None,
                progress: bool = True, announce: Any = None, **tune_kwargs: Any) -> TuneRun:
    """:func:`tune` an export and write the result: a new version, ``tuning.json`` and ``tuning.png``.

    What ``tfssim-tune`` runs. Everything that can be checked is checked before the work, and
    the new version is the last thing written, so a failed run publishes nothing: the output
    folder (:func:`tfssim._io.prepare_output_dir`: never an input folder or inside one, writable;
    held by this run alone, and with no ``tuning.json`` of an earlier run), the images (all read
    once), the export's metadata, and the Keras model to re-export (:func:`load_source`: it
    loads, fits the export and reconstructs the first image as the export does). The
    reconstruction cache lives in the output folder while the run lasts.

    Args:
        export: A version folder, its model folder (newest version) or a loaded export.
        images: Defect-free validation images (files, folders or globs); ``None``: the ones the
            export's training run recorded (:func:`recorded_validation_images`).
        output: Folder for ``tuning.json`` and ``tuning.png``.
        source: The run folder or ``.keras`` file the export was made from, where its metadata
            names none or it moved.
        progress: Progress bars (on a terminal).
        announce: Called as ``announce(images, origin)`` once the images are known, before the work.
        **tune_kwargs: :func:`tune`'s settings (``fpr``, ``threshold_rule``, ``copies``, ...).

    Returns:
        A :class:`TuneRun`.

    Raises:
        InputError: bad input of any kind, before anything is written.
    """
    from tfssim import plots
    from tfssim._io import atomic_write_json, output_dir_lock, prepare_output_dir
    from tfssim.run_record import CONFIG_NAME, read_run_record
    from tfssim.serving.prediction import expand_inputs

    model = export if isinstance(export, ExportedModel) else ExportedModel.load(export)
    if tune_kwargs.get("strides") is not None:  # refused in seconds, before the images and the model are read
        _check_strides(tune_kwargs["strides"], model.metadata.patch_size, model.metadata.stride)
    # What the output folder must stay out of: the images and the folders they came from, the export
    # and its model folder (a numbered folder there would be a version), the model file and its run.
    inputs: list[Any] = [model.path, model.path.parent]
    if images:
        paths, origin = expand_inputs(images), "the command line"
        inputs += [item for item in images if os.path.isdir(item)]
    else:
        paths, run_dir = recorded_validation_images(model, source)
        origin = f"the training run folder {run_dir} (its {CONFIG_NAME})"
        data_root = (read_run_record(run_dir) or {}).get("config", {}).get("data")
        inputs += [run_dir] + ([data_root] if isinstance(data_root, str) and os.path.isdir(data_root) else [])
    if announce is not None:
        announce(paths, origin)
    model_file = find_source(model, source) if (source is not None or model.metadata.source) else None
    if model_file is not None:
        run_folder = model_file if model_file.is_dir() else model_file.parent
        inputs += [model_file] + ([run_folder] if (run_folder / CONFIG_NAME).is_file() else [])
    out = prepare_output_dir(output, [*paths, *inputs])
    with output_dir_lock(out, "tfssim-tune"):
        record, plot = out / "tuning.json", out / "tuning.png"
        if record.exists():  # the record of an earlier tuning: never overwritten
            raise InputError(f"{record} exists (an earlier tuning's record); choose another --output")
        from tfssim import data

        first = data.read_image(paths[0], model.channels)
        keras_source = load_source(model, source, check_image=first)
        del first
        result = tune(model, paths, sources=[str(p) for p in paths], progress=progress, cache_dir=out,
                      source_model=keras_source.model, **tune_kwargs)
        # The figure before the version (a plotting failure publishes nothing), in place after it.
        hidden = out / f".tuning.{os.getpid()}.png"
        try:
            plots.plot_tuning(result, hidden)
            new_version = write_tuned_export(model, result, keras_source)
            atomic_write_json(record, {**result.as_dict(), "validation_images": [str(p) for p in paths],
                                       "validation_images_from": origin, "new_version": str(new_version)})
            os.replace(hidden, plot)
        finally:
            hidden.unlink(missing_ok=True)
    return TuneRun(result, new_version, record, plot, list(paths), origin)
