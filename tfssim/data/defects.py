"""Realistic synthetic defects with exact masks, for choosing scoring settings without labelled defects.

Four families, generic rather than shaped to one dataset (the ideas behind CutPaste and DRAEM):

* ``transplant``: an irregular region (thresholded smooth noise, not a disc) filled with texture
  from elsewhere in the same or another defect-free image, rotated, rescaled and re-scaled in
  contrast, its mean matched to the surroundings', with a soft or hard edge;
* ``smear``: the region blurred or median-filtered, so its fine structure is gone while its
  local mean stays (a flattened or smeared area);
* ``foreign``: bright or dark blobs or a cluster of particles, with soft edges, their contrast a
  multiple of the image's local standard deviation (not a fixed gray);
* ``scratch``: a thin (1-3 px) smooth curve or a jagged, branching crack, darker or brighter
  than its surroundings by a multiple of the local standard deviation.

Sizes are equivalent diameters in pixels (``2 * sqrt(area / pi)`` of the region; for a scratch
its length), drawn log-uniformly from a range the caller sets from what must be found. A
transplant or smear keeps the region's mean intensity, so neither is separable by intensity
alone; foreign bodies and scratches are, by their nature, brighter or darker.

Masks are exact: a painted image differs from its source in exactly the pixels of the mask
(pixels a soft edge would change by less than :data:`MIN_CHANGE` are left untouched), and soft
edges lie inside the mask.

Example:
    >>> rng = np.random.default_rng(0)
    >>> painted, mask, info = paint_defects(image, rng, count=2, size_range=(8, 64))
    >>> np.array_equal(np.any(painted != image, axis=-1) if image.ndim == 3 else painted != image, mask)
    True
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from tfssim.errors import InputError

__all__ = ["FAMILIES", "MIN_CHANGE", "default_size_range", "defect_region", "paint_defect", "paint_defects"]

FAMILIES = ("transplant", "smear", "foreign", "scratch")
# A pixel counts as painted when some channel changed by more than this (values in [0, 1]);
# smaller changes (the far tail of a soft edge) are undone so the mask stays exact.
MIN_CHANGE = 1e-3


def default_size_range(patch_size: int) -> tuple[float, float]:
    """Defect sizes (equivalent diameters, pixels) from 1/16 to 1/2 of the patch side (at least 2 px)."""
    return max(2.0, patch_size / 16), max(4.0, patch_size / 2)


def _check_size_range(size_range: Sequence[float]) -> tuple[float, float]:
    if len(size_range) != 2:
        raise InputError(f"defect size range must be (min, max), got {size_range!r}")
    lo, hi = (float(v) for v in size_range)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 1 or hi < lo:
        raise InputError(f"defect size range must satisfy 1 <= min <= max pixels, got {lo:g} {hi:g}")
    return lo, hi


def _as_hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        return image[..., None]
    if image.ndim != 3:
        raise InputError(f"image must be [H, W] or [H, W, C], got shape {image.shape}")
    return image


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian-filtered white noise of unit standard deviation (correlation length ``scale``)."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), max(scale, 0.5), mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def defect_region(rng: np.random.Generator, diameter: float, shape: tuple[int, int]) -> np.ndarray:
    """An irregular blob of about ``diameter`` equivalent diameter, anywhere in an image of ``shape``.

    Thresholded smooth noise under a radial envelope (so the region is one compact, lobed piece,
    not a disc); the largest connected piece is kept. Returns a boolean ``[H, W]`` mask.
    """
    from scipy.ndimage import label

    h, w = shape
    side = int(math.ceil(1.6 * diameter)) + 4
    yy, xx = np.mgrid[:side, :side].astype(np.float64)
    r = np.hypot(yy - (side - 1) / 2, xx - (side - 1) / 2) / (diameter / 2)
    field = 0.6 * _smooth_noise(rng, (side, side), diameter / 5) - 1.5 * r**2
    target = math.pi * diameter**2 / 4
    level = np.quantile(field, 1 - min(target / field.size, 1.0))
    blob = field >= level
    labels, count = label(blob)
    if count > 1:
        sizes = np.bincount(labels.ravel())[1:]
        blob = labels == 1 + int(np.argmax(sizes))
    region = np.zeros((h, w), bool)
    # The box's top-left corner; the box may hang over the border (the blob is cut there).
    y0 = int(rng.integers(-side // 4, max(h - 3 * side // 4, -side // 4 + 1)))
    x0 = int(rng.integers(-side // 4, max(w - 3 * side // 4, -side // 4 + 1)))
    ys, xs = slice(max(y0, 0), min(y0 + side, h)), slice(max(x0, 0), min(x0 + side, w))
    region[ys, xs] = blob[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    if not region.any():  # cut away entirely: centre it instead
        cy, cx = (h - side) // 2, (w - side) // 2
        ys, xs = slice(max(cy, 0), min(cy + side, h)), slice(max(cx, 0), min(cx + side, w))
        region[ys, xs] = blob[ys.start - cy : ys.stop - cy, xs.start - cx : xs.stop - cx]
    return region


def _soft_alpha(region: np.ndarray, rng: np.random.Generator, soft: bool, diameter: float) -> np.ndarray:
    """Blending weight: 1 inside, falling to 0 towards the border for a soft edge, never outside ``region``."""
    if not soft:
        return region.astype(np.float32)
    from scipy.ndimage import distance_transform_edt

    width = float(rng.uniform(1.0, max(1.5, diameter / 6)))
    alpha = np.clip(distance_transform_edt(region) / width, 0, 1)
    return (alpha * region).astype(np.float32)


def _local_stats(image: np.ndarray, region: np.ndarray, margin: float) -> tuple[np.ndarray, float]:
    """Per-channel mean and the pooled standard deviation of the image around ``region``."""
    from scipy.ndimage import binary_dilation

    ring = binary_dilation(region, iterations=max(1, int(margin)))
    pixels = image[ring]
    return pixels.mean(axis=0), float(pixels.std()) + 1e-3


def _transplant(image: np.ndarray, rng: np.random.Generator, region: np.ndarray, diameter: float,
                sources: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from scipy.ndimage import rotate, zoom

    h, w, c = image.shape
    pool = [s for s in sources if s.shape[-1] == c] or [image]
    source = pool[int(rng.integers(len(pool)))]
    rows, cols = np.nonzero(region)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    bh, bw = r1 - r0, c1 - c0
    # Never a plain copy of good texture: rescale by at least a third or rotate by at least 30 degrees.
    scale = float(np.exp(rng.uniform(np.log(1.33), np.log(2.0))) ** rng.choice([-1, 1]))
    angle = float(rng.uniform(30, 150)) * float(rng.choice([-1, 1])) if rng.random() < 0.7 else 0.0
    need = int(math.ceil(max(bh, bw) * 1.5 / scale)) + 2  # a rotated box needs sqrt(2) more
    sh, sw = source.shape[:2]
    need = min(need, sh, sw)
    sy, sx = int(rng.integers(0, sh - need + 1)), int(rng.integers(0, sw - need + 1))
    piece = source[sy : sy + need, sx : sx + need]
    if angle:
        piece = rotate(piece, angle, axes=(0, 1), reshape=False, order=1, mode="reflect")
    piece = zoom(piece, (scale, scale, 1), order=1, mode="reflect")
    if piece.shape[0] < bh or piece.shape[1] < bw:  # a small source image: tile it
        reps = (math.ceil(bh / piece.shape[0]), math.ceil(bw / piece.shape[1]), 1)
        piece = np.tile(piece, reps)
    oy, ox = (piece.shape[0] - bh) // 2, (piece.shape[1] - bw) // 2
    piece = piece[oy : oy + bh, ox : ox + bw]
    mean, std = _local_stats(image, region, diameter / 4)
    inside = region[r0:r1, c0:c1]
    pmean = piece[inside].mean(axis=0)
    gain = float(rng.uniform(0.7, 1.4))
    # The region's mean matches its surroundings' (up to a small shift): not separable by intensity.
    shift = float(rng.uniform(-0.3, 0.3)) * std
    fill = image.copy()  # outside the box alpha is 0; any finite value will do
    fill[r0:r1, c0:c1] = mean + gain * (piece - pmean) + shift
    return fill, region, {"scale": round(scale, 3), "angle": round(angle, 1), "gain": round(gain, 3)}


def _smear(image: np.ndarray, rng: np.random.Generator, region: np.ndarray,
           diameter: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from scipy.ndimage import gaussian_filter, median_filter

    if rng.random() < 0.5:
        sigma = float(rng.uniform(max(1.5, diameter / 8), max(2.0, diameter / 3)))
        margin = int(4 * sigma + 0.5) + 1  # the filter's reach (scipy truncates at 4 sigma)
        filtered = lambda crop: gaussian_filter(crop, (sigma, sigma, 0), mode="reflect")  # noqa: E731
        how = {"filter": "gaussian", "sigma": round(sigma, 2)}
    else:
        size = int(max(3, round(rng.uniform(diameter / 6, diameter / 2)))) | 1
        margin = size // 2 + 1
        filtered = lambda crop: median_filter(crop, size=(size, size, 1), mode="reflect")  # noqa: E731
        how = {"filter": "median", "size": size}
    # Filter only the region's box plus the filter's reach: inside the region that equals
    # filtering the whole image (up to the image border's own mirroring), at a fraction of the cost.
    rows, cols = np.nonzero(region)
    h, w = region.shape
    r0, r1 = max(rows.min() - margin, 0), min(rows.max() + 1 + margin, h)
    c0, c1 = max(cols.min() - margin, 0), min(cols.max() + 1 + margin, w)
    fill = image.copy()
    fill[r0:r1, c0:c1] = filtered(image[r0:r1, c0:c1])
    return fill, region, how


def _foreign(image: np.ndarray, rng: np.random.Generator, diameter: float,
             shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    from scipy.ndimage import gaussian_filter

    h, w = shape
    if rng.random() < 0.6:
        region = defect_region(rng, diameter, shape)
        particles = 1
    else:  # a cluster of particles whose areas add up to the requested size
        particles = int(rng.integers(3, 8))
        small = max(2.0, diameter / math.sqrt(particles))
        centre = defect_region(rng, diameter * 1.5, shape)
        cy, cx = (int(v.mean()) for v in np.nonzero(centre))
        region = np.zeros(shape, bool)
        for _ in range(particles):
            one = defect_region(rng, small * float(rng.uniform(0.6, 1.3)), (2 * h, 2 * w))
            oy, ox = (int(v.mean()) for v in np.nonzero(one))
            dy = cy - oy + int(rng.normal(0, diameter / 3))
            dx = cx - ox + int(rng.normal(0, diameter / 3))
            moved = np.zeros(shape, bool)
            ys, xs = np.nonzero(one)
            ys, xs = ys + dy, xs + dx
            ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
            moved[ys[ok], xs[ok]] = True
            region |= moved
        if not region.any():
            region = centre
    mean, std = _local_stats(image, region, diameter / 4)
    sign = float(rng.choice([-1, 1]))
    contrast = float(rng.uniform(1.5, 4.0))
    value = mean + sign * contrast * std
    opaque = rng.random() < 0.5
    # A body: its own faint texture (opaque) or the surface showing through (a stain).
    texture = 0.3 * std * _smooth_noise(rng, shape, 1.5)[..., None]
    fill = (value + texture) if opaque else (image + sign * contrast * std)
    # Soft edges: a blurred profile, cut at the region so nothing leaks out.
    alpha = np.clip(gaussian_filter(region.astype(np.float32), float(rng.uniform(0.5, 1.5))) * 2, 0, 1) * region
    return np.clip(fill, 0, 1), region, alpha.astype(np.float32), {
        "particles": particles, "contrast_std": round(sign * contrast, 2), "opaque": bool(opaque)}


def _curve(rng: np.random.Generator, length: float, shape: tuple[int, int], jagged: bool) -> list[np.ndarray]:
    """Polyline points (float ``[N, 2]``) of a smooth scratch or a jagged crack with branches."""
    h, w = shape
    start = rng.uniform([0.1 * h, 0.1 * w], [0.9 * h, 0.9 * w])
    heading = rng.uniform(0, 2 * np.pi)
    step = 1.0
    n = max(2, int(length / step))
    turn = 0.35 if jagged else 0.04
    points = [start]
    for _ in range(n):
        heading += rng.normal(0, turn)
        points.append(points[-1] + step * np.array([np.sin(heading), np.cos(heading)]))
    curves = [np.array(points)]
    if jagged:
        for _ in range(int(rng.integers(0, 3))):
            at = curves[0][int(rng.integers(len(points)))]
            branch_heading = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
            branch = [at]
            for _ in range(max(2, int(n * rng.uniform(0.2, 0.5)))):
                branch_heading += rng.normal(0, turn)
                branch.append(branch[-1] + step * np.array([np.sin(branch_heading), np.cos(branch_heading)]))
            curves.append(np.array(branch))
    return curves


def _scratch(image: np.ndarray, rng: np.random.Generator, length: float,
             shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    from scipy.ndimage import distance_transform_edt
    from skimage.draw import line

    h, w = shape
    jagged = bool(rng.random() < 0.5)
    core = np.zeros(shape, bool)
    for points in _curve(rng, length, shape, jagged):
        pts = np.round(points).astype(int)
        for (r0, c0), (r1, c1) in zip(pts, pts[1:]):
            rr, cc = line(r0, c0, r1, c1)
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            core[rr[ok], cc[ok]] = True
    if not core.any():
        core[h // 2, w // 2] = True
    width = float(rng.uniform(1.0, 3.0))
    distance = distance_transform_edt(~core)
    alpha = np.clip(1.0 - distance / (width / 2 + 0.5), 0, 1)  # 1 on the line, fading over a pixel
    region = alpha > 0
    mean, std = _local_stats(image, region, 3)
    sign = float(rng.choice([-1, 1]))
    contrast = float(rng.uniform(1.5, 4.0))
    fill = np.clip(image + sign * contrast * std, 0, 1)
    return fill, region, alpha.astype(np.float32), {
        "jagged": jagged, "width": round(width, 2), "contrast_std": round(sign * contrast, 2)}


def paint_defect(image: np.ndarray, rng: np.random.Generator, family: str, diameter: float, *,
                 sources: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Paint one defect of ``family`` into a copy of ``image``.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` floats in [0, 1].
        rng: The random generator (the only source of randomness).
        family: One of :data:`FAMILIES`.
        diameter: Equivalent diameter in pixels (for ``scratch``: its length).
        sources: Other defect-free images (same channel count) a ``transplant`` may take its
            texture from; the image itself is always a candidate.

    Returns:
        ``(painted, mask, info)``: the painted copy (float32, the shape of ``image``), the
        boolean ``[H, W]`` mask of exactly the pixels that differ from ``image``, and a dict
        describing the defect (family, diameter, its parameters).

    Raises:
        ValueError: an unknown family, a bad image shape or a diameter below 1.

    Example:
        >>> painted, mask, info = paint_defect(image, np.random.default_rng(1), "smear", 24)
    """
    if family not in FAMILIES:
        raise InputError(f"unknown defect family {family!r}; choose from {', '.join(FAMILIES)}")
    if not diameter >= 1:
        raise InputError(f"defect diameter must be >= 1 pixel, got {diameter!r}")
    original = np.asarray(image)
    hwc = _as_hwc(original)
    shape = hwc.shape[:2]
    info: dict[str, Any] = {"family": family, "diameter": round(float(diameter), 2)}
    if family in ("transplant", "smear"):
        region = defect_region(rng, diameter, shape)
        if family == "transplant":
            pool = [image_ for image_ in (_as_hwc(s) for s in sources)] + [hwc]
            fill, region, extra = _transplant(hwc, rng, region, diameter, pool)
        else:
            fill, region, extra = _smear(hwc, rng, region, diameter)
        soft = bool(rng.random() < 0.6)
        alpha = _soft_alpha(region, rng, soft, diameter)
        extra["soft_edge"] = soft
    elif family == "foreign":
        fill, region, alpha, extra = _foreign(hwc, rng, diameter, shape)
    else:
        fill, region, alpha, extra = _scratch(hwc, rng, diameter, shape)
    info.update(extra)
    painted = hwc + alpha[..., None] * (np.clip(fill, 0, 1) - hwc)
    painted, mask = _exact(hwc, painted.astype(np.float32))
    return painted.reshape(original.shape), mask, info


