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

Signatures (each takes one image, ``[H, W, C]`` or ``[1, H, W, C]``, ``H, W >= patch``; a
SavedModel signature cannot have optional inputs, so the default stride has its own ones):

* ``serving_default``: ``image`` uint8 (0..255), stride fixed at export time;
* ``serve_float``: ``image`` float32 in [0, 1], the same stride;
* ``serve_with_stride``: ``image`` float32 in [0, 1] and ``stride`` int32 scalar in ``[1, patch]``.

Outputs, all float32 at the input's size: ``reconstruction [H, W, C]``, ``anomaly_map [H, W]``
and, for SSIM models, ``luminance_map``, ``contrast_map`` and ``structure_map`` (``1 -`` each
SSIM component). Tiling, chunked reconstruction, overlap averaging and the residual map all
run inside the graph (:mod:`tfssim.tiling`, :mod:`tfssim.scoring`); a bad request (wrong rank,
batch, channel count, an image smaller than the patch, a stride out of range, float values
outside [0, 1]) fails with ``INVALID_ARGUMENT`` and a readable message.

Example:
    >>> path = export_model("runs/nanotwice_ssim", name="nanotwice", stride=30)
    >>> fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    >>> fn(image=tf.constant(uint8_image))["anomaly_map"]
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import tfssim._tensorflow  # noqa: F401,I001 - before keras: without TensorFlow, an ImportError naming the install command
import keras
import numpy as np
import tensorflow as tf

from tfssim import __version__, scoring, tiling
from tfssim._io import atomic_write_json
from tfssim.inference import METADATA_FILE  # one definition, beside the loader (no keras import there)
from tfssim.models import MODEL_KINDS, VariationalAutoencoder, get_spec, kind_of
from tfssim.ssim import validate_window
from tfssim.tiling import DEFAULT_CHUNK
from tfssim.training import LOCK_NAME

__all__ = [
    "export_model",
    "read_metadata",
    "update_threshold",
    "next_version",
    "load_for_export",
    "warmup_record",
    "METADATA_FILE",
    "WARMUP_FILE",
    "SIGNATURES",
]

logger = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
DEFAULT_SSIM = {"window_size": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "data_range": 1.0,
                "alpha": 1.0, "beta": 1.0, "gamma": 1.0, "weighting": "gaussian"}
SIGNATURES = {
    "serving_default": {"inputs": {"image": "uint8 [H, W, C] or [1, H, W, C], 0..255"}, "stride": "export default"},
    "serve_float": {"inputs": {"image": "float32 [H, W, C] or [1, H, W, C], in [0, 1]"}, "stride": "export default"},
    "serve_with_stride": {"inputs": {"image": "float32 [H, W, C] or [1, H, W, C], in [0, 1]",
                                     "stride": "int32 scalar, 1 <= stride <= patch_size"}, "stride": "input"},
}
# Metadata entries that describe the exported graph: export_model's extra_metadata may not set them.
GRAPH_METADATA_KEYS = ("format", "name", "version", "kind", "residual", "patch_size", "channels", "stride",
                       "chunk_size", "ssim", "ssim_padding", "vae_samples", "vae_seed", "observation_std",
                       "map_sigma", "input_name", "uint8_scale", "float_signature", "stride_signature",
                       "signatures", "outputs", "output_shapes", "jit_compile")
# Seed of the VAE's posterior sampling in exported graphs (metadata "vae_seed").
VAE_SEED = 0
# Float inputs may stray this far outside [0, 1] (resampling overshoot) before they are refused.
_FLOAT_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------
# Loading


def _ssim_from_keras_file(path: Path) -> dict[str, Any] | None:
    """SSIM parameters of the compiled ``SSIMLoss`` stored in a ``.keras`` file, without loading it.

    Reads the archive's ``config.json`` (``compile_config.loss``) so that nothing is
    deserialised: a feature-matching loss would otherwise build VGG and download ImageNet weights.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    loss = (config.get("compile_config") or {}).get("loss")
    if not isinstance(loss, dict) or loss.get("class_name") != "SSIMLoss":
        return None
    params = loss.get("config") or {}
    return {k: params[k] for k in scoring.SSIM_KEYS if k in params} or None


def _ssim_from_run_config(record: dict[str, Any]) -> dict[str, Any] | None:
    """SSIM parameters from a run folder's ``config.json`` (an ``ssim`` dict, or ``ssim_*`` keys)."""
    if isinstance(record.get("ssim"), dict):
        return {k: v for k, v in record["ssim"].items() if k in scoring.SSIM_KEYS}
    for source in (record, record.get("config") or {}):
        if "ssim_window" in source:
            params = {"window_size": source["ssim_window"]}
            for key in ("sigma", "k1", "k2", "weighting"):
                if f"ssim_{key}" in source:
                    params[key] = source[f"ssim_{key}"]
            return params
    return None


