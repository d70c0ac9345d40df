"""Export a trained model as a TensorFlow Serving SavedModel that maps whole images to anomaly maps.

Layout (TensorFlow Serving's): ``<output_root>/<name>/<version>/`` with ``saved_model.pb``,
``variables/``, ``assets/tfssim.json`` (metadata for the post-processor) and
``assets.extra/tf_serving_warmup_requests``. The export is built in a temporary folder beside
its destination and renamed into place only when complete; an existing version is never
overwritten.

Signatures (each takes one image, ``[H, W, C]`` or ``[1, H, W, C]``, ``H, W >= patch``):

* ``serving_default``: ``image`` uint8, stride fixed at export time;
* ``serve_float``: ``image`` float32 in [0, 1], same stride;
* ``serve_with_stride``: ``image`` float32 plus ``stride`` int32 scalar (signatures cannot
  have optional inputs, so the default stride lives in the first two).

Outputs, all float32 at the input's size: ``reconstruction [H, W, C]``, ``anomaly_map [H, W]``
and, for SSIM models, ``luminance_map``, ``contrast_map`` and ``structure_map`` (``1 -`` each
SSIM component). Tiling, chunked reconstruction, overlap averaging and the residual map all
run inside the graph (:mod:`tfssim.tiling`, :mod:`tfssim.scoring`).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfssim import __version__, scoring, tiling
from tfssim.models import VariationalAutoencoder, get_spec, kind_of

__all__ = ["export_model", "read_metadata", "update_threshold", "next_version", "load_for_export", "METADATA_FILE"]

METADATA_FILE = Path("assets") / "tfssim.json"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
DEFAULT_CHUNK = 64


def load_for_export(source: str | os.PathLike) -> tuple[keras.Model, dict[str, Any]]:
    """Load a model from a run folder (``best.keras``, else ``final.keras``) or a ``.keras`` file.

    Returns the model (loaded with ``compile=False``: an FM model's loss would otherwise try to
    download ImageNet weights) and what is known about how it was trained.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist; give a run folder made by tfssim-train or a .keras file")
    info: dict[str, Any] = {}
    if source.is_dir():
        config_path = source / "config.json"
        candidates = [source / "best.keras", source / "final.keras"]
        model_path = next((p for p in candidates if p.exists()), None)
        if model_path is None:
            raise ValueError(f"run folder {source} holds neither best.keras nor final.keras; has training finished?")
        if config_path.exists():
            record = json.loads(config_path.read_text())
            config = record.get("config", {})
            info = {"kind": record.get("model", config.get("model")), "ssim": record.get("ssim"),
                    "training_config": config, "vae_samples": config.get("vae_samples")}
    elif source.suffix == ".keras":
        model_path = source
    else:
        raise ValueError(f"{source} is neither a run folder nor a .keras file")
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as err:
        raise ValueError(f"cannot load model {model_path}: {type(err).__name__}: {err}") from None
    info["model_path"] = str(model_path)
    return model, info


def next_version(model_root: str | os.PathLike) -> int:
    """The next free integer version under ``model_root`` (1 for a new model)."""
    root = Path(model_root)
    versions = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    return max(versions, default=0) + 1


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def warmup_record(model_name: str, signature: str, input_name: str, image: np.ndarray) -> bytes:
    """A serialized ``tensorflow.serving.PredictionLog`` holding one ``PredictRequest``.

    Encoded by hand (``predict_log = 6`` > ``request = 1`` > ``model_spec = 1`` {name = 1,
    signature_name = 3}, ``inputs = 2`` map entry {key = 1, value = 2: TensorProto}) so that
    exporting does not need the ``tensorflow-serving-api`` package; the tests parse it with
    TensorFlow's own TensorProto and check the wire layout.
    """
    spec = _field(1, model_name.encode()) + _field(3, signature.encode())
    tensor = tf.make_tensor_proto(image).SerializeToString()
    entry = _field(1, input_name.encode()) + _field(2, tensor)
    request = _field(1, spec) + _field(2, entry)
    return _field(6, _field(1, request))


