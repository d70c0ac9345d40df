"""The run folder's record: ``config.json`` and ``history.csv``, written, read and checked on resume.

This is the one definition of the run-folder schema that ``tfssim-export`` reads, shared by both
trainers: ``tfssim-train`` (:mod:`tfssim.training`) and ``scripts/train_any_backend.py`` (Keras 3
on JAX or PyTorch, on a machine without TensorFlow). It imports no TensorFlow and no Keras.

``config.json`` holds ``config`` (the run's settings by :class:`tfssim.training.TrainConfig`
field name; a trainer records those it has), ``versions``, ``model``, ``channels``,
``patch_size``, ``latent_dim``, ``ssim`` (:meth:`tfssim.ssim_params.SSIMParams.to_dict`),
``train_images``, ``val_images``, ``data_fingerprint`` (:func:`data_fingerprint`) and, after a
resume from elsewhere, ``previous_locations``; a trainer adds what it knows besides (layout,
precision, strategy, device). ``history.csv`` has one row per finished epoch (``epoch``,
``loss``, ``val_loss``, ..., ``seconds``).

On resume, :func:`resume_settings` is the one rule: a resumed run keeps its recorded settings;
a setting given again must equal the recorded one (only ``epochs`` may change), and one not
given takes the recorded value. :func:`check_same_data` compares moved data with the recorded
images.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from tfssim._io import atomic_write
from tfssim.errors import InputError
from tfssim.ssim_params import SSIMParams

logger = logging.getLogger(__name__)

__all__ = ["CONFIG_NAME", "HISTORY_NAME", "PROGRESS_NAME", "LOCK_NAME", "LOCATION_KEYS", "CHANGEABLE_KEYS",
           "read_history", "write_history", "data_fingerprint", "check_same_data", "previous_locations",
           "run_record", "read_run_record", "resume_settings"]

CONFIG_NAME = "config.json"
HISTORY_NAME = "history.csv"
PROGRESS_NAME = "progress.json"
# A lock file in the run folder: one trainer at a time per folder (tfssim.training.run_folder).
LOCK_NAME = ".tfssim-train.lock"
# Settings that say where a run and its data live, not what the run is: a copied or moved run
# folder resumes (moved data is compared by its images, check_same_data).
LOCATION_KEYS = ("output", "data")
# Settings a resumed run may change.
CHANGEABLE_KEYS = ("epochs",)


def read_history(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a ``history.csv`` (as strings), ``[]`` where there is none."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


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


def read_run_record(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run folder's ``config.json``, or ``None`` where it has none.

    Raises:
        InputError: the file is not a JSON object holding a ``config`` object.
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({' '.join(str(err).split())}); the run folder is damaged: "
                         "train into a new --output") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise InputError(f"{path} holds no run settings ('config'); the run folder is damaged: train into a new "
                         "--output")
    return record


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
