"""The run folder on disk: resume state, the per-epoch callback, the lock; the schema is :mod:`tfssim.run_record`.

See :mod:`tfssim.training` for the folder's layout; its ``config.json`` and ``history.csv``, the
data fingerprint and the resume-settings rule are :mod:`tfssim.run_record`'s (no TensorFlow, shared
with ``scripts/train_any_backend.py``). :class:`_RunState` (a Keras callback) writes
an epoch's history row, weights and ``state/progress.json`` (the commit point) in the order that
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

from tfssim._io import atomic_write, atomic_write_text
from tfssim.errors import InputError
from tfssim.run_record import (  # noqa: F401 - the schema's names, re-exported here as before
    CONFIG_NAME,
    HISTORY_NAME,
    LOCATION_KEYS,
    LOCK_NAME,
    PROGRESS_NAME,
    STATE_DIR,
    check_same_data,
    damaged,
    data_fingerprint,
    read_history,
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
        InputError: ``output`` holds no run, its ``config.json`` is damaged (a value of the wrong
            type, or a setting :meth:`TrainConfig.validate` refuses; the line names the file), or
            a given setting differs from the recorded one.

    Example:
        >>> config = resume_config("NanoTWICE", "runs/ssim", {"epochs": 300})
        >>> train(config, resume=True)
    """
    _refuse_if_in_use(Path(output))  # before its config.json is read: another trainer may be writing it
    previous = read_run_record(output)
    if previous is None:
        raise InputError(
            f"--resume given but {output} holds no run ({CONFIG_NAME} missing); drop --resume to start one"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    recorded = {k: v for k, v in previous["config"].items() if k in known and k not in LOCATION_KEYS}
    try:
        # The recorded settings alone first: a value of the run's own that TrainConfig refuses (an
        # unknown model, a window larger than the patch) is the file's fault, not the caller's.
        TrainConfig(data=os.fspath(data), output=os.fspath(output), **recorded).validate()
    except InputError as err:
        raise damaged(Path(output) / CONFIG_NAME, f"its settings are refused ({err})") from None
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
        # progress.json is the commit point, written last: it names this epoch's weights file,
        # so a kill at any moment before it leaves the previous epoch's state whole (weights,
        # and history rows beyond epochs_done are dropped on resume).
        state = self.run_dir / STATE_DIR
        state.mkdir(exist_ok=True)
        weights = f"epoch-{epoch + 1:05d}.weights.h5"
        _save_checkpoint(self.model, state, weights)
        if monitor < self.best:
            self.best = monitor
            atomic_write(self.run_dir / "best.keras", self.model.save)
        write_history(self.run_dir / HISTORY_NAME, self.rows)
        atomic_write_text(state / PROGRESS_NAME,
                           json.dumps({"epochs_done": epoch + 1, "best": self.best, "weights": weights}))
        for old in state.glob("*.weights.h5"):
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
    import errno
    import gc
    import sys
    import traceback

    tmp = state / "checkpoint.tmp.weights.h5"  # save_weights needs the .weights.h5 ending; one writer (the lock)
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
            text = " ".join(str(err).split())
            code = getattr(err, "errno", None)
            if code is None:
                code = next((c for c, m in ((errno.ENOSPC, "No space left on device"),
                                            (errno.EDQUOT, "Disk quota exceeded"), (errno.EIO, "Input/output error"))
                             if m in text), None)
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


class RunInUseError(InputError):
    """Another process (a tfssim-train, e.g. a second --resume) holds the run folder."""


@contextlib.contextmanager
def _claim_run_folder(run_dir: Path, resume: bool) -> Iterator[None]:
    """Hold the run folder for this process; if the run fails before an epoch finished, remove what it made.

    A lock (``fcntl.flock`` on :data:`LOCK_NAME` in the folder, released by the kernel when the
    process ends, however it ends) refuses a second ``tfssim-train`` on the same folder, e.g.
    two ``--resume`` of one run, which would both train and overwrite each other's checkpoints.

    A new run (not ``resume``) that fails or is interrupted before its first epoch finished
    (no ``state/progress.json``) removes the files and folders this call created, so that the
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
    lock = _lock_run_folder(run_dir)
    try:
        yield
    except BaseException:
        if not resume and not (run_dir / "state" / PROGRESS_NAME).exists():
            _remove_created(run_dir, before, created)
        raise
    finally:
        if lock is not None:
            # Emptied before it is released: a run that changed nothing (a refused resume) leaves
            # the folder byte-identical, the lock file included.
            with contextlib.suppress(OSError):
                lock.seek(0)
                lock.truncate()
            lock.close()  # releases the flock


def _lock_run_folder(run_dir: Path) -> Any:
    """An open lock file holding an exclusive ``flock`` of ``run_dir`` (None where fcntl is missing).

    While held, the file holds this process's id (named to a second trainer that is refused);
    :func:`_claim_run_folder` empties it again on release.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return None
    handle = open(run_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip()
        handle.close()
        raise _in_use(run_dir, owner) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _in_use(run_dir: Path, owner: str) -> RunInUseError:
    return RunInUseError(
        f"run folder {run_dir} is in use by another tfssim-train (process {owner or 'unknown'}); wait for it to "
        "finish (then --resume continues the run) or choose another --output"
    )


def _refuse_if_in_use(run_dir: Path) -> None:
    """Raise :class:`RunInUseError` if another process holds ``run_dir``'s lock (probed, not kept, nothing written)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return
    try:
        handle = open(run_dir / LOCK_NAME)  # noqa: SIM115 - closed below
    except OSError:  # no lock file: no trainer has held the folder
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(run_dir, handle.read().strip()) from None
        fcntl.flock(handle, fcntl.LOCK_UN)


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
