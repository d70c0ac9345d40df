"""``tfssim.serving.client.ServingClient`` against a broken or hostile stand-in for TF Serving on loopback.

The stand-in writes raw bytes, so it can answer what no honest server would: an answer dripped a
byte at a time, bodies far larger than any map, redirects to another port, maps of NaN, infinity,
booleans or 4000-digit numbers, JSON nested 200,000 deep. Every such answer must end in one
:class:`ServingError` line, within the client's timeout, without reading more than the cap.
No TensorFlow: these tests run in well under a second each (the two deadline tests wait for
their deadline).
"""
from __future__ import annotations

import json
import re
import socketserver
import threading
import time
from typing import Callable

import numpy as np
import pytest

from tfssim.serving.client import ServingClient, ServingError, default_max_response_bytes

IMAGE = np.full((40, 40), 0.5, np.float32)
GOOD_MAP = [[0.5] * 40] * 40
DRIP_FOR_S = 10  # a dripping answer ends by itself after this long, so a client without a deadline fails, not hangs
FLOOD_BYTES = 8 << 20  # a flooding answer stops after this many bytes: more than any cap under test


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever"] + [f"{k}: {v}" for k, v in headers.items()] + ["", ""]
    return "\r\n".join(lines).encode()


def _answer(status: int, body: bytes | dict, headers: dict[str, str] | None = None) -> Callable:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    def write(handler: _Handler) -> None:
        handler.wfile.write(_head(status, {"Content-Type": "application/json", "Content-Length": str(len(raw)),
                                           "Connection": "close", **(headers or {})}) + raw)
    return write


def _drip(head: bytes, then: bytes) -> Callable:
    """Write ``head`` at once, then ``then`` forever, a byte every 50 ms: each read gets data well within any timeout."""
    def write(handler: _Handler) -> None:
        handler.wfile.write(head)
        end = time.monotonic() + DRIP_FOR_S
        for i in range(10**9):
            if handler.server.stop.is_set() or time.monotonic() > end:
                return
            handler.wfile.write(then[i % len(then): i % len(then) + 1])
            time.sleep(0.05)
    return write


def _flood(status: int, declared: int | None) -> Callable:
    """A body of spaces, ``declared`` long (else chunked, no length), cut off at FLOOD_BYTES."""
    def write(handler: _Handler) -> None:
        chunked = declared is None
        length = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(declared)}
        handler.wfile.write(_head(status, {"Content-Type": "application/json", **length}))
        block = b" " * (1 << 16)
        for _ in range(FLOOD_BYTES // len(block)):
            if handler.server.stop.is_set():
                return
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
    return write


class _Handler(socketserver.StreamRequestHandler):
    server: _Hostile

    def handle(self) -> None:
        try:
            found = re.match(rb"POST /v1/models/([^/:]+)(?:/versions/\d+)?:predict ", self.rfile.readline())
            length = 0
            while (line := self.rfile.readline().strip()):
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value)
            self.rfile.read(length)
            name = found.group(1).decode() if found else ""
            self.server.requests.append(name)
            self.server.behaviours.get(name, _answer(200, {"outputs": {"anomaly_map": GOOD_MAP}}))(self)
        except OSError:  # the client hung up, as it should on a hostile answer
            pass


