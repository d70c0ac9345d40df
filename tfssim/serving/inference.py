"""Run an exported SavedModel from Python, with TensorFlow alone (no Keras model code)."""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfssim.errors import InputError
from tfssim.export.layout import (
    METADATA_FILE,
    SAVED_MODEL_FILE,
    check_loadable_path,
    check_version_files,
    resolve_version,
)
from tfssim.export.metadata import ExportMetadata, read_json

__all__ = [
    "ExportedModel", "METADATA_FILE", "read_export_metadata", "readable_tf_error",
    "resolve_export_dir",
]


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


def readable_tf_error(message: str) -> str:
    """The human part of a TensorFlow op error: an assertion's own text, else its first real line.

    ``tf.debugging.assert_*`` failures read ``... assertion failed: [text] [Condition ...]
    [x = ] [20] ...``; this returns ``text`` (TensorFlow escapes quotes inside it).
    """
    found = re.search(r"assertion failed: \[(.*?)\](?: \[|$)", message, flags=re.S)
    if found:
        return found.group(1).replace("\\'", "'").strip()
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(noise)]
    return (useful or lines or ["TensorFlow error"])[0]


def resolve_export_dir(path: str | Path) -> Path:
    """A version folder (holding ``saved_model.pb``) from itself or its model folder (newest version).

    The versions of a model folder are :mod:`tfssim.export.layout`'s (ASCII digits, 1 to 2**63 - 1);
    the version must hold only regular files and folders
    (:func:`tfssim.export.layout.check_version_files`): a link inside is refused, not followed.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        InputError: naming the path, when neither holds an export with tfssim metadata, or the
            version holds a link, a device or a pipe.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"export {path} does not exist")
    check_loadable_path(path)
    version = resolve_version(path, SAVED_MODEL_FILE)
    if version is None:
        raise InputError(f"{path} is not a SavedModel (no {SAVED_MODEL_FILE}) and has no numbered version folders")
    path = version
    if not (path / SAVED_MODEL_FILE).exists():
        raise InputError(f"{path} has no {SAVED_MODEL_FILE}; is the export complete?")
    check_version_files(path)
    if not (path / METADATA_FILE).is_file():
        raise InputError(
            f"export {path} has no {METADATA_FILE} metadata; it was not written by tfssim-export "
            "(re-export the model with tfssim-export)"
        )
    return path


@dataclass
class ExportedModel:
    """A tfssim export loaded for inference.

    Example:
        >>> model = ExportedModel.load("exported_models/nanotwice/1")
        >>> maps = model.predict(image)          # image: [H, W, C] float in [0, 1]
        >>> maps["anomaly_map"].shape            # (H, W)
    """

    path: Path
    metadata: ExportMetadata
    _loaded: Any = field(repr=False, default=None)

    @classmethod
    def load(cls, path: str | Path) -> "ExportedModel":
        import tfssim._tensorflow  # noqa: F401 - first: without TensorFlow, an ImportError naming the install command
        import tensorflow as tf

        export_dir = resolve_export_dir(path)
        metadata = read_export_metadata(export_dir)
        loaded = tf.saved_model.load(str(export_dir))
        wanted = ("serving_default", metadata.float_signature)
        missing = [name for name in wanted if name not in loaded.signatures]
        if missing:
            raise InputError(f"export {export_dir} has no signature {', '.join(map(repr, missing))}; it is not "
                             "a SavedModel written by tfssim-export (re-export the model with tfssim-export)")
        return cls(export_dir, metadata, loaded)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def channels(self) -> int:
        return self.metadata.channels

    @property
    def threshold(self) -> float | None:
        value = self.metadata.threshold
        return None if value is None else float(value)

    def predict(self, image: np.ndarray, source: str | Path | None = None,
                stride: int | None = None) -> dict[str, np.ndarray]:
        """Maps of one image ``[H, W]`` or ``[H, W, C]`` float in [0, 1] (or uint8).

        ``stride`` (``1 <= stride <= patch_size``) tiles at that stride through the export's
        ``serve_with_stride`` signature; ``None``: the export's default stride (its metadata's
        ``stride``, what ``serving_default`` serves).

        Returns a dict of ``[H, W]`` float32 arrays: ``anomaly_map`` and, where the model has
        them, the component residual maps, plus ``reconstruction`` ``[H, W, C]``.

        Raises ``ValueError`` (prefixed with ``source``, e.g. the image's path, when given) for
        an image the export refuses: wrong channel count, smaller than the patch, values out
        of range; the signature's ``InvalidArgumentError`` is turned into its readable message.
        ``MemoryError`` (one line, same prefix) where TensorFlow runs out of memory on it.
        """
        import tensorflow as tf

        where = f"{source}: " if source is not None else ""
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] != self.channels:
            raise InputError(
                f"{where}image of shape {image.shape} does not fit this export, which takes "
                f"[H, W, {self.channels}] images"
            )
        signatures = self._loaded.signatures
        extra = {}
        if stride is not None:
            patch_size = self.metadata.patch_size
            if isinstance(stride, bool) or int(stride) != stride or not 1 <= stride <= patch_size:
                raise InputError(f"stride must be an integer between 1 and the patch size {patch_size}, got {stride!r}")
            fn = signatures[self.metadata.stride_signature]
            scale = 255.0 if image.dtype == np.uint8 else 1.0
            arg = tf.constant(image.astype(np.float32) / scale)
            extra = {"stride": tf.constant(int(stride), tf.int32)}
        elif image.dtype == np.uint8:
            fn = signatures["serving_default"]
            arg = tf.constant(image)
        else:
            # The metadata was checked on load: its float_signature is the one every export serves.
            fn = signatures[self.metadata.float_signature]
            arg = tf.constant(image.astype(np.float32))
        (input_name,) = [name for name in fn.structured_input_signature[1] if name != "stride"]
        try:
            outputs = fn(**{input_name: arg}, **extra)
        except tf.errors.InvalidArgumentError as err:
            raise InputError(
                f"{where}the export refused the image of shape {image.shape}: {readable_tf_error(err.message)}"
            ) from None
        except tf.errors.ResourceExhaustedError:
            # Too large for this machine's memory: a failure of this image, not of the program.
            raise MemoryError(f"{where}out of memory computing the maps of an image of shape {image.shape}; "
                              "use a smaller image or a machine with more memory") from None
        result = {}
        for key, value in outputs.items():
            array = value.numpy()
            if array.ndim == 4:
                array = array[0]
            if key != "reconstruction" and array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            result[key] = array
        return result


@dataclass
class ServingTime:
    """Time spent in an export's graph and the megapixels it scored, over many calls: what
    ``tfssim-predict`` and ``tfssim-evaluate`` report as seconds per megapixel.

    Example:
        >>> clock = ServingTime()
        >>> maps = clock.predict(model, image)
        >>> clock.seconds_per_megapixel
    """

    seconds: float = 0.0
    megapixels: float = 0.0

    def predict(self, model: ExportedModel, image: np.ndarray, **kwargs: Any) -> dict[str, np.ndarray]:
        """``model.predict(image, **kwargs)``, timed (a refused image counts no time)."""
        tick = time.perf_counter()
        maps = model.predict(image, **kwargs)
        self.seconds += time.perf_counter() - tick
        self.megapixels += image.shape[0] * image.shape[1] / 1e6
        return maps

    def add(self, other: "ServingTime") -> None:
        """Count ``other``'s calls too (e.g. those of another worker)."""
        self.seconds += other.seconds
        self.megapixels += other.megapixels

    @property
    def seconds_per_megapixel(self) -> float | None:
        """Seconds per megapixel over every call so far; ``None`` before the first."""
        return self.seconds / self.megapixels if self.megapixels else None
