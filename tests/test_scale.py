"""Resizing (``--scale`` / ``--image-size``): the options, training on resized images, and the export that
resizes inside its serving graph and returns maps at the input's size."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from skimage import io

from tfssim.cli.train import main as train_main
from tfssim.core import resize
from tfssim.training import TrainConfig, load_config

ONE_STEP = ["--patch-size", "32", "--latent-dim", "8", "--batch-size", "16", "--patches-per-epoch", "16",
            "--epochs", "1"]


def one_error_line(result, *parts: str, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "good"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:80, :96]
    for i in range(4):
        img = 0.5 + 0.3 * np.sin(xx / 3.0 + i) * np.cos(yy / 5.0) + rng.normal(0, 0.05, (80, 96))
        io.imsave(folder / f"img{i}.png", (np.clip(img, 0, 1) * 255).astype(np.uint8), check_contrast=False)
    return folder


# --- the size rule (no TensorFlow) -----------------------------------------------------------


def test_size_rule_and_smallest_input() -> None:
    assert resize.target_size(2048, 2448, 0.5) == (1024, 1224)
    assert resize.target_size(777, 1001, 0.5) == (389, 501)  # 388.5 -> 389: half up
    assert resize.target_size(10, 20, 1.0, image_size=(256, 255)) == (256, 255)
    for patch, scale in ((128, 0.5), (32, 0.3), (32, 0.7), (128, 1.0), (16, 0.123)):
        n = resize.min_input_size(patch, scale)
        assert resize.scaled_length(n, scale) >= patch and resize.scaled_length(n - 1, scale) < patch
    assert resize.min_input_size(128, 0.5) == 255
    assert resize.min_input_size(256, 1.0, image_size=(256, 256)) == 1
    for bad in (0, -0.5, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="scale must be a number > 0 and <= 1"):
            resize.check_scale(bad)


# --- options and config ----------------------------------------------------------------------


@pytest.mark.parametrize("args, parts", [
    (["--scale", "0"], ("--scale", "0.0 is not in the range 0<x<=1")),
    (["--scale", "-0.5"], ("--scale", "-0.5 is not in the range 0<x<=1")),
    (["--scale", "1.5"], ("--scale", "1.5 is not in the range 0<x<=1")),
    (["--image-size", "16", "40"], ("image_size (--image-size) 16 40 is smaller than the 32x32 patch",
                                    "use --image-size of at least 32 32")),
    (["--image-size", "0", "40"], ("--image-size", "0 is not in the range x>=1")),
    (["--image-size", "64"], ("'--image-size' requires 2 arguments",)),
    (["--scale", "0.5", "--image-size", "64", "64"], ("both resize the images", "give one of them")),
], ids=["scale-0", "scale-negative", "scale-above-1", "size-under-patch", "size-0", "size-one-number", "both"])
def test_bad_resize_options_exit_2_with_one_line(args: list[str], parts: tuple[str, ...], image_folder: Path,
                                                 tmp_path: Path) -> None:
    result = CliRunner().invoke(train_main, [str(image_folder), "--output", str(tmp_path / "run"), *ONE_STEP, *args])
    one_error_line(result, *parts)
    assert not (tmp_path / "run").exists()


def test_config_file_takes_scale_and_image_size_with_strict_types(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("scale: 0.5\nimage-size: [256, 200]\n")
    assert load_config(good) == {"scale": 0.5, "image_size": [256, 200]}
    for text, part in (("image_size: 256\n", "must be a list of two integers [H, W] (or null), got 256"),
                       ("image_size: [256, 256.0]\n", "must be a list of two integers"),
                       ("image_size: [256, true]\n", "must be a list of two integers"),
                       ("image_size: [256]\n", "must be a list of two integers"),
                       ("scale: '0.5'\n", "scale (--scale) must be a number > 0 and <= 1"),
                       ("scale: true\n", "scale (--scale) must be a number")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match="config file") as caught:
            load_config(bad)
        assert part in str(caught.value) and "\n" not in str(caught.value)
    config = TrainConfig(data="d", output="o", patch_size=32, image_size=[64, "48"])
    config.validate()
    assert config.image_size == (64, 48) and config.to_dict()["image_size"] == [64, 48]
    for scale in (0, 1.01, float("inf")):
        with pytest.raises(ValueError, match=r"scale \(--scale\) must be a number > 0 and <= 1"):
            TrainConfig(data="d", output="o", scale=scale).validate()


def test_config_file_scale_reaches_the_run(image_folder: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"image_size": [24, 40], "patch_size": 64}))
    result = CliRunner().invoke(train_main, [str(image_folder), "--output", str(tmp_path / "run"), "--config", str(cfg),
                                             *ONE_STEP])
    # patch 32 from the flags overrides the file's 64; image_size comes from the file
    one_error_line(result, "image_size (--image-size) 24 40", "smaller than the 32x32 patch")


@pytest.mark.slow
def test_scaled_training_records_scale_and_resume_checks_it(image_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = CliRunner().invoke(train_main, [str(image_folder), "--output", str(run), "--scale", "0.5", *ONE_STEP])
    assert result.exit_code == 0, result.output
    assert "images resized scale 0.5 (bilinear_antialias)" in result.output
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["scale"] == 0.5 and record["config"]["image_size"] is None
    assert record["resize"] == {"scale": 0.5, "image_size": None, "interpolation": "bilinear_antialias"}
    before = (run / "history.csv").read_text()
    # --resume keeps the recorded scale; giving another one is refused
    resumed = CliRunner().invoke(train_main, [str(image_folder), "--output", str(run), "--resume", *ONE_STEP])
    assert resumed.exit_code == 0, resumed.output
    assert "images resized scale 0.5" in resumed.output
    assert json.loads((run / "config.json").read_text())["config"]["scale"] == 0.5
    resumed = CliRunner().invoke(train_main, [str(image_folder), "--output", str(run), "--resume", "--scale", "1",
                                              *ONE_STEP])
    one_error_line(resumed, "scale was 0.5, now 1.0", "only --epochs may change")
    # A run from before the option (no scale key) trained on unresized images.
    del record["config"]["scale"]
    (run / "config.json").write_text(json.dumps(record))
    old = CliRunner().invoke(train_main, [str(image_folder), "--output", str(run), "--resume", "--scale", "0.5",
                                          *ONE_STEP])
    one_error_line(old, "scale was 1.0, now 0.5", "only --epochs may change")
    assert (run / "history.csv").read_text() == before
    # Images too small once scaled: named with their resized sizes, and the fix.
    small = CliRunner().invoke(train_main, [str(image_folder), "--output", str(tmp_path / "r2"), "--scale", "0.3",
                                            *ONE_STEP])
    one_error_line(small, "smaller than the 32x32 patch at --scale 0.3 (sizes after resizing)", "24x29",
                   "or a larger --scale")
    assert not (tmp_path / "r2").exists()


# --- the export: resizing inside the serving graph ---------------------------------------------

PATCH = 32
RESIZE_OPS = {"ScaleAndTranslate", "ResizeBilinear", "ResizeArea", "ResizeBicubic"}


def _pil_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The recorded method ("bilinear_antialias") by an independent implementation: PIL's
    ``Image.BILINEAR`` on float images (a triangle filter widened when shrinking), per channel."""
    from PIL import Image

    image = np.asarray(image, np.float32)
    flat = image[..., None] if image.ndim == 2 else image
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(flat[..., c]), mode="F")
                               .resize((width, height), Image.BILINEAR)) for c in range(flat.shape[-1])], axis=-1)
    return out[..., 0] if image.ndim == 2 else out


