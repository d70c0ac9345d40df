"""Images read as the picture a viewer shows (issue 25, case 11), checked against Pillow's own conversion.

Every file is built here: CMYK JPEGs and TIFFs, EXIF/XMP/TIFF orientations 1-9, masks drawn on the
displayed image, signed/unsigned/float/1-bit/min-is-white/palette TIFFs, palette/alpha/16-bit PNGs,
stacks, animations and MPOs. The expected picture is Pillow's (``ImageOps.exif_transpose(im)
.convert("RGB"/"L")``) or, where Pillow cannot read the file, the values the test wrote; never
tfssim's own code. Header-only refusals are checked with every decoder stubbed out.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import stop_decoding
from PIL import Image, ImageOps
from skimage import color

from tfssim.data import io as image_io
from tfssim.errors import InputError

XMP_ORIENTATION_6 = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
                     b'syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>'
                     b'</rdf:RDF></x:xmpmeta>')


def scene(height: int = 36, width: int = 52) -> np.ndarray:
    """A smooth RGB picture with no symmetry (so any wrong flip or turn shows), uint8."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([40 + 180 * x / width, 30 + 200 * y / height, 120 + 60 * np.sin(x / 7 + y / 11)], axis=-1)
    rgb[4:12, 6:20] = (250, 240, 20)  # a block near one corner
    return np.clip(rgb, 0, 255).astype(np.uint8)


