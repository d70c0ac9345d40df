"""Hostile exports, round 3 (issue 25, cases 4, 5 and 9): links inside a version, version-folder
names, and tampered ``assets/tfssim.json`` values.

The promises checked: a command refuses with exit status 2, exactly one ``Error:`` line and no
traceback; the library raises ``InputError`` (a ``ValueError``) with one line; nothing is
written and every existing version is byte-identical afterwards. The fixtures ``exports`` and
``dataset`` (tiny untrained exports and images, built once per session) are in conftest.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tfssim import export
from tfssim.core.tiling_params import MAX_CHUNK_SIZE
from tfssim.errors import InputError
from tfssim.export import layout
from tfssim.export.metadata import (
    MAX_OPENING_DIAMETER,
    METADATA_FILE,
    ExportMetadata,
    metadata_path,
    read_json,
)
from tfssim.serving import postprocess

REPO = Path(__file__).resolve().parents[1]
BIG = 10**400  # a 400-digit number: no float holds it


def digest(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: a file's sha256, a link's target, a folder's and a pipe's kind."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[key] = "folder"
        elif path.is_file():
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[key] = "special"
    return found


def one_error(result) -> str:
    """Exit 2, no traceback, exactly one ``Error:`` line; returns it."""
    assert "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture
def model(exports, tmp_path) -> Path:
    """A model folder holding a copy of the SSIM export as version 1."""
    shutil.copytree(exports[0], tmp_path / "models" / "ssim" / "1")
    return tmp_path / "models" / "ssim"


def tamper(version: Path, **changes) -> Path:
    """Rewrite the version's metadata with ``changes`` (``training_config__key`` sets an entry of it)."""
    file = version / METADATA_FILE
    values = json.loads(file.read_text())
    for key, value in changes.items():
        if key.startswith("training_config__"):
            values["training_config"] = {**(values.get("training_config") or {}), key.split("__", 1)[1]: value}
        else:
            values[key] = value
    file.write_text(json.dumps(values))
    return version


# --- case 4: nothing but regular files and folders inside a version -----------------------------


def _plant(version: Path, kind: str, where: str, tmp_path: Path) -> Path:
    """Put a hostile entry named ``x`` into ``version/where``."""
    entry = version / where / "x"
    if kind == "dev_zero":
        entry.symlink_to("/dev/zero")
    elif kind == "secret":
        secret = tmp_path / "secret.txt"
        secret.write_text("password\n")
        entry.symlink_to(secret)
    elif kind == "dangling":
        entry.symlink_to(tmp_path / "gone")
    elif kind == "folder_link":
        entry.symlink_to(tmp_path)
    elif kind == "fifo":
        os.mkfifo(entry)
    return entry


KINDS = ["dev_zero", "secret", "dangling", "folder_link", "fifo"]


@pytest.mark.parametrize("where", ["assets.extra", "variables", "assets"])
@pytest.mark.parametrize("kind", KINDS)
def test_write_calibrated_version_refuses_a_version_holding_a_link_or_a_pipe(model, tmp_path, kind, where):
    entry = _plant(model / "1", kind, where, tmp_path)
    before = digest(model)
    with pytest.raises(InputError) as info:
        export.write_calibrated_version(model / "1", 0.5, fpr=0.01)
    text = str(info.value)
    assert str(entry) in text and "only regular files and folders" in text and "\n" not in text
    assert ("symbolic link" in text) == (kind != "fifo")
    assert digest(model) == before and sorted(p.name for p in model.iterdir()) == ["1"]


@pytest.mark.parametrize("kind", KINDS)
def test_tfssim_calibrate_refuses_it_in_one_line(model, dataset, tmp_path, kind):
    from tfssim.cli.calibrate import main as calibrate_cli

    entry = _plant(model / "1", kind, "assets.extra", tmp_path)
    before = digest(model)
    line = one_error(CliRunner().invoke(calibrate_cli, [str(model / "1"), str(dataset / "val")]))
    assert str(entry) in line and "only regular files and folders" in line
    assert "[" not in line.split(":", 1)[1].split("is", 1)[0]  # no raw Python list of copy errors
    assert digest(model) == before and sorted(p.name for p in model.iterdir()) == ["1"]


