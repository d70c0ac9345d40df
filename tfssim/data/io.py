"""Reading images and masks from disk into float arrays in [0, 1]."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "list_images", "read_image", "read_mask", "check_binary_mask", "read_images"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files (png, tif, tiff, jpg, jpeg, bmp; any case) directly in ``folder``.

    Raises
    ------
    FileNotFoundError
        ``folder`` does not exist.
    ValueError
        ``folder`` is not a directory or holds no image files.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) found in {folder}; put the image files "
            "directly in it (subfolders are not searched) or choose another folder"
        )
    return files


def _to_unit_float(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        return np.clip(array.astype(np.float32) / float(info.max), 0.0, 1.0)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"image {path} holds NaN or infinite values")
        return np.clip(array, 0.0, 1.0)
    raise ValueError(f"image {path} has unsupported pixel type {array.dtype}")


def read_image(path: str | os.PathLike, channels: int = 1) -> np.ndarray:
    """Read an image file as float32 ``[H, W, channels]`` in [0, 1].

    8-bit values are divided by 255 and 16-bit by 65535; float images are clipped to [0, 1].
    Gray is repeated to RGB; RGB(A) is converted to gray with ``skimage.color.rgb2gray``
    (alpha dropped).

    Parameters
    ----------
    path : path-like
        PNG, TIFF, JPEG or BMP file.
    channels : {1, 3}
        Channels of the result.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file cannot be decoded, or ``channels`` is not 1 or 3.
    """
    from skimage import color, io

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        array = np.asarray(io.imread(path))
    except Exception as err:  # decoders raise many types for a corrupt file
        raise ValueError(f"cannot read image {path}: {type(err).__name__}: {err}; remove or replace the file") from None
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # some TIFFs store planes first
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise ValueError(f"image {path} has shape {array.shape}; expected a 2-D gray or an RGB(A) image")
    image = _to_unit_float(array, path)
    if image.ndim == 3:
        if image.shape[-1] == 2:  # gray + alpha
            image = image[..., :1]
        elif image.shape[-1] == 4:
            image = image[..., :3]
    if image.ndim == 2:
        image = image[..., None]
    if channels == 1 and image.shape[-1] == 3:
        image = color.rgb2gray(image)[..., None].astype(np.float32)
    elif channels == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image, dtype=np.float32)


def check_binary_mask(mask: np.ndarray, path: str | os.PathLike = "<array>") -> None:
    """Raise ``ValueError`` unless ``mask`` holds at most two distinct values (one being 0)."""
    values = np.unique(mask)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if values.size > 6 else "")
        raise ValueError(
            f"mask {path} is not binary: it holds {values.size} distinct values ({shown}); "
            "masks must be 0 for good pixels and one nonzero value for defects"
        )


def read_mask(path: str | os.PathLike, shape: Sequence[int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as bool ``[H, W]`` (nonzero = defect).

    Raises ``ValueError`` if it is not binary, or if ``shape`` is given and differs.
    """
    from skimage import io

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mask {path} does not exist")
    try:
        array = np.asarray(io.imread(path))
    except Exception as err:
        raise ValueError(f"cannot read mask {path}: {type(err).__name__}: {err}") from None
    if array.ndim == 3:
        array = array[..., :3].max(axis=-1) if array.shape[-1] in (3, 4) else array[..., 0]
    check_binary_mask(array, path)
    mask = array != 0
    if shape is not None and tuple(mask.shape) != tuple(shape[:2]):
        raise ValueError(
            f"mask {path} is {mask.shape[0]}x{mask.shape[1]} but its image is {shape[0]}x{shape[1]}; "
            "masks must have the size of their image"
        )
    return mask


def read_test_masks(paths: Sequence[str | os.PathLike | None], images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Ground-truth masks of test images: each path read by :func:`read_mask` at its image's size,
    an all-False mask where the path is ``None`` (a defect-free test image)."""
    if len(paths) != len(images):
        raise ValueError(f"{len(paths)} mask paths but {len(images)} images")
    return [np.zeros(np.shape(image)[:2], bool) if path is None else read_mask(path, shape=np.shape(image)[:2])
            for path, image in zip(paths, images)]


def read_images(
    paths: Iterable[str | os.PathLike], channels: int = 1
) -> tuple[list[np.ndarray], list[Path], list[tuple[Path, str]]]:
    """Read every file once; return the images, their paths, and ``(path, reason)`` of unreadable ones."""
    images: list[np.ndarray] = []
    good: list[Path] = []
    bad: list[tuple[Path, str]] = []
    for path in paths:
        try:
            images.append(read_image(path, channels))
        except (ValueError, FileNotFoundError) as err:
            bad.append((Path(path), str(err)))
        else:
            good.append(Path(path))
    return images, good, bad
