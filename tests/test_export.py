"""tfssim-export: TF Serving layout, in-graph maps, TF-only loading, saved_model_cli, errors, warm-up."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from tfssim import export
from tfssim.cli.export import main as export_cli
from tfssim.core import ssim
from tfssim.core.losses import FeatureMatchingLoss, SSIMLoss
from tfssim.models import build_model, scoring

PATCH = 32
SSIM = {"window_size": 7, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "data_range": 1.0}


@pytest.fixture(scope="module")
def ssim_model():
    keras.utils.set_random_seed(0)
    return build_model("ssim", PATCH, 1, 8)


@pytest.fixture(scope="module")
def exported(ssim_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exports")
    return export.export_model(ssim_model, root, name="tiny", stride=12, ssim_kwargs=SSIM, training_config={"epochs": 3})


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(0).random((45, 77, 1)) * 255).astype(np.uint8)


def numpy_reconstruct(model, image: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """Plain NumPy tiling (origins min(i*s, n-p)) and overlap averaging around the Keras model."""
    h, w, _ = image.shape
    axis = lambda n: sorted({min(i * stride, n - patch) for i in range(-(-(n - patch) // stride) + 1)})  # noqa: E731
    origins = [(y, x) for y in axis(h) for x in axis(w)]
    tiles = np.stack([image[y : y + patch, x : x + patch] for y, x in origins])
    recon = model(tiles, training=False).numpy()
    total, count = np.zeros(image.shape), np.zeros((h, w, 1))
    for (y, x), tile in zip(origins, recon):
        total[y : y + patch, x : x + patch] += tile
        count[y : y + patch, x : x + patch] += 1
    return total / count


@pytest.fixture(scope="module")
def conv128(tmp_path_factory):
    """A cheap model with the paper's 128x128 patch (one 3x3 conv), exported once as an SSIM model."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((128, 128, 1)), keras.layers.Conv2D(1, 3, padding="same")])
    path = export.export_model(model, tmp_path_factory.mktemp("conv128"), name="conv128", kind="ssim", stride=30)
    return model, tf.saved_model.load(str(path))


@pytest.fixture(scope="module")
def big_image() -> np.ndarray:
    return np.random.default_rng(3).random((700, 1024, 1)).astype(np.float32)


@pytest.mark.parametrize("stride", [30, 64, 128])
@pytest.mark.parametrize("size", [(128, 128), (130, 257), (700, 1024), (696, 1024)])
def test_exported_reconstruction_equals_the_numpy_reference(conv128, big_image, size, stride):
    model, loaded = conv128
    floats = big_image[: size[0], : size[1]]
    out = loaded.signatures["serve_with_stride"](image=tf.constant(floats), stride=tf.constant(stride))
    assert out["reconstruction"].shape == floats.shape
    np.testing.assert_allclose(out["reconstruction"].numpy(), numpy_reconstruct(model, floats, 128, stride),
                               atol=1e-5)


def test_exported_anomaly_map_is_ssim_of_input_and_averaged_reconstruction(conv128, big_image):
    model, loaded = conv128
    floats = big_image[:130, :257]
    out = loaded.signatures["serve_with_stride"](image=tf.constant(floats), stride=tf.constant(30))
    recon = numpy_reconstruct(model, floats, 128, 30).astype(np.float32)
    want = 1.0 - ssim.ssim_maps(floats[None], recon[None], padding="same", **export.DEFAULT_SSIM).ssim[0, ..., 0]
    np.testing.assert_allclose(out["anomaly_map"].numpy(), want.numpy(), atol=1e-5)


def test_tf_serving_layout_and_metadata(exported: Path):
    assert exported.name == "1" and exported.parent.name == "tiny"
    for name in ("saved_model.pb", "variables/variables.index", "assets/tfssim.json",
                 "assets.extra/tf_serving_warmup_requests"):
        assert (exported / name).exists(), name
    meta = export.read_export_metadata(exported).to_dict()
    assert meta["kind"] == "ssim" and meta["residual"] == "ssim"
    assert (meta["patch_size"], meta["stride"], meta["channels"]) == (PATCH, 12, 1)
    assert meta["ssim"]["window_size"] == 7 and meta["ssim"]["k2"] == 0.03 and meta["threshold"] is None
    assert meta["training_config"] == {"epochs": 3}
    assert meta["outputs"] == ["reconstruction", "anomaly_map", "luminance_map", "contrast_map", "structure_map"]
    assert set(meta["signatures"]) == {"serving_default", "serve_float", "serve_with_stride"}
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")], "no partial exports left behind"


