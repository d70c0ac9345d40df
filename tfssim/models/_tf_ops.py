"""TensorFlow-only pieces of the models, imported only on the TensorFlow backend."""
from __future__ import annotations

import tensorflow as tf


def leaky_relu_output_gradient(x: tf.Tensor, negative_slope: float) -> tf.Tensor:
    """``tf.nn.leaky_relu(x, negative_slope)`` with its gradient computed from the output.

    ``LeakyReluGrad(dy, y)`` equals ``LeakyReluGrad(dy, x)`` for ``negative_slope >= 0``
    (``y > 0`` exactly when ``x > 0``); see :class:`tfssim.models.cae.LeakyReLU` for why.
    """

    @tf.custom_gradient
    def forward(x: tf.Tensor) -> tuple[tf.Tensor, object]:
        y = tf.nn.leaky_relu(x, alpha=negative_slope)

        def backward(dy: tf.Tensor) -> tf.Tensor:
            return tf.raw_ops.LeakyReluGrad(gradients=dy, features=y, alpha=negative_slope)

        return y, backward

    return forward(x)
