"""Export a trained model as a TensorFlow Serving SavedModel that maps whole images to anomaly maps.

Layout (TensorFlow Serving's): ``<output_root>/<name>/<version>/`` with ``saved_model.pb``,
``variables/``, ``assets/tfssim.json`` (metadata for the post-processor) and
``assets.extra/tf_serving_warmup_requests``. The export is built in a hidden temporary folder
beside its destination (``.<version>.partial-*``, which TF Serving ignores: not an integer) and
renamed into place only when complete; an existing version is never overwritten. A version chosen
automatically (no ``version``) that a concurrent export takes meanwhile becomes the next free one.
Such a folder left by a killed export is removed by a later export of the same model once it is
provably dead: the process recorded in it no longer runs, or (where that cannot be told) it is
older than :data:`PARTIAL_MAX_AGE_S`.

Signatures (each takes one image, ``[H, W, C]`` or ``[1, H, W, C]``, ``H, W >= patch``, or
what resizes to it, see below; a SavedModel signature cannot have optional inputs, so the
default stride has its own ones):

* ``serving_default``: ``image`` uint8 (0..255), stride fixed at export time;
* ``serve_float``: ``image`` float32 in [0, 1], the same stride;
* ``serve_with_stride``: ``image`` float32 in [0, 1] and ``stride`` int32 scalar in ``[1, patch]``.

Outputs, all float32 at the input's size: ``reconstruction [H, W, C]``, ``anomaly_map [H, W]``
and, for SSIM models, ``luminance_map``, ``contrast_map`` and ``structure_map`` (``1 -`` each
SSIM component). Tiling, chunked reconstruction, overlap averaging and the residual map all
run inside the graph (:mod:`tfssim.core.tiling`, :mod:`tfssim.models.scoring`); a bad request (wrong rank,
batch, channel count, an image smaller than the patch, a stride out of range, float values
outside [0, 1]) fails with ``INVALID_ARGUMENT`` and a readable message.

A model trained on resized images (``tfssim-train --scale S`` or ``--image-size H W``) is
exported with the same resizing inside the graph (:mod:`tfssim.core.resize`, anti-aliased bilinear):
each request is resized, tiled, reconstructed and scored at that size, and the reconstruction and
every map are resized back to the request's height and width; the metadata records ``scale``,
``image_size`` and ``interpolation``. A scaled export takes images whose sides, once scaled, hold
a patch (``ExportMetadata.min_input_size``); one with an ``image_size`` takes any size.

The package, by seam: :mod:`~tfssim.export.savedmodel` (:func:`export_model`, which ties the
others together), :mod:`~tfssim.export.source` (loading a run folder or ``.keras`` file, its
checkpoint), :mod:`~tfssim.export.graph` (the serving functions), :mod:`~tfssim.export.warmup`
(the warm-up file), :mod:`~tfssim.export.layout` (the version-folder rule, what a version may
hold, the no-replace rename, partial folders), :mod:`~tfssim.export.metadata` (``assets/tfssim.json``:
:class:`ExportMetadata`) and :mod:`~tfssim.export.calibrated`
(:func:`write_calibrated_version`: a threshold as a new version).

Importing this package loads no TensorFlow: the layout's names are imported at once (the
TensorFlow-free :mod:`tfssim.export.metadata` and :mod:`tfssim.serving.inference` use its version rule), every
other name on first use (PEP 562 module ``__getattr__``), so ``from tfssim import export;
export.export_model(...)`` imports TensorFlow only at that call's name lookup.

Example:
    >>> path = export_model("runs/nanotwice_ssim", name="nanotwice", stride=30)
    >>> fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    >>> fn(image=tf.constant(uint8_image))["anomaly_map"]
"""
from __future__ import annotations

from tfssim._lazy import lazy_names
from tfssim.export.layout import (
    MAX_VERSION,
    MAX_VERSION_RETRIES,
    METADATA_FILE,
    PARTIAL_MAX_AGE_S,
    check_name,
    check_version_files,
    copy_version,
    list_versions,
    newest_version,
    next_version,
    parse_version,
    resolve_export_dir,
    version_folder,
)

# Names served by a submodule that imports TensorFlow (or tfssim.export.metadata, which imports this
# package's layout: importing it here would be circular): resolved on first access only.
_LAZY = {
    "export_model": "tfssim.export.savedmodel",
    "DEFAULT_SSIM": "tfssim.export.savedmodel",
    "GRAPH_METADATA_KEYS": "tfssim.export.savedmodel",
    "read_export_metadata": "tfssim.export.metadata",
    "write_calibrated_version": "tfssim.export.calibrated",
    "SIGNATURES": "tfssim.export.graph",
    "VAE_SEED": "tfssim.export.graph",
    "load_for_export": "tfssim.export.source",
    "checkpoint_info": "tfssim.export.source",
    "describe_checkpoint": "tfssim.export.source",
    "training_running": "tfssim.export.source",
    "warmup_record": "tfssim.export.warmup",
    "WARMUP_FILE": "tfssim.export.warmup",
    "ExportMetadata": "tfssim.export.metadata",
}
_SUBMODULES = ("calibrated", "graph", "layout", "metadata", "savedmodel", "source", "warmup")

__all__ = [
    "export_model",
    "read_export_metadata",
    "resolve_export_dir",
    "write_calibrated_version",
    "version_folder",
    "next_version",
    "newest_version",
    "list_versions",
    "parse_version",
    "check_name",
    "check_version_files",
    "copy_version",
    "load_for_export",
    "warmup_record",
    "METADATA_FILE",
    "WARMUP_FILE",
    "SIGNATURES",
    "checkpoint_info",
    "describe_checkpoint",
    "training_running",
    "MAX_VERSION",
    "MAX_VERSION_RETRIES",
    "PARTIAL_MAX_AGE_S",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, _SUBMODULES, light=("tfssim.export.calibrated", "tfssim.export.layout", "tfssim.export.metadata"))