def _exact(original: np.ndarray, painted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undo changes below :data:`MIN_CHANGE`; the mask is then exactly the changed pixels."""
    mask = np.any(np.abs(painted - original) > MIN_CHANGE, axis=-1)
    painted = np.where(mask[..., None], painted, original)
    return painted, mask


def paint_defects(image: np.ndarray, rng: np.random.Generator, count: int = 1, *,
                  size_range: Sequence[float] = (4, 32), families: Sequence[str] = FAMILIES,
                  sources: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Paint ``count`` defects, each of a family and size drawn at random, into a copy of ``image``.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` floats in [0, 1].
        rng: The random generator: the same seed gives the same defects.
        count: Number of defects (they may overlap).
        size_range: ``(min, max)`` equivalent diameter in pixels, drawn log-uniformly
            (:func:`default_size_range` gives 1/16 to 1/2 of a patch side).
        families: The families to draw from, uniformly.
        sources: Other defect-free images for the ``transplant`` family.

    Returns:
        ``(painted, mask, infos)``: the painted copy (float32), the exact boolean ``[H, W]``
        mask of the pixels that differ from ``image``, one dict per defect.

    Raises:
        ValueError: ``count < 1``, a bad size range, an unknown or no family, a bad image shape.
    """
    if count < 1:
        raise InputError(f"count must be >= 1, got {count}")
    lo, hi = _check_size_range(size_range)
    families = list(families)
    if not families:
        raise InputError("no defect families given")
    for family in families:
        if family not in FAMILIES:
            raise InputError(f"unknown defect family {family!r}; choose from {', '.join(FAMILIES)}")
    original = _as_hwc(image)
    painted = original.copy()
    infos = []
    for _ in range(count):
        family = families[int(rng.integers(len(families)))]
        diameter = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        painted, _, info = paint_defect(painted, rng, family, diameter, sources=sources)
        infos.append(info)
    painted, mask = _exact(original, painted)
    return painted.reshape(np.shape(image)), mask, infos