@pytest.mark.slow  # 65 s measured (2 cores shared with other jobs)
def test_versions_increment_are_never_overwritten_and_a_crash_leaves_nothing(ssim_model, tmp_path, monkeypatch):
    first = export.export_model(ssim_model, tmp_path, name="m", stride=16)
    stamp = (first / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="never overwritten"):
        export.export_model(ssim_model, tmp_path, name="m", version=1, stride=16)
    assert (first / "saved_model.pb").stat().st_mtime_ns == stamp

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(export.savedmodel, "_write_warmup", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export.export_model(ssim_model, tmp_path, name="m", stride=16)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"], "no half export, no temporary folder"
    assert export.next_version(tmp_path / "m") == 2


def test_signature_maps_equal_the_library_maps_and_the_numpy_reference(loaded, ssim_model, image):
    out = loaded.signatures["serving_default"](image=tf.constant(image))
    floats = image.astype(np.float32) / 255
    want = scoring.anomaly_maps(ssim_model, floats, "ssim", stride=12, ssim_kwargs=SSIM)
    assert out["anomaly_map"].shape == image.shape[:2] and out["reconstruction"].shape == image.shape
    assert all(v.dtype == tf.float32 for v in out.values())
    np.testing.assert_allclose(out["reconstruction"].numpy(), numpy_reconstruct(ssim_model, floats, PATCH, 12),
                               atol=1e-5)
    for key in ("reconstruction", "anomaly_map", "luminance_map", "contrast_map"):
        np.testing.assert_allclose(out[key].numpy(), want[key].numpy(), atol=1e-5, err_msg=key)
    # The structure term divides by sigma_x sigma_y + C3: graph vs eager rounding shows a bit more.
    np.testing.assert_allclose(out["structure_map"].numpy(), want["structure_map"].numpy(), atol=1e-4)
    # The anomaly map is tfssim.core.ssim of the input and the averaged reconstruction.
    maps = scoring.ssim_residual_maps(floats, out["reconstruction"], **SSIM)
    np.testing.assert_allclose(out["anomaly_map"].numpy(), maps["anomaly_map"].numpy(), atol=1e-5)


def test_batched_float_and_stride_signatures_agree(loaded, ssim_model, image):
    out = loaded.signatures["serving_default"](image=tf.constant(image))
    batched = loaded.signatures["serving_default"](image=tf.constant(image[None]))
    np.testing.assert_allclose(batched["anomaly_map"].numpy(), out["anomaly_map"].numpy(), atol=1e-6)
    floats = image.astype(np.float32) / 255
    f = loaded.signatures["serve_float"](image=tf.constant(floats))
    np.testing.assert_allclose(f["anomaly_map"].numpy(), out["anomaly_map"].numpy(), atol=1e-5)
    s = loaded.signatures["serve_with_stride"](image=tf.constant(floats), stride=tf.constant(12))
    np.testing.assert_allclose(s["anomaly_map"].numpy(), out["anomaly_map"].numpy(), atol=1e-5)
    other = loaded.signatures["serve_with_stride"](image=tf.constant(floats[:40, :70]), stride=tf.constant(5))
    np.testing.assert_allclose(other["reconstruction"].numpy(), numpy_reconstruct(ssim_model, floats[:40, :70], PATCH, 5),
                               atol=1e-5)


@pytest.mark.parametrize(
    "signature, bad, message",
    [
        ("serving_default", np.zeros((20, 77, 1), np.uint8), "at least the patch size 32"),
        ("serving_default", np.zeros((0, 0, 1), np.uint8), "at least the patch size 32"),
        ("serving_default", np.zeros((45, 77, 3), np.uint8), "must have 1 channel"),
        ("serving_default", np.zeros((2, 45, 77, 1), np.uint8), "one image per request"),
        ("serving_default", np.zeros((45, 77), np.uint8), r"image must be \[height, width, 1\]"),
        ("serving_default", np.zeros((), np.uint8), r"image must be \[height, width, 1\]"),
        ("serving_default", np.zeros((1, 1, 45, 77, 1), np.uint8), r"image must be \[height, width, 1\]"),
        ("serve_float", np.full((45, 77, 1), 200.0, np.float32), r"in \[0, 1\]"),
        ("serve_float", np.full((45, 77, 1), np.nan, np.float32), r"finite and in \[0, 1\]"),
    ],
)
def test_bad_requests_get_clear_errors_and_the_model_keeps_working(loaded, image, signature, bad, message):
    fn = loaded.signatures[signature]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        fn(image=tf.constant(bad))
    assert loaded.signatures["serving_default"](image=tf.constant(image))["anomaly_map"].shape == (45, 77)


@pytest.mark.parametrize("stride, message", [(33, "stride must be <= the patch size 32"), (0, "stride must be >= 1")])
def test_bad_stride_request_is_a_clear_error(loaded, stride, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["serve_with_stride"](image=tf.zeros([40, 40, 1]), stride=tf.constant(stride))


def test_wrong_dtype_is_refused_by_the_signature(loaded, image):
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError), match="uint8"):
        loaded.signatures["serving_default"](image=tf.constant(image.astype(np.float32)))


