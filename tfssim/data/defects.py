"""Realistic synthetic defects with exact masks, for choosing scoring settings without labelled defects.

This is the tuner's painter (:mod:`tfssim.evaluation.tuning` paints validation images with it).
The built-in datasets' test defects come from a second, simpler one on purpose
(:func:`tfssim.data.synthetic.add_defects`: scratches, flattened blobs, specks), so that no test
set is drawn by the generator the tuner chooses its settings on.

Six families, generic rather than shaped to one dataset (the first four are the ideas behind
CutPaste and DRAEM; the last two are defects that are not local structure):

* ``transplant``: an irregular region (thresholded smooth noise, not a disc) filled with texture
  from elsewhere in the same or another defect-free image, rotated, rescaled and re-scaled in
  contrast, its mean matched to the surroundings', with a soft or hard edge;
* ``smear``: the region blurred or median-filtered, so its fine structure is gone while its
  local mean stays (a flattened or smeared area);
* ``foreign``: bright or dark blobs or a cluster of particles, with soft edges, their contrast a
  multiple of the image's local standard deviation (not a fixed gray);
* ``scratch``: a thin (1-3 px) smooth curve or a jagged, branching crack, darker or brighter
  than its surroundings by a multiple of the local standard deviation;
* ``shading``: a large region (2-4 times the drawn size: up to two patches wide at the default
  sizes) a few percent of the intensity range brighter or darker, fading in smoothly and tilted
  across it - an uneven surface or a discoloration, with no new structure;
* ``missing``: a region cut by the image border, filled with one flat value taken from the
  image's own dark or bright levels - material missing at a part's edge.

Sizes are equivalent diameters in pixels (``2 * sqrt(area / pi)`` of the region; for a scratch
its length), drawn log-uniformly from a range the caller sets from what must be found. A
transplant or smear keeps the region's mean intensity, so neither is separable by intensity
alone; foreign bodies and scratches are, by their nature, brighter or darker.

Masks are exact: a painted image differs from its source in exactly the pixels of the mask
(pixels a soft edge would change by less than :data:`MIN_CHANGE` are left untouched), and soft
edges lie inside the mask.

Each defect's info dict records where it went: ``"box"`` ``[r0, r1, c0, c1]`` (ints, ends
exclusive), the tight bounding box of the pixels that defect changed, and ``"region"``, the
boolean ``[r1 - r0, c1 - c0]`` crop of those pixels, so a caller can tell which defect a pixel
belongs to. ``region`` is a NumPy array, not JSON: drop it before writing infos to JSON. When
:func:`paint_defects` paints several defects, a later one may repaint pixels of an earlier one;
each region is kept as that defect painted it, so intersect it with the final mask to know what
is still visible. A defect that changed nothing (a smear of a flat area) has an empty region
and a zero-sized box.

Painting is local to each defect: every per-defect step works on the defect's bounding box plus
the margin that step needs (a one-pixel ring for a distance transform, the dilation's reach for
the surroundings' statistics, four standard deviations for a blur), clipped to the image, so the
cost grows with the defects' sizes, not the image's.

Example:
    >>> rng = np.random.default_rng(0)
    >>> painted, mask, info = paint_defects(image, rng, count=2, size_range=(8, 64))
    >>> np.array_equal(np.any(painted != image, axis=-1) if image.ndim == 3 else painted != image, mask)
    True
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from tfssim.errors import InputError

__all__ = ["FAMILIES", "LOCAL_FAMILIES", "LARGE_FAMILIES", "MIN_CHANGE", "default_size_range", "defect_region", "paint_defect", "paint_defects"]

FAMILIES = ("transplant", "smear", "foreign", "scratch", "shading", "missing")
# The families of local structure (what an SSIM map sees); tfssim-tune paints these by default.
LOCAL_FAMILIES = FAMILIES[:4]
# Families of large defects: :func:`paint_defects` paints them this many times the size it draws
# (at most the image's shorter side), so that the default sizes - those of local defects, up to
# half a patch - also give shading up to two patches wide and missing areas of a patch.
LARGE_FAMILIES = {"shading": 4.0, "missing": 2.0}
# A pixel counts as painted when some channel changed by more than this (values in [0, 1]);
# smaller changes (the far tail of a soft edge) are undone so the mask stays exact.
MIN_CHANGE = 1e-3
# SciPy's Gaussian filters reach int(_TRUNCATE * sigma + 0.5) pixels (their default truncation).
_TRUNCATE = 4.0


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


def _channels(image: np.ndarray) -> int:
    """The channel count of an ``[H, W]`` or ``[H, W, C]`` image, without converting it."""
    shape = np.shape(image)
    if len(shape) not in (2, 3):
        raise InputError(f"image must be [H, W] or [H, W, C], got shape {tuple(shape)}")
    return 1 if len(shape) == 2 else int(shape[2])


# --------------------------------------------------------------------------------------------
# Regions as boxes: a boolean crop and where it lies in the image


class _Box(NamedTuple):
    """A boolean crop ``mask`` whose top-left pixel is ``(r0, c0)`` of the image."""

    mask: np.ndarray
    r0: int
    c0: int

    @property
    def r1(self) -> int:
        return self.r0 + self.mask.shape[0]

    @property
    def c1(self) -> int:
        return self.c0 + self.mask.shape[1]

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.r0, self.r1), slice(self.c0, self.c1)

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        """The region as a boolean mask of the whole ``shape``."""
        out = np.zeros(shape, bool)
        out[self.slices] = self.mask
        return out


def _tight(mask: np.ndarray, r0: int, c0: int) -> _Box:
    """The crop ``mask`` (top-left at ``(r0, c0)``) cut to the bounding box of its pixels (empty: 0 x 0)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return _Box(np.zeros((0, 0), bool), int(r0), int(c0))
    a, b, c, d = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return _Box(mask[a:b, c:d], int(r0) + a, int(c0) + c)


