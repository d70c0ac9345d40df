"""Session-wide fixtures: the tiny dataset and exports that the inference tests share (built once)."""
from __future__ import annotations

from pathlib import Path

import pytest


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
