"""``tfssim.models.LeakyReLU``: Keras's LeakyReLU with its TensorFlow gradient taken from the output.

The reference is TensorFlow's own autodiff of ``tf.nn.leaky_relu`` (and Keras's layer), not our code.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfssim.models import LeakyReLU, build_autoencoder


def _values(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 9, 9, 3)).astype(dtype)
    x[0, 0, 0] = 0.0  # the kink itself, and values at the edge of the dtype's precision
    x[0, 0, 1] = np.finfo(dtype).tiny
    x[0, 0, 2] = -np.finfo(dtype).tiny
    return x


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("slope", [0.0, 0.2, 1.5])
def test_value_and_gradient_equal_tensorflows_leaky_relu_bit_for_bit(dtype: str, slope: float) -> None:
    x = tf.constant(_values(dtype))
    dy = tf.constant(np.random.default_rng(1).standard_normal(x.shape).astype(dtype))
    layer = LeakyReLU(negative_slope=slope, dtype=dtype)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = layer(x, training=True)
        reference = tf.nn.leaky_relu(x, alpha=slope)
        ours_sum = tf.reduce_sum(ours * dy)
        reference_sum = tf.reduce_sum(reference * dy)
    np.testing.assert_array_equal(ours.numpy(), reference.numpy())
    np.testing.assert_array_equal(tape.gradient(ours_sum, x).numpy(), tape.gradient(reference_sum, x).numpy())
    np.testing.assert_array_equal(layer(x, training=False).numpy(), reference.numpy())


def test_the_training_path_uses_the_output_gradient() -> None:
    # The backward op reads the layer's output: the gradient graph holds LeakyReluGrad fed by
    # the forward LeakyRelu, not by the input placeholder.
    layer = LeakyReLU(negative_slope=0.2)

    @tf.function
    def grad(x: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        return tape.gradient(y, x)

    graph = grad.get_concrete_function(tf.TensorSpec([2, 3], tf.float32)).graph
    grads = [op for op in graph.get_operations() if op.type == "LeakyReluGrad"]
    assert len(grads) == 1
    assert grads[0].inputs[1].op.type == "LeakyRelu"


def test_config_round_trip_and_saving(tmp_path) -> None:
    model = build_autoencoder(32, 1, 8)
    layers = [layer for sub in model.layers if isinstance(sub, keras.Model) for layer in sub.layers
              if isinstance(layer, LeakyReLU)]
    assert len(layers) == 16 and {layer.negative_slope for layer in layers} == {0.2}
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert any(isinstance(layer, LeakyReLU) for layer in loaded.get_layer("encoder").layers)
    assert LeakyReLU.from_config(layers[0].get_config()).negative_slope == 0.2


def test_training_gradients_equal_those_of_kerass_leaky_relu() -> None:
    # The paper's autoencoder, and the same network with keras.layers.LeakyReLU and the same
    # weights: equal gradients of an SSIM-like smooth loss inside tf.function (where Grappler
    # fuses our Conv2D + BiasAdd + LeakyRelu and not Keras's).
    ours = build_autoencoder(32, 1, 8)

    def to_keras(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, LeakyReLU):
            return keras.layers.LeakyReLU(**layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    encoder = keras.models.clone_model(ours.get_layer("encoder"), clone_function=to_keras)
    decoder = keras.models.clone_model(ours.get_layer("decoder"), clone_function=to_keras)
    inputs = keras.Input((32, 32, 1))
    twin = keras.Model(inputs, decoder(encoder(inputs)))
    twin.set_weights(ours.get_weights())
    assert not any(isinstance(layer, LeakyReLU) for layer in encoder.layers)
    x = tf.constant(np.random.default_rng(2).random((4, 32, 32, 1)).astype("float32"))

    def gradients(model: keras.Model) -> list[np.ndarray]:
        @tf.function
        def step(x: tf.Tensor) -> list[tf.Tensor]:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(x, training=True) - x))
            return tape.gradient(loss, model.trainable_variables)

        return [g.numpy() for g in step(x)]

    for a, b in zip(gradients(ours), gradients(twin)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.slow  # a subprocess that imports TensorFlow and trains two tiny models (~12 s)
def test_grapplers_remapper_no_longer_fails_on_the_training_step() -> None:
    # With Keras's LeakyReLU, Grappler's remapper logs "remapper failed ... LeakyReluGrad ..."
    # at the first training step (it cannot fuse the BiasAdd the gradient reads); with ours the
    # fusion applies and nothing is logged. The reference model proves the check can fail.
    script = textwrap.dedent("""
        import os, sys, numpy as np, keras
        from tfssim.models import build_autoencoder, cae
        x = np.random.default_rng(0).random((16, 32, 32, 1)).astype("float32")
        ours = cae._leaky
        for kind in ("ours", "keras"):
            if kind == "keras":
                cae._leaky = lambda name: keras.layers.LeakyReLU(negative_slope=0.2, name=name + "_lrelu")
            model = build_autoencoder(32, 1, 8)
            model.compile(optimizer="adam", loss="mse")
            os.write(2, f"<<{kind}>>".encode())  # fd 2, where TensorFlow's C++ log goes
            model.fit(x, x, batch_size=8, epochs=1, verbose=0)
        cae._leaky = ours
        os.write(2, b"<<end>>")
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    ours = run.stderr.split("<<ours>>")[1].split("<<keras>>")[0]
    theirs = run.stderr.split("<<keras>>")[1].split("<<end>>")[0]
    assert "remapper failed" in theirs
    assert "remapper failed" not in ours