def shown(path: Path, mode: str = "RGB") -> np.ndarray:
    """The picture Pillow shows: EXIF orientation applied, converted by Pillow, in [0, 1]."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert(mode), np.float32) / 255.0


def turned_by_pillow(array: np.ndarray, orientation: int, mode: str = "L") -> np.ndarray:
    """``array`` turned by ``ImageOps.exif_transpose`` as if tagged with ``orientation``, in [0, 1]."""
    im = Image.fromarray(array)
    im.getexif()[0x0112] = orientation
    return np.asarray(ImageOps.exif_transpose(im).convert(mode), np.float32) / 255.0


def with_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def assert_one_line(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert isinstance(err.value, InputError) and str(path) in message and "\n" not in message, message
    return message


def png_16bit_rgb(path: Path, rgb: np.ndarray) -> Path:
    """A 16-bit RGB PNG written by hand (neither Pillow nor scikit-image writes one)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    height, width = rgb.shape[:2]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def packed_tiff(path: Path, values: np.ndarray, bits: int) -> Path:
    """An uncompressed gray TIFF with ``bits`` bits per sample, packed MSB first (tifffile writes none)."""
    rows = []
    for row in values:
        text = "".join(format(int(v), f"0{bits}b") for v in row)
        text += "0" * (-len(text) % 8)
        rows.append(int(text, 2).to_bytes(len(text) // 8, "big"))
    data = b"".join(rows)
    height, width = values.shape
    tags = [(256, width), (257, height), (258, bits), (259, 1), (262, 1), (273, 8), (277, 1), (278, height),
            (279, len(data))]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", tag, 4, 1, value) for tag, value in tags)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + ifd + struct.pack("<I", 0))
    return path


# --- CMYK: read as Pillow converts it, not inverted ---------------------------------------------


def test_a_cmyk_jpeg_reads_as_the_same_picture_as_its_bmp(tmp_path):
    rgb = scene()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "c.bmp")
    assert b"Adobe" in (tmp_path / "c.jpg").read_bytes()  # Photoshop's inverted inks, undone by Pillow
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
    as_rgb = image_io.read_image(tmp_path / "c.jpg", channels=3)
    np.testing.assert_allclose(as_rgb, shown(tmp_path / "c.jpg"), atol=1e-6)  # Pillow's conversion, bit for bit
    bmp = image_io.read_image(tmp_path / "c.bmp", channels=3)
    assert np.corrcoef(as_rgb.ravel(), bmp.ravel())[0, 1] > 0.99  # it was -0.997: inverted
    assert np.abs(as_rgb - bmp).mean() < 0.02
    gray = image_io.read_image(tmp_path / "c.jpg", channels=1)
    np.testing.assert_allclose(gray[..., 0], color.rgb2gray(shown(tmp_path / "c.jpg")), atol=1e-6)


def test_cmyk_tiffs_of_8_and_16_bits_read_as_pillow_converts_them(tmp_path):
    rgb = scene()
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(tmp_path / "c8.tif")  # Pillow writes photometric SEPARATED
    with tifffile.TiffFile(tmp_path / "c8.tif") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.SEPARATED
    expected = shown(tmp_path / "c8.tif")
    np.testing.assert_allclose(image_io.read_image(tmp_path / "c8.tif", channels=3), expected, atol=1e-6)
    # The same inks at 16 bits (x 257): Pillow cannot open it; its 8-bit picture is within half a step.
    tifffile.imwrite(tmp_path / "c16.tif", np.asarray(cmyk).astype(np.uint16) * 257, photometric="separated")
    np.testing.assert_allclose(image_io.read_image(tmp_path / "c16.tif", channels=3), expected, atol=0.51 / 255)


# --- orientation: EXIF, XMP and TIFF, images and masks ----------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 10))  # 9: no such orientation, shown as stored
@pytest.mark.parametrize("fmt", ["jpg", "png", "tif"])
def test_every_orientation_reads_as_exif_transpose_shows_it(orientation, fmt, tmp_path):
    rgb = scene()
    for array, mode in ((rgb, "RGB"), (rgb[..., 1], "L")):
        path = tmp_path / f"o_{mode}.{fmt}"
        if fmt == "tif":  # the TIFF's own Orientation tag (274), read by tifffile
            tifffile.imwrite(path, array, extratags=[(274, "H", 1, orientation, True)])
            # Pillow's TIFF loader garbles gray TIFFs tagged 5 to 8 (Pillow 13): the reference is
            # exif_transpose of the pixels written; for RGB it must also be what Pillow shows.
            expected = turned_by_pillow(array, orientation, mode)
            if mode == "RGB":
                np.testing.assert_allclose(shown(path, mode), expected, atol=1e-6)
        else:
            Image.fromarray(array).save(path, exif=with_orientation(orientation), quality=95)
            expected = shown(path, mode)
        got = image_io.read_image(path, channels=3 if mode == "RGB" else 1)
        turned = orientation in (5, 6, 7, 8)
        assert got.shape[:2] == expected.shape[:2] == ((52, 36) if turned else (36, 52))
        np.testing.assert_allclose(got if mode == "RGB" else got[..., 0], expected, atol=1e-6)


def test_an_xmp_orientation_is_applied_as_pillow_applies_it(tmp_path):
    Image.fromarray(scene()).save(tmp_path / "x.jpg", xmp=XMP_ORIENTATION_6, quality=95)
    got = image_io.read_image(tmp_path / "x.jpg", channels=3)
    assert got.shape == (52, 36, 3)
    np.testing.assert_allclose(got, shown(tmp_path / "x.jpg"), atol=1e-6)


def test_a_mask_lines_up_with_its_exif_rotated_image(tmp_path):
    # A camera frame stored 40x60 and tagged "turn 90 degrees clockwise": shown 60x40.
    stored = np.full((40, 60), 20, np.uint8)
    stored[5:15, 30:50] = 235  # the defect
    Image.fromarray(stored).save(tmp_path / "part.jpg", exif=with_orientation(6), quality=95)
    image = image_io.read_image(tmp_path / "part.jpg")
    assert image.shape == (60, 40, 1)
    np.testing.assert_allclose(image[..., 0], shown(tmp_path / "part.jpg", "L"), atol=1e-6)
    defect = ((stored > 128) * 255).astype(np.uint8)
    # Drawn on the displayed image and saved as displayed (no tag): refused before, now it lines up.
    Image.fromarray(np.rot90(defect, -1)).save(tmp_path / "drawn_gt.png")
    # Saved with the image's tag, in stored coordinates: turned the same way as its image.
    Image.fromarray(defect).save(tmp_path / "tagged_gt.png", exif=with_orientation(6))
    for name in ("drawn_gt.png", "tagged_gt.png"):
        mask = image_io.read_mask(tmp_path / name, shape=image.shape)
        np.testing.assert_array_equal(mask, shown(tmp_path / name, "L") > 0)
        assert mask.sum() == 200 and mask.flags.c_contiguous
        assert image[mask].min() > 0.8 and image[~mask].max() < 0.2, name  # the mask covers the defect
    # A mask in stored coordinates without the tag does not match what is shown: one line.
    Image.fromarray(defect).save(tmp_path / "untagged_gt.png")
    with pytest.raises(InputError, match=r"is 40x60 but its image is 60x40") as err:
        image_io.read_mask(tmp_path / "untagged_gt.png", shape=image.shape)
    assert_one_line(err, tmp_path / "untagged_gt.png")


def test_a_tiff_mask_follows_the_tiff_orientation_of_its_image(tmp_path):
    stored = np.zeros((30, 50), np.uint8)
    stored[2:8, 35:45] = 200
    tifffile.imwrite(tmp_path / "a.tif", stored, extratags=[(274, "H", 1, 8, True)])
    tifffile.imwrite(tmp_path / "a_gt.tif", stored > 0, extratags=[(274, "H", 1, 8, True)])
    image = image_io.read_image(tmp_path / "a.tif")
    mask = image_io.read_mask(tmp_path / "a_gt.tif", shape=image.shape)
    assert image.shape == (50, 30, 1)
    np.testing.assert_array_equal(mask, image[..., 0] > 0)


# --- integer TIFFs: scaled by their bit depth, or refused ------------------------------------------


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_signed_integer_tiffs_are_refused_as_images_and_read_as_labels_as_masks(dtype, tmp_path):
    values = (np.arange(12 * 16).reshape(12, 16) % 100).astype(dtype)
    path = tmp_path / "signed.tif"
    tifffile.imwrite(path, values)
    bits = np.dtype(dtype).itemsize * 8
    with pytest.raises(InputError, match=rf"stores signed {bits}-bit integers, which have no white level") as err:
        image_io.read_image(path)  # an int32 was divided by 2**31: black
    assert "save it as unsigned 8- or 16-bit" in assert_one_line(err, path)
    labels = np.where(values > 90, 7, 0).astype(dtype)  # e.g. scipy.ndimage.label's int32 output
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    np.testing.assert_array_equal(image_io.read_mask(tmp_path / "labels.tif"), labels != 0)


def test_a_signed_tiff_is_refused_from_its_header(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "i32.tif", np.full((64, 64), 100, np.int32))
    stop_decoding(monkeypatch)
    with pytest.raises(InputError, match="signed 32-bit"):
        image_io.read_image(tmp_path / "i32.tif")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_unsigned_tiffs_are_divided_by_the_white_of_their_bit_depth(dtype, tmp_path):
    white = np.iinfo(dtype).max
    values = np.array([[0, 1, white // 3], [white // 2, white - 1, white]], dtype)
    tifffile.imwrite(tmp_path / "u.tif", values)
    got = image_io.read_image(tmp_path / "u.tif")[..., 0]
    np.testing.assert_allclose(got, values.astype(np.float64) / float(white), rtol=1e-6, atol=1e-7)
    if dtype in (np.uint8, np.uint16):  # the depths Pillow opens: its values, over the same white
        with Image.open(tmp_path / "u.tif") as im:
            np.testing.assert_allclose(got, np.asarray(im, np.float64) / white, atol=1e-7)


def test_a_12_bit_tiff_is_divided_by_4095(tmp_path):
    values = (np.arange(6 * 8).reshape(6, 8) * 87).astype(np.uint16)  # up to 4089
    path = packed_tiff(tmp_path / "b12.tif", values, 12)
    try:
        import imagecodecs  # noqa: F401  (tifffile unpacks 12-bit samples with it)
    except ImportError:
        with pytest.raises(InputError, match=r"requires the 'imagecodecs' package.*pip install imagecodecs") as err:
            image_io.read_image(path)
        assert_one_line(err, path)
    else:
        np.testing.assert_allclose(image_io.read_image(path)[..., 0], values / 4095.0, atol=1e-7)


def test_one_bit_and_min_is_white_tiffs_read_as_pillow_shows_them(tmp_path):
    gray = scene()[..., 0]
    tifffile.imwrite(tmp_path / "bits.tif", gray > 128)  # tifffile writes bool as 1-bit min-is-white
    with tifffile.TiffFile(tmp_path / "bits.tif") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISWHITE and tif.pages[0].bitspersample == 1
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "bits.tif")[..., 0], shown(tmp_path / "bits.tif", "L"))
    # As a mask the stored values are the labels written: True = defect, as the array was.
    np.testing.assert_array_equal(image_io.read_mask(tmp_path / "bits.tif"), gray > 128)
    tifffile.imwrite(tmp_path / "ink.tif", gray, photometric="miniswhite")
    np.testing.assert_allclose(image_io.read_image(tmp_path / "ink.tif")[..., 0], shown(tmp_path / "ink.tif", "L"),
                               atol=1e-6)
    np.testing.assert_allclose(image_io.read_image(tmp_path / "ink.tif")[..., 0], 1 - gray / 255.0, atol=1e-6)


def test_float_tiffs_are_zero_to_one_or_refused(tmp_path):
    ramp = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    tifffile.imwrite(tmp_path / "unit.tif", ramp)
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "unit.tif")[..., 0], ramp)
    tifffile.imwrite(tmp_path / "overshoot.tif", (ramp * 1.2 - 0.1).astype(np.float64))  # resampling ringing
    np.testing.assert_allclose(image_io.read_image(tmp_path / "overshoot.tif")[..., 0],
                               np.clip(ramp * 1.2 - 0.1, 0, 1), atol=1e-6)
    for name, values, shown_range in [("bytes.tif", ramp * 255, "from 0 to 255"),
                                      ("signed.tif", ramp * 2 - 1, "from -1 to 1")]:
        tifffile.imwrite(tmp_path / name, values.astype(np.float32))
        with pytest.raises(InputError, match=f"holds float values {shown_range}, but float images are read as "
                                             "0 = black and 1 = white; rescale it") as err:
            image_io.read_image(tmp_path / name)  # 0-255 floats were clipped: white
        assert_one_line(err, tmp_path / name)
    tifffile.imwrite(tmp_path / "nan.tif", np.where(ramp > 0.5, np.nan, ramp).astype(np.float32))
    with pytest.raises(InputError, match="NaN or infinite"):
        image_io.read_image(tmp_path / "nan.tif")