@pytest.mark.slow  # 30 s measured (2 cores shared with other jobs)
def test_fresh_process_with_tensorflow_only_gets_the_same_maps(exported, loaded, image, tmp_path):
    np.save(tmp_path / "image.npy", image)
    # `import tensorflow` itself imports part of keras (TF 2.21); loading and running the export
    # must add no keras module and no tfssim module.
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "before = set(sys.modules)\n"
        f"fn = tf.saved_model.load({str(exported)!r}).signatures['serving_default']\n"
        f"out = fn(image=tf.constant(np.load({str(tmp_path / 'image.npy')!r})))\n"
        f"np.savez({str(tmp_path / 'maps.npz')!r}, **{{k: v.numpy() for k, v in out.items()}})\n"
        "added = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('keras', 'tfssim'))\n"
        "assert not added, added\n"
        "assert not [m for m in sys.modules if m == 'tfssim' or m.startswith('tfssim.')]\n"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    here = loaded.signatures["serving_default"](image=tf.constant(image))
    there = np.load(tmp_path / "maps.npz")
    assert set(there.files) == set(here)
    for key in here:
        np.testing.assert_allclose(there[key], here[key].numpy(), atol=1e-6, err_msg=key)


@pytest.mark.slow  # 114 s measured (2 cores shared with other jobs)
def test_saved_model_cli_shows_and_runs_the_signature(exported, loaded, image, tmp_path):
    cli = Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run([str(cli), "show", "--dir", str(exported), "--all"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for text in ("signature_def['serving_default']", "signature_def['serve_float']",
                 "signature_def['serve_with_stride']", "anomaly_map", "structure_map", "DT_UINT8"):
        assert text in shown.stdout, text
    section = shown.stdout.split("signature_def['serve_with_stride']:", 1)[1].split("signature_def[", 1)[0]
    inputs = section.split("The given SavedModel SignatureDef contains the following output(s):", 1)[0]
    stride_input = inputs.split("inputs['stride'] tensor_info:", 1)[1].split("inputs[", 1)[0]
    assert "dtype: DT_INT32" in stride_input and "shape: ()" in stride_input, section
    np.save(tmp_path / "image.npy", image)
    ran = subprocess.run(
        [str(cli), "run", "--dir", str(exported), "--tag_set", "serve", "--signature_def", "serving_default",
         "--inputs", f"image={tmp_path / 'image.npy'}", "--outdir", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    got = np.load(tmp_path / "out" / "anomaly_map.npy")
    want = loaded.signatures["serving_default"](image=tf.constant(image))["anomaly_map"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def _read_fields(data: bytes) -> dict[int, list[bytes]]:
    """Minimal protobuf reader for length-delimited fields (test-only, to check the wire layout)."""
    fields: dict[int, list[bytes]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        value, shift = 0, 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        assert key & 7 == 2, "only length-delimited fields expected"
        length = varint()
        fields.setdefault(key >> 3, []).append(data[i : i + length])
        i += length
    return fields


def test_warmup_file_holds_predict_requests_that_run(exported, loaded):
    from tensorflow.core.framework import tensor_pb2

    path = exported / "assets.extra" / "tf_serving_warmup_requests"
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert len(records) == 3
    seen = set()
    for record in records:
        request = _read_fields(_read_fields(_read_fields(record)[6][0])[1][0])  # PredictionLog > PredictLog > request
        spec = _read_fields(request[1][0])
        assert spec[1] == [b"tiny"]
        signature = spec[3][0].decode()
        inputs = {}
        for entry in map(_read_fields, request[2]):
            inputs[entry[1][0].decode()] = tf.make_ndarray(tensor_pb2.TensorProto.FromString(entry[2][0]))
        image = inputs["image"]
        assert image.ndim == 3 and image.shape[-1] == 1 and min(image.shape[:2]) >= PATCH
        out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        assert out["anomaly_map"].shape == image.shape[:2]
        seen.add(signature)
    assert seen == {"serving_default", "serve_float", "serve_with_stride"}


def test_exported_warmup_file_parses_with_the_real_serving_protos_when_installed(exported, loaded):
    apis = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
    path = exported / "assets.extra" / "tf_serving_warmup_requests"
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    signatures = []
    for record in records:
        log = apis.PredictionLog.FromString(record)
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == "tiny"
        signatures.append(request.model_spec.signature_name)
        inputs = {key: tf.make_ndarray(value) for key, value in request.inputs.items()}
        assert inputs["image"].shape == (48, 48, 1)
        if request.model_spec.signature_name == "serve_with_stride":
            assert int(inputs["stride"]) == 12 and request.inputs["stride"].dtype == tf.int32.as_datatype_enum
        out = loaded.signatures[request.model_spec.signature_name](**{k: tf.constant(v) for k, v in inputs.items()})
        assert out["anomaly_map"].shape == (48, 48)
        assert log.SerializeToString(deterministic=True) == record
    assert sorted(signatures) == ["serve_float", "serve_with_stride", "serving_default"]


def test_the_final_move_never_lands_on_a_destination_created_meanwhile(tmp_path):
    source = tmp_path / "export"
    source.mkdir()
    (source / "saved_model.pb").write_bytes(b"model")
    taken = tmp_path / "1"
    taken.mkdir()  # an empty folder: a plain os.rename would replace it on Linux
    with pytest.raises(FileExistsError, match="never overwritten"):
        export.layout._rename_noreplace(source, taken)
    assert list(taken.iterdir()) == [] and (source / "saved_model.pb").exists()
    # The atomic path itself (the fallback above checks first and could be raced):
    try:
        moved = export.layout._renameat2(source, taken)
    except FileExistsError:
        pass
    else:
        assert moved is None, "renameat2 replaced an existing empty folder"
    assert list(taken.iterdir()) == []
    export.layout._rename_noreplace(source, tmp_path / "2")
    assert (tmp_path / "2" / "saved_model.pb").read_bytes() == b"model" and not source.exists()


@pytest.mark.slow  # 47 s measured (2 cores shared with other jobs)
def test_an_automatic_version_taken_meanwhile_moves_to_the_next_free_one(ssim_model, tmp_path, monkeypatch):
    # Two exports without --version both choose version 1; the one that finishes second used to
    # fail with FileExistsError after its whole build.
    real = export.layout._rename_noreplace
    raced = []

    def other_export_finishes_first(source, destination):
        if not raced:
            destination.mkdir()
            (destination / "saved_model.pb").write_bytes(b"other")
            raced.append(destination.name)
        return real(source, destination)

    monkeypatch.setattr(export.layout, "_rename_noreplace", other_export_finishes_first)
    path = export.export_model(ssim_model, tmp_path, name="m", stride=16)
    assert raced == ["1"] and path == tmp_path / "m" / "2"
    assert (tmp_path / "m" / "1" / "saved_model.pb").read_bytes() == b"other", "the other export is untouched"
    assert export.read_export_metadata(path).version == 2 and (path / "variables").is_dir()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"], "no temporary folder left"
    # An explicit version is never renumbered: see the next test (auto=False).


def test_the_final_move_retries_a_bounded_number_of_later_versions(tmp_path, monkeypatch):
    root = tmp_path / "m"
    source = root / ".2.partial-x" / "export"
    source.mkdir(parents=True)
    (source / "saved_model.pb").write_bytes(b"mine")
    for version in (1, 3, 4):
        (root / str(version)).mkdir()
    tried = []

    def always_taken(src, destination):
        tried.append(destination.name)
        raise FileExistsError(f"{destination} appeared while exporting; exports are never overwritten")

    monkeypatch.setattr(export.layout, "_rename_noreplace", always_taken)
    with pytest.raises(FileExistsError, match="never overwritten; gave up after 3 retries"):
        export.layout._move_into_place(source, root, 2, auto=True, retries=3)
    assert tried == ["2", "5", "6", "7"]  # then the next free number each time
    tried.clear()
    with pytest.raises(FileExistsError, match="never overwritten$"):
        export.layout._move_into_place(source, root, 2, auto=False)
    assert tried == ["2"]
    monkeypatch.undo()
    # The real move: "1" and "3" exist (empty folders count as taken), so 1 -> 5.
    assert export.layout._move_into_place(source, root, 1, auto=True) == root / "5"
    assert (root / "5" / "saved_model.pb").read_bytes() == b"mine" and not source.exists()


@pytest.mark.slow  # 25 s measured (2 cores shared with other jobs)
@pytest.mark.parametrize("jit", [False, True])
def test_the_serving_graph_compiles_the_model_call_with_xla_only_when_asked(ssim_model, jit):
    # _Scorer.maps is scoring.anomaly_maps (one implementation); jit_compile must still reach it.
    scorer = export.graph._Scorer(model=ssim_model, residual="ssim", patch_size=PATCH, channels=1, stride=12,
                                  chunk_size=64, ssim_kwargs=dict(export.DEFAULT_SSIM), vae_samples=1, jit_compile=jit)
    graph = tf.function(scorer.serve_float).get_concrete_function(tf.TensorSpec(None, tf.float32)).graph
    compiled = [f for f in graph.as_graph_def().library.function
                if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b]
    assert len(compiled) == (1 if jit else 0)


@pytest.mark.slow  # 35-68 s measured (2 cores shared with other jobs)
@pytest.mark.parametrize("kind", ["l2", "vae"])
def test_other_kinds_export_their_residual(kind, tmp_path, image):
    model = build_model(kind, PATCH, 1, 8)
    path = export.export_model(model, tmp_path, name=kind, stride=16)
    meta = export.read_export_metadata(path).to_dict()
    assert meta["kind"] == kind and meta["ssim"] is None
    out = tf.saved_model.load(str(path)).signatures["serving_default"](image=tf.constant(image))
    assert set(out) == {"reconstruction", "anomaly_map"} == set(meta["outputs"])
    want = scoring.anomaly_maps(model, image.astype(np.float32) / 255, kind, stride=16,
                                vae_samples=meta["vae_samples"])
    np.testing.assert_allclose(out["anomaly_map"].numpy(), want["anomaly_map"].numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # 9 s measured (2 cores shared with other jobs)
def test_ssim_parameters_come_from_the_compiled_loss_of_a_bare_keras_file(ssim_model, tmp_path):
    model = keras.models.clone_model(ssim_model)
    model.compile(optimizer="adam", loss=SSIMLoss(window_size=5, k2=0.05))
    model.save(tmp_path / "m.keras")
    loaded_model, info = export.load_for_export(tmp_path / "m.keras")
    assert info["ssim"]["window_size"] == 5 and info["ssim"]["k2"] == 0.05
    assert getattr(loaded_model, "optimizer", None) is None, "loaded with compile=False: no optimizer slots"


def test_a_feature_matching_model_loads_without_building_its_loss(tmp_path, monkeypatch):
    model = build_model("fm", PATCH, 1, 8)
    model.compile(optimizer="adam", loss=FeatureMatchingLoss(weights=None))
    model.save(tmp_path / "fm.keras")

    def no_download(*args, **kwargs):
        raise AssertionError("the FM loss (and its ImageNet backbone) must not be built when exporting")

    monkeypatch.setattr("tfssim.core.features.build_feature_extractor", no_download)
    loaded_model, info = export.load_for_export(tmp_path / "fm.keras")
    assert info["ssim"] is None
    from tfssim.models import kind_of

    assert kind_of(loaded_model) == "fm"


@pytest.mark.slow  # 30 s measured in the not-slow run on the loaded 2-core machine
@pytest.mark.parametrize("shape", ["ssim dict", "flat keys only"])
def test_a_run_folder_from_before_ssimparams_exports_and_resumes_with_its_ssim(ssim_model, tmp_path, shape):
    """config.json of older runs: an ``ssim`` dict without alpha/beta/gamma (what tfssim-train wrote
    before SSIMParams), or only the config's flat ``ssim_*`` keys. Both export with the SSIM the run
    trained with, and the ``config`` entry still builds the TrainConfig (and loss) of a resume."""
    from tfssim.models import get_spec
    from tfssim.training import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    ssim_model.save(run / "best.keras")
    flat = {"ssim_window": 5, "ssim_sigma": 2.0, "ssim_k1": 0.02, "ssim_k2": 0.05, "ssim_weighting": "uniform"}
    record = {"model": "ssim", "patch_size": PATCH, "channels": 1, "latent_dim": 8,
              "config": {"data": "d", "output": str(run), "model": "ssim", "patch_size": PATCH, "latent_dim": 8,
                         **flat}}
    if shape == "ssim dict":
        record["ssim"] = {"window_size": 5, "sigma": 2.0, "k1": 0.02, "k2": 0.05, "data_range": 1.0,
                          "weighting": "uniform"}
    (run / "config.json").write_text(json.dumps(record))
    want = {"window_size": 5, "sigma": 2.0, "weighting": "uniform", "k1": 0.02, "k2": 0.05, "alpha": 1.0,
            "beta": 1.0, "gamma": 1.0, "data_range": 1.0}
    path = export.export_model(run, tmp_path / "ex", name="old", stride=16)
    assert export.read_export_metadata(path).ssim == want
    config = TrainConfig(**record["config"])
    config.validate()
    assert config.to_dict() | flat == config.to_dict()  # the flat keys stay the config's (resume compares them)
    loss = get_spec("ssim").build_loss(ssim_params=config.ssim_params)
    assert loss.get_config()["window_size"] == 5 and loss.ssim_kwargs == want


@pytest.mark.slow  # 84 s measured (2 cores shared with other jobs)
def test_cli_exports_a_run_folder_and_rejects_bad_input(ssim_model, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ssim_model.save(run / "best.keras")
    ssim_model.save(run / "final.keras")
    record = {"model": "ssim", "patch_size": PATCH, "channels": 1, "latent_dim": 8, "ssim": {"window_size": 5},
              "config": {"model": "ssim", "epochs": 1, "patch_size": PATCH, "ssim_window": 5}}
    (run / "config.json").write_text(json.dumps(record))
    runner = CliRunner()
    out = str(tmp_path / "ex")
    ok = runner.invoke(export_cli, [str(run), "--name", "cli", "--output", out, "--stride", "16"])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip() == str(tmp_path / "ex" / "cli" / "1")
    meta = export.read_export_metadata(tmp_path / "ex" / "cli" / "1").to_dict()
    assert meta["ssim"]["window_size"] == 5 and meta["training_config"]["epochs"] == 1 and meta["stride"] == 16
    assert meta["source"].endswith("best.keras")
    for args, message in [
        (["--version", "1"], "never overwritten"),
        (["--stride", "40"], "stride must be <= the patch size 32"),
        (["--kind", "vae"], "needs a tfssim VariationalAutoencoder"),
    ]:
        bad = runner.invoke(export_cli, [str(run), "--name", "cli", "--output", out, *args])
        assert bad.exit_code == 2 and message in bad.output, (args, bad.output)
        assert isinstance(bad.exception, SystemExit) and bad.exception.code == 2, repr(bad.exception)
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = runner.invoke(export_cli, [str(empty), "--name", "x", "--output", out])
    assert nothing.exit_code == 2 and "neither best.keras nor final.keras" in nothing.output
    badname = runner.invoke(export_cli, [str(run), "--name", "../up", "--output", out])
    assert badname.exit_code == 2 and "invalid model name" in badname.output
    missing = runner.invoke(export_cli, [str(tmp_path / "nope"), "--name", "x", "--output", out])
    assert missing.exit_code == 2


@pytest.mark.slow  # 69 s measured (2 cores shared with other jobs)
def test_cli_scores_with_another_ssim_window_or_weighting(ssim_model, tmp_path, image):
    """--ssim-weighting / --ssim-window change the anomaly map's SSIM, not the model."""
    ssim_model.save(tmp_path / "m.keras")
    runner = CliRunner()
    out = str(tmp_path / "ex")
    ok = runner.invoke(export_cli, [str(tmp_path / "m.keras"), "--name", "u", "--output", out,
                                    "--ssim-weighting", "uniform", "--ssim-window", "9"])
    assert ok.exit_code == 0, ok.output
    meta = export.read_export_metadata(tmp_path / "ex" / "u" / "1").to_dict()
    assert meta["ssim"]["weighting"] == "uniform" and meta["ssim"]["window_size"] == 9
    maps = tf.saved_model.load(str(tmp_path / "ex" / "u" / "1")).signatures["serving_default"](image=tf.constant(image))
    x = image.astype(np.float32) / 255.0
    want = scoring.ssim_residual_maps(x, maps["reconstruction"].numpy(), **meta["ssim"])["anomaly_map"].numpy()
    np.testing.assert_allclose(maps["anomaly_map"].numpy(), want, atol=1e-5)
    gaussian = scoring.ssim_residual_maps(x, maps["reconstruction"].numpy(), window_size=9)["anomaly_map"].numpy()
    assert np.abs(gaussian - want).max() > 1e-3
    for args, message in [(["--ssim-window", "8"], "must be an odd size >= 1 (got 8"), (["--ssim-window", "41"], "larger than the 32-pixel patch")]:
        bad = runner.invoke(export_cli, [str(tmp_path / "m.keras"), "--name", "v", "--output", out, *args])
        assert bad.exit_code == 2 and message in bad.output, (args, bad.output)


@pytest.mark.slow  # 62 s measured (2 cores shared with other jobs)
def test_cli_exports_smoothed_maps_and_records_the_sigma(ssim_model, tmp_path, image):
    """--map-sigma blurs every served map inside the graph (SciPy's gaussian_filter as the oracle)."""
    from scipy.ndimage import gaussian_filter

    ssim_model.save(tmp_path / "m.keras")
    runner = CliRunner()
    out = str(tmp_path / "ex")
    ok = runner.invoke(export_cli, [str(tmp_path / "m.keras"), "--name", "s", "--output", out, "--stride", "12",
                                    "--map-sigma", "1.5"])
    assert ok.exit_code == 0, ok.output
    meta = export.read_export_metadata(tmp_path / "ex" / "s" / "1").to_dict()
    assert meta["map_sigma"] == 1.5
    maps = tf.saved_model.load(str(tmp_path / "ex" / "s" / "1")).signatures["serving_default"](image=tf.constant(image))
    x = image.astype(np.float32) / 255.0
    raw = scoring.ssim_residual_maps(x, maps["reconstruction"].numpy(), **meta["ssim"])
    for key in ("anomaly_map", "luminance_map", "contrast_map"):
        want = gaussian_filter(raw[key].numpy(), 1.5, mode="reflect")
        np.testing.assert_allclose(maps[key].numpy(), want, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(maps["structure_map"].numpy(), gaussian_filter(raw["structure_map"].numpy(), 1.5,
                                                                              mode="reflect"), atol=1e-4)
    assert np.abs(maps["anomaly_map"].numpy() - raw["anomaly_map"].numpy()).max() > 1e-3
    plain = export.export_model(ssim_model, tmp_path / "ex", name="p", stride=12)
    assert export.read_export_metadata(plain).map_sigma == 0.0
    for args, message in [(["--map-sigma", "8"], "does not fit the 32-pixel patch"), (["--map-sigma", "-1"], "x>=0")]:
        bad = runner.invoke(export_cli, [str(tmp_path / "m.keras"), "--name", "v", "--output", out, *args])
        assert bad.exit_code == 2 and message in bad.output, (args, bad.output)
    assert not (tmp_path / "ex" / "v").exists() or not any((tmp_path / "ex" / "v").iterdir())
