"""Reading images and masks from disk into float arrays in [0, 1]."""
from __future__ import annotations

import os
import re
import stat
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tfssim.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "MAX_IMAGE_PIXELS_ENV", "list_images", "max_image_pixels", "read_image",
    "read_mask", "check_binary_mask", "read_images",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files (png, tif, tiff, jpg, jpeg, bmp; any case) directly in ``folder``.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: ``folder`` is not a directory or holds no image files.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(
            f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) found in {folder}; put the image files "
            "directly in it (subfolders are not searched) or choose another folder"
        )
    return files


# The pixel budget of every image and mask any tfssim command reads (see max_image_pixels).
# 2**26 = 67,108,864 pixels (8192 x 8192): a 20-Mpx industrial camera frame (5472 x 3648) fits
# three times over, a 50-Mpx one (8192 x 6144) still fits; at the limit an RGB image costs at
# most about 1 GiB to read (192 MiB decoded + 768 MiB as float32), so a bomb (a few-kB file
# declaring 50000 x 50000 pixels) is refused from its header before anything is decoded. It is
# also below Pillow's own warning limit (89,478,485 pixels), so Pillow never warns first.
MAX_IMAGE_PIXELS = 2**26
MAX_IMAGE_PIXELS_ENV = "TFSSIM_MAX_IMAGE_PIXELS"

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def max_image_pixels(limit: int | None = None) -> int:
    """The pixel budget of :func:`read_image` and :func:`read_mask`.

    Args:
        limit: A budget given by the caller; ``None``: the environment variable
            ``TFSSIM_MAX_IMAGE_PIXELS`` if set, else :data:`MAX_IMAGE_PIXELS` (2**26).

    Returns:
        The budget in pixels (height x width x pages; colour channels not counted).

    Raises:
        ValueError: The budget (given or from the environment) is not a positive integer.

    Example:
        >>> max_image_pixels()            # 67108864 unless TFSSIM_MAX_IMAGE_PIXELS is set
    """
    if limit is None:
        raw = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
        if not raw:
            return MAX_IMAGE_PIXELS
        try:
            limit = int(raw.replace("_", ""))
        except ValueError:
            raise InputError(f"{MAX_IMAGE_PIXELS_ENV}={raw!r} is not a whole number of pixels; set it to e.g. "
                             f"{MAX_IMAGE_PIXELS} or unset it") from None
        where = f"{MAX_IMAGE_PIXELS_ENV}={raw!r}"
    else:
        where = f"max_pixels={limit!r}"
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise InputError(f"{where}: the pixel budget must be a positive whole number, e.g. {MAX_IMAGE_PIXELS}")
    return int(limit)


def _open_error(err: OSError, path: Path, what: str) -> Exception:
    """The error of a file that cannot be opened: missing (``FileNotFoundError``), else ``InputError``."""
    if isinstance(err, FileNotFoundError) and not path.is_symlink():
        return FileNotFoundError(f"{what} {path} does not exist")
    if path.is_symlink() and not path.exists():
        return InputError(f"{what} {path} is a broken symbolic link (its target is missing or it loops); "
                          "fix or remove the link")
    if isinstance(err, IsADirectoryError) or path.is_dir():
        return InputError(f"{what} {path} is a folder, not an image file")
    return InputError(f"cannot read {what} {path}: {err.strerror or type(err).__name__}; check the file and its "
                      "permissions")


