"""Training runs: one function that ``tfssim-train`` and user scripts share.

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

Under ``strategy="multiworker"`` only the chief (task 0) writes the run folder, and training runs
in a custom distributed loop instead of ``model.fit`` (see ``_custom_fit``).

Every file is written atomically (temporary name, then ``os.replace``), so a run killed at
any moment resumes from its last finished epoch with ``resume=True`` and keeps every history
row it had; the patch pipeline is index-seeded and skips ahead to the batches not yet seen.
A new run that fails (or is interrupted) before its first epoch finished removes what it
created, so that the corrected command can use the same folder.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import numbers
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import tfssim._tensorflow  # noqa: F401,I001 - before keras: without TensorFlow, an ImportError naming the install command
import keras
import numpy as np
import tensorflow as tf

from tfssim import __version__, precision
from tfssim._io import atomic_write, atomic_write_text
from tfssim.models import MODEL_KINDS, get_spec, validate_architecture
from tfssim.ssim import WEIGHTINGS, validate_window

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainResult", "train", "load_config", "RunExistsError", "RunInUseError", "OutOfMemoryError",
           "STRATEGIES", "LAYOUTS"]

STRATEGIES = ("auto", "none", "mirrored", "multiworker")
LAYOUTS = ("auto", "nanotwice", "mvtec", "folder")
CONFIG_NAME = "config.json"
HISTORY_NAME = "history.csv"
PROGRESS_NAME = "progress.json"
# Config-file keys that are option names but not TrainConfig fields (``--weights`` sets fm_weights).
CONFIG_ALIASES = {"weights": "fm_weights"}


class RunExistsError(FileExistsError):
    """The run folder already holds a run and ``resume`` was not asked for."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; defaults are the paper's settings.

    Attributes mirror ``tfssim-train``'s options (``patch_size`` is ``--patch-size``).
    ``batch_size`` is the global batch: under a distribution strategy it is split across
    replicas and the learning rate is used unchanged, so a run behaves the same on one
    device or several.
    """

    data: str
    output: str
    model: str = "ssim"
    layout: str = "auto"
    epochs: int = 200
    patches_per_epoch: int = 20000
    batch_size: int = 32
    patch_size: int = 128
    latent_dim: int = 100
    ssim_window: int = 11
    ssim_sigma: float = 1.5
    ssim_k1: float = 0.01
    ssim_k2: float = 0.03
    ssim_weighting: str = "gaussian"
    learning_rate: float = 2e-4
    weight_decay: float = 1e-5
    seed: int = 0
    grayscale: bool = True
    augment: bool = True
    val_split: float = 0.1
    val_patches: int = 512
    vae_samples: int = 10
    vae_observation_std: float = 0.1
    fm_weight: float = 1.0
    fm_weights: str | None = "imagenet"
    mixed_precision: str = "auto"
    strategy: str = "auto"
    skip_bad_images: bool = False
    jit_compile: bool = False  # XLA measured slower here: 0.85 vs 0.46 s per 32-patch step on CPU

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    @property
    def ssim_params(self) -> dict[str, Any]:
        """SSIM parameters of the loss and the anomaly map, as ``tfssim.ssim`` keywords."""
        return dict(window_size=self.ssim_window, sigma=self.ssim_sigma, k1=self.ssim_k1, k2=self.ssim_k2, data_range=1.0,
                    weighting=self.ssim_weighting)

    def validate(self) -> None:
        """Check every field and coerce it to its type; raise ``ValueError`` naming the first bad one.

        Numbers may come as other numeric types or numeric strings (YAML reads ``1e-4`` as a
        string) and are converted; an integral float is accepted for an integer field. Booleans
        must be real booleans (``"no"`` would be true). Config-file keys that have no option
        (``ssim_sigma``, ``val_patches``, ``jit_compile``, ...) get no checking from click, so
        this is where they are checked.
        """
        for name in ("data", "output"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{_key(name)} must be a path, got {value!r}; set it to a folder path")
            setattr(self, name, value)
        for name, choices in (("model", MODEL_KINDS), ("layout", LAYOUTS), ("strategy", STRATEGIES),
                              ("mixed_precision", precision.PRECISION_MODES),
                              ("ssim_weighting", WEIGHTINGS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ValueError(f"unknown {name.replace('_', ' ')} {value!r} for {_key(name)}; "
                                 f"choose one of {', '.join(choices)}")
        for name, low, high in _INT_FIELDS:
            setattr(self, name, _checked_int(name, getattr(self, name), low, high))
        for name, low, low_open, high, high_open in _FLOAT_FIELDS:
            setattr(self, name, _checked_float(name, getattr(self, name), low, low_open, high, high_open))
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(
                    f"{_key(name)} must be true or false, got {value!r}; write {name}: true or {name}: false "
                    "(a YAML/JSON boolean, without quotes)"
                )
            setattr(self, name, bool(value))
        if isinstance(self.fm_weights, os.PathLike):
            self.fm_weights = os.fspath(self.fm_weights)
        if self.fm_weights is not None and (not isinstance(self.fm_weights, str) or not self.fm_weights):
            raise ValueError(f"{_key('fm_weights')} must be 'imagenet' or a weights file path, got {self.fm_weights!r}")
        validate_architecture(self.patch_size, self.channels, self.latent_dim)
        validate_window(self.ssim_window, self.ssim_sigma, self.ssim_weighting)
        if get_spec(self.model).residual == "ssim" and self.ssim_window > self.patch_size:
            # The SSIM loss compares whole patches: its window must fit inside one.
            fits = self.patch_size - 1 if self.patch_size % 2 == 0 else self.patch_size
            raise ValueError(
                f"{_key('ssim_window')} {self.ssim_window} is larger than the {self.patch_size}x{self.patch_size} "
                f"patch ({_key('patch_size')}); use --ssim-window {fits} or smaller (odd, e.g. 11, the paper's) "
                "or a larger --patch-size"
            )
        if self.patches_per_epoch < self.batch_size:
            raise ValueError(
                f"patches-per-epoch ({self.patches_per_epoch}) must be at least the batch size ({self.batch_size})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# How validate() names a field: the config key, with its option where it has one.
_NO_OPTION = {"ssim_sigma", "ssim_k1", "ssim_k2", "val_patches", "vae_observation_std", "jit_compile"}
_OPTION_OF = {"data": "DATA", "fm_weights": "--weights", "grayscale": "--grayscale/--rgb",
              "augment": "--augment/--no-augment"}
# (field, minimum, maximum or None); seed: NumPy's seeds are 32-bit
_INT_FIELDS = (("epochs", 1, None), ("patches_per_epoch", 1, None), ("batch_size", 1, None), ("patch_size", 16, None),
               ("latent_dim", 1, None), ("ssim_window", 1, None), ("seed", 0, 2**32 - 1), ("val_patches", 1, None),
               ("vae_samples", 1, None))
# (field, low, low excluded, high or None, high excluded)
_FLOAT_FIELDS = (("ssim_sigma", 0.0, True, None, False), ("ssim_k1", 0.0, True, 1.0, True),
                 ("ssim_k2", 0.0, True, 1.0, True), ("learning_rate", 0.0, True, None, False),
                 ("weight_decay", 0.0, False, None, False), ("val_split", 0.0, False, 1.0, True),
                 ("vae_observation_std", 0.0, True, None, False), ("fm_weight", 0.0, False, None, False))
_BOOL_FIELDS = ("grayscale", "augment", "skip_bad_images", "jit_compile")


def _key(name: str) -> str:
    if name in _NO_OPTION:
        return name
    return f"{name} ({_OPTION_OF.get(name, '--' + name.replace('_', '-'))})"


def _checked_int(name: str, value: Any, low: int, high: int | None) -> int:
    wanted = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
    number = None
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        number = int(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and float(value).is_integer():
        number = int(value)
    if number is None or number < low or (high is not None and number > high):
        raise ValueError(f"{_key(name)} must be {wanted}, got {value!r}; set {name} to {wanted}")
    return number


def _checked_float(name: str, value: Any, low: float, low_open: bool, high: float | None, high_open: bool) -> float:
    wanted = f"a number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        wanted += f" and {'<' if high_open else '<='} {high:g}"
    number = None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    elif isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        number = float(value)
    if (number is None or not math.isfinite(number) or number < low or (low_open and number == low)
            or (high is not None and (number > high or (high_open and number == high)))):
        raise ValueError(f"{_key(name)} must be {wanted}, got {value!r}; set {name} to {wanted}")
    return number


# A config file holds a handful of scalar values: these bounds refuse files that are not one
# (a log, an image, a YAML alias bomb, a deeply nested document) quickly and in little memory.
CONFIG_MAX_BYTES = 1 << 20
CONFIG_MAX_DEPTH = 8
# The raw type each field takes in a config file (before any conversion): checked by
# load_config so that ``epochs: 1.5`` or ``learning_rate: true`` is refused, not coerced.
_STR_FIELDS = ("data", "output", "model", "layout", "ssim_weighting", "mixed_precision", "strategy", "fm_weights")


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON run configuration; keys may use dashes or underscores.

    Keys are ``tfssim-train`` option names (``--weights`` may be given as ``weights``) or
    :class:`TrainConfig` field names. Every value's raw type is checked before anything converts
    it: an integer field takes an integer (not a float, not a boolean), a number field an integer
    or a float (not a boolean), a switch a YAML/JSON boolean, the others a string (``weights``
    may also be null). YAML reads ``1e-4`` as a number (YAML 1.2's rule), not as a string.

    Args:
        path: A ``.yaml``/``.yml`` file (YAML) or any other file (JSON).

    Returns:
        The values by :class:`TrainConfig` field name (ranges are checked later by
        :meth:`TrainConfig.validate`).

    Raises:
        ValueError: naming the file: unknown keys (with the closest valid key), a value of the
            wrong type (naming the key and the type it takes), malformed YAML/JSON (with the
            line), a file over :data:`CONFIG_MAX_BYTES`, nested deeper than
            :data:`CONFIG_MAX_DEPTH`, using YAML anchors/aliases, or not UTF-8 text.
        OSError: the file cannot be read.

    Example:
        >>> load_config("run.yaml")  # epochs: 10 / learning-rate: 1e-4
        {'epochs': 10, 'learning_rate': 0.0001}
    """
    path = Path(path)
    with path.open("rb") as fh:  # read at most the bound: /dev/zero or a huge log is refused, not loaded
        data = fh.read(CONFIG_MAX_BYTES + 1)
    if len(data) > CONFIG_MAX_BYTES:
        raise ValueError(f"config file {path} is larger than {CONFIG_MAX_BYTES // 1024} KiB; a run configuration is a "
                         "few lines of 'option-name: value' (is it the right file?)")
    try:
        text = data.decode("utf-8-sig")
        if "\0" in text:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {path} is not a text file (byte {data[err.start]:#04x} at offset {err.start} "
                         "is not UTF-8 text); give a YAML or JSON file of 'option-name: value' lines") from None
    raw = _parse_yaml(path, text) if path.suffix.lower() in (".yaml", ".yml") else _parse_json(path, text)
    if raw is None and path.suffix.lower() in (".yaml", ".yml"):
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must hold a mapping of option names to values, e.g. 'epochs: 10'")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        values[CONFIG_ALIASES.get(name, name)] = value
    unknown = sorted(set(values) - known)
    if unknown:
        import difflib

        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known | set(CONFIG_ALIASES)), n=1)
            hints.append(f"{_short_repr(key)} (did you mean {close[0]!r}?)" if close else _short_repr(key))
        raise ValueError(
            f"config file {path} has unknown keys: {', '.join(hints)}; fix or remove them "
            f"(valid keys: {', '.join(sorted(known | set(CONFIG_ALIASES)))})"
        )
    for name, value in values.items():
        _check_raw_type(path, name, value)
    return values


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_raw_type(path: Path, name: str, value: Any) -> None:
    """Refuse a config value of the wrong type (``ValueError`` naming the file, the key and the type it takes)."""
    if isinstance(value, (list, tuple, dict, set)):
        got = f"a {'mapping' if isinstance(value, dict) else 'list'} {_short_repr(value)}"
    else:
        got = _short_repr(value)
    if name in _BOOL_FIELDS:
        if isinstance(value, bool):
            return
        raise ValueError(f"config file {path}: {_key(name)} must be true or false, got {got}; write {name}: true or "
                         f"{name}: false (a YAML/JSON boolean, without quotes)")
    ints = {n: (low, high) for n, low, high in _INT_FIELDS}
    if name in ints:
        if isinstance(value, int) and not isinstance(value, bool):
            return
        low, high = ints[name]
        wanted = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"config file {path}: {_key(name)} must be {wanted}, got {got}; set {name} to {wanted} "
                         "(a plain integer: no decimal point, no quotes)")
    floats = {f[0]: f for f in _FLOAT_FIELDS}
    if name in floats:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        _, low, low_open, high, high_open = floats[name]
        wanted = f"a number {'>' if low_open else '>='} {low:g}"
        if high is not None:
            wanted += f" and {'<' if high_open else '<='} {high:g}"
        raise ValueError(f"config file {path}: {_key(name)} must be {wanted}, got {got}; set {name} to {wanted} "
                         "(a plain number such as 0.0002 or 2e-4, without quotes)")
    if name in _STR_FIELDS:
        if isinstance(value, str) or (name == "fm_weights" and value is None):
            return
        raise ValueError(f"config file {path}: {_key(name)} must be a string, got {got}; set {name} to a "
                         "single value, e.g. " + ("a folder path" if name in ("data", "output") else
                                                  "'imagenet' or a weights file" if name == "fm_weights" else
                                                  f"{name}: {getattr(TrainConfig, name)}"))
    raise AssertionError(f"config field {name!r} has no raw type")  # a new TrainConfig field needs a type here