class _Hostile(socketserver.ThreadingTCPServer):
    """Answers ``POST /v1/models/<name>:predict`` by ``behaviours[name]`` (default: a valid 40x40 map)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviours: dict[str, Callable] = {}
        self.requests: list[str] = []
        self.stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def _serve() -> _Hostile:
    server = _Hostile()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def servers():
    """Two hostile stand-ins: ``main`` and ``elsewhere`` (a redirect's target)."""
    main, elsewhere = _serve(), _serve()
    try:
        yield main, elsewhere
    finally:
        for server in (main, elsewhere):
            server.stop.set()
            server.shutdown()
            server.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Loopback requests must not go through a proxy configured in the environment."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _call(server: _Hostile, name: str, behaviour: Callable, **settings) -> ServingError:
    """``predict`` of the 40x40 image against ``behaviour``; the ServingError it must raise (one line)."""
    server.behaviours[name] = behaviour
    with pytest.raises(ServingError) as info:
        ServingClient(server.url, name, **settings).predict(IMAGE)
    assert "\n" not in str(info.value) and "\r" not in str(info.value)
    return info.value


# -- 12: the timeout is a deadline for the whole call ---------------------------------------------
@pytest.mark.parametrize("behaviour", [
    _drip(_head(200, {"Content-Type": "application/json", "Content-Length": "1000000"}), b" "),
    _drip(b"", b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000),
], ids=["body", "headers"])
def test_a_dripping_answer_ends_at_the_deadline_of_the_whole_call(servers, behaviour):
    # each byte comes within 50 ms, far inside the timeout: a timeout per socket read never fires
    started = time.monotonic()
    error = _call(servers[0], "drip", behaviour, timeout=0.6)
    elapsed = time.monotonic() - started
    assert "did not answer within 0.6 s (the timeout of the whole call" in str(error) and error.status is None
    assert elapsed < 3 * 0.6


# -- 12: the answer's size is capped --------------------------------------------------------------
def test_the_default_cap_follows_the_image_size():
    assert default_max_response_bytes((40, 40, 1)) == 40 * 40 * 5 * 48 + (1 << 20)
    # about twice what a 700x1024 grey image's five maps take in TF Serving's JSON (~12-20 bytes a value)
    assert default_max_response_bytes((700, 1024, 1)) == 173_080_576
    assert default_max_response_bytes((700, 1024, 3)) > default_max_response_bytes((700, 1024, 1))


@pytest.mark.parametrize("declared", [400_000_000, 10**30, None], ids=["declared-400MB", "declared-huge", "chunked"])
def test_an_answer_longer_than_the_cap_is_refused_without_reading_it_all(servers, declared):
    limit = default_max_response_bytes((40, 40, 1))
    error = _call(servers[0], "flood", _flood(200, declared))
    assert f"answered more than {limit:,} bytes, more than the maps of a 40x40x1 image can take; pass " \
           "ServingClient(max_response_bytes=...)" in str(error)
    assert error.status == 200


def test_the_cap_is_overridable_both_ways(servers):
    server = servers[0]
    good = json.dumps({"outputs": {"anomaly_map": GOOD_MAP}}).encode()
    padded = good + b" " * (2 << 20)  # valid JSON, longer than the default cap for 40x40
    assert len(padded) > default_max_response_bytes((40, 40, 1))
    _call(server, "padded", _answer(200, padded))
    maps = ServingClient(server.url, "padded", max_response_bytes=len(padded)).predict(IMAGE)
    np.testing.assert_array_equal(maps["anomaly_map"], np.full((40, 40), 0.5, np.float32))
    error = _call(server, "small", _answer(200, good), max_response_bytes=len(good) - 1)
    assert f"answered more than {len(good) - 1:,} bytes" in str(error)
    assert ServingClient(server.url, "small", max_response_bytes=len(good)).predict(IMAGE)["anomaly_map"].shape \
        == (40, 40)


def test_an_endless_error_body_is_read_only_to_its_first_mebibyte(servers):
    # the sibling of the cap: a refusal's body, only ever shown as one line
    error = _call(servers[0], "flood-error", _flood(500, None))
    assert "answered HTTP 500: Whatever" in str(error) and error.status == 500


# -- S11: malformed chunked framing is a ServingError, and never reads past the cap ---------------------
def _chunked(status: int, size_line: bytes, flood: int = 0) -> Callable:
    """A chunked answer whose first chunk-size line is ``size_line``, then ``flood`` bytes of spaces and valid maps."""
    good = json.dumps({"outputs": {"anomaly_map": GOOD_MAP}}).encode()

    def write(handler: _Handler) -> None:
        handler.wfile.write(_head(status, {"Content-Type": "application/json", "Transfer-Encoding": "chunked",
                                           "Connection": "close"}) + size_line + b"\r\n")
        block = b" " * (1 << 16)
        for _ in range(flood // len(block)):
            if handler.server.stop.is_set():
                return
            handler.wfile.write(block)
        handler.wfile.write(good + b"\r\n0\r\n\r\n")
    return write


@pytest.mark.parametrize("size", [b"-5", b"-1", b"+10", b"0x10", b"-0", b" 10", b"1_0", b"ten", b""],
                         ids=["minus-5", "minus-1", "plus", "0x", "minus-0", "space", "underscore", "word", "empty"])
def test_a_malformed_chunk_size_is_a_serving_error(servers, size):
    # -5 was a bare ValueError("read length must be non-negative or -1"), which callers take for a bad image
    error = _call(servers[0], "badchunk", _chunked(200, size))
    assert str(error).endswith(f"answered malformed HTTP: chunk size {size.decode()!r} is not a hexadecimal number")
    assert str(error).isprintable()


def test_a_chunk_size_of_minus_one_does_not_read_past_the_cap(servers):
    # int("-1", 16) made http.client read to the end of the connection, past max_response_bytes:
    # here 4 MiB of spaces and then valid maps, which were read whole and answered as if small
    started = time.monotonic()
    error = _call(servers[0], "minus-one", _chunked(200, b"-1", flood=FLOOD_BYTES // 2), max_response_bytes=4096)
    assert "answered malformed HTTP: chunk size '-1' is not a hexadecimal number" in str(error)
    assert time.monotonic() - started < 2


def test_a_malformed_chunk_size_in_a_refusal_still_shows_its_status(servers):
    error = _call(servers[0], "badchunk-error", _chunked(500, b"-5"))
    assert str(error).endswith("answered HTTP 500: Whatever") and error.status == 500


@pytest.mark.parametrize("size_line", [b"%X", b"%x;name=value", b"%x \t;ext", b"000%x"],
                         ids=["upper", "extension", "space-before-extension", "leading-zeros"])
def test_well_formed_chunked_answers_are_still_read(servers, size_line):
    # the stricter chunk-size reading must not refuse what RFC 9112 allows
    good = json.dumps({"outputs": {"anomaly_map": GOOD_MAP}}).encode()
    half = len(good) // 2

    def write(handler: _Handler) -> None:
        handler.wfile.write(_head(200, {"Content-Type": "application/json", "Transfer-Encoding": "chunked",
                                        "Connection": "close"}))
        for part in (good[:half], good[half:]):
            handler.wfile.write(size_line % len(part) + b"\r\n" + part + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")
    servers[0].behaviours["chunked"] = write
    maps = ServingClient(servers[0].url, "chunked").predict(IMAGE)
    np.testing.assert_array_equal(maps["anomaly_map"], np.full((40, 40), 0.5, np.float32))


# -- 12: redirects are not followed ---------------------------------------------------------------
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_port_is_refused_and_not_followed(servers, status):
    main, elsewhere = servers
    target = f"{elsewhere.url}/v1/models/stolen:predict"
    before = len(elsewhere.requests)
    error = _call(main, "redirect", _answer(status, b"", {"Location": target}))
    assert str(error).endswith(f"answered HTTP {status}, a redirect to {target!r}; the client follows no redirects: "
                               "give the address that answers as url")
    assert error.status == status
    assert len(elsewhere.requests) == before  # nothing was sent there (it would have answered valid maps)


# -- 12: maps must be finite numbers --------------------------------------------------------------
def _map_answer(cell: str, name: str = "anomaly_map") -> Callable:
    """A 40x40 ``name`` of 0.5 with ``cell`` (raw JSON) in one place; the other outputs valid."""
    rows = [", ".join(["0.5"] * 40)] * 40
    rows[7] = ", ".join(["0.5"] * 9 + [cell] + ["0.5"] * 30)
    value = "[" + ", ".join(f"[{row}]" for row in rows) + "]"
    outputs = {"anomaly_map": json.dumps(GOOD_MAP), "reconstruction": json.dumps([[[0.5]] * 40] * 40)}
    outputs[name] = value if name == "anomaly_map" else "[" + ", ".join(f"[[{cell}]" + ", [0.5]" * 39 + "]"
                                                                         for _ in range(40)) + "]"
    return _answer(200, ('{"outputs": {' + ", ".join(f'"{k}": {v}' for k, v in outputs.items()) + "}}").encode())


@pytest.mark.parametrize(("cell", "name"), [
    ("NaN", "anomaly_map"), ("Infinity", "anomaly_map"), ("-Infinity", "anomaly_map"),
    ("1e39", "anomaly_map"),   # finite as a double, infinite as float32
    ("1e400", "anomaly_map"),  # infinite already as a double
    ("9" * 4000, "anomaly_map"),  # was OverflowError from NumPy
    ("9" * 5000, "anomaly_map"),  # beyond Python's 4300-digit int conversion: was "not JSON"
    ("NaN", "reconstruction"),
], ids=["nan", "inf", "-inf", "1e39", "1e400", "4000-digits", "5000-digits", "nan-reconstruction"])
def test_non_finite_maps_are_refused(servers, cell, name):
    error = _call(servers[0], "nonfinite", _map_answer(cell, name))
    assert f"answered {name} with NaN or infinite values (or numbers beyond float32's range); the model is " \
           "broken (retrain or re-export it)" in str(error)


def test_segment_of_a_nan_map_is_an_error_not_no_defect(servers):
    server = servers[0]
    server.behaviours["nan"] = _map_answer("NaN")
    with pytest.raises(ServingError, match="answered anomaly_map with NaN or infinite values"):
        ServingClient(server.url, "nan").segment(IMAGE, threshold=0.4)
    server.behaviours["inf"] = _map_answer("Infinity")
    with pytest.raises(ServingError, match="answered anomaly_map with NaN or infinite values"):
        ServingClient(server.url, "inf").segment(IMAGE, threshold=0.4, opening_diameter=0, convex_hull=False)


@pytest.mark.parametrize(("body", "found"), [
    ({"outputs": {"anomaly_map": [[True] * 40] * 40}}, "true/false"),
    ({"outputs": {"anomaly_map": [[0.5] * 39 + [True]] * 40}}, "true/false"),  # NumPy would read it as 1.0
    ({"outputs": {"anomaly_map": [["0.5"] * 40] * 40}}, "strings"),  # NumPy would parse them
    ({"outputs": {"anomaly_map": [[None] * 40] * 40}}, "null"),  # NumPy would make them NaN
    ({"outputs": {"anomaly_map": [[{}] * 40] * 40}}, "objects"),
    ({"outputs": {"anomaly_map": "0.5"}}, "strings"),
    ({"outputs": {"anomaly_map": [[0.5] * 40] * 39 + [[0.5]]}}, "rows of different lengths or depths"),
    ({"outputs": {"anomaly_map": [[0.5] * 40] * 39 + [[[0.5]] * 40]}}, "rows of different lengths or depths"),
], ids=["bool", "one-bool", "strings", "null", "objects", "string", "ragged", "deeper-row"])
def test_maps_that_are_not_numbers_are_refused(servers, body, found):
    error = _call(servers[0], "notnumbers", _answer(200, body))
    assert str(error).endswith(f"answered an output 'anomaly_map' that is not a rectangular array of numbers "
                               f"(it holds {found})")


# -- 12: deep nesting and huge numbers are ServingErrors ------------------------------------------
def _nested(depth: int) -> bytes:
    return b'{"outputs": {"anomaly_map": ' + b"[" * depth + b"0.5" + b"]" * depth + b"}}"


@pytest.mark.parametrize(("behaviour", "message"), [
    (_answer(200, b"[" * 200_000), "answered JSON nested more deeply than Python's parser follows"),
    (_answer(200, _nested(200_000)), "answered JSON nested more deeply than Python's parser follows"),
    # under the recursion limit but beyond NumPy's 32 (64) axes: was a RuntimeError from NumPy
    (_answer(200, _nested(100)), "that is not a rectangular array of numbers (it nests deeper than a map's 4 axes)"),
    (_answer(200, _nested(5)), "that is not a rectangular array of numbers (it nests deeper than a map's 4 axes)"),
    # a refusal's body goes through the same parser: was a RecursionError from the error path
    (_answer(400, b'{"error": ' + b"[" * 200_000 + b"}"), "answered HTTP 400: {\"error\": [[[["),
], ids=["list", "map", "map-100-axes", "map-5-axes", "error-body"])
def test_deep_nesting_is_a_serving_error(servers, behaviour, message):
    assert message in str(_call(servers[0], "deep", behaviour))


def test_huge_numbers_outside_the_maps_are_harmless(servers):
    body = ('{"model_version": ' + "9" * 5000 + ', "outputs": {"anomaly_map": ' + json.dumps(GOOD_MAP) + "}}")
    servers[0].behaviours["bignumber"] = _answer(200, body.encode())
    assert ServingClient(servers[0].url, "bignumber").predict(IMAGE)["anomaly_map"].shape == (40, 40)


# -- siblings: what a server says is shown as one printable line, quickly ---------------------------
@pytest.mark.parametrize(("behaviour", "message"), [
    (_answer(400, {"error": "bad\x1b[31m image\x00 here"}), "answered HTTP 400: bad\\x1b[31m image\\x00 here"),
    (_answer(502, b"<h1>\x1b[2Jgone\x07\r\n</h1>"), "answered HTTP 502: <h1>\\x1b[2Jgone\\x07 </h1>"),
    (_answer(200, {"error": "bad\x1b[2J"}), "answered an error: bad\\x1b[2J"),
    (lambda h: h.wfile.write(b"HELLO\r\n\r\n"), "answered malformed HTTP: "),
    (lambda h: h.wfile.write(_head(200, {"Content-Length": "1000"}) + b'{"outputs"'),
     "closed the connection: IncompleteRead"),
    (lambda h: None, "closed the connection: Remote end closed connection without response"),
], ids=["control-characters", "control-characters-page", "control-characters-200", "not-http", "cut-off", "no-answer"])
def test_what_a_hostile_server_says_stays_one_printable_line(servers, behaviour, message):
    error = _call(servers[0], "talk", behaviour)
    assert message in str(error) and str(error).isprintable()


def test_an_error_message_crafted_to_be_slow_to_read_is_read_quickly(servers):
    # TF error text is searched with a regular expression that is quadratic on this; the client
    # looks only at the message's start (without that: about 25 s here)
    error = _answer(400, {"error": "assertion failed: [" * (256 * 1024 // 19)})
    started = time.monotonic()
    assert "answered HTTP 400" in str(_call(servers[0], "slow-error", error))
    assert time.monotonic() - started < 5
