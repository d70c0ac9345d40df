"""Keras losses of ``tfssim.core.losses``: values vs independent oracles, gradients, config, errors."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfssim.core import losses
from tfssim.core.features import extract_features
from tfssim.core.losses import FeatureMatchingLoss, L2Loss, MSSSIMLoss, SSIMLoss

PATCH = 32


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y_true = rng.uniform(size=(3, PATCH, PATCH, 1)).astype(np.float32)
    y_pred = np.clip(y_true + rng.normal(0, 0.15, y_true.shape), 0, 1).astype(np.float32)
    return y_true, y_pred


@pytest.fixture(scope="module")
def vgg_weights_file(tmp_path_factory) -> tuple[str, keras.Model]:
    """A VGG16 (no top) with random weights saved to a local ``.weights.h5`` file."""
    keras.utils.set_random_seed(1)
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path_factory.mktemp("vgg") / "vgg16_random.weights.h5"
    vgg.save_weights(str(path))
    return str(path), vgg


def independent_features(vgg: keras.Model, images: np.ndarray) -> np.ndarray:
    """F(x) via keras.applications' own preprocessing: RGB 0-255 -> VGG16 up to block2_conv1."""
    head = keras.Model(vgg.input, vgg.get_layer("block2_conv1").output)
    rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    return np.asarray(head(keras.applications.vgg16.preprocess_input(rgb.astype(np.float32) * 255.0)))


def _all_losses(weights_path=None):
    return [
        SSIMLoss(),
        SSIMLoss(window_size=7, sigma=1.0, alpha=2.0),
        MSSSIMLoss(),
        MSSSIMLoss(power_factors=(0.3, 0.7), window_size=7),
        L2Loss(),
        FeatureMatchingLoss(weights=None, weight=0.5),
    ]


# --------------------------------------------------------------------------- values
def test_ssim_loss_is_one_minus_tf_image_ssim(batch):
    y_true, y_pred = batch
    expected = 1.0 - float(np.mean(tf.image.ssim(y_true, y_pred, max_val=1.0)))
    value = float(SSIMLoss()(y_true, y_pred))
    assert 0.1 < value < 1.9
    np.testing.assert_allclose(value, expected, atol=1e-5)
    # per sample with reduction=None
    per_sample = SSIMLoss(reduction=None)(y_true, y_pred).numpy()
    np.testing.assert_allclose(per_sample, 1.0 - tf.image.ssim(y_true, y_pred, 1.0).numpy(), atol=1e-5)
    assert float(SSIMLoss()(y_true, y_true)) < 1e-6


def test_ms_ssim_loss_is_one_minus_tf_ssim_multiscale(batch):
    y_true, y_pred = batch
    big_true = np.tile(y_true, (1, 3, 3, 1))  # 96x96: three scales
    big_pred = np.tile(y_pred, (1, 3, 3, 1))
    factors = (0.2, 0.3, 0.5)
    expected = 1.0 - np.mean(tf.image.ssim_multiscale(big_true, big_pred, 1.0, power_factors=factors))
    np.testing.assert_allclose(float(MSSSIMLoss(power_factors=factors)(big_true, big_pred)), expected, atol=1e-5)


def test_l2_loss_is_numpy_mse(batch):
    y_true, y_pred = batch
    expected = np.mean((y_true.astype(np.float64) - y_pred) ** 2)
    np.testing.assert_allclose(float(L2Loss()(y_true, y_pred)), expected, rtol=1e-5)
    np.testing.assert_allclose(
        L2Loss(reduction=None)(y_true, y_pred).numpy(), np.mean((y_true - y_pred) ** 2, axis=(1, 2, 3)), rtol=1e-5
    )
    # and keras' own MSE agrees
    np.testing.assert_allclose(float(L2Loss()(y_true, y_pred)), float(keras.losses.MeanSquaredError()(y_true, y_pred)),
                               rtol=1e-5)


