"""Synthetic data: the paper's checkerboard toy example and built-in textures with defects.

:func:`add_defects` paints the *test* defects of the built-in datasets (``tfssim-demo``, the
tests). It is deliberately not :func:`tfssim.data.defects.paint_defects`, the painter that
``tfssim-tune`` chooses its scoring on: a test set drawn by the generator the tuner selects
with would reward the choice for fitting that generator, not for finding defects. The two
share no code and no parameters, so the demo's test numbers stay a measurement.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfssim.errors import InputError

__all__ = [
    "checkerboard", "checkerboard_patches", "defective_checkerboard", "SyntheticDataset",
    "texture_dataset", "add_defects", "write_dataset", "TEXTURES",
]

TEXTURES = ("brick", "grass", "gravel")


def checkerboard(size: int = 128, square: float = 16.0, angle_deg: float = 0.0, phase: tuple[float, float] = (0.0, 0.0),
                 low: float = 0.1, high: float = 0.9, smooth: float = 0.5) -> np.ndarray:
    """A rotated checkerboard ``[size, size, 1]`` float32 with values ``low``/``high``.

    ``smooth`` (pixels) softens the square edges slightly, as a camera would.
    """
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    t = np.deg2rad(angle_deg)
    u = (np.cos(t) * xx + np.sin(t) * yy) / square + phase[0]
    v = (-np.sin(t) * xx + np.cos(t) * yy) / square + phase[1]
    board = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    if smooth > 0:
        from scipy.ndimage import gaussian_filter

        board = gaussian_filter(board, smooth)
    return (low + (high - low) * board)[..., None].astype(np.float32)


def checkerboard_patches(count: int, size: int = 128, seed: int = 0) -> np.ndarray:
    """``count`` defect-free boards ``[count, size, size, 1]`` of random scale (8-24 px squares),
    orientation and phase: the toy example's training set."""
    rng = np.random.default_rng(seed)
    return np.stack([
        checkerboard(size, rng.uniform(8, 24), rng.uniform(0, 90), tuple(rng.uniform(0, 1, 2)))
        for _ in range(count)
    ])