def _grown(box: _Box, margin: int, shape: tuple[int, int]) -> _Box:
    """``box`` with ``margin`` more pixels on every side, clipped to an image of ``shape`` (never padded past it)."""
    h, w = shape
    r0, r1 = max(box.r0 - margin, 0), min(box.r1 + margin, h)
    c0, c1 = max(box.c0 - margin, 0), min(box.c1 + margin, w)
    mask = np.zeros((r1 - r0, c1 - c0), bool)
    mask[box.r0 - r0 : box.r1 - r0, box.c0 - c0 : box.c1 - c0] = box.mask
    return _Box(mask, r0, c0)


def _inner(values: np.ndarray, outer: _Box, box: _Box) -> np.ndarray:
    """The part of ``values`` (laid out over ``outer``) that lies over ``box`` (inside ``outer``)."""
    return values[box.r0 - outer.r0 : box.r1 - outer.r0, box.c0 - outer.c0 : box.c1 - outer.c0]


def _distance_inside(box: _Box, shape: tuple[int, int]) -> np.ndarray:
    """``distance_transform_edt`` of the region over the whole image, over ``box`` only.

    A one-pixel ring suffices: a region pixel's nearest background pixel, moved onto the ring,
    stays background and gets no farther. Where the image border cuts the ring off, the nearest
    background cannot lie beyond it either, so the values equal the full-image transform's.
    """
    from scipy.ndimage import distance_transform_edt

    ring = _grown(box, 1, shape)
    return _inner(distance_transform_edt(ring.mask), ring, box)


def _distance_around(box: _Box, reach: int, shape: tuple[int, int]) -> tuple[np.ndarray, _Box]:
    """``distance_transform_edt`` of the image outside the region (distance to the region), over
    ``box`` grown by ``reach``; returns the distances and the grown box. Exact: every region pixel
    lies in the grown box, so each pixel's nearest one is found there."""
    from scipy.ndimage import distance_transform_edt

    around = _grown(box, reach, shape)
    return distance_transform_edt(~around.mask), around


