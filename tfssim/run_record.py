"""The run folder's record: ``config.json`` and ``history.csv``, written, read and checked on resume.

A run lives in one folder::

    RUN_DIR/
      config.json           the resolved configuration, package and TensorFlow versions
      final.keras           the model after the last epoch
      best.keras            the model with the lowest validation loss (training loss if no
                            validation images)
      history.csv           one row per finished epoch
      training_curves.png   loss / val_loss per epoch
      tensorboard/          TensorBoard logs
      examples/             input / reconstruction / residual PNGs of validation patches
      state/                resume state: progress.json (epochs done, best value) naming the
                            weights + optimizer file of the last finished epoch
      .tfssim-train.lock    held (flock) while a tfssim-train uses the folder: a second one is refused

This is the one definition of the run-folder schema that ``tfssim-export`` reads, shared by both
trainers: ``tfssim-train`` (:mod:`tfssim.training`) and ``scripts/train_any_backend.py`` (Keras 3
on JAX or PyTorch, on a machine without TensorFlow). It imports no TensorFlow and no Keras.

``config.json`` holds ``config`` (the run's settings by :class:`tfssim.training.TrainConfig`
field name; a trainer records those it has), ``versions``, ``model``, ``channels``,
``patch_size``, ``latent_dim``, ``ssim`` (:meth:`tfssim.core.ssim_params.SSIMParams.to_dict`),
``train_images``, ``val_images``, ``data_fingerprint`` (:func:`data_fingerprint`) and, after a
resume from elsewhere, ``previous_locations``; a trainer adds what it knows besides (layout,
precision, strategy, device). ``history.csv`` has one row per finished epoch (``epoch``,
``loss``, ``val_loss``, ..., ``seconds``).

On resume, :func:`resume_settings` is the one rule: a resumed run keeps its recorded settings;
a setting given again must equal the recorded one (only ``epochs`` may change), and one not
given takes the recorded value. :func:`check_same_data` compares moved data with the recorded
images.

Every command reads the run folder's files through this module's strict readers:
:func:`read_run_record` (``config.json``), :func:`read_history` (``history.csv``),
:func:`read_progress` (``state/progress.json``) and :func:`read_resume_state` (all of them, with the
checkpoint files they name, for a resume). A damaged file is one :class:`~tfssim.errors.InputError`
line naming the file, the key or line, what it must hold and the fix; the readers write nothing,
so a command that reads everything first changes nothing when a file is damaged. The settings'
JSON types and ranges (:data:`INT_SETTINGS`, :data:`FLOAT_SETTINGS`, ...) are the one table that
:class:`tfssim.training.TrainConfig` and ``--config`` files are checked against as well.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from tfssim._io import atomic_write, open_lock_file
from tfssim.core.ssim_params import NUMBER_RANGES, SSIMParams, describe_range, in_range
from tfssim.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["CONFIG_NAME", "HISTORY_NAME", "PROGRESS_NAME", "STATE_DIR", "LOCK_NAME", "BEST_MODEL_NAME",
           "FINAL_MODEL_NAME", "CURVES_NAME", "TENSORBOARD_DIR", "EXAMPLES_DIR", "LOCATION_KEYS",
           "CHANGEABLE_KEYS", "SSIM_CONFIG_KEYS", "INT_SETTINGS", "FLOAT_SETTINGS", "BOOL_SETTINGS", "STR_SETTINGS",
           "RESTART", "setting_problem", "damaged", "read_history", "write_history", "read_progress", "ResumeState",
           "read_resume_state", "data_fingerprint", "check_same_data", "previous_locations", "run_record",
           "read_run_record", "resume_settings", "open_run_lock", "model_file", "is_finished", "has_run",
           "keras_archive_config"]

CONFIG_NAME = "config.json"
HISTORY_NAME = "history.csv"
PROGRESS_NAME = "progress.json"
# The folder of the resume state: PROGRESS_NAME and the weights + optimizer file it names.
STATE_DIR = "state"
# That file's ending (Keras's save_weights needs it), the temporary name it is written under, and
# the name of runs written before progress.json named the file.
CHECKPOINT_SUFFIX = ".weights.h5"
CHECKPOINT_TMP_NAME = "checkpoint.tmp" + CHECKPOINT_SUFFIX
LEGACY_CHECKPOINT_NAME = "checkpoint" + CHECKPOINT_SUFFIX
# scripts/train_any_backend.py's resume state: model and optimizer in one Keras file.
ANY_BACKEND_STATE_NAME = "state.keras"
# A lock file in the run folder: one trainer at a time per folder (tfssim.training.run_folder). Every
# process that opens it goes through open_run_lock.
LOCK_NAME = ".tfssim-train.lock"
# The models a trainer saves: the one of the lowest monitored loss, and the one after the last epoch.
BEST_MODEL_NAME = "best.keras"
FINAL_MODEL_NAME = "final.keras"
# What tfssim-train writes besides: the loss curves, TensorBoard's logs, reconstructed examples.
CURVES_NAME = "training_curves.png"
TENSORBOARD_DIR = "tensorboard"
EXAMPLES_DIR = "examples"


def checkpoint_name(epochs_done: int) -> str:
    """The resume checkpoint's file name in :data:`STATE_DIR` after ``epochs_done`` epochs."""
    return f"epoch-{epochs_done:05d}{CHECKPOINT_SUFFIX}"


