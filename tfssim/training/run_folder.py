"""The run folder on disk: its file names, history, resume state, data fingerprint and lock.

See :mod:`tfssim.training` for the folder's layout. :class:`_RunState` (a Keras callback) writes
an epoch's history row, weights and ``state/progress.json`` (the commit point) in the order that
keeps a killed run resumable; every write is atomic. A new run that fails before its first epoch
finished removes what it created (:func:`_claim_run_folder`).
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import keras
import numpy as np

from tfssim._io import atomic_write, atomic_write_text
from tfssim.errors import InputError
from tfssim.training.config import TrainConfig

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
HISTORY_NAME = "history.csv"
PROGRESS_NAME = "progress.json"


class RunExistsError(FileExistsError):
    """The run folder already holds a run and ``resume`` was not asked for."""


def _read_history(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


# TrainConfig fields that say where a run and its data live, not what the run is (see _train).
_LOCATION_KEYS = ("output", "data")


def data_fingerprint(root: str | os.PathLike, train: Sequence[str | os.PathLike],
                     val: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """What identifies a run's images wherever the dataset lies: name, size and SHA-256 of each.

    Names are relative to the dataset folder ``root`` (``/`` separated), so a dataset copied or
    moved elsewhere has the same fingerprint; reading every training and validation file once
    costs about a second per GB.

    Args:
        root: The dataset folder (``DATA``).
        train: The training image paths (``DatasetSplit.train``).
        val: The validation image paths (``DatasetSplit.val``).

    Returns:
        ``{"algorithm": "sha256", "train": [[name, bytes, hexdigest], ...], "val": [...]}``.

    Example:
        >>> split = data.load_dataset("NanoTWICE")
        >>> data_fingerprint("NanoTWICE", split.train, split.val)["train"][0][0]
        'Normal/...'
    """
    import hashlib

    def entry(path: str | os.PathLike) -> list[Any]:
        path = Path(path)
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:  # not under root (cannot happen with load_dataset): its name alone
            name = path.name
        return [name, path.stat().st_size, digest.hexdigest()]

    return {"algorithm": "sha256", "train": [entry(p) for p in train], "val": [entry(p) for p in val]}


def _same_place(a: str, b: str) -> bool:
    return a == b or os.path.realpath(a) == os.path.realpath(b)


def _listed(names: Sequence[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_same_data(previous: dict[str, Any], config: TrainConfig, split: Any, run_dir: Path) -> dict[str, Any] | None:
    """On ``--resume`` with ``DATA`` elsewhere than the run's: the same training and validation images?

    Data in the same place is taken as it is (as before: not re-read). Elsewhere, its
    :func:`data_fingerprint` must equal the one the run recorded (names relative to ``DATA``,
    sizes, SHA-256). A run made before fingerprints were recorded has only its image paths: the
    names relative to the old ``DATA`` must match, and a warning says the contents could not be
    compared.

    Returns:
        The fingerprint to record: the saved one (same place), the new data's (moved), or
        ``None`` (same place, none recorded yet: computed when the record is written).

    Raises:
        ValueError: the moved data holds other images; one line naming the differences.
    """
    old_data = str(previous.get("config", {}).get("data", config.data))
    saved = previous.get("data_fingerprint")
    if _same_place(old_data, config.data):
        return saved if isinstance(saved, dict) else None
    current = data_fingerprint(config.data, split.train, split.val)
    problems: list[str] = []
    if isinstance(saved, dict):
        for part in ("train", "val"):
            before = {name: (size, digest) for name, size, digest in saved.get(part, [])}
            now = {name: (size, digest) for name, size, digest in current[part]}
            role = "training" if part == "train" else "validation"
            missing = sorted(set(before) - set(now))
            new = sorted(set(now) - set(before))
            differ = sorted(n for n in set(before) & set(now) if before[n] != now[n])
            if missing:
                problems.append(f"{len(missing)} {role} image(s) missing ({_listed(missing)})")
            if new:
                problems.append(f"{len(new)} {role} image(s) not in the run ({_listed(new)})")
            if differ:
                sizes = [f"{n} ({before[n][0]} -> {now[n][0]} bytes)" if before[n][0] != now[n][0]
                         else f"{n} (same size, other content)" for n in differ]
                problems.append(f"{len(differ)} {role} image(s) changed: {_listed(sizes)}")
        how = "names, sizes and SHA-256 contents"
    else:
        # A run from before fingerprints: only its absolute image paths are on record.
        for part, key in (("train", "train_images"), ("val", "val_images")):
            def relative(path: str) -> str:
                try:
                    return Path(path).relative_to(old_data).as_posix()
                except ValueError:
                    return Path(path).name
            before = [relative(p) for p in previous.get(key, [])]
            now = [name for name, _, _ in current[part]]
            if before != now:
                role = "training" if part == "train" else "validation"
                missing, new = sorted(set(before) - set(now)), sorted(set(now) - set(before))
                detail = "; ".join(x for x in (missing and f"missing {_listed(missing)}",
                                              new and f"not in the run {_listed(new)}") if x)
                problems.append(f"other {role} images ({detail or 'another order'})")
        how = "names (the run records no sizes or contents)"
        if not problems:
            logger.warning(
                "DATA moved from %s to %s: the run in %s was made before tfssim recorded image contents, so only "
                "the image names were compared (they match); make sure the images are the same", old_data,
                config.data, run_dir,
            )
    if problems:
        raise InputError(
            f"--resume with DATA {config.data} whose images differ from those the run in {run_dir} was trained on "
            f"(in {old_data}; compared by {how}): {'; '.join(problems)}; give DATA the run's images, or train "
            "into a new --output"
        )
    return current


def _previous_locations(previous: dict[str, Any], config: TrainConfig) -> list[dict[str, str]]:
    """The earlier ``{"output", "data"}`` places of a resumed run, oldest first, plus the last one if it moved."""
    places = [p for p in previous.get("previous_locations", []) if isinstance(p, dict)]
    before = {k: str(previous.get("config", {}).get(k, "")) for k in _LOCATION_KEYS}
    if not all(_same_place(before[k], str(getattr(config, k))) for k in _LOCATION_KEYS):
        places.append(before)
    return places


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
        state = self.run_dir / "state"
        state.mkdir(exist_ok=True)
        weights = f"epoch-{epoch + 1:05d}.weights.h5"
        _save_checkpoint(self.model, state, weights)
        if monitor < self.best:
            self.best = monitor
            atomic_write(self.run_dir / "best.keras", self.model.save)
        _write_history(self.run_dir / HISTORY_NAME, self.rows)
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


# A lock file in the run folder: one tfssim-train at a time per folder (see _claim_run_folder).
LOCK_NAME = ".tfssim-train.lock"


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
            lock.close()  # releases the flock


def _lock_run_folder(run_dir: Path) -> Any:
    """An open lock file holding an exclusive ``flock`` of ``run_dir`` (None where fcntl is missing)."""
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
        raise RunInUseError(
            f"run folder {run_dir} is in use by another tfssim-train (process {owner or 'unknown'}); wait for it to "
            "finish (then --resume continues the run) or choose another --output"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


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
