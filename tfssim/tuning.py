"""Choosing an export's scoring from defect-free images alone (synthetic defects), and writing it as a new version.

A user with a new product has good images and no labelled defects. :func:`tune` paints
realistic synthetic defects with exact masks (:mod:`tfssim.data.defects`: texture transplants,
smeared areas, foreign bodies, scratches and cracks) into copies of the defect-free validation
images, runs the export **once** per image to get its reconstruction (the served
``reconstruction`` output), and scores every candidate setting from (input, reconstruction) in
the library, since the candidates differ only in scoring:

* the anomaly map: for SSIM models the SSIM window (7 / 11 / 15) and its weighting (Gaussian /
  uniform), and for every model the map's Gaussian smoothing sigma (0, 2, 4, 8, 12, 16, those
  that fit the patch). **Objective: pixel ROC AUC on the synthetic masks** - threshold-free, so
  the map is judged before any threshold exists, and it is the paper's headline metric;
* the post-processing (opening diameter, minimum region area), on the chosen map at the
  threshold calibrated on the clean validation images at ``fpr``. **Objective: pooled pixel F1
  of the segmentation** - post-processing acts on the thresholded mask only, so a
  threshold-free score (ROC AUC, AUPRO) cannot tell its candidates apart; F1 at the operating
  threshold is what the user gets.

Near-ties (within ``tolerance``) go to the simpler setting: the smaller sigma, the export's own
window and weighting, the export's own post-processing. The threshold is then calibrated at
``fpr`` on the clean validation images with the chosen settings. :func:`write_tuned_export`
writes a **new version** of the export whose graph serves the chosen map and whose metadata holds
the threshold, the post-processing and a ``tuned`` record; the old version is never touched.

The synthetic defects are a proxy: the choice is as good as their likeness to the real ones
(set ``size_range`` from the sizes that must be found); confirm it where labelled defects exist.

Why one module of about 450 lines: :func:`tune` (the two-stage search, most of it) and
:func:`write_tuned_export` share the :class:`Tuning` record and its candidate grid, and a split
would leave one half that only the other calls.

Example:
    >>> model = ExportedModel.load("exported_models/nanotwice_ssim/1")
    >>> result = tune(model, validation_images, fpr=0.01, copies=4, seed=0)
    >>> result.choice                      # window, weighting, map_sigma, opening, min_area, threshold
    >>> new_version = write_tuned_export(model, result)
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tfssim import metrics, postprocess, resize
from tfssim.data import defects
from tfssim.errors import InputError, input_checks
from tfssim.inference import ExportedModel
from tfssim.ssim_params import WEIGHTINGS, SSIMParams

__all__ = [
    "DEFAULT_WINDOWS", "DEFAULT_WEIGHTINGS", "DEFAULT_SIGMAS", "DEFAULT_OPENINGS", "MIN_AREA_FRACTIONS",
    "MAP_OBJECTIVE", "POST_OBJECTIVE", "Tuning", "paint_copies", "library_map", "tune", "find_source",
    "write_tuned_export",
]

DEFAULT_WINDOWS = (7, 11, 15)
DEFAULT_WEIGHTINGS = WEIGHTINGS  # every weighting SSIMParams knows
DEFAULT_SIGMAS = (0.0, 2.0, 4.0, 8.0, 12.0, 16.0)
DEFAULT_OPENINGS = (0, 2, 4, 8)
# Minimum region areas tried, as shares of the area of the smallest defect size asked for.
MIN_AREA_FRACTIONS = (0.0, 0.25, 0.5, 1.0)
MAP_OBJECTIVE = "pixel ROC AUC of the raw map on the synthetic defect masks (threshold-free; the paper's metric)"
POST_OBJECTIVE = ("pooled pixel F1 of the post-processed segmentation on the synthetic defects at the threshold "
                  "calibrated on the clean validation images (post-processing acts only on the thresholded mask)")


@dataclasses.dataclass
class Tuning:
    """What :func:`tune` measured and chose (``as_dict`` is the content of ``tuning.json``).

    Attributes:
        residual: ``ssim``, ``l2`` or ``vae``.
        map_candidates: One dict per anomaly-map candidate: ``window_size``, ``weighting``
            (``None`` for non-SSIM models), ``map_sigma``, ``pixel_auroc``.
        post_candidates: One dict per post-processing candidate: ``opening_diameter``,
            ``min_area``, ``f1``, ``iou`` (on the chosen map at the calibrated threshold).
        choice: The chosen ``window_size``, ``weighting``, ``map_sigma``, ``opening_diameter``,
            ``min_area``, ``convex_hull``, ``threshold``, ``fpr``, ``val_fpr``.
        synthetic: Scores of the choice on the synthetic defects: ``pixel_auroc``,
            ``aupro_0.3``, ``f1``, ``iou``; and those of the export as it was (``before``).
        settings: seed, copies, defect size range, families, defects per copy, counts.
    """

    residual: str
    map_candidates: list[dict[str, Any]]
    post_candidates: list[dict[str, Any]]
    choice: dict[str, Any]
    synthetic: dict[str, Any]
    settings: dict[str, Any]

    def ssim_params(self, base: SSIMParams | dict[str, Any] | None) -> dict[str, Any] | None:
        """The export's SSIM parameters ``base`` with the chosen window and weighting, as
        :meth:`SSIMParams.to_dict` (None for non-SSIM)."""
        if self.residual != "ssim":
            return None
        return SSIMParams.of(base, window_size=self.choice["window_size"], weighting=self.choice["weighting"]).to_dict()

    def as_dict(self) -> dict[str, Any]:
        return {"objective": {"map": MAP_OBJECTIVE, "post_processing": POST_OBJECTIVE},
                **dataclasses.asdict(self)}


def paint_copies(images: Sequence[np.ndarray], rng: np.random.Generator, copies: int, size_range: Sequence[float],
                 patch_size: int, *, defects_per_patch: float = 1.0,
                 families: Sequence[str] = defects.FAMILIES) -> list[tuple[np.ndarray, np.ndarray, list[dict]]]:
    """``copies`` defective copies of every image (:func:`tfssim.data.defects.paint_defects`).

    Each copy gets ``max(1, round(defects_per_patch * H * W / patch_size**2))`` defects; a
    transplant takes its texture from any of ``images``. Returns ``(painted, mask, infos)`` per copy.
    """
    out = []
    for image in images:
        h, w = np.shape(image)[:2]
        count = max(1, int(round(defects_per_patch * h * w / patch_size**2)))
        for _ in range(copies):
            out.append(defects.paint_defects(image, rng, count, size_range=size_range, families=families,
                                             sources=images))
    return out


def library_map(residual: str, image: np.ndarray, reconstruction: np.ndarray, *,
                ssim_params: dict[str, Any] | None = None, map_sigma: float = 0.0,
                served_map: np.ndarray | None = None) -> np.ndarray:
    """The anomaly map of ``image`` from its reconstruction, as an export with these settings serves it.

    Args:
        residual: ``ssim``, ``l2`` or ``vae``.
        image: ``[H, W]`` or ``[H, W, C]`` input in [0, 1].
        reconstruction: The export's ``reconstruction`` output ``[H, W, C]``.
        ssim_params: SSIM parameters (``ssim`` only).
        map_sigma: Gaussian smoothing of the map (:func:`tfssim.scoring.smooth_map`).
        served_map: For ``vae``, the export's unsmoothed ``anomaly_map`` (its posterior samples
            are not in the reconstruction, so the map cannot be recomputed from it).

    Returns:
        The ``[H, W]`` float32 map.
    """
    from tfssim import scoring

    reconstruction = np.asarray(reconstruction, np.float32)
    image = np.asarray(image, np.float32).reshape(reconstruction.shape)
    if residual == "ssim":
        raw = scoring.ssim_residual_maps(image, reconstruction, **(ssim_params or {}))["anomaly_map"]
    elif residual == "l2":
        raw = scoring.l2_residual_map(image, reconstruction)
    elif residual == "vae":
        if served_map is None:
            raise InputError("a VAE's map needs the export's served anomaly_map")
        raw = served_map
    else:
        raise InputError(f"unknown residual {residual!r}; expected one of ssim, l2, vae")
    return np.asarray(scoring.smooth_map(raw, map_sigma), np.float32)


def _progress(iterable: Sequence[Any], desc: str, enabled: bool) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="img", leave=False)


def _smooth_all(maps: list[np.ndarray], sigma: float) -> list[np.ndarray]:
    """:func:`tfssim.scoring.smooth_map` of every map, one batched call per map shape.

    Eagerly, each call of the shifted-slice blur is a few hundred small TensorFlow ops (about
    0.3 s on a busy CPU whatever the batch): one call for all maps of a shape, rather than one per
    map, takes the candidate sweep from minutes to seconds (tracing a ``tf.function`` per sigma
    cost more than it saved).
    """
    from tfssim import scoring

    if sigma == 0:
        return maps
    out: list[np.ndarray | None] = [None] * len(maps)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(maps):
        shapes.setdefault(np.shape(m), []).append(i)
    for indices in shapes.values():
        smoothed = scoring.smooth_map(np.stack([maps[i] for i in indices]).astype(np.float32), sigma).numpy()
        for i, m in zip(indices, smoothed):
            out[i] = m
    return out  # type: ignore[return-value]


def _pick(candidates: list[dict[str, Any]], score: str, tolerance: float, preference: Any) -> dict[str, Any]:
    """The candidate with the best ``score``; among those within ``tolerance`` of it, the one
    ``preference`` (a sort key, smaller = simpler) ranks first."""
    best = max(c[score] for c in candidates)
    near = [c for c in candidates if c[score] >= best - tolerance]
    return min(near, key=preference)


def tune(
    model: ExportedModel,
    images: Sequence[np.ndarray],
    *,
    size_range: Sequence[float] | None = None,
    fpr: float = 0.01,
    copies: int = 4,
    seed: int = 0,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    weightings: Sequence[str] = DEFAULT_WEIGHTINGS,
    sigmas: Sequence[float] | None = None,
    openings: Sequence[int] = DEFAULT_OPENINGS,
    min_areas: Sequence[int] | None = None,
    defects_per_patch: float = 1.0,
    families: Sequence[str] = defects.FAMILIES,
    tolerance: float = 0.001,
    progress: bool = True,
    sources: Sequence[Any] | None = None,
) -> Tuning:
    """Choose the anomaly-map settings, post-processing and threshold of an export from defect-free images.

    Args:
        model: A loaded export (any map smoothing: maps are recomputed from its reconstruction;
            a VAE export must serve unsmoothed maps). An export that resizes its requests
            (``scale`` / ``image_size``) scores at the resized size, so its own served map is
            the one map candidate (the SSIM window and weighting are not tuned; only the
            smoothing, post-processing and threshold) and it must serve unsmoothed maps.
        images: Defect-free validation images, ``[H, W]`` or ``[H, W, C]`` floats in [0, 1].
        size_range: ``(min, max)`` defect size (equivalent diameter, pixels); default 1/16
            to 1/2 of the patch side (:func:`tfssim.data.defects.default_size_range`).
        fpr: Pixel false-positive rate of the threshold on the clean images.
        copies: Defective copies painted per image.
        seed: Seed of the synthetic defects (the same seed gives the same choice).
        windows, weightings: SSIM candidates (SSIM models only); windows larger than the
            patch are dropped.
        sigmas: Map smoothing candidates; default :data:`DEFAULT_SIGMAS` that fit the patch
            (:func:`tfssim.scoring.validate_map_sigma`); given ones must fit.
        openings: Opening diameters tried (0 = none).
        min_areas: Minimum region areas tried; default :data:`MIN_AREA_FRACTIONS` of the
            smallest defect size's area.
        defects_per_patch: Defects per patch-sized area of an image (at least one per copy).
        families: Defect families (:data:`tfssim.data.defects.FAMILIES`).
        tolerance: A candidate within this of the best score counts as tied (the synthetic
            estimate is noisy at that level); ties go to the simpler setting.
        progress: Show progress bars.
        sources: Names of the images (e.g. their paths) for error messages.

    Returns:
        A :class:`Tuning`.

    Raises:
        ValueError: no images, ``copies < 1``, a bad size range, fpr, sigma, window or
            post-processing candidate, or a VAE export that smooths its maps.
    """
    from tfssim import scoring
    from tfssim.ssim import validate_window

    started = time.perf_counter()
    if len(images) == 0:
        raise InputError("no validation images: tuning needs at least one defect-free image")
    if copies < 1:
        raise InputError(f"copies must be >= 1, got {copies}")
    if not 0 < fpr < 1:
        raise InputError(f"false-positive rate must be between 0 and 1 (exclusive), got {fpr}")
    md = model.metadata
    residual = md.get("residual") or scoring.residual_of(md["kind"])
    patch_size = int(md["patch_size"])
    exported_sigma = float(md.get("map_sigma") or 0.0)
    if residual == "vae" and exported_sigma:
        raise InputError(f"VAE export {model.path} already smooths its maps (map_sigma {exported_sigma:g}); "
                         "tune an export made without --map-sigma")
    # An export that resizes requests scores them at the resized size: its maps cannot be
    # recomputed from the full-size input and reconstruction, so (as for the VAE) the served map
    # is the one candidate map, smoothed by each sigma.
    resized = not resize.is_identity(md.get("scale", 1.0), md.get("image_size"))
    if resized and exported_sigma:
        raise InputError(f"export {model.path} resizes its requests and already smooths its maps (map_sigma "
                         f"{exported_sigma:g}); tune an export made without --map-sigma")
    smallest = resize.min_input_size(patch_size, md.get("scale", 1.0), md.get("image_size"))
    size_range = defects._check_size_range(size_range or defects.default_size_range(patch_size))
    if sigmas is None:
        sigmas = [s for s in DEFAULT_SIGMAS if scoring.smoothing_radius(s) < patch_size]
    with input_checks():  # tfssim.scoring / tfssim.ssim check the candidates with ValueError
        sigmas = sorted({scoring.validate_map_sigma(float(s), patch_size) for s in sigmas})
    if not sigmas:
        raise InputError("no candidate map sigmas given")
    base_ssim = dict(md.get("ssim") or {})
    if residual == "ssim" and resized:
        own = (base_ssim.get("window_size", 11), base_ssim.get("weighting", "gaussian"))
        scorings = [own]
    elif residual == "ssim":
        with input_checks():
            for w in windows:
                validate_window(w, base_ssim.get("sigma", 1.5), "gaussian")
            for weighting in weightings:
                validate_window(3, 1.5, weighting)
        own = (base_ssim.get("window_size", 11), base_ssim.get("weighting", "gaussian"))
        scorings = sorted({(int(w), str(g)) for w in windows for g in weightings if w <= patch_size} | {own})
    else:
        own = (None, None)
        scorings = [own]
    if any(isinstance(d, bool) or int(d) != d or d < 0 for d in openings) or not openings:
        raise InputError(f"opening diameters must be integers >= 0, got {list(openings)}")
    smallest_area = math.pi * size_range[0] ** 2 / 4
    if min_areas is None:
        min_areas = sorted({int(round(f * smallest_area)) for f in MIN_AREA_FRACTIONS})
    if any(isinstance(a, bool) or int(a) != a or a < 0 for a in min_areas) or not min_areas:
        raise InputError(f"minimum areas must be integers >= 0, got {list(min_areas)}")

    images = [np.asarray(im, np.float32) for im in images]
    names = list(sources) if sources is not None else [f"validation image {i}" for i in range(len(images))]
    for name, image in zip(names, images):
        if image.ndim not in (2, 3) or min(image.shape[:2]) < smallest:
            what = f"{patch_size}-pixel patch" if smallest == patch_size else \
                f"smallest input ({smallest} pixels: its {patch_size}-pixel patch once resized)"
            raise InputError(f"{name}: image of shape {image.shape} is smaller than the export's {what} "
                             "(or not [H, W] / [H, W, C]); tune on images at least one patch high and wide")
    rng = np.random.default_rng(seed)
    painted = paint_copies(images, rng, copies, size_range, patch_size, defects_per_patch=defects_per_patch,
                           families=families)
    masks = [mask for _, mask, _ in painted]
    inputs = [p for p, _, _ in painted] + images  # every image through the export once
    served = []
    copy_names = [f"synthetic copy {k} of {name}" for name in names for k in range(copies)]
    for image, source in _progress(list(zip(inputs, copy_names + names)), "tune: reconstructions", progress):
        out = model.predict(image, source=source)
        served.append((out["reconstruction"], out["anomaly_map"]))
    n = len(painted)

    def maps_of(window: int | None, weighting: str | None, sigma: float, which: slice) -> list[np.ndarray]:
        if resized:
            return _smooth_all([np.asarray(m, np.float32) for _, m in served[which]], sigma)
        params = {**base_ssim, "window_size": window, "weighting": weighting} if residual == "ssim" else None
        raw = [library_map(residual, x, recon, ssim_params=params, served_map=m)
               for x, (recon, m) in zip(inputs[which], served[which])]
        return _smooth_all(raw, sigma)

    # Raw maps of every scoring first, then each sigma smooths all of them in one batched call.
    raw = [maps_of(window, weighting, 0.0, slice(0, n))
           for window, weighting in _progress(scorings, "tune: map candidates", progress)]
    flat = [m for maps in raw for m in maps]
    scores: dict[tuple, float] = {}
    for sigma in sigmas:
        smoothed = _smooth_all(flat, sigma)
        for k, (window, weighting) in enumerate(scorings):
            scores[window, weighting, sigma] = float(metrics.pixel_roc_auc(smoothed[k * n:(k + 1) * n], masks))
    map_candidates = [{"window_size": window, "weighting": weighting, "map_sigma": sigma,
                       "pixel_auroc": scores[window, weighting, sigma]}
                      for window, weighting in scorings for sigma in sigmas]
    current = next(c for c in map_candidates
                   if (c["window_size"], c["weighting"]) == own and c["map_sigma"] == exported_sigma) \
        if exported_sigma in sigmas else None
    chosen_map = _pick(map_candidates, "pixel_auroc", tolerance,
                       lambda c: (c["map_sigma"], (c["window_size"], c["weighting"]) != own,
                                  map_candidates.index(c)))
    window, weighting, sigma = chosen_map["window_size"], chosen_map["weighting"], chosen_map["map_sigma"]
    defect_maps = maps_of(window, weighting, sigma, slice(0, n))
    clean_maps = maps_of(window, weighting, sigma, slice(n, None))
    threshold = postprocess.threshold_at_fpr(clean_maps, fpr)
    val_fpr = sum(int(np.count_nonzero(m > threshold)) for m in clean_maps) / sum(m.size for m in clean_maps)

    convex_hull = bool(md.get("convex_hull", True))
    own_post = (int(md.get("opening_diameter", 4) or 0), int(md.get("min_area", 0) or 0))
    post_candidates = []
    for opening in openings:
        for min_area in min_areas:
            segs = [postprocess.segment(m, threshold, opening_diameter=int(opening), convex_hull=convex_hull,
                                        min_area=int(min_area)) for m in defect_maps]
            f1, iou = metrics.f1_iou(segs, masks)
            post_candidates.append({"opening_diameter": int(opening), "min_area": int(min_area),
                                    "f1": float(f1), "iou": float(iou)})
    chosen_post = _pick(post_candidates, "f1", tolerance,
                        lambda c: ((c["opening_diameter"], c["min_area"]) != own_post, post_candidates.index(c)))

    choice = {"window_size": window, "weighting": weighting, "map_sigma": sigma,
              "opening_diameter": chosen_post["opening_diameter"], "min_area": chosen_post["min_area"],
              "convex_hull": convex_hull, "threshold": float(threshold), "fpr": float(fpr), "val_fpr": float(val_fpr)}
    synthetic = {"pixel_auroc": chosen_map["pixel_auroc"], "aupro_0.3": float(metrics.aupro(defect_maps, masks)),
                 "f1": chosen_post["f1"], "iou": chosen_post["iou"],
                 "before": {"window_size": own[0], "weighting": own[1], "map_sigma": exported_sigma,
                            "pixel_auroc": None if current is None else current["pixel_auroc"]}}
    family_counts: dict[str, int] = {}
    for _, _, infos in painted:
        for info in infos:
            family_counts[info["family"]] = family_counts.get(info["family"], 0) + 1
    settings = {
        "seed": int(seed), "copies": int(copies), "defect_size": [float(size_range[0]), float(size_range[1])],
        "families": list(families), "defects_per_patch": float(defects_per_patch), "tolerance": float(tolerance),
        "validation_images": len(images), "defective_copies": n, "defects": family_counts,
        "defect_fraction": float(sum(int(m.sum()) for m in masks) / sum(m.size for m in masks)),
        "export": str(model.path), "seconds": round(time.perf_counter() - started, 2),
    }
    return Tuning(residual, map_candidates, post_candidates, choice, synthetic, settings)


def find_source(model: ExportedModel, source: str | os.PathLike | None = None) -> Path:
    """The run folder or ``.keras`` file to re-export ``model`` from: ``source``, else the one its
    metadata records (``source``, written by :func:`tfssim.export.export_model`).

    Raises:
        ValueError: none recorded or given, or it does not exist (the message says what to pass).
    """
    source = source if source is not None else model.metadata.get("source")
    if source is None:
        raise InputError(f"export {model.path} does not record the Keras model it was made from (metadata 'source'); "
                         "give the run folder or .keras file of that model (tfssim-tune --model)")
    if not Path(source).exists():
        raise InputError(f"the Keras model of export {model.path} ({source}) no longer exists; "
                         "give the run folder or .keras file of that model (tfssim-tune --model)")
    return Path(source)


def write_tuned_export(model: ExportedModel, tuning: Tuning, source: str | os.PathLike | None = None, *,
                       check_image: np.ndarray | None = None) -> Path:
    """Write the tuned settings as a **new version** beside ``model`` (the old one is not touched).

    A SavedModel's graph cannot be re-scored without the Keras model behind it, so the new
    version is re-exported from the model the export records as its ``source`` (the run's
    ``.keras`` file; ``source`` overrides it) with the export's own stride, chunk size and
    kind, the chosen SSIM window / weighting and map sigma in its graph, and in its metadata the
    threshold (and its FPR), the post-processing and a ``tuned`` record. The version number is
    the next free one, moved into place without ever replacing anything
    (:func:`tfssim.export.export_model`).

    Args:
        model: The export that was tuned.
        tuning: The result of :func:`tune` on it.
        source: A run folder or ``.keras`` file of the same model, when the export records none
            (exported from an in-memory Keras model) or it has moved.
        check_image: An image whose reconstruction by the Keras model must equal the export's
            (default: none checked); catches a source overwritten since the export, e.g. by a
            resumed training run.

    Returns:
        The new version folder.

    Raises:
        ValueError: no source model known or it does not exist, or its reconstruction differs
            from the export's.
    """
    from tfssim import export as export_lib
    from tfssim import scoring

    md = model.metadata
    source = find_source(model, source)
    keras_model, info = export_lib.load_for_export(source)
    vae_samples = md.get("vae_samples")
    if check_image is not None:
        want = model.predict(check_image)["reconstruction"]
        image = np.asarray(check_image, np.float32).reshape(want.shape)
        have = scoring.anomaly_maps(keras_model, image, md["kind"], int(md["patch_size"]), int(md["stride"]),
                                    chunk_size=int(md.get("chunk_size") or 64), ssim_kwargs=md.get("ssim"),
                                    vae_samples=vae_samples, vae_seed=int(md.get("vae_seed") or 0),
                                    scale=md.get("scale", 1.0), image_size=md.get("image_size"))["reconstruction"]
        diff = float(np.max(np.abs(np.asarray(have) - want)))
        if diff > 1e-4:
            raise InputError(f"the model in {source} is not the one exported as {model.path} (reconstructions differ "
                             f"by up to {diff:.3g}); give the run folder or .keras file it was exported from")
    choice = tuning.choice
    tuned = {
        "by": "tfssim.tuning", "from_version": md.get("version"), "from_path": str(model.path),
        "objective": {"map": MAP_OBJECTIVE, "post_processing": POST_OBJECTIVE},
        "synthetic": tuning.synthetic, "settings": {k: v for k, v in tuning.settings.items() if k != "seconds"},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return export_lib.export_model(
        keras_model, output_root=model.path.parent.parent, name=model.path.parent.name, stride=int(md["stride"]),
        kind=md["kind"], ssim_kwargs=tuning.ssim_params(md.get("ssim")), chunk_size=int(md.get("chunk_size") or 64),
        training_config=md.get("training_config"), threshold=choice["threshold"], vae_samples=vae_samples,
        jit_compile=bool(md.get("jit_compile", False)), map_sigma=choice["map_sigma"],
        scale=md.get("scale", 1.0), image_size=md.get("image_size"),
        extra_metadata={"threshold_fpr": choice["fpr"], "opening_diameter": choice["opening_diameter"],
                        "min_area": choice["min_area"], "convex_hull": choice["convex_hull"],
                        "source": info.get("model_path", str(source)), "tuned": tuned},
    )
