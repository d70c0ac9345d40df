"""``tfssim.serving.client.ServingClient`` against a stand-in for TF Serving's REST API on a loopback port.

The stand-in (a thread of this test process, which has TensorFlow) answers TF Serving's
``:predict`` format by running the exported SavedModel; the client under test runs in a
subprocess where ``import tensorflow`` fails, and its maps must equal
``tfssim.serving.inference.ExportedModel.predict`` on the same image.
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from skimage import io

from tfssim import data, export
from tfssim.errors import InputError
from tfssim.export.layout import MAX_VERSION
from tfssim.export.metadata import ExportMetadata
from tfssim.serving import postprocess
from tfssim.serving.client import ServingClient, ServingError
from tfssim.serving.inference import ExportedModel

# The fixtures `dataset` and `exports` (tiny, built once per session) are in conftest.py.

STAND_IN_LIFETIME_S = 300  # the stand-in stops by itself after this long, even if a test hangs


class _StandIn(ThreadingHTTPServer):
    """TF Serving's REST ``POST /v1/models/<name>[/versions/<n>]:predict`` (columnar ``inputs`` format).

    ``models`` maps a name to ``{version: loaded SavedModel}``; the newest version answers when the
    request names none. ``canned`` maps a model name to a fixed ``(status, body bytes)`` answer.
    """

    daemon_threads = True

    def __init__(self, models: dict[str, dict[int, object]], canned: dict[str, tuple[int, bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.models, self.canned, self.requests = models, canned, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _StandIn

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def _answer(self, status: int, body: dict | bytes) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        import tensorflow as tf

        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        found = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:predict", self.path)
        if not found:
            return self._answer(404, {"error": f"Malformed request: POST {self.path}"})
        name, version = found.group(1), found.group(2)
        if name in self.server.canned:
            return self._answer(*self.server.canned[name])
        versions = self.server.models.get(name, {})
        if version is None and versions:
            version = str(max(versions))
        if version is None or int(version) not in versions:
            which = f"Specific({name}, {version})" if version else f"Latest({name})"
            return self._answer(404, {"error": f"Servable not found for request: {which}"})
        try:
            request = json.loads(raw)
        except ValueError as err:
            return self._answer(400, {"error": f"JSON Parse error: {err}"})
        self.server.requests.append(request)
        if "inputs" not in request:
            return self._answer(400, {"error": "this stand-in answers the columnar 'inputs' format only"})
        signature_name = request.get("signature_name", "serving_default")
        loaded = versions[int(version)]
        if signature_name not in loaded.signatures:
            message = f'Serving signature name: "{signature_name}" not found in signature def'
            return self._answer(400, {"error": message})
        fn = loaded.signatures[signature_name]
        specs = fn.structured_input_signature[1]
        inputs = request["inputs"] if isinstance(request["inputs"], dict) else {next(iter(specs)): request["inputs"]}
        tensors = {}
        for key, value in inputs.items():
            array = np.asarray(value)
            dtype = specs[key].dtype.as_numpy_dtype
            if np.issubdtype(dtype, np.integer) and not np.issubdtype(array.dtype, np.integer):
                return self._answer(400, {"error": f"JSON Value: {array.ravel()[0]} not of expected type: {dtype}"})
            tensors[key] = tf.constant(array.astype(dtype))
        try:
            outputs = fn(**tensors)
        except tf.errors.InvalidArgumentError as err:
            return self._answer(400, {"error": err.message})
        self._answer(200, {"outputs": {k: v.numpy().tolist() for k, v in outputs.items()}})


@pytest.fixture(scope="module")
def stand_in(exports):
    """The stand-in serving the SSIM export as model ``ssim`` (versions 1 and 2) and ``l2``; stops by itself."""
    import tensorflow as tf

    ssim, l2 = (tf.saved_model.load(str(path)) for path in exports)
    server = _StandIn({"ssim": {1: ssim, 2: ssim}, "l2": {1: l2}}, canned={})
    server.timeout = 0.2
    stop = threading.Event()
    deadline = time.monotonic() + STAND_IN_LIFETIME_S

    def serve() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            server.handle_request()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=5)
        server.server_close()


@pytest.fixture
def no_proxy(monkeypatch):
    """Loopback requests must not go through a proxy configured in the environment."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


