"""Dataset layouts on disk: NanoTWICE as distributed, MVTec AD, and plain folders."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from tfssim.data.io import IMAGE_SUFFIXES, list_images
from tfssim.errors import InputError

__all__ = [
    "DatasetSplit", "LAYOUTS", "LAYOUT_CHOICES", "MASK_SUFFIXES", "detect_layout", "find_mask", "load_dataset", "load_folder",
    "load_mvtec", "load_nanotwice", "mask_index", "mask_names",
]

# The layouts a dataset folder can have (detect_layout's answers), and what load_dataset's (and
# tfssim-train's) layout setting takes: one of them, or "auto" to detect it.
LAYOUTS = ("nanotwice", "mvtec", "folder")
LAYOUT_CHOICES = ("auto", *LAYOUTS)
# Ground-truth mask names tried for a test image <stem>, in this order, by every loader here and
# by tfssim-predict --masks: NanoTWICE's <stem>_gt, a mask with the image's own stem, MVTec AD's
# <stem>_mask (each with any image extension).
MASK_SUFFIXES = ("_gt", "", "_mask")


@dataclass(frozen=True)
class DatasetSplit:
    """Paths of one dataset split for training, threshold calibration and testing.

    Attributes:
        layout (str): ``"nanotwice"``, ``"mvtec"`` or ``"folder"``.
        root (Path): The dataset folder.
        train, val (list of Path): Defect-free training and validation images (validation sets the threshold).
        test (list of Path): Test images.
        test_masks (list of Path or None): Ground-truth mask of each test image; ``None`` for a defect-free test image.
        test_labels (list of str): Defect type of each test image, ``"good"`` for defect-free ones.
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
        raise InputError(f"validation fraction must be in [0, 1), got {val_fraction}")
    if len(paths) < 2 or val_fraction == 0:
        return list(paths), []
    count = min(len(paths) - 1, max(1, round(len(paths) * val_fraction)))
    shuffled = list(paths)
    random.Random(seed).shuffle(shuffled)
    val = sorted(shuffled[:count])
    return sorted(shuffled[count:]), val


def mask_names(image: str | os.PathLike) -> str:
    """The mask names looked for for ``image``, for messages: ``x_gt.*, x.*, x_mask.*``."""
    stem = Path(image).stem
    return ", ".join(f"{stem}{suffix}.*" for suffix in MASK_SUFFIXES)