@pytest.fixture(scope="module")
def tiny_model():
    import keras

    from tfssim.models import build_model

    keras.utils.set_random_seed(0)
    return build_model("ssim", PATCH, 1, 8)


@pytest.fixture(scope="module")
def scaled_export(tiny_model, tmp_path_factory) -> Path:
    from tfssim import export

    root = tmp_path_factory.mktemp("scaled")
    return export.export_model(tiny_model, root, name="half", stride=12, training_config={"scale": 0.5})


@pytest.fixture(scope="module")
def scaled_loaded(scaled_export):
    from tfssim.serving.inference import ExportedModel

    return ExportedModel.load(scaled_export)


def _op_types(export_dir: Path) -> set[str]:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString((export_dir / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].graph_def
    return {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}


def test_recorded_method_is_pils_bilinear_filter() -> None:
    """tfssim.core.resize's method agrees with PIL's anti-aliased bilinear, shrinking and enlarging."""
    image = np.random.default_rng(0).uniform(size=(101, 77, 1)).astype(np.float32)
    for size in ((51, 39), (389, 501), (33, 32)):
        have = resize.resize_image(image, size).numpy()
        assert have.shape == (*size, 1)
        np.testing.assert_allclose(have, _pil_resize(image, *size), atol=2e-5)


@pytest.mark.slow  # exports a SavedModel (10-20 s on the shared CPU)
def test_scaled_export_metadata_and_maps_at_the_inputs_odd_size(scaled_export, scaled_loaded) -> None:
    from tfssim.export.metadata import ExportMetadata

    meta = ExportMetadata.read(scaled_export)
    assert (meta.scale, meta.image_size, meta.interpolation) == (0.5, None, "bilinear_antialias")
    assert meta.min_input_size == 63 and meta.patch_size == PATCH
    rng = np.random.default_rng(1)
    for shape in ((101, 77), (1001, 777)):
        image = (rng.uniform(size=(*shape, 1)) * 255).astype(np.uint8)
        out = scaled_loaded.predict(image)  # serving_default (uint8)
        assert out["reconstruction"].shape == (*shape, 1)
        for key in ("anomaly_map", "luminance_map", "contrast_map", "structure_map"):
            assert out[key].shape == shape and np.isfinite(out[key]).all()
    assert {"ScaleAndTranslate"} <= _op_types(scaled_export)


@pytest.mark.slow  # exports a SavedModel (10-20 s on the shared CPU)
def test_served_reconstruction_is_resize_then_unscaled_pipeline_then_resize_back(tiny_model, scaled_loaded) -> None:
    """Independently: PIL resizes by 0.5 (half-up sizes), the library's unscaled pipeline runs, PIL resizes back."""
    from tfssim.models import scoring

    image = np.random.default_rng(2).uniform(size=(101, 77, 1)).astype(np.float32)
    served = scaled_loaded.predict(image)
    small = _pil_resize(image, 51, 39)  # 50.5 -> 51, 38.5 -> 39
    maps = scoring.anomaly_maps(tiny_model, small, "ssim", PATCH, 12)
    want = _pil_resize(maps["reconstruction"].numpy(), 101, 77)
    np.testing.assert_allclose(served["reconstruction"], want, atol=1e-4)
    want_map = _pil_resize(maps["anomaly_map"].numpy(), 101, 77)
    np.testing.assert_allclose(served["anomaly_map"], want_map, atol=1e-3)


@pytest.mark.slow  # exports a SavedModel (10-20 s on the shared CPU)
def test_unscaled_export_has_no_resizing_in_its_graph(tiny_model, tmp_path: Path) -> None:
    from tfssim import export
    from tfssim.export.metadata import ExportMetadata
    from tfssim.models import scoring
    from tfssim.serving.inference import ExportedModel

    path = export.export_model(tiny_model, tmp_path, name="full", stride=12, training_config={"scale": 1.0})
    meta = ExportMetadata.read(path)
    assert (meta.scale, meta.image_size, meta.interpolation, meta.min_input_size) == (1.0, None, None, PATCH)
    assert not RESIZE_OPS & _op_types(path)
    image = np.random.default_rng(3).uniform(size=(45, 77, 1)).astype(np.float32)
    want = scoring.anomaly_maps(tiny_model, image, "ssim", PATCH, 12)
    have = ExportedModel.load(path).predict(image)
    np.testing.assert_allclose(have["anomaly_map"], want["anomaly_map"].numpy(), atol=1e-5)


@pytest.mark.slow  # exports a SavedModel (10-20 s on the shared CPU)
def test_too_small_after_scaling_names_the_smallest_input(scaled_loaded, scaled_export) -> None:
    from tfssim.export.metadata import ExportMetadata
    from tfssim.serving.client import ServingClient

    image = np.zeros((62, 200, 1), np.float32)  # 62 * 0.5 = 31 < 32
    with pytest.raises(ValueError, match="must be at least 63: the model scores images resized by 0.5, which must "
                                         "hold its 32x32 patch"):
        scaled_loaded.predict(image)
    assert scaled_loaded.predict(np.zeros((63, 63, 1), np.float32))["anomaly_map"].shape == (63, 63)
    # a client checks with the export's own rule before sending anything (no server here)
    client = ServingClient("http://127.0.0.1:9", "half", metadata=ExportMetadata.read(scaled_export))
    with pytest.raises(ValueError, match=r"height and width must be at least 63 \(its 32x32 patch once resized by 0.5\)"):
        client.predict(image)


@pytest.mark.slow  # exports a SavedModel (10-20 s on the shared CPU)
def test_whole_image_export_round_trip(tiny_model, tmp_path: Path) -> None:
    """image_size = patch: every request is one tile, resized to 32x32, reconstructed, resized back."""
    from tfssim import export
    from tfssim.export.metadata import ExportMetadata
    from tfssim.serving.inference import ExportedModel

    path = export.export_model(tiny_model, tmp_path, name="whole", stride=30, image_size=(PATCH, PATCH))
    meta = ExportMetadata.read(path)
    assert (meta.scale, meta.image_size, meta.interpolation, meta.min_input_size) == (1.0, [32, 32],
                                                                                      "bilinear_antialias", 1)
    model = ExportedModel.load(path)
    for shape in ((101, 77), (20, 45)):  # shrunk and (partly) enlarged
        image = np.random.default_rng(4).uniform(size=(*shape, 1)).astype(np.float32)
        served = model.predict(image)
        assert served["reconstruction"].shape == (*shape, 1) and served["anomaly_map"].shape == shape
        whole = tiny_model(_pil_resize(image, PATCH, PATCH)[None], training=False).numpy()[0]
        np.testing.assert_allclose(served["reconstruction"], _pil_resize(whole, *shape), atol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": 0}, "scale must be a number > 0 and <= 1"),
    ({"scale": 1.5}, "scale must be a number > 0 and <= 1"),
    ({"image_size": (16, 64)}, "image size 16x64 is smaller than the model's 32x32 patch"),
    ({"image_size": (64,)}, "image size must be two positive integers"),
    ({"scale": 0.5, "image_size": (64, 64)}, "give one of them"),
    ({"training_config": {"scale": "half"}}, "scale must be a number > 0 and <= 1 .*, got 'half'"),
])
def test_export_refuses_bad_resizing(tiny_model, tmp_path: Path, kwargs: dict, message: str) -> None:
    from tfssim import export

    with pytest.raises(ValueError, match=message):
        export.export_model(tiny_model, tmp_path, name="bad", **kwargs)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


