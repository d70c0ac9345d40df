"""AdamW whose per-variable update is TensorFlow's fused Adam kernel."""
from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

__all__ = ["FusedAdamW"]


@keras.saving.register_keras_serializable(package="tfssim")
class FusedAdamW(keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` with each variable's Adam step in one fused TensorFlow op.

    Keras's AdamW updates a variable with about a dozen small ops (the moments, the bias
    correction, the step), each a pass over the variable and an op to dispatch. Here the
    Adam step is one ``ResourceApplyAdam``, the kernel of TensorFlow's own Adam, which runs
    the same formulas in one pass:

    ``m += (g - m)(1 - beta_1)``, ``v += (g^2 - v)(1 - beta_2)``,
    ``w -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)``

    with the same order of float32 operations as Keras. The decoupled weight decay,
    ``w -= w * weight_decay * lr`` before the step, is Keras's own code, unchanged. Config,
    slots and checkpoints are Keras AdamW's.

    The one numerical difference: the kernel forms ``1 - beta`` from ``beta`` in float32,
    where Keras subtracts in float64 and then rounds. The result is exactly Keras's AdamW
    with ``beta_1`` and ``beta_2`` first rounded to float32 (0.9 becomes 0.899999976,
    0.999 becomes 0.999000013, so ``1 - beta_2`` is 1.3e-5 relative smaller); the tests
    check this bit for bit.

    The fused op is used on the TensorFlow backend for float32 variables without a
    distribution strategy and without ``amsgrad``; everywhere else (``MirroredStrategy``,
    multi-worker, other backends, float16 variables) this is Keras's AdamW.

    Args:
        **kwargs: The arguments of ``keras.optimizers.AdamW`` (``learning_rate``,
            ``weight_decay``, ``beta_1``, ``beta_2``, ``epsilon``, ...).

    Example:
        >>> model.compile(optimizer=FusedAdamW(learning_rate=2e-4, weight_decay=1e-5),
        ...               loss=tfssim.core.losses.SSIMLoss())
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if not self._fused(variable):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, local_step),
            beta2_power=tf.pow(beta_2, local_step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )
        return None

    def _fused(self, variable: Any) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and not self.amsgrad
            and not tf.distribute.has_strategy()
            and isinstance(variable, tf.Variable)
            and variable.dtype == tf.float32
        )