def _dilated(box: _Box, iterations: int, shape: tuple[int, int]) -> _Box:
    """``binary_dilation(region, iterations=iterations)`` (the default cross) over the image, as a box.

    The dilation reaches ``iterations`` pixels, so growing the box by that much (clipped to the
    image, whose border the full-image dilation does not cross either) gives the same pixels.
    """
    from scipy.ndimage import binary_dilation

    grown = _grown(box, iterations, shape)
    return _Box(binary_dilation(grown.mask, iterations=iterations), grown.r0, grown.c0)


def _blurred(box: _Box, sigma: float, shape: tuple[int, int]) -> np.ndarray:
    """``gaussian_filter(region.astype(float32), sigma)`` of the whole image, over ``box`` only.

    The filter reaches ``int(4 * sigma + 0.5)`` pixels; with that margin (clipped to the image,
    where both mirror at the same border) every value over the box is the full-image one.
    """
    from scipy.ndimage import gaussian_filter

    grown = _grown(box, int(_TRUNCATE * sigma + 0.5) + 1, shape)
    return _inner(gaussian_filter(grown.mask.astype(np.float32), sigma, truncate=_TRUNCATE), grown, box)


# --------------------------------------------------------------------------------------------
# Noise and regions


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian-filtered white noise of unit standard deviation (correlation length ``scale``)."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), max(scale, 0.5), mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _stationary_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """A ``shape`` window of an endless field of Gaussian-filtered white noise, unit standard deviation.

    Unlike :func:`_smooth_noise`, the window is not normalized by its own mean and spread (which
    would distort a small window): the noise is drawn with the filter's reach around it and
    divided by the filtered field's exact standard deviation, so any window, however small, has
    the statistics of a window of a large field.
    """
    from scipy.ndimage import gaussian_filter

    sigma = max(scale, 0.5)
    reach = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-reach, reach + 1)
    kernel = np.exp(-0.5 * x**2 / sigma**2)
    kernel /= kernel.sum()
    # Unit white noise through the separable kernel k (x) k has variance (sum k^2)^2.
    std = float(np.sum(kernel**2))
    h, w = shape
    field = gaussian_filter(rng.standard_normal((h + 2 * reach, w + 2 * reach)), sigma, truncate=_TRUNCATE)
    return field[reach : reach + h, reach : reach + w] / std


def _region_box(rng: np.random.Generator, diameter: float, shape: tuple[int, int], at_edge: bool = False) -> _Box:
    """:func:`defect_region` as a tight box (the same draws, the same pixels). ``at_edge``: the
    blob's centre lies on a random image edge, so the region is cut by the border (material
    missing at a part's edge)."""
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
    # The box's top-left corner; the box may hang over the border (the blob is cut there).
    y0 = int(rng.integers(-side // 4, max(h - 3 * side // 4, -side // 4 + 1)))
    x0 = int(rng.integers(-side // 4, max(w - 3 * side // 4, -side // 4 + 1)))
    if at_edge:  # the centre on the top, bottom, left or right edge
        edge = int(rng.integers(4))
        if edge < 2:
            y0 = -side // 2 if edge == 0 else h - side // 2
        else:
            x0 = -side // 2 if edge == 2 else w - side // 2
    for top, left in ((y0, x0), ((h - side) // 2, (w - side) // 2)):  # cut away entirely: centre it instead
        r0, r1, c0, c1 = max(top, 0), min(top + side, h), max(left, 0), min(left + side, w)
        box = _tight(blob[r0 - top : max(r1, r0) - top, c0 - left : max(c1, c0) - left], r0, c0)
        if box.mask.size:
            break
    return box


def defect_region(rng: np.random.Generator, diameter: float, shape: tuple[int, int]) -> np.ndarray:
    """An irregular blob of about ``diameter`` equivalent diameter, anywhere in an image of ``shape``.

    Thresholded smooth noise under a radial envelope (so the region is one compact, lobed piece,
    not a disc); the largest connected piece is kept. Returns a boolean ``[H, W]`` mask.
    """
    return _region_box(rng, diameter, shape).full(shape)


def _soft_alpha(region: _Box, rng: np.random.Generator, soft: bool, diameter: float,
                shape: tuple[int, int]) -> np.ndarray:
    """Blending weight over the region's box: 1 inside, falling to 0 towards the border for a
    soft edge, never outside the region."""
    if not soft:
        return region.mask.astype(np.float32)
    width = float(rng.uniform(1.0, max(1.5, diameter / 6)))
    alpha = np.clip(_distance_inside(region, shape) / width, 0, 1)
    return (alpha * region.mask).astype(np.float32)


def _local_stats(image: np.ndarray, region: _Box, margin: float) -> tuple[np.ndarray, float]:
    """Per-channel mean and the pooled standard deviation of the image around ``region``."""
    ring = _dilated(region, max(1, int(margin)), image.shape[:2])
    pixels = image[ring.slices][ring.mask]
    return pixels.mean(axis=0), float(pixels.std()) + 1e-3


# --------------------------------------------------------------------------------------------
# The families: each returns the fill over the region's box (and the region, and its weight)


def _transplant(image: np.ndarray, rng: np.random.Generator, region: _Box, diameter: float,
                sources: Sequence[np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
    from scipy.ndimage import rotate, zoom

    c = image.shape[-1]
    pool = [s for s in sources if _channels(s) == c] or [image]
    source = pool[int(rng.integers(len(pool)))]
    bh, bw = region.mask.shape
    # Never a plain copy of good texture: rescale by at least a third or rotate by at least 30 degrees.
    scale = float(np.exp(rng.uniform(np.log(1.33), np.log(2.0))) ** rng.choice([-1, 1]))
    angle = float(rng.uniform(30, 150)) * float(rng.choice([-1, 1])) if rng.random() < 0.7 else 0.0
    need = int(math.ceil(max(bh, bw) * 1.5 / scale)) + 2  # a rotated box needs sqrt(2) more
    sh, sw = np.shape(source)[:2]
    need = min(need, sh, sw)
    sy, sx = int(rng.integers(0, sh - need + 1)), int(rng.integers(0, sw - need + 1))
    # Convert only the piece taken (a source may be a large image of another dtype).
    piece = _as_hwc(np.asarray(source)[sy : sy + need, sx : sx + need])
    if angle:
        piece = rotate(piece, angle, axes=(0, 1), reshape=False, order=1, mode="reflect")
    piece = zoom(piece, (scale, scale, 1), order=1, mode="reflect")
    if piece.shape[0] < bh or piece.shape[1] < bw:  # a small source image: tile it
        reps = (math.ceil(bh / piece.shape[0]), math.ceil(bw / piece.shape[1]), 1)
        piece = np.tile(piece, reps)
    oy, ox = (piece.shape[0] - bh) // 2, (piece.shape[1] - bw) // 2
    piece = piece[oy : oy + bh, ox : ox + bw]
    mean, std = _local_stats(image, region, diameter / 4)
    pmean = piece[region.mask].mean(axis=0)
    gain = float(rng.uniform(0.7, 1.4))
    # The region's mean matches its surroundings' (up to a small shift): not separable by intensity.
    shift = float(rng.uniform(-0.3, 0.3)) * std
    fill = (mean + gain * (piece - pmean) + shift).astype(np.float32)
    return fill, {"scale": round(scale, 3), "angle": round(angle, 1), "gain": round(gain, 3)}


def _smear(image: np.ndarray, rng: np.random.Generator, region: _Box,
           diameter: float) -> tuple[np.ndarray, dict[str, Any]]:
    from scipy.ndimage import gaussian_filter, median_filter

    if rng.random() < 0.5:
        sigma = float(rng.uniform(max(1.5, diameter / 8), max(2.0, diameter / 3)))
        margin = int(_TRUNCATE * sigma + 0.5) + 1  # the filter's reach
        filtered = lambda crop: gaussian_filter(crop, (sigma, sigma, 0), mode="reflect")  # noqa: E731
        how = {"filter": "gaussian", "sigma": round(sigma, 2)}
    else:
        size = int(max(3, round(rng.uniform(diameter / 6, diameter / 2)))) | 1
        margin = size // 2 + 1
        filtered = lambda crop: median_filter(crop, size=(size, size, 1), mode="reflect")  # noqa: E731
        how = {"filter": "median", "size": size}
    # Filter only the region's box plus the filter's reach, clipped to the image: over the box
    # that equals filtering the whole image (both mirror at the same image border).
    around = _grown(region, margin, image.shape[:2])
    return _inner(filtered(image[around.slices]), around, region), how


def _foreign(image: np.ndarray, rng: np.random.Generator,
             diameter: float) -> tuple[np.ndarray, _Box, np.ndarray, dict[str, Any]]:
    shape = image.shape[:2]
    h, w = shape
    if rng.random() < 0.6:
        region = _region_box(rng, diameter, shape)
        particles = 1
    else:  # a cluster of particles whose areas add up to the requested size
        particles = int(rng.integers(3, 8))
        small = max(2.0, diameter / math.sqrt(particles))
        centre = _region_box(rng, diameter * 1.5, shape)
        rows, cols = np.nonzero(centre.mask)
        cy, cx = int((rows + centre.r0).mean()), int((cols + centre.c0).mean())
        ys_all, xs_all = [], []
        for _ in range(particles):
            one = _region_box(rng, small * float(rng.uniform(0.6, 1.3)), (2 * h, 2 * w))
            ys, xs = np.nonzero(one.mask)
            ys, xs = ys + one.r0, xs + one.c0
            oy, ox = int(ys.mean()), int(xs.mean())
            dy = cy - oy + int(rng.normal(0, diameter / 3))
            dx = cx - ox + int(rng.normal(0, diameter / 3))
            ys, xs = ys + dy, xs + dx
            ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
            ys_all.append(ys[ok])
            xs_all.append(xs[ok])
        ys, xs = np.concatenate(ys_all), np.concatenate(xs_all)
        if ys.size:
            r0, c0 = int(ys.min()), int(xs.min())
            mask = np.zeros((int(ys.max()) + 1 - r0, int(xs.max()) + 1 - c0), bool)
            mask[ys - r0, xs - c0] = True
            region = _Box(mask, r0, c0)
        else:
            region = centre
    mean, std = _local_stats(image, region, diameter / 4)
    sign = float(rng.choice([-1, 1]))
    contrast = float(rng.uniform(1.5, 4.0))
    value = mean + sign * contrast * std
    opaque = rng.random() < 0.5
    # A body: its own faint texture (opaque) or the surface showing through (a stain).
    if opaque:
        fill = value + 0.3 * std * _stationary_noise(rng, region.mask.shape, 1.5)[..., None]
    else:
        fill = image[region.slices] + sign * contrast * std
    # Soft edges: a blurred profile, cut at the region so nothing leaks out.
    alpha = np.clip(_blurred(region, float(rng.uniform(0.5, 1.5)), shape) * 2, 0, 1) * region.mask
    return np.clip(fill, 0, 1), region, alpha.astype(np.float32), {
        "particles": particles, "contrast_std": round(sign * contrast, 2), "opaque": bool(opaque)}


def _shading(image: np.ndarray, rng: np.random.Generator, region: _Box,
             diameter: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A few percent of the intensity range added over a large region, fading in over a third of
    its diameter and tilted across it (uneven surface, discoloration): no new structure."""
    shape = image.shape[:2]
    amplitude = float(rng.uniform(0.02, 0.06)) * float(rng.choice([-1, 1]))
    tilt, angle = float(rng.uniform(-0.8, 0.8)), float(rng.uniform(0, 2 * np.pi))
    rows, cols = np.mgrid[region.r0:region.r1, region.c0:region.c1].astype(np.float32)
    ramp = (np.cos(angle) * (rows - rows.mean()) + np.sin(angle) * (cols - cols.mean())) / max(diameter / 2, 1.0)
    change = amplitude * (1 + tilt * np.clip(ramp, -1, 1))
    weight = np.clip(_distance_inside(region, shape) / max(2.0, diameter / 3), 0, 1)
    alpha = (weight * weight * (3 - 2 * weight) * region.mask).astype(np.float32)  # smoothstep
    fill = image[region.slices] + change[..., None].astype(np.float32)
    return fill, alpha, {"amplitude": round(amplitude, 4), "tilt": round(tilt, 3)}


def _missing(image: np.ndarray, rng: np.random.Generator,
             region: _Box) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The region filled flat (missing material): one value per channel, the image's own level at
    a dark (10-40 %) or a bright (60-90 %) quantile, so it lies well inside the image's range; hard
    edges. What gives it away is that it is flat, not its level."""
    dark = bool(rng.random() < 0.5)
    quantile = float(rng.uniform(0.1, 0.4) if dark else rng.uniform(0.6, 0.9))
    sample = image[::4, ::4].reshape(-1, image.shape[-1])  # the image's levels, at a sixteenth of the cost
    level = np.quantile(sample, quantile, axis=0).astype(np.float32)
    fill = np.broadcast_to(level, region.mask.shape + (image.shape[-1],)).copy()
    return fill, region.mask.astype(np.float32), {"dark": dark, "quantile": round(quantile, 3)}


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


def _scratch(image: np.ndarray, rng: np.random.Generator,
             length: float) -> tuple[np.ndarray, _Box, np.ndarray, dict[str, Any]]:
    from skimage.draw import line

    shape = image.shape[:2]
    h, w = shape
    jagged = bool(rng.random() < 0.5)
    rows, cols = [], []
    for points in _curve(rng, length, shape, jagged):
        pts = np.round(points).astype(int)
        for (r0, c0), (r1, c1) in zip(pts, pts[1:]):
            rr, cc = line(r0, c0, r1, c1)
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            rows.append(rr[ok])
            cols.append(cc[ok])
    rr, cc = np.concatenate(rows), np.concatenate(cols)
    if not rr.size:
        rr, cc = np.array([h // 2]), np.array([w // 2])
    r0, c0 = int(rr.min()), int(cc.min())
    core = np.zeros((int(rr.max()) + 1 - r0, int(cc.max()) + 1 - c0), bool)
    core[rr - r0, cc - c0] = True
    width = float(rng.uniform(1.0, 3.0))
    reach = width / 2 + 0.5
    # Only pixels nearer the line than `reach` get painted: a margin of ceil(reach) holds them all.
    distance, around = _distance_around(_Box(core, r0, c0), int(math.ceil(reach)) + 1, shape)
    alpha = np.clip(1.0 - distance / reach, 0, 1)  # 1 on the line, fading over a pixel
    region = _tight(alpha > 0, around.r0, around.c0)
    alpha = _inner(alpha, around, region)
    mean, std = _local_stats(image, region, 3)
    sign = float(rng.choice([-1, 1]))
    contrast = float(rng.uniform(1.5, 4.0))
    fill = np.clip(image[region.slices] + sign * contrast * std, 0, 1)
    return fill, region, alpha.astype(np.float32), {
        "jagged": jagged, "width": round(width, 2), "contrast_std": round(sign * contrast, 2)}


# --------------------------------------------------------------------------------------------
# Painting


def _paint_into(canvas: np.ndarray, rng: np.random.Generator, family: str, diameter: float,
                sources: Sequence[np.ndarray]) -> dict[str, Any]:
    """Paint one defect into ``canvas`` (float32 ``[H, W, C]``, changed in place, over the defect's
    box only) and return its info, with its ``box`` and ``region`` (the pixels it changed)."""
    shape = canvas.shape[:2]
    info: dict[str, Any] = {"family": family, "diameter": round(float(diameter), 2)}
    if family in ("transplant", "smear"):
        region = _region_box(rng, diameter, shape)
        if family == "transplant":
            fill, extra = _transplant(canvas, rng, region, diameter, [*sources, canvas])
        else:
            fill, extra = _smear(canvas, rng, region, diameter)
        soft = bool(rng.random() < 0.6)
        alpha = _soft_alpha(region, rng, soft, diameter, shape)
        extra["soft_edge"] = soft
    elif family in LARGE_FAMILIES:
        region = _region_box(rng, diameter, shape, at_edge=family == "missing")
        if family == "shading":
            fill, alpha, extra = _shading(canvas, rng, region, diameter)
        else:
            fill, alpha, extra = _missing(canvas, rng, region)
    elif family == "foreign":
        fill, region, alpha, extra = _foreign(canvas, rng, diameter)
    else:
        fill, region, alpha, extra = _scratch(canvas, rng, diameter)
    info.update(extra)
    before = canvas[region.slices]
    painted = (before + alpha[..., None] * (np.clip(fill, 0, 1) - before)).astype(np.float32)
    painted, changed = _exact(before, painted)
    canvas[region.slices] = painted
    done = _tight(changed, region.r0, region.c0)
    info["box"] = [done.r0, done.r1, done.c0, done.c1]
    info["region"] = done.mask.copy()
    return info


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
        describing the defect (family, diameter, its parameters, and where it lies: ``box``
        ``[r0, r1, c0, c1]`` and ``region``, the boolean crop of the mask over that box; the
        region is an array, so drop it before writing the info as JSON).

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
    canvas = _as_hwc(original).copy()
    for source in sources:
        _channels(source)
    info = _paint_into(canvas, rng, family, diameter, sources)
    r0, r1, c0, c1 = info["box"]
    mask = np.zeros(canvas.shape[:2], bool)
    mask[r0:r1, c0:c1] = info["region"]
    return canvas.reshape(original.shape), mask, info


def _exact(original: np.ndarray, painted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undo changes below :data:`MIN_CHANGE`; the mask is then exactly the changed pixels."""
    mask = np.any(np.abs(painted - original) > MIN_CHANGE, axis=-1)
    painted = np.where(mask[..., None], painted, original)
    return painted, mask


def paint_defects(image: np.ndarray, rng: np.random.Generator, count: int = 1, *,
                  size_range: Sequence[float] = (4, 32), families: Sequence[str] = FAMILIES,
                  sources: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Paint ``count`` defects, each of a family and size drawn at random, into a copy of ``image``.

    Each defect is painted into the image as the earlier ones left it, as :func:`paint_defect`
    would, so a later defect may repaint an earlier one's pixels.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` floats in [0, 1].
        rng: The random generator: the same seed gives the same defects.
        count: Number of defects (they may overlap).
        size_range: ``(min, max)`` equivalent diameter in pixels, drawn log-uniformly
            (:func:`default_size_range` gives 1/16 to 1/2 of a patch side); the large families
            (:data:`LARGE_FAMILIES`) are painted that many times larger, at most the image's
            shorter side (their info's ``diameter`` is the size painted).
        families: The families to draw from, uniformly.
        sources: Other defect-free images for the ``transplant`` family.

    Returns:
        ``(painted, mask, infos)``: the painted copy (float32), the exact boolean ``[H, W]``
        mask of the pixels that differ from ``image``, one dict per defect. Each dict's ``box``
        and ``region`` are the pixels that defect changed when it was painted; intersect them
        with ``mask`` for what is left of it (a later defect may have repainted some). The
        ``region`` arrays are not JSON: drop them before writing the infos as JSON.

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
    if hi > 2 * max(original.shape[:2]):  # a defect's box is about 1.6 diameters wide: bound the work
        raise InputError(f"defect size {hi:g} px is far larger than the {original.shape[0]}x{original.shape[1]} image; "
                         "give sizes up to the image's side")
    for source in sources:
        _channels(source)
    canvas = original.copy()
    infos = []
    for _ in range(count):
        family = families[int(rng.integers(len(families)))]
        diameter = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        if family in LARGE_FAMILIES:
            diameter = min(diameter * LARGE_FAMILIES[family], float(min(original.shape[:2])))
        infos.append(_paint_into(canvas, rng, family, diameter, sources))
    painted, mask = _exact(original, canvas)
    return painted.reshape(np.shape(image)), mask, infos