# Settings that say where a run and its data live, not what the run is: a copied or moved run
# folder resumes (moved data is compared by its images, check_same_data).
LOCATION_KEYS = ("output", "data")
# Settings a resumed run may change.
CHANGEABLE_KEYS = ("epochs",)

# --- the settings' schema ---------------------------------------------------------------------
# One table of every setting's JSON type and range, by TrainConfig field name: TrainConfig.validate
# (which also converts numeric strings, for callers in Python), load_config (--config files: the
# JSON type only) and read_run_record (a run's config.json: type and range) all check against it.

# The config's flat ssim_* keys (as in config files and a run's config.json) and the SSIMParams
# field each one sets; the defaults, ranges and checks are SSIMParams' own.
SSIM_CONFIG_KEYS = {"ssim_window": "window_size", "ssim_sigma": "sigma", "ssim_k1": "k1", "ssim_k2": "k2",
                    "ssim_weighting": "weighting"}
# Integer settings: (minimum, maximum or None). seed: NumPy's seeds are 32-bit; ssim_window's full
# rule (odd) is SSIMParams'.
INT_SETTINGS: dict[str, tuple[int, int | None]] = {
    "epochs": (1, None), "patches_per_epoch": (1, None), "batch_size": (1, None), "patch_size": (16, None),
    "latent_dim": (1, None), "ssim_window": (1, None), "seed": (0, 2**32 - 1), "val_patches": (1, None),
    "vae_samples": (1, None),
}
# Number settings: (low, low excluded, high or None, high excluded); the ssim_* ranges are SSIMParams'.
FLOAT_SETTINGS: dict[str, tuple[float, bool, float | None, bool]] = {
    **{key: NUMBER_RANGES[field] for key, field in SSIM_CONFIG_KEYS.items() if field in NUMBER_RANGES},
    "learning_rate": (0.0, True, None, False), "weight_decay": (0.0, False, None, False),
    "val_split": (0.0, False, 1.0, True), "vae_observation_std": (0.0, True, None, False),
    "fm_weight": (0.0, False, None, False), "scale": (0.0, True, 1.0, False),
}
BOOL_SETTINGS = ("grayscale", "augment", "skip_bad_images", "jit_compile")
# String settings; fm_weights may also be null. (Their choices are TrainConfig.validate's.)
STR_SETTINGS = ("data", "output", "model", "layout", "ssim_weighting", "mixed_precision", "strategy", "fm_weights")
# image_size: null or [H, W].


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


