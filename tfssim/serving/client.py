"""A client for TF Serving's REST ``:predict`` API: image in, anomaly maps and defect regions out.

Needs only the standard library, NumPy and scikit-image (through :mod:`tfssim.serving.postprocess`): no
TensorFlow, no Keras. The export's metadata (:class:`tfssim.export.metadata.ExportMetadata`) gives the
post-processing settings (threshold, opening, convex hull) and lets the client check an image's
channels and size before sending it; without it the client still returns the maps.

The server is not trusted: each call has one deadline (``timeout``) for connecting, sending and
reading the whole answer; an answer longer than the image's maps can take is refused before it is
all read; redirects are not followed; HTTP framing is read strictly (a chunk size must be a plain
hexadecimal number); maps must be finite numbers. Anything else a server answers is a one-line
:class:`ServingError`, never the ``ValueError`` of a bad image.

Example:
    >>> client = ServingClient("http://localhost:8501", "nanotwice", metadata="exported_models/nanotwice")
    >>> maps = client.predict(read_image("scan.png"))          # float [H, W, C] in [0, 1], or uint8
    >>> maps["anomaly_map"].shape
    (700, 1024)
    >>> mask, regions = client.segment(read_image("scan.png"))   # regions: list of dicts (area, bbox, ...)
"""
from __future__ import annotations

import functools
import http.client
import io
import json
import numbers
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping

import numpy as np

from tfssim.errors import InputError
from tfssim.export.layout import MAX_VERSION
from tfssim.export.metadata import ExportMetadata
from tfssim.serving.inference import readable_tf_error
from tfssim.serving.postprocess import PostProcessor

__all__ = ["MAX_TIMEOUT_S", "ServingClient", "ServingError", "default_max_response_bytes"]

# Signatures of a tfssim export (tfssim.export.SIGNATURES): uint8 images go to the default one.
_UINT8_SIGNATURE = "serving_default"

# Above about 9e9 s the socket layer overflows; a day is already far longer than any answer takes.
MAX_TIMEOUT_S = 86_400.0

# Default answer cap: TF Serving writes a float32 in 12-20 bytes, Python's json up to 25 with its
# separator; 48 per value leaves twice that. A tfssim export answers at most C + 4 maps of H x W
# (reconstruction, anomaly map, three SSIM components); the MiB covers the envelope of small images.
_BYTES_PER_VALUE = 48
_MAPS_BESIDE_RECONSTRUCTION = 4
_ENVELOPE_BYTES = 1 << 20
# An error answer is only shown as one line: reading its first MiB is enough, and bounds the memory.
_ERROR_BODY_BYTES = 1 << 20
# readable_tf_error's regular expression takes quadratic time on a crafted message: TF's own
# messages have their readable part at the start, so only the start is looked at.
_ERROR_TEXT_CHARS = 8192
_READ_CHUNK = 1 << 16
# The longest chunk-size line read, as http.client's own limit on a header line.
_MAX_CHUNK_LINE = 1 << 16
# A chunk-size line (RFC 9112, 7.1): hexadecimal digits, optional extensions after ';', CRLF (or LF).
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r?\n")

# What a JSON value that is not a number decodes to, as the error names it.
_NOT_NUMBERS = {bool: "true/false", str: "strings", type(None): "null", dict: "objects",
                list: "rows of different lengths or depths"}


class ServingError(RuntimeError):
    """TF Serving could not be reached, refused the request, or answered something unusable.

    The message is one line. ``status`` is the HTTP status when the server answered (e.g. 400
    for an image the export refuses, 404 for an unknown model or version, 302 for a redirect,
    which is not followed), else ``None``.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` (a server's, so untrusted) as one printable line of at most ``limit`` characters."""
    line = " ".join(text[: limit * 8].split())
    # Control characters (ESC, NUL...) would reach a terminal or a log as they are: escape them.
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def default_max_response_bytes(shape: tuple[int, ...]) -> int:
    """The default cap on the answer to an image of ``shape`` ``[H, W, C]``.

    Args:
        shape: The image's shape ``[H, W, C]``.

    Returns:
        48 bytes for each value of the C + 4 maps of H x W a tfssim export can answer
        (reconstruction, anomaly map, three SSIM component maps), plus 1 MiB: about twice
        what TF Serving's answer takes (173 MB for a 700x1024 grey image).
    """
    height, width, channels = shape
    return height * width * (channels + _MAPS_BESIDE_RECONSTRUCTION) * _BYTES_PER_VALUE + _ENVELOPE_BYTES