def test_every_command_that_loads_a_version_refuses_it(model, dataset, tmp_path):
    """predict, evaluate and tune (which re-exports) load through ExportedModel.load: the same rule."""
    from tfssim.cli.evaluate import main as evaluate_cli
    from tfssim.cli.predict import main as predict_cli
    from tfssim.cli.tune import main as tune_cli
    from tfssim.export.layout import resolve_export_dir
    from tfssim.serving.inference import ExportedModel

    entry = _plant(model / "1", "dev_zero", "variables", tmp_path)
    before = digest(model)
    for path in (model, model / "1"):
        with pytest.raises(InputError, match=re.escape(str(entry))):
            resolve_export_dir(path)
        with pytest.raises(InputError, match="only regular files and folders"):
            ExportedModel.load(path)
    runs = [
        (predict_cli, [str(model / "1"), str(dataset / "test"), "-o", str(tmp_path / "out"), "--threshold", "0.5"]),
        (evaluate_cli, [str(dataset), str(model / "1"), "-o", str(tmp_path / "eval")]),
        (tune_cli, [str(model / "1"), str(dataset / "val"), "-o", str(tmp_path / "tune")]),
    ]
    for cli, args in runs:
        assert str(entry) in one_error(CliRunner().invoke(cli, args)), cli.name
    assert digest(model) == before and sorted(p.name for p in model.iterdir()) == ["1"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval").exists()


def test_a_link_swapped_in_after_the_check_is_not_followed(model, tmp_path, monkeypatch):
    # The copy opens every file without following links: a link put there between the check and
    # the copy is refused too (the check is skipped here to stand for that race).
    (model / "1" / "assets.extra" / "tf_serving_warmup_requests").unlink()
    (model / "1" / "assets.extra" / "tf_serving_warmup_requests").symlink_to("/dev/zero")
    monkeypatch.setattr(layout, "check_version_files", lambda folder: None)
    with pytest.raises(InputError, match="tf_serving_warmup_requests is a symbolic link"):
        layout.copy_version(model / "1", tmp_path / "copy")


def test_a_clean_copy_keeps_every_file_and_its_mode(model, tmp_path):
    (model / "1" / "variables" / "variables.index").chmod(0o640)
    layout.copy_version(model / "1", tmp_path / "copy")
    assert digest(tmp_path / "copy") == digest(model / "1")
    assert (tmp_path / "copy" / "variables" / "variables.index").stat().st_mode & 0o777 == 0o640
    with pytest.raises(FileExistsError):
        layout.copy_version(model / "1", tmp_path / "copy")


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "folder"])
def test_the_metadata_reader_never_reads_a_device_or_a_pipe(tmp_path, kind):
    file = tmp_path / "tfssim.json"
    if kind == "dev_zero":
        file.symlink_to("/dev/zero")  # size 0, endless: read without a bound it fills the memory
    elif kind == "fifo":
        os.mkfifo(file)  # no writer: a blocking open or read would hang
    else:
        file.mkdir()
    with pytest.raises(InputError, match="is not a regular file"):
        read_json(file)
    if kind != "folder":  # a folder is read as a version folder (it has no assets/tfssim.json)
        with pytest.raises(InputError, match=f"{file} is not a regular file"):
            ExportMetadata.read(file)


# --- case 5: the version-folder rule, owned by tfssim.export.layout -----------------------------


@pytest.mark.parametrize(("name", "version"), [
    ("1", 1), ("12", 12), ("007", 7), (str(2**63 - 1), 2**63 - 1),
    (str(2**63), None), ("0", None), ("00", None), ("", None), ("²", None), ("١٢", None), ("１", None),
    ("-1", None), ("+1", None), (" 1", None), ("1 ", None), ("1.0", None), ("1_000", None), (".1.partial-x", None),
])
def test_parse_version_takes_ascii_digits_in_the_int64_range(name, version):
    assert layout.parse_version(name) == version


