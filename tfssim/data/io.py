"""Reading images and masks from disk into float arrays in [0, 1].

Every command reads pixels through :func:`read_image` and :func:`read_mask`, which share one
decoder. Its rule: a file is read as the picture an image viewer shows (Pillow's own conversion,
``ImageOps.exif_transpose(im).convert("RGB")``), or refused with one line saying what to do.

- **Formats**: PNG, JPEG and BMP through Pillow, TIFF (known by its first bytes, whatever the
  suffix) through tifffile. A camera JPEG with a preview (MPO) reads its primary image. Other
  formats (GIF, WebP, ...) are refused: convert them to PNG.
- **Size**: the pixels the header declares (every page, every frame) are checked against the
  pixel budget (:func:`max_image_pixels`) before any pixel data is decoded; orientation,
  palettes and colour conversion come after.
- **One picture per file**: a TIFF whose first series holds several pages (a stack) and an
  animated PNG are refused; save the page you mean on its own.
- **Orientation**: the EXIF orientation (JPEG, PNG, XMP: where ``ImageOps.exif_transpose`` finds
  it) and a TIFF's Orientation tag are applied; orientations 5 to 8 swap height and width.
  Masks are turned the same way, so a mask drawn on the displayed image lines up.
- **Colour**: CMYK (JPEG, Adobe-inverted ones included, and 8- or 16-bit TIFF) becomes RGB by
  Pillow's rule ``R = (1 - C)(1 - K)``; a palette image (PNG, BMP, TIFF) its palette's colours;
  a min-is-white TIFF is inverted. Alpha and other extra samples are dropped, not composited.
  CIELab, raw camera (CFA), LogLuv, uncompressed YCbCr and other TIFF colour spaces are refused.
- **Values**: integers are divided by the white level of their bit depth: 255 (8 bit), 65535
  (16 bit), and for a TIFF ``2**BitsPerSample - 1`` (4095 for 12 bit, 2**32 - 1 for uint32);
  1-bit pixels are 0 or 1. Pillow decodes a 16-bit colour PNG to 8 bits (a 16-bit colour TIFF
  keeps 16). Signed-integer TIFFs (int8 to int64) have no white level and are refused. Floats
  are 0 = black and 1 = white: values at most 0.25 outside [0, 1] (resampling overshoot) are
  clipped; further out (0-255 floats, [-1, 1]), NaN or infinity, the image is refused.
- **Masks**: nonzero = defect (a colour mask: any of R, G, B). Their values are labels, so they
  are not scaled (any integer type, signed included) and a min-is-white TIFF keeps its stored
  values: tifffile and scikit-image save a bool array that way, True stored as 1.

Bad input raises :class:`tfssim.errors.InputError` (a ``ValueError``): one line naming the file,
what is wrong and how to fix it.
"""
from __future__ import annotations

import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Iterable, NamedTuple, Sequence

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


