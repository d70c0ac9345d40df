"""Hostile input to the image reader, the export metadata and tfssim-predict (issue 13, items 1-4).

The corpus is built at test time: empty, truncated and text-as-image files, decompression bombs
of four formats (a PNG, a BMP, a JPEG and a tiled zlib TIFF declaring 50000x50000 pixels, each
a few kB to a few MB, none allocated in full), symlink loops and dangling links, folders named
like images, odd names, NaN/infinite thresholds, damaged metadata, output folders that cannot
be used, a disk that fills up mid-run and Ctrl-C. The promises checked: the exit status, exactly
one ``Error:`` line where one is promised, no traceback, a strict-JSON ``summary.json``, the
other images processed, every input byte-identical afterwards, and bombs refused from their
header (never decoded).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import stop_decoding
from skimage import io

from tfssim import export
from tfssim._io import OUTPUT_LOCK_NAME, atomic_write_json
from tfssim.cli.predict import main as predict_cli
from tfssim.data import io as image_io
from tfssim.export.metadata import ExportMetadata, read_export_metadata
from tfssim.serving import postprocess
from tfssim.serving.inference import ExportedModel
from tfssim.serving.prediction import OUTPUT_SUFFIXES, expand_inputs

REPO = Path(__file__).resolve().parents[1]
BOMB_SIDE = 50000  # 2.5e9 pixels: 2.3 GiB as uint8, 9.3 GiB as float32


# --- the corpus ---------------------------------------------------------------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """An 8-bit gray PNG whose header declares side x side pixels (a stub of zeros as its data)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", zlib.compress(bytes(4 * (side + 1)))) + _png_chunk(b"IEND", b""))
    return path


def bmp_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """A 24-bit BMP header declaring side x side pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 0, 2835, 2835, 0, 0)
    path.write_bytes(b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + bytes(16))
    return path


def jpeg_bomb(path: Path, side: int = 60000) -> Path:
    """A baseline JPEG header (SOF0) declaring side x side pixels."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, side, side, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00"
    path.write_bytes(b"\xff\xd8" + sof + sos + bytes(10) + b"\xff\xd9")
    return path