def test_stray_unicode_digit_folders_are_no_versions(model):
    for name in ("²", "١٢", "0", str(2**63)):
        shutil.copytree(model / "1", model / name)
    before = digest(model)
    assert [v for v, _ in layout.list_versions(model)] == [1]
    assert layout.newest_version(model) == model / "1"
    assert layout.next_version(model) == 2
    assert metadata_path(model) == model / "1" / METADATA_FILE
    assert ExportMetadata.read(model).version == 1
    from tfssim.export.layout import resolve_export_dir

    assert resolve_export_dir(model) == model / "1"
    for name in ("²", "١٢"):
        with pytest.raises(InputError, match="is not a version folder"):
            layout.version_folder(model / name)
    from _experiments import _calibrated_before

    from tfssim.export.metadata import calibrated_versions

    assert calibrated_versions(model / "²") == [] and _calibrated_before(model / "١٢", 30) is None
    new = export.write_calibrated_version(model / "1", 0.5, fpr=0.01)
    assert new == model / "2" and calibrated_versions(model / "1") == [new]
    assert _calibrated_before(model / "1", 30) is None
    assert {k: v for k, v in digest(model).items() if not k.startswith("2")} == before


def test_a_dead_partial_named_with_other_digits_is_not_ours_and_stays(model):
    stray = model / ".١.partial-x"
    stray.mkdir()
    os.utime(stray, (0, 0))  # older than any export could take
    ours = model / ".7.partial-x"
    ours.mkdir()
    os.utime(ours, (0, 0))
    layout._remove_dead_partials(model)
    assert stray.is_dir() and not ours.exists()


@pytest.mark.parametrize("stray", ["folder", "file"])
def test_no_version_is_written_past_int64(model, tmp_path, stray):
    last = model / str(2**63 - 1)
    last.mkdir() if stray == "folder" else last.write_text("")
    before = digest(model)
    with pytest.raises(InputError, match=f"{last} is version {2**63 - 1}, the largest TensorFlow Serving reads"):
        layout.next_version(model)
    with pytest.raises(InputError, match="the largest TensorFlow Serving reads"):
        export.write_calibrated_version(model / "1", 0.5, fpr=0.01)
    assert digest(model) == before


def test_export_model_beside_the_last_version_refuses_before_building(tmp_path):
    from tfssim.models import build_model

    (tmp_path / "m" / str(2**63 - 1)).mkdir(parents=True)
    with pytest.raises(InputError, match="the largest TensorFlow Serving reads"):
        export.export_model(build_model("ssim", 32, 1, 8), tmp_path, name="m", stride=16)
    assert [p.name for p in (tmp_path / "m").iterdir()] == [str(2**63 - 1)]


def test_tfssim_calibrate_beside_the_last_version_refuses_before_computing_maps(model, dataset, monkeypatch):
    from tfssim.cli.calibrate import main as calibrate_cli
    from tfssim.evaluation import evaluate

    (model / str(2**63 - 1)).mkdir()
    before = digest(model)

    def no_maps(*args, **kwargs):
        raise AssertionError("maps computed although no version can be written")

    monkeypatch.setattr(evaluate, "compute_maps", no_maps)
    line = one_error(CliRunner().invoke(calibrate_cli, [str(model / "1"), str(dataset / "val")]))
    assert str(2**63 - 1) in line and "largest TensorFlow Serving reads" in line
    assert digest(model) == before


def test_tfssim_export_refuses_a_version_past_int64(tmp_path):
    from tfssim.cli.export import main as export_cli

    line = one_error(CliRunner().invoke(export_cli, [str(tmp_path), "--name", "m", "--version", str(2**63),
                                                     "-o", str(tmp_path / "out")]))
    assert "--version" in line and not (tmp_path / "out").exists()


