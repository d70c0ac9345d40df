"""What an export is made from: a run folder or ``.keras`` file, its checkpoint and SSIM settings.

:func:`load_for_export` loads the model and what the run recorded; :func:`checkpoint_info`
says which epoch a checkpoint holds; :func:`training_running` tells (without taking it) whether
a ``tfssim-train`` still holds the run folder's lock.
"""
from __future__ import annotations

import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import keras

from tfssim.core.ssim_params import SSIMParams
from tfssim.errors import InputError
from tfssim.export.graph import _model_geometry
from tfssim.run_record import (
    BEST_MODEL_NAME,
    CONFIG_NAME,
    FINAL_MODEL_NAME,
    HISTORY_NAME,
    LOCK_NAME,
    SSIM_CONFIG_KEYS,
    keras_archive_config,
    model_file,
    open_run_lock,
    read_history,
)
from tfssim.training.run_folder import read_run

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Loading


def _ssim_from_keras_file(path: Path) -> dict[str, Any] | None:
    """SSIM parameters of the compiled ``SSIMLoss`` stored in a ``.keras`` file, without loading it.

    Reads the archive's model configuration (``compile_config.loss``,
    :func:`tfssim.run_record.keras_archive_config`) so that nothing is deserialised: a
    feature-matching loss would otherwise build VGG and download ImageNet weights.
    """
    config = keras_archive_config(path)
    if config is None:
        return None
    loss = (config.get("compile_config") or {}).get("loss")
    if not isinstance(loss, dict) or loss.get("class_name") != "SSIMLoss":
        return None
    params = {k: v for k, v in (loss.get("config") or {}).items() if k in SSIMParams.keys()}
    return SSIMParams.of(params).to_dict() if params else None


def _ssim_from_run_config(record: dict[str, Any]) -> dict[str, Any] | None:
    """SSIM parameters from a run folder's record: its ``ssim`` dict, or (older runs) the
    flat ``ssim_*`` keys of :class:`~tfssim.training.TrainConfig`; keys missing get the defaults.
    Returned as :meth:`SSIMParams.to_dict` (checked), ``None`` if the record has none."""
    if isinstance(record.get("ssim"), dict):
        return SSIMParams.of({k: v for k, v in record["ssim"].items() if k in SSIMParams.keys()}).to_dict()
    for source in (record, record.get("config") or {}):
        if "ssim_window" in source:
            return SSIMParams.of({field: source[key] for key, field in SSIM_CONFIG_KEYS.items()
                                  if key in source}).to_dict()
    return None


def training_running(run_dir: str | os.PathLike) -> bool | None:
    """Whether a trainer holds the lock of ``run_dir`` (:data:`tfssim.run_record.LOCK_NAME`) right now.

    Tests without taking anything a trainer could miss: a non-blocking shared ``flock`` (taken
    and at once released), and ``F_GETLK`` for a POSIX record lock (``fcntl.lockf``), which
    takes no lock at all. Either lock held by another process means training is running.

    The lock file is opened as the trainer opens it (:func:`tfssim.run_record.open_run_lock`):
    never through a link, never blocking on a named pipe.

    Returns:
        ``True`` (held), ``False`` (the lock file exists and nobody holds it) or ``None`` (cannot
        tell: no lock file, as in run folders from before the lock, one that cannot be opened,
        or no ``fcntl`` on this system).

    Raises:
        InputError: the lock file is a link, a folder, a pipe or a device; one line naming it
            and saying to remove it.
    """
    import struct

    try:
        import fcntl
    except ImportError:  # Windows
        return None
    try:
        fd = open_run_lock(run_dir, create=False)  # InputError (not OSError) for a link, a pipe, a device
    except OSError:  # e.g. no permission to read it: the export still goes on, unable to tell
        return None
    if fd is None:
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