def setting_problem(name: str, value: Any, *, ranges: bool = True) -> str | None:
    """What the setting ``name`` must be when ``value`` is not that, else ``None``.

    The JSON type is checked exactly, as a file holds it: an integer setting takes an integer
    (not ``5.0``, not ``"5"``, not ``true``), a number setting an integer or a float, a switch a
    boolean, the others a string (``fm_weights`` also ``null``), ``image_size`` ``null`` or
    ``[H, W]``.

    Args:
        name: A :class:`tfssim.training.TrainConfig` field name (others: ``None``).
        value: The value, as parsed from JSON or YAML.
        ranges: Check numbers against their range too (a run's ``config.json``); without it
            only the type (a ``--config`` file, whose ranges ``TrainConfig.validate`` checks).

    Returns:
        E.g. ``"an integer >= 16"``, or ``None`` where ``value`` is right (or ``name`` unknown).

    Example:
        >>> setting_problem("patch_size", "abc")
        'an integer >= 16'
    """
    if name in BOOL_SETTINGS:
        return None if isinstance(value, bool) else "true or false"
    if name in INT_SETTINGS:
        low, high = INT_SETTINGS[name]
        ok = _is_int(value) and (not ranges or (value >= low and (high is None or value <= high)))
        return None if ok else f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
    if name in FLOAT_SETTINGS:
        ok = _is_number(value) and (not ranges or (_finite(value) and in_range(float(value), *FLOAT_SETTINGS[name])))
        return None if ok else f"a number {describe_range(*FLOAT_SETTINGS[name])}"
    if name == "image_size":
        ok = value is None or (isinstance(value, list) and len(value) == 2
                               and all(_is_int(v) and (not ranges or v >= 1) for v in value))
        return None if ok else "null or a list of two integers [H, W]"
    if name in STR_SETTINGS:
        ok = isinstance(value, str) or (name == "fm_weights" and value is None)
        return None if ok else "a string" + (" or null" if name == "fm_weights" else "")
    return None


# --- reading the run folder ---------------------------------------------------------------------
# What to do about a damaged file, after repairing it: the default is the trainer's; tfssim-export
# passes its own (export the model file itself).
RESTART = "train into a new --output"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def damaged(path: str | os.PathLike, problem: str, otherwise: str = RESTART,
            repair: str = "restore it from a backup") -> InputError:
    """The one-line error of a damaged run-folder file: the file, what is wrong in it, the fix.

    Args:
        path: The file.
        problem: What is wrong, naming the key or line (``"config.patch_size must be ..."``).
        otherwise: The way out besides repairing the file (the trainer's: a new ``--output``).
        repair: How to repair the file.

    Returns:
        The error to raise: ``"{path}: {problem}; the run folder is damaged: {repair}, or {otherwise}"``.
    """
    return InputError(f"{path}: {problem}; the run folder is damaged: {repair}, or {otherwise}")


