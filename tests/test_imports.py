"""The TensorFlow-free part of tfssim: what a TF Serving client needs imports and runs without TensorFlow."""
from __future__ import annotations

import json

import pytest

# Every module a client without TensorFlow uses (issue 15: post-processing, metrics, image and mask
# reading, plots, the metadata type, the REST client).
TF_FREE = ["tfssim", "tfssim.serving.postprocess", "tfssim.evaluation.metrics", "tfssim.data", "tfssim.data.io", "tfssim.data.layouts",
           "tfssim.data.synthetic", "tfssim.plots", "tfssim.export.metadata", "tfssim.core.tiling_params", "tfssim.serving.client", "tfssim._io",
           # the run folder's schema (shared with scripts/train_any_backend.py on JAX) and the evaluation's
           # split and per-type rules
           "tfssim.run_record", "tfssim.evaluation.splits", "tfssim.evaluation.per_type",
           # the training settings with their defaults and choice lists (the CLIs' --help, the JAX script)
           "tfssim.training", "tfssim.training.config", "tfssim.models", "tfssim.models.kinds",
           "tfssim.evaluation.calibration",
           # every command: its options and --help come without TensorFlow (the library loads it on use)
           "tfssim.cli.train", "tfssim.cli.export", "tfssim.cli.calibrate", "tfssim.cli.tune", "tfssim.cli.predict",
           "tfssim.cli.evaluate", "tfssim.cli.demo"]

_USE_WITHOUT_TENSORFLOW = """
import importlib, json, sys, tempfile
from pathlib import Path

try:
    import tensorflow  # noqa: F401
    blocked = False
except ModuleNotFoundError:
    blocked = True
for name in sys.argv[1:]:
    importlib.import_module(name)
import numpy as np
from skimage import io

import tfssim
from tfssim import data, plots
from tfssim.evaluation import metrics
from tfssim.serving import postprocess

assert tfssim.serving.client.ServingClient and tfssim.export.metadata.ExportMetadata  # lazy attributes of the package

# ... and they run: read an image and a mask, post-process a map, score it, draw a figure.
folder = Path(tempfile.mkdtemp())
image = np.zeros((40, 48), np.uint8)
image[10:20, 10:30] = 255
io.imsave(folder / "a.png", image, check_contrast=False)
io.imsave(folder / "a_gt.png", image, check_contrast=False)
read = data.read_image(folder / "a.png")
mask = data.read_mask(folder / "a_gt.png")
found = postprocess.PostProcessor(threshold=0.5)(read)
auroc = metrics.pixel_roc_auc([read[..., 0] + 0.1 * np.random.default_rng(0).random((40, 48))], [mask])
figure = plots.plot_roc_curves({"x": (np.array([0, 1.0]), np.array([0, 1.0]), 0.5)}, folder / "roc.png")
try:
    from tfssim.data import patch_dataset  # noqa: F401  (the tf.data pipeline: needs TensorFlow)
    lazy_error = None
except ModuleNotFoundError as err:
    lazy_error = err.name
from tfssim.training.config import TrainConfig

config = TrainConfig(data=str(folder), output=str(folder / "run"), model="vae", patch_size=64)
config.validate()  # the model kind, layout, precision and architecture checks, all without Keras
lazy_errors = []
for package, name in (("tfssim.training", "train"), ("tfssim.models", "get_spec")):
    try:
        getattr(importlib.import_module(package), name)
    except ImportError as err:  # the install command, from tfssim._tensorflow
        lazy_errors.append("install" in str(err))
print(json.dumps({
    "blocked": blocked,
    "loaded": sorted(m for m in ("tensorflow", "keras", "tf_keras", "jax", "torch") if m in sys.modules),
    "image": list(read.shape), "mask_pixels": int(mask.sum()), "regions": len(found[1]),
    "region_area": found[1][0]["area"], "auroc": auroc, "figure": figure.stat().st_size > 0,
    "lazy_error": lazy_error, "config_channels": config.channels, "lazy_errors": lazy_errors,
}))
"""


def test_client_modules_import_and_run_where_tensorflow_cannot_be_imported(run_without_tensorflow):
    done = run_without_tensorflow(_USE_WITHOUT_TENSORFLOW, *TF_FREE)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["blocked"], "the subprocess could import tensorflow: this test would prove nothing"
    assert result["loaded"] == []  # neither TensorFlow nor Keras (which would import its backend)
    assert result["image"] == [40, 48, 1] and result["mask_pixels"] == 200
    # one region: the 10x20 rectangle less its 4 corner pixels, which the opening's diameter-4 disk
    # (a 4x4 square without its corners) cannot reach
    assert result["regions"] == 1 and result["region_area"] == 196
    assert result["auroc"] == pytest.approx(1.0)
    assert result["figure"]
    # the tf.data names are still there, and fail only on use, naming the missing module
    assert result["lazy_error"] == "tensorflow"
    # TrainConfig checks a run without Keras; training and model building name the install command
    assert result["config_channels"] == 1
    assert result["lazy_errors"] == [True, True]


def test_the_training_and_model_names_resolve_lazily_to_their_modules():
    import tfssim.models
    import tfssim.models.kinds
    import tfssim.models.registry
    import tfssim.training
    import tfssim.training.loop

    assert tfssim.training.train is tfssim.training.loop.train
    assert tfssim.models.get_spec is tfssim.models.registry.get_spec
    assert tfssim.models.get_spec("fm").residual == tfssim.models.kinds.get_kind("fm").residual == "l2"
    for package in (tfssim.training, tfssim.models):
        assert set(package.__all__) <= set(dir(package))
        with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
            package.nothing  # noqa: B018


def test_the_tf_data_names_of_tfssim_data_resolve_lazily_to_the_pipeline():
    import tfssim.data
    import tfssim.data.patches

    for name in ("patch_dataset", "fixed_patches", "steps_per_epoch", "validate_images"):
        assert name in tfssim.data.__all__ and name in dir(tfssim.data)
        assert getattr(tfssim.data, name) is getattr(tfssim.data.patches, name)
    from tfssim.data import steps_per_epoch

    assert steps_per_epoch(100, 32) == tfssim.data.patches.steps_per_epoch(100, 32)
    with pytest.raises(AttributeError, match="has no attribute 'patch_datasets'"):
        tfssim.data.patch_datasets  # noqa: B018
