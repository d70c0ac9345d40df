"""Border handling (``border="reflect"``) and tile blending (``blend="gaussian"``): the library and
the served graph against NumPy / SciPy / scikit-image references, the metadata, the CLI, the tuner."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from scipy.signal.windows import gaussian
from skimage.metrics import structural_similarity

from tfssim.core import tiling
from tfssim.data import defects
from tfssim.evaluation import tuning
from tfssim.export.metadata import ExportMetadata
from tfssim.models import build_model, scoring

KERNEL = np.array([[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]], np.float32)


def tile_model_np(tile: np.ndarray) -> np.ndarray:
    """A 'model' whose tiles disagree at their edges (zero-padded blur) and show misplacement (ramp)."""
    p = tile.shape[0]
    padded = np.pad(tile[..., 0], 1)
    out = sum(KERNEL[i, j] * padded[i:i + p, j:j + p] for i in range(3) for j in range(3))
    return (out + np.linspace(0, 0.3, p, dtype=np.float32)[None, :])[..., None]


def tile_model_tf(tiles: tf.Tensor) -> tf.Tensor:
    p = tiles.shape[1]
    out = tf.nn.conv2d(tiles, tf.constant(KERNEL)[..., None, None], strides=1, padding="SAME")
    return out + tf.linspace(0.0, 0.3, p)[None, None, :, None]


def origins(n: int, patch: int, stride: int) -> list[int]:
    out = list(range(0, n - patch + 1, stride))
    return out if out[-1] == n - patch else out + [n - patch]


def weighted_overlap_add(image: np.ndarray, patch: int, stride: int, fn, weight_1d: np.ndarray) -> np.ndarray:
    """Plain loops: sum of w * tile output over the tiles covering a pixel, divided by the sum of w."""
    w2 = np.outer(weight_1d, weight_1d)[..., None].astype(np.float64)
    total = np.zeros(image.shape, np.float64)
    norm = np.zeros(image.shape[:2] + (1,))
    for y in origins(image.shape[0], patch, stride):
        for x in origins(image.shape[1], patch, stride):
            total[y:y + patch, x:x + patch] += w2 * fn(image[y:y + patch, x:x + patch])
            norm[y:y + patch, x:x + patch] += w2
    return total / norm


@pytest.mark.parametrize("patch", [32, 33, 128])
def test_blend_weights_are_scipys_gaussian_window_and_ones(patch):
    np.testing.assert_allclose(tiling.blend_weights(patch, "gaussian"), gaussian(patch, std=patch / 8), rtol=1e-6)
    np.testing.assert_array_equal(tiling.blend_weights(patch, "mean"), np.ones(patch))
    edge = tiling.blend_weights(patch, "gaussian")[0]
    assert 1e-4 < edge < 1e-3  # small but never 0: border pixels covered by tile edges only stay defined
    with pytest.raises(ValueError, match="unknown tile blend 'median'; choose one of mean, gaussian"):
        tiling.blend_weights(patch, "median")


@pytest.mark.parametrize("size,stride", [((130, 257), 30), ((96, 200), 17), ((32, 45), 32)])
def test_blended_reconstruction_equals_weighted_overlap_add_in_numpy(size, stride):
    image = np.random.default_rng(0).random(size + (1,)).astype(np.float32)
    graph = tf.function(lambda x, s: tiling.reconstruct_blends(tile_model_tf, x, 32, s, chunk_size=7),
                        input_signature=[tf.TensorSpec([None, None, 1], tf.float32), tf.TensorSpec([], tf.int32)])
    both = graph(image, stride)
    for blend in ("mean", "gaussian"):
        want = weighted_overlap_add(image, 32, stride, tile_model_np, tiling.blend_weights(32, blend))
        np.testing.assert_allclose(both[blend].numpy(), want, atol=2e-6, err_msg=blend)
        one = tiling.reconstruct(tile_model_tf, image, 32, stride, chunk_size=5, blend=blend)
        np.testing.assert_allclose(one.numpy(), want, atol=2e-6, err_msg=blend)
    # The blends differ where tiles overlap and disagree (the test model's tiles do at their edges).
    assert np.abs(both["gaussian"].numpy() - both["mean"].numpy()).max() > 1e-3 or stride == 32


def test_gaussian_blend_with_samples_weights_every_sample_alike():
    image = np.random.default_rng(1).random((50, 70, 1)).astype(np.float32)
    two = lambda t: tf.stack([tile_model_tf(t), 2.0 * tile_model_tf(t)])  # noqa: E731
    out = tiling.reconstruct(two, image, 32, 12, chunk_size=9, samples=2, blend="gaussian").numpy()
    want = weighted_overlap_add(image, 32, 12, tile_model_np, tiling.blend_weights(32, "gaussian"))
    np.testing.assert_allclose(out[0], want, atol=2e-6)
    np.testing.assert_allclose(out[1], 2 * want, atol=4e-6)


def model_np(model: keras.Model):
    return lambda tile: model(tile[None], training=False).numpy()[0].astype(np.float64)


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
def test_reflect_border_maps_equal_numpy_and_scikit_image(blend):
    """Mirror by half a patch (NumPy's reflect), tile and average, score with scikit-image's SSIM
    on the mirrored image, crop back: the library's maps, for the SSIM and the l2 residual."""
    keras.utils.set_random_seed(0)
    model = build_model("ssim", 32, 1, 8)
    image = np.random.default_rng(2).random((45, 61, 1)).astype(np.float32)
    got = scoring.anomaly_maps(model, image, "ssim", stride=12, border="reflect", blend=blend)
    pad = scoring.border_padding(32, "reflect")
    assert pad == 16
    mirrored = np.pad(image, [(pad, pad), (pad, pad), (0, 0)], mode="reflect")
    np.testing.assert_array_equal(scoring.pad_border(image, pad), mirrored)
    recon = weighted_overlap_add(mirrored, 32, 12, model_np(model), tiling.blend_weights(32, blend))
    _, ssim_map = structural_similarity(mirrored[..., 0], recon[..., 0].astype(np.float32), full=True,
                                        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    crop = (slice(pad, -pad), slice(pad, -pad))
    np.testing.assert_allclose(got["reconstruction"].numpy(), recon[crop], atol=2e-5)
    np.testing.assert_allclose(got["anomaly_map"].numpy(), 1 - ssim_map[crop], atol=1e-4)
    l2 = scoring.anomaly_maps(model, image, "l2", stride=12, border="reflect", blend=blend)["anomaly_map"].numpy()
    np.testing.assert_allclose(l2, ((mirrored - recon)[crop][..., 0]) ** 2, atol=1e-5)
    plain = scoring.anomaly_maps(model, image, "ssim", stride=12, blend=blend)["anomaly_map"].numpy()
    assert np.abs(plain - got["anomaly_map"].numpy())[:4].max() > 1e-3  # the border is scored differently
    with pytest.raises(ValueError, match="unknown border handling 'wrap'; choose one of none, reflect"):
        scoring.anomaly_maps(model, image, "ssim", stride=12, border="wrap")
    # The image itself must hold a patch, mirrored border or not (one line, not TensorFlow's MirrorPad error).
    for side in (20, 10):
        with pytest.raises(ValueError, match=f"image of {side}x61 pixels is smaller than the 32x32 patch"):
            scoring.anomaly_maps(model, image[:side], "ssim", stride=12, border="reflect")


def test_metadata_types_border_and_blend():
    base = {"format": 1, "name": "m", "version": 1, "kind": "ssim", "residual": "ssim", "patch_size": 32,
            "channels": 1, "stride": 8}
    md = ExportMetadata.from_dict(base, source="x")
    assert (md.border, md.blend) == ("none", "mean")  # exports from before the keys: the paper's tiling
    assert ExportMetadata.from_dict({**base, "border": "reflect", "blend": "gaussian"}, source="x").blend == "gaussian"
    for key, bad in (("border", "mirror"), ("blend", 1), ("border", None)):
        with pytest.raises(ValueError, match=f"'{key}' must be one of"):
            ExportMetadata.from_dict({**base, key: bad}, source="x")


@pytest.mark.slow  # about 25 s: two exports
def test_export_serves_the_library_maps_and_records_the_tiling(tmp_path):
    from tfssim.cli.export import main as export_main
    from tfssim.export import export_model
    from tfssim.serving.inference import ExportedModel

    keras.utils.set_random_seed(0)
    model = build_model("ssim", 32, 1, 8)
    model.save(tmp_path / "m.keras")
    image = np.random.default_rng(3).random((41, 77, 1)).astype(np.float32)
    path = export_model(model, tmp_path / "exp", name="m", stride=10, border="reflect", blend="gaussian", map_sigma=1.0)
    export = ExportedModel.load(path)
    assert (export.metadata.border, export.metadata.blend) == ("reflect", "gaussian")
    served = export.predict(image)
    want = scoring.anomaly_maps(model, image, "ssim", stride=10, border="reflect", blend="gaussian", map_sigma=1.0)
    for key in ("reconstruction", "anomaly_map", "structure_map"):
        np.testing.assert_allclose(served[key], want[key].numpy(), atol=1e-5, err_msg=key)
    result = CliRunner().invoke(export_main, [str(tmp_path / "m.keras"), "--name", "c", "--output",
                                              str(tmp_path / "exp"), "--stride", "10", "--border", "reflect"])
    assert result.exit_code == 0, result.output
    md = json.loads((tmp_path / "exp" / "c" / "1" / "assets" / "tfssim.json").read_text())
    assert (md["border"], md["blend"]) == ("reflect", "mean")
    bad = CliRunner().invoke(export_main, [str(tmp_path / "m.keras"), "--name", "d", "--output",
                                           str(tmp_path / "exp"), "--blend", "median"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert not (tmp_path / "exp" / "d").exists()


@pytest.mark.slow  # about 15 s: one export
def test_the_tuners_mirrored_maps_are_the_served_ones(tmp_path):
    """What the tuner scores for a tiling it does not serve (the Keras model's reconstruction of the
    mirrored image, kept with a margin of the window's radius) equals what an export with that
    tiling serves, for every SSIM window it tries."""
    from tfssim.export import export_model
    from tfssim.serving.inference import ExportedModel

    keras.utils.set_random_seed(0)
    model = build_model("ssim", 32, 1, 8)
    image = np.random.default_rng(4).random((40, 52, 1)).astype(np.float32)
    plain = ExportedModel.load(export_model(model, tmp_path, name="p", stride=8))
    tilings = [("none", "mean"), ("reflect", "gaussian")]
    margins = {"none": 0, "reflect": 7}  # the radius of the widest window tried, 15
    bases = tuning._Reconstructions(plain, model, tilings, margins, "reconstruction")(image, "x")
    maps = tuning._Maps("ssim", dict(plain.metadata.ssim), served=False, workers=1)
    for window, weighting in ((7, "gaussian"), (15, "uniform")):
        got = maps.raw(image[None], bases[1][None], (window, weighting), margins["reflect"])[0]
        want = scoring.anomaly_maps(model, image, "ssim", stride=8, border="reflect", blend="gaussian",
                                    ssim_kwargs={"window_size": window, "weighting": weighting})["anomaly_map"]
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, err_msg=f"{window} {weighting}")
    np.testing.assert_allclose(bases[0], plain.predict(image)["reconstruction"], atol=1e-5)
    with pytest.raises(ValueError, match="other tilings need the export's Keras model"):
        tuning.tune(plain, [image], borders=["reflect"], progress=False)


def test_synthetic_defects_reach_the_image_border():
    """The tuner can judge border handling only if its defects touch the border band too."""
    image = np.random.default_rng(5).random((96, 96)).astype(np.float32)
    touching, band = 0, 8
    for k in range(40):
        _, mask, _ = defects.paint_defects(image, np.random.default_rng(k), 3, size_range=(6, 24))
        inner = mask[band:-band, band:-band].sum()
        touching += int(mask.sum() > inner)
        assert mask.any()
    assert touching >= 10, touching  # a band of 8 px holds 31 % of a 96-px image


@pytest.mark.slow  # about 35 s: an export and four small tunes
def test_tuning_an_export_that_mirrors_its_border(tmp_path):
    """An export whose own border is reflect: with its Keras model the tuner recomputes its maps
    (they match the served ones) and compares the other tilings; without it the served map is the
    one candidate map (windows are not swept) and other tilings are refused in one line."""
    from tfssim.export import export_model
    from tfssim.serving.inference import ExportedModel

    keras.utils.set_random_seed(0)
    model = build_model("ssim", 32, 1, 8)
    export = ExportedModel.load(export_model(model, tmp_path, name="r", stride=16, border="reflect"))
    images = [np.random.default_rng(6).random((48, 56)).astype(np.float32)]
    settings = dict(copies=1, seed=0, size_range=(4, 12), progress=False, cache_dir=tmp_path)
    assert {(c["border"], c["blend"]) for c in tuning.tune(export, images, source_model=model, **settings)
            .map_candidates} == {("reflect", "mean"), ("reflect", "gaussian")}  # by default, its own border only
    full = tuning.tune(export, images, source_model=model, borders=["none", "reflect"], **settings)
    assert full.map_candidates[0]["border"] == "reflect"  # the export's own tiling comes first
    assert {(c["border"], c["blend"]) for c in full.map_candidates} == {
        ("reflect", "mean"), ("none", "mean"), ("none", "gaussian"), ("reflect", "gaussian")}
    own = full.synthetic["before"]
    assert (own["border"], own["blend"], own["window_size"]) == ("reflect", "mean", 11)
    served_only = tuning.tune(export, images, **settings)
    windows = {(c["window_size"], c["weighting"], c["border"], c["blend"]) for c in served_only.map_candidates}
    assert windows == {(11, "gaussian", "reflect", "mean")}
    # The served map and the Keras model's recomputed one give the same AUROC at the export's own
    # setting (sigma 0): the tuner's maps are the served ones.
    first = next(c for c in full.map_candidates if c["border"] == "reflect" and c["blend"] == "mean"
                 and (c["window_size"], c["weighting"], c["map_sigma"]) == (11, "gaussian", 0.0))
    assert first["pixel_auroc"] == pytest.approx(served_only.map_candidates[0]["pixel_auroc"], abs=1e-4)
    with pytest.raises(ValueError, match="other tilings need the export's Keras model"):
        tuning.tune(export, images, blends="gaussian", **settings)


def test_the_tuner_paints_the_large_families_when_asked_and_reports_them(exports):
    """``shading`` and ``missing`` are not painted by default (they would dominate the AUROC the map
    is chosen by); asked for, they are painted up to 4x the drawn size and reported by family, with
    size bins that reach what was painted."""
    from tfssim.serving.inference import ExportedModel

    export = ExportedModel.load(exports[0])
    images = [np.random.default_rng(7).random((64, 72)).astype(np.float32)]
    settings = dict(copies=2, seed=1, size_range=(4, 12), progress=False, sigmas=[0.0], openings=[0])
    default = tuning.tune(export, images, **settings)
    assert set(default.settings["defects"]) <= set(defects.LOCAL_FAMILIES)
    large = tuning.tune(export, images, families=["shading", "missing"], **settings)
    assert set(large.operating_point["region_recall_by_family"]) == {"shading", "missing"}
    assert large.operating_point["region_recall_by_size"][-1]["max"] == pytest.approx(48)  # 12 px x 4
    painted = tuning.synthetic_copy(images[0], 0, 0, seed=1, count=3, size_range=(4, 12), families=["shading"])
    assert max(info["diameter"] for info in painted[2]) > 12