def has_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a run a trainer can resume (its ``config.json`` exists)."""
    return (Path(run_dir) / CONFIG_NAME).exists()


def is_finished(run_dir: str | os.PathLike) -> bool:
    """Whether the run in ``run_dir`` has finished (its ``final.keras`` exists)."""
    return (Path(run_dir) / FINAL_MODEL_NAME).exists()


def model_file(run_dir: str | os.PathLike) -> Path | None:
    """The model file an export takes from a run folder: ``best.keras``, else ``final.keras``, else ``None``."""
    run_dir = Path(run_dir)
    return next((p for p in (run_dir / BEST_MODEL_NAME, run_dir / FINAL_MODEL_NAME) if p.exists()), None)


# The model's configuration inside a ``.keras`` archive (Keras's own file, not the run folder's config.json).
_ARCHIVE_CONFIG = "config.json"


def keras_archive_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The model configuration a ``.keras`` archive holds, read without Keras (nothing is deserialised).

    Args:
        path: A ``.keras`` file (e.g. a run folder's ``best.keras``).

    Returns:
        The archive's configuration object, or ``None`` where the file is no readable archive or
        holds no JSON object there.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read(_ARCHIVE_CONFIG))
    except (OSError, KeyError, ValueError, RecursionError, zipfile.BadZipFile):
        return None
    return config if isinstance(config, dict) else None


# --- the run folder's lock file ---------------------------------------------------------------------

def open_run_lock(run_dir: str | os.PathLike, *, create: bool) -> int | None:
    """A descriptor of the run folder's lock file (:data:`LOCK_NAME`), for every process that opens it.

    The trainer holds it (``create``); ``tfssim-train --resume`` and ``tfssim-export`` probe it.
    Only a regular file is opened: never through a link, never blocking on a named pipe
    (see :func:`tfssim._io.open_lock_file`).

    Args:
        run_dir: The run folder.
        create: Open it to write, creating it if missing; else read-only, ``None`` where missing.

    Returns:
        An open descriptor (the caller closes it), or ``None`` (a probe, no lock file).

    Raises:
        InputError: the lock file is a link, a folder, a pipe or a device (or, to write, a file
            with other hard links); one line naming it and saying to remove it.
        OSError: it cannot be opened otherwise (e.g. no permission).
    """
    return open_lock_file(Path(run_dir) / LOCK_NAME, create=create,
                          fix="tfssim-train makes a new one when it trains into the folder")


def _read_text(path: Path, otherwise: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise damaged(path, f"not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})",
                      otherwise) from None


def _read_json(path: Path, otherwise: str) -> Any:
    text = _read_text(path, otherwise)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = " (the file ends there: cut short?)" if err.pos >= len(text.rstrip()) else ""
        raise damaged(path, f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}{where})",
                      otherwise) from None
    except (ValueError, RecursionError) as err:  # an integer of 4300+ digits, nesting deeper than Python's stack
        raise damaged(path, f"not valid JSON ({' '.join(str(err).split()) or type(err).__name__})",
                      otherwise) from None


def read_history(path: str | os.PathLike, *, otherwise: str = RESTART) -> list[dict[str, Any]]:
    """The rows of a ``history.csv``, checked; ``[]`` where there is none.

    The header names distinct columns, ``epoch`` and ``loss`` among them; every line has one cell
    per column; ``epoch`` counts 1, 2, ... and every other cell is a finite number (the trainers
    never record a NaN epoch).

    Args:
        path: The file.
        otherwise: The other way out named in the error (after "restore it from a backup, or").

    Returns:
        One dict per epoch, in order: ``epoch`` an ``int``, the other columns ``float``.

    Raises:
        InputError: the file is damaged; one line naming it, the line and the cell.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = _read_text(path, otherwise)
    try:
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise damaged(path, f"not a CSV table ({err})", otherwise) from None
    if text and not text.endswith(("\n", "\r")):
        # The writer ends every line with a line break: without one the last line was cut, perhaps mid-number.
        raise damaged(path, f"line {len(lines)} is cut short (the file ends mid-line, without its line break)",
                      otherwise)
    if not lines or not lines[0]:
        raise damaged(path, "no header line (the file is empty)", otherwise)
    header = lines[0]
    missing = [name for name in ("epoch", "loss") if name not in header]
    if missing or len(set(header)) != len(header) or "" in header:
        problem = (f"the header has no {' or '.join(missing)} column" if missing
                   else "the header names a column twice or has an empty name")
        raise damaged(path, f"{problem} (header {_short(','.join(header))})", otherwise)
    rows: list[dict[str, Any]] = []
    for number, cells in enumerate(lines[1:], start=2):
        if not cells:
            continue  # a blank line holds no epoch
        if len(cells) != len(header):
            raise damaged(path, f"line {number} has {len(cells)} cells, the header {len(header)}", otherwise)
        row: dict[str, Any] = {}
        for name, cell in zip(header, cells):
            if name == "epoch":
                try:
                    value: Any = int(cell)
                except ValueError:
                    value = None
                if value != len(rows) + 1:
                    raise damaged(path, f"line {number}: epoch is {_short(cell)}, expected {len(rows) + 1} "
                                  "(epochs count 1, 2, ... in order)", otherwise)
            else:
                try:
                    value = float(cell)
                except ValueError:
                    value = math.nan
                if not math.isfinite(value):
                    raise damaged(path, f"line {number}: {name} is {_short(cell)}, not a finite number", otherwise)
            row[name] = value
        rows.append(row)
    return rows


