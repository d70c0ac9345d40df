"""tfssim-export: TF Serving layout, in-graph maps, TF-only loading, saved_model_cli, errors, warm-up."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from tfssim import export, scoring
from tfssim.cli.export import main as export_cli
from tfssim.models import build_model

PATCH = 32


@pytest.fixture(scope="module")
def ssim_model():
    return build_model("ssim", PATCH, 1, 8)


@pytest.fixture(scope="module")
def exported(ssim_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exports")
    return export.export_model(ssim_model, root, name="tiny", stride=12,
                               ssim_kwargs={"window_size": 7, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "data_range": 1.0})


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(0).random((45, 77, 1)) * 255).astype(np.uint8)


def test_tf_serving_layout_and_metadata(exported: Path):
    assert exported.name == "1" and exported.parent.name == "tiny"
    for name in ("saved_model.pb", "variables", "assets/tfssim.json", "assets.extra/tf_serving_warmup_requests"):
        assert (exported / name).exists(), name
    meta = export.read_metadata(exported)
    assert meta["kind"] == "ssim" and meta["patch_size"] == PATCH and meta["stride"] == 12 and meta["channels"] == 1
    assert meta["ssim"]["window_size"] == 7 and meta["threshold"] is None
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")], "no partial exports left behind"


def test_versions_increment_and_are_never_overwritten(ssim_model, tmp_path):
    first = export.export_model(ssim_model, tmp_path, name="m", stride=16)
    second = export.export_model(ssim_model, tmp_path, name="m", stride=16)
    assert (first.name, second.name) == ("1", "2")
    stamp = (first / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="never overwritten"):
        export.export_model(ssim_model, tmp_path, name="m", version=1, stride=16)
    assert (first / "saved_model.pb").stat().st_mtime_ns == stamp


def test_signature_maps_equal_the_library_maps(exported, ssim_model, image):
    loaded = tf.saved_model.load(str(exported))
    out = loaded.signatures["serving_default"](image=tf.constant(image))
    want = scoring.anomaly_maps(ssim_model, image.astype(np.float32) / 255, residual="ssim", patch_size=PATCH,
                                stride=12, ssim_kwargs={"window_size": 7})
    assert out["anomaly_map"].shape == image.shape[:2]
    for key in ("reconstruction", "anomaly_map", "luminance_map", "contrast_map", "structure_map"):
        np.testing.assert_allclose(out[key].numpy(), want[key].numpy(), atol=1e-5, err_msg=key)
    # [1, H, W, C] input and the float and explicit-stride signatures give the same maps.
    batched = loaded.signatures["serving_default"](image=tf.constant(image[None]))
    np.testing.assert_allclose(batched["anomaly_map"].numpy(), out["anomaly_map"].numpy(), atol=1e-6)
    floats = tf.constant(image.astype(np.float32) / 255)
    f = loaded.signatures["serve_float"](image=floats)
    np.testing.assert_allclose(f["anomaly_map"].numpy(), out["anomaly_map"].numpy(), atol=1e-5)
    s = loaded.signatures["serve_with_stride"](image=floats, stride=tf.constant(12))
    np.testing.assert_allclose(s["anomaly_map"].numpy(), out["anomaly_map"].numpy(), atol=1e-5)
    other = loaded.signatures["serve_with_stride"](image=floats, stride=tf.constant(5))
    assert not np.allclose(other["reconstruction"].numpy(), out["reconstruction"].numpy(), atol=1e-7)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((20, 77, 1), np.uint8), "at least the patch size 32"),
        (np.zeros((45, 77, 3), np.uint8), "must have 1 channel"),
        (np.zeros((2, 45, 77, 1), np.uint8), "one image per request"),
        (np.zeros((45, 77), np.uint8), "image must be"),
    ],
)
def test_bad_requests_get_clear_errors(exported, bad, message):
    fn = tf.saved_model.load(str(exported)).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        fn(image=tf.constant(bad))


def test_bad_stride_request_is_a_clear_error(exported):
    fn = tf.saved_model.load(str(exported)).signatures["serve_with_stride"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="stride must be <= the patch size"):
        fn(image=tf.zeros([40, 40, 1]), stride=tf.constant(33))


def test_fresh_process_with_tensorflow_only_gets_the_same_maps(exported, image, tmp_path):
    np.save(tmp_path / "image.npy", image)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"fn = tf.saved_model.load({str(exported)!r}).signatures['serving_default']\n"
        f"out = fn(image=tf.constant(np.load({str(tmp_path / 'image.npy')!r})))\n"
        f"np.save({str(tmp_path / 'map.npy')!r}, out['anomaly_map'].numpy())\n"
        "assert not any(m.split('.')[0] == 'tfssim' for m in sys.modules), 'tfssim was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, cwd=tmp_path)
    here = tf.saved_model.load(str(exported)).signatures["serving_default"](image=tf.constant(image))
    np.testing.assert_allclose(np.load(tmp_path / "map.npy"), here["anomaly_map"].numpy(), atol=1e-6)


def test_saved_model_cli_shows_and_runs_the_signature(exported, image, tmp_path):
    cli = Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run([str(cli), "show", "--dir", str(exported), "--all"], capture_output=True, text=True, check=True)
    assert "signature_def['serving_default']" in shown.stdout and "anomaly_map" in shown.stdout
    assert "signature_def['serve_with_stride']" in shown.stdout
    np.save(tmp_path / "image.npy", image)
    ran = subprocess.run(
        [str(cli), "run", "--dir", str(exported), "--tag_set", "serve", "--signature_def", "serving_default",
         "--inputs", f"image={tmp_path / 'image.npy'}", "--outdir", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    got = np.load(tmp_path / "out" / "anomaly_map.npy")
    assert got.shape == image.shape[:2] and np.isfinite(got).all()


def _read_fields(data: bytes) -> dict[int, list[bytes]]:
    """Minimal protobuf reader for length-delimited fields (test-only, to check the wire layout)."""
    fields: dict[int, list[bytes]] = {}
    i = 0
    while i < len(data):
        key, shift = 0, 0
        while True:
            byte = data[i]; i += 1
            key |= (byte & 0x7F) << shift; shift += 7
            if not byte & 0x80:
                break
        assert key & 7 == 2, "only length-delimited fields expected"
        length, shift = 0, 0
        while True:
            byte = data[i]; i += 1
            length |= (byte & 0x7F) << shift; shift += 7
            if not byte & 0x80:
                break
        fields.setdefault(key >> 3, []).append(data[i : i + length])
        i += length
    return fields


def test_warmup_file_holds_a_predict_request_for_serving_default(exported):
    from tensorflow.core.framework import tensor_pb2

    records = list(tf.data.TFRecordDataset(str(exported / "assets.extra" / "tf_serving_warmup_requests")).as_numpy_iterator())
    assert len(records) == 1
    log = _read_fields(records[0])
    request = _read_fields(_read_fields(log[6][0])[1][0])  # PredictionLog.predict_log -> PredictLog.request
    spec = _read_fields(request[1][0])
    assert spec[1] == [b"tiny"] and spec[3] == [b"serving_default"]
    entry = _read_fields(request[2][0])
    assert entry[1] == [b"image"]
    tensor = tensor_pb2.TensorProto.FromString(entry[2][0])
    array = tf.make_ndarray(tensor)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == 1 and min(array.shape[:2]) >= PATCH
    out = tf.saved_model.load(str(exported)).signatures["serving_default"](image=tf.constant(array))
    assert out["anomaly_map"].shape == array.shape[:2]


def test_warmup_record_parses_with_the_real_serving_protos_when_installed():
    apis = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
    record = export.warmup_record("m", "serving_default", "image", np.zeros((40, 40, 1), np.uint8))
    log = apis.PredictionLog.FromString(record)
    assert log.predict_log.request.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(log.predict_log.request.inputs["image"]).shape == (40, 40, 1)


def test_update_threshold_rewrites_only_the_metadata(exported):
    before = (exported / "saved_model.pb").read_bytes()
    export.update_threshold(exported, 0.25, fpr=0.01)
    meta = export.read_metadata(exported)
    assert meta["threshold"] == 0.25 and meta["threshold_fpr"] == 0.01
    assert (exported / "saved_model.pb").read_bytes() == before


@pytest.mark.parametrize("kind", ["l2", "vae"])
def test_other_kinds_export_their_residual(kind, tmp_path, image):
    model = build_model(kind, PATCH, 1, 8)
    path = export.export_model(model, tmp_path, name=kind, stride=16)
    out = tf.saved_model.load(str(path)).signatures["serving_default"](image=tf.constant(image))
    assert set(out) == {"reconstruction", "anomaly_map"}
    want = scoring.anomaly_maps(model, image.astype(np.float32) / 255, residual=kind, patch_size=PATCH, stride=16,
                                vae_samples=export.read_metadata(path)["vae_samples"] or 10)
    np.testing.assert_allclose(out["anomaly_map"].numpy(), want["anomaly_map"].numpy(), rtol=1e-4, atol=1e-4)


def test_cli_exports_a_run_folder_and_rejects_bad_input(ssim_model, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ssim_model.save(run / "best.keras")
    (run / "config.json").write_text(json.dumps({"model": "ssim", "ssim": {"window_size": 7}, "config": {"epochs": 1}}))
    runner = CliRunner()
    ok = runner.invoke(export_cli, [str(run), "--name", "cli", "--output", str(tmp_path / "ex"), "--stride", "16"])
    assert ok.exit_code == 0, ok.output
    meta = export.read_metadata(tmp_path / "ex" / "cli" / "1")
    assert meta["ssim"]["window_size"] == 7 and meta["training_config"] == {"epochs": 1}
    again = runner.invoke(export_cli, [str(run), "--name", "cli", "--output", str(tmp_path / "ex"), "--version", "1"])
    assert again.exit_code == 2 and "never overwritten" in again.output
    wide = runner.invoke(export_cli, [str(run), "--name", "cli", "--output", str(tmp_path / "ex"), "--stride", "40"])
    assert wide.exit_code == 2 and "larger than the patch size" in wide.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = runner.invoke(export_cli, [str(empty), "--name", "x", "--output", str(tmp_path / "ex")])
    assert nothing.exit_code == 2 and "neither best.keras nor final.keras" in nothing.output
    assert "Traceback" not in nothing.output
