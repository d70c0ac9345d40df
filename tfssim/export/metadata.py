"""The metadata of a tfssim export (``assets/tfssim.json``), read and validated without TensorFlow.

``tfssim.export.export_model`` writes one JSON object next to the SavedModel: the model's kind
and geometry, the SSIM parameters of its anomaly map, the signatures it serves, and the
post-processing settings (threshold, opening, convex hull). :class:`ExportMetadata` is that
object as a typed dataclass, so that a TF Serving client, the post-processor and the command-line
tools read one validated type instead of string keys. This module imports only the standard
library: a service that calls TF Serving over REST can read an export's metadata without
installing TensorFlow.

It is the one place the metadata's keys, their defaults (what an export written before a key
existed behaved with, the post-processing's included) and their rules are defined.

Reading is tolerant and strict at once: keys this version does not know (written by a newer
tfssim) are kept in :attr:`ExportMetadata.extra` and written back unchanged by
:meth:`ExportMetadata.to_dict`, while every known key must have the type and range the exporter
writes.

Example:
    >>> meta = ExportMetadata.read("exported_models/nanotwice")     # newest version folder
    >>> meta.patch_size, meta.stride, meta.threshold
    (128, 30, 0.412)
    >>> PostProcessor.from_metadata(meta)                             # tfssim.serving.postprocess
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tfssim._io import atomic_write_json
from tfssim.core.map_formula import FORMULAS, MapFormula
from tfssim.core.ssim_params import SSIMParams
from tfssim.core.tiling_params import (
    BLENDS,
    BORDERS,
    DEFAULT_BLEND,
    DEFAULT_BORDER,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAP_SIGMA,
    MAX_CHUNK_SIZE,
    is_chunk_size,
)
from tfssim.errors import InputError
from tfssim.export.layout import (
    MAX_VERSION,
    METADATA_FILE,
    is_model_name,
    list_versions,
    parse_version,
    resolve_version,
)
from tfssim.run_record import setting_problem

__all__ = ["ExportMetadata", "FORMAT", "MAX_BYTES", "MAX_OPENING_DIAMETER",
           "METADATA_FILE", "calibrated_versions", "check_value", "metadata_path", "read_export_metadata", "read_json", "renumber_export"]

# The metadata format this module reads and writes ("format" key); a larger one is refused.
FORMAT = 1

# tfssim-export writes a few kB; a file far larger is not ours and is not parsed.
MAX_BYTES = 16 * 2**20

# What to do about metadata that fails a check (the file came from elsewhere, or was edited by hand).
_FIX = "re-export the model with tfssim-export (or set the threshold again with tfssim-calibrate)"

# Keys every export since the first has written: a file without one of them is not tfssim metadata.
_REQUIRED = ("format", "name", "version", "kind", "residual", "patch_size", "channels", "stride")
# Keys that metadata rewritten before they had a value of their own holds as null (to_dict writes
# every key): null there reads as the field's default, the value those exports behaved with.
_NULL_IS_DEFAULT = ("chunk_size", "min_area")


# Bounds of the stored settings (one rule: tfssim-export's options and export_model check the same).
# The tiling settings' (chunk size, border, blend) are tfssim.core.tiling_params'.
# Diameter in pixels of the opening's disk: the paper's is 4 and tfssim-tune tries up to 8; an
# opening wider than this erases every defect and costs seconds per megapixel (3000 runs out of memory).
MAX_OPENING_DIAMETER = 64
# VAE posterior samples per pixel score: the graph sums them as extra channels of the whole image.
MAX_VAE_SAMPLES = 1000
# The side of a patch or of a resized image, in pixels.
MAX_SIDE = 2**16
# Pixel counts (areas): the largest integer every JSON reader holds exactly (a float64's 2**53).
MAX_COUNT = 2**53
# Longest free-text value (a path, a version string, a date).
MAX_TEXT = 4096
# The signatures every tfssim export serves (tfssim.export.graph.SIGNATURES) and the outputs it may have.
FLOAT_SIGNATURE = "serve_float"
STRIDE_SIGNATURE = "serve_with_stride"
SIGNATURE_NAMES = ("serving_default", FLOAT_SIGNATURE, STRIDE_SIGNATURE)
OUTPUT_NAMES = ("reconstruction", "anomaly_map", "luminance_map", "contrast_map", "structure_map")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a tampered file's 16 MiB string stays out of the line."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        # str() of a huge integer is slow, and past 4300 digits it raises: its digits are counted
        digits = int(value.bit_length() * math.log10(2)) + 1
        digits -= abs(value) < 10 ** (digits - 1)
        return f"an integer of {digits} digits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(low: int, high: int) -> Any:
    return lambda v: _is_int(v) and low <= v <= high


def _is_number(value: Any) -> bool:
    """A JSON number that is a finite float (a 400-digit integer is no float: refused, not an OverflowError)."""
    if not (_is_int(value) or isinstance(value, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _is_text(value: Any) -> bool:
    """A string of at most :data:`MAX_TEXT` characters without control characters (NUL, newline, ...)."""
    return isinstance(value, str) and len(value) <= MAX_TEXT and not any(ord(c) < 32 or ord(c) == 127 for c in value)


def _is_word(value: Any) -> bool:
    """A plain name: 1 to 64 ASCII letters, digits, ``_`` or ``-`` (a kind, a residual, an interpolation)."""
    return isinstance(value, str) and 1 <= len(value) <= 64 and value.isascii() \
        and all(c.isalnum() or c in "_-" for c in value)


def _is_formula(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    try:
        MapFormula.of(value)
    except InputError:
        return False
    return True


def _is_input_name(value: Any) -> bool:
    """A signature input name: a letter or ``_``, then letters, digits or ``_`` (at most 64)."""
    return _is_word(value) and "-" not in value and not value[0].isdigit()


# Per key: (what it must be, in words; the check). ``None`` is allowed where the field's type is
# Optional (checked separately from the field default).
_CHECKS: dict[str, tuple[str, Any]] = {
    "format": ("a positive integer", lambda v: _is_int(v) and v >= 1),
    "name": ("a plain folder name (no slashes, control characters or leading dot, at most 255 bytes)", is_model_name),
    "version": (f"a version number from 1 to {MAX_VERSION}", _int_in(1, MAX_VERSION)),
    "kind": ("a plain name (letters, digits, _ or -)", _is_word),
    "residual": ("a plain name (letters, digits, _ or -)", _is_word),
    "patch_size": (f"a positive integer of at most {MAX_SIDE}", _int_in(1, MAX_SIDE)),
    "channels": ("1 or 3", lambda v: _is_int(v) and v in (1, 3)),
    "stride": ("a positive integer", lambda v: _is_int(v) and v >= 1),
    "chunk_size": (f"a positive integer of at most {MAX_CHUNK_SIZE}", is_chunk_size),
    "ssim": ("an object of SSIM parameters", lambda v: isinstance(v, dict)),
    "ssim_padding": ("a line of text", _is_text),
    "vae_samples": (f"an integer from 1 to {MAX_VAE_SAMPLES}", _int_in(1, MAX_VAE_SAMPLES)),
    "vae_seed": (f"an integer from 0 to {2**31 - 1}", _int_in(0, 2**31 - 1)),
    "observation_std": ("a finite number > 0", lambda v: _is_number(v) and v > 0),
    "map_sigma": (f"a number >= 0 and at most {MAX_SIDE}", lambda v: _is_number(v) and 0 <= v <= MAX_SIDE),
    "border": ("one of " + ", ".join(map(repr, BORDERS)), lambda v: v in BORDERS),
    "blend": ("one of " + ", ".join(map(repr, BLENDS)), lambda v: v in BLENDS),
    "map_formula": ("a map formula record (tfssim.core.map_formula: name " + ", ".join(FORMULAS) + ")", _is_formula),
    "scale": ("a number > 0 and <= 1", lambda v: _is_number(v) and 0 < v <= 1),
    "image_size": (f"a list of two positive integers [height, width], each at most {MAX_SIDE}",
                   lambda v: isinstance(v, list) and len(v) == 2 and all(_int_in(1, MAX_SIDE)(x) for x in v)),
    "interpolation": ("a plain name (letters, digits, _ or -)", _is_word),
    "latent_dim": (f"an integer from 1 to {MAX_COUNT}", _int_in(1, MAX_COUNT)),
    "threshold": ("a finite number", _is_number),
    "threshold_fpr": ("a number between 0 and 1", lambda v: _is_number(v) and 0 < v < 1),
    "threshold_method": ("one of " + ", ".join(repr(m) for m in ("fpr", "min_defect_area")),
                         lambda v: v in ("fpr", "min_defect_area")),
    "threshold_min_defect_area": (f"an integer from 0 to {MAX_COUNT} (pixels)", _int_in(0, MAX_COUNT)),
    "calibrated_from": (f"a version number from 1 to {MAX_VERSION}", _int_in(1, MAX_VERSION)),
    "opening_diameter": (f"an integer from 0 to {MAX_OPENING_DIAMETER} (the opening's disk diameter in pixels; "
                         "0: no opening; the paper's is 4)", _int_in(0, MAX_OPENING_DIAMETER)),
    "min_area": (f"an integer from 0 to {MAX_COUNT} (pixels)", _int_in(0, MAX_COUNT)),
    "convex_hull": ("true or false", lambda v: isinstance(v, bool)),
    "input_name": ("a name of letters, digits and _ (at most 64)", _is_input_name),
    "uint8_scale": ("a number > 0 and <= 1", lambda v: _is_number(v) and 0 < v <= 1),
    "float_signature": (f"{FLOAT_SIGNATURE!r} (the signature taking float32 images)", lambda v: v == FLOAT_SIGNATURE),
    "stride_signature": (f"{STRIDE_SIGNATURE!r} (the signature taking a stride)", lambda v: v == STRIDE_SIGNATURE),
    "signatures": ("an object describing the signatures " + ", ".join(SIGNATURE_NAMES),
                   lambda v: isinstance(v, dict) and all(k in SIGNATURE_NAMES and isinstance(x, dict)
                                                         for k, x in v.items())),
    "outputs": ("a list of output names from " + ", ".join(OUTPUT_NAMES) + ", with anomaly_map",
                lambda v: isinstance(v, list) and all(isinstance(x, str) and x in OUTPUT_NAMES for x in v)
                and len(set(v)) == len(v) and "anomaly_map" in v),
    "output_shapes": ("an object of a line of text per output name",
                      lambda v: isinstance(v, dict) and all(k in OUTPUT_NAMES and _is_text(x) for k, x in v.items())),
    "jit_compile": ("true or false", lambda v: isinstance(v, bool)),
    "training_config": ("an object", lambda v: isinstance(v, dict)),
    "source": ("a path (a line of text)", _is_text),
    "checkpoint": ("an object", lambda v: isinstance(v, dict)),
    "tfssim_version": ("a line of text", _is_text),
    "tensorflow_version": ("a line of text", _is_text),
    "keras_version": ("a line of text", _is_text),
    "created": ("a line of text", _is_text),
}

def check_value(key: str, value: Any, what: str | None = None) -> Any:
    """``value`` if it is valid for the metadata key ``key``, else one ``InputError`` line.

    The same rule as the stored file's (:class:`ExportMetadata`), for the code that produces the
    value: ``export_model``'s and ``tfssim-export``'s chunk size, for one, so that an export is
    never written with a value its own metadata would refuse.

    Args:
        key: A metadata key (e.g. ``"chunk_size"``).
        value: The value to check.
        what: How to name it in the message (default ``tfssim metadata key 'key'``).

    Returns:
        ``value`` unchanged.

    Raises:
        InputError: ``value`` is not what ``key`` must be.
    """
    expected, check = _CHECKS[key]
    if not check(value):
        raise InputError(f"{what or f'tfssim metadata key {key!r}'} must be {expected}, got {_shown(value)}")
    return value


@dataclass
class ExportMetadata:
    """The metadata ``tfssim-export`` writes into ``assets/tfssim.json`` of an export.

    Fields other than the first eight are optional: an export written before a field existed
    gets the value that exporter behaved with (e.g. ``map_sigma`` 0: no smoothing).

    Attributes:
        format: Metadata format (1).
        name: Model name (TF Serving's ``--model_name``).
        version: Version folder number.
        kind: Model kind (``ssim``, ``l2``, ``vae``, ``fm``).
        residual: How the anomaly map is computed (``ssim``, ``l2``, ``vae``).
        patch_size: Side of the square patches the model reconstructs.
        channels: Image channels the model takes.
        stride: Default tiling stride of the signatures.
        chunk_size: Tiles per model call inside the graph (:data:`DEFAULT_CHUNK_SIZE` in exports from
            before the key).
        ssim: SSIM parameters of the anomaly map (``residual == "ssim"`` only).
        ssim_padding: How the SSIM map is padded at the image border.
        vae_samples: Posterior samples per pixel score (VAE only).
        vae_seed: Seed of the VAE's posterior sampling (VAE only).
        observation_std: The VAE's observation noise (VAE only).
        map_sigma: Gaussian smoothing of the served maps, in pixels (0: none).
        border: How the image border is scored: ``"none"`` (the paper) or ``"reflect"`` (each
            request mirrored outward by half a patch before tiling, outputs cropped back).
        blend: How overlapping tiles are combined: ``"mean"`` (the paper) or ``"gaussian"``.
        map_formula: How the served ``anomaly_map`` is made (:meth:`tfssim.core.map_formula.MapFormula.to_dict`);
            ``None`` (exports from before this key) and ``{"name": "ssim"}`` are the paper's ``1 - SSIM``;
            ``None`` for the other residuals. A formula with a second term needs residual ``ssim``
            and a reach within the patch.
        scale: Factor every request is resized by inside the graph before it is tiled (1: none;
            the model was trained with ``tfssim-train --scale``); outputs come back at the
            request's size.
        image_size: ``[height, width]`` every request is resized to instead (``--image-size``).
        interpolation: How requests and outputs are resized (:data:`tfssim.core.resize.INTERPOLATION`,
            ``"bilinear_antialias"``); ``None`` when nothing is resized.
        latent_dim: Size of the latent code.
        threshold: Calibrated anomaly-map threshold (``None`` until ``tfssim-calibrate``).
        threshold_fpr: Pixel false-positive rate the threshold was set at (method ``"fpr"``).
        threshold_method: How ``tfssim-calibrate`` set the threshold: ``"fpr"`` (a pixel
            false-positive rate on defect-free images, ``threshold_fpr``) or
            ``"min_defect_area"`` (the smallest threshold at which no region of the
            post-processed segmentation of any defect-free image exceeds
            ``threshold_min_defect_area`` pixels; MVTec AD's protocol). ``None``: not recorded
            (exports calibrated before this key existed, and ``tfssim-tune``'s, whose
            ``threshold_fpr`` says it was set at a pixel FPR).
        threshold_min_defect_area: The area in pixels (at the input's resolution) of method
            ``"min_defect_area"``.
        calibrated_from: The version this one is a calibrated copy of (``tfssim-calibrate``
            writes a new version: the same SavedModel files with a new threshold and rule);
            ``None`` for an export written by ``tfssim-export`` or ``tfssim-tune``, and in
            exports from before this key existed.
        opening_diameter: Diameter of the opening's circular element (0: no opening).
        convex_hull: Replace each region by its convex hull.
        min_area: Drop regions of fewer pixels (set by ``tfssim-tune``; null in older files reads as 0).
        input_name: Name of the image input of every signature.
        uint8_scale: Factor from ``serving_default``'s uint8 input to [0, 1].
        float_signature: Signature taking float32 images in [0, 1].
        stride_signature: Signature taking float32 images and a stride.
        signatures: Description of every signature (inputs, stride).
        outputs: Names of the signatures' outputs.
        output_shapes: Shape of each output, in words.
        jit_compile: Whether the model call is XLA-compiled.
        training_config: The training run's settings, when known.
        source: The model file the export was made from.
        checkpoint: Which checkpoint of the run it is (file, epoch, whether training still ran;
            :func:`tfssim.export.checkpoint_info`).
        tfssim_version: tfssim version that wrote the export.
        tensorflow_version: TensorFlow version that wrote the export.
        keras_version: Keras version that wrote the export.
        created: UTC time of the export (ISO 8601).
        extra: Keys this version does not know, kept so that rewriting the file loses nothing.
    """

    format: int
    name: str
    version: int
    kind: str
    residual: str
    patch_size: int
    channels: int
    stride: int
    chunk_size: int = DEFAULT_CHUNK_SIZE
    ssim: dict[str, Any] | None = None
    ssim_padding: str | None = None
    vae_samples: int | None = None
    vae_seed: int | None = None
    observation_std: float | None = None
    map_sigma: float = DEFAULT_MAP_SIGMA
    border: str = DEFAULT_BORDER
    blend: str = DEFAULT_BLEND
    map_formula: dict[str, Any] | None = None
    scale: float = 1.0
    image_size: list[int] | None = None
    interpolation: str | None = None
    latent_dim: int | None = None
    threshold: float | None = None
    threshold_fpr: float | None = None
    threshold_method: str | None = None
    threshold_min_defect_area: int | None = None
    calibrated_from: int | None = None
    opening_diameter: int = 4
    convex_hull: bool = True
    min_area: int = 0
    input_name: str = "image"
    uint8_scale: float = 1 / 255
    float_signature: str = "serve_float"
    stride_signature: str = "serve_with_stride"
    signatures: dict[str, Any] | None = None
    outputs: list[str] = field(default_factory=lambda: ["reconstruction", "anomaly_map"])
    output_shapes: dict[str, str] | None = None
    jit_compile: bool = False
    training_config: dict[str, Any] | None = None
    source: str | None = None
    checkpoint: dict[str, Any] | None = None
    tfssim_version: str | None = None
    tensorflow_version: str | None = None
    keras_version: str | None = None
    created: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The metadata keys this version knows, in the order the exporter writes them."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str | os.PathLike | None = None) -> "ExportMetadata":
        """Metadata from the decoded JSON object.

        Args:
            values: The object of ``assets/tfssim.json``.
            source: Where it came from (e.g. the file), named in error messages.

        Returns:
            The validated metadata; unknown keys are kept in ``extra``.

        Raises:
            ValueError: ``values`` is not an object, misses a required key, holds a known key
                of the wrong type or range, or has a newer ``format`` than this version reads.
        """
        where = f"{source}: " if source is not None else ""
        if not isinstance(values, Mapping):
            raise InputError(f"{where}tfssim metadata must be a JSON object, got {_type_name(values)}; {_FIX}")
        missing = [key for key in _REQUIRED if key not in values]
        if missing:
            raise InputError(f"{where}tfssim metadata lacks {', '.join(missing)}; is this a tfssim export? "
                             "(re-export the model with tfssim-export)")
        known = set(cls.keys())
        given = {key: value for key, value in values.items()
                 if key in known and not (key in _NULL_IS_DEFAULT and value is None)}
        extra = {key: value for key, value in values.items() if key not in known}
        try:
            return cls(**given, extra=extra)
        except ValueError as err:
            text = str(err)  # a newer format says its own fix (upgrade tfssim)
            raise InputError(f"{where}{text}" + ("" if text.endswith("upgrade tfssim") else f"; {_FIX}")) from None

    def validate(self) -> None:
        """Check every field's type and range (called on construction).

        Raises:
            ValueError: one line naming the first wrong key, what it must be and what it is.
        """
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key, (expected, check) in _CHECKS.items():
            value = getattr(self, key)
            if value is None and (key not in _REQUIRED and defaults.get(key) is None):
                continue
            if not check(value):
                raise InputError(f"tfssim metadata key {key!r} must be {expected}, got {_shown(value)}")
        for key, value in (self.training_config or {}).items():
            # The run's settings, read back by evaluations (val_split, seed) and re-exports (scale,
            # image_size): the run folder's one table of their types and ranges. None: not recorded.
            expected = None if value is None else setting_problem(key, value)
            if expected is not None:
                raise InputError(f"tfssim metadata key 'training_config' entry {key!r} must be {expected}, "
                                 f"got {_shown(value)}")
        if self.ssim is not None:
            try:  # the one rule of an SSIM parameter set (missing keys take SSIMParams' defaults)
                window = SSIMParams.from_dict(self.ssim).window_size
            except ValueError as err:
                raise InputError(f"tfssim metadata key 'ssim' is not a valid SSIM parameter set: {err}") from None
            if window > self.patch_size:
                raise InputError(f"tfssim metadata key 'ssim' has window_size {_shown(window)}, larger than its "
                                 f"{self.patch_size}x{self.patch_size} patch")
        formula = MapFormula.of(self.map_formula)
        if not formula.plain and self.residual != "ssim":
            raise InputError(f"tfssim metadata map_formula {formula.name!r} needs residual 'ssim', got "
                             f"{_shown(self.residual)}")
        if formula.reach() >= self.patch_size:
            raise InputError(f"tfssim metadata map_formula {formula.describe()} reads {formula.reach()} pixels around "
                             f"each pixel, more than its {self.patch_size}x{self.patch_size} patch allows")
        if self.format > FORMAT:
            raise InputError(f"tfssim metadata format {_shown(self.format)} is newer than this tfssim reads ({FORMAT}); "
                             "upgrade tfssim")
        if self.stride > self.patch_size:
            raise InputError(f"tfssim metadata stride {_shown(self.stride)} is larger than its patch size "
                             f"{self.patch_size}")
        # The method and its one parameter agree (older exports have neither: method None).
        if self.threshold_method == "min_defect_area" and (self.threshold_min_defect_area is None
                                                           or self.threshold_fpr is not None):
            raise InputError("tfssim metadata threshold_method 'min_defect_area' needs threshold_min_defect_area "
                             f"and no threshold_fpr, got {self.threshold_min_defect_area!r} and {self.threshold_fpr!r}")
        if self.threshold_method == "fpr" and self.threshold_fpr is None:
            raise InputError("tfssim metadata threshold_method 'fpr' needs threshold_fpr, got None")
        if self.threshold_method != "min_defect_area" and self.threshold_min_defect_area is not None:
            raise InputError(f"tfssim metadata threshold_min_defect_area {self.threshold_min_defect_area!r} is set but "
                             f"threshold_method is {self.threshold_method!r}, not 'min_defect_area'")
        if self.image_size is not None and min(self.image_size) < self.patch_size:
            raise InputError(f"tfssim metadata image_size {self.image_size!r} is smaller than its "
                             f"{self.patch_size}x{self.patch_size} patch")
        if self.image_size is not None and self.scale != 1:
            raise InputError(f"tfssim metadata has both scale {self.scale!r} and image_size {self.image_size!r}; "
                             "an export resizes by one of them")
        if self.interpolation is None and (self.image_size is not None or self.scale != 1):
            raise InputError("tfssim metadata resizes requests (scale or image_size) but names no 'interpolation'")
        if not isinstance(self.extra, dict):
            raise InputError(f"extra metadata must be a dict, got {_type_name(self.extra)}")
        clash = set(self.extra) & set(self.keys())
        if clash:
            raise InputError(f"extra metadata repeats known key(s) {sorted(clash)}")

    @property
    def min_input_size(self) -> int:
        """The smallest height and width the export takes: the patch size, or what resizes to it
        (:func:`tfssim.core.resize.min_input_size`)."""
        from tfssim.core.resize import min_input_size

        return min_input_size(self.patch_size, self.scale, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object to write: every known key (``None`` included), then the unknown ones.

        ``ExportMetadata.from_dict(m.to_dict()) == m``, and a file read and written again keeps
        the keys a newer tfssim added.
        """
        values = {key: getattr(self, key) for key in self.keys()}
        values = json.loads(json.dumps(values))  # deep copy, tuples as lists: what a reader sees
        values.update(json.loads(json.dumps(self.extra)))
        return values

    def write(self, version_dir: str | os.PathLike) -> Path:
        """Write this metadata as ``version_dir/assets/tfssim.json``, atomically: the file's one writer.

        Args:
            version_dir: The export's version folder (or the folder it is built in).

        Returns:
            The file written.
        """
        path = Path(version_dir) / METADATA_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_json(path, self.to_dict(), default=str)

    def replace(self, **changes: Any) -> "ExportMetadata":
        """A validated copy with some fields changed (e.g. ``threshold=0.4, threshold_fpr=0.01``)."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | os.PathLike) -> "ExportMetadata":
        """Read the metadata of an export.

        Args:
            path: A version folder (holding ``assets/tfssim.json``), a model folder (its newest
                numbered version is read), or the JSON file itself (e.g. a copy on a client).

        Returns:
            The validated metadata.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            InputError: no metadata there, or the file is not metadata (see :func:`read_json`),
                or invalid metadata; one line naming the file.
        """
        file = metadata_path(path)
        return cls.from_dict(read_json(file), source=file)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def read_json(file: str | os.PathLike) -> Any:
    """The decoded JSON of a metadata file, read with the bounds a file from elsewhere needs.

    Strict JSON (no ``NaN``/``Infinity``), UTF-8, at most :data:`MAX_BYTES`, nesting that
    Python's parser can follow. Every fault is one line naming the file.

    Args:
        file: The metadata file (``assets/tfssim.json``).

    Returns:
        The decoded value (not yet checked to be metadata: see :meth:`ExportMetadata.from_dict`).

    Raises:
        InputError: the file cannot be read, is too large, not UTF-8 or not strict JSON.
    """
    path = Path(file)
    fix = "re-export the model with tfssim-export"
    try:
        # Not following into a pipe or a device: opened without blocking, read only if it is a
        # regular file, and never more than the bound (``/dev/zero`` reports size 0).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            raw = None
            if stat.S_ISREG(os.fstat(fd).st_mode):
                chunks, size = [], 0
                while size <= MAX_BYTES and (chunk := os.read(fd, MAX_BYTES + 1 - size)):
                    chunks.append(chunk)
                    size += len(chunk)
                raw = b"".join(chunks)
        finally:
            os.close(fd)
    except OSError as err:
        raise InputError(f"cannot read export metadata {path}: {err.strerror or type(err).__name__}") from None
    if raw is None:
        raise InputError(f"export metadata {path} is not a regular file (a device, pipe or folder); {fix}")
    if len(raw) > MAX_BYTES:
        raise InputError(f"export metadata {path} is over {MAX_BYTES:,} bytes, not tfssim's (a few kB); {fix}")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise InputError(f"export metadata {path} is damaged: it is not UTF-8 text; {fix}") from None
    except RecursionError:
        raise InputError(f"export metadata {path} is damaged: it is nested too deeply; {fix}") from None
    except json.JSONDecodeError as err:
        raise InputError(f"export metadata {path} is not valid JSON (line {err.lineno}, column {err.colno}: "
                         f"{err.msg}); {fix}") from None
    except ValueError as err:  # NaN/Infinity (not JSON), an integer of more than 4300 digits
        raise InputError(f"export metadata {path} is not valid JSON ({' '.join(str(err).split())}); {fix}") from None


def metadata_path(path: str | os.PathLike) -> Path:
    """The metadata file of an export, from the file itself, its version folder or its model folder.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: neither ``path`` nor its newest numbered version folder holds ``assets/tfssim.json``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"export {path} does not exist")
    if not path.is_dir():
        return path  # a file, or a device or pipe that read_json refuses without reading it
    version = resolve_version(path, METADATA_FILE)
    if version is not None and (version / METADATA_FILE).is_file():
        return version / METADATA_FILE
    where = f"{path} (newest version {version.name})" if version not in (None, path) else str(path)
    raise InputError(f"{where} has no {METADATA_FILE}; it is not a tfssim export (re-export with tfssim-export)")


def calibrated_versions(version_dir: str | os.PathLike) -> list[Path]:
    """The versions beside ``version_dir`` calibrated from it (``calibrated_from``), newest first.

    ``tfssim-calibrate`` writes a threshold as a new version; this finds it from the old one
    (e.g. to tell a user who predicts with the old version which one holds the threshold).
    Unreadable or foreign metadata is skipped.

    Args:
        version_dir: A version folder ``<root>/<name>/<version>``.

    Returns:
        The version folders whose metadata's ``calibrated_from`` is ``version_dir``'s number;
        empty when its name is not a version number or none was calibrated from it.
    """
    path = Path(version_dir)
    version = parse_version(path.name)
    if version is None or not path.parent.is_dir():
        return []
    found = []
    for _, folder in reversed(list_versions(path.parent)):
        if folder != path and (folder / METADATA_FILE).is_file():
            try:
                meta = ExportMetadata.read(folder / METADATA_FILE)
            except (OSError, ValueError):
                continue
            if meta.calibrated_from == version:
                found.append(folder)
    return found


def read_export_metadata(export_dir: str | os.PathLike) -> ExportMetadata:
    """The tfssim metadata (``assets/tfssim.json``) of an export version folder, parsed and checked.

    The file must be strict JSON (no ``NaN``/``Infinity``), at most 16 MiB
    (:func:`tfssim.export.metadata.read_json`), an object that passes :class:`tfssim.export.metadata.ExportMetadata`'s
    checks (the one definition of every key's type and range).
    Every failure is one ``InputError`` line naming the file.

    Args:
        export_dir: The version folder.

    Returns:
        The validated metadata (``to_dict()`` gives the JSON object as written back).

    Raises:
        InputError: The file is missing, unreadable, not strict JSON or holds malformed values.

    Example:
        >>> read_export_metadata("exported_models/nanotwice/1").threshold
    """
    path = Path(export_dir) / METADATA_FILE
    try:
        exists = path.is_file()
    except OSError as err:
        raise InputError(f"cannot read export metadata {path}: {err.strerror or type(err).__name__}") from None
    if not exists:
        raise InputError(f"{export_dir} has no {METADATA_FILE}; it is not a tfssim export "
                         "(re-export the model with tfssim-export)")
    return ExportMetadata.from_dict(read_json(path), source=path)  # every key's type and range


def renumber_export(version_dir: str | os.PathLike, version: int) -> None:
    """Record ``version`` in the metadata of an export that is about to take that number.

    :func:`tfssim.export.layout._move_into_place` calls it when a concurrent export took the
    number this one was built for.

    Args:
        version_dir: The finished export folder, not yet in place.
        version: Its new version number.
    """
    read_export_metadata(version_dir).replace(version=version).write(version_dir)