def mask_index(mask_dir: str | os.PathLike) -> dict[str, Path]:
    """The image files directly in ``mask_dir`` by stem (any image extension, any case).

    Where two files share a stem (``x.png`` and ``x.tif``), the first in sorted order wins.
    """
    index: dict[str, Path] = {}
    for path in sorted(Path(mask_dir).iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            index.setdefault(path.stem, path)
    return index


def find_mask(mask_dir: str | os.PathLike, image: str | os.PathLike,
              index: Mapping[str, Path] | None = None) -> Path | None:
    """The ground-truth mask of ``image`` in ``mask_dir``, or ``None``.

    Tries ``<stem><suffix>.<ext>`` for each suffix of :data:`MASK_SUFFIXES` in order (any
    image extension, any case): ``x_gt.png``, ``x.tif``, ``x_mask.PNG`` for ``x.png``.
    ``index`` (:func:`mask_index` of ``mask_dir``) saves listing the folder once per image.
    """
    index = mask_index(mask_dir) if index is None else index
    stem = Path(image).stem
    return next((index[stem + s] for s in MASK_SUFFIXES if stem + s in index), None)


def _match_masks(images: list[Path], mask_dir: Path) -> list[Path]:
    """The mask of every image in ``mask_dir``; ``ValueError`` naming the first image without one."""
    if not mask_dir.is_dir():
        raise InputError(f"no ground-truth folder {mask_dir} for the test images in {images[0].parent}")
    index = mask_index(mask_dir)
    matched = []
    for image in images:
        found = find_mask(mask_dir, image, index)
        if found is None:
            raise InputError(f"no mask for test image {image} in {mask_dir} (looked for {mask_names(image)})")
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
        raise InputError(f"{root / 'Normal'} needs at least 2 images (train + validation), found {len(normal)}")
    test = list_images(root / "Anomalous" / "images")
    masks = _match_masks(test, root / "Anomalous" / "gt")
    return DatasetSplit("nanotwice", root, normal[:-1], normal[-1:], test, list(masks), ["defect"] * len(test))


def load_mvtec(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0) -> DatasetSplit:
    """One MVTec AD category: ``train/good``, ``test/<defect>/`` and
    ``ground_truth/<defect>/<stem>_mask.png`` (``test/good`` has no masks).

    A seeded ``val_fraction`` of ``train/good`` is held out for validation. A mask that fits no
    test image is an error (as in :func:`load_folder`).
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
                masks.extend(_match_masks(images, root / "ground_truth" / defect_dir.name))
            test.extend(images)
            labels.extend([defect_dir.name] * len(images))
        if (root / "ground_truth").is_dir():
            _refuse_stray_masks(root / "ground_truth", test_root, masks)
    return DatasetSplit("mvtec", root, train, val, test, masks, labels)


def load_folder(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0) -> DatasetSplit:
    """A plain folder of defect-free images, or a folder with ``train/`` and optional ``val/``,
    ``test/`` and ``ground_truth/`` (or ``test_masks/``).

    Without ``val/``, a seeded ``val_fraction`` of the training images is held out.

    ``test/`` holds the test images directly, or in one subfolder per defect type as in MVTec AD,
    or both. Masks are found by :func:`find_mask` (``<stem>_gt``, ``<stem>``, ``<stem>_mask``;
    any image extension):

    * images directly in ``test/``: one with a mask in the ground-truth folder is defective
      (label ``"defect"``), one without is defect-free (``"good"``); a mask file there that
      fits no test image is an error, since a naming mistake would otherwise turn defective
      images into good ones with empty masks;
    * ``test/good/`` needs no masks; every image in any other ``test/<type>/`` needs one, in
      ``ground_truth/<type>/`` if that exists, else in the ground-truth folder itself
      (label ``<type>``);
    * in both cases every mask file (in the ground-truth folder and its subfolders) must fit a
      test image: a mask that fits none is an error, naming the files.

    Raises:
        ValueError: A test image in a defect folder without a mask (naming the image and the names looked
            for), or a mask that fits no test image.
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
    test: list[Path] = []
    masks: list[Path | None] = []
    labels: list[str] = []
    test_root = root / "test"
    if not test_root.is_dir():
        return DatasetSplit("folder", root, train, val)
    gt_dir = next((root / n for n in ("ground_truth", "test_masks") if (root / n).is_dir()), None)
    index = mask_index(gt_dir) if gt_dir is not None else {}
    flat = sorted(p for p in test_root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    typed = sorted(p for p in test_root.iterdir() if p.is_dir())
    if not flat and not typed:
        list_images(test_root)  # raises: no images
    for image in flat:
        found = find_mask(gt_dir, image, index) if gt_dir is not None else None
        test.append(image)
        masks.append(found)
        labels.append("good" if found is None else "defect")
    for type_dir in typed:
        images = list_images(type_dir)
        if type_dir.name == "good":
            masks.extend([None] * len(images))
        elif gt_dir is None:
            raise InputError(
                f"test images in the defect folder {type_dir} need ground-truth masks, but {root} has no "
                f"ground_truth/ folder (looked for {mask_names(images[0])} of {images[0]})"
            )
        else:
            sub = gt_dir / type_dir.name
            masks.extend(_match_masks(images, sub if sub.is_dir() else gt_dir))
        test.extend(images)
        labels.extend([type_dir.name] * len(images))
    if gt_dir is not None:
        _refuse_stray_masks(gt_dir, test_root, masks)
    return DatasetSplit("folder", root, train, val, test, masks, labels)


def _refuse_stray_masks(gt_dir: Path, test_root: Path, masks: list[Path | None]) -> None:
    """``ValueError`` naming the masks in ``gt_dir`` (and its subfolders but ``good/``) that no test image took.

    One rule for test images directly in ``test/`` and in ``test/<type>/``: a naming mistake
    would otherwise turn defective images into good ones (flat) or leave masks silently unused
    (typed).
    """
    used = {m for m in masks if m is not None}
    candidates = list(mask_index(gt_dir).values())
    for sub in sorted(p for p in gt_dir.iterdir() if p.is_dir() and p.name != "good"):  # good: no masks used
        candidates.extend(mask_index(sub).values())
    stray = [str(p.relative_to(gt_dir)) for p in candidates if p not in used]
    if stray:
        raise InputError(
            f"{len(stray)} mask(s) in {gt_dir} fit no image in {test_root}: {', '.join(stray[:5])}"
            f"{' ...' if len(stray) > 5 else ''}; a test image <stem> takes the mask "
            f"{' or '.join(f'<stem>{s}' for s in MASK_SUFFIXES)} (any image extension) in {gt_dir.name}/, "
            f"or for test/<type>/<stem> in {gt_dir.name}/<type>/ where that exists; rename or remove those masks"
        )


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
    raise InputError(f"unknown dataset layout {layout!r}; choose one of {', '.join(LAYOUT_CHOICES)}")