def _declared_pixels(path: Path, what: str) -> int:
    """Pixels the file declares (height x width, x pages or frames), read from its header alone.

    TIFFs (recognised by their first bytes, whatever the suffix) are measured with tifffile,
    every page of the series that would be decoded, tiled and compressed ones included; other
    files with Pillow, which reads only the header. Neither decodes pixel data.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            # A pipe would block the read forever, a device (/dev/zero) never end.
            raise InputError(f"{what} {path} is not a regular file (a folder, device, pipe or socket)" if not
                             path.is_dir() else f"{what} {path} is a folder, not an image file")
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as err:
        raise _open_error(err, path, what) from None
    if not head:
        raise InputError(f"cannot read {what} {path}: the file is empty (0 bytes); remove or replace the file")
    if head[:4] in _TIFF_MAGIC:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise InputError("no image data")
                series = tif.series[0]
                samples = max(int(getattr(series.keyframe, "samplesperpixel", 1) or 1), 1)
                return int(np.prod(series.shape, dtype=object)) // samples
        except Exception as err:  # tifffile raises several types for a corrupt file
            raise InputError(f"cannot read {what} {path}: not a readable TIFF ({_one_line(err)}); "
                             "remove or replace the file") from None
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our budget decides
            with Image.open(path) as im:
                width, height = im.size
                # An animated PNG is decoded with all its frames (the count is in its header).
                frames = int(getattr(im, "n_frames", 1) or 1)
    except Image.DecompressionBombError as err:
        # Pillow refuses at twice its MAX_IMAGE_PIXELS before we see the size; its message has it.
        found = re.search(r"\((\d+) pixels\)", str(err))
        if found:
            return int(found.group(1))
        raise InputError(f"{what} {path} is too large to read: {_one_line(err)}") from None
    except Exception:  # UnidentifiedImageError, SyntaxError, struct.error, ... for junk
        raise InputError(f"cannot read {what} {path}: not a readable PNG, TIFF, JPEG or BMP file (truncated, or "
                         f"not an image: it starts with {head[:8]!r}); remove or replace the file") from None
    return int(width) * int(height) * max(frames, 1)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _decode(path: Path, what: str, max_pixels: int | None) -> np.ndarray:
    """The pixel array of an image file, after checking its declared size against the budget.

    Raises:
        FileNotFoundError: ``path`` does not exist (and is not a broken link).
        ValueError: Anything else that keeps it from being read: a folder, a broken link, no
            permission, an empty or corrupt file, or more pixels than :func:`max_image_pixels`.
    """
    from skimage import io

    budget = max_image_pixels(max_pixels)
    pixels = _declared_pixels(path, what)
    if pixels > budget:
        raise InputError(
            f"{what} {path} declares {pixels:,} pixels, more than the budget of {budget:,}; refused before decoding "
            f"(raise the budget with the environment variable {MAX_IMAGE_PIXELS_ENV} if the image is genuine)"
        )
    try:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # within our budget
            return np.asarray(io.imread(path))
    except MemoryError:
        raise InputError(f"{what} {path} ({pixels:,} pixels) does not fit in memory; lower "
                         f"{MAX_IMAGE_PIXELS_ENV} or free memory") from None
    except OSError as err:
        if err.errno is not None:  # the file system's error (gone, permissions), not the decoder's
            raise _open_error(err, path, what) from None
        raise InputError(f"cannot read {what} {path}: {_one_line(err)}; remove or replace the file") from None
    except Exception as err:  # decoders raise many types for a corrupt file
        if type(err).__name__ == "DecompressionBombError":
            raise InputError(f"{what} {path} ({pixels:,} pixels) is over Pillow's own limit; raise "
                             "PIL.Image.MAX_IMAGE_PIXELS as well as the budget to read it") from None
        raise InputError(f"cannot read {what} {path}: {_one_line(err)}; remove or replace the file") from None


def _to_unit_float(array: np.ndarray, path: Path) -> np.ndarray:
    # One float32 copy of the pixels, scaled in place (astype(...) / 255 would make two).
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        scale = 255.0 if array.dtype == np.uint8 else 65535.0 if array.dtype == np.uint16 else float(
            np.iinfo(array.dtype).max)
        out = array.astype(np.float32)
        out /= np.float32(scale)
        if array.dtype not in (np.uint8, np.uint16):
            np.clip(out, 0.0, 1.0, out=out)
        return out
    if np.issubdtype(array.dtype, np.floating):
        out = array.astype(np.float32)
        if not np.isfinite(out).all():
            raise InputError(f"image {path} holds NaN or infinite values")
        np.clip(out, 0.0, 1.0, out=out)
        return out
    raise InputError(f"image {path} has unsupported pixel type {array.dtype}")


def read_image(path: str | os.PathLike, channels: int = 1, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as float32 ``[H, W, channels]`` in [0, 1].

    8-bit values are divided by 255 and 16-bit by 65535; float images are clipped to [0, 1].
    Gray is repeated to RGB; RGB(A) is converted to gray with ``skimage.color.rgb2gray``
    (alpha dropped).

    The size the file declares in its header is checked against a pixel budget before anything
    is decoded (:func:`max_image_pixels`: ``max_pixels``, else ``TFSSIM_MAX_IMAGE_PIXELS``,
    else 2**26), for every format (PNG, JPEG and BMP via Pillow's header, TIFF via tifffile,
    tiled and compressed pages included): a decompression bomb is an unreadable image like any
    other.

    Args:
        path (path-like): PNG, TIFF, JPEG or BMP file.
        channels ({1, 3}): Channels of the result.
        max_pixels (int, optional): Pixel budget for this call.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file cannot be read (a folder, a broken link, no permission, empty, corrupt, over the
            pixel budget), or ``channels`` is not 1 or 3.
    """
    from skimage import color

    if channels not in (1, 3):
        raise InputError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    path = Path(path)
    array = _decode(path, "image", max_pixels)
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # some TIFFs store planes first
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise InputError(f"image {path} has shape {array.shape}; expected a 2-D gray or an RGB(A) image")
    # Drop alpha before converting (views), so that only the channels kept become float32.
    if array.ndim == 3 and array.shape[-1] == 2:  # gray + alpha
        array = array[..., 0]
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    image = _to_unit_float(array, path)
    del array
    if image.ndim == 2:
        image = image[..., None]
    if channels == 1 and image.shape[-1] == 3:
        image = color.rgb2gray(image)[..., None].astype(np.float32, copy=False)  # float32 in, float32 out
    elif channels == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image, dtype=np.float32)


