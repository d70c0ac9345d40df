"""Frozen feature extractor F for the feature-matching autoencoder (Dosovitskiy & Brox 2016)."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import tfssim._tensorflow  # noqa: F401,I001 - before keras: without TensorFlow, an ImportError naming the install command
import keras

from tfssim.errors import InputError

__all__ = ["build_feature_extractor", "extract_features", "BACKBONES", "WeightsUnavailableError"]

BACKBONES = ("vgg16", "vgg19")


class WeightsUnavailableError(RuntimeError):
    """The backbone's ImageNet weights could not be downloaded; the message names ``--weights FILE``."""


@contextlib.contextmanager
def _float32_policy() -> Iterator[None]:
    """Build layers with a float32 dtype policy whatever the global (e.g. mixed) policy is."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _backbone(name: str, weights: str | None) -> keras.Model:
    ctor = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}[name]
    local = weights is not None and weights != "imagenet"
    if local and not os.path.isfile(weights):
        raise InputError(
            f"feature-extractor weights file {weights!r} does not exist; pass an existing "
            f"{name} weights file with --weights FILE, or 'imagenet' to download them"
        )
    if weights != "imagenet":
        model = ctor(include_top=False, weights=None, input_shape=(None, None, 3))
    else:
        try:
            model = ctor(include_top=False, weights="imagenet", input_shape=(None, None, 3))
        except Exception as err:  # network errors surface as several exception types
            reason = " ".join(str(err).split())
            raise WeightsUnavailableError(
                f"could not download the ImageNet weights of {name} ({type(err).__name__}: {reason}); "
                f"pass a local weights file with --weights FILE "
                f"(for example {name}_weights_tf_dim_ordering_tf_kernels_notop.h5 copied from a "
                "machine where keras.applications has downloaded it)"
            ) from err
    if local:
        try:
            model.load_weights(weights)
        except Exception as err:
            reason = " ".join(str(err).split())
            raise InputError(
                f"cannot load {name} weights from {weights!r} ({type(err).__name__}: {reason}); pass a file saved "
                f"from keras.applications.{name.upper()}(include_top=False) with --weights FILE"
            ) from err
    return model


def build_feature_extractor(
    backbone: str = "vgg16", num_conv_layers: int = 3, weights: str | None = "imagenet"
) -> keras.Model:
    """The first ``num_conv_layers`` convolutions of a pretrained CNN as a frozen model.

    Args:
        backbone: ``"vgg16"`` or ``"vgg19"`` from ``keras.applications``.
        num_conv_layers: Number of leading conv layers (pooling layers between them are kept).
        weights: ``"imagenet"``, a local weights file, or ``None`` for random weights.

    Returns:
        A non-trainable float32 ``keras.Model`` (whatever the global dtype policy) on the
        backbone's own input (BGR, 0-255, mean subtracted); call it through
        :func:`extract_features`, which converts ``[0, 1]`` gray or RGB images to that input.

    Raises:
        ValueError: bad arguments, a missing or unreadable local weights file.
        WeightsUnavailableError: the ImageNet weights could not be downloaded.
    """
    if backbone not in BACKBONES:
        raise InputError(f"unknown feature-extractor backbone {backbone!r}; choose one of {BACKBONES}")
    if num_conv_layers < 1:
        raise InputError(f"num_conv_layers must be >= 1, got {num_conv_layers}")
    # F always computes in float32: under a mixed policy its features (squared differences of
    # activations in the hundreds) would lose precision or overflow in float16.
    with _float32_policy():
        base = _backbone(backbone, weights)
        convs = [layer for layer in base.layers if isinstance(layer, keras.layers.Conv2D)]
        if num_conv_layers > len(convs):
            raise InputError(f"{backbone} has only {len(convs)} conv layers, asked for {num_conv_layers}")
        last = convs[num_conv_layers - 1]
        extractor = keras.Model(base.inputs, last.output, name=f"{backbone}_first{num_conv_layers}")
    extractor.trainable = False
    return extractor


def extract_features(extractor: keras.Model, images: Any) -> Any:
    """Apply ``extractor`` to ``[B, H, W, 1 or 3]`` images in ``[0, 1]``.

    Grayscale is repeated to RGB and the images are converted to VGG's "caffe" input
    (BGR, 0-255, ImageNet channel means subtracted) before the extractor sees them.
    """
    x = keras.ops.cast(images, "float32")
    if x.shape[-1] == 1:
        x = keras.ops.repeat(x, 3, axis=-1)
    elif x.shape[-1] != 3:
        raise InputError(f"the feature extractor needs 1 or 3 channels, got images of shape {x.shape}")
    x = x[..., ::-1] * 255.0 - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype="float32")
    return extractor(x)
