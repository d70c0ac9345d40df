"""tfssim: unsupervised defect segmentation with structural-similarity autoencoders.

An implementation of Bergmann et al. 2019, "Improving Unsupervised Defect Segmentation by
Applying Structural Similarity to Autoencoders", for TensorFlow 2.16+ / Keras 3.

Submodules are imported lazily so that ``import tfssim`` stays cheap and a post-processing
script does not pay for Keras start-up. ``serving.postprocess``, ``serving.client``,
``evaluation.metrics``, ``export.metadata``, ``plots`` and the readers of ``data`` import no
TensorFlow (and no Keras): a service that calls TF Serving can use them after ``pip install tfssim`` alone.
"""
from __future__ import annotations

from tfssim._lazy import lazy_names

__version__ = "0.1.0"

_SUBMODULES = ("core", "data", "models", "training", "export", "serving", "evaluation", "plots", "run_record",
               "errors")


__getattr__, __dir__ = lazy_names(__name__, {}, _SUBMODULES, light=tuple(f"{__name__}.{name}" for name in _SUBMODULES))