def _time_left(deadline: float) -> float:
    """Seconds until ``deadline`` (``time.monotonic``); ``TimeoutError`` once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline of the call has passed")
    return left


class _MalformedChunk(http.client.HTTPException):
    """A chunk-size line of a chunked answer that is not a hexadecimal number."""


class _StrictResponse(http.client.HTTPResponse):
    """http.client's response, refusing chunk sizes that are not plain hexadecimal numbers.

    http.client reads a chunk size with ``int(line, 16)``, which takes ``-5``, ``+5`` and ``0x5``:
    a negative size then reached its reads as a negative length, a bare ``ValueError``
    (``-5``), or as "read to the end of the connection" (``-1``), which read the whole answer
    past ``max_response_bytes``.
    """

    def _read_next_chunk_size(self) -> int:
        line = self.fp.readline(_MAX_CHUNK_LINE + 1)
        if len(line) > _MAX_CHUNK_LINE:
            raise http.client.LineTooLong("chunk size")
        if not line:
            # the connection ended before the next chunk: ValueError is what http.client turns
            # into IncompleteRead, "closed the connection"
            raise ValueError("no chunk size before the end of the answer")
        found = _CHUNK_SIZE_LINE.fullmatch(line)
        if found is None:
            self._close_conn()  # where the next chunk starts is lost: nothing more can be read
            # repr, not _one_line: a space in it is what is wrong; its escapes keep it one printable line
            shown = line.rstrip(b"\r\n")[:40].decode("latin-1")
            raise _MalformedChunk(f"chunk size {shown!r} is not a hexadecimal number")
        return int(found.group(1), 16)


class _DeadlineReader(io.RawIOBase):
    """A socket's reading side whose every read waits only until the call's deadline.

    A socket timeout alone bounds each read: a server dripping a byte at a time would reset it
    forever. http.client reads the status line, headers and body all through this object.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock, self._deadline = sock, deadline
        self._raw = sock.makefile("rb", buffering=0)  # holds the socket open after the connection lets go

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(_time_left(self._deadline))
        return self._raw.readinto(buffer)

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """The connection's socket for http.client: sending and reading both end at the deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def sendall(self, data: Any) -> None:
        # sendall's timeout bounds the whole send (Python >= 3.5), so a server that stops reading is caught.
        self._sock.settimeout(_time_left(self._deadline))
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineConnection:
    """Mixed into http.client's connections: connect within the time left, then read and send by the deadline."""

    response_class = _StrictResponse

    def __init__(self, *args: Any, deadline: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        self.timeout = _time_left(self._deadline)
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self._deadline)


class _DeadlineHTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_DeadlineHTTPConnection, deadline=self._deadline), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_DeadlineHTTPSConnection, deadline=self._deadline), req,
                            context=self._context)


def _opener(deadline: float) -> urllib.request.OpenerDirector:
    """urllib without a redirect handler: a 3xx answer is an ``HTTPError`` like any other refusal.

    Following a redirect would send the image to wherever the server points and take that
    host's answer as the maps.
    """
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), _DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _read_body(response: Any, limit: int) -> bytearray | None:
    """The body of ``response``, or ``None`` as soon as it proves longer than ``limit`` bytes."""
    declared = ((response.headers or {}).get("Content-Length") or "").strip()
    if declared.isascii() and declared.isdigit() and (len(declared) > 20 or int(declared) > limit):
        return None
    body = bytearray()
    while len(body) <= limit:
        try:
            chunk = response.read(min(_READ_CHUNK, limit + 1 - len(body)))
        except ValueError as err:
            # only the answer's bytes can cause one here (e.g. framing http.client takes apart
            # wrongly): it is the server's fault, as malformed HTTP, not a bad image (ValueError)
            raise http.client.HTTPException(f"unreadable answer body ({_one_line(str(err), 120)})") from None
        if not chunk:
            return body
        body += chunk
    return None


