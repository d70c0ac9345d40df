"""Dataset layouts on disk: NanoTWICE as distributed, MVTec AD, and plain folders."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from tfssim.data.io import IMAGE_SUFFIXES, list_images

__all__ = ["DatasetSplit", "LAYOUTS", "detect_layout", "load_dataset", "load_nanotwice", "load_mvtec", "load_folder"]

LAYOUTS = ("nanotwice", "mvtec", "folder")


@dataclass(frozen=True)
class DatasetSplit:
    """Paths of one dataset split for training, threshold calibration and testing.

    Attributes
    ----------
    layout : str
        ``"nanotwice"``, ``"mvtec"`` or ``"folder"``.
    root : Path
        The dataset folder.
    train, val : list of Path
        Defect-free training and validation images (validation sets the threshold).
    test : list of Path
        Test images.
    test_masks : list of Path or None
        Ground-truth mask of each test image; ``None`` for a defect-free test image.
    test_labels : list of str
        Defect type of each test image, ``"good"`` for defect-free ones.
    """

    layout: str
    root: Path
    train: list[Path]
    val: list[Path]
    test: list[Path] = field(default_factory=list)
    test_masks: list[Path | None] = field(default_factory=list)
    test_labels: list[str] = field(default_factory=list)


def _split(paths: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Seeded split that always keeps at least one training image."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {val_fraction}")
    if len(paths) < 2 or val_fraction == 0:
        return list(paths), []
    count = min(len(paths) - 1, max(1, round(len(paths) * val_fraction)))
    shuffled = list(paths)
    random.Random(seed).shuffle(shuffled)
    val = sorted(shuffled[:count])
    return sorted(shuffled[count:]), val


def _match_masks(images: list[Path], mask_dir: Path, suffixes: tuple[str, ...]) -> list[Path]:
    masks = {}
    for path in mask_dir.iterdir():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            masks[path.stem] = path
    matched = []
    for image in images:
        found = next((masks[image.stem + s] for s in suffixes if image.stem + s in masks), None)
        if found is None:
            raise ValueError(
                f"no mask for test image {image} in {mask_dir} (looked for {', '.join(image.stem + s + '.*' for s in suffixes)})"
            )
        matched.append(found)
    return matched


def load_nanotwice(root: str | os.PathLike) -> DatasetSplit:
    """NanoTWICE as distributed: ``Normal/`` (5 defect-free), ``Anomalous/images/`` (40) and
    ``Anomalous/gt/`` (masks named ``<image stem>_gt.png``).

    The paper's split: the first four normal images (sorted) train, the fifth validates / sets
    the threshold, the 40 anomalous images test.
    """
    root = Path(root)
    normal = list_images(root / "Normal")
    if len(normal) < 2:
        raise ValueError(f"{root / 'Normal'} needs at least 2 images (train + validation), found {len(normal)}")
    test = list_images(root / "Anomalous" / "images")
    masks = _match_masks(test, root / "Anomalous" / "gt", ("_gt", "", "_mask"))
    return DatasetSplit("nanotwice", root, normal[:-1], normal[-1:], test, list(masks), ["defect"] * len(test))


def load_mvtec(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0) -> DatasetSplit:
    """One MVTec AD category: ``train/good``, ``test/<defect>/`` and
    ``ground_truth/<defect>/<stem>_mask.png`` (``test/good`` has no masks).

    A seeded ``val_fraction`` of ``train/good`` is held out for validation.
    """
    root = Path(root)
    train, val = _split(list_images(root / "train" / "good"), val_fraction, seed)
    test: list[Path] = []
    masks: list[Path | None] = []
    labels: list[str] = []
    test_root = root / "test"
    if test_root.is_dir():
        for defect_dir in sorted(p for p in test_root.iterdir() if p.is_dir()):
            images = list_images(defect_dir)
            if defect_dir.name == "good":
                masks.extend([None] * len(images))
            else:
                masks.extend(_match_masks(images, root / "ground_truth" / defect_dir.name, ("_mask", "")))
            test.extend(images)
            labels.extend([defect_dir.name] * len(images))
    return DatasetSplit("mvtec", root, train, val, test, masks, labels)


def load_folder(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0) -> DatasetSplit:
    """A plain folder of defect-free images, or a folder with ``train/`` and optional
    ``val/``, ``test/`` and ``ground_truth/`` (masks ``<stem>_mask.*`` or ``<stem>.*``;
    a test image without a mask counts as defect-free).

    Without ``val/``, a seeded ``val_fraction`` of the training images is held out.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if not (root / "train").is_dir():
        train, val = _split(list_images(root), val_fraction, seed)
        return DatasetSplit("folder", root, train, val)
    train = list_images(root / "train")
    if (root / "val").is_dir():
        val = list_images(root / "val")
    else:
        train, val = _split(train, val_fraction, seed)
    test = list_images(root / "test") if (root / "test").is_dir() else []
    masks: list[Path | None] = []
    gt_dir = next((root / n for n in ("ground_truth", "test_masks") if (root / n).is_dir()), None)
    available = {p.stem: p for p in gt_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES} if gt_dir else {}
    for image in test:
        masks.append(available.get(image.stem + "_mask") or available.get(image.stem))
    labels = ["good" if m is None else "defect" for m in masks]
    return DatasetSplit("folder", root, train, val, test, masks, labels)


def detect_layout(root: str | os.PathLike) -> str:
    """``"nanotwice"``, ``"mvtec"`` or ``"folder"`` from the folder structure of ``root``."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if (root / "Normal").is_dir() and (root / "Anomalous").is_dir():
        return "nanotwice"
    if (root / "train" / "good").is_dir():
        return "mvtec"
    return "folder"


def load_dataset(root: str | os.PathLike, layout: str = "auto", val_fraction: float = 0.1, seed: int = 0) -> DatasetSplit:
    """Read any supported layout; ``layout="auto"`` detects it (see :func:`detect_layout`)."""
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "nanotwice":
        return load_nanotwice(root)
    if layout == "mvtec":
        return load_mvtec(root, val_fraction, seed)
    if layout == "folder":
        return load_folder(root, val_fraction, seed)
    raise ValueError(f"unknown dataset layout {layout!r}; choose one of auto, {', '.join(LAYOUTS)}")
