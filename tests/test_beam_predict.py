"""tfssim-predict --runner (tfssim.serving.beam) against the local tfssim-predict on the same images.

The local path is the reference: every file the Beam pipeline writes must equal the local one
(maps to 1e-6, masks, overlays and region tables exactly, summary.json the same). The runner is
Beam's FnApiRunner, the Python engine behind the DirectRunner: from Beam 2.68 the DirectRunner
first tries the Prism runner, which downloads a binary, so a test naming it would depend on the
network. ``direct_num_workers`` / ``direct_running_mode`` are that engine's options.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from skimage import io

from tfssim import data
from tfssim.cli.predict import main as predict_cli
from tfssim.serving.prediction import OUTPUT_SUFFIXES

try:
    import apache_beam  # noqa: F401
except ImportError:
    HAVE_BEAM = False
else:
    HAVE_BEAM = True
needs_beam = pytest.mark.skipif(not HAVE_BEAM, reason="apache_beam is not installed (pip install 'tfssim[beam]'; "
                                                      "CI installs it)")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """8 brick images of 64x80 and one corrupt file among them."""
    ds = data.texture_dataset("brick", n_val=1, n_test=8, test_size=(64, 80), seed=5)
    root = data.write_dataset(ds, tmp_path_factory.mktemp("beam") / "brick")
    folder = root / "test"
    (folder / "brick_test_004b.png").write_bytes(b"not a png")
    return folder


@pytest.fixture(scope="module")
def local(exports, images, tmp_path_factory):
    """The local tfssim-predict's output folder on ``images`` (the reference)."""
    out = tmp_path_factory.mktemp("local") / "pred"
    result = CliRunner().invoke(predict_cli, [str(exports[0]), str(images), "-o", str(out), "--threshold", "0.3"])
    assert result.exit_code == 1, result.output  # the corrupt image
    return out


def _predict(exports, images, out, *beam_args):
    return CliRunner().invoke(predict_cli, [str(exports[0]), str(images), "-o", str(out), "--threshold", "0.3",
                                            "--runner", "FnApiRunner", *beam_args])


def _assert_same_outputs(local, beam):
    summary = json.loads((local / "summary.json").read_text())
    on_beam = json.loads((beam / "summary.json").read_text())
    # The graph's time differs from run to run; each path counts the 8 images it scored.
    assert summary.pop("seconds_per_megapixel") > 0 and on_beam.pop("seconds_per_megapixel") > 0
    assert on_beam == summary and summary["stride"] == 16
    assert len(summary["processed"]) == 8 and len(summary["failed"]) == 1 and "004b" in summary["failed"][0]
    names = sorted(p.name for p in local.iterdir() if not p.name.startswith("."))
    assert sorted(p.name for p in beam.iterdir() if not p.name.startswith(".")) == names
    assert len(names) == 8 * len(OUTPUT_SUFFIXES) + 1
    for name in names:
        if name.endswith(".tif"):
            np.testing.assert_allclose(io.imread(beam / name), io.imread(local / name), rtol=0, atol=1e-6)
        elif name.endswith(".png"):
            np.testing.assert_array_equal(io.imread(beam / name), io.imread(local / name))
        elif name != "summary.json":  # compared above
            assert json.loads((beam / name).read_text()) == json.loads((local / name).read_text()), name
    assert not list(beam.glob(".*.tmp*"))  # no temporary file of an atomic write left behind


@needs_beam
def test_beam_in_process_writes_what_the_local_path_writes(exports, images, local, tmp_path):
    out = tmp_path / "beam"
    result = _predict(exports, images, out)
    assert result.exit_code == 1, result.output  # the corrupt image is a failure, as locally
    assert "1 of 9 image(s) could not be processed" in result.output and "Traceback" not in result.output
    _assert_same_outputs(local, out)


@needs_beam
@pytest.mark.slow  # two worker processes each import TensorFlow and load the export (about 15 s here)
def test_beam_two_worker_processes_write_what_the_local_path_writes(exports, images, local, tmp_path):
    out = tmp_path / "beam"
    result = _predict(exports, images, out, "--", "--direct_num_workers", "2",
                      "--direct_running_mode", "multi_processing")
    assert result.exit_code == 1, result.output
    _assert_same_outputs(local, out)