_CLIENT = """
import json, sys
import numpy as np
from skimage import io
from tfssim import data
from tfssim.serving.client import ServingClient

url, export_dir, image_path, uint8_path, out = sys.argv[1:6]
client = ServingClient(url, "ssim", metadata=export_dir)
as_float = client.predict(data.read_image(image_path))
as_uint8 = client.predict(io.imread(uint8_path))
mask, regions = client.segment(data.read_image(image_path))
newest = ServingClient(url, "ssim", version=2).predict(data.read_image(image_path))  # no metadata
np.savez(out, mask=mask, **{f"float_{k}": v for k, v in as_float.items()},
         **{f"uint8_{k}": v for k, v in as_uint8.items()}, **{f"v2_{k}": v for k, v in newest.items()})
print(json.dumps({"regions": regions, "loaded": sorted(m for m in ("tensorflow", "keras") if m in sys.modules)}))
"""


@pytest.mark.slow  # 10-15 s measured here: a fresh interpreter and four predictions of a 64x80 image
def test_client_without_tensorflow_gives_the_maps_and_regions_of_the_export(stand_in, exports, dataset, tmp_path,
                                                                           run_without_tensorflow, no_proxy):
    image_path = data.list_images(dataset / "test")[0]
    model = ExportedModel.load(exports[0])
    # the dataset's PNGs are 16-bit: an 8-bit copy for the uint8 signature
    uint8_image = np.round(data.read_image(image_path)[..., 0] * 255).astype(np.uint8)
    io.imsave(tmp_path / "uint8.png", uint8_image, check_contrast=False)
    assert io.imread(tmp_path / "uint8.png").dtype == np.uint8
    expected_float = model.predict(data.read_image(image_path))
    expected_uint8 = model.predict(uint8_image)
    # a threshold that leaves a few regions, stored in a copy of the export the client reads
    threshold = float(np.quantile(expected_float["anomaly_map"], 0.97))
    copy = shutil.copytree(exports[0], tmp_path / "ssim" / "1")
    copy = export.write_calibrated_version(copy, threshold, fpr=0.03)  # version 2, the model folder's newest

    done = run_without_tensorflow(_CLIENT, stand_in.url, str(copy.parent), str(image_path), str(tmp_path / "uint8.png"),
                                  str(tmp_path / "out.npz"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    got = np.load(tmp_path / "out.npz")
    assert sorted(expected_float) == ["anomaly_map", "contrast_map", "luminance_map", "reconstruction",
                                      "structure_map"]
    for prefix, expected in (("float", expected_float), ("uint8", expected_uint8), ("v2", expected_float)):
        for key, value in expected.items():
            assert got[f"{prefix}_{key}"].shape == value.shape and got[f"{prefix}_{key}"].dtype == np.float32
            np.testing.assert_allclose(got[f"{prefix}_{key}"], value, rtol=0, atol=1e-6, err_msg=f"{prefix} {key}")
    # the float and the uint8 requests went to their own signatures (the maps differ by the rounding)
    assert [r["signature_name"] for r in stand_in.requests[-4:]] == [
        "serve_float", "serving_default", "serve_float", "serve_float"]
    # the post-processing: the export's threshold and the paper's opening and hulls
    mask, regions = postprocess.PostProcessor(threshold)(expected_float["anomaly_map"])
    assert mask.any() and len(regions) >= 1
    np.testing.assert_array_equal(got["mask"], mask)
    assert result["regions"] == json.loads(json.dumps(regions))


def test_client_in_process_uses_the_export_metadata_for_checks_and_settings(stand_in, exports, no_proxy):
    meta = ExportMetadata.read(exports[0])
    client = ServingClient(stand_in.url + "/", "ssim", version=1, metadata=meta.to_dict())
    assert client.endpoint == f"{stand_in.url}/v1/models/ssim/versions/1:predict"
    image = np.random.default_rng(0).uniform(size=(40, 36)).astype(np.float32)
    # no threshold in the export: segment needs one
    with pytest.raises(ValueError, match="no calibrated threshold; run tfssim-calibrate"):
        client.segment(image)
    mask, regions = client.segment(image, threshold=0.0, opening_diameter=0, convex_hull=False)
    assert mask.shape == (40, 36) and sum(r["area"] for r in regions) == mask.sum() > 0
    # checked against the metadata before anything is sent
    sent = len(stand_in.requests)
    with pytest.raises(ValueError, match=r"image has 3 channel\(s\) but the export takes 1"):
        client.predict(np.zeros((40, 40, 3), np.float32))
    with pytest.raises(ValueError, match="smaller than the patch: height and width must be at least the patch size 32"):
        client.predict(np.zeros((20, 60), np.uint8))
    with pytest.raises(ValueError, match="must be uint8 .* or float in"):
        client.predict(np.zeros((40, 40), np.uint16))
    with pytest.raises(ValueError, match="NaN or infinite"):
        client.predict(np.full((40, 40), np.nan, np.float32))
    assert len(stand_in.requests) == sent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_errors_are_one_line_serving_errors(stand_in, no_proxy):
    image = np.random.default_rng(1).uniform(size=(40, 40)).astype(np.float32)
    with pytest.raises(ServingError) as info:  # nothing listens on that port
        ServingClient(f"http://127.0.0.1:{_free_port()}", "ssim", timeout=5).predict(image)
    assert "connection refused" in _one_line_error(info) and info.value.status is None
    with pytest.raises(ServingError) as info:
        ServingClient(stand_in.url, "nosuchmodel").predict(image)
    assert "HTTP 404: Servable not found for request: Latest(nosuchmodel)" in _one_line_error(info)
    assert info.value.status == 404
    with pytest.raises(ServingError) as info:
        ServingClient(stand_in.url, "ssim", version=7).predict(image)
    assert "Specific(ssim, 7)" in _one_line_error(info)
    # refused by the export itself (no metadata on this client to check first): its assertion's text
    with pytest.raises(ServingError) as info:
        ServingClient(stand_in.url, "ssim").predict(np.zeros((20, 60), np.float32))
    assert _one_line_error(info).endswith("answered HTTP 400: image height and width must be at least the patch "
                                          "size 32")
    assert info.value.status == 400
    with pytest.raises(ServingError) as info:
        ServingClient(stand_in.url, "ssim").predict(image * 3)
    assert "float image values must be finite and in [0, 1]" in _one_line_error(info)
    with pytest.raises(ServingError) as info:
        ServingClient(stand_in.url, "ssim", signature="nope").predict(image)
    assert 'signature name: "nope" not found' in _one_line_error(info)


@pytest.mark.parametrize(("status", "body", "message"), [
    (200, b"<html>502 Bad Gateway</html>", "answered something that is not JSON: '<html>502 Bad Gateway</html>'"),
    (502, b"<html>\n<b>Bad Gateway</b>\n</html>", "answered HTTP 502: <html> <b>Bad Gateway</b> </html>"),
    (200, b"[1, 2]", "answered a JSON list, not an object"),
    (200, b'{"predictions": [1]}', "answered without 'outputs' (keys: predictions)"),
    (200, b'{"outputs": [[0.5]]}', "answered one unnamed output"),
    (200, b'{"outputs": {"reconstruction": [[[0.5]]]}}', "answered reconstruction of shape (1, 1, 1) for a 40x40"),
    (200, json.dumps({"outputs": {"anomaly_map": [[0.5] * 40] * 39 + [[0.5]]}}).encode(),
     "an output 'anomaly_map' that is not a rectangular array"),
    (200, json.dumps({"outputs": {"anomaly_map": [[0.5] * 40] * 30}}).encode(),
     "answered anomaly_map of shape (30, 40) for a 40x40 image, expected (40, 40)"),
    (200, json.dumps({"outputs": {"reconstruction": [[[0.5]] * 40] * 40}}).encode(), "answered no anomaly_map"),
], ids=["html", "html-error", "list", "rows", "unnamed", "recon-shape", "ragged", "map-shape", "no-map"])
def test_answers_that_are_not_a_tfssim_exports_maps_are_one_line_errors(stand_in, no_proxy, status, body, message):
    stand_in.canned["canned"] = (status, body)
    with pytest.raises(ServingError) as info:
        ServingClient(stand_in.url, "canned").predict(np.full((40, 40), 0.5, np.float32))
    assert message in _one_line_error(info)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"url": "localhost:8501"}, "URL must look like http://host:8501"),
    ({"url": "http://h:8501/?x=1"}, "URL must look like"),
    ({"model_name": ""}, "model name must be a non-empty name"),
    ({"model_name": "a/b"}, "model name must be a non-empty name"),
    ({"version": 0}, "version must be an integer from 1 to"),
    ({"version": True}, "version must be an integer from 1 to"),
    ({"timeout": 0}, "timeout must be a positive number"),
    ({"metadata": {"format": 1}}, "tfssim metadata lacks name"),
    # a header injected through the URL: urlsplit drops CR/LF/tab silently, the request line would not
    ({"url": "http://127.0.0.1:8501/\r\nX-Injected: 1"}, "must be printable ASCII without spaces or control"),
    ({"url": "http://127.0.0.1:8501\n"}, "must be printable ASCII"),
    ({"url": "http://h\t:8501"}, "must be printable ASCII"),
    ({"url": "http://h:8501/a b"}, "must be printable ASCII"),
    ({"url": "http://h\u00f4st:8501"}, "must be printable ASCII"),  # was UnicodeEncodeError at the first call
    ({"url": b"http://h:8501"}, "must be printable ASCII"),
    ({"url": "http://:8501"}, "URL must look like http://host:8501"),
    ({"url": "http://h:99999"}, "must have a port from 1 to 65535"),  # was "nonnumeric port" at the first call
    ({"url": "http://h:0"}, "must have a port from 1 to 65535"),
    ({"url": "http://h:x"}, "must have a port from 1 to 65535"),
    ({"signature": ""}, "signature must be a signature's name"),
    ({"signature": 5}, "signature must be a signature's name"),
    # timeouts a socket cannot take (inf was an OverflowError at the first call) or that mean nothing
    ({"timeout": float("inf")}, "timeout must be a positive number of seconds, at most 86400 (a day), got inf"),
    ({"timeout": float("nan")}, "timeout must be a positive number"),
    ({"timeout": -1}, "timeout must be a positive number"),
    ({"timeout": 1e10}, "timeout must be a positive number"),
    ({"timeout": True}, "timeout must be a positive number"),
    ({"timeout": "5"}, "timeout must be a positive number"),
    ({"max_response_bytes": 0}, "max_response_bytes must be a positive whole number of bytes, or None"),
    ({"max_response_bytes": -1}, "max_response_bytes must be a positive whole number"),
    ({"max_response_bytes": 1.5}, "max_response_bytes must be a positive whole number"),
    ({"max_response_bytes": True}, "max_response_bytes must be a positive whole number"),
])
def test_bad_client_settings_are_value_errors(kwargs, message):
    settings = {"url": "http://localhost:8501", "model_name": "m", **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        ServingClient(**settings)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("kwargs", "message"), [
    # TF Serving's versions are int64: these named no version the server can have
    ({"version": 2**63}, "version must be an integer from 1 to 9223372036854775807 (TF Serving's int64), or None "
                         "(the newest), got 9223372036854775808"),
    ({"version": 10**30}, "version must be an integer from 1 to 9223372036854775807"),
    ({"version": np.uint64(2**63)}, "version must be an integer from 1 to 9223372036854775807"),
    ({"version": -1}, "version must be an integer from 1 to 9223372036854775807"),
    # urlsplit's own bare ValueError("Invalid IPv6 URL") before
    ({"url": "http://[::1"}, "TF Serving URL has a malformed host (Invalid IPv6 URL); write an IPv6 address in "
                             "closed brackets, like http://[::1]:8501, any other host without brackets, got "
                             "'http://[::1'"),
    ({"url": "http://[host]:8501"}, "TF Serving URL has a malformed host ("),
    # an empty query or fragment: the endpoint's path would have followed it, sending to the root
    ({"url": "http://h:8501?"}, "TF Serving URL must look like http://host:8501, without '?' or '#', got "
                                "'http://h:8501?'"),
    ({"url": "http://h:8501/#"}, "without '?' or '#'"),
    # Path(5) was a TypeError, where the docstring promises ValueError
    ({"metadata": 5}, "metadata must be an ExportMetadata, its dict, a path to the export (model folder, version "
                      "folder or tfssim.json) or None, got int 5"),
    ({"metadata": b"exported_models/m"}, "metadata must be an ExportMetadata, its dict, a path to the export"),
    ({"metadata": ["tfssim.json"]}, "got list ['tfssim.json']"),
], ids=["version-2**63", "version-10**30", "version-uint64", "version-negative", "url-unclosed-ipv6",
        "url-bracketed-name", "url-empty-query", "url-empty-fragment", "metadata-int", "metadata-bytes",
        "metadata-list"])
