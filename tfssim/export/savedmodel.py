"""Writing a trained model as a TensorFlow Serving version: :func:`export_model` (needs TensorFlow).

The layout, signatures and metadata it writes are described in :mod:`tfssim.export`; this module
ties the seams together: :mod:`~tfssim.export.source` (the model and its settings),
:mod:`~tfssim.export.graph` (the serving functions), :mod:`~tfssim.export.warmup` (the warm-up
file) and :mod:`~tfssim.export.layout` (the version number, the no-replace rename).

Example:
    >>> path = export_model("runs/nanotwice_ssim", name="nanotwice", stride=30)
    >>> fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    >>> fn(image=tf.constant(uint8_image))["anomaly_map"]
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import tfssim._tensorflow  # noqa: F401,I001 - before keras: without TensorFlow, an ImportError naming the install command
import keras
import numpy as np
import tensorflow as tf

from tfssim import __version__
from tfssim.core import resize, tiling, tiling_params
from tfssim.core.map_formula import MapFormula
from tfssim.core.ssim_params import SSIMParams
from tfssim.errors import InputError, input_checks
from tfssim.export.graph import SIGNATURES, VAE_SEED, _model_geometry, _Scorer
from tfssim.export.layout import (
    EXPORT_ROOT,
    MAX_VERSION,
    _move_into_place,
    _record_owner,
    _remove_dead_partials,
    check_loadable_path,
    check_name,
    next_version,
)
from tfssim.export.metadata import ExportMetadata, check_value, renumber_export  # the keys' rules (no TF)
from tfssim.export.source import _report_checkpoint, load_for_export
from tfssim.export.warmup import WARMUP_FILE, _write_warmup
from tfssim.models import MODEL_KINDS, VariationalAutoencoder, get_spec, kind_of, scoring

__all__ = ["DEFAULT_SSIM", "GRAPH_METADATA_KEYS", "export_model"]

logger = logging.getLogger(__name__)
# The paper's SSIM (SSIMParams' defaults) as a dict, for callers that read it by key.
DEFAULT_SSIM = SSIMParams().to_dict()
# Metadata entries that describe the exported graph: export_model's extra_metadata may not set them.
GRAPH_METADATA_KEYS = ("format", "name", "version", "kind", "residual", "patch_size", "channels", "stride",
                       "chunk_size", "ssim", "ssim_padding", "vae_samples", "vae_seed", "observation_std",
                       "map_sigma", "input_name", "uint8_scale", "float_signature", "stride_signature",
                       "signatures", "outputs", "output_shapes", "jit_compile", "scale", "image_size",
                       "interpolation", "border", "blend", "map_formula")


def _resizing(scale: float | None, image_size: Any, training_config: dict[str, Any] | None,
              patch_size: int) -> tuple[float, tuple[int, int] | None]:
    """The export's ``(scale, image_size)``: the arguments, else the training config's, checked."""
    config = training_config if isinstance(training_config, dict) else {}
    if scale is None:
        scale = config.get("scale", 1.0)
    if image_size is None:
        image_size = config.get("image_size")
    scale = resize.check_scale(scale)
    image_size = resize.check_image_size(image_size)
    if image_size is not None and scale != 1.0:
        raise InputError(f"scale {scale:g} and image size {image_size[0]}x{image_size[1]} both resize the "
                         "requests; give one of them")
    if image_size is not None and min(image_size) < patch_size:
        raise InputError(f"image size {image_size[0]}x{image_size[1]} is smaller than the model's "
                         f"{patch_size}x{patch_size} patch; give at least {patch_size}x{patch_size}")
    return scale, image_size


def export_model(
    model_or_path: str | os.PathLike | keras.Model,
    output_root: str | os.PathLike = EXPORT_ROOT,
    name: str = "tfssim",
    version: int | None = None,
    stride: int = tiling_params.DEFAULT_STRIDE,
    kind: str | None = None,
    ssim_kwargs: dict[str, Any] | None = None,
    chunk_size: int = tiling_params.DEFAULT_CHUNK_SIZE,
    training_config: dict[str, Any] | None = None,
    threshold: float | None = None,
    *,
    vae_samples: int | None = None,
    jit_compile: bool = False,
    ssim_overrides: dict[str, Any] | None = None,
    map_sigma: float = tiling_params.DEFAULT_MAP_SIGMA,
    extra_metadata: dict[str, Any] | None = None,
    scale: float | None = None,
    image_size: tuple[int, int] | list[int] | None = None,
    border: str = tiling_params.DEFAULT_BORDER,
    blend: str = tiling_params.DEFAULT_BLEND,
    map_formula: MapFormula | dict[str, Any] | str | None = None,
) -> Path:
    """Write a TF Serving SavedModel of a trained model; return the version folder.

    Args:
        model_or_path: A ``tfssim-train`` run folder (its best model preferred), a ``.keras``
            file or a ``keras.Model``.
        output_root: Folder of exported models: the export goes to ``output_root/name/version``.
        name: Model name (TF Serving's ``--model_name``), a plain folder name.
        version: Positive integer version; default the next free one (if another export takes
            that one while this one is built, the next free one then, up to
            :data:`MAX_VERSION_RETRIES` times). An existing explicit version raises.
        stride: Default tiling stride of the signatures, ``1 <= stride <= patch`` (paper: 30 for 128).
        kind: ``"ssim"``, ``"l2"``, ``"vae"`` or ``"fm"``; default from the run folder or the model.
        ssim_kwargs: SSIM parameters of the anomaly map; default those of training (run
            folder, else the ``.keras`` file's compiled ``SSIMLoss``, else the paper's).
        chunk_size: Tiles per model call inside the graph (bounds memory; see the benchmark), from
            1 to :data:`tfssim.core.tiling_params.MAX_CHUNK_SIZE` (the graph counts tiles in int32).
        training_config: Stored in the metadata (default: the run folder's).
            The metadata's ``checkpoint`` records the file and epoch taken (see
            :func:`load_for_export`); exporting a run folder whose training still holds its
            lock logs a warning.
        threshold: A calibrated threshold to store (see :func:`write_calibrated_version`).
        vae_samples: VAE posterior samples per pixel score (default: training's or the model's).
            The VAE's noise is drawn with seed 0 (metadata ``vae_seed``) for every chunk of
            ``chunk_size`` tiles, so a VAE's maps are deterministic for one export but depend
            on ``chunk_size`` and the image's tiling: compare VAE maps only across exports
            with the same chunk size.
        ssim_overrides: SSIM parameters to change after the defaults above are resolved, e.g.
            ``{"weighting": "uniform"}`` to score with plain patch means (the paper's SSIM
            definition) a model trained with ``tf.image.ssim``'s Gaussian window.
        map_sigma: Gaussian smoothing (standard deviation in pixels) of every served map,
            inside the graph (:func:`tfssim.models.scoring.smooth_map`); 0 (default) serves the maps
            as the paper computes them. Recorded in the metadata as ``map_sigma``, so a
            threshold calibrated on this export applies to the smoothed maps.
        jit_compile: Compile the model call with XLA. Off by default: TensorFlow Serving
            refuses XLA-compiled graphs on CPU unless started with
            ``--xla_cpu_compilation_enabled``.
        extra_metadata: More metadata entries, written with the version (e.g. the
            post-processing and ``tuned`` record of :func:`tfssim.evaluation.tuning.write_tuned_export`);
            entries that describe the graph (:data:`GRAPH_METADATA_KEYS`) are refused.
        scale: The resizing the model was trained with (``tfssim-train --scale``), done inside
            the serving graph: each request is resized by it (:mod:`tfssim.core.resize`), tiled,
            reconstructed and scored at that size, and the reconstruction and every map are
            resized back to the request's height and width. Default: the training config's
            (``training_config``, else the run folder's), else 1 (none: the graph is as without
            resizing). Recorded in the metadata with ``image_size`` and ``interpolation``.
        image_size: ``(height, width)`` every request is resized to instead
            (``tfssim-train --image-size``); default the training config's, else none.
        border: ``"none"`` (the paper) or ``"reflect"``: the graph mirrors each request outward
            by half a patch before tiling and crops every output back
            (:func:`tfssim.models.scoring.anomaly_maps`). Recorded in the metadata as ``border``.
        blend: ``"mean"`` (the paper) or ``"gaussian"``: how overlapping tiles are combined in
            the graph (:func:`tfssim.core.tiling.blend_weights`). Recorded as ``blend``.
        map_formula: How the served ``anomaly_map`` is made (:mod:`tfssim.core.map_formula`; SSIM
            models only): ``None`` is the paper's ``1 - SSIM``; ``tfssim-tune`` chooses the
            others with their normalisation. Recorded as ``map_formula``.

    Returns:
        The version folder ``output_root/name/version``.

    Raises:
        FileExistsError: the version exists. FileNotFoundError: ``model_or_path`` does not.
        ValueError: bad arguments or model.
    """
    check_name(name)
    _check_arguments(stride, chunk_size, threshold)
    if isinstance(model_or_path, keras.Model):
        model, info = model_or_path, {}
    else:
        model, info = load_for_export(model_or_path)
        _report_checkpoint(model_or_path, info.get("checkpoint") or {})
    settings = _settings(model, info, kind=kind, stride=stride, chunk_size=chunk_size, ssim_kwargs=ssim_kwargs,
                         ssim_overrides=ssim_overrides, vae_samples=vae_samples, map_sigma=map_sigma, border=border,
                         blend=blend, map_formula=map_formula, scale=scale, image_size=image_size,
                         training_config=training_config, threshold=threshold, jit_compile=jit_compile)
    clash = sorted(set(extra_metadata or {}) & set(GRAPH_METADATA_KEYS))
    if clash:
        raise InputError(f"extra metadata may not set {clash}: they describe the exported graph")
    model_root, version, auto_version = _claim_version(output_root, name, version)
    archive = _archive(model, settings)
    metadata = _metadata(model, settings, name=name, version=version, extra_metadata=extra_metadata,
                         source=info.get("model_path"), checkpoint=info.get("checkpoint"))
    destination = _write_version(archive, metadata, model_root, version, auto=auto_version, name=name,
                                 settings=settings)
    logger.info("exported %s (%s model, patch %d, stride %d%s)", destination, settings.kind, settings.patch_size,
                settings.stride, "" if resize.is_identity(settings.scale, settings.image_size) else
                f"; requests resized {resize.describe(settings.scale, settings.image_size)} in the graph, "
                "maps at their own size")
    return destination


def _check_arguments(stride: Any, chunk_size: Any, threshold: Any) -> None:
    """Refuse a stride, chunk size or threshold of the wrong type or range, before the model is loaded.

    The stored metadata's rules (:func:`tfssim.export.metadata.check_value`), so that no export is
    written that its own metadata would refuse, or whose graph cannot count its chunks.
    """
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)):
        raise InputError(f"stride must be an integer, got {stride!r}")
    check_value("chunk_size", int(chunk_size) if isinstance(chunk_size, np.integer) else chunk_size, "chunk size")
    if threshold is not None:
        check_value("threshold", float(threshold) if isinstance(threshold, (np.floating, np.integer)) else threshold,
                    "threshold")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Settings:
    """An export's settings, resolved (arguments, else the run's, else the defaults) and checked."""

    kind: str
    residual: str
    patch_size: int
    channels: int
    stride: int
    chunk_size: int
    ssim: SSIMParams
    vae_samples: int
    map_sigma: float
    border: str
    blend: str
    formula: MapFormula
    scale: float
    image_size: tuple[int, int] | None
    training_config: dict[str, Any] | None
    threshold: float | None
    jit_compile: bool


def _settings(model: keras.Model, info: dict[str, Any], *, kind: str | None, stride: int, chunk_size: int,
              ssim_kwargs: dict[str, Any] | None, ssim_overrides: dict[str, Any] | None, vae_samples: int | None,
              map_sigma: float, border: str, blend: str, map_formula: MapFormula | dict[str, Any] | str | None,
              scale: float | None, image_size: Any, training_config: dict[str, Any] | None,
              threshold: float | None, jit_compile: bool) -> _Settings:
    """The export's settings from :func:`export_model`'s arguments and what ``info`` says of the model.

    Args:
        model: The model to export.
        info: What :func:`~tfssim.export.source.load_for_export` found (empty for a ``keras.Model``).
        kind, stride, ...: :func:`export_model`'s arguments of the same names.

    Raises:
        InputError: an argument, or the model, does not fit (one line saying which).
    """
    kind = kind or info.get("kind") or kind_of(model)
    if kind not in MODEL_KINDS:
        raise InputError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    residual = get_spec(kind).residual
    if residual == "vae" and not isinstance(model, VariationalAutoencoder):
        raise InputError(f"kind 'vae' needs a tfssim VariationalAutoencoder, got {type(model).__name__}")
    patch_size, channels = _model_geometry(model)
    stride = int(stride)
    tiling.check_tiling(patch_size, stride)
    with input_checks():  # SSIMParams raises ValueError: here, checks of the arguments
        ssim_params = SSIMParams.of(ssim_kwargs if ssim_kwargs is not None else info.get("ssim"),
                                    **(ssim_overrides or {}))
    if ssim_params.window_size > patch_size:
        raise InputError(f"SSIM window {ssim_params.window_size} is larger than the {patch_size}-pixel patch")
    if vae_samples is None:
        vae_samples = info.get("vae_samples") or getattr(model, "num_samples", 10)
    vae_samples = int(vae_samples) if isinstance(vae_samples, np.integer) else vae_samples
    check_value("vae_samples", vae_samples, "vae_samples")
    with input_checks():
        map_sigma = scoring.validate_map_sigma(map_sigma, patch_size)
    border, blend = tiling_params.check_border(border), tiling_params.check_blend(blend)
    formula = MapFormula.of(map_formula).check_model(residual, patch_size)
    training_config = training_config if training_config is not None else info.get("training_config")
    scale, image_size = _resizing(scale, image_size, training_config, patch_size)
    return _Settings(
        kind=kind, residual=residual, patch_size=patch_size, channels=channels, stride=stride,
        chunk_size=int(chunk_size) if isinstance(chunk_size, np.integer) else chunk_size, ssim=ssim_params,
        vae_samples=vae_samples, map_sigma=map_sigma, border=border, blend=blend, formula=formula, scale=scale,
        image_size=image_size, training_config=training_config,
        threshold=None if threshold is None else float(threshold), jit_compile=bool(jit_compile),
    )


def _claim_version(output_root: str | os.PathLike, name: str, version: Any) -> tuple[Path, int, bool]:
    """The model folder and the version to write (given, else the next free one), the folder made.

    Returns:
        ``(model_root, version, auto)``: ``auto`` when the version was chosen here (it may then
        move on to the next free one if a concurrent export takes it, see
        :func:`~tfssim.export.layout._move_into_place`).

    Raises:
        InputError: a path TensorFlow could not load from, or a version out of TF Serving's range.
        FileExistsError: the version exists.
    """
    model_root = Path(output_root) / name
    check_loadable_path(model_root, "output")  # an export nobody could load is not written
    auto = version is None
    version = next_version(model_root) if auto else version
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or not 1 <= version <= MAX_VERSION:
        raise InputError(f"version must be an integer from 1 to {MAX_VERSION} (TF Serving's int64), got {version!r}")
    version = int(version)
    destination = model_root / str(version)
    if destination.exists() or destination.is_symlink():
        raise FileExistsError(
            f"{destination} already exists; exports are never overwritten (omit --version for the next free one)"
        )
    model_root.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(model_root)
    return model_root, version, auto


def _archive(model: keras.Model, settings: _Settings) -> keras.export.ExportArchive:
    """The SavedModel's archive: the model and its three signatures (:data:`~tfssim.export.graph.SIGNATURES`)."""
    scorer = _Scorer(
        model=model, residual=settings.residual, patch_size=settings.patch_size, channels=settings.channels,
        stride=settings.stride, chunk_size=settings.chunk_size, ssim_kwargs=settings.ssim.to_dict(),
        vae_samples=settings.vae_samples, jit_compile=settings.jit_compile, map_sigma=settings.map_sigma,
        scale=settings.scale, image_size=settings.image_size, border=settings.border, blend=settings.blend,
        map_formula=settings.formula.to_dict(),
    )
    archive = keras.export.ExportArchive()
    archive.track(model)
    any_image = lambda dtype: tf.TensorSpec(shape=None, dtype=dtype, name="image")  # noqa: E731
    archive.add_endpoint("serving_default", scorer.serve_uint8, input_signature=[any_image(tf.uint8)])
    archive.add_endpoint("serve_float", scorer.serve_float, input_signature=[any_image(tf.float32)])
    archive.add_endpoint("serve_with_stride", scorer.serve_with_stride,
                         input_signature=[any_image(tf.float32), tf.TensorSpec([], tf.int32, name="stride")])
    return archive


