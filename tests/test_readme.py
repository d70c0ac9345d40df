"""The README's Python examples run, and every library name it mentions exists where it says."""
from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_client import no_proxy, stand_in  # noqa: F401 - fixtures: the stand-in TF Serving

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _resolve(dotted: str) -> object:
    """Import the longest module prefix of ``dotted`` and follow the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ModuleNotFoundError(dotted)


def test_every_library_name_in_the_readme_resolves():
    names = set(re.findall(r"`(tfssim(?:\.\w+)+)", README))
    names |= {f"{module}.{name.strip()}" for module, names_ in re.findall(r"from (tfssim[\w.]*) import ([\w, ]+)", README)
              for name in names_.split(",")}
    assert len(names) >= 8, names  # the README names the library's parts: a parse that finds none proves nothing
    for name in sorted(names):
        assert _resolve(name) is not None, name


@pytest.mark.slow  # a model built and fitted for one epoch
def test_the_training_example_runs_on_a_small_dataset(dataset):
    # The example as written, on the tests' dataset and at a size a test can afford.
    code = PYTHON_BLOCKS[0]
    for old, new in (('"path/to/dataset"', repr(str(dataset))), ("patch_size=128", "patch_size=32"),
                     ("20000", "64"), ("latent_dim=100", "latent_dim=8"), ("epochs=200", "epochs=1")):
        assert old in code, old  # the README changed: update the substitution
        code = code.replace(old, new)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    history = namespace["model"].history.history
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])


@pytest.mark.slow  # exports loaded into a serving stand-in
def test_the_serving_example_runs_against_a_serving_stand_in(stand_in, exports, no_proxy, tmp_path):  # noqa: F811
    from tfssim import export

    # the example's model folder: an export with a calibrated threshold as its newest version
    calibrated = export.write_calibrated_version(shutil.copytree(exports[0], tmp_path / "ssim" / "1"), 0.5, fpr=0.01)
    code = PYTHON_BLOCKS[1]
    for old, new in (('"http://localhost:8501"', repr(stand_in.url)), ('"parts"', '"ssim"'),
                     ('"exported_models/parts"', repr(str(calibrated.parent)))):
        assert old in code, old
        code = code.replace(old, new)
    image = (np.random.default_rng(0).random((48, 40, 1)) * 255).astype(np.uint8)
    namespace = {"image": image}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["maps"]["anomaly_map"].shape == (48, 40)
    mask, regions = namespace["mask"], namespace["regions"]
    assert mask.shape == (48, 40) and isinstance(regions, list)


def test_the_readme_has_no_python_example_without_a_test_here():
    assert len(PYTHON_BLOCKS) == 2