# The file tfssim-train holds a lock on while it trains into a run folder (one definition, the trainer's).
RUN_LOCK_FILE = LOCK_NAME


def training_running(run_dir: str | os.PathLike) -> bool | None:
    """Whether a trainer holds the lock of ``run_dir`` (``RUN_DIR/.tfssim-train.lock``) right now.

    Tests without taking anything a trainer could miss: a non-blocking shared ``flock`` (taken
    and at once released), and ``F_GETLK`` for a POSIX record lock (``fcntl.lockf``), which
    takes no lock at all. Either lock held by another process means training is running.

    Returns:
        ``True`` (held), ``False`` (the lock file exists and nobody holds it) or ``None`` (cannot
        tell: no lock file, as in run folders from before the lock, or no ``fcntl`` on this
        system).
    """
    import struct

    try:
        import fcntl
    except ImportError:  # Windows
        return None
    path = Path(run_dir) / RUN_LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        # struct flock {short l_type, l_whence; off_t l_start, l_len; pid_t l_pid}: would a
        # write lock on the whole file conflict with a record lock someone holds?
        query = struct.pack("@hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        try:
            answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        except OSError:
            return None
        return struct.unpack("@hhqqi4x", answer)[0] != fcntl.F_UNLCK
    finally:
        # Only this process's own POSIX locks on the file could be dropped by this close (a
        # trainer in another process keeps its lock).
        os.close(fd)


def _read_history_rows(path: Path) -> list[dict[str, float]]:
    import csv

    rows = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                rows.append({k: float(v) for k, v in row.items() if k and v not in (None, "")})
            except ValueError:
                continue  # a row that is not numbers: not an epoch record
    return [r for r in rows if "epoch" in r]


def checkpoint_info(run_dir: str | os.PathLike, model_path: str | os.PathLike,
                    record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Which training epoch the model file of a run folder holds, from the run's ``history.csv``.

    ``best.keras`` holds the epoch with the lowest ``val_loss`` (``loss`` without validation
    images; the first of equal values, as the trainer keeps it); ``final.keras`` holds the last
    epoch when it is not older than ``history.csv`` (a resumed run still training has written
    epochs since: then its epoch is unknown).

    Args:
        run_dir: The run folder.
        model_path: The model file taken from it (``best.keras`` or ``final.keras``).
        record: The run's ``config.json`` (for the configured epoch count), if read.

    Returns:
        ``{"file", "path", "epoch", "monitor", "val_loss", "loss", "epochs_done",
        "epochs_configured", "training_running"}``; values not known are ``None``.
        ``training_running`` is :func:`training_running`.
    """
    run_dir, model_path = Path(run_dir), Path(model_path)
    config = (record or {}).get("config") if isinstance((record or {}).get("config"), dict) else (record or {})
    info: dict[str, Any] = {"file": model_path.name, "path": str(model_path), "epoch": None, "monitor": None,
                            "val_loss": None, "loss": None, "epochs_done": None,
                            "epochs_configured": config.get("epochs"), "training_running": training_running(run_dir)}
    history = run_dir / "history.csv"
    try:
        rows = _read_history_rows(history) if history.exists() else []
    except OSError:
        rows = []
    if not rows:
        return info
    info["epochs_done"] = int(rows[-1]["epoch"])
    monitor = "val_loss" if any(math.isfinite(r.get("val_loss", math.nan)) for r in rows) else "loss"
    info["monitor"] = monitor
    chosen: dict[str, float] | None = None
    if model_path.name == "best.keras":
        scored = [r for r in rows if math.isfinite(r.get(monitor, math.nan))]
        chosen = min(scored, key=lambda r: r[monitor]) if scored else None  # min keeps the first of equals
    elif model_path.name == "final.keras":
        if model_path.stat().st_mtime >= history.stat().st_mtime:
            chosen = rows[-1]
    if chosen is not None:
        info["epoch"] = int(chosen["epoch"])
        info["val_loss"] = chosen.get("val_loss")
        info["loss"] = chosen.get("loss")
    return info


def describe_checkpoint(checkpoint: dict[str, Any]) -> str:
    """One line saying which checkpoint an export took, e.g. ``best.keras: epoch 7 of 10 (val_loss 0.0123, the lowest)``."""
    line = f"{checkpoint['path']}: "
    if checkpoint.get("epoch") is None:
        line += "epoch unknown"
        if checkpoint.get("file") == "final.keras" and checkpoint.get("epochs_done"):
            line += f" (history.csv has {checkpoint['epochs_done']} epochs, written after it)"
    else:
        total = checkpoint.get("epochs_configured")
        line += f"epoch {checkpoint['epoch']}" + (f" of {total}" if total else "")
        if checkpoint.get("epochs_done") is not None:
            line += f" ({checkpoint['epochs_done']} done"
            monitor = checkpoint.get("monitor")
            value = checkpoint.get(monitor) if monitor else None
            if value is not None:
                lowest = ", the lowest" if checkpoint.get("file") == "best.keras" else ""
                line += f"; {monitor} {value:.6g}{lowest}"
            line += ")"
    return line


def _report_checkpoint(source: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Log which checkpoint an export takes, and warn when the run is still training."""
    if checkpoint:
        logger.info("checkpoint: %s", describe_checkpoint(checkpoint))
    if checkpoint.get("training_running"):
        logger.warning(
            "warning: training in %s is still running (%s is locked): this export takes %s as it is now, "
            "and the run may still improve it; export again when training has finished",
            source, Path(source) / RUN_LOCK_FILE, checkpoint.get("file"))
    elif Path(source).is_dir() and checkpoint.get("training_running") is None:
        logger.info("cannot tell whether training in %s is still running (it has no %s file): if it is, "
                    "export again when it has finished", source, RUN_LOCK_FILE)


def load_for_export(source: str | os.PathLike) -> tuple[keras.Model, dict[str, Any]]:
    """Load a model from a run folder (``best.keras``, else ``final.keras``) or a ``.keras`` file.

    Returns the model (loaded with ``compile=False``: an FM model's loss would otherwise try to
    download ImageNet weights) and what is known about how it was trained: ``kind``, ``ssim``
    (parameters), ``training_config``, ``model_path`` where available, and ``checkpoint``:
    which file and epoch was taken (:func:`checkpoint_info` for a run folder; for a ``.keras``
    file only its name and path).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: not a run folder or ``.keras`` file, no model in the folder, the model
            does not load, or the run's config contradicts the model.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist; give a run folder made by tfssim-train or a .keras file")
    info: dict[str, Any] = {}
    record: dict[str, Any] = {}
    if source.is_dir():
        model_path = next((p for p in (source / "best.keras", source / "final.keras") if p.exists()), None)
        if model_path is None:
            raise ValueError(f"run folder {source} holds neither best.keras nor final.keras; has training finished?")
        config_path = source / "config.json"
        if config_path.exists():
            try:
                record = json.loads(config_path.read_text())
            except ValueError as err:
                raise ValueError(f"{config_path} is not valid JSON: {err}") from None
            config = record.get("config") if isinstance(record.get("config"), dict) else record
            info["kind"] = record.get("model", config.get("model"))
            info["ssim"] = _ssim_from_run_config(record)
            info["training_config"] = config
            info["vae_samples"] = config.get("vae_samples")
    elif source.suffix == ".keras":
        model_path = source
    else:
        raise ValueError(f"{source} is neither a run folder nor a .keras file")
    fix = "give a .keras file written by tfssim-train (a run folder's best.keras or final.keras)"
    if not model_path.is_file() or not zipfile.is_zipfile(model_path):
        # Keras would say "File not found" about a file that exists but is no .keras zip archive.
        raise ValueError(f"{model_path} is not a readable Keras file (not a .keras zip archive); {fix}")
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as err:  # noqa: BLE001 - any load failure is a bad input file
        detail = " ".join(str(err).split())  # Keras's messages span lines: one line here
        detail = detail if len(detail) <= 200 else detail[:197] + "..."
        raise ValueError(f"{model_path} is not a readable Keras file ({type(err).__name__}: {detail}); {fix}") from None
    if not info.get("ssim"):
        info["ssim"] = _ssim_from_keras_file(model_path)
    config = record.get("config") if isinstance(record.get("config"), dict) else record
    expected = {"patch_size": record.get("patch_size", config.get("patch_size")), "channels": record.get("channels")}
    for (key, want), have in zip(expected.items(), _model_geometry(model)):
        if want is not None and int(want) != have:
            raise ValueError(f"{model_path} has {key} {have} but the run's config.json says {want}")
    info["model_path"] = str(model_path)
    if source.is_dir():
        info["checkpoint"] = checkpoint_info(source, model_path, record)
    else:
        info["checkpoint"] = {"file": model_path.name, "path": str(model_path), "epoch": None,
                              "training_running": None}
    return model, info


def _model_geometry(model: keras.Model) -> tuple[int, int]:
    """``(patch_size, channels)`` of a tfssim model."""
    if isinstance(model, VariationalAutoencoder):
        return int(model.patch_size), int(model.channels)
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    if shape is None or shape.__len__() != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] is None:
        raise ValueError(f"model {model.name!r} does not take square [batch, p, p, C] patches (input {shape})")
    return int(shape[1]), int(shape[3])


def next_version(model_root: str | os.PathLike) -> int:
    """The next free integer version under ``model_root`` (1 for a new model)."""
    root = Path(model_root)
    # Every entry named like a version counts, a stray *file* too: its number is not free.
    versions = [int(p.name) for p in root.iterdir() if p.name.isascii() and p.name.isdigit()] if root.is_dir() else []
    return max(versions, default=0) + 1


# TF Serving's version numbers are int64.
MAX_VERSION = 2**63 - 1
# A ``.<version>.partial-*`` folder whose export is dead is removed by the next export of the same
# model: dead when the process that made it (recorded in it) no longer runs on this machine, or,
# where that cannot be told (another machine, no record), when it is older than this. An export
# takes minutes, so a day-old one is no running export's.
PARTIAL_MAX_AGE_S = 24 * 3600
_OWNER_FILE = "owner.json"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``; None where unknown): tells a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        pass
    except (OSError, OverflowError, ValueError):
        return False
    return started is None or _process_start(pid) in (None, started)


def _partial_is_dead(folder: Path, now: float) -> bool:
    """Whether ``folder`` (a ``.N.partial-*`` export folder) belongs to no running export."""
    import socket

    try:
        owner = json.loads((folder / _OWNER_FILE).read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        owner = None
    if owner is not None and host == socket.gethostname():
        return not _process_alive(pid, owner.get("started"))
    try:
        return now - folder.stat().st_mtime > PARTIAL_MAX_AGE_S
    except OSError:
        return False


def _remove_dead_partials(model_root: Path) -> None:
    """Remove the ``.N.partial-*`` folders of killed exports in ``model_root`` (never a running export's)."""
    import re
    import time

    if not model_root.is_dir():
        return
    now = time.time()
    for folder in model_root.iterdir():
        if re.fullmatch(r"\.\d+\.partial-.+", folder.name) and folder.is_dir() and not folder.is_symlink() \
                and _partial_is_dead(folder, now):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                logger.info("removed %s, left behind by an export that no longer runs", folder)


def _record_owner(folder: Path) -> None:
    """Write who builds the export in ``folder`` (see :func:`_partial_is_dead`)."""
    import socket

    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid())}
    (folder / _OWNER_FILE).write_text(json.dumps(owner))


# --------------------------------------------------------------------------------------------
# Warm-up requests (TensorFlow Serving's assets.extra/tf_serving_warmup_requests)


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


def warmup_record(model_name: str, signature: str, inputs: dict[str, np.ndarray] | str,
                  image: np.ndarray | None = None) -> bytes:
    """A serialized ``tensorflow.serving.PredictionLog`` holding one ``PredictRequest``.

    ``inputs`` maps input names to arrays (``warmup_record(name, sig, "image", array)`` is
    short for one input). Encoded by hand from TensorFlow Serving's protos
    (``PredictionLog.predict_log = 6`` > ``PredictLog.request = 1`` > ``PredictRequest``
    {``model_spec = 1`` {``name = 1``, ``signature_name = 3``}, ``inputs = 2``: map entries
    {``key = 1``, ``value = 2``: ``TensorProto``}}) so exporting does not need the optional
    ``tensorflow-serving-api`` package; the result parses with that package's
    ``PredictionLog`` (checked in the tests when it is installed).
    """
    if isinstance(inputs, str):
        inputs = {inputs: image}
    spec = _field(1, model_name.encode()) + _field(3, signature.encode())
    request = _field(1, spec)
    for key in sorted(inputs):
        tensor = tf.make_tensor_proto(np.asarray(inputs[key])).SerializeToString()
        request += _field(2, _field(1, key.encode()) + _field(2, tensor))
    return _field(6, _field(1, request))


def _write_warmup(path: Path, model_name: str, patch_size: int, channels: int, stride: int) -> None:
    """One request per signature, on a random image of 1.5 patches per side."""
    side = patch_size + patch_size // 2
    image = np.random.default_rng(0).integers(0, 256, size=(side, side, channels), dtype=np.uint8)
    floats = image.astype(np.float32) / 255.0
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(warmup_record(model_name, "serving_default", {"image": image}))
        writer.write(warmup_record(model_name, "serve_float", {"image": floats}))
        writer.write(warmup_record(model_name, "serve_with_stride",
                                   {"image": floats, "stride": np.array(stride, np.int32)}))


# --------------------------------------------------------------------------------------------
# The serving graph


class _Scorer:
    """The traced serving functions around one model."""

    def __init__(self, model: keras.Model, residual: str, patch_size: int, channels: int, stride: int,
                 chunk_size: int, ssim_kwargs: dict[str, Any], vae_samples: int, jit_compile: bool,
                 map_sigma: float = 0.0) -> None:
        self.model = model
        self.residual = residual
        self.patch_size = patch_size
        self.channels = channels
        self.stride = stride
        self.chunk_size = chunk_size
        self.ssim_kwargs = ssim_kwargs
        self.vae_samples = vae_samples
        self.jit_compile = jit_compile
        self.map_sigma = map_sigma

    def _prepare(self, image: tf.Tensor) -> tf.Tensor:
        """Validate one request's image and return it as ``[H, W, C]``."""
        p, c = self.patch_size, self.channels
        rank_ok = tf.debugging.assert_rank_in(
            image, [3, 4], message=f"image must be [height, width, {c}] or [1, height, width, {c}]"
        )
        with tf.control_dependencies([rank_ok]):  # nothing below may index a wrong-rank shape first
            shape = tf.shape(image)
            checks = [
                tf.debugging.assert_equal(
                    tf.logical_or(tf.equal(tf.size(shape), 3), tf.equal(shape[0], 1)), True,
                    message="send one image per request: a leading batch dimension must be 1",
                ),
                tf.debugging.assert_equal(shape[-1], c, message=f"image must have {c} channel(s) (the model's)"),
                tf.debugging.assert_greater_equal(
                    tf.reduce_min(shape[-3:-1]), p,
                    message=f"image height and width must be at least the patch size {p}",
                ),
            ]
        with tf.control_dependencies(checks):
            return tf.ensure_shape(tf.reshape(image, shape[-3:]), [None, None, c])

    def _in_range(self, image: tf.Tensor) -> tf.Tensor:
        lo, hi = tf.reduce_min(image), tf.reduce_max(image)
        check = tf.debugging.assert_equal(
            tf.logical_and(lo >= -_FLOAT_TOLERANCE, hi <= 1.0 + _FLOAT_TOLERANCE), True,
            message="float image values must be finite and in [0, 1] (send uint8 0..255 to serving_default)",
        )
        with tf.control_dependencies([check]):
            return tf.clip_by_value(image, 0.0, 1.0)

    def maps(self, image: tf.Tensor, stride: tf.Tensor | int) -> dict[str, tf.Tensor]:
        """The library's pipeline (:func:`tfssim.scoring.anomaly_maps`), traced into the graph.

        The VAE's noise is seeded with 0 (metadata ``vae_seed``), so its maps are reproducible.
        """
        return scoring.anomaly_maps(
            self.model, image, self.residual, self.patch_size, stride, chunk_size=self.chunk_size,
            ssim_kwargs=self.ssim_kwargs, vae_samples=self.vae_samples, vae_seed=VAE_SEED,
            jit_compile=self.jit_compile, map_sigma=self.map_sigma,
        )

    def serve_uint8(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.maps(tf.cast(self._prepare(image), tf.float32) / 255.0, self.stride)

    def serve_float(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.maps(self._in_range(self._prepare(image)), self.stride)

    def serve_with_stride(self, image: tf.Tensor, stride: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.maps(self._in_range(self._prepare(image)), stride)


_RENAME_NOREPLACE = 1  # linux/fs.h
_AT_FDCWD = -100


def _renameat2(source: Path, destination: Path) -> bool | None:
    """Linux ``renameat2(..., RENAME_NOREPLACE)``: True when moved, None when unavailable here.

    Raises ``FileExistsError`` when ``destination`` exists (even an empty folder).
    """
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28 or another libc without the wrapper
        return None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # kernel or file system without the flag
        return None
    if code in (errno.EEXIST, errno.ENOTEMPTY):
        raise FileExistsError(f"{destination} appeared while exporting; exports are never overwritten")
    raise OSError(code, f"cannot move the export into {destination}: {os.strerror(code)}", str(destination))


def _rename_noreplace(source: Path, destination: Path) -> None:
    """Move the finished export folder into place, never replacing anything there.

    On Linux ``renameat2(RENAME_NOREPLACE)`` makes check and move one atomic step. Elsewhere
    (or where the file system lacks the flag) it falls back to check-then-``os.rename``, which
    refuses a non-empty destination but could still land on an *empty* folder created by
    another process in between.
    """
    if _renameat2(source, destination):
        return
    if destination.exists():
        raise FileExistsError(f"{destination} appeared while exporting; exports are never overwritten")
    try:
        os.rename(source, destination)  # atomic on one file system
    except OSError as err:
        raise FileExistsError(f"cannot move the export into {destination} ({err}); exports are never overwritten") \
            from None


# How often an export whose version was chosen automatically takes the next free number when
# another export (e.g. a concurrent tfssim-export) took its version while it was being built.
MAX_VERSION_RETRIES = 20


def _move_into_place(export_dir: Path, model_root: Path, version: int, *, auto: bool,
                     metadata: dict[str, Any] | None = None, retries: int = MAX_VERSION_RETRIES) -> Path:
    """Rename the finished ``export_dir`` to ``model_root/version``, never replacing anything there.

    With ``auto`` (the version was chosen by :func:`next_version`, not by the user), a version
    taken meanwhile by another export is no error: the export takes the next free number
    instead, at most ``retries`` times, rewriting the ``version`` of ``metadata`` (when given)
    in ``export_dir`` first. An explicit version raises ``FileExistsError`` at once.

    Returns:
        The version folder the export now lives in.
    """
    for attempt in range(retries + 1):
        destination = model_root / str(version)
        try:
            _rename_noreplace(export_dir, destination)
            return destination
        except FileExistsError as err:
            if not auto:
                raise
            if attempt == retries:
                raise FileExistsError(
                    f"{err}; gave up after {retries} retries with later versions (concurrent exports?)"
                ) from None
        taken, version = version, max(version + 1, next_version(model_root))
        logger.warning("%s was taken by another export meanwhile; this export becomes version %d",
                       model_root / str(taken), version)
        if metadata is not None:
            metadata["version"] = version
            atomic_write_json(export_dir / METADATA_FILE, metadata, default=str)
    raise AssertionError("unreachable")


def _check_name(name: str) -> None:
    # Control characters (a newline, a tab) make a folder name that TF Serving's config and every
    # log line would mangle.
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\0") \
            or name != name.strip() or any(ord(c) < 32 or ord(c) == 127 for c in name) \
            or len(name.encode("utf-8", "surrogateescape")) > 255:
        raise ValueError(f"invalid model name {name!r}: use a plain folder name such as 'nanotwice_ssim' "
                         "(no slashes, control characters or leading dot, at most 255 bytes)")


def export_model(
    model_or_path: str | os.PathLike | keras.Model,
    output_root: str | os.PathLike = "exported_models",
    name: str = "tfssim",
    version: int | None = None,
    stride: int = 30,
    kind: str | None = None,
    ssim_kwargs: dict[str, Any] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    training_config: dict[str, Any] | None = None,
    threshold: float | None = None,
    *,
    vae_samples: int | None = None,
    jit_compile: bool = False,
    ssim_overrides: dict[str, Any] | None = None,
    map_sigma: float = 0.0,
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a TF Serving SavedModel of a trained model; return the version folder.

    Args:
        model_or_path: A ``tfssim-train`` run folder (``best.keras`` preferred), a ``.keras``
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
        chunk_size: Tiles per model call inside the graph (bounds memory; see the benchmark).
        training_config: Stored in the metadata (default: the run folder's).
            The metadata's ``checkpoint`` records the file and epoch taken (see
            :func:`load_for_export`); exporting a run folder whose training still holds its
            lock logs a warning.
        threshold: A calibrated threshold to store (see :func:`update_threshold`).
        vae_samples: VAE posterior samples per pixel score (default: training's or the model's).
            The VAE's noise is drawn with seed 0 (metadata ``vae_seed``) for every chunk of
            ``chunk_size`` tiles, so a VAE's maps are deterministic for one export but depend
            on ``chunk_size`` and the image's tiling: compare VAE maps only across exports
            with the same chunk size.
        ssim_overrides: SSIM parameters to change after the defaults above are resolved, e.g.
            ``{"weighting": "uniform"}`` to score with plain patch means (the paper's SSIM
            definition) a model trained with ``tf.image.ssim``'s Gaussian window.
        map_sigma: Gaussian smoothing (standard deviation in pixels) of every served map,
            inside the graph (:func:`tfssim.scoring.smooth_map`); 0 (default) serves the maps
            as the paper computes them. Recorded in the metadata as ``map_sigma``, so a
            threshold calibrated on this export applies to the smoothed maps.
        jit_compile: Compile the model call with XLA. Off by default: TensorFlow Serving
            refuses XLA-compiled graphs on CPU unless started with
            ``--xla_cpu_compilation_enabled``.
        extra_metadata: More metadata entries, written with the version (e.g. the
            post-processing and ``tuned`` record of :func:`tfssim.tuning.write_tuned_export`);
            entries that describe the graph (:data:`GRAPH_METADATA_KEYS`) are refused.

    Returns:
        The version folder ``output_root/name/version``.

    Raises:
        FileExistsError: the version exists. FileNotFoundError: ``model_or_path`` does not.
        ValueError: bad arguments or model.
    """
    _check_name(name)
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)):
        raise ValueError(f"stride must be an integer, got {stride!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk size must be a positive integer, got {chunk_size!r}")
    if threshold is not None and not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    stride, chunk_size = int(stride), int(chunk_size)
    if isinstance(model_or_path, keras.Model):
        model, info = model_or_path, {}
    else:
        model, info = load_for_export(model_or_path)
        _report_checkpoint(model_or_path, info.get("checkpoint") or {})
    kind = kind or info.get("kind") or kind_of(model)
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    residual = get_spec(kind).residual
    if residual == "vae" and not isinstance(model, VariationalAutoencoder):
        raise ValueError(f"kind 'vae' needs a tfssim VariationalAutoencoder, got {type(model).__name__}")
    patch_size, channels = _model_geometry(model)
    tiling.check_tiling(patch_size, stride)
    ssim_params = dict(DEFAULT_SSIM)
    ssim_params.update(ssim_kwargs if ssim_kwargs is not None else (info.get("ssim") or {}))
    ssim_params.update(ssim_overrides or {})
    unknown = set(ssim_params) - set(scoring.SSIM_KEYS)
    if unknown:
        raise ValueError(f"unknown SSIM parameter(s) {sorted(unknown)}; expected some of {', '.join(scoring.SSIM_KEYS)}")
    validate_window(ssim_params["window_size"], ssim_params["sigma"], ssim_params["weighting"])
    if ssim_params["window_size"] > patch_size:
        raise ValueError(f"SSIM window {ssim_params['window_size']} is larger than the {patch_size}-pixel patch")
    if vae_samples is None:
        vae_samples = info.get("vae_samples") or getattr(model, "num_samples", 10)
    vae_samples = int(vae_samples)
    if vae_samples < 1:
        raise ValueError(f"vae_samples must be >= 1, got {vae_samples}")
    map_sigma = scoring.validate_map_sigma(map_sigma, patch_size)
    clash = sorted(set(extra_metadata or {}) & set(GRAPH_METADATA_KEYS))
    if clash:
        raise ValueError(f"extra metadata may not set {clash}: they describe the exported graph")

    model_root = Path(output_root) / name
    auto_version = version is None
    version = next_version(model_root) if auto_version else version
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or not 1 <= version <= MAX_VERSION:
        raise ValueError(f"version must be an integer from 1 to {MAX_VERSION} (TF Serving's int64), got {version!r}")
    version = int(version)
    destination = model_root / str(version)
    if destination.exists() or destination.is_symlink():
        raise FileExistsError(
            f"{destination} already exists; exports are never overwritten (omit --version for the next free one)"
        )
    model_root.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(model_root)

    scorer = _Scorer(model, residual, patch_size, channels, stride, chunk_size, ssim_params, vae_samples, jit_compile,
                     map_sigma)
    archive = keras.export.ExportArchive()
    archive.track(model)
    any_image = lambda dtype: tf.TensorSpec(shape=None, dtype=dtype, name="image")  # noqa: E731
    archive.add_endpoint("serving_default", scorer.serve_uint8, input_signature=[any_image(tf.uint8)])
    archive.add_endpoint("serve_float", scorer.serve_float, input_signature=[any_image(tf.float32)])
    archive.add_endpoint("serve_with_stride", scorer.serve_with_stride,
                         input_signature=[any_image(tf.float32), tf.TensorSpec([], tf.int32, name="stride")])

    outputs = ["reconstruction", "anomaly_map"]
    if residual == "ssim":
        outputs += ["luminance_map", "contrast_map", "structure_map"]
    metadata = {
        "format": 1,
        "name": name, "version": version, "kind": kind, "residual": residual,
        "patch_size": patch_size, "channels": channels, "stride": stride, "chunk_size": chunk_size,
        "ssim": ssim_params if residual == "ssim" else None,
        "ssim_padding": "same (mirror, tfssim.ssim padding='same')" if residual == "ssim" else None,
        "vae_samples": vae_samples if residual == "vae" else None,
        "vae_seed": VAE_SEED if residual == "vae" else None,
        "observation_std": float(model.observation_std) if residual == "vae" else None,
        "map_sigma": map_sigma,
        "latent_dim": getattr(model, "latent_dim", None) or (info.get("training_config") or {}).get("latent_dim"),
        "threshold": None if threshold is None else float(threshold), "threshold_fpr": None,
        "opening_diameter": 4, "convex_hull": True,
        "input_name": "image", "uint8_scale": 1 / 255, "float_signature": "serve_float",
        "stride_signature": "serve_with_stride", "signatures": SIGNATURES, "outputs": outputs,
        "output_shapes": {k: ("[H, W, C]" if k == "reconstruction" else "[H, W]") for k in outputs},
        "jit_compile": bool(jit_compile),
        "training_config": training_config if training_config is not None else info.get("training_config"),
        "source": info.get("model_path"), "checkpoint": info.get("checkpoint"),
        "tfssim_version": __version__, "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    metadata.update(extra_metadata or {})
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_root))
    try:
        _record_owner(tmp)
        export_dir = tmp / "export"
        archive.write_out(str(export_dir), verbose=False)
        (export_dir / "assets").mkdir(exist_ok=True)
        (export_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))
        _write_warmup(export_dir / WARMUP_FILE, name, patch_size, channels, stride)
        destination = _move_into_place(export_dir, model_root, version, auto=auto_version, metadata=metadata)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s (%s model, patch %d, stride %d)", destination, kind, patch_size, stride)
    return destination


# --------------------------------------------------------------------------------------------
# Metadata


def read_metadata(export_dir: str | os.PathLike) -> dict[str, Any]:
    """The tfssim metadata (``assets/tfssim.json``) of an export version folder, parsed and checked.

    :func:`tfssim.inference.read_export_metadata`: strict JSON, well-formed values; any fault
    is one ``ValueError`` naming the file.
    """
    from tfssim.inference import read_export_metadata

    return read_export_metadata(export_dir)


def update_threshold(export_dir: str | os.PathLike, threshold: float, fpr: float | None = None) -> dict[str, Any]:
    """Store a calibrated threshold (and the pixel FPR it was set at) in an export's metadata.

    Only ``assets/tfssim.json`` changes; it is rewritten atomically (temporary file + rename),
    so a reader never sees half a file. Returns the new metadata.

    Raises ``ValueError`` for a threshold that is not finite, an ``fpr`` outside (0, 1), or
    metadata that :func:`read_metadata` refuses (the file is left as it is).
    """
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if fpr is not None and not 0 < float(fpr) < 1:
        raise ValueError(f"fpr must be between 0 and 1 (exclusive), got {fpr!r}")
    metadata = read_metadata(export_dir)
    metadata["threshold"] = threshold
    metadata["threshold_fpr"] = None if fpr is None else float(fpr)
    atomic_write_json(Path(export_dir) / METADATA_FILE, metadata, default=str)
    return metadata