def _parse_json(path: Path, text: str) -> Any:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"config file {path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            'fix the syntax, e.g. {"epochs": 10}, or use a .yaml file'
        ) from None
    except RecursionError:
        raise ValueError(f"config file {path} nests deeper than {CONFIG_MAX_DEPTH} levels; a run configuration "
                         "is one mapping of option names to plain values") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise ValueError(f"config file {path} is not valid JSON ({err}); fix the value") from None
    if _depth(raw, CONFIG_MAX_DEPTH + 1) > CONFIG_MAX_DEPTH:
        raise ValueError(f"config file {path} nests deeper than {CONFIG_MAX_DEPTH} levels; a run configuration "
                         "is one mapping of option names to plain values")
    return raw


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of lists/dicts in ``value``, counted up to ``limit`` (no deeper recursion)."""
    if not isinstance(value, (list, dict)) or limit <= 0:
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)


def _parse_yaml(path: Path, text: str) -> Any:
    import yaml

    loader = _config_yaml_loader()(text)
    try:
        return loader.get_single_data()
    except _YamlRefused as err:
        raise ValueError(f"config file {path} {err}") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(
            f"config file {path} is not valid YAML ({problem}{at}); fix the syntax, "
            "one 'option-name: value' per line"
        ) from None
    except (ValueError, OverflowError) as err:  # a value YAML matched but Python cannot convert
        raise ValueError(f"config file {path} has a value that cannot be read ({err}); fix it") from None
    finally:
        loader.dispose()


class _YamlRefused(Exception):
    """A YAML construct a config file may not use (the message completes 'config file X ...')."""


def _config_yaml_loader() -> type:
    """PyYAML's safe loader, bounded: no anchors or aliases, nesting depth at most CONFIG_MAX_DEPTH.

    Aliases are refused outright (a run configuration has no use for them): an alias bomb (a
    billion laughs) would otherwise expand into gigabytes. Floats follow YAML 1.2 (``1e-4`` is a
    number; YAML 1.1, PyYAML's default, reads it as a string).
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            line = event.start_mark.line + 1 if event.start_mark is not None else "?"
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise _YamlRefused(f"uses a YAML anchor or alias (&{event.anchor} / *{event.anchor}) at line {line}; "
                                   "write each value out instead")
            self._depth += 1
            try:
                if self._depth > CONFIG_MAX_DEPTH:  # the document's mapping is level 1, as in _depth
                    raise _YamlRefused(f"nests deeper than {CONFIG_MAX_DEPTH} levels (line {line}); a run "
                                       "configuration is one mapping of option names to plain values")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))
    return Loader


