"""tfssim: unsupervised defect segmentation with structural-similarity autoencoders.

An implementation of Bergmann et al. 2019, "Improving Unsupervised Defect Segmentation by
Applying Structural Similarity to Autoencoders", for TensorFlow 2.16+ / Keras 3.

Submodules are imported lazily so that ``import tfssim`` stays cheap and a post-processing
script does not pay for Keras start-up. ``serving.postprocess``, ``serving.client``,
``evaluation.metrics``, ``export.metadata``, ``plots`` and the readers of ``data`` import no
TensorFlow (and no Keras): a service that calls TF Serving can use them after ``pip install tfssim`` alone.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("core", "data", "models", "training", "export", "serving", "evaluation", "plots", "run_record",
               "errors")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'tfssim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES))