def _write_warmup(path: Path, model_name: str, patch_size: int, channels: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(patch_size + patch_size // 2, patch_size + patch_size // 2, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(warmup_record(model_name, "serving_default", "image", image))


class _Scorer:
    """The traced serving functions around one model."""

    def __init__(self, model: keras.Model, residual: str, patch_size: int, channels: int, stride: int,
                 chunk_size: int, ssim_kwargs: dict[str, Any], vae_samples: int) -> None:
        self.model = model
        self.residual = residual
        self.patch_size = patch_size
        self.channels = channels
        self.stride = stride
        self.chunk_size = chunk_size
        self.ssim_kwargs = ssim_kwargs
        self.vae_samples = vae_samples

    def _prepare(self, image: tf.Tensor) -> tf.Tensor:
        p, c = self.patch_size, self.channels
        tf.debugging.assert_rank_in(image, [3, 4], message=f"image must be [height, width, {c}] or [1, height, width, {c}]")
        shape = tf.shape(image)
        checks = [
            tf.debugging.assert_equal(tf.logical_or(tf.equal(tf.size(shape), 3), tf.equal(shape[0], 1)), True,
                                      message="send one image per request: a batch dimension must be 1"),
            tf.debugging.assert_equal(shape[-1], c, message=f"image must have {c} channel(s)"),
            tf.debugging.assert_greater_equal(tf.reduce_min(shape[-3:-1]), p,
                                              message=f"image height and width must be at least the patch size {p}"),
        ]
        with tf.control_dependencies(checks):
            return tf.ensure_shape(tf.reshape(image, shape[-3:]), [None, None, c])

    def maps(self, image: tf.Tensor, stride: tf.Tensor) -> dict[str, tf.Tensor]:
        checks = [
            tf.debugging.assert_greater_equal(stride, 1, message="stride must be >= 1"),
            tf.debugging.assert_less_equal(stride, self.patch_size,
                                           message=f"stride must be <= the patch size {self.patch_size}"),
        ]
        with tf.control_dependencies(checks):
            stride = tf.identity(stride)
        return scoring.anomaly_maps(
            self.model, image, residual=self.residual, patch_size=self.patch_size, stride=stride,
            chunk_size=self.chunk_size, ssim_kwargs=self.ssim_kwargs, vae_samples=self.vae_samples,
        )

    def serve_uint8(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.maps(tf.cast(self._prepare(image), tf.float32) / 255.0, tf.constant(self.stride))

    def serve_float(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.maps(tf.clip_by_value(self._prepare(image), 0.0, 1.0), tf.constant(self.stride))

    def serve_with_stride(self, image: tf.Tensor, stride: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.maps(tf.clip_by_value(self._prepare(image), 0.0, 1.0), stride)


def export_model(
    source: str | os.PathLike | keras.Model,
    output_root: str | os.PathLike = "exported_models",
    name: str = "tfssim",
    version: int | None = None,
    stride: int = 30,
    kind: str | None = None,
    ssim_kwargs: dict[str, Any] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    vae_samples: int | None = None,
    training_config: dict[str, Any] | None = None,
    threshold: float | None = None,
) -> Path:
    """Write a TF Serving SavedModel of a trained model; return the version folder.

    Args:
        source: A run folder, a ``.keras`` file or a ``keras.Model``.
        output_root: Folder of exported models (TF Serving's model base path parent).
        name: Model name: the export goes to ``output_root/name/version``.
        version: Integer version; default the next free one. An existing one raises.
        stride: Default tiling stride of the signatures (the paper: 30 for 128 patches).
        kind: ``"ssim"``, ``"l2"``, ``"vae"`` or ``"fm"``; default from the run folder or the model.
        ssim_kwargs: SSIM parameters of the anomaly map; default those of training.
        chunk_size: Tiles per model call inside the graph (bounds memory).
        vae_samples: VAE posterior samples per pixel score.
        training_config: Stored in the metadata (default: the run folder's).
        threshold: A calibrated threshold to store (see :func:`update_threshold`).

    Raises:
        FileExistsError: the version exists. ValueError: bad arguments or model.
    """
    if isinstance(source, keras.Model):
        model, info = source, {}
    else:
        model, info = load_for_export(source)
    kind = kind or info.get("kind") or kind_of(model)
    residual = get_spec(kind).residual
    input_shape = model.inputs[0].shape if getattr(model, "inputs", None) else (None, model.patch_size, model.patch_size, model.channels)
    patch_size, channels = int(input_shape[1]), int(input_shape[3])
    tiling.check_tiling(patch_size, stride)
    if chunk_size < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk_size}")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid model name {name!r}: use a plain folder name such as 'nanotwice_ssim'")
    ssim_params = dict(ssim_kwargs or info.get("ssim") or {"window_size": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03,
                                                          "data_range": 1.0})
    if vae_samples is None:
        vae_samples = info.get("vae_samples") or (model.num_samples if isinstance(model, VariationalAutoencoder) else 10)

    model_root = Path(output_root) / name
    version = next_version(model_root) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    destination = model_root / str(version)
    if destination.exists():
        raise FileExistsError(f"{destination} already exists; exports are never overwritten (omit --version for the next free one)")
    model_root.mkdir(parents=True, exist_ok=True)

    scorer = _Scorer(model, residual, patch_size, channels, stride, chunk_size, ssim_params, int(vae_samples))
    archive = keras.export.ExportArchive()
    archive.track(model)
    image_any = lambda dtype: tf.TensorSpec(shape=None, dtype=dtype, name="image")  # noqa: E731
    archive.add_endpoint("serving_default", scorer.serve_uint8, input_signature=[image_any(tf.uint8)])
    archive.add_endpoint("serve_float", scorer.serve_float, input_signature=[image_any(tf.float32)])
    archive.add_endpoint("serve_with_stride", scorer.serve_with_stride,
                         input_signature=[image_any(tf.float32), tf.TensorSpec([], tf.int32, name="stride")])

    outputs = ["reconstruction", "anomaly_map"] + (["luminance_map", "contrast_map", "structure_map"] if residual == "ssim" else [])
    metadata = {
        "name": name, "version": version, "kind": kind, "residual": residual, "patch_size": patch_size,
        "channels": channels, "stride": stride, "chunk_size": chunk_size, "ssim": ssim_params,
        "vae_samples": int(vae_samples) if residual == "vae" else None,
        "observation_std": float(model.observation_std) if isinstance(model, VariationalAutoencoder) else None,
        "threshold": threshold, "threshold_fpr": None, "opening_diameter": 4, "convex_hull": True,
        "signatures": {"serving_default": "uint8 image", "serve_float": "float32 image in [0, 1]",
                       "serve_with_stride": "float32 image + int32 stride"},
        "float_signature": "serve_float", "outputs": outputs, "input_name": "image",
        "training_config": training_config if training_config is not None else info.get("training_config"),
        "source": info.get("model_path"), "tfssim_version": __version__, "tensorflow_version": tf.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_root))
    try:
        export_dir = tmp / "export"
        archive.write_out(str(export_dir), verbose=False)
        (export_dir / "assets").mkdir(exist_ok=True)
        (export_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        _write_warmup(export_dir / WARMUP_FILE, name, patch_size, channels)
        os.rename(export_dir, destination)  # atomic on one file system; fails if it appeared meanwhile
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return destination


def read_metadata(export_dir: str | os.PathLike) -> dict[str, Any]:
    """The tfssim metadata of an export version folder."""
    path = Path(export_dir) / METADATA_FILE
    if not path.exists():
        raise ValueError(f"{export_dir} has no {METADATA_FILE}; it is not a tfssim export (re-export with tfssim-export)")
    return json.loads(path.read_text())


def update_threshold(export_dir: str | os.PathLike, threshold: float, fpr: float | None = None) -> dict[str, Any]:
    """Store a calibrated threshold (and the FPR it was set at) in an export's metadata, atomically."""
    metadata = read_metadata(export_dir)
    metadata["threshold"] = float(threshold)
    metadata["threshold_fpr"] = None if fpr is None else float(fpr)
    path = Path(export_dir) / METADATA_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metadata, indent=2))
    os.replace(tmp, path)
    return metadata

