"""Run an exported SavedModel from Python, with TensorFlow alone (no Keras model code)."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfssim.errors import InputError
from tfssim.export.layout import resolve_export_dir
from tfssim.export.metadata import ExportMetadata, read_export_metadata

__all__ = ["ExportedModel", "readable_tf_error"]


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