def defective_checkerboard(size: int = 128, seed: int = 0, square: float = 16.0, angle_deg: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """A board with gray strokes and dots as defects: ``(image [size, size, 1], mask [size, size] bool)``.

    The mask marks exactly the pixels the defects changed.
    """
    from skimage.draw import disk, line

    rng = np.random.default_rng(seed)
    clean = checkerboard(size, square, angle_deg)
    image = clean.copy()
    drawn = np.zeros((size, size), bool)
    for _ in range(4):  # gray strokes, 2-3 px wide
        r0, c0, r1, c1 = rng.integers(8, size - 8, 4)
        rr, cc = line(r0, c0, r1, c1)
        width = int(rng.integers(2, 4))
        for d in range(width):
            drawn[np.clip(rr + d, 0, size - 1), cc] = True
    for _ in range(3):  # dots
        rr, cc = disk(tuple(rng.integers(10, size - 10, 2)), rng.uniform(2.5, 4.5), shape=(size, size))
        drawn[rr, cc] = True
    image[drawn, 0] = 0.5
    mask = np.abs(image[..., 0] - clean[..., 0]) > 1e-6
    return image, mask


@dataclass
class SyntheticDataset:
    """Arrays of a built-in dataset: defect-free train/val images, test images and masks."""

    name: str
    train: list[np.ndarray]
    val: list[np.ndarray]
    test: list[np.ndarray]
    test_masks: list[np.ndarray] = field(default_factory=list)


def _load_texture(name: str) -> np.ndarray:
    from skimage import color, data

    if name not in TEXTURES:
        raise InputError(f"unknown texture {name!r}; choose one of {', '.join(TEXTURES)}")
    image = np.asarray(getattr(data, name)())
    if image.ndim == 3:
        image = color.rgb2gray(image[..., :3])
    image = image.astype(np.float32)
    return image / 255.0 if image.max() > 1 else image


def add_defects(image: np.ndarray, rng: np.random.Generator, count: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``count`` synthetic defects into a ``[H, W]`` image; return it and the exact mask.

    Defect kinds, picked at random: a scratch (a 2-4 px polyline, darker or brighter than its
    surroundings), a flattened blob (an ellipse whose texture is replaced by its blurred,
    shifted mean, like the flattened areas of NanoTWICE), and a speck (a small bright/dark disk).
    """
    from scipy.ndimage import binary_dilation, gaussian_filter
    from skimage.draw import disk, ellipse, line

    h, w = image.shape
    out = image.copy()
    mask = np.zeros((h, w), bool)
    blurred = gaussian_filter(image, 4)
    for _ in range(count):
        kind = rng.choice(["scratch", "blob", "speck"])
        region = np.zeros((h, w), bool)
        if kind == "scratch":
            points = [rng.integers(8, [h - 8, w - 8]) for _ in range(3)]
            for (r0, c0), (r1, c1) in zip(points, points[1:]):
                rr, cc = line(r0, c0, r1, c1)
                region[rr, cc] = True
            region = binary_dilation(region, iterations=int(rng.integers(1, 3)))
            value = rng.choice([0.1, 0.9])
            out[region] = 0.4 * out[region] + 0.6 * value
        elif kind == "blob":
            rr, cc = ellipse(rng.integers(12, h - 12), rng.integers(12, w - 12), rng.uniform(6, 14), rng.uniform(4, 10),
                             shape=(h, w), rotation=rng.uniform(0, np.pi))
            region[rr, cc] = True
            out[region] = np.clip(blurred[region] + rng.choice([-0.15, 0.15]), 0, 1)
        else:
            rr, cc = disk(tuple(rng.integers(6, [h - 6, w - 6])), rng.uniform(2.5, 5), shape=(h, w))
            region[rr, cc] = True
            out[region] = rng.choice([0.05, 0.95])
        mask |= region
    mask &= np.abs(out - image) > 1e-6
    return out.astype(np.float32), mask


def texture_dataset(name: str = TEXTURES[0], n_val: int = 2, n_test: int = 6, test_size: tuple[int, int] = (128, 128),
                    seed: int = 0) -> SyntheticDataset:
    """A built-in inspection dataset from a scikit-image texture (512x512 gray, shipped offline).

    The top 320 rows are the defect-free training image; validation and test crops come from
    the bottom 192 rows, which training never sees: ``n_val`` defect-free crops and ``n_test``
    crops with 2-4 synthetic defects each (:func:`add_defects`) and their exact masks.
    """
    texture = _load_texture(name)
    rng = np.random.default_rng(seed)
    train = texture[:320][..., None]
    held_out = texture[320:]
    th, tw = test_size
    if held_out.shape[0] < th or held_out.shape[1] < tw:
        raise InputError(f"test size {test_size} does not fit the {held_out.shape} held-out part of {name}")

    def crop() -> np.ndarray:
        y = rng.integers(0, held_out.shape[0] - th + 1)
        x = rng.integers(0, held_out.shape[1] - tw + 1)
        patch = held_out[y : y + th, x : x + tw]
        return np.rot90(patch, rng.integers(0, 4)) if th == tw else patch

    val = [crop()[..., None].copy() for _ in range(n_val)]
    test, masks = [], []
    for _ in range(n_test):
        image, mask = add_defects(crop(), rng, count=int(rng.integers(2, 5)))
        test.append(image[..., None])
        masks.append(mask)
    return SyntheticDataset(name, [train.copy()], val, test, masks)


def write_dataset(dataset: SyntheticDataset, folder: str | os.PathLike) -> Path:
    """Write a :class:`SyntheticDataset` as 16-bit PNGs in the plain-folder layout
    (``train/``, ``val/``, ``test/``, ``ground_truth/<stem>_mask.png``) that
    :func:`tfssim.data.load_folder` reads."""
    from skimage import io

    folder = Path(folder)
    for sub in ("train", "val", "test", "ground_truth"):
        (folder / sub).mkdir(parents=True, exist_ok=True)

    def save(path: Path, image: np.ndarray) -> None:
        io.imsave(path, np.round(np.clip(image[..., 0], 0, 1) * 65535).astype(np.uint16), check_contrast=False)

    for i, image in enumerate(dataset.train):
        save(folder / "train" / f"{dataset.name}_train_{i:03d}.png", image)
    for i, image in enumerate(dataset.val):
        save(folder / "val" / f"{dataset.name}_val_{i:03d}.png", image)
    for i, (image, mask) in enumerate(zip(dataset.test, dataset.test_masks)):
        stem = f"{dataset.name}_test_{i:03d}"
        save(folder / "test" / f"{stem}.png", image)
        io.imsave(folder / "ground_truth" / f"{stem}_mask.png", (mask * 255).astype(np.uint8), check_contrast=False)
    return folder