def test_feature_matching_loss_value(batch, vgg_weights_file):
    path, vgg = vgg_weights_file
    y_true, y_pred = batch
    lam = 0.25
    loss = FeatureMatchingLoss(weight=lam, weights=path, reduction=None)
    f_true = independent_features(vgg, y_true).astype(np.float64)
    f_pred = independent_features(vgg, y_pred).astype(np.float64)
    expected = np.mean((y_true - y_pred) ** 2, axis=(1, 2, 3)) + lam * np.mean((f_true - f_pred) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(loss(y_true, y_pred).numpy(), expected, rtol=1e-4)
    # lambda = 0 leaves plain l2
    np.testing.assert_allclose(
        float(FeatureMatchingLoss(weight=0.0, weights=path)(y_true, y_pred)), float(L2Loss()(y_true, y_pred)), rtol=1e-6
    )


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("index", range(6), ids=["ssim", "ssim-w7-alpha2", "ms_ssim", "ms_ssim-w7", "l2", "fm"])
def test_gradients_finite_and_nonzero(batch, index):
    y_true, y_pred = batch
    loss = _all_losses()[index]
    pred = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        value = loss(y_true, pred)
    grad = tape.gradient(value, pred)
    assert grad is not None
    grad = grad.numpy()
    assert value.dtype == tf.float32
    assert np.isfinite(float(value)) and float(value) > 0
    assert np.isfinite(grad).all()
    assert np.abs(grad).max() > 1e-6


def test_feature_term_alone_has_a_finite_nonzero_gradient(batch):
    # The l2 term alone already has a non-zero gradient: take it out, (lambda=1) - (lambda=0),
    # with one shared extractor so that both losses use the same F.
    y_true, y_pred = batch
    with_features = FeatureMatchingLoss(weights=None, weight=1.0)
    pixel_only = FeatureMatchingLoss(weight=0.0, feature_extractor=with_features.feature_extractor)
    pred = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        feature_term = with_features(y_true, pred) - pixel_only(y_true, pred)
    grad = tape.gradient(feature_term, pred).numpy()
    assert float(feature_term) > 0
    assert np.isfinite(grad).all()
    assert np.abs(grad).max() > 1e-6
    # and it is not the l2 gradient in disguise
    with tf.GradientTape() as tape:
        l2 = L2Loss()(y_true, pred)
    assert not np.allclose(grad, tape.gradient(l2, pred).numpy(), rtol=0.1)


def test_vae_kl_term_has_finite_nonzero_gradient_wrt_the_encoder():
    from tfssim.models import VariationalAutoencoder

    vae = VariationalAutoencoder(PATCH, 1, 8, seed=0)
    vae.build()
    x = np.random.default_rng(2).uniform(size=(4, PATCH, PATCH, 1)).astype(np.float32)
    # model.losses holds KL * 2 sigma^2 / pixels (on the MSE scale); undo the scale to get nats
    scale = 2.0 * vae.observation_std ** 2 / (PATCH * PATCH)
    with tf.GradientTape(persistent=True) as tape:
        vae(x, training=True)
        assert len(vae.losses) == 1  # the KL term added in call()
        kl = tf.add_n(vae.losses) / scale
    encoder_grads = tape.gradient(kl, vae.encoder.trainable_weights)
    decoder_grads = tape.gradient(kl, vae.decoder.trainable_weights)
    assert np.isfinite(float(kl)) and float(kl) > 0
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in encoder_grads)
    assert max(float(tf.reduce_max(tf.abs(g))) for g in encoder_grads) > 1e-6
    # the KL term depends on q(z|x) only: nothing reaches the decoder
    assert all(g is None or float(tf.reduce_max(tf.abs(g))) == 0.0 for g in decoder_grads)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("index", range(6), ids=["ssim", "ssim-w7-alpha2", "ms_ssim", "ms_ssim-w7", "l2", "fm"])
def test_config_round_trip(batch, index):
    y_true, y_pred = batch
    loss = _all_losses()[index]
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(loss)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(loss)
    assert restored.get_config() == config
    if not isinstance(loss, FeatureMatchingLoss):  # weights=None: a fresh random F each time
        np.testing.assert_allclose(float(restored(y_true, y_pred)), float(loss(y_true, y_pred)), rtol=1e-6)
        np.testing.assert_allclose(float(clone(y_true, y_pred)), float(loss(y_true, y_pred)), rtol=1e-6)


