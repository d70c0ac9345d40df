"""The settings of a training run: :class:`TrainConfig`, its choice lists, its strict checks, and :func:`load_config`.

``TrainConfig``'s field defaults and the choice lists (:data:`STRATEGIES`, :data:`PRECISION_MODES`,
the model kinds, dataset layouts and SSIM weightings it checks against) are the one definition of
each setting: ``tfssim-train``, ``tfssim-evaluate``'s split and ``scripts/train_any_backend.py``
read them from here. ``TrainConfig.validate`` checks and coerces every field (naming the key and
its option) against :mod:`tfssim.run_record`'s schema of the settings, the same types and ranges a
run's record is checked against; ``load_config`` reads a YAML or JSON file, bounded in
size and depth, refusing values of the wrong raw type before anything converts them.

Imports no TensorFlow and no Keras, so that the command-line help and the scripts that only need
the settings stay cheap.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfssim.core.ssim_params import WEIGHTINGS, SSIMParams, describe_range, in_range
from tfssim.data.layouts import LAYOUT_CHOICES
from tfssim.errors import InputError, input_checks
from tfssim.models.kinds import MODEL_KINDS, get_kind, validate_architecture
from tfssim.run_record import (
    BOOL_SETTINGS,
    FLOAT_SETTINGS,
    INT_SETTINGS,
    SSIM_CONFIG_KEYS,
    STR_SETTINGS,
    setting_problem,
)

STRATEGIES = ("auto", "none", "mirrored", "multiworker")
# Mixed precision (tfssim.training.precision): auto (mixed_float16 when a GPU is visible), on, off.
PRECISION_MODES = ("auto", "on", "off")
# Config-file keys that are option names but not TrainConfig fields (``--weights`` sets fm_weights).
CONFIG_ALIASES = {"weights": "fm_weights"}
_SSIM_DEFAULTS = SSIMParams()


@dataclass
class TrainConfig:
    """Everything a training run depends on; defaults are the paper's settings.

    Attributes mirror ``tfssim-train``'s options (``patch_size`` is ``--patch-size``).
    ``batch_size`` is the global batch: under a distribution strategy it is split across
    replicas and the learning rate is used unchanged, so a run behaves the same on one
    device or several. ``scale`` (``0 < scale <= 1``) or ``image_size`` (``[H, W]``, each at
    least ``patch_size``; not both) resize every image before patches are drawn
    (:mod:`tfssim.core.resize`); the export resizes its requests the same way.
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
    ssim_window: int = _SSIM_DEFAULTS.window_size
    ssim_sigma: float = _SSIM_DEFAULTS.sigma
    ssim_k1: float = _SSIM_DEFAULTS.k1
    ssim_k2: float = _SSIM_DEFAULTS.k2
    ssim_weighting: str = _SSIM_DEFAULTS.weighting
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
    # Resizing before patches are drawn (tfssim.core.resize: anti-aliased bilinear); the export resizes
    # inside its serving graph the same way. One of the two at most.
    scale: float = 1.0
    image_size: tuple[int, int] | None = None

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    @property
    def ssim_params(self) -> SSIMParams:
        """The SSIM of the loss and the anomaly map: the ``ssim_*`` fields as an :class:`SSIMParams`.

        Raises:
            ValueError: An ``ssim_*`` value is out of :class:`SSIMParams`' range.
        """
        return SSIMParams.of(None, **{field: getattr(self, key) for key, field in SSIM_CONFIG_KEYS.items()})

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
                raise InputError(f"{_key(name)} must be a path, got {value!r}; set it to a folder path")
            setattr(self, name, value)
        for name, choices in (("model", MODEL_KINDS), ("layout", LAYOUT_CHOICES), ("strategy", STRATEGIES),
                              ("mixed_precision", PRECISION_MODES),
                              ("ssim_weighting", WEIGHTINGS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise InputError(f"unknown {name.replace('_', ' ')} {value!r} for {_key(name)}; "
                                 f"choose one of {', '.join(choices)}")
        for name, low, high in _INT_FIELDS:
            setattr(self, name, _checked_int(name, getattr(self, name), low, high))
        for name, low, low_open, high, high_open in _FLOAT_FIELDS:
            setattr(self, name, _checked_float(name, getattr(self, name), low, low_open, high, high_open))
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise InputError(
                    f"{_key(name)} must be true or false, got {value!r}; write {name}: true or {name}: false "
                    "(a YAML/JSON boolean, without quotes)"
                )
            setattr(self, name, bool(value))
        if isinstance(self.fm_weights, os.PathLike):
            self.fm_weights = os.fspath(self.fm_weights)
        if self.fm_weights is not None and (not isinstance(self.fm_weights, str) or not self.fm_weights):
            raise InputError(f"{_key('fm_weights')} must be 'imagenet' or a weights file path, got {self.fm_weights!r}")
        validate_architecture(self.patch_size, self.channels, self.latent_dim)
        self.image_size = _checked_image_size(self.image_size, self.patch_size)
        if self.image_size is not None and self.scale != 1.0:
            raise InputError(
                f"{_key('scale')} {self.scale:g} and {_key('image_size')} {self.image_size[0]} {self.image_size[1]} "
                "both resize the images; give one of them (--image-size sets the exact size)"
            )
        with input_checks():  # SSIMParams' checks (ValueError): here, of the user's settings
            self.ssim_params
        if get_kind(self.model).residual == "ssim" and self.ssim_window > self.patch_size:
            # The SSIM loss compares whole patches: its window must fit inside one.
            fits = self.patch_size - 1 if self.patch_size % 2 == 0 else self.patch_size
            raise InputError(
                f"{_key('ssim_window')} {self.ssim_window} is larger than the {self.patch_size}x{self.patch_size} "
                f"patch ({_key('patch_size')}); use --ssim-window {fits} or smaller (odd, e.g. 11, the paper's) "
                "or a larger --patch-size"
            )
        if self.patches_per_epoch < self.batch_size:
            raise InputError(
                f"patches-per-epoch ({self.patches_per_epoch}) must be at least the batch size ({self.batch_size})"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON holds them (``image_size`` as a list), as a run's record holds them."""
        values = dataclasses.asdict(self)
        if values["image_size"] is not None:
            values["image_size"] = list(values["image_size"])
        return values


# How validate() names a field: the config key, with its option where it has one.
_NO_OPTION = {"ssim_sigma", "ssim_k1", "ssim_k2", "val_patches", "vae_observation_std", "jit_compile"}
_OPTION_OF = {"data": "DATA", "fm_weights": "--weights", "grayscale": "--grayscale/--rgb",
              "augment": "--augment/--no-augment"}
# (field, minimum, maximum or None) and (field, low, low excluded, high or None, high excluded): the
# schema's (tfssim.run_record), which a run's record is checked against too.
_INT_FIELDS = tuple((name, *bounds) for name, bounds in INT_SETTINGS.items())
_FLOAT_FIELDS = tuple((name, *bounds) for name, bounds in FLOAT_SETTINGS.items())
_BOOL_FIELDS = BOOL_SETTINGS


def _key(name: str) -> str:
    if name in _NO_OPTION:
        return name
    return f"{name} ({_OPTION_OF.get(name, '--' + name.replace('_', '-'))})"


def _as_number(value: Any, integer: bool) -> int | float | None:
    """``value`` (a number, or a string of one, as a config file may hold it) as an int or float;
    ``None`` for anything else: booleans, other types, and (``integer``) numbers with a fraction."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, str):
        try:
            return int(value.strip()) if integer else float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, numbers.Real):
        return None
    if not integer:
        return float(value)
    return int(value) if isinstance(value, numbers.Integral) or float(value).is_integer() else None


def _checked_int(name: str, value: Any, low: int, high: int | None) -> int:
    wanted = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
    number = _as_number(value, integer=True)
    if number is None or number < low or (high is not None and number > high):
        raise InputError(f"{_key(name)} must be {wanted}, got {value!r}; set {name} to {wanted}")
    return number


def _checked_image_size(value: Any, patch_size: int) -> tuple[int, int] | None:
    """``image_size`` as ``(height, width)`` ints, each at least the patch size, or ``None``."""
    if value is None:
        return None
    wanted = f"two integers H W, each >= the patch size {patch_size} (--patch-size)"
    items = list(value) if isinstance(value, (list, tuple)) else None
    sizes = None
    if items is not None and len(items) == 2:
        try:
            sizes = [_checked_int("image_size", item, 1, None) for item in items]
        except InputError:
            sizes = None
    if sizes is None:
        raise InputError(f"{_key('image_size')} must be {wanted}, got {value!r}; e.g. --image-size 256 256")
    if min(sizes) < patch_size:
        raise InputError(
            f"{_key('image_size')} {sizes[0]} {sizes[1]} is smaller than the {patch_size}x{patch_size} patch; "
            f"use --image-size of at least {patch_size} {patch_size}, or a smaller --patch-size"
        )
    return sizes[0], sizes[1]


def _checked_float(name: str, value: Any, low: float, low_open: bool, high: float | None, high_open: bool) -> float:
    wanted = f"a number {describe_range(low, low_open, high, high_open)}"
    number = _as_number(value, integer=False)
    if number is None or not math.isfinite(number) or not in_range(number, low, low_open, high, high_open):
        raise InputError(f"{_key(name)} must be {wanted}, got {value!r}; set {name} to {wanted}")
    return number


# A config file holds a handful of scalar values: these bounds refuse files that are not one
# (a log, an image, a YAML alias bomb, a deeply nested document) quickly and in little memory.
CONFIG_MAX_BYTES = 1 << 20
CONFIG_MAX_DEPTH = 8
# The raw type each field takes in a config file (before any conversion) is the schema's
# (run_record.setting_problem): load_config refuses ``epochs: 1.5`` or ``learning_rate: true``
# rather than coercing it.
_KNOWN_TYPES = {*INT_SETTINGS, *FLOAT_SETTINGS, *BOOL_SETTINGS, *STR_SETTINGS, "image_size"}


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
        raise InputError(f"config file {path} is larger than {CONFIG_MAX_BYTES // 1024} KiB; a run configuration is a "
                         "few lines of 'option-name: value' (is it the right file?)")
    try:
        text = data.decode("utf-8-sig")
        if "\0" in text:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
    except UnicodeDecodeError as err:
        raise InputError(f"config file {path} is not a text file (byte {data[err.start]:#04x} at offset {err.start} "
                         "is not UTF-8 text); give a YAML or JSON file of 'option-name: value' lines") from None
    raw = _parse_yaml(path, text) if path.suffix.lower() in (".yaml", ".yml") else _parse_json(path, text)
    if raw is None and path.suffix.lower() in (".yaml", ".yml"):
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"config file {path} must hold a mapping of option names to values, e.g. 'epochs: 10'")
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
        raise InputError(
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
    if name not in _KNOWN_TYPES:
        # a new TrainConfig field needs its type in run_record's schema
        raise AssertionError(f"config field {name!r} has no raw type")
    if setting_problem(name, value, ranges=False) is None:  # the schema's raw-type rule, the run record's too
        return
    if isinstance(value, (list, tuple, dict, set)):
        got = f"a {'mapping' if isinstance(value, dict) else 'list'} {_short_repr(value)}"
    else:
        got = _short_repr(value)
    if name in _BOOL_FIELDS:
        raise InputError(f"config file {path}: {_key(name)} must be true or false, got {got}; write {name}: true or "
                         f"{name}: false (a YAML/JSON boolean, without quotes)")
    if name in INT_SETTINGS:
        low, high = INT_SETTINGS[name]
        wanted = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
        raise InputError(f"config file {path}: {_key(name)} must be {wanted}, got {got}; set {name} to {wanted} "
                         "(a plain integer: no decimal point, no quotes)")
    if name in FLOAT_SETTINGS:
        wanted = f"a number {describe_range(*FLOAT_SETTINGS[name])}"
        raise InputError(f"config file {path}: {_key(name)} must be {wanted}, got {got}; set {name} to {wanted} "
                         "(a plain number such as 0.0002 or 2e-4, without quotes)")
    if name == "image_size":
        raise InputError(f"config file {path}: {_key(name)} must be a list of two integers [H, W] (or null), got "
                         f"{got}; write e.g. image_size: [256, 256]")
    raise InputError(f"config file {path}: {_key(name)} must be a string, got {got}; set {name} to a "
                     "single value, e.g. " + ("a folder path" if name in ("data", "output") else
                                              "'imagenet' or a weights file" if name == "fm_weights" else
                                              f"{name}: {getattr(TrainConfig, name)}"))


def _parse_json(path: Path, text: str) -> Any:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(
            f"config file {path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            'fix the syntax, e.g. {"epochs": 10}, or use a .yaml file'
        ) from None
    except RecursionError:
        raise InputError(f"config file {path} nests deeper than {CONFIG_MAX_DEPTH} levels; a run configuration "
                         "is one mapping of option names to plain values") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise InputError(f"config file {path} is not valid JSON ({err}); fix the value") from None
    if _depth(raw, CONFIG_MAX_DEPTH + 1) > CONFIG_MAX_DEPTH:
        raise InputError(f"config file {path} nests deeper than {CONFIG_MAX_DEPTH} levels; a run configuration "
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
        raise InputError(f"config file {path} {err}") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise InputError(
            f"config file {path} is not valid YAML ({problem}{at}); fix the syntax, "
            "one 'option-name: value' per line"
        ) from None
    except (ValueError, OverflowError) as err:  # a value YAML matched but Python cannot convert
        raise InputError(f"config file {path} has a value that cannot be read ({err}); fix it") from None
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