@pytest.mark.slow  # exports a SavedModel (10-20 s on the shared CPU)
def test_metadata_checks_the_resizing_keys(scaled_export) -> None:
    from tfssim.export.metadata import ExportMetadata

    values = ExportMetadata.read(scaled_export).to_dict()
    for change, message in (({"scale": 0}, "'scale' must be a number > 0 and <= 1"),
                            ({"scale": True}, "'scale' must be a number"),
                            ({"image_size": [32]}, "'image_size' must be a list of two positive integers"),
                            ({"image_size": [64, 64]}, "both scale 0.5 and image_size"),
                            ({"interpolation": None}, "names no 'interpolation'")):
        with pytest.raises(ValueError, match=message):
            ExportMetadata.from_dict({**values, **change})
    old = {k: v for k, v in values.items() if k not in ("scale", "image_size", "interpolation")}
    assert ExportMetadata.from_dict(old).min_input_size == PATCH  # exports from before: no resizing


# --- calibrate, predict, evaluate and tune work on the served full-size maps, unchanged ----------


@pytest.mark.slow  # three CLIs on a scaled export (about 20 s on the shared CPU)
def test_calibrate_predict_evaluate_report_at_full_resolution(scaled_export, dataset, tmp_path: Path) -> None:
    """The `dataset` fixture (conftest.py): 64x80 brick images, scored at 32x40 by the scale-0.5 export."""
    import shutil

    from sklearn.metrics import roc_auc_score

    from tfssim import data
    from tfssim.cli.calibrate import main as calibrate_cli
    from tfssim.cli.evaluate import main as evaluate_cli
    from tfssim.cli.predict import main as predict_cli
    from tfssim.serving.inference import ExportedModel

    version = shutil.copytree(scaled_export, tmp_path / "half" / "1")
    result = CliRunner().invoke(calibrate_cli, [str(version), str(dataset / "val"), "--fpr", "0.05"])
    assert result.exit_code == 0, result.output
    version = Path(version).parent / "2"  # calibrate writes its threshold as a new version
    model = ExportedModel.load(version)
    threshold = model.threshold
    # The threshold's FPR, counted independently over the full-size served maps of the val images.
    val = [data.read_image(p, 1) for p in data.list_images(dataset / "val")]
    maps = [model.predict(image)["anomaly_map"] for image in val]
    assert all(m.shape == (64, 80) for m in maps)
    share = sum(int((m > threshold).sum()) for m in maps) / sum(m.size for m in maps)
    assert abs(share - 0.05) < 0.005, share

    out = tmp_path / "pred"
    result = CliRunner().invoke(predict_cli, [str(version), str(dataset / "test" / "*.png"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    for path in data.list_images(dataset / "test"):
        assert io.imread(out / f"{path.stem}_anomaly_map.tif").shape == (64, 80)
        assert io.imread(out / f"{path.stem}_mask.png").shape == (64, 80)

    result = CliRunner().invoke(evaluate_cli, [str(dataset), str(version), "--output", str(tmp_path / "eval"),
                                               "--fpr", "0.05"])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "eval" / "results.json").read_text())["exports"]["half/2"]
    split = data.load_dataset(dataset)
    tests = [data.read_image(p, 1) for p in split.test]
    masks = data.read_test_masks(split.test_masks, tests)
    served = [model.predict(image)["anomaly_map"] for image in tests]
    want = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in served]))
    # Streamed (issue 24): within the histogram's stated bound of the exact AUC.
    assert scores["pixel_auroc_error_bound"] <= 1e-3
    assert scores["pixel_auroc"] == pytest.approx(want, abs=scores["pixel_auroc_error_bound"] + 1e-12)