def test_hostile_client_settings_are_the_clients_own_one_line_value_errors(kwargs, message):
    settings = {"url": "http://localhost:8501", "model_name": "m", **kwargs}
    with pytest.raises(InputError) as info:  # the client's own, not urllib's or Path's
        ServingClient(**settings)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_largest_int64_version_is_asked_for():
    assert ServingClient("http://h:1", "m", version=MAX_VERSION).endpoint == \
        "http://h:1/v1/models/m/versions/9223372036854775807:predict"
    assert ServingClient("http://h:1", "m", version=np.int64(MAX_VERSION)).version == MAX_VERSION


def test_a_password_in_the_url_is_refused_without_being_repeated():
    with pytest.raises(ValueError, match=re.escape("must not hold a user name or password")) as info:
        ServingClient("http://user:s3cret@localhost:8501", "m")
    assert "s3cret" not in str(info.value)


def test_good_client_settings_at_their_limits():
    client = ServingClient("http://[::1]:8501/serving/", "m", timeout=86400, max_response_bytes=np.int64(10))
    assert client.endpoint == "http://[::1]:8501/serving/v1/models/m:predict"
    assert client.timeout == 86400.0 and client.max_response_bytes == 10
    assert ServingClient("https://h", "m", timeout=np.float32(0.5)).timeout == 0.5


def test_metadata_path_that_does_not_exist(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ServingClient("http://localhost:8501", "m", metadata=tmp_path / "nowhere")
