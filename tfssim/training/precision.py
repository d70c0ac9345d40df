"""Mixed-precision policy selection for training (``auto | on | off``, :data:`~tfssim.training.config.PRECISION_MODES`)."""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import tfssim._tensorflow  # noqa: F401,I001 - before keras: without TensorFlow, an ImportError naming the install command
import keras
import tensorflow as tf

from tfssim.errors import InputError
from tfssim.training.config import PRECISION_MODES

logger = logging.getLogger(__name__)


def resolve_precision(mode: str = "auto") -> str:
    """Return the Keras dtype policy name that ``mode`` stands for on this machine.

    Args:
        mode: ``"auto"`` uses ``"mixed_float16"`` when a GPU is visible and ``"float32"``
            otherwise (mixed precision trains correctly on CPU but is 3-5x slower there);
            ``"on"`` forces ``"mixed_float16"``; ``"off"`` forces ``"float32"``.

    Returns:
        ``"mixed_float16"`` or ``"float32"``.
    """
    if mode not in PRECISION_MODES:
        raise InputError(f"mixed precision must be one of {PRECISION_MODES}, got {mode!r}")
    if mode == "on":
        return "mixed_float16"
    if mode == "off":
        return "float32"
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"


def set_precision(mode: str = "auto") -> str:
    """Set Keras's global dtype policy from ``mode`` and log the choice.

    Models built afterwards compute in the chosen policy; tfssim's output layers and
    losses always compute in float32. Returns the policy name that was set.
    """
    policy = resolve_precision(mode)
    gpus = tf.config.list_physical_devices("GPU")
    if mode == "auto":
        reason = f"{len(gpus)} GPU(s) visible" if gpus else "no GPU visible, mixed precision only pays on a GPU"
        logger.info("precision: %s (auto: %s)", policy, reason)
    else:
        logger.info("precision: %s (forced by mode=%r)", policy, mode)
        if policy == "mixed_float16" and not gpus:
            logger.warning("mixed_float16 on CPU runs correctly but is several times slower than float32")
    keras.mixed_precision.set_global_policy(policy)
    return policy


@contextlib.contextmanager
def precision_policy(mode: str = "auto") -> Iterator[str]:
    """:func:`set_precision` for a ``with`` block; yields the policy name.

    The global dtype policy the block found is restored when it ends, also on an exception,
    so a caller (``tfssim.training.train``) does not leave the process in ``mixed_float16``.
    """
    previous = keras.config.dtype_policy()
    try:
        yield set_precision(mode)
    finally:
        keras.config.set_dtype_policy(previous)