class _NestedTooDeeply(ValueError):
    """JSON nested deeper than Python's parser can follow (its recursion limit)."""


def _decode_json(raw: bytes | bytearray) -> Any:
    """JSON with every number a float: a number too large for a float is infinite, not an error.

    Raises:
        ValueError: not JSON; :class:`_NestedTooDeeply` when nested too deeply to parse.
    """
    try:
        # int() refuses over 4300 digits and would give NumPy an int it cannot convert: float() never fails.
        return json.loads(raw, parse_int=float)
    except RecursionError:
        raise _NestedTooDeeply("JSON nested too deeply") from None


class ServingClient:
    """Calls a tfssim export served by TF Serving over REST and post-processes its answer.

    Args:
        url: TF Serving's REST address, e.g. ``http://localhost:8501`` (``--rest_api_port``):
            printable ASCII, no query, fragment or user name. Redirects are not followed.
        model_name: The served model's name (TF Serving's ``--model_name``).
        version: A version to ask for, from 1 to ``2**63 - 1`` (TF Serving's int64); default
            the newest one the server has loaded.
        signature: Signature to call; default by the image's type: uint8 images go to
            ``serving_default``, float images in [0, 1] to the export's float signature
            (``serve_float``), as :meth:`tfssim.serving.inference.ExportedModel.predict` does.
        metadata: The export's metadata: an :class:`~tfssim.export.metadata.ExportMetadata`, its dict,
            or a path to the export (model folder, version folder or ``tfssim.json``). Needed
            for :meth:`segment` unless a threshold is given there; lets :meth:`predict` check
            an image before sending it.
        timeout: Seconds one call may take in all: connecting, sending the image and reading
            the whole answer (a 700x1024 image takes about a second on a CPU); at most a day.
        max_response_bytes: The longest answer read, in bytes; a longer one is refused with
            :class:`ServingError` without reading the rest. Default: from the image's size,
            :func:`default_max_response_bytes` (about twice what the export's maps take).

    Raises:
        ValueError: a malformed ``url``, ``model_name``, ``version``, ``signature``,
            ``timeout``, ``max_response_bytes`` or ``metadata``.
        FileNotFoundError: ``metadata`` is a path that does not exist.
    """

    def __init__(self, url: str, model_name: str, version: int | None = None, signature: str | None = None,
                 metadata: ExportMetadata | Mapping[str, Any] | str | os.PathLike | None = None,
                 timeout: float = 60.0, max_response_bytes: int | None = None) -> None:
        self.url = _check_url(url)
        if not isinstance(model_name, str) or not model_name or "/" in model_name or ":" in model_name:
            raise InputError(f"model name must be a non-empty name without '/' or ':', got {model_name!r}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, (int, np.integer))
                                    or not 1 <= version <= MAX_VERSION):
            # TF Serving's versions are int64 (tfssim.export.layout): a larger one names no version
            raise InputError(f"version must be an integer from 1 to {MAX_VERSION} (TF Serving's int64), or None "
                             f"(the newest), got {version!r}")
        if signature is not None and (not isinstance(signature, str) or not signature):
            raise InputError(f"signature must be a signature's name or None (by the image's type), got {signature!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not 0 < timeout <= MAX_TIMEOUT_S:
            raise InputError(f"timeout must be a positive number of seconds, at most {MAX_TIMEOUT_S:g} (a day), "
                             f"got {timeout!r}")
        if max_response_bytes is not None and (isinstance(max_response_bytes, bool)
                                               or not isinstance(max_response_bytes, numbers.Integral)
                                               or max_response_bytes < 1):
            raise InputError(f"max_response_bytes must be a positive whole number of bytes, or None (from the "
                             f"image's size), got {max_response_bytes!r}")
        self.model_name = model_name
        self.version = None if version is None else int(version)
        self.signature = signature
        self.timeout = float(timeout)
        self.max_response_bytes = None if max_response_bytes is None else int(max_response_bytes)
        if metadata is None or isinstance(metadata, ExportMetadata):
            self.metadata = metadata
        elif isinstance(metadata, Mapping):
            self.metadata = ExportMetadata.from_dict(metadata)
        elif isinstance(metadata, (str, os.PathLike)):
            self.metadata = ExportMetadata.read(metadata)
        else:  # Path() would raise TypeError, where a bad setting is promised to be a ValueError
            raise InputError(f"metadata must be an ExportMetadata, its dict, a path to the export (model folder, "
                             f"version folder or tfssim.json) or None, got {type(metadata).__name__} {metadata!r:.80}")

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
        return (self.metadata or ExportMetadata).float_signature  # without metadata: every export's default

    def _post(self, body: dict[str, Any], max_bytes: int, what: str) -> dict[str, Any]:
        """POST ``body`` as JSON; the decoded answer, or :class:`ServingError` in one line.

        Every request goes through here, so the deadline, the size cap, the refusal of
        redirects and the JSON rules hold for all of them.

        Args:
            body: The request, as JSON.
            max_bytes: The longest answer read.
            what: What the answer holds, for the message when it is longer (e.g. "the maps of
                a 700x1024 image").

        Returns:
            The answer's JSON object, every number in it a float.

        Raises:
            ServingError: no connection, a status other than 2xx (redirects included), no
                whole answer by the deadline, malformed HTTP (a status line, a header or a chunk
                size that is not a plain hexadecimal number), an answer longer than
                ``max_bytes``, or one that is not a JSON object.
        """
        deadline = time.monotonic() + self.timeout
        request = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with _opener(deadline).open(request) as response:
                raw = _read_body(response, max_bytes)
                if raw is not None and response.length:  # read(n) returns a body cut off short without a word
                    raise http.client.IncompleteRead(bytes(raw), response.length)
                status = response.status
        except urllib.error.HTTPError as err:
            try:
                raise self._refusal(err) from None
            finally:
                err.close()
        except urllib.error.URLError as err:
            raise self._transport_error(err.reason) from None
        except (OSError, http.client.HTTPException) as err:  # raised while reading the answer
            raise self._transport_error(err) from None
        if raw is None:
            raise ServingError(f"TF Serving at {self.endpoint} answered more than {max_bytes:,} bytes, more than "
                               f"{what} can take; pass ServingClient(max_response_bytes=...) to read longer answers",
                               status=status)
        try:
            answer = _decode_json(raw)
        except _NestedTooDeeply:
            raise ServingError(f"TF Serving at {self.endpoint} answered JSON nested more deeply than Python's parser "
                               "follows (a tfssim export's answer nests 6 levels)") from None
        except ValueError:
            raise ServingError(f"TF Serving at {self.endpoint} answered something that is not JSON: "
                               f"{_one_line(bytes(raw[:1024]).decode(errors='replace'), 120)!r}") from None
        if not isinstance(answer, dict):
            raise ServingError(f"TF Serving at {self.endpoint} answered a JSON {type(answer).__name__}, "
                               "not an object") from None
        return answer

    def _transport_error(self, reason: Any) -> ServingError:
        """The one-line error of a connection that failed, timed out or carried no HTTP answer."""
        if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError
            return ServingError(f"TF Serving at {self.url} did not answer within {self.timeout:g} s (the timeout "
                                "of the whole call: connecting, sending the image and reading the answer)")
        if isinstance(reason, ConnectionRefusedError):
            return ServingError(f"cannot reach TF Serving at {self.url}: connection refused (is "
                                "tensorflow_model_server running there with --rest_api_port?)")
        detail = _one_line(str(reason)) or type(reason).__name__
        if isinstance(reason, (ConnectionError, http.client.IncompleteRead)):  # dropped or cut off mid-answer
            return ServingError(f"TF Serving at {self.url} closed the connection: {detail}")
        if isinstance(reason, http.client.HTTPException):  # a status line or headers http.client refuses
            return ServingError(f"TF Serving at {self.url} answered malformed HTTP: {detail}")
        return ServingError(f"cannot reach TF Serving at {self.url}: {detail}")

    def _refusal(self, err: urllib.error.HTTPError) -> ServingError:
        """The one-line error of an answer with a status other than 2xx."""
        if 300 <= err.code < 400:
            location = _one_line(str(err.headers.get("Location", "")), 120) if err.headers else ""
            return ServingError(f"TF Serving at {self.endpoint} answered HTTP {err.code}, a redirect to "
                                f"{location or 'nowhere'!r}; the client follows no redirects: give the address "
                                "that answers as url", status=err.code)
        return ServingError(f"TF Serving at {self.endpoint} answered HTTP {err.code}: {self._error_text(err)}",
                            status=err.code)

    @staticmethod
    def _error_text(err: urllib.error.HTTPError) -> str:
        """TF Serving's ``{"error": ...}`` message, reduced to its readable line."""
        try:
            raw = _read_body(err, _ERROR_BODY_BYTES) or b""
        except (OSError, http.client.HTTPException):  # cut off, or the deadline passed: show what the status says
            raw = b""
        try:
            return _one_line(_readable_error(_decode_json(raw)["error"]))
        except (ValueError, KeyError, TypeError):  # not TF Serving's answer, e.g. a proxy's error page
            return _one_line(bytes(raw[:4096]).decode(errors="replace") or str(err.reason) or "no message")

    # ----------------------------------------------------------------------------------------
    def predict(self, image: Any) -> dict[str, np.ndarray]:
        """The export's maps of one image.

        Args:
            image: ``[H, W]`` or ``[H, W, C]``, uint8 (0..255) or float in [0, 1].

        Returns:
            ``anomaly_map`` ``[H, W]`` float32 and the other outputs of the export (component
            maps ``[H, W]``, ``reconstruction`` ``[H, W, C]``), as
            :meth:`tfssim.serving.inference.ExportedModel.predict` returns them.

        Raises:
            ValueError: the image is malformed, or does not fit the export's metadata.
            ServingError: the server is unreachable, refused the image (e.g. values outside
                [0, 1]), did not answer within ``timeout``, answered more than
                ``max_response_bytes`` or a redirect, or answered without the maps of a tfssim
                export: an output that is not a rectangular array of numbers of the image's
                size, or holds NaN or infinite values.
        """
        image = self._prepare(image)
        height, width, channels = image.shape
        input_name = (self.metadata or ExportMetadata).input_name
        max_bytes = self.max_response_bytes or default_max_response_bytes(image.shape)
        answer = self._post({"signature_name": self._signature_for(image), "inputs": {input_name: image.tolist()}},
                            max_bytes, f"the maps of a {height}x{width}x{channels} image")
        outputs = answer.get("outputs")
        if outputs is None:
            if "error" in answer:
                raise ServingError(f"TF Serving at {self.endpoint} answered an error: "
                                   f"{_one_line(_readable_error(answer['error']))}")
            raise ServingError(f"TF Serving at {self.endpoint} answered without 'outputs' "
                               f"(keys: {_one_line(', '.join(sorted(answer)), 200) or 'none'})")
        if not isinstance(outputs, dict):
            raise ServingError(f"TF Serving at {self.endpoint} answered one unnamed output; a tfssim export "
                               f"answers named maps (is {self.model_name!r} a tfssim export?)")
        maps = {}
        for name, value in outputs.items():
            array = self._numbers(name, value)
            if array.ndim == 4 and array.shape[0] == 1:
                array = array[0]
            if name != "reconstruction" and array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            expected = (height, width, channels) if name == "reconstruction" else (height, width)
            if array.shape != expected:
                raise ServingError(f"TF Serving at {self.endpoint} answered {_one_line(name, 60)} of shape "
                                   f"{array.shape} for a {height}x{width} image, expected {expected} (is "
                                   f"{self.model_name!r} a tfssim export?)")
            if not np.isfinite(array).all():
                # as tfssim-predict refuses them: NaN would read as "no defect", infinity as all defect
                raise ServingError(f"TF Serving at {self.endpoint} answered {_one_line(name, 60)} with NaN or "
                                   "infinite values (or numbers beyond float32's range); the model is broken "
                                   "(retrain or re-export it)")
            maps[name] = array
        if "anomaly_map" not in maps:
            raise ServingError(f"TF Serving at {self.endpoint} answered no anomaly_map (outputs: "
                               f"{_one_line(', '.join(sorted(maps)), 200) or 'none'}; is {self.model_name!r} a "
                               "tfssim export?)")
        return maps

    def _numbers(self, name: str, value: Any) -> np.ndarray:
        """An output's JSON value as float32, refused unless every element is a number."""
        try:
            values = np.asarray(value, dtype=object)
        except (ValueError, TypeError, RuntimeError):  # NumPy's refusal of more axes than it has
            values = None
        # [1, H, W, C] at most; NumPy builds up to 64 axes but cannot iterate over more than 32
        if values is None or values.ndim > 4:
            raise ServingError(f"TF Serving at {self.endpoint} answered an output {_one_line(name, 60)!r} that is "
                               "not a rectangular array of numbers (it nests deeper than a map's 4 axes)")
        # np.asarray(..., dtype=float32) would take true as 1.0 and "0.5" as 0.5: look at each element
        kinds = set(map(type, values.flat)) - {float}
        if kinds:
            found = ", ".join(sorted(_NOT_NUMBERS.get(kind, kind.__name__) for kind in kinds))
            raise ServingError(f"TF Serving at {self.endpoint} answered an output {_one_line(name, 60)!r} that is "
                               f"not a rectangular array of numbers (it holds {found})")
        with np.errstate(over="ignore"):  # beyond float32's range: infinite, refused as such by the caller
            return values.astype(np.float32)

    def post_processor(self, *, threshold: float | None = None, opening_diameter: int | None = None,
                       convex_hull: bool | None = None, min_area: int | None = None) -> PostProcessor:
        """The export's post-processing, each setting replaced by its argument unless ``None``.

        Raises:
            ValueError: neither the metadata nor ``threshold`` gives a threshold.
        """
        return PostProcessor.from_metadata(self.metadata, threshold=threshold, opening_diameter=opening_diameter,
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
            max and mean score; :func:`tfssim.serving.postprocess.region_table`).

        Raises:
            ValueError: no threshold (calibrate the export, or pass ``threshold``), or a bad image.
            ServingError: as for :meth:`predict`.
        """
        processor = self.post_processor(threshold=threshold, opening_diameter=opening_diameter,
                                        convex_hull=convex_hull, min_area=min_area)
        return processor(self.predict(image)["anomaly_map"])


def _readable_error(message: Any) -> str:
    """The readable line of TF Serving's ``error`` value, looking only at its start."""
    return readable_tf_error(str(message)[:_ERROR_TEXT_CHARS])


def _check_url(url: Any) -> str:
    """``url`` without its trailing '/', or :class:`InputError` saying what is wrong with it."""
    if not isinstance(url, str) or not url.isascii() or not url.isprintable() or " " in url:
        # urlsplit drops CR, LF and tab silently; sent on they would split the request line
        raise InputError(f"TF Serving URL must be printable ASCII without spaces or control characters (CR, LF, "
                         f"tab), like http://host:8501, got {url!r}")
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError as err:  # an unclosed '[' or a bracketed host that is no IP address
        raise InputError(f"TF Serving URL has a malformed host ({err}); write an IPv6 address in closed brackets, "
                         f"like http://[::1]:8501, any other host without brackets, got {url!r}") from None
    # '?' or '#' with nothing after leaves query and fragment empty, but the endpoint's path
    # would land after them: the request would go to the server's root
    if parsed.scheme not in ("http", "https") or not parsed.hostname or "?" in url or "#" in url:
        raise InputError(f"TF Serving URL must look like http://host:8501, without '?' or '#', got {url!r}")
    if parsed.username is not None or parsed.password is not None:  # not echoed: it may hold a password
        raise InputError("TF Serving URL must not hold a user name or password (user@host); give http://host:8501")
    try:
        port = parsed.port
    except ValueError:
        port = 0
    if port == 0:
        raise InputError(f"TF Serving URL must have a port from 1 to 65535 (or none), got {url!r}")
    return url.rstrip("/")
