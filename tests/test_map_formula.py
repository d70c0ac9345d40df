"""Map formulas (``tfssim.core.map_formula``): the record's rules, the library and served maps against
SciPy / scikit-image references, the tuner's normalisation and choice, the metadata and the CLI."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from tfssim.core.map_formula import FORMULAS, PLAIN, MapFormula
from tfssim.evaluation import tuning
from tfssim.export.metadata import ExportMetadata
from tfssim.models import build_model, scoring


def ssim_map_skimage(x: np.ndarray, y: np.ndarray, window: int, sigma: float) -> np.ndarray:
    """``1 - SSIM`` of single-channel images, Gaussian window of ``window`` taps (scikit-image's
    ``truncate`` set so that its kernel has exactly those taps)."""
    radius = window // 2
    _, full = structural_similarity(x, y, full=True, gaussian_weights=True, sigma=sigma, truncate=radius / sigma,
                                    use_sample_covariance=False, data_range=1.0)
    return 1.0 - full


def lowfreq_scipy(x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    return np.abs(gaussian_filter((x - y).astype(np.float64), sigma, mode="reflect", truncate=4.0))


def test_the_record_checks_its_fields_and_round_trips():
    low = MapFormula("ssim_lowfreq", combine="sum", weight=0.25, lowfreq_sigma=8, offsets=(0.1, 0.0),
                     scales=(0.2, 0.01))
    assert MapFormula.of(json.loads(json.dumps(low.to_dict()))) == low
    assert MapFormula.of(None) == PLAIN == MapFormula.of("ssim") == MapFormula.of({"name": "ssim"})
    assert PLAIN.to_dict() == {"name": "ssim"} and PLAIN.plain and not low.plain
    assert low.describe() == "ssim_lowfreq (sigma 8, sum, weight 0.25)"
    multi = MapFormula("ssim_multiscale", window_size=23)
    second = multi.second_ssim({"window_size": 11, "sigma": 1.5, "weighting": "uniform"})
    assert (second.window_size, second.sigma, second.weighting) == (23, pytest.approx(1.5 * 23 / 11), "uniform")
    assert (low.reach(), multi.reach()) == (32, 11)
    for bad, message in [
        ({"name": "ssim_blur"}, "unknown map formula 'ssim_blur'"),
        ({"name": "ssim_lowfreq"}, "'ssim_lowfreq' needs lowfreq_sigma"),
        ({"name": "ssim", "window_size": 23}, "'ssim' takes no window_size"),
        ({"name": "ssim_multiscale", "window_size": 22}, "window_size must be an odd integer >= 3"),
        ({"name": "ssim_lowfreq", "lowfreq_sigma": float("nan")}, "lowfreq_sigma must be a number > 0"),
        ({"name": "ssim_lowfreq", "lowfreq_sigma": 4, "scales": [1, 0]}, "scales must be positive"),
        ({"name": "ssim_lowfreq", "lowfreq_sigma": 4, "offsets": [1]}, "offsets must be two finite numbers"),
        ({"name": "ssim_lowfreq", "lowfreq_sigma": 4, "weight": 1}, "weight must be a number between 0 and 1"),
        ({"name": "ssim_lowfreq", "lowfreq_sigma": 4, "combine": "min"}, "combine must be one of max, sum"),
        ({"name": "ssim", "shift": 1}, r"unknown map formula key\(s\) \['shift'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            MapFormula.of(bad)


@pytest.mark.parametrize("combine,weight", [("max", 0.5), ("sum", 0.25), ("sum", 0.75)])
def test_combination_is_numpys_max_or_weighted_sum_of_the_normalised_terms(combine, weight):
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 7)), rng.random((5, 7)) * 0.1
    formula = MapFormula("ssim_lowfreq", combine=combine, weight=weight, lowfreq_sigma=4, offsets=(0.3, 0.01),
                         scales=(0.5, 0.04))
    na, nb = (a - 0.3) / 0.5, (b - 0.01) / 0.04
    want = np.maximum(na, nb) if combine == "max" else (1 - weight) * na + weight * nb
    np.testing.assert_allclose(formula.combine_maps(a, b), want, rtol=1e-12)
    # The served graph runs the same expression on tensors.
    import tensorflow as tf

    got = formula.combine_maps(tf.constant(a, tf.float32), tf.constant(b, tf.float32)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("border", ["none", "reflect"])
def test_library_maps_equal_scipy_and_scikit_image(border):
    """The formula maps of :func:`tfssim.models.scoring.anomaly_maps`, recomputed from its reconstruction of
    the (mirrored) image with scikit-image's SSIM and SciPy's Gaussian filter, cropped back."""
    keras.utils.set_random_seed(0)
    model = build_model("ssim", 32, 1, 8)
    image = np.random.default_rng(1).random((45, 61, 1)).astype(np.float32)
    pad = scoring.border_padding(32, border)
    mirrored = np.pad(image, [(pad, pad), (pad, pad), (0, 0)], mode="reflect")
    # The mirrored border is tiling the mirrored image: its reconstruction is the plain one of that image.
    recon = scoring.anomaly_maps(model, mirrored, "ssim", stride=12)["reconstruction"].numpy()
    x, r = mirrored[..., 0].astype(np.float64), recon[..., 0].astype(np.float64)
    crop = (slice(pad, x.shape[0] - pad), slice(pad, x.shape[1] - pad))
    first = ssim_map_skimage(x, r, 11, 1.5)
    formulas = {
        MapFormula("ssim_lowfreq", combine="max", lowfreq_sigma=3.0, offsets=(0.2, 0.01), scales=(0.3, 0.02)):
            lowfreq_scipy(x, r, 3.0),
        MapFormula("ssim_multiscale", combine="sum", weight=0.25, window_size=23, offsets=(0.1, 0.05),
                   scales=(0.4, 0.2)): ssim_map_skimage(x, r, 23, 1.5 * 23 / 11),
    }
    for formula, second in formulas.items():
        n1 = (first - formula.offsets[0]) / formula.scales[0]
        n2 = (second - formula.offsets[1]) / formula.scales[1]
        want = np.maximum(n1, n2) if formula.combine == "max" else 0.75 * n1 + 0.25 * n2
        got = scoring.anomaly_maps(model, image, "ssim", stride=12, border=border, map_formula=formula)
        np.testing.assert_allclose(got["anomaly_map"].numpy(), want[crop], atol=5e-4, err_msg=formula.name)
        # The SSIM components stay those of the first SSIM; smoothing comes after the formula.
        np.testing.assert_allclose(got["structure_map"].numpy(),
                                   scoring.anomaly_maps(model, image, "ssim", stride=12, border=border)
                                   ["structure_map"].numpy(), atol=1e-6)
        smoothed = scoring.anomaly_maps(model, image, "ssim", stride=12, border=border, map_formula=formula,
                                        map_sigma=2.0)["anomaly_map"].numpy()
        np.testing.assert_allclose(smoothed, gaussian_filter(got["anomaly_map"].numpy(), 2.0, mode="reflect"),
                                   atol=5e-4)
    with pytest.raises(ValueError, match="needs an SSIM model, not a 'l2' one"):
        scoring.anomaly_maps(model, image, "l2", stride=12, map_formula=MapFormula("ssim_multiscale", window_size=23))
    with pytest.raises(ValueError, match="reads 40 pixels around each pixel, which does not fit the 32-pixel patch"):
        scoring.anomaly_maps(model, image, "ssim", stride=12, map_formula=MapFormula("ssim_lowfreq", lowfreq_sigma=10))


def test_metadata_types_the_map_formula():
    base = {"format": 1, "name": "m", "version": 1, "kind": "ssim", "residual": "ssim", "patch_size": 32,
            "channels": 1, "stride": 8}
    assert ExportMetadata.from_dict(base, source="x").map_formula is None  # older exports: the paper's map
    record = MapFormula("ssim_multiscale", window_size=23).to_dict()
    assert ExportMetadata.from_dict({**base, "map_formula": record}, source="x").map_formula == record
    for bad in ({"name": "ssim_lowfreq"}, "ssim", {"name": "ssim", "scales": [0, 1]}, [1],
                {"name": "ssim", "scales": [1e-320, 1]}):
        with pytest.raises(ValueError, match="'map_formula' must be a map formula record"):
            ExportMetadata.from_dict({**base, "map_formula": bad}, source="x")
    # The formula against the rest of the file: an SSIM residual, a reach within the patch.
    with pytest.raises(ValueError, match="map_formula 'ssim_multiscale' needs residual 'ssim', got 'vae'"):
        ExportMetadata.from_dict({**base, "residual": "vae", "map_formula": record}, source="x")
    wide = MapFormula("ssim_lowfreq", lowfreq_sigma=8).to_dict()
    with pytest.raises(ValueError, match="reads 32 pixels around each pixel, more than its 32x32 patch allows"):
        ExportMetadata.from_dict({**base, "map_formula": wide}, source="x")


@pytest.mark.slow  # about 40 s: two exports and a small tune
def test_the_tuner_normalises_chooses_and_serves_a_formula(tmp_path):
    """Every formula is a candidate; each second term is normalised by its clean-image median and
    1 - fpr quantile (NumPy's, within the histogram's bin); the tuner's formula maps are what an
    export with that formula serves; the tuned version serves its chosen formula."""
    from tfssim.export import export_model
    from tfssim.serving.inference import ExportedModel

    keras.utils.set_random_seed(0)
    model = build_model("ssim", 32, 1, 8)
    export = ExportedModel.load(export_model(model, tmp_path / "exp", name="m", stride=16))
    images = [np.random.default_rng(2).random((48, 56)).astype(np.float32),
              np.random.default_rng(3).random((40, 64)).astype(np.float32)]
    result = tuning.tune(export, images, source_model=model, copies=1, seed=0, size_range=(4, 12), progress=False,
                         sigmas=[0.0, 2.0], openings=[0], cache_dir=tmp_path, fpr=0.02)
    names = {c["map_formula"]["name"] for c in result.map_candidates}
    assert names == set(FORMULAS)
    plain_best = max((c for c in result.map_candidates if c["map_formula"]["name"] == "ssim"),
                     key=lambda c: c["pixel_auroc"])
    low = next(MapFormula.of(c["map_formula"]) for c in result.map_candidates
               if c["map_formula"]["name"] == "ssim_lowfreq" and c["map_formula"]["lowfreq_sigma"] == 2.0)
    assert (low.combine, {c["map_formula"].get("weight") for c in result.map_candidates
                          if c["map_formula"]["name"] == "ssim_lowfreq"}) == ("max", {0.25, 0.5, 0.75})
    # Formulas are built on the best plain map (its window, weighting, tiling and sigma) and are
    # eligible only if their area up to FPR 0.3 is within the tolerance of that map's.
    formula_rows = [c for c in result.map_candidates if c["map_formula"]["name"] != "ssim"]
    setting = lambda c: (c["window_size"], c["weighting"], c["border"], c["blend"], c["map_sigma"])  # noqa: E731
    (built_on,) = {setting(c) for c in formula_rows}
    base = next(c for c in result.map_candidates if c["map_formula"]["name"] == "ssim" and setting(c) == built_on)
    assert base["pixel_auroc"] >= plain_best["pixel_auroc"] - 0.001
    assert all(c["eligible"] == (c["pixel_pauc_0.3"] >= base["pixel_pauc_0.3"] - 0.001) for c in formula_rows)
    assert all("eligible" not in c for c in result.map_candidates if c not in formula_rows)
    chosen = [c for c in result.map_candidates if c["map_formula"] == result.choice.map_formula
              and setting(c) == (result.choice.window_size, result.choice.weighting, result.choice.border,
                                 result.choice.blend, result.choice.map_sigma)]
    assert len(chosen) == 1 and chosen[0].get("eligible", True)
    # The normalisation: the clean images' maps of both terms, quantiles by NumPy.
    params = {**export.metadata.ssim, "window_size": base["window_size"], "weighting": base["weighting"]}
    clean_first, clean_low = [], []
    for image in images:
        served = scoring.anomaly_maps(model, image[..., None], "ssim", stride=16, ssim_kwargs=params,
                                      blend=base["blend"])
        clean_first.append(served["anomaly_map"].numpy().ravel())
        recon = served["reconstruction"].numpy()[..., 0]
        clean_low.append(lowfreq_scipy(image, recon, 2.0).ravel())
    for k, values in enumerate([np.concatenate(clean_first), np.concatenate(clean_low)]):
        # The share of clean pixels at or above each (a bin's lower edge, so up to a bin's worth more).
        assert np.mean(values >= low.offsets[k]) == pytest.approx(0.5, abs=0.01)
        assert np.mean(values >= low.offsets[k] + low.scales[k] * (1 + 1e-6)) == pytest.approx(0.02, abs=0.003)
        assert low.offsets[k] == pytest.approx(np.quantile(values, 0.5), rel=0.01)
    # An export with that formula serves the map the tuner scored.
    served_export = ExportedModel.load(export_model(model, tmp_path / "exp", name="f", stride=16, ssim_kwargs=params,
                                                    blend=base["blend"], map_formula=low))
    maps = tuning._Maps("ssim", dict(export.metadata.ssim), served=False, workers=1)
    recon = served_export.predict(images[0])["reconstruction"]
    got = maps.raw(images[0][None, ..., None], recon[None], (base["window_size"], base["weighting"]), 0, low)[0]
    np.testing.assert_allclose(got, served_export.predict(images[0])["anomaly_map"], atol=2e-4)
    assert served_export.metadata.map_formula == low.to_dict()
    # Tuned again, an export with a formula has its own map (formula, normalisation, sigma) among the
    # candidates, so its AUROC before is known; where its served map is the one candidate (mirrored
    # border, no Keras model) only its own formula may be asked for.
    again = tuning.tune(served_export, images[:1], source_model=model, copies=1, seed=0, size_range=(4, 12),
                        progress=False, sigmas=[0.0], openings=[0], cache_dir=tmp_path, formulas=["ssim"])
    assert again.synthetic["before"]["map_formula"] == low.to_dict()
    assert again.synthetic["before"]["pixel_auroc"] is not None
    mirrored = ExportedModel.load(export_model(model, tmp_path / "exp", name="r", stride=16, border="reflect",
                                               map_formula=low))
    served_only = tuning.tune(mirrored, images[:1], copies=1, seed=0, size_range=(4, 12), progress=False,
                              sigmas=[0.0], openings=[0], cache_dir=tmp_path, formulas=["ssim_lowfreq"])
    assert [c["map_formula"] for c in served_only.map_candidates] == [low.to_dict()]
    assert served_only.choice.map_formula == low.to_dict() and served_only.settings["formulas"] == ["ssim_lowfreq"]
    with pytest.raises(ValueError, match="cannot compare map formulas here: the export's maps are its served ones; "
                                         "the export's own is ssim_lowfreq"):
        tuning.tune(mirrored, images[:1], copies=1, size_range=(4, 12), progress=False, formulas=["ssim"])
    # The tuned version serves its choice.
    choice = MapFormula.of(result.choice.map_formula)
    tuned = ExportedModel.load(tuning.write_tuned_export(export, result, tuning.SourceModel(tmp_path, model, {})))
    assert tuned.metadata.map_formula == choice.to_dict()
    assert choice.describe() in result.choice.describe()


def test_formula_candidates_are_refused_where_the_map_cannot_be_recomputed(exports):
    from tfssim.serving.inference import ExportedModel

    l2 = ExportedModel.load(exports[1])
    images = [np.random.default_rng(4).random((40, 40)).astype(np.float32)]
    settings = dict(copies=1, size_range=(4, 8), progress=False, sigmas=[0.0], openings=[0])
    assert l2.metadata.map_formula is None  # an l2 map is no SSIM map: no formula recorded
    result = tuning.tune(l2, images, **settings)
    assert {c["map_formula"] for c in result.map_candidates} == {None} and result.choice.map_formula is None
    assert result.synthetic["before"]["pixel_auroc"] is not None  # its own map is found among the candidates
    assert "map" not in result.choice.describe().split(",")[0]
    with pytest.raises(ValueError, match="cannot compare map formulas here: a 'l2' export's map has no SSIM term"):
        tuning.tune(l2, images, formulas=["ssim", "ssim_lowfreq"], **settings)
    with pytest.raises(ValueError, match="unknown map formula 'ssim_blur'; choose from ssim, ssim_lowfreq"):
        tuning.tune(l2, images, formulas=["ssim_blur"], **settings)
    only_plain = tuning.tune(ExportedModel.load(exports[0]), images, formulas=["ssim"], **settings)
    assert {c["map_formula"]["name"] for c in only_plain.map_candidates} == {"ssim"}


def test_tune_help_names_the_formulas_and_refuses_an_unknown_one(exports):
    from tfssim.cli.tune import main

    help_text = CliRunner().invoke(main, ["--help"]).output
    for name in FORMULAS:
        assert name in help_text
    bad = CliRunner().invoke(main, [str(exports[0]), "--formula", "ssim_blur"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output and "ssim_blur" in bad.output