def test_the_version_rule_has_one_owner():
    """No version-name parsing (``isdigit``, ``int(x.name)``) outside tfssim/export/layout.py."""
    pattern = re.compile(r"\.name\.isdigit\(\)|int\(\w+\.name\)|isdigit\(\)\s+and\s+int\(")
    offenders = []
    for path in sorted([*(REPO / "tfssim").rglob("*.py"), *(REPO / "scripts").glob("*.py")]):
        if path == REPO / "tfssim" / "export" / "layout.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_export_package_and_its_layout_import_without_tensorflow(model, tmp_path, run_without_tensorflow):
    code = """
import json, sys
from pathlib import Path
import tfssim.export, tfssim.export.layout, tfssim.export.calibrated, tfssim.export.metadata, tfssim.serving.inference
from tfssim import export
source = Path(sys.argv[1])
new = export.write_calibrated_version(source, 0.25, fpr=0.01)  # copying and metadata only: no TensorFlow
try:
    export.export_model
    missing = None
except ModuleNotFoundError as err:
    missing = err.name
print(json.dumps({"new": str(new), "loaded": sorted(m for m in ("tensorflow", "keras") if m in sys.modules),
                  "missing": missing, "version": export.next_version(source.parent)}))
"""
    done = run_without_tensorflow(code, str(model / "1"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"new": str(model / "2"), "loaded": [], "missing": "tensorflow", "version": 3}


def test_the_public_names_of_tfssim_export_still_resolve():
    from tfssim.export import METADATA_FILE as file
    from tfssim.export import export_model, read_export_metadata, write_calibrated_version

    assert file == METADATA_FILE and callable(export_model) and callable(read_export_metadata)
    assert write_calibrated_version is export.calibrated.write_calibrated_version
    assert export.export_model is export.savedmodel.export_model
    for name in export.__all__:
        assert getattr(export, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'export_models'"):
        export.export_models  # noqa: B018


# --- case 9: every metadata field typed and bounded ---------------------------------------------

TAMPERED = [
    ("float_signature", "nope", "'float_signature' must be 'serve_float'"),
    ("float_signature", "serving_default", "'float_signature' must be 'serve_float'"),
    ("stride_signature", "serve_float", "'stride_signature' must be 'serve_with_stride'"),
    ("threshold", BIG, "'threshold' must be a finite number, got an integer of 401 digits"),
    ("threshold", -BIG, "'threshold' must be a finite number"),
    ("observation_std", BIG, "'observation_std' must be a finite number > 0"),
    ("map_sigma", BIG, "'map_sigma' must be a number >= 0 and at most 65536"),
    ("scale", BIG, "'scale' must be a number > 0 and <= 1"),
    ("uint8_scale", BIG, "'uint8_scale' must be a number > 0 and <= 1"),
    ("name", "a\x00b", "'name' must be a plain folder name"),
    ("name", "../escape", "'name' must be a plain folder name"),
    ("name", "x" * 300, "'name' must be a plain folder name"),
    ("kind", "ssim\n", "'kind' must be a plain name"),
    ("residual", "a/b", "'residual' must be a plain name"),
    ("input_name", "image\x00", "'input_name' must be a name of letters, digits and _"),
    ("source", "/runs/a\x00b.keras", "'source' must be a path (a line of text)"),
    ("created", "x" * 10**6, "'created' must be a line of text, got 'xxxxx"),
    ("chunk_size", 2**62, f"'chunk_size' must be a positive integer of at most {MAX_CHUNK_SIZE}"),
    ("chunk_size", 0, f"'chunk_size' must be a positive integer of at most {MAX_CHUNK_SIZE}"),
    ("opening_diameter", 3000, f"'opening_diameter' must be an integer from 0 to {MAX_OPENING_DIAMETER}"),
    ("vae_samples", 2**62, "'vae_samples' must be an integer from 1 to 1000"),
    ("vae_seed", 2**62, "'vae_seed' must be an integer from 0 to 2147483647"),
    ("patch_size", BIG, "'patch_size' must be a positive integer of at most 65536"),
    ("version", 2**63, "'version' must be a version number from 1 to 9223372036854775807"),
    ("calibrated_from", 0, "'calibrated_from' must be a version number from 1"),
    ("min_area", BIG, "'min_area' must be an integer from 0 to"),
    ("latent_dim", BIG, "'latent_dim' must be an integer from 1 to"),
    ("image_size", [BIG, 64], "'image_size' must be a list of two positive integers [height, width], each at"),
    ("outputs", ["anomaly_map", "../x"], "'outputs' must be a list of output names"),
    ("outputs", ["reconstruction"], "'outputs' must be a list of output names"),
    ("output_shapes", {"anomaly_map": "[H, W]\n"}, "'output_shapes' must be an object of a line of text"),
    ("signatures", {"evil": {}}, "'signatures' must be an object describing the signatures"),
    ("ssim", {"sigma": BIG}, "'ssim' is not a valid SSIM parameter set: SSIM sigma must be a finite number"),
    ("ssim", {"sigma": "abc"}, "'ssim' is not a valid SSIM parameter set: SSIM sigma must be a finite number"),
    ("ssim", {"alpha": BIG}, "'ssim' is not a valid SSIM parameter set: SSIM alpha must be a finite number"),
    ("ssim", {"window_size": 33}, "'ssim' has window_size 33, larger than its 32x32 patch"),
    ("training_config__val_split", "abc", "'training_config' entry 'val_split' must be a number >= 0 and < 1"),
    ("training_config__val_split", BIG, "'training_config' entry 'val_split' must be a number >= 0 and < 1"),
    ("training_config__seed", -1, "'training_config' entry 'seed' must be an integer >= 0"),
    ("training_config__epochs", "10", "'training_config' entry 'epochs' must be an integer >= 1"),
    ("training_config__patch_size", 8.5, "'training_config' entry 'patch_size' must be an integer >= 16"),
    ("training_config__scale", 0, "'training_config' entry 'scale' must be a number > 0 and <= 1"),
    ("training_config__image_size", "64x64", "'training_config' entry 'image_size' must be null or a list"),
]


@pytest.mark.parametrize(("key", "value", "message"), TAMPERED, ids=[f"{k}={str(v)[:12]!r}" for k, v, _ in TAMPERED])
def test_every_tampered_field_is_one_input_error_line(exports, key, value, message):
    values = json.loads((exports[0] / METADATA_FILE).read_text())
    if key.startswith("training_config__"):
        values["training_config"] = {**(values.get("training_config") or {}), key.split("__", 1)[1]: value}
    else:
        values[key] = value
    with pytest.raises(InputError) as info:  # not an OverflowError, KeyError or TypeError
        ExportMetadata.from_dict(values, source="x.json")
    text = str(info.value)
    assert text.startswith("x.json: ") and message in text, text
    assert "\n" not in text and len(text) < 600, text[:1000]


def test_a_400_digit_threshold_in_the_file_is_refused_by_every_reader(model):
    from tfssim.export.metadata import read_export_metadata

    version = model / "1"
    file = version / METADATA_FILE
    file.write_text(file.read_text().replace('"threshold": null', '"threshold": ' + "9" * 400))
    for read in (ExportMetadata.read, read_export_metadata):
        with pytest.raises(InputError, match="'threshold' must be a finite number, got an integer of 400 digits"):
            read(version)
    # What the client and the post-processor take from Python: no OverflowError either.
    for settings in ({"threshold": BIG}, {"threshold": 0.5, "min_area": BIG}, {"threshold": 0.5, "opening_diameter": BIG}):
        with pytest.raises(InputError, match="must be a"):
            postprocess.PostProcessor.from_metadata(None, **settings)


def test_a_huge_threshold_or_fpr_given_in_python_is_refused_before_anything_is_written(model, tmp_path):
    before = digest(model)
    for args in ((BIG,), (-BIG,), (0.5, BIG), (0.5, 1.0), ("0.5",)):
        with pytest.raises(InputError, match="must be a"):
            export.write_calibrated_version(model / "1", *args)
    with pytest.raises(InputError, match="threshold must be a finite number, got an integer of 401 digits"):
        export.export_model(tmp_path / "no_model.keras", tmp_path / "out", name="m", threshold=BIG)
    assert digest(model) == before and not (tmp_path / "out").exists()


def test_an_opening_too_wide_is_a_clear_error_everywhere():
    import numpy as np

    with pytest.raises(InputError, match=f"must be at most {MAX_OPENING_DIAMETER} pixels"):
        postprocess.PostProcessor.from_metadata(None, threshold=0.5, opening_diameter=3000)
    with pytest.raises(InputError, match=f"opening diameter must be at most {MAX_OPENING_DIAMETER} pixels"):
        postprocess.segment(np.zeros((8, 8)), 0.5, opening_diameter=3000)  # was a MemoryError with no text
    assert postprocess.segment(np.ones((80, 80)), 0.5, opening_diameter=MAX_OPENING_DIAMETER).any()


@pytest.mark.parametrize(("key", "value"), [
    ("float_signature", "nope"), ("threshold", BIG), ("name", "a\x00b"), ("training_config__val_split", "abc"),
    ("chunk_size", 2**62), ("opening_diameter", 3000),
])
def test_commands_refuse_a_tampered_export_in_one_line(model, dataset, tmp_path, key, value):
    from tfssim.cli.calibrate import main as calibrate_cli
    from tfssim.cli.evaluate import main as evaluate_cli
    from tfssim.cli.predict import main as predict_cli
    from tfssim.cli.tune import main as tune_cli

    tamper(model / "1", **{key: value})
    before = digest(model)
    name = key.split("__")[0]
    runs = [
        (predict_cli, [str(model), str(dataset / "test"), "-o", str(tmp_path / "out")]),
        (calibrate_cli, [str(model / "1"), str(dataset / "val")]),
        (evaluate_cli, [str(dataset), str(model / "1"), "-o", str(tmp_path / "eval")]),
        (tune_cli, [str(model / "1"), str(dataset / "val"), "-o", str(tmp_path / "tune")]),
    ]
    for cli, args in runs:
        line = one_error(CliRunner().invoke(cli, args))
        assert f"'{name}'" in line and str(model / "1" / METADATA_FILE) in line, (cli.name, line)
    assert digest(model) == before and sorted(p.name for p in model.iterdir()) == ["1"]


def test_the_split_settings_check_what_they_read():
    from tfssim.evaluation.splits import split_settings

    assert split_settings([{"val_split": 0.2, "seed": 3}], None, None) == (0.2, 3, [])
    with pytest.raises(InputError, match="export a: training_config val_split must be a number >= 0 and < 1, got 'abc'"):
        split_settings([{"val_split": "abc"}], None, None, names=["a"])
    with pytest.raises(InputError, match="training_config seed must be an integer >= 0"):
        split_settings([{"seed": [1]}], 0.1, None)
    assert split_settings([{"val_split": "abc"}], 0.3, 1) == (0.3, 1, [])  # given: not read


@pytest.mark.parametrize("value", [str(2**62), str(MAX_CHUNK_SIZE + 1), "0", "-1", "2.5"])
def test_tfssim_export_refuses_a_chunk_size_the_graph_cannot_run(tmp_path, value):
    from tfssim.cli.export import main as export_cli

    line = one_error(CliRunner().invoke(export_cli, [str(tmp_path), "--name", "m", "--chunk-size", value,
                                                     "-o", str(tmp_path / "out")]))
    assert "--chunk-size" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [2**62, MAX_CHUNK_SIZE + 1, 0, True, 2.5, "64"])
def test_export_model_checks_the_chunk_size_by_the_metadata_rule(tmp_path, value):
    with pytest.raises(InputError, match=f"chunk size must be a positive integer of at most {MAX_CHUNK_SIZE}"):
        export.export_model(tmp_path / "no_model.keras", tmp_path / "out", name="m", chunk_size=value)
    assert not (tmp_path / "out").exists()


def test_the_graph_refuses_the_same_chunk_sizes_while_tracing():
    import numpy as np

    from tfssim.core import tiling

    image = np.zeros((16, 16, 1), np.float32)
    for value in (2**62, MAX_CHUNK_SIZE + 1):
        with pytest.raises(InputError, match=f"chunk size must be a positive integer of at most {MAX_CHUNK_SIZE}"):
            tiling.reconstruct(lambda tiles: tiles, image, 8, 4, chunk_size=value)
        with pytest.raises(InputError, match="chunk size must be a positive integer of at most"):
            tiling.map_in_chunks(lambda tiles: tiles, np.zeros((3, 2), np.float32), chunk_size=value)
    assert tiling.reconstruct(lambda tiles: tiles, image, 8, 4, chunk_size=MAX_CHUNK_SIZE).shape == (16, 16, 1)
