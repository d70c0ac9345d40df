"""Bad input is one ``Error:`` line and exit 2; a ValueError from inside a library we call is a bug."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from skimage import io

from tfssim.errors import InputError, input_checks


@pytest.fixture()
def calibrate_inputs(tmp_path: Path) -> tuple[str, str]:
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    image = tmp_path / "good.png"
    io.imsave(image, np.full((40, 40), 128, np.uint8), check_contrast=False)
    return str(export_dir), str(image)


def _keras_like_failure(*args, **kwargs):
    # What a Keras/TensorFlow bug looks like from the command: a plain ValueError deep in a call.
    import keras

    keras.layers.Conv2D(1, 3)(np.zeros((4, 4), np.float32))  # Keras's input check: ValueError, expected ndim=4
    raise AssertionError("keras accepted a 2-D input to Conv2D")


def test_a_valueerror_from_inside_keras_keeps_its_traceback_and_exits_1(calibrate_inputs, monkeypatch):
    from tfssim.cli.calibrate import main
    from tfssim.serving.inference import ExportedModel

    monkeypatch.setattr(ExportedModel, "load", classmethod(lambda cls, path: _keras_like_failure()))
    result = CliRunner().invoke(main, list(calibrate_inputs))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, ValueError) and not isinstance(result.exception, InputError)
    assert "Error:" not in result.output  # not reported as bad input
    # The traceback reaches into Keras: it is there for the bug report.
    frames = [frame.filename for frame in __import__("traceback").extract_tb(result.exc_info[2])]
    assert any("keras" in name for name in frames), frames


def test_an_input_error_is_one_error_line_and_exit_2(calibrate_inputs, monkeypatch):
    from tfssim.cli.calibrate import main
    from tfssim.serving.inference import ExportedModel

    def refuse(cls, path):
        raise InputError(f"export {path} is not what it should be; re-export it")

    monkeypatch.setattr(ExportedModel, "load", classmethod(refuse))
    result = CliRunner().invoke(main, list(calibrate_inputs))
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error:")] == [
        f"Error: export {calibrate_inputs[0]} is not what it should be; re-export it"]
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_an_internal_valueerror_in_a_real_process_prints_a_traceback(tmp_path: Path):
    """End to end: the console entry point, not CliRunner, shows the traceback and exits 1."""
    script = (
        "import sys\n"
        "from tfssim.serving.inference import ExportedModel\n"
        "def broken(cls, path):\n"
        "    raise ValueError('internal: shapes do not match')\n"
        "ExportedModel.load = classmethod(broken)\n"
        "from tfssim.cli.calibrate import main\n"
        "main()\n"
    )
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    image = tmp_path / "good.png"
    io.imsave(image, np.full((40, 40), 128, np.uint8), check_contrast=False)
    done = subprocess.run([sys.executable, "-c", script, str(export_dir), str(image)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr and "ValueError: internal: shapes do not match" in done.stderr
    assert not [line for line in done.stderr.splitlines() if line.startswith("Error:")]


def test_input_error_is_a_valueerror_and_input_checks_converts():
    assert issubclass(InputError, ValueError)
    with pytest.raises(InputError, match="window 4"):
        with input_checks():
            raise ValueError("window 4 is even")
    with pytest.raises(KeyError):  # only ValueError becomes bad input
        with input_checks():
            raise KeyError("x")


def test_library_input_checks_raise_input_error():
    from tfssim.training import TrainConfig

    with pytest.raises(InputError, match="epochs"):
        TrainConfig(data="d", output="o", epochs=0).validate()
    with pytest.raises(InputError, match="window"):  # tfssim.core.ssim's check, reached through the config
        TrainConfig(data="d", output="o", ssim_window=4).validate()