def test_config_keeps_non_default_parameters():
    config = SSIMLoss(window_size=7, sigma=1.0, k1=0.02, k2=0.05, data_range=255.0, gamma=2.0).get_config()
    assert (config["window_size"], config["sigma"], config["k1"], config["k2"], config["data_range"],
            config["gamma"]) == (7, 1.0, 0.02, 0.05, 255.0, 2.0)
    # one SSIMParams inside, flat keys in the config (saved .keras files keep loading)
    from tfssim.core.ssim import SSIMParams

    params = SSIMParams(window_size=7, sigma=1.0, k1=0.02, k2=0.05, data_range=255.0, gamma=2.0)
    assert SSIMLoss(params=params).get_config() == config
    reloaded = SSIMLoss.from_config(config)
    assert reloaded.params == params and reloaded.window_size == 7
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(
        MSSSIMLoss(power_factors=[0.4, 0.6], window_size=5)))
    assert restored.power_factors == (0.4, 0.6) and restored.window_size == 5


def test_feature_matching_loss_round_trip_with_local_weights(batch, vgg_weights_file):
    path, _ = vgg_weights_file
    y_true, y_pred = batch
    loss = FeatureMatchingLoss(weights=path, weight=2.0)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert restored.weights == path and restored.weight == 2.0
    np.testing.assert_allclose(float(restored(y_true, y_pred)), float(loss(y_true, y_pred)), rtol=1e-6)


def test_loss_registry():
    assert isinstance(losses.get("ssim", window_size=7), SSIMLoss)
    assert isinstance(losses.get("l2"), L2Loss)
    assert isinstance(losses.get("ms_ssim"), MSSSIMLoss)
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get("perceptual")


# --------------------------------------------------------------------------- feature extractor
def test_feature_extractor_from_local_weights_file(vgg_weights_file):
    path, vgg = vgg_weights_file
    loss = FeatureMatchingLoss(weights=path)
    extractor = loss.feature_extractor
    assert not extractor.trainable
    # the three loaded conv layers carry exactly the saved weights
    for name in ("block1_conv1", "block1_conv2", "block2_conv1"):
        for got, want in zip(extractor.get_layer(name).get_weights(), vgg.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    # and the features equal those of the saved model through keras' own VGG preprocessing
    rng = np.random.default_rng(3)
    for channels in (1, 3):
        images = rng.uniform(size=(2, 24, 24, channels)).astype(np.float32)
        got = np.asarray(extract_features(extractor, images))
        assert got.shape == (2, 12, 12, 128)  # block1_pool halves, block2_conv1 has 128 filters
        np.testing.assert_allclose(got, independent_features(vgg, images), rtol=1e-4, atol=1e-3)
    # a random (weights=None) extractor is different: the file really was loaded
    other = FeatureMatchingLoss(weights=None).feature_extractor
    assert not np.allclose(other.get_layer("block1_conv1").get_weights()[0],
                           vgg.get_layer("block1_conv1").get_weights()[0])


# --------------------------------------------------------------------------- errors
def test_missing_weights_file_names_the_option(tmp_path):
    missing = tmp_path / "no_such_vgg16.h5"
    with pytest.raises(ValueError, match="--weights") as info:
        FeatureMatchingLoss(weights=str(missing))
    assert str(missing) in str(info.value)


def test_corrupt_weights_file_raises_value_error(tmp_path):
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="cannot load"):
        FeatureMatchingLoss(weights=str(bad))


def test_wrong_channel_count_raises(batch):
    y_true, _ = batch
    rgb = np.repeat(y_true, 3, axis=-1)
    for loss in (SSIMLoss(), L2Loss(), MSSSIMLoss(), FeatureMatchingLoss(weights=None)):
        with pytest.raises(ValueError, match="1 channels but the model outputs 3") as info:
            loss(y_true, rgb)
        assert "grayscale=1, RGB=3" in str(info.value)


def test_wrong_rank_raises(batch):
    y_true, y_pred = batch
    with pytest.raises(ValueError, match="image batches"):
        L2Loss()(y_true[..., 0], y_pred[..., 0])


@pytest.mark.parametrize("cls", [SSIMLoss, MSSSIMLoss])
def test_non_odd_window_raises(cls):
    for window in (4, 12, 0):
        with pytest.raises(ValueError, match="odd"):
            cls(window_size=window)


def test_negative_fm_weight_raises():
    with pytest.raises(ValueError, match="lambda"):
        FeatureMatchingLoss(weight=-1.0, weights=None)