def _metadata(model: keras.Model, settings: _Settings, *, name: str, version: int,
              extra_metadata: dict[str, Any] | None, source: str | None, checkpoint: Any) -> ExportMetadata:
    """The version's metadata (``assets/tfssim.json``), checked by :class:`ExportMetadata` before anything is built.

    Args:
        model: The exported model.
        settings: The export's settings.
        name: The model name.
        version: The version number.
        extra_metadata: :func:`export_model`'s ``extra_metadata`` (already checked not to set a
            :data:`GRAPH_METADATA_KEYS` entry).
        source: The model file exported, where known.
        checkpoint: Which checkpoint the file holds (:func:`~tfssim.export.source.checkpoint_info`).

    Raises:
        InputError: a value ExportMetadata refuses (e.g. a bad ``extra_metadata`` value).
    """
    residual, s = settings.residual, settings
    outputs = ["reconstruction", "anomaly_map"]
    if residual == "ssim":
        outputs += ["luminance_map", "contrast_map", "structure_map"]
    metadata = {
        "format": 1,
        "name": name, "version": version, "kind": s.kind, "residual": residual,
        "patch_size": s.patch_size, "channels": s.channels, "stride": s.stride, "chunk_size": s.chunk_size,
        "ssim": s.ssim.to_dict() if residual == "ssim" else None,
        "ssim_padding": "same (mirror, tfssim.core.ssim padding='same')" if residual == "ssim" else None,
        "vae_samples": s.vae_samples if residual == "vae" else None,
        "vae_seed": VAE_SEED if residual == "vae" else None,
        "observation_std": float(model.observation_std) if residual == "vae" else None,
        "map_sigma": s.map_sigma, "border": s.border, "blend": s.blend,
        "map_formula": s.formula.to_dict() if residual == "ssim" else None,
        "scale": s.scale, "image_size": None if s.image_size is None else list(s.image_size),
        "interpolation": None if resize.is_identity(s.scale, s.image_size) else resize.INTERPOLATION,
        "latent_dim": getattr(model, "latent_dim", None) or (s.training_config or {}).get("latent_dim"),
        "threshold": s.threshold, "threshold_fpr": None,
        # The post-processing (opening, convex hull, min area): ExportMetadata's defaults, the paper's.
        "input_name": "image", "uint8_scale": 1 / 255, "float_signature": "serve_float",
        "stride_signature": "serve_with_stride", "signatures": SIGNATURES, "outputs": outputs,
        "output_shapes": {k: ("[H, W, C]" if k == "reconstruction" else "[H, W]") for k in outputs},
        "jit_compile": s.jit_compile,
        "training_config": s.training_config,
        "source": source, "checkpoint": checkpoint,
        "tfssim_version": __version__, "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    metadata.update(extra_metadata or {})
    # ExportMetadata is the one definition of every key's type: what is written is checked first
    # (a bad extra_metadata value fails here, before anything is built). Values JSON cannot hold
    # (a Path in training_config) are written as strings, as before.
    return ExportMetadata.from_dict(json.loads(json.dumps(metadata, default=str)), source="export metadata")


def _write_version(archive: keras.export.ExportArchive, metadata: ExportMetadata, model_root: Path, version: int,
                   *, auto: bool, name: str, settings: _Settings) -> Path:
    """Build the version in a hidden partial folder beside the others and rename it into place.

    Returns:
        The version folder (a later number than ``version`` when ``auto`` and a concurrent export
        took it meanwhile).
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_root))
    try:
        _record_owner(tmp)
        export_dir = tmp / "export"
        archive.write_out(str(export_dir), verbose=False)
        metadata.write(export_dir)
        # Warm-up images of 1.5 patches per side once resized (TF Serving refuses a version whose warm-up fails).
        p = settings.patch_size
        _write_warmup(export_dir / WARMUP_FILE, name, p, settings.channels, settings.stride,
                      side=resize.min_input_size(p + p // 2, settings.scale))
        return _move_into_place(export_dir, model_root, version, auto=auto, renumber=renumber_export)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
