"""``tfssim.training.optimizer.FusedAdamW``: Keras's AdamW with the Adam step in TensorFlow's fused kernel.

The reference is Keras's own ``keras.optimizers.AdamW``, not our code.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfssim.models import build_autoencoder
from tfssim.training.optimizer import FusedAdamW


def _f32(value: float) -> float:
    return float(np.float32(value))


def _small_model() -> keras.Model:
    """A convolution and a dense layer: kernels and biases of two shapes, quick to trace."""
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(6, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(8 * 8)])


def _train(make_optimizer: Callable[[], keras.optimizers.Optimizer], steps: int = 8,
           strategy: tf.distribute.Strategy | None = None) -> tuple[list[float], list[np.ndarray]]:
    """``steps`` seeded steps of :func:`_small_model`; the losses, and the weights and Adam slots after."""
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        keras.utils.set_random_seed(0)
        model = _small_model()
        optimizer = make_optimizer()
        optimizer.build(model.trainable_variables)
    x = tf.constant(np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32))
    variables = model.trainable_variables

    @tf.function
    def step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - tf.reshape(x, (4, -1))))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    if strategy is not None:
        losses = [float(strategy.run(step)) for _ in range(steps)]
    else:
        losses = [float(step()) for _ in range(steps)]
    state = [np.array(v.numpy()) for v in [*variables, *optimizer._momentums, *optimizer._velocities]]
    return losses, state


def test_equals_keras_adamw_with_float32_betas_bit_for_bit() -> None:
    # The kernel forms 1 - beta in float32: exactly Keras's AdamW given betas already rounded to float32.
    fused = _train(lambda: FusedAdamW(learning_rate=2e-3, weight_decay=1e-2))
    keras_f32 = _train(lambda: keras.optimizers.AdamW(learning_rate=2e-3, weight_decay=1e-2,
                                                      beta_1=_f32(0.9), beta_2=_f32(0.999)))
    assert fused[0] == keras_f32[0]
    assert all(np.array_equal(a, b) for a, b in zip(fused[1], keras_f32[1]))
    # With the default betas, Keras subtracts in float64: not the same bits, the same optimizer.
    default = _train(lambda: keras.optimizers.AdamW(learning_rate=2e-3, weight_decay=1e-2), steps=1)
    one_step = _train(lambda: FusedAdamW(learning_rate=2e-3, weight_decay=1e-2), steps=1)
    weights = len(one_step[1]) // 3
    assert not all(np.array_equal(a, b) for a, b in zip(one_step[1], default[1]))
    for ours, theirs in zip(one_step[1][:weights], default[1][:weights]):
        # The first step moves each weight by about lr = 2e-3; 1 - beta_2 differs by 1.3e-5 relative.
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * 2e-3)


def test_the_step_runs_one_fused_adam_op_per_variable() -> None:
    # So that a silent fall-back to Keras's dozen ops per variable fails here.
    keras.utils.set_random_seed(0)
    model = build_autoencoder(32, 1, 8)
    optimizer = FusedAdamW(learning_rate=1e-3, weight_decay=1e-5)
    optimizer.build(model.trainable_variables)
    grads = [tf.zeros_like(v) for v in model.trainable_variables]
    graph = tf.function(lambda g: optimizer.apply(g, model.trainable_variables)).get_concrete_function(grads).graph
    ops = [op.type for op in graph.get_operations()]
    assert ops.count("ResourceApplyAdam") == len(model.trainable_variables) == 36


def test_under_a_strategy_it_is_keras_adamw() -> None:
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    fused = _train(lambda: FusedAdamW(learning_rate=2e-3, weight_decay=1e-2), steps=3, strategy=strategy)
    plain = _train(lambda: keras.optimizers.AdamW(learning_rate=2e-3, weight_decay=1e-2), steps=3, strategy=strategy)
    assert fused[0] == plain[0]
    assert all(np.array_equal(a, b) for a, b in zip(fused[1], plain[1]))


def test_config_and_a_compiled_model_round_trip(tmp_path) -> None:
    optimizer = FusedAdamW(learning_rate=3e-4, weight_decay=2e-5, beta_2=0.99)
    config = optimizer.get_config()
    keras_config = keras.optimizers.AdamW(learning_rate=3e-4, weight_decay=2e-5, beta_2=0.99).get_config()
    assert {**config, "name": None} == {**keras_config, "name": None}
    assert FusedAdamW.from_config(config).get_config() == config
    model = _small_model()
    model.compile(optimizer=optimizer, loss="mse")
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
    model.fit(x, x.reshape(4, -1), epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, FusedAdamW)
    assert loaded.optimizer.get_config()["weight_decay"] == pytest.approx(2e-5)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.optimizer.variables, model.optimizer.variables))