@dataclass
class TrainResult:
    """What :func:`train` leaves behind."""

    run_dir: Path
    history: dict[str, list[float]]
    epochs_run: int
    best_path: Path
    final_path: Path
    seconds: float
    images: dict[str, int] = field(default_factory=dict)
    chief: bool = True  # False on the other workers of a multi-worker run, which write no files


# --- helpers --------------------------------------------------------------------------------


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


def _make_strategy(name: str) -> tf.distribute.Strategy:
    if name == "multiworker":
        # Must run before anything initialises the TF runtime (even listing logical devices).
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "none" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def _strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The strategy's public name, or ``"default"`` for TensorFlow's no-distribution strategy."""
    # tf.distribute.MultiWorkerMirroredStrategy is the class CollectiveAllReduceStrategy.
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    name = type(strategy).__name__
    # tf.distribute.get_strategy() outside any scope: the private _DefaultDistributionStrategy
    return "default" if name.startswith("_") else name


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
        raise ValueError(
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


def _strategy_label(strategy: tf.distribute.Strategy) -> str:
    """For the banner: ``default (1 device)`` or ``MirroredStrategy (2 replica(s))``."""
    name = _strategy_name(strategy)
    if name == "default":
        return "default (1 device)"
    return f"{name} ({strategy.num_replicas_in_sync} replica(s))"


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process is the chief, the one that writes the run folder.

    TensorFlow's rule (``tensorflow.python.distribute.multi_worker_util.is_chief``): the
    ``chief`` task (and an ``evaluator``, which runs on its own) is chief; worker 0 is chief only
    when the cluster has no ``chief`` task; no cluster (one process) is chief. It is also the
    task that holds replica 0 (``multi_worker_util.id_in_cluster``), which ``_from_chief`` uses.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None) if resolver is not None else None
    if not task_type:
        return True
    if task_type in ("chief", "evaluator"):
        return True
    has_chief_task = bool(resolver.cluster_spec().as_dict().get("chief"))
    return task_type == "worker" and int(resolver.task_id or 0) == 0 and not has_chief_task


def _load_images(config: TrainConfig) -> tuple[Any, list[np.ndarray], list[np.ndarray], list[str]]:
    from tfssim import data

    try:
        split = data.load_dataset(config.data, layout=config.layout, val_fraction=config.val_split, seed=config.seed)
    except (ValueError, FileNotFoundError) as err:
        if config.layout == "auto":
            raise
        raise ValueError(
            f"{config.data} does not look like a {config.layout} dataset: {err} (check DATA, or use --layout auto "
            "to detect the layout)"
        ) from None
    train, train_paths, bad_train = data.read_images(split.train, config.channels)
    val, val_paths, bad_val = data.read_images(split.val, config.channels)
    skipped = [f"{p}: {reason}" for p, reason in bad_train + bad_val]
    if skipped and not config.skip_bad_images:
        raise ValueError(
            f"unreadable images in {config.data}: {'; '.join(skipped)} (fix or remove them, or pass --skip-bad-images)"
        )
    if not train:
        raise ValueError(f"no readable training images in {config.data} (all were skipped); add readable images")
    too_small = [(p, img.shape) for p, img in zip(train_paths, train) if min(img.shape[:2]) < config.patch_size]
    if too_small:
        smallest = min(min(s[:2]) for _, s in too_small)
        fits = smallest // 16 * 16
        hint = f"use --patch-size {fits} or smaller" if fits >= 16 else "use larger images (at least 16x16)"
        more = f" and {len(too_small) - 5} more" if len(too_small) > 5 else ""
        raise ValueError(
            f"images smaller than the {config.patch_size}x{config.patch_size} patch: "
            + ", ".join(f"{p} {s[0]}x{s[1]}" for p, s in too_small[:5])
            + f"{more}; {hint} (a multiple of 16), or remove those images"
        )
    dropped = [f"{p} {v.shape[0]}x{v.shape[1]}" for p, v in zip(val_paths, val) if min(v.shape[:2]) < config.patch_size]
    if dropped:
        logger.warning(
            "validation images smaller than the %dx%d patch are not used: %s", config.patch_size, config.patch_size,
            ", ".join(dropped),
        )
        val = [v for v in val if min(v.shape[:2]) >= config.patch_size]
        if not val:
            logger.warning("no validation image is left: best.keras is chosen by the training loss instead")
    return split, train, val, skipped


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


def _banner(config: TrainConfig, split: Any, train: Sequence[np.ndarray], val: Sequence[np.ndarray],
            policy: str, strategy: tf.distribute.Strategy, skipped: list[str], initial_epoch: int) -> None:
    devices = ", ".join(d.name for d in tf.config.list_logical_devices() if d.device_type in ("GPU", "CPU"))
    pixels = sum(int(np.prod(img.shape[:2])) for img in train)
    lines = [
        f"tfssim {__version__} / TensorFlow {tf.__version__} / Keras {keras.__version__}",
        f"data      {config.data} (layout: {split.layout}): {len(train)} training images ({pixels / 1e6:.2f} Mpx), "
        f"{len(val)} validation images, {len(split.test)} test images",
        f"model     {config.model}: {get_spec(config.model).description}"
        + (f"; SSIM window {config.ssim_window} ({config.ssim_weighting})" if get_spec(config.model).residual == "ssim"
           else ""),
        f"patches   {config.patches_per_epoch} of {config.patch_size}x{config.patch_size}x{config.channels} per epoch, "
        f"batch {config.batch_size}, augment {'on' if config.augment else 'off'}",
        f"training  {config.epochs} epochs, AdamW lr {config.learning_rate:g}, weight decay {config.weight_decay:g}"
        + (f", resuming after epoch {initial_epoch}" if initial_epoch else ""),
        f"devices   {devices}; precision {policy}; strategy {_strategy_label(strategy)}",
    ]
    if skipped:
        lines.append(f"skipped   {len(skipped)} unreadable image(s): " + "; ".join(skipped))
    for line in lines:
        logger.info(line)


def _versions() -> dict[str, str]:
    return {"tfssim": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _build_loss(config: TrainConfig) -> keras.losses.Loss:
    return get_spec(config.model).build_loss(
        ssim_window=config.ssim_window, fm_weight=config.fm_weight, fm_weights=config.fm_weights,
        sigma=config.ssim_sigma, k1=config.ssim_k1, k2=config.ssim_k2, weighting=config.ssim_weighting,
    )


def _compile(model: keras.Model, config: TrainConfig, loss: keras.losses.Loss) -> None:
    optimizer = keras.optimizers.AdamW(learning_rate=config.learning_rate, weight_decay=config.weight_decay)
    model.compile(optimizer=optimizer, loss=loss, jit_compile=config.jit_compile)


def _save_examples(model: keras.Model, config: TrainConfig, patches: np.ndarray, folder: Path) -> None:
    from tfssim import plots
    from tfssim.ssim import ssim_maps

    folder.mkdir(exist_ok=True)
    x = patches[:4]
    if len(x) == 0:
        return
    # A direct call, not predict(): under MultiWorkerMirroredStrategy predict() would distribute
    # the batch over the workers, and only the chief gets here.
    recon = keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float32)
    if config.model == "vae":
        residual = np.asarray(model.anomaly_map(x, config.vae_samples))
    elif get_spec(config.model).residual == "ssim":
        residual = 1.0 - ssim_maps(x, recon, padding="same", **config.ssim_params).ssim.numpy().mean(axis=-1)
    else:
        residual = np.mean(np.square(x - recon), axis=-1)
    plots.plot_examples(list(x), list(recon), list(residual), folder / "examples.png")


def _from_chief(strategy: tf.distribute.Strategy, tensors: Sequence[Any]) -> list[tf.Tensor]:
    """Every worker gets task 0's values of ``tensors`` (one all-reduce of a flat float64 vector).

    Only the chief reads the run folder, so on ``--resume`` the other workers take the epoch
    count and the restored weights from it. Replica 0 lives on the chief (task 0: the chief,
    else worker 0), as ``_is_chief`` decides.
    """
    values = [tf.convert_to_tensor(t) for t in tensors]
    flat = tf.concat([tf.reshape(tf.cast(v, tf.float64), [-1]) for v in values], 0)

    def pick(ctx: tf.distribute.experimental.ValueContext) -> tf.Tensor:
        return flat if ctx.replica_id_in_sync_group == 0 else tf.zeros_like(flat)

    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.experimental_distribute_values_from_function(pick),
                            axis=None)
    parts = tf.split(total, [int(np.prod(v.shape)) for v in values])
    return [tf.cast(tf.reshape(part, v.shape), v.dtype) for part, v in zip(parts, values)]


def _custom_fit(model: keras.Model, strategy: tf.distribute.Strategy, train_ds: tf.data.Dataset,
                val_patches: np.ndarray | None, *, batch_size: int, epochs: int, initial_epoch: int, steps: int,
                callbacks: list[keras.callbacks.Callback], verbose: int, jit_compile: bool) -> None:
    """``model.fit`` as a custom loop, for MultiWorkerMirroredStrategy only.

    Keras 3 (checked up to 3.15.1) cannot ``fit`` under MultiWorkerMirroredStrategy
    (keras-team/keras#20585: ``_maybe_symbolic_build`` reduces the first PerReplica batch, and
    ``reduce_per_replica`` reduces the scalar logs along axis 0), while TensorFlow runs the
    strategy fine. The step is ``fit``'s own: ``model.compute_loss`` (Keras divides each replica's
    mean loss by the number of replicas, so their SUM is the global batch's mean), the
    optimizer's loss scaling, and ``apply_gradients``, which all-reduces (sums) the gradients.
    ``batch_size`` is the global batch: each global batch of the index-seeded pipeline is split
    across the replicas, so the patches seen match a one-device run. The callbacks (the run
    state, TensorBoard, Keras's progress bar) get the same calls and logs as under ``fit``.
    """
    sum_ = tf.distribute.ReduceOp.SUM
    replicas = strategy.num_replicas_in_sync
    options = tf.data.Options()
    # Every worker builds the same global batches and keeps its replicas' share of each
    # (the pipeline has no files to shard by).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_dist = strategy.experimental_distribute_dataset(train_ds.with_options(options))
    val_dist = None
    if val_patches is not None:
        val_ds = tf.data.Dataset.from_tensor_slices((val_patches, val_patches)).batch(batch_size)
        val_dist = strategy.experimental_distribute_dataset(val_ds.with_options(options))

    def replica_gradients(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
            scaled = model.optimizer.scale_loss(loss)
        return loss, tape.gradient(scaled, model.trainable_weights)

    def replica_test_loss(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # Summed per patch, so the uneven last batch (some replicas may get none) weighs right.
        count = tf.cast(tf.shape(x)[0], tf.float32)
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False), training=False)
        return loss * replicas * count, count

    if jit_compile:
        # XLA compiles the model, loss and gradients; the update stays outside, because XLA
        # cannot compile collectives on CPU ("Collectives are not yet implemented for CPU
        # devices when compiling with XLA").
        replica_gradients = tf.function(replica_gradients, jit_compile=True)
        replica_test_loss = tf.function(replica_test_loss, jit_compile=True)

    def replica_train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        loss, gradients = replica_gradients(x, y)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_weights))
        return loss

    @tf.function
    def train_step(iterator: Any) -> tf.Tensor:
        return strategy.reduce(sum_, strategy.run(replica_train_step, args=next(iterator)), axis=None)

    @tf.function
    def test_step(batch: Any) -> tuple[tf.Tensor, tf.Tensor]:
        total, count = strategy.run(replica_test_loss, args=batch)
        return strategy.reduce(sum_, total, axis=None), strategy.reduce(sum_, count, axis=None)

    callback_list = keras.callbacks.CallbackList(callbacks, add_progbar=verbose != 0, model=model,
                                                 verbose=verbose, epochs=epochs, steps=steps)
    model.stop_training = False
    iterator = iter(train_dist)
    logs: dict[str, float] = {}
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        total = 0.0
        for step in range(steps):
            callback_list.on_train_batch_begin(step)
            # The reduced loss is the same on every worker, so all stop at the same step.
            total += float(train_step(iterator))
            logs = {"loss": total / (step + 1)}
            callback_list.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        if val_dist is not None and math.isfinite(logs["loss"]):
            val_total, val_count = 0.0, 0.0
            for batch in val_dist:
                batch_total, batch_count = test_step(batch)
                val_total, val_count = val_total + float(batch_total), val_count + float(batch_count)
            logs["val_loss"] = val_total / max(val_count, 1.0)
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)


# --- the run --------------------------------------------------------------------------------


def train(config: TrainConfig, *, resume: bool = False, verbose: int | str = "auto") -> TrainResult:
    """Train one model as configured and leave a complete run folder.

    Args:
        config: The run's configuration (validated here).
        resume: Continue the run in ``config.output`` from its last finished epoch. Without it
            an existing run folder raises :class:`RunExistsError`.
        verbose: Keras ``fit`` verbosity, also the multi-worker loop's (``"auto"``: a progress
            bar on a terminal, one line per epoch otherwise).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: bad configuration or data (message names the option/path and the fix). Under
            ``strategy="multiworker"`` a worker whose chief (or another worker) stopped before
            training raises it too, saying so, instead of waiting for it.
        RunExistsError: ``config.output`` holds a run and ``resume`` is false.
        OSError: the run folder cannot be created or written (e.g. no permission).
        FloatingPointError: the loss (or a weight) became NaN/inf; the last good epoch's state
            is kept and no final model is written.
        tfssim.models.WeightsUnavailableError: ``model="fm"`` with ImageNet weights that cannot
            be downloaded (the message names ``--weights FILE``); nothing is written.

    Side effects on the calling process:
        * Random seeds: the model is built after ``keras.utils.set_random_seed(config.seed)``,
          which seeds Python's ``random``, NumPy's global generator and TensorFlow's global seed
          (and Keras's). That makes the initial weights reproducible; the seeds are not
          restored afterwards, so random draws after ``train`` returns follow from
          ``config.seed``. (The patch pipeline has its own index-seeded generators.)
        * Keras's global dtype policy is set from ``config.mixed_precision`` for the run and
          restored to the caller's when ``train`` returns or raises.
        * ``strategy="multiworker"`` starts TensorFlow's collective runtime in this process.
    """
    config.validate()
    # The strategy comes first: MultiWorkerMirroredStrategy must exist before other TF work.
    strategy = _make_strategy(config.strategy)
    with precision.precision_policy(config.mixed_precision) as policy:
        # Only the chief writes (and so claims) the run folder.
        claim = _claim_run_folder(Path(config.output), resume) if _is_chief(strategy) else contextlib.nullcontext()
        with claim:
            try:
                return _train(config, strategy, policy, resume=resume, verbose=verbose)
            except (MemoryError, tf.errors.ResourceExhaustedError) as err:
                if any(m in str(err) for m in ("No space left on device", "Disk quota exceeded")):
                    raise  # TensorFlow reports a full disk this way too: not a memory problem
                raise OutOfMemoryError(_out_of_memory_line(config, err)) from None


class OutOfMemoryError(MemoryError):
    """Building or training the model needed more memory than the machine has (the message says what to lower)."""


def _out_of_memory_line(config: TrainConfig, err: BaseException) -> str:
    import re

    # TensorFlow's message starts with a function-node name: its "OOM when allocating ..." part says it.
    oom = re.search(r"OOM when allocating tensor with shape\s*\[[^\]]*\]", str(err))
    detail = oom.group(0) if oom else (str(err).strip().splitlines() or [type(err).__name__])[0]
    detail = detail if len(detail) <= 160 else detail[:157] + "..."
    return (f"out of memory building or training the model (patch size {config.patch_size}, latent dim "
            f"{config.latent_dim}, batch size {config.batch_size}: {detail or type(err).__name__}); lower "
            "--batch-size, --latent-dim or --patch-size (or free memory on the device) and train again")


# A lock file in the run folder: one tfssim-train at a time per folder (see _claim_run_folder).
LOCK_NAME = ".tfssim-train.lock"


class RunInUseError(ValueError):
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


class _StoppedElsewhere(ValueError):
    """Another worker of a multi-worker run failed before training; this one stops too."""


@contextlib.contextmanager
def _all_workers(strategy: tf.distribute.Strategy, chief: bool) -> Iterator[None]:
    """Run a block that may fail on some workers only; afterwards every worker knows whether one did.

    Under MultiWorkerMirroredStrategy a worker that raises while the others go on leaves them
    waiting in their next collective (hung, or a TensorFlow error when the health check notices
    the dead peer). Here each worker ends the block with one small all-reduce of "did I fail"
    (and "was it the chief"): a worker that failed re-raises its own error, the others raise
    :class:`_StoppedElsewhere` (a ``ValueError``: the CLI's one ``Error:`` line, exit 2). The
    block must run no collective itself (or the same ones on every worker up to its failure).
    A no-op under the other strategies, which run in one process.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        yield
        return
    try:
        yield
    except Exception:
        _count_failures(strategy, chief, failed=True)
        raise
    chief_failed, failed = _count_failures(strategy, chief, failed=False)
    if chief_failed:
        raise _StoppedElsewhere(
            "the chief stopped before training (its Error: line names the problem, e.g. a run folder that exists "
            "without --resume); fix that and start every worker again"
        )
    if failed:
        raise _StoppedElsewhere(
            "another worker stopped before training (its Error: line names the problem); fix that and start every "
            "worker again"
        )


def _count_failures(strategy: tf.distribute.Strategy, chief: bool, failed: bool) -> tuple[bool, bool]:
    """(did the chief fail, did any worker fail): one all-reduce over every replica of the cluster."""
    flags = tf.constant([float(failed and chief), float(failed)], tf.float32)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM,
                            strategy.experimental_distribute_values_from_function(lambda ctx: flags), axis=None)
    chief_failed, any_failed = (float(v) for v in total.numpy())
    return chief_failed > 0, any_failed > 0


def _train(config: TrainConfig, strategy: tf.distribute.Strategy, policy: str, *, resume: bool,
           verbose: int | str) -> TrainResult:
    from tfssim import data, plots

    chief = _is_chief(strategy)
    run_dir = Path(config.output)
    if not chief:
        # Other workers train in lock-step with the chief and write no files (every write below
        # is the chief's); this path, never created, only stands in for the run folder.
        import tempfile

        run_dir = Path(tempfile.gettempdir()) / f"tfssim-worker-{os.getpid()}"
        resume = False
    progress_path = run_dir / "state" / PROGRESS_NAME
    config_path = run_dir / CONFIG_NAME
    # Each block below may fail on one worker only (the run-folder checks are the chief's): every
    # worker learns of it at the block's end, before the next collective (see _all_workers).
    with _all_workers(strategy, chief):
        if resume:
            if not config_path.exists():
                raise ValueError(
                    f"--resume given but {run_dir} holds no run ({CONFIG_NAME} missing); drop --resume to start one"
                )
            previous = json.loads(config_path.read_text())
            saved = previous["config"]
            saved.setdefault("ssim_weighting", "gaussian")  # runs from before the option trained with it
            # Where the run and its data live is no setting of the run: a copied or moved run
            # folder resumes, and moved data is compared by its images after they are listed.
            changed = {k: (saved[k], v) for k, v in config.to_dict().items()
                       if k in saved and saved[k] != v and k not in ("epochs", *_LOCATION_KEYS)}
            if changed:
                raise ValueError(
                    f"--resume with settings that differ from the run in {run_dir}: "
                    + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
                    + f"; repeat the run's settings (see {config_path}; only --epochs may change) or train into a "
                    "new --output"
                )
        elif run_dir.exists() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
            raise RunExistsError(
                f"run folder {run_dir} already exists and is not empty; pass --resume to continue it or choose "
                "another --output"
            )

        split, train_images, val_images, skipped = _load_images(config)
        fingerprint = _check_same_data(previous, config, split, run_dir) if resume else None
        initial_epoch, best, weights_path = 0, math.inf, None
        if resume and progress_path.exists():
            progress = json.loads(progress_path.read_text())
            initial_epoch, best = int(progress["epochs_done"]), float(progress["best"])
            # runs written before progress.json named its weights file used checkpoint.weights.h5
            weights_path = run_dir / "state" / progress.get("weights", "checkpoint.weights.h5")
        rows: list[dict[str, Any]] = _read_history(run_dir / HISTORY_NAME)[:initial_epoch]
        rows = [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()} for r in rows]

    with _all_workers(strategy, chief):
        # Built before anything is written: a feature extractor whose weights cannot be loaded or
        # downloaded fails here and leaves no half-made run folder behind. (Its variables are
        # created, by the same collective broadcasts on every worker, before the weights load.)
        with strategy.scope():
            loss = _build_loss(config)

        _banner(config, split, train_images, val_images, policy, strategy, skipped, initial_epoch)
        if chief:
            run_dir.mkdir(parents=True, exist_ok=True)
            record = {"config": config.to_dict(), "versions": _versions(), "layout": split.layout,
                      "channels": config.channels, "ssim": config.ssim_params, "patch_size": config.patch_size,
                      "latent_dim": config.latent_dim, "model": config.model, "precision": policy,
                      "strategy": _strategy_name(strategy), "replicas": strategy.num_replicas_in_sync,
                      "train_images": [str(p) for p in split.train], "val_images": [str(p) for p in split.val],
                      "skipped_images": skipped,
                      "data_fingerprint": fingerprint or data_fingerprint(config.data, split.train, split.val)}
            if resume:
                # config.json names where the run lives now; the earlier places stay on record.
                record["previous_locations"] = _previous_locations(previous, config)
            atomic_write_text(config_path, json.dumps(record, indent=2))

    with strategy.scope():
        spec = get_spec(config.model)
        extra = {"observation_std": config.vae_observation_std, "num_samples": config.vae_samples, "seed": config.seed} \
            if config.model == "vae" else {}
        # Seeds the whole process (documented in train()): the initial weights are reproducible.
        keras.utils.set_random_seed(config.seed)
        model = spec.build_model(config.patch_size, config.channels, config.latent_dim, **extra)
        _compile(model, config, loss)
        # Built here rather than on fit's first step: variables created inside the first call
        # make TensorFlow trace the training step twice (measured: fit start-up 9.3 -> 4.5 s).
        model.optimizer.build(model.trainable_variables)
    with _all_workers(strategy, chief):
        if initial_epoch:
            # Outside strategy.scope(): Keras's weight loading and saving create variables (a
            # throwaway optimizer's iteration and learning_rate), which MultiWorkerMirroredStrategy
            # would initialise by a broadcast from the chief that the other workers never join.
            model.load_weights(weights_path)
    multiworker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if multiworker:
        # Only the chief read the run folder: every worker takes its epoch count and weights.
        variables = list({id(v): v for v in [*model.variables, *model.optimizer.variables]}.values())
        epoch_t, *values = _from_chief(strategy, [float(initial_epoch), *variables])
        initial_epoch = int(epoch_t)
        for variable, value in zip(variables, values):
            variable.assign(value)

    steps = data.steps_per_epoch(config.patches_per_epoch, config.batch_size)
    train_ds = data.patch_dataset(
        train_images, patch_size=config.patch_size, patches_per_epoch=config.patches_per_epoch,
        batch_size=config.batch_size, seed=config.seed, augment=config.augment,
        start_batch=initial_epoch * steps, repeat=True,
    )
    val_patches = (
        data.fixed_patches(val_images, config.patch_size, config.val_patches, seed=config.seed + 1) if val_images else None
    )
    state = _RunState(run_dir, rows, best, config.epochs, chief)
    callbacks: list[keras.callbacks.Callback] = [state]
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), update_freq="epoch",
                                                     profile_batch=0, write_graph=False))
    if verbose == "auto":
        verbose = 1 if os.isatty(1) else 2
    started = time.perf_counter()
    if initial_epoch < config.epochs and multiworker:
        # Keras's fit fails under this strategy (keras-team/keras#20585): see _custom_fit. Run
        # outside strategy.scope(), so that the chief's checkpoint saves (which create variables,
        # see load_weights above) start no collective broadcast.
        _custom_fit(model, strategy, train_ds, val_patches, batch_size=config.batch_size, epochs=config.epochs,
                    initial_epoch=initial_epoch, steps=steps, callbacks=callbacks,
                    verbose=verbose if chief else 0, jit_compile=config.jit_compile)
    elif initial_epoch < config.epochs:
        with strategy.scope():
            model.fit(
                train_ds, epochs=config.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                validation_data=(val_patches, val_patches) if val_patches is not None else None,
                validation_batch_size=config.batch_size,
                callbacks=callbacks, verbose=verbose, shuffle=False,
            )
    seconds = time.perf_counter() - started
    if state.nan_epoch is not None:
        fix = f"lower --learning-rate (was {config.learning_rate:g})" + (
            " or use --mixed-precision off" if policy != "float32" else ""
        )
        if not chief:
            kept = "the chief's run folder keeps the last good state, if an epoch finished"
        elif state.rows:
            kept = (f"the last good state (epoch {len(state.rows)}) is kept: {run_dir / 'best.keras'}, "
                    f"{run_dir / 'state'} and {run_dir / HISTORY_NAME}")
        else:
            kept = "no epoch finished, so no model was kept"
        raise FloatingPointError(
            f"the loss became NaN or infinite in epoch {state.nan_epoch} and training stopped; {kept}; "
            f"{fix} and train into a new --output"
        )

    history = {k: [float(r[k]) for r in state.rows] for k in (state.rows[0] if state.rows else {}) if k != "epoch"}
    final_path, best_path = run_dir / "final.keras", run_dir / "best.keras"
    if chief:
        atomic_write(final_path, model.save)
        if not best_path.exists():
            atomic_write(best_path, model.save)
        if state.rows:
            plots.plot_training_curves({k: v for k, v in history.items() if "loss" in k}, run_dir / "training_curves.png")
        examples = val_patches if val_patches is not None else data.fixed_patches(train_images, config.patch_size, 4, seed=config.seed + 2)
        _save_examples(model, config, examples, run_dir / "examples")
        logger.info("run folder %s: final.keras, best.keras, history.csv, training_curves.png (%.1f s)", run_dir, seconds)
    else:
        logger.info("worker done (%.1f s); the chief wrote the run folder", seconds)
    return TrainResult(run_dir, history, len(state.rows), best_path, final_path, seconds,
                       {"train": len(train_images), "val": len(val_images)}, chief)
