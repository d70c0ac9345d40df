"""A client for TF Serving's REST ``:predict`` API: image in, anomaly maps and defect regions out.

Needs only the standard library, NumPy and scikit-image (through :mod:`tfssim.postprocess`): no
TensorFlow, no Keras. The export's metadata (:class:`tfssim.metadata.ExportMetadata`) gives the
post-processing settings (threshold, opening, convex hull) and lets the client check an image's
channels and size before sending it; without it the client still returns the maps.

Example:
    >>> client = ServingClient("http://localhost:8501", "nanotwice", metadata="exported_models/nanotwice")
    >>> maps = client.predict(read_image("scan.png"))          # float [H, W, C] in [0, 1], or uint8
    >>> maps["anomaly_map"].shape
    (700, 1024)
    >>> mask, regions = client.segment(read_image("scan.png"))   # regions: list of dicts (area, bbox, ...)
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping

import numpy as np

from tfssim.errors import InputError
from tfssim.inference import readable_tf_error
from tfssim.metadata import ExportMetadata
from tfssim.postprocess import PostProcessor

__all__ = ["ServingClient", "ServingError"]

# Signatures of a tfssim export (tfssim.export.SIGNATURES): uint8 images go to the default one.
_UINT8_SIGNATURE = "serving_default"


class ServingError(RuntimeError):
    """TF Serving could not be reached, refused the request, or answered something unusable.

    The message is one line. ``status`` is the HTTP status when the server answered (e.g. 400
    for an image the export refuses, 404 for an unknown model or version), else ``None``.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class ServingClient:
    """Calls a tfssim export served by TF Serving over REST and post-processes its answer.

    Args:
        url: TF Serving's REST address, e.g. ``http://localhost:8501`` (``--rest_api_port``).
        model_name: The served model's name (TF Serving's ``--model_name``).
        version: A version to ask for; default the newest one the server has loaded.
        signature: Signature to call; default by the image's type: uint8 images go to
            ``serving_default``, float images in [0, 1] to the export's float signature
            (``serve_float``), as :meth:`tfssim.inference.ExportedModel.predict` does.
        metadata: The export's metadata: an :class:`~tfssim.metadata.ExportMetadata`, its dict,
            or a path to the export (model folder, version folder or ``tfssim.json``). Needed
            for :meth:`segment` unless a threshold is given there; lets :meth:`predict` check
            an image before sending it.
        timeout: Seconds to wait for an answer (a 700x1024 image takes about a second on a CPU).

    Raises:
        ValueError: a malformed ``url``, ``model_name``, ``version`` or ``metadata``.
        FileNotFoundError: ``metadata`` is a path that does not exist.
    """

    def __init__(self, url: str, model_name: str, version: int | None = None, signature: str | None = None,
                 metadata: ExportMetadata | Mapping[str, Any] | str | os.PathLike | None = None,
                 timeout: float = 60.0) -> None:
        parsed = urllib.parse.urlsplit(str(url))
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query or parsed.fragment:
            raise InputError(f"TF Serving URL must look like http://host:8501, got {url!r}")
        if not isinstance(model_name, str) or not model_name or "/" in model_name or ":" in model_name:
            raise InputError(f"model name must be a non-empty name without '/' or ':', got {model_name!r}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, (int, np.integer))
                                    or version < 1):
            raise InputError(f"version must be a positive integer or None (the newest), got {version!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.url = str(url).rstrip("/")
        self.model_name = model_name
        self.version = None if version is None else int(version)
        self.signature = signature
        self.timeout = float(timeout)
        if metadata is None or isinstance(metadata, ExportMetadata):
            self.metadata = metadata
        elif isinstance(metadata, Mapping):
            self.metadata = ExportMetadata.from_dict(metadata)
        else:
            self.metadata = ExportMetadata.read(metadata)

    @property
    def endpoint(self) -> str:
        """The ``:predict`` URL of the model (and version)."""
        path = f"/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        return f"{self.url}{path}:predict"

    def __repr__(self) -> str:
        return f"ServingClient({self.endpoint!r})"

    # ----------------------------------------------------------------------------------------
    def _prepare(self, image: Any) -> np.ndarray:
        """The image as ``[H, W, C]`` uint8 or float32, checked against the metadata when known."""
        image = np.asarray(image)
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise InputError(f"image must be [height, width] or [height, width, channels], got shape {image.shape}")
        if image.dtype == bool or not (image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating)):
            raise InputError(f"image must be uint8 (0..255) or float in [0, 1], got {image.dtype}; "
                             "read it with tfssim.data.read_image")
        if image.dtype != np.uint8:
            image = image.astype(np.float32)
            if not np.isfinite(image).all():
                raise InputError("image holds NaN or infinite values")
        meta = self.metadata
        if meta is not None:
            if image.shape[-1] != meta.channels:
                raise InputError(f"image has {image.shape[-1]} channel(s) but the export takes {meta.channels} "
                                 f"([H, W, {meta.channels}] images)")
            smallest = meta.min_input_size  # the export's own rule: a scaled export needs the patch after resizing
            if min(image.shape[:2]) < smallest and smallest == meta.patch_size:
                raise InputError(f"image of {image.shape[0]}x{image.shape[1]} pixels is smaller than the patch: "
                                 f"height and width must be at least the patch size {meta.patch_size}")
            if min(image.shape[:2]) < smallest:
                raise InputError(f"image of {image.shape[0]}x{image.shape[1]} pixels is too small for the export: "
                                 f"height and width must be at least {smallest} (its {meta.patch_size}x"
                                 f"{meta.patch_size} patch once resized by {meta.scale:g})")
        return image

    def _signature_for(self, image: np.ndarray) -> str:
        if self.signature is not None:
            return self.signature
        if image.dtype == np.uint8:
            return _UINT8_SIGNATURE
        return self.metadata.float_signature if self.metadata is not None else "serve_float"

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` as JSON; the decoded answer, or :class:`ServingError` in one line."""
        request = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            raise ServingError(f"TF Serving at {self.endpoint} answered HTTP {err.code}: {self._error_text(err)}",
                               status=err.code) from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, ConnectionRefusedError):
                raise ServingError(f"cannot reach TF Serving at {self.url}: connection refused (is "
                                   "tensorflow_model_server running there with --rest_api_port?)") from None
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise ServingError(f"TF Serving at {self.url} did not answer within {self.timeout:g} s") from None
            raise ServingError(f"cannot reach TF Serving at {self.url}: {_one_line(str(reason))}") from None
        except (socket.timeout, TimeoutError):
            raise ServingError(f"TF Serving at {self.url} did not answer within {self.timeout:g} s") from None
        except (ConnectionError, http.client.HTTPException) as err:  # dropped or cut off mid-answer
            detail = _one_line(str(err)) or type(err).__name__
            raise ServingError(f"TF Serving at {self.url} closed the connection: {detail}") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            raise ServingError(f"TF Serving at {self.endpoint} answered something that is not JSON: "
                               f"{_one_line(raw.decode(errors='replace'), 120)!r}") from None
        if not isinstance(answer, dict):
            raise ServingError(f"TF Serving at {self.endpoint} answered a JSON {type(answer).__name__}, "
                               "not an object") from None
        return answer

    @staticmethod
    def _error_text(err: urllib.error.HTTPError) -> str:
        """TF Serving's ``{"error": ...}`` message, reduced to its readable line."""
        try:
            raw = err.read()
        except OSError:
            raw = b""
        try:
            return _one_line(readable_tf_error(str(json.loads(raw)["error"])))
        except (ValueError, KeyError, TypeError):  # not TF Serving's answer, e.g. a proxy's error page
            return _one_line(raw.decode(errors="replace") or str(err.reason) or "no message")

    # ----------------------------------------------------------------------------------------
    def predict(self, image: Any) -> dict[str, np.ndarray]:
        """The export's maps of one image.

        Args:
            image: ``[H, W]`` or ``[H, W, C]``, uint8 (0..255) or float in [0, 1].

        Returns:
            ``anomaly_map`` ``[H, W]`` float32 and the other outputs of the export (component
            maps ``[H, W]``, ``reconstruction`` ``[H, W, C]``), as
            :meth:`tfssim.inference.ExportedModel.predict` returns them.

        Raises:
            ValueError: the image is malformed, or does not fit the export's metadata.
            ServingError: the server is unreachable, refused the image (e.g. values outside
                [0, 1]), or answered without the maps of a tfssim export.
        """
        image = self._prepare(image)
        input_name = self.metadata.input_name if self.metadata is not None else "image"
        answer = self._post({"signature_name": self._signature_for(image), "inputs": {input_name: image.tolist()}})
        outputs = answer.get("outputs")
        if outputs is None:
            if "error" in answer:
                raise ServingError(f"TF Serving at {self.endpoint} answered an error: "
                                   f"{_one_line(readable_tf_error(str(answer['error'])))}")
            raise ServingError(f"TF Serving at {self.endpoint} answered without 'outputs' "
                               f"(keys: {', '.join(sorted(answer)) or 'none'})")
        if not isinstance(outputs, dict):
            raise ServingError(f"TF Serving at {self.endpoint} answered one unnamed output; a tfssim export "
                               f"answers named maps (is {self.model_name!r} a tfssim export?)")
        height, width, channels = image.shape
        maps = {}
        for name, value in outputs.items():
            try:
                array = np.asarray(value, dtype=np.float32)
            except (ValueError, TypeError):
                raise ServingError(f"TF Serving at {self.endpoint} answered an output {name!r} that is not "
                                   "a rectangular array of numbers") from None
            if array.ndim == 4 and array.shape[0] == 1:
                array = array[0]
            if name != "reconstruction" and array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            expected = (height, width, channels) if name == "reconstruction" else (height, width)
            if array.shape != expected:
                raise ServingError(f"TF Serving at {self.endpoint} answered {name} of shape {array.shape} for a "
                                   f"{height}x{width} image, expected {expected} (is {self.model_name!r} a "
                                   "tfssim export?)")
            maps[name] = array
        if "anomaly_map" not in maps:
            raise ServingError(f"TF Serving at {self.endpoint} answered no anomaly_map (outputs: "
                               f"{', '.join(sorted(maps)) or 'none'}; is {self.model_name!r} a tfssim export?)")
        return maps

    def post_processor(self, *, threshold: float | None = None, opening_diameter: int | None = None,
                       convex_hull: bool | None = None, min_area: int | None = None) -> PostProcessor:
        """The export's post-processing, each setting replaced by its argument unless ``None``.

        Raises:
            ValueError: neither the metadata nor ``threshold`` gives a threshold.
        """
        stored = self.metadata.to_dict() if self.metadata is not None else {}
        return PostProcessor.from_metadata(stored, threshold=threshold, opening_diameter=opening_diameter,
                                           convex_hull=convex_hull, min_area=min_area)

    def segment(self, image: Any, *, threshold: float | None = None, opening_diameter: int | None = None,
                convex_hull: bool | None = None, min_area: int | None = None,
                ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The defect mask and regions of one image: :meth:`predict`, then the post-processing.

        Args:
            image: As for :meth:`predict`.
            threshold, opening_diameter, convex_hull, min_area: Replace the export's settings
                (:meth:`post_processor`).

        Returns:
            The boolean ``[H, W]`` mask and one dict per region (label, area, bbox, centroid,
            max and mean score; :func:`tfssim.postprocess.region_table`).

        Raises:
            ValueError: no threshold (calibrate the export, or pass ``threshold``), or a bad image.
            ServingError: as for :meth:`predict`.
        """
        processor = self.post_processor(threshold=threshold, opening_diameter=opening_diameter,
                                        convex_hull=convex_hull, min_area=min_area)
        return processor(self.predict(image)["anomaly_map"])

