"""The run folder on disk: resume state, the per-epoch callback, the lock; the schema is :mod:`tfssim.run_record`.

See :mod:`tfssim.training` for the folder's layout; its file names, the record and history, the
data fingerprint and the resume-settings rule are :mod:`tfssim.run_record`'s (no TensorFlow, shared
with ``scripts/train_any_backend.py``). :class:`_RunState` (a Keras callback) writes
an epoch's history row, weights and progress file (the commit point) in the order that
keeps a killed run resumable; every write is atomic. A new run that fails before its first epoch
finished removes what it created (:func:`_claim_run_folder`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import keras
import numpy as np

from tfssim._io import atomic_write, atomic_write_text, machine_errno
from tfssim.errors import InputError
from tfssim.run_record import (
    BEST_MODEL_NAME,
    CHECKPOINT_SUFFIX,
    CHECKPOINT_TMP_NAME,
    CONFIG_NAME,
    HISTORY_NAME,
    LOCATION_KEYS,
    LOCK_NAME,
    PROGRESS_NAME,
    RESTART,
    STATE_DIR,
    check_same_data,
    checkpoint_name,
    damaged,
    open_run_lock,
    read_run_record,
    resume_settings,
    write_history,
)
from tfssim.training.config import TrainConfig

logger = logging.getLogger(__name__)


class RunExistsError(FileExistsError):
    """The run folder already holds a run and ``resume`` was not asked for."""


def _check_same_data(previous: dict[str, Any], config: TrainConfig, split: Any, run_dir: Path) -> dict[str, Any] | None:
    """:func:`tfssim.run_record.check_same_data` of a :class:`TrainConfig` and a ``DatasetSplit``."""
    return check_same_data(previous, config.data, split.train, split.val, run_dir)


def check_run_settings(record: Mapping[str, Any], run_dir: str | os.PathLike, *, otherwise: str = RESTART) -> None:
    """Refuse a run record whose settings :meth:`TrainConfig.validate` refuses: the file is damaged.

    :func:`~tfssim.run_record.read_run_record` (no TensorFlow) checks each value's type and
    range and that the record's copies agree with ``config``; which choices a setting may take
    (a model kind, a layout) and the rules across settings (the SSIM window inside the patch)
    are TrainConfig's. A value of the run's own that it refuses is the file's fault, not the
    caller's. Where the run lives (:data:`LOCATION_KEYS`) is not checked: a resume gives it anew.

    Args:
        record: The run's record, as :func:`~tfssim.run_record.read_run_record` read it.
        run_dir: The run folder.
        otherwise: The other way out named in the error (after "restore it from a backup, or").

    Raises:
        InputError: one line naming the file and the setting.
    """
    from tfssim.models import MODEL_KINDS

    path = Path(run_dir) / CONFIG_NAME
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    recorded = {k: v for k, v in record["config"].items() if k in known and k not in LOCATION_KEYS}
    try:
        # validate() converts the fields of this copy; the record itself stays as the file holds it
        TrainConfig(data=os.fspath(run_dir), output=os.fspath(run_dir), **recorded).validate()
    except InputError as err:
        raise damaged(path, f"its settings are refused ({err})", otherwise) from None
    # model is config.model's copy (read_run_record compares them) except in a config without one
    if "model" in record and record["model"] not in MODEL_KINDS:
        wanted = f"one of {', '.join(MODEL_KINDS)}"
        raise damaged(path, f"model must be {wanted}, got {record['model']!r}", otherwise,
                      repair=f"set model to {wanted} in it (or restore it from a backup)")


def read_run(run_dir: str | os.PathLike, *, otherwise: str = RESTART) -> dict[str, Any] | None:
    """A run folder's record read strictly, as both ``tfssim-train --resume`` and ``tfssim-export`` read it.

    :func:`~tfssim.run_record.read_run_record`, then :func:`check_run_settings`: one reader, so
    that a record either command refuses, the other refuses too, with the same line.

    Args:
        run_dir: The run folder.
        otherwise: The other way out named in the error (after "restore it from a backup, or").

    Returns:
        The record as the file holds it, or ``None`` where the folder has no record.

    Raises:
        InputError: the file is damaged; one line naming it, the key and the fix.
    """
    record = read_run_record(run_dir, otherwise=otherwise)
    if record is not None:
        check_run_settings(record, run_dir, otherwise=otherwise)
    return record


def resume_config(data: str | os.PathLike, output: str | os.PathLike, given: Mapping[str, Any]) -> TrainConfig:
    """The configuration that resumes the run in ``output``: its recorded settings, with ``given``.

    A setting the caller did not give takes the run's recorded value, so that
    ``tfssim-train DATA --output RUN --resume`` needs no option repeated; one it gave must equal
    the recorded value (only ``epochs`` may change). :func:`~tfssim.training.train` with
    ``resume=True`` then continues the run.

    Args:
        data: The dataset folder (it may have moved: :func:`train` compares its images).
        output: The run folder.
        given: The settings the caller chose explicitly, by :class:`TrainConfig` field name
            (a command-line option or a config-file key; not the defaults).

    Returns:
        The (not yet validated) configuration.

    Raises:
        InputError: ``output`` holds no run, its record is damaged (:func:`read_run`:
            a value of the wrong type, a copy that differs from ``config``, or a setting
            :meth:`TrainConfig.validate` refuses; the line names the file), its lock file is not
            a regular file, or a given setting differs from the recorded one.

    Example:
        >>> config = resume_config("NanoTWICE", "runs/ssim", {"epochs": 300})
        >>> train(config, resume=True)
    """
    _refuse_if_in_use(Path(output))  # before its record is read: another trainer may be writing it
    # The recorded settings alone first (read_run): a value of the run's own that TrainConfig
    # refuses (an unknown model, a window larger than the patch) is the file's fault, not the caller's.
    previous = read_run(output)
    if previous is None:
        raise InputError(
            f"--resume given but {output} holds no run ({CONFIG_NAME} missing); drop --resume to start one"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = resume_settings(previous["config"], {k: v for k, v in given.items() if k not in LOCATION_KEYS}, output)
    return TrainConfig(data=os.fspath(data), output=os.fspath(output),
                       **{k: v for k, v in settings.items() if k in known and k not in LOCATION_KEYS})


class _RunState(keras.callbacks.Callback):
    """Per epoch: history row, resume state, best model, one summary line; all atomic."""

    def __init__(self, run_dir: Path, rows: list[dict[str, Any]], best: float, epochs: int, chief: bool) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.rows = rows
        self.best = best
        self.epochs = epochs
        self.chief = chief
        self.nan_epoch: int | None = None
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        # A finite loss can still leave non-finite weights after the epoch's last update: that
        # state must not overwrite the last good checkpoint either.
        if not all(math.isfinite(v) for v in logs.values()) or not all(
            np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in self.model.trainable_weights
        ):
            self.nan_epoch = epoch + 1
            self.model.stop_training = True
            if self.chief:  # the epoch's one line still shows the NaN (Keras prints none)
                summary = "  ".join(f"{k} {v:.5f}" for k, v in logs.items() if k != "learning_rate")
                logger.info("epoch %d/%d  %s  (%.1f s)", epoch + 1, self.epochs, summary,
                            time.perf_counter() - self._started)
            return
        seconds = time.perf_counter() - self._started
        row = {"epoch": epoch + 1, **logs, "seconds": round(seconds, 3)}
        self.rows.append(row)
        monitor = logs.get("val_loss", logs.get("loss"))
        if not self.chief:
            return
        # The progress file is the commit point, written last: it names this epoch's weights file,
        # so a kill at any moment before it leaves the previous epoch's state whole (weights,
        # and history rows beyond epochs_done are dropped on resume).
        state = self.run_dir / STATE_DIR
        state.mkdir(exist_ok=True)
        weights = checkpoint_name(epoch + 1)
        _save_checkpoint(self.model, state, weights)
        if monitor < self.best:
            self.best = monitor
            atomic_write(self.run_dir / BEST_MODEL_NAME, self.model.save)
        write_history(self.run_dir / HISTORY_NAME, self.rows)
        atomic_write_text(state / PROGRESS_NAME,
                           json.dumps({"epochs_done": epoch + 1, "best": self.best, "weights": weights}))
        for old in state.glob("*" + CHECKPOINT_SUFFIX):
            if old.name != weights:
                old.unlink(missing_ok=True)
        summary = "  ".join(f"{k} {v:.5f}" for k, v in logs.items() if k != "learning_rate")
        logger.info("epoch %d/%d  %s  (%.1f s)", epoch + 1, self.epochs, summary, seconds)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True


def _load_checkpoint(model: keras.Model, weights: Path) -> None:
    """Load the resume checkpoint ``weights`` (weights + optimizer state) into ``model``.

    Raises:
        InputError: the file does not load (truncated, not HDF5, another model's); one line naming
            it. h5py and Keras name no file, or only in a message of several lines.
    """
    try:
        model.load_weights(weights)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - any other failure to load it is a damaged file
        detail = " ".join(str(err).split())
        detail = detail if len(detail) <= 200 else detail[:197] + "..."
        raise damaged(weights, f"the resume checkpoint does not load ({type(err).__name__}: {detail})") from None


def _save_checkpoint(model: keras.Model, state: Path, weights: str) -> None:
    """Write the weights + optimizer state to ``state/weights`` atomically; a failed write leaves no temporary file.

    h5py reports a failed write (a full disk) in a message of several lines and, when its
    half-written file is garbage-collected later, as "Exception ignored" tracebacks on stderr:
    here the file is collected at once with those reports silenced, and the error becomes one
    ``OSError`` line naming the file.
    """
    import gc
    import sys
    import traceback

    tmp = state / CHECKPOINT_TMP_NAME  # one writer: the lock
    hooks = sys.unraisablehook, sys.excepthook
    unraisable: list[Any] = []
    printed: list[tuple[Any, ...]] = []
    failure: OSError | None = None
    # h5py reports its failing cleanup of a half-written file (in Keras's own error handling, and
    # when the file is freed) from a Cython __dealloc__, which prints the traceback through
    # sys.excepthook and then "Exception ignored" through sys.unraisablehook: both held back
    # here, passed on if the save succeeds, dropped if it fails (the one error below reports it).
    sys.unraisablehook = unraisable.append
    sys.excepthook = lambda *args: printed.append(args)
    try:
        try:
            model.save_weights(tmp)
            os.replace(tmp, state / weights)
        except Exception as err:
            code = getattr(err, "errno", None)
            if code is None:  # h5py and Keras wrap a failed write without its errno: their message holds it
                code = machine_errno(err)
            if code is None:
                tmp.unlink(missing_ok=True)
                raise
            failure = OSError(code, os.strerror(code), str(state / weights))
            traceback.clear_frames(err.__traceback__)  # frees h5py's file now, not at some later collection
        if failure is not None:
            gc.collect()
            unraisable.clear()
            printed.clear()
            tmp.unlink(missing_ok=True)
            raise failure
    finally:
        sys.unraisablehook, sys.excepthook = hooks
        for args in printed:
            hooks[1](*args)
        for report in unraisable:
            hooks[0](report)


# The most a lock file holds that a trainer wrote (its process id); a larger one is not rewritten.
_LOCK_TEXT_BYTES = 4096


class RunInUseError(InputError):
    """Another process (a tfssim-train, e.g. a second --resume) holds the run folder."""


@contextlib.contextmanager
def _claim_run_folder(run_dir: Path, resume: bool) -> Iterator[None]:
    """Hold the run folder for this process; if the run fails before an epoch finished, remove what it made.

    A lock (``fcntl.flock`` on :data:`LOCK_NAME` in the folder, released by the kernel when the
    process ends, however it ends) refuses a second ``tfssim-train`` on the same folder, e.g.
    two ``--resume`` of one run, which would both train and overwrite each other's checkpoints.
    The lock file is opened only if it is a regular file (:func:`tfssim.run_record.open_run_lock`:
    never through a link, whose target its writes would change, never blocking on a pipe), and a
    run that fails leaves it holding what it held before.

    A new run (not ``resume``) that fails or is interrupted before its first epoch finished
    (no progress file) removes the files and folders this call created, so that the
    corrected command can run again into the same ``--output``; anything that was there before
    stays. A resumed run never removes anything.
    """
    if (resume and not run_dir.is_dir()) or (
            not resume and run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir())):
        yield  # _train refuses both ("holds no run", RunExistsError): nothing to lock or to clean up
        return
    created: list[Path] = []  # folders this call makes, innermost first
    if not resume:
        missing = run_dir
        while not missing.exists() and not missing.is_symlink() and missing != missing.parent:
            created.append(missing)
            missing = missing.parent
        run_dir.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in run_dir.iterdir()}
    lock, found = _lock_run_folder(run_dir)
    left = b""  # what the lock file holds once released: empty after a run
    try:
        yield
    except BaseException:
        # A failed or refused run leaves the lock file as it found it (a killed trainer's process
        # id included): a refused resume changes no file of the folder.
        left = found
        if not resume and not (run_dir / STATE_DIR / PROGRESS_NAME).exists():
            _remove_created(run_dir, before, created)
        raise
    finally:
        if lock is not None:
            # Rewritten before it is released: a run that changed nothing (a refused resume) leaves
            # the folder byte-identical, the lock file included.
            if found is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(lock, 0)
                    os.pwrite(lock, left, 0)
            os.close(lock)  # releases the flock


def _lock_run_folder(run_dir: Path) -> tuple[int | None, bytes | None]:
    """A descriptor of the lock file holding an exclusive ``flock`` of ``run_dir``, and what it held before.

    While held, the file holds this process's id (named to a second trainer that is refused);
    :func:`_claim_run_folder` rewrites it on release. A file of more than 4 KiB, which no
    trainer wrote, is left as it is (``None``: nothing to restore). ``(None, None)`` where fcntl
    is missing.

    Raises:
        RunInUseError: another process holds the lock.
        InputError: the lock file is a link, a pipe, a device or a file with other names
            (:func:`tfssim.run_record.open_run_lock`): it is not opened, nothing is written.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return None, None
    fd = open_run_lock(run_dir, create=True)  # held open for the run
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        found: bytes | None = os.pread(fd, _LOCK_TEXT_BYTES + 1, 0)
    except BlockingIOError:
        owner = os.pread(fd, 200, 0).decode(errors="replace").strip()
        os.close(fd)
        raise _in_use(run_dir, owner) from None
    except BaseException:
        os.close(fd)
        raise
    if len(found) > _LOCK_TEXT_BYTES:
        found = None  # not a trainer's: left alone (a refused trainer then names no process)
    else:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, found


def _in_use(run_dir: Path, owner: str) -> RunInUseError:
    return RunInUseError(
        f"run folder {run_dir} is in use by another tfssim-train (process {owner or 'unknown'}); wait for it to "
        "finish (then --resume continues the run) or choose another --output"
    )


def _refuse_if_in_use(run_dir: Path) -> None:
    """Raise :class:`RunInUseError` if another process holds ``run_dir``'s lock (probed, not kept, nothing written).

    Raises:
        RunInUseError: another process holds it.
        InputError: the lock file is a link, a pipe or a device (:func:`tfssim.run_record.open_run_lock`).
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return
    # never through a link nor blocking on a pipe: InputError for a lock file that is no regular file
    fd = open_run_lock(run_dir, create=False)
    if fd is None:  # no lock file: no trainer has held the folder
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(run_dir, os.pread(fd, 200, 0).decode(errors="replace").strip()) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _remove_created(run_dir: Path, before: set[str], created: list[Path]) -> None:
    """Remove what a failed new run created in ``run_dir`` (not the entries in ``before``), then its new folders."""
    import shutil

    for entry in run_dir.iterdir() if run_dir.is_dir() else ():
        if entry.name in before:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    removed = None
    for folder in created:  # innermost first; only if empty (never another process's files)
        try:
            folder.rmdir()
        except OSError:
            break
        removed = folder
    if removed is not None:
        logger.info("no epoch finished: removed %s, which this run had created", removed)