@pytest.mark.slow  # tunes and re-exports (about 40 s on the shared CPU)
def test_tune_on_a_scaled_export_thresholds_the_served_maps(tiny_model, scaled_export, tmp_path: Path) -> None:
    import shutil

    from scipy.ndimage import gaussian_filter

    from tfssim.evaluation import tuning
    from tfssim.export.metadata import ExportMetadata
    from tfssim.serving import postprocess
    from tfssim.serving.inference import ExportedModel

    source = tmp_path / "model.keras"
    tiny_model.save(source)
    version = shutil.copytree(scaled_export, tmp_path / "half" / "1")
    model = ExportedModel.load(version)
    rng = np.random.default_rng(5)
    images = [np.clip(0.5 + 0.1 * rng.standard_normal((70, 90)), 0, 1).astype(np.float32) for _ in range(2)]
    result = tuning.tune(model, images, copies=1, sigmas=[0.0, 2.0], openings=[0], min_areas=[0], progress=False)
    # One map candidate per sigma: the served map (its window cannot be rescored at full size).
    assert {(c["window_size"], c["weighting"]) for c in result.map_candidates} == {(11, "gaussian")}
    assert sorted(c["map_sigma"] for c in result.map_candidates) == [0.0, 2.0]
    sigma = result.choice.map_sigma
    # At the stride the tuner chose (pass 1d compares the export's with larger ones), through serve_with_stride.
    served = [model.predict(image, stride=result.choice.stride)["anomaly_map"] for image in images]
    smoothed = [gaussian_filter(m, sigma, mode="reflect", truncate=4.0) if sigma else m for m in served]
    assert result.choice.threshold == pytest.approx(postprocess.threshold_at_fpr(smoothed, 0.01), abs=1e-4)
    # The tuned version keeps resizing by 0.5 and serves the maps the threshold was set on.
    new = tuning.write_tuned_export(model, result, tuning.load_source(model, source, check_image=images[0]))
    meta = ExportMetadata.read(new)
    assert (meta.scale, meta.image_size, meta.interpolation, meta.map_sigma) == (0.5, None, "bilinear_antialias", sigma)
    tuned = ExportedModel.load(new).predict(images[0])["anomaly_map"]
    np.testing.assert_allclose(tuned, smoothed[0], atol=1e-4)