def check_binary_mask(mask: np.ndarray, path: str | os.PathLike = "<array>") -> None:
    """Raise ``ValueError`` unless ``mask`` holds at most two distinct values (one being 0)."""
    values = np.unique(mask)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if values.size > 6 else "")
        raise InputError(
            f"mask {path} is not binary: it holds {values.size} distinct values ({shown}); "
            "masks must be 0 for good pixels and one nonzero value for defects"
        )


def read_mask(path: str | os.PathLike, shape: Sequence[int] | None = None, *,
              max_pixels: int | None = None) -> np.ndarray:
    """Read a ground-truth mask as bool ``[H, W]`` (nonzero = defect).

    The declared size is checked against the pixel budget first, as in :func:`read_image`.

    Raises ``FileNotFoundError`` if it does not exist; ``ValueError`` if it cannot be read (see
    :func:`read_image`), is not binary, or if ``shape`` is given and differs.
    """
    path = Path(path)
    array = _decode(path, "mask", max_pixels)
    if array.ndim == 3:
        array = array[..., :3].max(axis=-1) if array.shape[-1] in (3, 4) else array[..., 0]
    check_binary_mask(array, path)
    mask = array != 0
    if shape is not None and tuple(mask.shape) != tuple(shape[:2]):
        raise InputError(
            f"mask {path} is {mask.shape[0]}x{mask.shape[1]} but its image is {shape[0]}x{shape[1]}; "
            "masks must have the size of their image"
        )
    return mask


def read_test_masks(paths: Sequence[str | os.PathLike | None], images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Ground-truth masks of test images: each path read by :func:`read_mask` at its image's size,
    an all-False mask where the path is ``None`` (a defect-free test image)."""
    if len(paths) != len(images):
        raise InputError(f"{len(paths)} mask paths but {len(images)} images")
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
        except (ValueError, OSError) as err:  # OSError: e.g. the file vanished after listing
            bad.append((Path(path), str(err)))
        else:
            good.append(Path(path))
    return images, good, bad