@pytest.mark.parametrize("photometric", ["cielab", "ycbcr", "cfa"])
def test_tiff_colour_spaces_without_a_conversion_are_refused(photometric, tmp_path):
    # Before: their raw samples were read as if they were gray or RGB.
    rgb = scene()
    path = tmp_path / f"{photometric}.tif"
    tifffile.imwrite(path, rgb[..., 0] if photometric == "cfa" else rgb, photometric=photometric)
    for read in (image_io.read_image, image_io.read_mask):
        with pytest.raises(InputError, match=rf"photometric interpretation {photometric.upper()} \(tag 262\), which "
                                             "tfssim does not convert; save it as a gray or RGB") as err:
            read(path)
        assert_one_line(err, path)


def test_16_bit_colour_alpha_and_a_tiff_named_like_a_jpeg(tmp_path):
    rgb = scene()
    deep = rgb.astype(np.uint16) * 257 + 5
    tifffile.imwrite(tmp_path / "rgb16.tif", deep)  # kept at 16 bits (Pillow would decode it to 8)
    np.testing.assert_allclose(image_io.read_image(tmp_path / "rgb16.tif", channels=3), deep / 65535.0, atol=1e-7)
    tifffile.imwrite(tmp_path / "rgba.tif", np.dstack([rgb, rgb[..., :1]]), extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "la.tif", np.dstack([rgb[..., 1], rgb[..., 0]]), photometric="minisblack",
                     extrasamples=["unassalpha"])
    np.testing.assert_allclose(image_io.read_image(tmp_path / "rgba.tif", channels=3), shown(tmp_path / "rgba.tif"),
                               atol=1e-6)
    np.testing.assert_allclose(image_io.read_image(tmp_path / "la.tif")[..., 0], rgb[..., 1] / 255.0, atol=1e-6)
    # A TIFF is known by its first bytes, whatever its name: the same picture, the same rules.
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.tif")
    (tmp_path / "c.jpg").write_bytes((tmp_path / "c.tif").read_bytes())
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "c.jpg", channels=3),
                                  image_io.read_image(tmp_path / "c.tif", channels=3))


