"""Session-wide fixtures: the tiny dataset and exports that the inference tests share (built once)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The scripts' own helper modules (``_experiments``, ``_provenance``) import as the scripts import them.
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A tiny brick-texture dataset in the plain-folder layout: 1 train, 2 val, 3 defective 64x80 test images."""
    from tfssim import data

    ds = data.texture_dataset("brick", n_val=2, n_test=3, test_size=(64, 80), seed=1)
    return data.write_dataset(ds, tmp_path_factory.mktemp("data") / "brick")


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> list[Path]:
    """Untrained 32x32 SSIM and l2 exports (stride 16), no threshold. Tests copy them before changing them."""
    from tfssim import export
    from tfssim.models import build_model

    root = tmp_path_factory.mktemp("exports")
    return [export.export_model(build_model(kind, 32, 1, 8), root, name=kind, stride=16) for kind in ("ssim", "l2")]


# A meta-path finder that makes `import tensorflow` fail, run before the code of a subprocess: the
# code then behaves as on a machine where only `pip install tfssim` (no TensorFlow) was run.
_BLOCK_TENSORFLOW = '''
import importlib.abc, sys

class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _NoTensorFlow())
'''


@pytest.fixture
def run_without_tensorflow():
    """Run Python ``code`` in a fresh interpreter in which importing ``tensorflow`` fails.

    Returns a function ``(code, *args, timeout=120) -> subprocess.CompletedProcess`` (text output);
    the repository root is put first on ``PYTHONPATH`` so the subprocess imports this checkout.
    """
    import os
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])

    def run(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        return subprocess.run([sys.executable, "-c", _BLOCK_TENSORFLOW + "\n" + code, *args], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=root)

    return run


def load_script(name: str):
    """Import ``scripts/<name>.py`` once as a module (scripts are not a package); tests call its functions."""
    import importlib.util
    import sys

    module_name = f"tfssim_test_script_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def stop_decoding(monkeypatch) -> None:
    """From now on, fail the test if any pixel data is decoded, by Pillow or by tifffile (the
    image reader's decoders; build the test's files first)."""
    import tifffile
    from PIL import Image, ImageFile, ImageOps

    def refuse(*args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(Image.Image, "load", refuse)
    monkeypatch.setattr(ImageOps, "exif_transpose", refuse)
    for owner in (tifffile.TiffFile, tifffile.TiffPage, tifffile.TiffPageSeries):
        monkeypatch.setattr(owner, "asarray", refuse)
