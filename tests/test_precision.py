"""Mixed-precision policy selection and float16 training on CPU (``tfssim.training.precision``)."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfssim.core.losses import L2Loss, SSIMLoss
from tfssim.models import VariationalAutoencoder, build_autoencoder
from tfssim.training import precision


@pytest.fixture
def restore_policy():
    before = keras.mixed_precision.global_policy()
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)
        assert keras.mixed_precision.global_policy().name == before.name


def test_resolve_precision():
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert precision.resolve_precision("auto") == ("mixed_float16" if has_gpu else "float32")
    if not has_gpu:  # this CPU machine
        assert precision.resolve_precision("auto") == "float32"
    assert precision.resolve_precision("on") == "mixed_float16"
    assert precision.resolve_precision("off") == "float32"
    assert precision.resolve_precision() == precision.resolve_precision("auto")
    for bad in ("fp16", "ON", "", None, True):
        with pytest.raises(ValueError, match="mixed precision must be one of"):
            precision.resolve_precision(bad)


def test_set_precision_sets_and_logs_global_policy(restore_policy, caplog):
    with caplog.at_level("INFO", logger="tfssim.training.precision"):
        assert precision.set_precision("on") == "mixed_float16"
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    assert "mixed_float16" in caplog.text
    assert precision.set_precision("off") == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(ValueError):
        precision.set_precision("sometimes")
    assert keras.mixed_precision.global_policy().name == "float32"  # unchanged by the bad call


def test_precision_policy_restores_the_previous_policy(restore_policy):
    keras.mixed_precision.set_global_policy("float32")
    with precision.precision_policy("on") as name:
        assert name == "mixed_float16" == keras.mixed_precision.global_policy().name
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError, match="inside"):
        with precision.precision_policy("on"):
            raise RuntimeError("inside")
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(ValueError):
        with precision.precision_policy("sometimes"):
            pass
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow  # 28 s measured in the not-slow run on the loaded 2-core machine
def test_mixed_float16_model_outputs_float32_and_trains(restore_policy):
    precision.set_precision("on")
    keras.utils.set_random_seed(0)
    model = build_autoencoder(32, 1, 8)
    assert model.get_layer("encoder").get_layer("conv1").compute_dtype == "float16"
    assert model.get_layer("encoder").get_layer("conv1").variable_dtype == "float32"
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 32, 32, 1)).astype(np.float32)
    out = model(x)
    assert out.dtype == tf.float32
    # the encoder's code is float16: the network really runs in half precision
    assert model.get_layer("encoder")(x).dtype == tf.float16

    loss = SSIMLoss(window_size=7)
    value = loss(x, out)
    assert value.dtype == tf.float32
    # the same loss on float16-rounded predictions equals the float32 computation on them
    out16 = tf.cast(out, tf.float16)
    np.testing.assert_allclose(float(loss(x, out16)), float(loss(x, tf.cast(out16, tf.float32))), atol=1e-6)

    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
    initial = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, x, epochs=4, batch_size=4, verbose=0).history["loss"]
    print(f"\nmixed_float16 on CPU, SSIM loss per epoch: {np.round(history, 4).tolist()}")
    assert np.isfinite(history).all()
    assert history[-1] < history[0]
    for w in model.trainable_weights:
        assert w.dtype == "float32" and np.isfinite(w.numpy()).all()
    # the updates were applied (not all skipped by the loss scaler)
    changed = [not np.array_equal(w0, w.numpy()) for w0, w in zip(initial, model.trainable_weights)]
    assert all(changed)


@pytest.mark.slow  # 21 s measured in the not-slow run on the loaded 2-core machine
def test_mixed_float16_vae_outputs_float32(restore_policy):
    precision.set_precision("on")
    vae = VariationalAutoencoder(32, 1, 4, seed=0)
    vae.build()
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 1)).astype(np.float32)
    assert vae(x).dtype == tf.float32
    amap = vae.anomaly_map(x, num_samples=2)
    assert amap.dtype == tf.float32 and np.isfinite(np.asarray(amap)).all()
    vae.compile(optimizer="adam", loss=L2Loss())
    history = vae.fit(x, x, epochs=2, batch_size=2, verbose=0).history["loss"]
    assert np.isfinite(history).all()


def test_feature_extractor_computes_in_float32_under_mixed_precision(restore_policy):
    from tfssim.core.features import extract_features
    from tfssim.core.losses import FeatureMatchingLoss

    precision.set_precision("on")
    loss = FeatureMatchingLoss(weights=None)
    extractor = loss.feature_extractor
    assert keras.mixed_precision.global_policy().name == "mixed_float16"  # left as it was
    assert {layer.compute_dtype for layer in extractor.layers} == {"float32"}
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 1)).astype(np.float32)
    assert extract_features(extractor, x).dtype == tf.float32
    # a float16 reconstruction is scored in float32 as well
    value = loss(x, tf.cast(np.clip(x + 0.1, 0, 1), tf.float16))
    assert value.dtype == tf.float32 and np.isfinite(float(value))
    # built under the default policy, the same layers would have computed in float16
    assert keras.layers.Conv2D(4, 3).compute_dtype == "float16"