# --- palettes, alpha, bit depths of Pillow's formats ----------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "bmp", "tif"])
def test_palette_images_read_as_their_colours(fmt, tmp_path):
    path = tmp_path / f"p.{fmt}"
    Image.fromarray(scene()).convert("P").save(path)
    with Image.open(path) as im:
        assert im.mode == "P"
    np.testing.assert_allclose(image_io.read_image(path, channels=3), shown(path), atol=1e-6)


def test_palette_png_with_transparency_and_alpha_images_drop_alpha(tmp_path):
    rgb = scene()
    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "pt.png", transparency=0)
    rgba = np.dstack([rgb, np.linspace(0, 255, rgb.shape[1], dtype=np.uint8)[None, :].repeat(rgb.shape[0], 0)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(image_io.read_image(tmp_path / "pt.png", channels=3),
                               np.asarray(Image.open(tmp_path / "pt.png").convert("RGBA"))[..., :3] / 255.0, atol=1e-6)
    np.testing.assert_allclose(image_io.read_image(tmp_path / "rgba.png", channels=3), shown(tmp_path / "rgba.png"),
                               atol=1e-6)
    np.testing.assert_allclose(image_io.read_image(tmp_path / "la.png")[..., 0], shown(tmp_path / "la.png", "L"),
                               atol=1e-6)


def test_one_bit_and_16_bit_pngs(tmp_path):
    gray = scene()[..., 1]
    Image.fromarray(gray > 100).save(tmp_path / "bits.png")
    with Image.open(tmp_path / "bits.png") as im:
        assert im.mode == "1"
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "bits.png")[..., 0], shown(tmp_path / "bits.png", "L"))
    deep = (gray.astype(np.uint16) * 257 + 3)
    Image.fromarray(deep).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"
        np.testing.assert_allclose(image_io.read_image(tmp_path / "g16.png")[..., 0], np.asarray(im) / 65535.0,
                                   atol=1e-7)
    # Pillow decodes a 16-bit colour PNG to 8 bits: read as Pillow shows it, within 1/255 of the 16-bit values.
    colour = scene().astype(np.uint16) * 257 + 100
    png_16bit_rgb(tmp_path / "c16.png", colour)
    got = image_io.read_image(tmp_path / "c16.png", channels=3)
    np.testing.assert_allclose(got, shown(tmp_path / "c16.png"), atol=1e-6)
    assert np.abs(got - colour / 65535.0).max() <= 1 / 255