def checkpoint_info(run_dir: str | os.PathLike, model_path: str | os.PathLike,
                    record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Which training epoch the model file of a run folder holds, from the run's history.

    The best model holds the epoch with the lowest ``val_loss`` (``loss`` without validation
    images; the first of equal values, as the trainer keeps it); the final model holds the last
    epoch when it is not older than the history (a resumed run still training has written
    epochs since: then its epoch is unknown).

    Args:
        run_dir: The run folder.
        model_path: The model file taken from it (:data:`~tfssim.run_record.BEST_MODEL_NAME` or
            :data:`~tfssim.run_record.FINAL_MODEL_NAME`).
        record: The run's record (for the configured epoch count), if read.

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
    history = run_dir / HISTORY_NAME
    rows = read_history(history, otherwise=f"export {model_path} itself")
    if not rows:
        return info
    info["epochs_done"] = rows[-1]["epoch"]
    monitor = "val_loss" if any(math.isfinite(r.get("val_loss", math.nan)) for r in rows) else "loss"
    info["monitor"] = monitor
    chosen: dict[str, float] | None = None
    if model_path.name == BEST_MODEL_NAME:
        scored = [r for r in rows if math.isfinite(r.get(monitor, math.nan))]
        chosen = min(scored, key=lambda r: r[monitor]) if scored else None  # min keeps the first of equals
    elif model_path.name == FINAL_MODEL_NAME:
        if model_path.stat().st_mtime >= history.stat().st_mtime:
            chosen = rows[-1]
    if chosen is not None:
        info["epoch"] = chosen["epoch"]
        info["val_loss"] = chosen.get("val_loss")
        info["loss"] = chosen.get("loss")
    return info


def describe_checkpoint(checkpoint: dict[str, Any]) -> str:
    """One line saying which checkpoint an export took, e.g. ``RUN/<model file>: epoch 7 of 10 (7 done; val_loss 0.0123, the lowest)``."""
    line = f"{checkpoint['path']}: "
    if checkpoint.get("epoch") is None:
        line += "epoch unknown"
        if checkpoint.get("file") == FINAL_MODEL_NAME and checkpoint.get("epochs_done"):
            line += f" ({HISTORY_NAME} has {checkpoint['epochs_done']} epochs, written after it)"
    else:
        total = checkpoint.get("epochs_configured")
        line += f"epoch {checkpoint['epoch']}" + (f" of {total}" if total else "")
        if checkpoint.get("epochs_done") is not None:
            line += f" ({checkpoint['epochs_done']} done"
            monitor = checkpoint.get("monitor")
            value = checkpoint.get(monitor) if monitor else None
            if value is not None:
                lowest = ", the lowest" if checkpoint.get("file") == BEST_MODEL_NAME else ""
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
            source, Path(source) / LOCK_NAME, checkpoint.get("file"))
    elif Path(source).is_dir() and checkpoint.get("training_running") is None:
        logger.info("cannot tell whether training in %s is still running (it has no %s file): if it is, "
                    "export again when it has finished", source, LOCK_NAME)


def load_for_export(source: str | os.PathLike) -> tuple[keras.Model, dict[str, Any]]:
    """Load a model from a run folder (its best model, else its final one) or a ``.keras`` file.

    Returns the model (loaded with ``compile=False``: an FM model's loss would otherwise try to
    download ImageNet weights) and what is known about how it was trained: ``kind``, ``ssim``
    (parameters), ``training_config``, ``model_path`` where available, and ``checkpoint``:
    which file and epoch was taken (:func:`checkpoint_info` for a run folder; for a ``.keras``
    file only its name and path).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: not a run folder or ``.keras`` file, no model in the folder, the model
            does not load, the run's record is damaged (:func:`tfssim.training.run_folder.read_run`,
            the reader of ``tfssim-train --resume``) or contradicts the model, or its lock file is
            no regular file.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist; give a run folder made by tfssim-train or a .keras file")
    info: dict[str, Any] = {}
    record: dict[str, Any] = {}
    if source.is_dir():
        model_path = model_file(source)
        if model_path is None:
            raise InputError(f"run folder {source} holds neither {BEST_MODEL_NAME} nor {FINAL_MODEL_NAME}; "
                             "has training finished?")
        # The run's record and history, checked (one line naming the file and key where damaged)
        # before the model is loaded: export writes nothing into the run folder. read_run is the
        # reader tfssim-train --resume uses: a record one refuses, the other refuses the same way.
        otherwise = f"export {model_path} itself"
        record = read_run(source, otherwise=otherwise) or {}
        read_history(source / HISTORY_NAME, otherwise=otherwise)
        training_running(source)  # a lock file that is no regular file: refused before the model loads
        if record:
            config = record["config"]
            info["kind"] = record.get("model", config.get("model"))  # the same where both are (read_run)
            info["ssim"] = _ssim_from_run_config(record)  # checked by read_run
            info["training_config"] = config
            info["vae_samples"] = config.get("vae_samples")
    elif source.suffix == ".keras":
        model_path = source
    else:
        raise InputError(f"{source} is neither a run folder nor a .keras file")
    fix = f"give a .keras file written by tfssim-train (a run folder's {BEST_MODEL_NAME} or {FINAL_MODEL_NAME})"
    if not model_path.is_file() or not zipfile.is_zipfile(model_path):
        # Keras would say "File not found" about a file that exists but is no .keras zip archive.
        raise InputError(f"{model_path} is not a readable Keras file (not a .keras zip archive); {fix}")
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as err:  # noqa: BLE001 - any load failure is a bad input file
        detail = " ".join(str(err).split())  # Keras's messages span lines: one line here
        detail = detail if len(detail) <= 200 else detail[:197] + "..."
        raise InputError(f"{model_path} is not a readable Keras file ({type(err).__name__}: {detail}); {fix}") from None
    if not info.get("ssim"):
        info["ssim"] = _ssim_from_keras_file(model_path)
    config = record.get("config") if isinstance(record.get("config"), dict) else record
    expected = {"patch_size": record.get("patch_size", config.get("patch_size")), "channels": record.get("channels")}
    for (key, want), have in zip(expected.items(), _model_geometry(model)):
        if want is not None and int(want) != have:
            raise InputError(f"{model_path} has {key} {have} but the run's {CONFIG_NAME} says {want}")
    info["model_path"] = str(model_path)
    if source.is_dir():
        info["checkpoint"] = checkpoint_info(source, model_path, record)
    else:
        info["checkpoint"] = {"file": model_path.name, "path": str(model_path), "epoch": None,
                              "training_running": None}
    return model, info