def write_history(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` (one per epoch, the first row's keys as columns) to ``history.csv`` atomically."""
    if not rows:
        return

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(Path(path), write)


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


def check_same_data(previous: Mapping[str, Any], data: str, train: Sequence[str | os.PathLike],
                    val: Sequence[str | os.PathLike], run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """On resume with ``data`` elsewhere than the run's: the same training and validation images?

    Data in the same place is taken as it is (not re-read). Elsewhere, its
    :func:`data_fingerprint` must equal the one the run recorded (names relative to ``data``,
    sizes, SHA-256). A run made before fingerprints were recorded has only its image paths: the
    names relative to the old data folder must match, and a warning says the contents could not
    be compared.

    Args:
        previous: The run's ``config.json`` (:func:`read_run_record`).
        data: The dataset folder of this leg.
        train: This leg's training image paths.
        val: This leg's validation image paths.
        run_dir: The run folder, named in messages.

    Returns:
        The fingerprint to record: the saved one (same place), the new data's (moved), or
        ``None`` (same place, none recorded yet: computed when the record is written).

    Raises:
        InputError: the moved data holds other images; one line naming the differences.
    """
    data = str(data)
    old_data = str(previous.get("config", {}).get("data", data))
    saved = previous.get("data_fingerprint")
    if _same_place(old_data, data):
        return saved if isinstance(saved, dict) else None
    current = data_fingerprint(data, train, val)
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
                data, run_dir,
            )
    if problems:
        raise InputError(
            f"--resume with DATA {data} whose images differ from those the run in {run_dir} was trained on "
            f"(in {old_data}; compared by {how}): {'; '.join(problems)}; give DATA the run's images, or train "
            "into a new --output"
        )
    return current


def previous_locations(previous: Mapping[str, Any], config: Mapping[str, Any]) -> list[dict[str, str]]:
    """The earlier ``{"output", "data"}`` places of a resumed run, oldest first, plus the last one if it moved."""
    places = [p for p in previous.get("previous_locations", []) if isinstance(p, dict)]
    before = {k: str(previous.get("config", {}).get(k, "")) for k in LOCATION_KEYS}
    if not all(_same_place(before[k], str(config.get(k, ""))) for k in LOCATION_KEYS):
        places.append(before)
    return places


def run_record(config: Mapping[str, Any], *, ssim: SSIMParams, versions: Mapping[str, str],
               train_images: Sequence[str | os.PathLike], val_images: Sequence[str | os.PathLike],
               fingerprint: Mapping[str, Any] | None = None, previous: Mapping[str, Any] | None = None,
               **facts: Any) -> dict[str, Any]:
    """The object a run folder's ``config.json`` holds (see the module docstring).

    Args:
        config: The run's settings by ``TrainConfig`` field name; must hold ``data``, ``model``,
            ``patch_size`` and ``latent_dim`` (``grayscale`` absent: true).
        ssim: The SSIM of the loss and the anomaly map.
        versions: Package versions (``{"keras": ..., ...}``).
        train_images: The training image paths.
        val_images: The validation image paths.
        fingerprint: The images' :func:`data_fingerprint`, if known (else computed here).
        previous: On resume, the run's earlier record: its earlier places stay on record.
        **facts: What else the trainer records (``layout``, ``precision``, ``device``, ...).

    Returns:
        The record, ready for ``json.dumps``.
    """
    record: dict[str, Any] = {
        "config": dict(config), "versions": dict(versions), "model": config["model"],
        "channels": 1 if config.get("grayscale", True) else 3, "patch_size": config["patch_size"],
        "latent_dim": config["latent_dim"], "ssim": ssim.to_dict(), **facts,
        "train_images": [str(p) for p in train_images], "val_images": [str(p) for p in val_images],
        "data_fingerprint": dict(fingerprint) if fingerprint else data_fingerprint(config["data"], train_images,
                                                                                     val_images),
    }
    if previous is not None:
        # config.json names where the run lives now; the earlier places stay on record.
        record["previous_locations"] = previous_locations(previous, config)
    return record


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def read_run_record(run_dir: str | os.PathLike, *, otherwise: str = RESTART) -> dict[str, Any] | None:
    """A run folder's ``config.json``, checked; ``None`` where it has none.

    The file is a JSON object whose ``config`` is an object; each setting in it that
    :class:`~tfssim.training.TrainConfig` knows has its JSON type and range
    (:func:`setting_problem`); ``model``, ``channels``, ``patch_size``, ``latent_dim``, ``ssim``,
    the image lists, ``data_fingerprint``, ``previous_locations`` and what the trainers add
    (``layout``, ``precision``, ``strategy``, ``replicas``, ``resize``, ``device``, ...), where
    present, have the shapes the trainers write; the copies of a setting outside ``config``
    (``model``, ``channels``, ``patch_size``, ``latent_dim``, ``ssim``, ``resize``) equal it.
    Keys this version does not know are kept unchecked. Which choices a setting may take (a
    model kind, a layout) is :class:`~tfssim.training.TrainConfig`'s, which needs TensorFlow:
    ``tfssim.training.run_folder.read_run`` adds those checks, for both ``tfssim-train --resume`` and
    ``tfssim-export``.

    Args:
        run_dir: The run folder.
        otherwise: The other way out named in the error (after "restore it from a backup, or").

    Returns:
        The record as the file holds it (its values have the right types, so no conversion).

    Raises:
        InputError: the file is damaged; one line naming it, the key and what it must hold.
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.exists():
        return None
    record = _read_json(path, otherwise)

    def wrong(key: str, wanted: str, value: Any) -> InputError:
        return damaged(path, f"{key} must be {wanted}, got {_short(value)}", otherwise,
                       repair=f"set {key} to {wanted} in it (or restore it from a backup)")

    if not isinstance(record, dict):
        raise damaged(path, f"holds {_type_name(record)}, not a JSON object of the run's record", otherwise)
    if not isinstance(record.get("config"), dict):
        raise damaged(path, "holds no run settings ('config' must be an object of settings, got "
                      f"{_short(record.get('config'))})", otherwise)
    for name, value in record["config"].items():
        wanted = setting_problem(name, value)
        if wanted is not None:
            raise wrong(f"config.{name}", wanted, value)
    flat_ssim = {field: record["config"][key] for key, field in SSIM_CONFIG_KEYS.items() if key in record["config"]}
    try:
        SSIMParams.of(flat_ssim)  # the rules across values (an odd window) are SSIMParams'
    except (ValueError, TypeError) as err:
        raise damaged(path, f"config.ssim_*: {err}", otherwise) from None
    for name in ("patch_size", "latent_dim"):  # the record's copies of the settings
        wanted = setting_problem(name, record[name]) if name in record else None
        if wanted is not None:
            raise wrong(name, wanted, record[name])
    checks: dict[str, tuple[str, Any]] = {
        "model": ("a string", lambda v: isinstance(v, str)),
        "channels": ("1 or 3", lambda v: _is_int(v) and v in (1, 3)),
        "train_images": ("a list of paths", lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v)),
        "val_images": ("a list of paths", lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v)),
        "previous_locations": ('a list of {"output": ..., "data": ...} objects',
                               lambda v: isinstance(v, list) and all(
                                   isinstance(p, dict) and all(isinstance(x, str) for x in p.values()) for p in v)),
        "versions": ("an object", lambda v: isinstance(v, dict)),
        "device": ("a string", lambda v: isinstance(v, str)),
        "devices": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(d, str) for d in v)),
        # what a trainer adds besides (tfssim.training's loop, scripts/train_any_backend.py)
        **dict.fromkeys(("layout", "precision", "strategy", "trainer"), ("a string", lambda v: isinstance(v, str))),
        "replicas": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
        "skipped_images": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(d, str) for d in v)),
        "resize": ("an object of scale, image_size and interpolation", lambda v: isinstance(v, dict)),
    }
    for key, (wanted, ok) in checks.items():
        if key in record and not ok(record[key]):
            raise wrong(key, wanted, record[key])
    if "ssim" in record:
        if not isinstance(record["ssim"], dict):
            raise wrong("ssim", "an object of SSIM parameters", record["ssim"])
        try:
            SSIMParams.of({k: v for k, v in record["ssim"].items() if k in SSIMParams.keys()})
        except (ValueError, TypeError) as err:
            raise damaged(path, f"ssim: {err}", otherwise) from None
    if "data_fingerprint" in record:
        fingerprint = record["data_fingerprint"]
        entry = lambda e: (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)  # noqa: E731
                           and _is_int(e[1]) and isinstance(e[2], str))
        if not (isinstance(fingerprint, dict) and isinstance(fingerprint.get("algorithm", ""), str) and all(
                isinstance(fingerprint.get(part, []), list) and all(entry(e) for e in fingerprint.get(part, []))
                for part in ("train", "val"))):
            raise wrong("data_fingerprint", 'an object of "train" and "val" lists of [name, bytes, sha256]',
                        fingerprint)
    if "resize" in record:
        for name in ("scale", "image_size"):
            if name in record["resize"]:
                wanted = setting_problem(name, record["resize"][name])
                if wanted is not None:
                    raise wrong(f"resize.{name}", wanted, record["resize"][name])
        if not isinstance(record["resize"].get("interpolation", ""), (str, type(None))):
            raise wrong("resize.interpolation", "a string or null", record["resize"]["interpolation"])
    _check_copies(record, path, otherwise)
    return record


def _check_copies(record: Mapping[str, Any], path: Path, otherwise: str) -> None:
    """Refuse a record whose copies of a setting differ from ``config``'s (each already of its type).

    :func:`run_record` writes ``model``, ``channels``, ``patch_size``, ``latent_dim`` and
    ``ssim`` from the settings, tfssim-train its ``resize`` too: they agree in every record a
    trainer wrote. Readers take one or the other (``tfssim-export`` the copies, a resume
    ``config``), so a record where they differ would be read as two different runs: it is
    damaged, whichever of the two is wrong.
    """
    config, absent = record["config"], object()
    # (the copy's key, its value, the setting's key, the setting's value as the copy records it)
    pairs: list[tuple[str, Any, str, Any]] = [
        (key, record.get(key, absent), f"config.{key}", config.get(key, absent))
        for key in ("model", "patch_size", "latent_dim")]
    grayscale = config.get("grayscale", True)  # as run_record derives channels: absent is grayscale
    pairs.append(("channels", record.get("channels", absent), "config.grayscale", 1 if grayscale else 3))
    if isinstance(record.get("ssim"), dict):
        pairs += [(f"ssim.{field}", record["ssim"].get(field, absent), f"config.{key}", config.get(key, absent))
                  for key, field in SSIM_CONFIG_KEYS.items()]
    if isinstance(record.get("resize"), dict):
        # compared only where config has them: without, both readers take config's default (unresized)
        pairs += [(f"resize.{key}", record["resize"].get(key, absent), f"config.{key}", config.get(key, absent))
                  for key in ("scale", "image_size")]
    for copy_key, copy, key, value in pairs:
        if copy is absent or value is absent or copy == value:
            continue
        if key == "config.grayscale":
            shown, fix = f"{json.dumps(grayscale)} ({value} channel{'s' if value != 1 else ''})", \
                "the run's own values in it (1 and true, or 3 and false)"
        else:
            shown, fix = _short(value), "the run's own value in it"
        raise damaged(path, f"{copy_key} is {_short(copy)} but {key} is {shown}: the trainer records the same "
                      "setting in both", otherwise,
                      repair=f"give {copy_key} and {key} {fix} (or restore it from a backup)")


def read_progress(run_dir: str | os.PathLike, *, otherwise: str = RESTART) -> dict[str, Any] | None:
    """A run folder's ``state/progress.json`` (the resume point), checked; ``None`` where it has none.

    Args:
        run_dir: The run folder.
        otherwise: The other way out named in the error (after "restore it from a backup, or").

    Returns:
        ``{"epochs_done": int >= 1, "best": float, "weights": file name}``; ``weights`` is
        ``checkpoint.weights.h5`` for runs written before progress.json named it.

    Raises:
        InputError: the file is damaged (not an object, a key missing or of the wrong type, a
            weights name that is not a plain ``.weights.h5`` file name); one line naming the key.
    """
    path = Path(run_dir) / STATE_DIR / PROGRESS_NAME
    if not path.exists():
        return None
    progress = _read_json(path, otherwise)
    if not isinstance(progress, dict):
        raise damaged(path, f"holds {_type_name(progress)}, not a JSON object of the resume point", otherwise)
    # runs written before progress.json named its weights file used checkpoint.weights.h5
    progress = {"weights": LEGACY_CHECKPOINT_NAME, **progress}
    checks = (("epochs_done", "an integer >= 1", lambda v: _is_int(v) and v >= 1),
              ("best", "a finite number", lambda v: _is_number(v) and _finite(v)),
              # a plain name: the file lies in the state folder, never elsewhere
              ("weights", f"a file name ending in {CHECKPOINT_SUFFIX} (in the state folder)",
               lambda v: isinstance(v, str) and v.endswith(CHECKPOINT_SUFFIX) and v == Path(v).name
               and "\\" not in v and not v.startswith(".")))
    for key, wanted, ok in checks:
        if key not in progress:
            raise damaged(path, f"has no {key!r} (it must be {wanted})", otherwise)
        if not ok(progress[key]):
            raise damaged(path, f"{key} must be {wanted}, got {_short(progress[key])}", otherwise)
    return {"epochs_done": progress["epochs_done"], "best": float(progress["best"]), "weights": progress["weights"]}


@dataclasses.dataclass(frozen=True)
class ResumeState:
    """A run folder as :func:`read_resume_state` found it: everything a resumed run continues from.

    Attributes:
        record: ``config.json`` (:func:`read_run_record`).
        epochs_done: Epochs finished (``state/progress.json``; 0 where there is none).
        best: The best monitored value so far (``inf`` before the first epoch).
        weights: The weights + optimizer file of the last finished epoch (``None`` before the first).
        history: The ``history.csv`` rows of those epochs (rows beyond ``epochs_done``, of an epoch
            whose commit did not happen, dropped).
    """

    record: dict[str, Any]
    epochs_done: int
    best: float
    weights: Path | None
    history: list[dict[str, Any]]


def read_resume_state(run_dir: str | os.PathLike, *, otherwise: str = RESTART) -> ResumeState | None:
    """Read and check every file a resume continues from; ``None`` where the folder holds no run.

    ``config.json``, ``state/progress.json`` and ``history.csv`` (their readers), the weights file
    progress.json names (present), the history holding every finished epoch, and ``best.keras``
    (if present) a ``.keras`` archive: all checked here, before a resumed run writes anything.
    Whether the weights file loads into the model is the trainer's check (it needs the model).

    Raises:
        InputError: a file is damaged or missing; one line naming it and the fix.
    """
    run_dir = Path(run_dir)
    record = read_run_record(run_dir, otherwise=otherwise)
    if record is None:
        return None
    progress = read_progress(run_dir, otherwise=otherwise)
    history = read_history(run_dir / HISTORY_NAME, otherwise=otherwise)
    epochs_done, best, weights = 0, math.inf, None
    progress_path = run_dir / STATE_DIR / PROGRESS_NAME
    if progress is not None:
        epochs_done, best = progress["epochs_done"], progress["best"]
        weights = run_dir / STATE_DIR / progress["weights"]
        if not weights.is_file():
            raise damaged(weights, f"missing: {progress_path} names it as the checkpoint of epoch {epochs_done}",
                          otherwise)
        if len(history) < epochs_done:
            raise damaged(run_dir / HISTORY_NAME, f"holds {len(history)} epoch(s), but {progress_path} says "
                          f"{epochs_done} finished", otherwise)
    best_model = run_dir / BEST_MODEL_NAME
    if best_model.exists() and not zipfile.is_zipfile(best_model):
        raise damaged(best_model, "not a .keras archive (a zip file)", otherwise,
                      repair="delete it and --resume again (the run then keeps the best model of the epochs still to "
                             "train, else the final one), restore it from a backup")
    return ResumeState(record, epochs_done, best, weights, history[:epochs_done])


def resume_settings(saved: Mapping[str, Any], given: Mapping[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """The settings of a resumed run: the recorded ones, with those given again, which must agree.

    Args:
        saved: The run's recorded settings (``config.json``'s ``config``).
        given: The settings given for this leg (the caller's explicit choices; every setting
            where the caller cannot tell). Those in :data:`CHANGEABLE_KEYS` may differ, and the
            :data:`LOCATION_KEYS` are where the run and its data are now.
        run_dir: The run folder, named in the error.

    Returns:
        The recorded settings (without locations), updated with ``given``.

    Raises:
        InputError: a given setting differs from the recorded one; one line naming each
            (``latent_dim was 8, now 4``) and the fix.

    Example:
        >>> resume_settings({"epochs": 10, "latent_dim": 8}, {"epochs": 20}, "runs/a")
        {'epochs': 20, 'latent_dim': 8}
    """
    saved = {"ssim_weighting": "gaussian", **saved}  # runs from before the option trained with it
    # and on unresized images (compared only: a trainer without resizing records no such keys)
    compared = {"scale": 1.0, "image_size": None, **saved}
    changed = {k: (compared[k], v) for k, v in given.items()
               if k in compared and compared[k] != v and k not in (*CHANGEABLE_KEYS, *LOCATION_KEYS)}
    if changed:
        config_path = Path(run_dir) / CONFIG_NAME
        raise InputError(
            f"--resume with settings that differ from the run in {run_dir}: "
            + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
            + f"; leave them out to keep the run's settings (see {config_path}; only --epochs may change) or train "
            "into a new --output"
        )
    return {**{k: v for k, v in saved.items() if k not in LOCATION_KEYS}, **given}