def _check_budget(pixels: int, budget: int, path: Path, what: str) -> None:
    if pixels > budget:
        raise InputError(
            f"{what} {path} declares {pixels:,} pixels, more than the budget of {budget:,}; refused before decoding "
            f"(raise the budget with the environment variable {MAX_IMAGE_PIXELS_ENV} if the image is genuine)"
        )


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class _Picture(NamedTuple):
    """Decoded pixels, as a viewer shows them, before scaling to [0, 1].

    Attributes:
        pixels: ``[H, W]`` gray or ``[H, W, 3]`` RGB, oriented; alpha and other extra samples dropped.
        white: The value of white of integer ``pixels`` (255, 65535, ``2**BitsPerSample - 1``);
            ``None`` for bool and float pixels.
        inverted: The stored values are ink (a min-is-white TIFF): :func:`read_image` shows
            ``white - value``; :func:`read_mask` keeps the stored labels.
    """

    pixels: np.ndarray
    white: int | None
    inverted: bool = False


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` turned as EXIF/TIFF ``orientation`` says, exactly as ``PIL.ImageOps.exif_transpose``.

    One table for every format (Pillow's EXIF and XMP tags, a TIFF's tag 274), applied to the
    decoded array as a view, so that no second copy of the image is made.
    """
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(array, -1)
    if orientation == 7:
        return array[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(array, 1)
    return array  # 1, absent, or a value no viewer knows: shown as stored


def _valid_orientation(value: object) -> int:
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _cmyk_to_rgb(cmyk: np.ndarray, white: int) -> np.ndarray:
    """RGB of CMYK ink values, by Pillow's own rule: ``R = (white - C) * (white - K) / white``, rounded.

    Integer arithmetic, so that 8-bit results are bit-identical to ``Image.convert("RGB")``; the
    product of two 16-bit values still fits in uint32.
    """
    wide = np.uint32
    paper = np.uint32(white) - cmyk[..., 3].astype(wide)  # light left after the black ink
    rgb = np.empty(cmyk.shape[:-1] + (3,), cmyk.dtype)
    for i in range(3):
        channel = np.uint32(white) - cmyk[..., i].astype(wide)
        channel *= paper
        channel += np.uint32(white // 2)
        channel //= np.uint32(white)
        rgb[..., i] = channel
    return rgb


# Pillow decodes these; anything else it knows (GIF, WebP, PSD, EPS, ...) is refused. EPS would
# even start Ghostscript, and the README promises no more than these four formats.
_PIL_FORMATS = ("PNG", "JPEG", "BMP")  # a JPEG with an MPF header opens as MPO


def _read_pil(fh: BinaryIO, path: Path, what: str, budget: int, head: bytes) -> _Picture:
    """A PNG, JPEG or BMP: size from Pillow's header, then decode, colour, orientation."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our budget decides
        try:
            im = Image.open(fh, formats=_PIL_FORMATS)
            width, height = im.size
            # An MPO (a camera JPEG with a preview) shows its primary image, the only one read;
            # an animated PNG declares its frame count in its header.
            frames = 1 if im.format == "MPO" else int(getattr(im, "n_frames", 1) or 1)
        except Image.DecompressionBombError as err:
            # Pillow refuses at twice its MAX_IMAGE_PIXELS before we see the size; its message has it.
            found = re.search(r"\((\d+) pixels\)", str(err))
            if not found:
                raise InputError(f"{what} {path} is too large to read: {_one_line(err)}") from None
            _check_budget(int(found.group(1)), budget, path, what)
            raise InputError(f"{what} {path} ({int(found.group(1)):,} pixels) is over Pillow's own limit; raise "
                             "PIL.Image.MAX_IMAGE_PIXELS as well as the budget to read it") from None
        except Exception:  # UnidentifiedImageError, SyntaxError, struct.error, ... for junk
            raise InputError(
                f"cannot read {what} {path}: not a readable PNG, TIFF, JPEG or BMP file (truncated, another format "
                f"such as GIF or WebP, or not an image: it starts with {head[:8]!r}); convert it to PNG or remove it"
            ) from None
        with im:
            _check_budget(int(width) * int(height) * max(frames, 1), budget, path, what)
            if frames > 1:
                raise InputError(f"{what} {path} is an animation of {frames} frames; tfssim reads one picture per "
                                 "file: save the frame you mean as a PNG")
            im.load()
            # After load(): a PNG may keep its EXIF after the pixel data. getexif() is where
            # ImageOps.exif_transpose finds the orientation (EXIF, PNG eXIf, XMP).
            try:
                orientation = _valid_orientation(im.getexif().get(0x0112, 1))
            except Exception:  # a damaged EXIF block: viewers show the picture as stored
                orientation = 1
            pixels = _pil_pixels(im, path, what)
    white = None if pixels.dtype == bool else 65535 if pixels.dtype.itemsize == 2 else 255
    return _Picture(_orient(pixels, orientation), white)


def _pil_pixels(im: Any, path: Path, what: str) -> np.ndarray:
    """The gray or RGB array of a loaded Pillow image, as Pillow's own conversion shows it."""
    mode = im.mode
    if mode in ("1", "L", "RGB") or mode.startswith("I;16"):  # 1: bool, I;16: 16-bit gray PNG
        return np.asarray(im)
    if mode == "LA":
        return np.asarray(im)[..., 0]
    if mode in ("RGBA", "RGBX"):
        return np.asarray(im)[..., :3]
    if mode == "CMYK":  # Pillow has already undone an Adobe (Photoshop) JPEG's inverted inks
        return _cmyk_to_rgb(np.asarray(im), 255)
    if mode in ("I", "F"):
        raise InputError(f"{what} {path} has 32-bit pixels (Pillow mode {mode}) without a known white level; "
                         "save it as an 8- or 16-bit PNG")
    try:
        if mode in ("PA", "La", "RGBa") or "transparency" in im.info:
            # Through RGBA: Pillow warns when a palette's transparency is dropped on the way to RGB.
            return np.asarray(im.convert("RGBA"))[..., :3]  # PA, La, RGBa, P with a transparent colour
        return np.asarray(im.convert("RGB"))  # P: the palette's colours; YCbCr
    except ValueError:  # a mode Pillow cannot convert (LAB, HSV)
        raise InputError(f"{what} {path} has colour mode {mode}, which tfssim does not convert; save it as "
                         "gray or RGB") from None


def _read_tiff(fh: BinaryIO, path: Path, what: str, budget: int, head: bytes) -> _Picture:
    """A TIFF: size and kind from tifffile's header, then decode, colour, orientation.

    Every page of the first series counts against the budget, tiled and compressed ones
    included; its kind (pages, photometric interpretation, sample format) is checked before
    decoding too.
    """
    import tifffile

    try:
        tif = tifffile.TiffFile(fh)
    except Exception as err:  # tifffile raises several types for a corrupt file
        raise InputError(f"cannot read {what} {path}: not a readable TIFF ({_one_line(err)}); "
                         "remove or replace the file") from None
    with tif:
        try:
            if not tif.series:
                raise ValueError("no image data")
            series = tif.series[0]
            page = series.keyframe
            shape, axes = tuple(int(n) for n in series.shape), str(series.axes)
            samples = max(int(getattr(page, "samplesperpixel", 1) or 1), 1)
            photometric, sampleformat = int(page.photometric), int(page.sampleformat)
            bits, compression = int(page.bitspersample), int(page.compression)
            orientation = _valid_orientation(page.tags.valueof(274, 1))
            inkset = page.tags.valueof(332, 1)
        except Exception as err:
            raise InputError(f"cannot read {what} {path}: not a readable TIFF ({_one_line(err)}); "
                             "remove or replace the file") from None
        _check_budget(int(np.prod(shape, dtype=object)) // samples, budget, path, what)
        pages = int(np.prod([n for axis, n in zip(axes, shape) if axis not in "YXS"], dtype=object))
        if pages > 1:
            raise InputError(f"{what} {path} holds {pages} pages (a stack, not one picture); save the page you "
                             "mean as a TIFF or PNG of its own")
        _check_tiff_kind(path, what, photometric, sampleformat, bits, compression, samples, inkset)
        try:
            array = series.asarray()
        except Exception as err:
            if "imagecodecs" in str(err):
                raise InputError(f"cannot read {what} {path}: {_one_line(err)}; install it (pip install "
                                 "imagecodecs) or save the TIFF uncompressed or zlib-compressed") from None
            raise
        colormap = page.colormap if photometric == 3 else None
    # tifffile keeps Y and X and squeezes the rest: the pages axis is gone, samples come first
    # (planar) or last.
    if array.ndim == 3 and "S" in axes and axes.index("S") < axes.index("Y"):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3:  # drop extra samples (alpha, unspecified) that a viewer does not show as colour
        array = array[..., : {2: 3, 5: 4, 6: 3}.get(photometric, 1)]
        if array.shape[-1] == 1:
            array = array[..., 0]
    white = None if array.dtype == bool or sampleformat == 3 else 2**bits - 1
    if photometric == 3:  # palette: the colours, 8 bits as libtiff and Pillow show them
        if colormap is None:
            raise InputError(f"{what} {path} is a palette TIFF without a colour map; remove or replace the file")
        table = np.asarray(colormap, np.uint32)
        table = (table if table.max() < 256 else table >> 8).astype(np.uint8).T  # old writers store 8 bits
        array = np.take(table, array.view(np.uint8) if array.dtype == bool else array, axis=0, mode="clip")
        white = 255
    elif photometric == 5:
        array = _cmyk_to_rgb(array, white)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise InputError(f"{what} {path} has shape {array.shape} after decoding, not a gray or an RGB picture; "
                         "save it as a gray or RGB image")
    return _Picture(_orient(array, orientation), white, inverted=photometric == 0)


# Photometric interpretations that become gray or RGB (TIFF 6.0 section 3-5, 16): 0 min-is-white,
# 1 min-is-black, 2 RGB, 3 palette, 5 separated (CMYK), 6 YCbCr (only JPEG-compressed: tifffile's
# JPEG decoder returns RGB). CIELab, CFA (raw camera), LogLuv, ... are refused.
_TIFF_PHOTOMETRIC = frozenset({0, 1, 2, 3, 5, 6})


def _check_tiff_kind(path: Path, what: str, photometric: int, sampleformat: int, bits: int, compression: int,
                     samples: int, inkset: object) -> None:
    """Refuse, from the header, a TIFF whose pixels have no gray or RGB picture tfssim can show."""
    import tifffile

    if photometric not in _TIFF_PHOTOMETRIC or (photometric == 6 and compression not in (6, 7)):
        try:
            name = tifffile.PHOTOMETRIC(photometric).name
        except ValueError:
            name = str(photometric)
        raise InputError(f"{what} {path} has the photometric interpretation {name} (tag 262), which tfssim does not "
                         "convert; save it as a gray or RGB TIFF or PNG")
    if sampleformat in (5, 6):
        raise InputError(f"{what} {path} has complex pixels; save it as a gray or RGB image")
    if photometric == 5 and (inkset not in (1, None) or samples < 4 or sampleformat == 3 or bits > 16):
        raise InputError(f"{what} {path} is a separated TIFF that is not 8- or 16-bit CMYK; save it as RGB")
    if photometric == 3 and sampleformat == 3:
        raise InputError(f"{what} {path} is a palette TIFF with float indices; save it as RGB")
    if sampleformat == 2 and what == "image":
        # A mask is nonzero = defect whatever the type; a picture needs a white level.
        raise InputError(
            f"{what} {path} stores signed {bits}-bit integers, which have no white level (scaling by 2**{bits - 1} "
            "would read it as black); save it as unsigned 8- or 16-bit, or as float in [0, 1]"
        )


def _decode(path: Path, what: str, max_pixels: int | None) -> _Picture:
    """The picture in an image file, after checking its declared size against the budget.

    The file is opened once: its first bytes choose the decoder (tifffile for a TIFF, whatever
    the suffix; Pillow otherwise), whose header gives the size checked against the budget
    before any pixel data is decoded; EXIF, colour maps and conversions come after.

    Raises:
        FileNotFoundError: ``path`` does not exist (and is not a broken link).
        InputError: Anything else that keeps it from being read: a folder, a broken link, no
            permission, an empty or corrupt file, more pixels than :func:`max_image_pixels`, or
            pixels without a gray or RGB picture (see the module docstring).
    """
    budget = max_image_pixels(max_pixels)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            # A pipe would block the read forever, a device (/dev/zero) never end.
            raise InputError(f"{what} {path} is not a regular file (a folder, device, pipe or socket)" if not
                             path.is_dir() else f"{what} {path} is a folder, not an image file")
        # One handle for header and pixels: the file checked is the file decoded.
        fh = open(path, "rb")
    except OSError as err:
        raise _open_error(err, path, what) from None
    with fh:
        try:
            head = fh.read(16)
            fh.seek(0)
        except OSError as err:
            raise _open_error(err, path, what) from None
        if not head:
            raise InputError(f"cannot read {what} {path}: the file is empty (0 bytes); remove or replace the file")
        read = _read_tiff if head[:4] in _TIFF_MAGIC else _read_pil
        try:
            return read(fh, path, what, budget, head)
        except InputError:
            raise
        except MemoryError:
            raise InputError(f"{what} {path} does not fit in memory; lower {MAX_IMAGE_PIXELS_ENV} or free "
                             "memory") from None
        except OSError as err:
            if err.errno is not None:  # the file system's error (gone, permissions), not the decoder's
                raise _open_error(err, path, what) from None
            raise InputError(f"cannot read {what} {path}: {_one_line(err)}; remove or replace the file") from None
        except Exception as err:  # decoders raise many types for a corrupt file
            raise InputError(f"cannot read {what} {path}: {_one_line(err)}; remove or replace the file") from None


# Float pixels are 0 = black, 1 = white. Within this much outside [0, 1] they are clipped
# (resampling overshoots by up to about a tenth at a hard edge); further out the image is on
# another scale (0-255 floats, [-1, 1], z-scores), which clipping would silently turn white or black.
_FLOAT_SLACK = 0.25


def _to_unit_float(picture: _Picture, path: Path) -> np.ndarray:
    """The picture as float32 in [0, 1]: integers divided by their white level, floats checked."""
    array = picture.pixels
    # One float32 copy of the pixels, scaled in place (astype(...) / 255 would make two).
    if array.dtype == bool:
        out = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.unsignedinteger):
        white = picture.white or int(np.iinfo(array.dtype).max)
        out = array.astype(np.float32)
        out /= np.float32(white)
        if white < np.iinfo(array.dtype).max:  # a 12-bit TIFF whose file holds larger values anyway
            np.clip(out, 0.0, 1.0, out=out)
    elif np.issubdtype(array.dtype, np.floating):
        out = array.astype(np.float32)
        if not np.isfinite(out).all():
            raise InputError(f"image {path} holds NaN or infinite values; replace them (e.g. by 0) and save again")
        low, high = (float(out.min()), float(out.max())) if out.size else (0.0, 0.0)
        if low < -_FLOAT_SLACK or high > 1 + _FLOAT_SLACK:
            raise InputError(f"image {path} holds float values from {low:g} to {high:g}, but float images are read "
                             "as 0 = black and 1 = white; rescale it to [0, 1] or save it as 8- or 16-bit")
        np.clip(out, 0.0, 1.0, out=out)
    else:
        raise InputError(f"image {path} has the pixel type {array.dtype}, which has no white level; save it as "
                         "unsigned 8- or 16-bit")
    if picture.inverted:
        np.subtract(np.float32(1.0), out, out=out)
    return out


def read_image(path: str | os.PathLike, channels: int = 1, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as float32 ``[H, W, channels]`` in [0, 1], the picture a viewer shows.

    The file is read by the rule of this module's docstring: EXIF/TIFF orientation applied, CMYK
    and palettes converted to RGB, alpha dropped, integers divided by the white level of their
    bit depth (255, 65535, ``2**BitsPerSample - 1`` for a TIFF), floats taken as [0, 1]. Gray is
    repeated to RGB; RGB is converted to gray with ``skimage.color.rgb2gray``.

    The size the file declares in its header is checked against a pixel budget before anything
    is decoded (:func:`max_image_pixels`: ``max_pixels``, else ``TFSSIM_MAX_IMAGE_PIXELS``,
    else 2**26), for every format (PNG, JPEG and BMP via Pillow's header, TIFF via tifffile,
    tiled and compressed pages included): a decompression bomb is an unreadable image like any
    other.

    Args:
        path (path-like): PNG, TIFF, JPEG or BMP file.
        channels ({1, 3}): Channels of the result.
        max_pixels (int, optional): Pixel budget for this call.

    Returns:
        float32 ``[H, W, channels]`` in [0, 1]; ``H`` and ``W`` as displayed (swapped for EXIF
        orientations 5 to 8).

    Raises:
        FileNotFoundError: The file does not exist.
        InputError: (a ``ValueError``) The file cannot be read (a folder, a broken link, no permission, empty,
            corrupt, over the pixel budget, another format, several pages or frames, signed integers, floats
            outside [0, 1], an unconvertible colour space), or ``channels`` is not 1 or 3.
    """
    from skimage import color

    if channels not in (1, 3):
        raise InputError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    path = Path(path)
    image = _to_unit_float(_decode(path, "image", max_pixels), path)
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

    The mask is decoded as its image is (the module docstring's rule): the same pixel budget,
    checked first, and the same orientation, so a mask drawn on the displayed image lines up
    with :func:`read_image`'s array, whether it is saved with the image's EXIF orientation or as
    displayed. A colour mask counts where any of R, G, B is nonzero; alpha is ignored. Values
    are labels, not brightness: any integer type is read (signed label images included), and a
    min-is-white TIFF keeps its stored values (tifffile and scikit-image save a bool array that
    way, True stored as 1).

    Args:
        path (path-like): PNG, TIFF, JPEG or BMP file.
        shape (sequence of int, optional): ``(H, W, ...)`` of its image; the mask must match.
        max_pixels (int, optional): Pixel budget for this call.

    Returns:
        bool ``[H, W]``, True at defects.

    Raises:
        FileNotFoundError: The file does not exist.
        InputError: (a ``ValueError``) It cannot be read (see :func:`read_image`), is not binary, or ``shape``
            is given and differs.
    """
    path = Path(path)
    array = _decode(path, "mask", max_pixels).pixels
    if array.ndim == 3:
        array = array.max(axis=-1)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"mask {path} holds NaN or infinite values; masks must be 0 for good pixels and one "
                         "finite nonzero value for defects")
    check_binary_mask(array, path)
    mask = np.ascontiguousarray(array != 0)
    if shape is not None and tuple(mask.shape) != tuple(shape[:2]):
        raise InputError(
            f"mask {path} is {mask.shape[0]}x{mask.shape[1]} but its image is {shape[0]}x{shape[1]}; "
            "masks must have the size of their image (as displayed: EXIF orientation applied)"
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