def tiff_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """A complete, valid tiled zlib TIFF of side x side zeros (2.5 MB): one precompressed tile written
    2401 times, so it is never allocated here."""
    import tifffile

    tile = zlib.compress(bytes(1024 * 1024))
    count = (-(-side // 1024)) ** 2
    with tifffile.TiffWriter(path) as writer:
        writer.write((tile for _ in range(count)), shape=(side, side), dtype=np.uint8, tile=(1024, 1024),
                     compression="zlib")
    return path


BOMBS = {"png": png_bomb, "bmp": bmp_bomb, "jpg": jpeg_bomb, "tif": tiff_bomb}


def good_image(path: Path, seed: int = 0, shape=(64, 80)) -> Path:
    rng = np.random.default_rng(seed)
    io.imsave(path, rng.integers(0, 256, shape, dtype=np.uint8), check_contrast=False)
    return path


def junk_files(folder: Path) -> dict[str, Path]:
    """Files named like images that are not readable ones."""
    folder.mkdir(parents=True, exist_ok=True)
    noise = good_image(folder / "noise_src.png", seed=5).read_bytes()
    (folder / "noise_src.png").unlink()
    files = {
        "empty": folder / "empty.png",
        "text": folder / "text.png",
        "header_cut": folder / "header_cut.png",
        "data_cut": folder / "data_cut.png",
        "tiff_as_text": folder / "notes.tif",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not an image\nsecond line\n")
    files["header_cut"].write_bytes(noise[:30])
    files["data_cut"].write_bytes(noise[: len(noise) // 2])
    files["tiff_as_text"].write_bytes(b"II*\x00" + b"nonsense" * 4)
    return files


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` (links: their target's name)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def strict_json(path: Path):
    """Parse as strict JSON: NaN/Infinity literals are an error, as in every other JSON reader."""
    def refuse(name):
        raise AssertionError(f"{path} holds the non-JSON literal {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def assert_clean(result, code: int, errors: int | None = 1) -> None:
    """Exit status ``code``, no traceback and (``errors`` not None) that many ``Error:`` lines."""
    assert "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit) or (code == 0 and result.exception is None), repr(result.exception)
    assert result.exit_code == code, result.output
    if errors is not None:
        assert sum(line.startswith("Error:") for line in result.output.splitlines()) == errors, result.output


# --- the reader: one pixel budget, checked before decoding -------------------------------------


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any pixel data is decoded (Pillow and tifffile are the reader's decoders)."""
    stop_decoding(monkeypatch)


@pytest.mark.parametrize("fmt", sorted(BOMBS))
def test_bombs_of_every_format_are_refused_from_their_header(fmt, tmp_path, no_decoding):
    bomb = BOMBS[fmt](tmp_path / f"bomb.{fmt}")
    assert bomb.stat().st_size < 3_000_000
    for read in (image_io.read_image, image_io.read_mask):
        with pytest.raises(ValueError, match=r"declares [\d,]+ pixels, more than the budget of 67,108,864") as err:
            read(bomb)
        assert str(bomb) in str(err.value) and "\n" not in str(err.value)


def test_the_budget_is_one_setting_for_every_format(tmp_path, monkeypatch):
    png = good_image(tmp_path / "a.png", shape=(10, 12))
    tif = tmp_path / "a.tif"
    io.imsave(tif, np.zeros((10, 12), np.uint8), check_contrast=False)
    assert image_io.max_image_pixels() == image_io.MAX_IMAGE_PIXELS == 2**26
    for path in (png, tif):
        assert image_io.read_image(path, max_pixels=120).shape == (10, 12, 1)  # exactly at the budget
        with pytest.raises(ValueError, match="declares 120 pixels, more than the budget of 119"):
            image_io.read_image(path, max_pixels=119)
    monkeypatch.setenv("TFSSIM_MAX_IMAGE_PIXELS", "119")
    with pytest.raises(ValueError, match="budget of 119"):
        image_io.read_mask(tif)
    assert image_io.read_image(png, max_pixels=120).shape == (10, 12, 1)  # the argument wins
    monkeypatch.setenv("TFSSIM_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="TFSSIM_MAX_IMAGE_PIXELS='lots' is not a whole number"):
        image_io.read_image(png)
    with pytest.raises(ValueError, match="positive whole number"):
        image_io.read_image(png, max_pixels=0)


def test_multipage_tiffs_and_animated_pngs_count_every_page(tmp_path, monkeypatch):
    """Every page and frame counts against the budget, checked before anything is decoded."""
    import tifffile
    from PIL import Image

    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 20, 30), np.uint8))
    frames = [Image.fromarray(np.full((20, 30), 50 * i, np.uint8)) for i in range(5)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    stop_decoding(monkeypatch)
    for path in (stack, tmp_path / "anim.png"):
        with pytest.raises(ValueError, match="declares 3,000 pixels"):
            image_io.read_image(path, max_pixels=2999)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for the peak memory")
def test_a_tiff_bomb_read_in_a_fresh_process_stays_small(tmp_path):
    """Peak memory of a process that reads the 50000x50000 TIFF: refused, well under 300 MB
    (decoding it would take 2.3 GiB, converting it to float 9.3 GiB more). Linux only (/proc)."""
    bomb = tiff_bomb(tmp_path / "bomb.tif")
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("reader", {str(REPO / "tfssim" / "data" / "io.py")!r})
reader = importlib.util.module_from_spec(spec); spec.loader.exec_module(reader)  # without TensorFlow
try:
    reader.read_image({str(bomb)!r})
except ValueError as err:
    print("refused:", err)
# VmHWM: this process's peak resident memory (ru_maxrss would include the forking pytest's)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("maxrss_mb", int(hwm.split()[1]) / 1024)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "declares 2,500,000,000 pixels" in done.stdout
    peak = float(done.stdout.split("maxrss_mb")[1])
    assert peak < 300, done.stdout


def test_junk_named_like_images_is_one_clean_line(tmp_path):
    for kind, path in junk_files(tmp_path).items():
        with pytest.raises(ValueError) as err:
            image_io.read_image(path)
        message = str(err.value)
        assert str(path) in message and "\n" not in message, (kind, message)
        assert "plugin" not in message.lower() and "imageio" not in message.lower(), (kind, message)
    with pytest.raises(ValueError, match="is empty"):
        image_io.read_image(tmp_path / "empty.png")


def test_links_folders_pipes_and_missing_files(tmp_path):
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")  # opening it to read would block forever
    with pytest.raises(ValueError, match="is not a regular file"):
        image_io.read_image(tmp_path / "pipe.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(ValueError, match="is a folder, not an image"):
        image_io.read_image(tmp_path / "folder.png")
    for name in ("dangling.png", "loop.png"):
        with pytest.raises(ValueError, match="broken symbolic link"):
            image_io.read_image(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_io.read_image(tmp_path / "missing.png")
    # tfssim-train --skip-bad-images reads through read_images: every one of these is skipped
    good = good_image(tmp_path / "good.png")
    bomb = tiff_bomb(tmp_path / "bomb.tif")
    paths = [good, tmp_path / "folder.png", tmp_path / "dangling.png", tmp_path / "loop.png", bomb,
             tmp_path / "missing.png"]
    images, ok, bad = image_io.read_images(paths)
    assert ok == [good] and len(images) == 1 and [p for p, _ in bad] == paths[1:]


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 000 does not stop root from reading")
def test_an_unreadable_file_is_a_clean_error(tmp_path):
    path = good_image(tmp_path / "secret.png")
    path.chmod(0)
    try:
        with pytest.raises(ValueError, match="Permission denied"):
            image_io.read_image(path)
    finally:
        path.chmod(0o644)


def test_mutated_files_decode_or_fail_with_one_value_error(tmp_path):
    """A seeded fuzz of the reader (Hypothesis is not a dependency): 240 truncations and byte
    flips of valid PNG, TIFF, JPEG and BMP files either read as float32 in [0, 1] or raise a
    one-line ValueError naming the file; nothing else escapes."""
    rng = np.random.default_rng(13)
    sources = []
    for suffix in (".png", ".tif", ".jpg", ".bmp"):
        path = tmp_path / f"src{suffix}"
        io.imsave(path, rng.integers(0, 256, (24, 20, 3), dtype=np.uint8), check_contrast=False)
        sources.append((suffix, path.read_bytes()))
    outcomes = {"read": 0, "refused": 0}
    for i in range(240):
        suffix, raw = sources[i % len(sources)]
        data = bytearray(raw)
        if i % 3 == 0:
            data = data[: rng.integers(0, len(data))]
        else:
            for pos in rng.integers(0, len(data), size=rng.integers(1, 8)):
                data[pos] = rng.integers(0, 256)
        path = tmp_path / f"m{i}{suffix}"
        path.write_bytes(bytes(data))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # decoders may warn about what they repaired
                image = image_io.read_image(path, channels=3)
        except ValueError as err:
            assert str(path) in str(err) and "\n" not in str(err), str(err)
            outcomes["refused"] += 1
        else:
            assert image.dtype == np.float32 and image.shape[-1] == 3
            assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
            outcomes["read"] += 1
    assert outcomes["refused"] > 50 and outcomes["read"] > 10, outcomes  # both paths exercised


# --- export metadata ------------------------------------------------------------------------


@pytest.fixture
def copied_export(exports, tmp_path):
    return shutil.copytree(exports[0], tmp_path / "model" / "1")


DAMAGED_METADATA = {
    "nan": lambda meta: json.dumps({**meta, "threshold": float("nan")}),  # Python writes a bare NaN
    "infinity": lambda meta: json.dumps({**meta, "threshold": float("inf")}),
    "overflow": lambda meta: json.dumps(meta)[:-1] + ', "threshold": 1e400}',  # parses to inf
    "text": lambda meta: json.dumps({**meta, "threshold": "0.3"}),
    "bool": lambda meta: json.dumps({**meta, "threshold": True}),
    "min_area": lambda meta: json.dumps({**meta, "min_area": -1}),
    "convex_hull": lambda meta: json.dumps({**meta, "convex_hull": "yes"}),
    "channels": lambda meta: json.dumps({**meta, "channels": 2}),
    "not_json": lambda meta: "{this is not json",
    "empty": lambda meta: "",
    "list": lambda meta: "[1, 2]",
    "binary": lambda meta: b"\xff\xfe\x00garbage",
    "deep": lambda meta: "[" * 100000 + "]" * 100000,
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_METADATA))
def test_damaged_metadata_is_one_error_naming_the_file(damage, copied_export, dataset, tmp_path):
    from tfssim.cli.calibrate import main as calibrate_cli
    from tfssim.cli.evaluate import main as evaluate_cli

    meta_path = copied_export / "assets" / "tfssim.json"
    content = DAMAGED_METADATA[damage](json.loads(meta_path.read_text()))
    meta_path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = meta_path.read_bytes()
    for read in (read_export_metadata, ExportMetadata.read, ExportedModel.load):
        with pytest.raises(ValueError) as err:
            read(copied_export)
        assert str(meta_path) in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(ValueError, match=str(meta_path)):
        export.write_calibrated_version(copied_export, 0.5)
    assert meta_path.read_bytes() == before  # left as it was
    assert [p.name for p in copied_export.parent.iterdir()] == ["1"]  # no new version, no partial folder
    images = tmp_path / "imgs"
    images.mkdir()
    good_image(images / "a.png")
    result = CliRunner().invoke(predict_cli, [str(copied_export), str(images), "-o", str(tmp_path / "out"),
                                              "--threshold", "0.3"])
    assert_clean(result, 2)
    assert str(meta_path) in result.output and not (tmp_path / "out").exists()
    for cli, args in ((calibrate_cli, [copied_export, images]),
                      (evaluate_cli, [dataset, copied_export, "--output", tmp_path / "eval"])):
        result = CliRunner().invoke(cli, list(map(str, args)))
        assert_clean(result, 2)
        assert str(meta_path) in result.output
    assert meta_path.read_bytes() == before


def test_post_processor_refuses_malformed_settings():
    # Stored values are checked when the metadata is read (ExportMetadata); given ones here.
    stored = ExportMetadata.from_dict({"format": 1, "name": "m", "version": 1, "kind": "ssim", "residual": "ssim",
                                       "patch_size": 32, "channels": 1, "stride": 8, "threshold": 0.3})
    for bad in (float("inf"), float("-inf"), float("nan"), "0.3", True):
        with pytest.raises(ValueError, match="threshold must be a finite number"):
            postprocess.PostProcessor.from_metadata(stored, threshold=bad)
    with pytest.raises(ValueError, match="min_area .* whole number >= 0"):
        postprocess.PostProcessor.from_metadata(stored, min_area=2.5)
    with pytest.raises(ValueError, match="convex_hull .* true or false"):
        postprocess.PostProcessor.from_metadata(stored, convex_hull="no")
    ok = postprocess.PostProcessor.from_metadata(stored, opening_diameter=0, min_area=np.int64(5))
    assert (ok.threshold, ok.opening_diameter, ok.convex_hull, ok.min_area) == (0.3, 0, True, 5)


def test_json_the_package_writes_is_strict(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"a": 1})
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="JSON compliant"):
            atomic_write_json(target, {"a": value})
    assert strict_json(target) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


# --- tfssim-predict -------------------------------------------------------------------------


def _predict(export_dir, *args):
    return CliRunner().invoke(predict_cli, [str(export_dir), *map(str, args)])


@pytest.mark.slow
def test_predict_skips_every_hostile_input_and_processes_the_rest(exports, tmp_path):
    """One folder holding good images (one with spaces and non-ASCII in its name) among junk, bombs,
    a link loop, a dangling link, a named pipe and a folder named like an image: every bad one is
    a recorded failure, the good ones are processed, exit 1, no traceback, inputs untouched."""
    images = tmp_path / "in"
    junk = junk_files(images)
    good = [good_image(images / "a.png", 1), good_image(images / "z.png", 2),
            good_image(images / "odd name ü ß.png", 3)]
    bombs = [BOMBS[fmt](images / f"bomb_{fmt}.{fmt}") for fmt in sorted(BOMBS)]
    (images / "loop.png").symlink_to("loop.png")
    (images / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(images / "pipe.png")
    (images / "folder.png").mkdir()
    good_image(images / "folder.png" / "inner.png")  # a folder is not an image, nor searched
    before = hashes(tmp_path)
    out = tmp_path / "out"

    result = _predict(exports[0], images, "-o", out, "--threshold", "0.3")

    assert_clean(result, 1, errors=0)
    bad = [*junk.values(), *bombs, images / "loop.png", images / "dangling.png", images / "pipe.png"]
    assert f"{len(bad)} of {len(bad) + len(good)} image(s) could not be processed" in result.output
    summary = strict_json(out / "summary.json")
    assert summary["images"] == len(bad) + len(good) and len(summary["failed"]) == len(bad)
    assert sorted(summary["processed"]) == sorted(map(str, good)) and summary["interrupted"] is False
    for path in bad:
        assert sum(str(path) in line for line in summary["failed"]) == 1, path
    for path in good:
        for suffix in OUTPUT_SUFFIXES.values():
            assert (out / f"{path.stem}{suffix}").stat().st_size > 0
    assert not any("inner" in p.name for p in out.iterdir())
    assert hashes(images) == {k: v for k, v in before.items() if k.startswith(str(images))}


def test_predict_refuses_an_output_folder_holding_its_inputs(exports, tmp_path):
    same = tmp_path / "same"
    same.mkdir()
    good_image(same / "a.png")
    good_image(same / "a_mask.png", 2)  # the user's file that the predicted mask of a.png would replace
    before = hashes(same)
    for args in ([same, "-o", same], [str(same / "*.png"), "-o", str(same) + "/"]):
        result = _predict(exports[0], *args, "--threshold", "0.3")
        assert_clean(result, 2)
        assert "holds the input" in result.output
        assert hashes(same) == before
    link_dir = tmp_path / "links"  # an input that is a link into the output folder
    link_dir.mkdir()
    (link_dir / "b.png").symlink_to(same / "a_mask.png")
    result = _predict(exports[0], link_dir, "-o", same, "--threshold", "0.3")
    assert_clean(result, 2)
    assert hashes(same) == before


def test_predict_refuses_the_mask_folder_as_output(exports, dataset, tmp_path):
    masks = shutil.copytree(dataset / "ground_truth", tmp_path / "gt")
    before = hashes(masks)
    result = _predict(exports[0], dataset / "test", "-o", masks, "--masks", masks, "--threshold", "0.3")
    assert_clean(result, 2)
    assert "ground-truth mask folder" in result.output and hashes(masks) == before


@pytest.mark.slow
def test_predict_output_problems_are_found_before_the_first_image(exports, tmp_path, monkeypatch):
    images = tmp_path / "in"
    images.mkdir()
    good_image(images / "a.png")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    read = []

    def no_reading(*args, **kwargs):
        read.append(args)
        raise AssertionError("an image was read")

    monkeypatch.setattr("tfssim.data.read_image", no_reading)
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "a_mask.png").mkdir()  # a folder where a result file goes
    for output, message in ((a_file / "sub", "a parent of it is a file"), (a_file, "is a file"),
                            (tmp_path / "blocked", "is a folder where a result file goes")):
        result = _predict(exports[0], images, "-o", output, "--threshold", "0.3")
        assert_clean(result, 2)
        assert message in result.output, result.output
    # A read-only folder: as root chmod does not stop writes, so the write probe is made to fail
    # as a read-only file system makes it fail (EROFS), and a full disk (ENOSPC: exit 1).
    import tempfile

    for code, status, message in ((errno.EROFS, 2, "Read-only file system"), (errno.ENOSPC, 1, "free disk space")):
        def fail(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code), kwargs.get("dir"))

        with monkeypatch.context() as patch:
            patch.setattr(tempfile, "mkstemp", fail)
            result = _predict(exports[0], images, "-o", tmp_path / f"out{code}", "--threshold", "0.3")
        assert_clean(result, status)
        assert message in result.output, result.output
    assert read == []


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: a chmod 555 folder stays writable for root")
def test_predict_refuses_a_read_only_output_folder(exports, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    good_image(images / "a.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = _predict(exports[0], images, "-o", locked, "--threshold", "0.3")
    finally:
        locked.chmod(0o755)
    assert_clean(result, 2)
    assert "Permission denied" in result.output and list(locked.iterdir()) == []


def _three_images(folder: Path) -> list[Path]:
    folder.mkdir()
    return [good_image(folder / f"{name}.png", i) for i, name in enumerate("abc")]


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl_c", "disk_full"])
def test_predict_stopped_mid_run_keeps_a_summary_and_no_partial_image(stop, exports, tmp_path, monkeypatch):
    from tfssim import plots

    paths = _three_images(tmp_path / "in")
    before = hashes(tmp_path / "in")
    out = tmp_path / "out"
    real, calls = plots.plot_overlay, []

    def overlay(*args, **kwargs):  # the 4th of 5 files of the second image
        calls.append(1)
        if len(calls) == 2:
            if stop == "ctrl_c":
                raise KeyboardInterrupt
            raise OSError(errno.ENOSPC, "No space left on device", str(args[-1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, "plot_overlay", overlay)
    result = _predict(exports[0], tmp_path / "in", "-o", out, "--threshold", "0.3")

    if stop == "ctrl_c":
        assert_clean(result, 130, errors=0)
        assert "Interrupted" in result.output and "Aborted" not in result.output
    else:
        assert_clean(result, 1)
        assert "No space left on device" in result.output and "free disk space" in result.output
    summary = strict_json(out / "summary.json")
    assert summary["interrupted"] is True and summary["processed"] == [str(paths[0])]
    assert (summary["error"] == "KeyboardInterrupt") if stop == "ctrl_c" else ("No space left" in summary["error"])
    names = sorted(p.name for p in out.iterdir() if p.name != OUTPUT_LOCK_NAME)  # the lock stays: see _io
    assert names == sorted([f"a{suffix}" for suffix in OUTPUT_SUFFIXES.values()] + ["summary.json"]), names
    assert hashes(tmp_path / "in") == before


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_predict_refuses_a_threshold_that_is_not_finite(value, exports, tmp_path):
    (tmp_path / "in").mkdir()
    good_image(tmp_path / "in" / "a.png")
    result = _predict(exports[0], tmp_path / "in", "-o", tmp_path / "out", "--threshold", value)
    assert_clean(result, 2)
    assert "finite number" in result.output and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_predict_with_a_huge_finite_threshold_runs_without_warnings(exports, tmp_path):
    _three_images(tmp_path / "in")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # NumPy's overflow warning would now be an exception
        result = _predict(exports[0], tmp_path / "in", "-o", tmp_path / "out", "--threshold", "1e308")
    assert_clean(result, 0, errors=0)
    summary = strict_json(tmp_path / "out" / "summary.json")
    assert summary["threshold"] == 1e308 and len(summary["processed"]) == 3 and summary["failed"] == []
    assert "warning" not in result.output.lower()


def test_expand_inputs_keeps_broken_links_as_images_and_skips_folders(tmp_path):
    good = good_image(tmp_path / "a.png")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "loop.png").symlink_to("loop.png")
    (tmp_path / "dangling.tif").symlink_to("nowhere.tif")
    (tmp_path / "notes.txt").write_text("x")
    expected = [good, tmp_path / "dangling.tif", tmp_path / "loop.png"]
    assert sorted(expand_inputs([tmp_path])) == sorted(expected)
    # dir.png, matched by the pattern, is a folder: expanded (it is empty), not taken as an image
    assert sorted(expand_inputs([str(tmp_path / "*.png"), str(tmp_path / "*.tif")])) == sorted(expected)
    with pytest.raises(FileNotFoundError, match="broken symbolic link"):
        expand_inputs([tmp_path / "loop.png"])