@needs_beam
@pytest.mark.parametrize("beam_args, message", [
    (["--runner", "NoSuchRunner"], "cannot use the Beam runner 'NoSuchRunner': Unexpected pipeline runner"),
    (["--runner", "DirectRunner", "--", "--direct_num_workers", "two"], "invalid int value: 'two'"),
    (["--runner", "DirectRunner", "--", "--no_such_option", "1"], "unknown Beam pipeline option(s): --no_such_option"),
    (["--runner", "DirectRunner", "--", "--runner", "FnApiRunner"], "give the Beam runner once"),
])
def test_beam_runner_errors_are_one_line_before_anything_is_written(exports, images, tmp_path, beam_args, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(predict_cli, [str(exports[0]), str(images), "-o", str(out), "--threshold", "0.3",
                                              *beam_args])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output, result.output
    assert not out.exists()


@needs_beam
def test_beam_refuses_an_output_folder_as_the_local_path_does(exports, images, local, tmp_path):
    from tfssim._io import output_dir_lock

    # A folder in use by another tfssim-predict: the same line, local or Beam, nothing written.
    held = tmp_path / "held"
    held.mkdir()
    outputs = {}
    with output_dir_lock(held, "tfssim-predict"):
        for name, extra in (("local", []), ("beam", ["--runner", "FnApiRunner"])):
            result = CliRunner().invoke(predict_cli, [str(exports[0]), str(images), "-o", str(held),
                                                      "--threshold", "0.3", *extra])
            assert result.exit_code == 2, result.output
            outputs[name] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert outputs["local"] == outputs["beam"] and "is in use by tfssim-predict" in outputs["beam"][0]
    assert sorted(p.name for p in held.iterdir()) == [".tfssim-output.lock"]
    # The input folder as output: refused by the same check before the pipeline starts.
    result = _predict(exports, images, images / "out")
    assert result.exit_code == 2 and "lies inside the input" in result.output and not (images / "out").exists()


@needs_beam
def test_a_rerun_into_an_earlier_runs_folder_is_refused_by_both_paths(exports, images, local, tmp_path):
    before = {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}
    lines = []
    for args in ([], ["--runner", "FnApiRunner"]):
        result = CliRunner().invoke(predict_cli, [str(exports[0]), str(images), "-o", str(local), "--threshold", "0.3",
                                                  *args])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
        lines.append(line)
    assert lines[0] == lines[1] and "summary.json exists" in lines[0] and "never overwritten" in lines[0]
    assert {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()} == before


def test_runner_without_beam_names_the_install_command(run_without_tensorflow, exports, images, tmp_path):
    code = """
import importlib.abc, sys
class _NoBeam(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "apache_beam" or name.startswith("apache_beam."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, _NoBeam())
import importlib.util
sys.meta_path = [f for f in sys.meta_path if type(f).__name__ != "_NoTensorFlow"]  # TensorFlow stays
from tfssim.cli.predict import main
main(sys.argv[1:])
"""
    out = tmp_path / "out"
    result = run_without_tensorflow(code, str(exports[0]), str(images), "-o", str(out), "--threshold", "0.3",
                                    "--runner", "DirectRunner")
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "pip install 'tfssim[beam]'" in errors[0] and "Traceback" not in result.stderr
    assert not out.exists()


@needs_beam
def test_beam_with_masks_draws_the_same_contours_and_counts_the_same_missing_masks(exports, images, tmp_path):
    import shutil

    masks = shutil.copytree(images.parent / "ground_truth", tmp_path / "gt")
    removed = sorted(masks.iterdir())[0]
    removed.unlink()  # one image without a mask: a warning locally, counted on both paths
    outputs = {}
    for name, extra in (("local", []), ("beam", ["--runner", "FnApiRunner"])):
        out = tmp_path / name
        result = CliRunner().invoke(predict_cli, [str(exports[0]), str(images), "-o", str(out), "--threshold", "0.3",
                                                  "--masks", str(masks), *extra])
        assert result.exit_code == 1, result.output  # the corrupt image
        outputs[name] = out
    local, beam = (json.loads((outputs[k] / "summary.json").read_text()) for k in ("local", "beam"))
    assert local["images_without_mask"] == beam["images_without_mask"] == 1
    overlays = sorted(p.name for p in outputs["local"].glob("*_overlay.png"))
    assert len(overlays) == 8
    for name in overlays:  # the ground truth's contours drawn alike
        np.testing.assert_array_equal(io.imread(outputs["beam"] / name), io.imread(outputs["local"] / name))
