"""Choosing the map smoothing (``map_sigma``) without looking at the test set.

The paper sets only the threshold from defect-free validation images; a smoothing of the anomaly
map (``tfssim-export --map-sigma``, not in the paper) is one more setting, and choosing it by the
test set's ROC AUC makes that AUC optimistic. :func:`choose_map_sigma` chooses it on the
validation images instead: it paints synthetic defects with exact masks into copies of them
(:func:`tfssim.data.add_defects`: scratches, flattened blobs, specks), scores each copy with an
export made without smoothing, and picks the sigma whose smoothed maps give the highest pixel
ROC AUC on those masks. The synthetic defects are a proxy for the real ones: the choice is only
as good as their likeness in size and contrast, so confirm it where labelled defects exist.

Example:
    >>> model = ExportedModel.load("exported_models/nanotwice/1")      # exported with map_sigma 0
    >>> choice = choose_map_sigma(model, validation_images, sigmas=(0, 4, 8, 12))
    >>> choice.best_sigma, choice.aurocs
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from tfssim import metrics
from tfssim.data.synthetic import add_defects
from tfssim.evaluation import compute_maps
from tfssim.inference import ExportedModel
from tfssim.scoring import smooth_map, validate_map_sigma

__all__ = ["MapSigmaChoice", "paint_defects", "choose_map_sigma"]

DEFAULT_SIGMAS = (0.0, 2.0, 4.0, 8.0, 12.0, 16.0)


@dataclasses.dataclass
class MapSigmaChoice:
    """Result of :func:`choose_map_sigma`.

    Attributes:
        sigmas: The candidate sigmas, in the order given.
        aurocs: Pixel ROC AUC on the synthetic defects for each sigma.
        best_sigma: The sigma with the highest AUC (the smallest of those within ``tolerance``).
        defect_fraction: Share of the scored pixels that the synthetic defects cover.
        images: How many defective copies were scored.
    """

    sigmas: list[float]
    aurocs: list[float]
    best_sigma: float
    defect_fraction: float
    images: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def paint_defects(image: np.ndarray, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic defects in a copy of ``image`` (``[H, W]`` or ``[H, W, C]`` in [0, 1]).

    Returns the defective copy (same shape, float32) and its boolean ``[H, W]`` mask. Colour
    images get the defects painted into their first channel and copied to the others, so a
    defect is gray.
    """
    image = np.asarray(image, np.float32)
    if image.ndim == 3:
        painted, mask = add_defects(image[..., 0], rng, count=count)
        out = image.copy()
        out[mask] = painted[mask][:, None]
        return out, mask
    if image.ndim != 2:
        raise ValueError(f"image must be [H, W] or [H, W, C], got shape {image.shape}")
    return add_defects(image, rng, count=count)


def choose_map_sigma(
    model: ExportedModel,
    images: Sequence[np.ndarray],
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    *,
    copies: int = 4,
    defects_per_patch: float = 1.0,
    tolerance: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> MapSigmaChoice:
    """Choose the anomaly-map smoothing on synthetic defects in defect-free images.

    Args:
        model: An export made without smoothing (metadata ``map_sigma`` 0).
        images: Defect-free validation images, ``[H, W]`` or ``[H, W, C]`` floats in [0, 1].
        sigmas: Candidate Gaussian sigmas in pixels (0 = no smoothing); each must fit the
            model's patch (:func:`tfssim.scoring.validate_map_sigma`).
        copies: Defective copies painted per image, each with its own random defects.
        defects_per_patch: Defects per patch-sized area of an image (at least one per copy).
        tolerance: Prefer the smallest sigma whose AUC is within this of the best.
        seed: Seed of the defects.
        progress: Show a progress bar.

    Returns:
        A :class:`MapSigmaChoice`.

    Raises:
        ValueError: no images or sigmas, an export already smoothed, a sigma that is invalid or
            does not fit the patch, ``copies < 1`` or ``defects_per_patch <= 0``.
    """
    if len(images) == 0:
        raise ValueError("no validation images: choose_map_sigma needs at least one defect-free image")
    if len(sigmas) == 0:
        raise ValueError("no candidate sigmas given")
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    if not defects_per_patch > 0:
        raise ValueError(f"defects_per_patch must be > 0, got {defects_per_patch}")
    exported_sigma = float(model.metadata.get("map_sigma", 0.0) or 0.0)
    if exported_sigma != 0:
        raise ValueError(
            f"export {model.path} already smooths its maps (map_sigma {exported_sigma:g}); "
            "choose the smoothing on an export made without --map-sigma"
        )
    patch_size = int(model.metadata["patch_size"])
    sigmas = [validate_map_sigma(s, patch_size) for s in sigmas]

    rng = np.random.default_rng(seed)
    painted = []
    for image in images:
        h, w = np.shape(image)[:2]
        count = max(1, int(round(defects_per_patch * h * w / patch_size**2)))
        for _ in range(copies):
            painted.append(paint_defects(image, rng, count))
    raw_maps = compute_maps(model, [defective for defective, _ in painted], "synthetic defects", progress)
    masks = [mask for _, mask in painted]

    aurocs = []
    for sigma in sigmas:
        smoothed = [smooth_map(m, sigma).numpy() for m in raw_maps]
        aurocs.append(metrics.pixel_roc_auc(smoothed, masks))
    best = max(aurocs)
    best_sigma = min(s for s, a in zip(sigmas, aurocs) if a >= best - tolerance)
    covered = sum(int(m.sum()) for m in masks) / sum(m.size for m in masks)
    return MapSigmaChoice(sigmas, [float(a) for a in aurocs], best_sigma, float(covered), len(masks))