# --- one picture per file, and only the promised formats -------------------------------------------


def test_stacks_and_animations_are_refused_not_read_as_colour(tmp_path):
    # Before: three gray pages or frames became the R, G and B of one picture.
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([scene()[..., 0]] * 3), photometric="minisblack")
    with pytest.raises(InputError, match=r"holds 3 pages \(a stack, not one picture\); save the page") as err:
        image_io.read_image(tmp_path / "stack.tif", channels=3)
    assert_one_line(err, tmp_path / "stack.tif")
    frames = [Image.fromarray(np.full((20, 30), 60 * i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match="is an animation of 3 frames; .* save the frame you mean") as err:
        image_io.read_mask(tmp_path / "anim.png")
    assert_one_line(err, tmp_path / "anim.png")
    # A planar RGB TIFF (one page, samples first) is one colour picture, as Pillow shows it.
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(scene(), -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_allclose(image_io.read_image(tmp_path / "planar.tif", channels=3), shown(tmp_path / "planar.tif"),
                               atol=1e-6)


def test_an_mpo_camera_jpeg_reads_its_primary_picture(tmp_path):
    primary, preview = scene(), scene(12, 16)[::-1]
    Image.fromarray(primary).save(tmp_path / "cam.jpg", format="MPO", save_all=True,
                                  append_images=[Image.fromarray(preview)], quality=95)
    with Image.open(tmp_path / "cam.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
    got = image_io.read_image(tmp_path / "cam.jpg", channels=3, max_pixels=36 * 52)  # the primary only counts
    np.testing.assert_allclose(got, shown(tmp_path / "cam.jpg"), atol=1e-6)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_other_formats_named_like_images_are_one_line(fmt, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(scene()).save(path, format=fmt)
    with pytest.raises(InputError, match="not a readable PNG, TIFF, JPEG or BMP file .*convert it to PNG") as err:
        image_io.read_image(path)
    assert_one_line(err, path)


# --- the pixel budget still comes first, for every new path -----------------------------------------


def jpeg_header(path: Path, side: int, components: int, orientation: int) -> Path:
    """A JPEG header (EXIF orientation, Adobe APP14, SOF0 with ``components``) declaring side x side."""
    exif = with_orientation(orientation).tobytes()
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 8) + b"Exif\x00\x00" + exif
    app14 = b"\xff\xee" + struct.pack(">H", 14) + b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 2)
    comps = b"".join(bytes([i + 1, 0x11, 0]) for i in range(components))
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 8 + 3 * components, 8, side, side, components) + comps
    sos = b"\xff\xda" + struct.pack(">HB", 6 + 2 * components, components) + b"".join(
        bytes([i + 1, 0]) for i in range(components)) + b"\x00\x3f\x00"
    path.write_bytes(b"\xff\xd8" + app1 + app14 + sof + sos + bytes(10) + b"\xff\xd9")
    return path


def png_header(path: Path, side: int) -> Path:
    """A palette PNG declaring side x side pixels, with an EXIF orientation before a stub of data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 3, 0, 0, 0))
                     + chunk(b"PLTE", bytes(range(6))) + chunk(b"eXIf", with_orientation(6).tobytes())
                     + chunk(b"IDAT", zlib.compress(bytes(side + 1))) + chunk(b"IEND", b""))
    return path


def signed_tiff_bomb(path: Path, side: int = 20000) -> Path:
    """A valid tiled zlib int32 TIFF of side x side zeros tagged with orientation 6 (1.6 GB as int32),
    one precompressed tile written 400 times, so it is never allocated here."""
    tile = zlib.compress(bytes(4 * 1024 * 1024))
    count = (-(-side // 1024)) ** 2
    with tifffile.TiffWriter(path) as writer:
        writer.write((tile for _ in range(count)), shape=(side, side), dtype=np.int32, tile=(1024, 1024),
                     compression="zlib", extratags=[(274, "H", 1, 6, True)])
    return path


def test_palette_exif_png_and_signed_tiled_tiff_bombs_are_refused_from_their_header(tmp_path, monkeypatch):
    png = png_header(tmp_path / "bomb.png", 50000)
    tif = signed_tiff_bomb(tmp_path / "bomb.tif")
    assert png.stat().st_size < 100_000 and tif.stat().st_size < 3_000_000
    stop_decoding(monkeypatch)
    for path, pixels in ((png, "2,500,000,000"), (tif, "400,000,000")):
        for read in (image_io.read_image, image_io.read_mask):
            with pytest.raises(InputError, match=f"declares {pixels} pixels, more than the budget") as err:
                read(path)
            assert_one_line(err, path)


def test_rotated_cmyk_and_signed_bombs_are_refused_from_their_header(tmp_path, monkeypatch):
    bomb = jpeg_header(tmp_path / "bomb.jpg", 60000, 4, 6)  # CMYK (Adobe), EXIF-rotated, 3.6e9 pixels
    rgb = scene()  # and real files of every new kind, to be read over a small budget
    Image.fromarray(rgb).save(tmp_path / "turned.jpg", exif=with_orientation(6))
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    tifffile.imwrite(tmp_path / "int32.tif", rgb[..., 0].astype(np.int32), extratags=[(274, "H", 1, 6, True)])
    tifffile.imwrite(tmp_path / "bits.tif", rgb[..., 0] > 100)
    stop_decoding(monkeypatch)
    with monkeypatch.context() as patch:
        patch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own limit off: our budget alone refuses
        with Image.open(bomb) as im:  # it is a CMYK JPEG to Pillow
            assert im.mode == "CMYK" and im.getexif()[0x0112] == 6
        with pytest.raises(InputError, match="declares 3,600,000,000 pixels, more than the budget"):
            image_io.read_image(bomb)
    for read in (image_io.read_image, image_io.read_mask):
        with pytest.raises(InputError, match="declares 3,600,000,000 pixels, more than the budget") as err:
            read(bomb)
        assert_one_line(err, bomb)
    for name in ("turned.jpg", "cmyk.jpg", "palette.png", "cmyk.tif", "int32.tif", "bits.tif"):
        for read in (image_io.read_image, image_io.read_mask):
            with pytest.raises(InputError, match=r"declares 1,872 pixels, more than the budget of 1,871"):
                read(tmp_path / name, max_pixels=36 * 52 - 1)
    # Within the budget the stubs are reached (their error reported as unreadable): the guard
    # does watch the decoders the reader uses.
    for name in ("turned.jpg", "cmyk.tif"):
        with pytest.raises(InputError, match="pixel data was decoded"):
            image_io.read_image(tmp_path / name)