@pytest.mark.slow  # two exports (about 30 s on the shared CPU)
def test_benchmark_scale_script_serves_both_scales(capsys) -> None:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_scale.py"
    spec = importlib.util.spec_from_file_location("tfssim_test_benchmark_scale", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    result = module.main(["--height", "101", "--width", "77", "--patch-size", "32", "--latent-dim", "8",
                          "--stride", "16", "--repeats", "1"])
    # tiles per axis: ceil((n - 32) / 16) + 1 at 101x77 and at 51x39
    assert (result["tiles_full"], result["tiles_scaled"]) == (6 * 4, 3 * 2)
    assert result["ratio"] > 0 and "ratio  : scale 1 takes" in capsys.readouterr().out


@pytest.mark.slow  # trains one step and exports (about 30 s on the shared CPU)
def test_whole_image_model_through_the_clis(image_folder: Path, tmp_path: Path) -> None:
    """--image-size 32 32 with --patch-size 32: the autoencoder sees whole (resized) images; the export
    resizes each request to 32x32, reconstructs it as one tile and returns maps at the request's size."""
    import keras

    from tfssim.cli.export import main as export_main
    from tfssim.export.metadata import ExportMetadata
    from tfssim.serving.inference import ExportedModel

    run = tmp_path / "run"
    result = CliRunner().invoke(train_main, [str(image_folder), "--output", str(run), "--image-size", "32", "32",
                                             "--no-augment", *ONE_STEP])
    assert result.exit_code == 0, result.output
    assert "images resized to 32x32 (bilinear_antialias)" in result.output
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["image_size"] == [32, 32] and record["resize"]["image_size"] == [32, 32]
    result = CliRunner().invoke(export_main, [str(run), "--name", "whole", "--output", str(tmp_path / "exp")])
    assert result.exit_code == 0, result.output
    version = Path(result.output.strip().splitlines()[-1])
    meta = ExportMetadata.read(version)
    assert (meta.image_size, meta.scale, meta.interpolation, meta.patch_size) == ([32, 32], 1.0,
                                                                                  "bilinear_antialias", 32)
    image = io.imread(sorted(image_folder.iterdir())[0]).astype(np.float32)[..., None] / 255  # 80x96
    served = ExportedModel.load(version).predict(image)
    assert served["reconstruction"].shape == (80, 96, 1) and served["anomaly_map"].shape == (80, 96)
    trained = keras.saving.load_model(run / "best.keras", compile=False)
    whole = trained(_pil_resize(image, 32, 32)[None], training=False).numpy()[0]
    np.testing.assert_allclose(served["reconstruction"], _pil_resize(whole, 80, 96), atol=1e-4)


@pytest.mark.slow  # exports a SavedModel
def test_export_cli_takes_the_resizing_for_a_keras_file(tiny_model, tmp_path: Path) -> None:
    """A .keras file records no --scale: tfssim-export --scale / --image-size put it in the graph."""
    from tfssim.cli.export import main as export_main
    from tfssim.export.metadata import ExportMetadata
    from tfssim.serving.inference import ExportedModel

    keras_file = tmp_path / "model.keras"
    tiny_model.save(keras_file)
    result = CliRunner().invoke(export_main, [str(keras_file), "--name", "m", "-o", str(tmp_path / "out"),
                                              "--scale", "0.5"])
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip().splitlines()[-1])
    assert ExportMetadata.read(path).scale == 0.5
    image = np.random.default_rng(5).uniform(size=(101, 77, 1)).astype(np.float32)
    assert ExportedModel.load(path).predict(image)["anomaly_map"].shape == (101, 77)
    result = CliRunner().invoke(export_main, [str(keras_file), "--name", "m", "-o", str(tmp_path / "out"),
                                              "--scale", "0.5", "--image-size", "64", "64"])
    one_error_line(result, "give one of them")
