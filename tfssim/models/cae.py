"""The convolutional autoencoder of Bergmann et al. 2019 (their Figure 3 / Table in DESIGN.md)."""
from __future__ import annotations

from typing import Any

import keras  # plain Keras 3, no TensorFlow: scripts/train_any_backend.py builds it on JAX/PyTorch

from tfssim.models.kinds import validate_architecture

__all__ = ["ENCODER_LAYERS", "LeakyReLU", "build_encoder", "build_decoder", "build_autoencoder"]

# (name, filters, kernel, stride) of the paper's encoder for 128x128 input; Conv9's kernel is
# patch_size / 16 so that any of the paper's patch sizes (32, 64, 128) ends in a 1x1xd code.
ENCODER_LAYERS: tuple[tuple[str, int, int, int], ...] = (
    ("conv1", 32, 4, 2),
    ("conv2", 32, 4, 2),
    ("conv3", 32, 3, 1),
    ("conv4", 64, 4, 2),
    ("conv5", 64, 3, 1),
    ("conv6", 128, 4, 2),
    ("conv7", 64, 3, 1),
    ("conv8", 32, 3, 1),
)
_NEG_SLOPE = 0.2
# He initialisation: with Keras' default Glorot-uniform the signal shrinks through the 18 layers
# (LeakyReLU halves the variance, and each stride-2 transposed convolution feeds every output
# pixel from only a quarter of its taps), so an untrained model outputs sigmoid(~1e-6) = 0.5
# everywhere, gradients are ~1e-7 (Adam's epsilon) and training stalls at the mean image.
_INIT = "he_normal"


@keras.saving.register_keras_serializable(package="tfssim")
class LeakyReLU(keras.layers.LeakyReLU):
    """``keras.layers.LeakyReLU`` whose TensorFlow training gradient is taken from its output.

    The function is Keras's, ``f(x) = x`` for ``x > 0`` and ``negative_slope * x`` otherwise,
    and so are the config and the weights (none). Only the backward pass of a TensorFlow
    training step differs: Keras's gradient, ``LeakyReluGrad(dy, x)``, reads the layer's
    *input*, the output of the convolution's bias add; this one reads the *output*,
    ``LeakyReluGrad(dy, f(x))``. For ``negative_slope >= 0``, ``f(x) > 0`` exactly when
    ``x > 0``, so both pick the same branch for every element and give bit-identical gradients.

    Why: when the gradient reads the pre-activation, Grappler's remapper cannot fuse
    Conv2D + BiasAdd + LeakyRelu into one oneDNN convolution (the fused op does not output the
    pre-activation; it logs "remapper failed ... fanout '...LeakyReluGrad' exist for missing
    node '...BiasAdd'" and keeps three ops, two full passes over the activation more). With
    the gradient on the output the fusion applies to every stride-1 and strided ``Conv2D`` of
    the autoencoder, which makes the paper's training step faster on CPU with the same losses
    (``scripts/benchmark_training.py``, ``scripts/check_seeded_losses.py``).

    It is defined here rather than in a module of its own because
    ``scripts/train_any_backend.py`` builds the network from this module alone, on backends without TensorFlow.
    Inference and the other backends run Keras's own ``call``. (Keras refuses negative slopes,
    for which the sign argument would fail.)

    Args:
        negative_slope: Slope for ``x <= 0`` (the paper: 0.2).
        **kwargs: Layer arguments (``name``, ``dtype``, ...).

    Example:
        >>> layer = LeakyReLU(negative_slope=0.2)
        >>> keras.ops.convert_to_numpy(layer(np.array([-1.0, 2.0])))
        array([-0.2,  2. ], dtype=float32)
    """

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if training and keras.backend.backend() == "tensorflow":
            from tfssim.models._tf_ops import leaky_relu_output_gradient

            return leaky_relu_output_gradient(inputs, self.negative_slope)
        return super().call(inputs)


def _leaky(name: str) -> keras.layers.Layer:
    return LeakyReLU(negative_slope=_NEG_SLOPE, name=f"{name}_lrelu")


def build_encoder(
    patch_size: int = 128, channels: int = 1, latent_dim: int = 100, code_channels: int | None = None,
    name: str = "encoder",
) -> keras.Model:
    """Encoder ``[B, p, p, C] -> [B, 1, 1, code_channels]`` (Conv1-Conv9 of the paper).

    ``code_channels`` defaults to ``latent_dim``; the VAE asks for ``2 * latent_dim`` (mean
    and log-variance). Every layer but the last is followed by LeakyReLU(0.2).
    """
    validate_architecture(patch_size, channels, latent_dim)
    inputs = keras.Input((patch_size, patch_size, channels), name="patch")
    x = inputs
    for layer_name, filters, kernel, stride in ENCODER_LAYERS:
        x = keras.layers.Conv2D(
            filters, kernel, strides=stride, padding="same", kernel_initializer=_INIT, name=layer_name
        )(x)
        x = _leaky(layer_name)(x)
    x = keras.layers.Conv2D(
        code_channels or latent_dim, patch_size // 16, padding="valid", kernel_initializer=_INIT, name="conv9"
    )(x)
    return keras.Model(inputs, x, name=name)


def build_decoder(patch_size: int = 128, channels: int = 1, latent_dim: int = 100, name: str = "decoder") -> keras.Model:
    """Decoder ``[B, 1, 1, d] -> [B, p, p, C]``, the encoder mirrored.

    Transposed convolutions stand where the encoder downsamples; LeakyReLU(0.2) follows every
    layer but the output, which is a sigmoid computed in float32 (images live in [0, 1], and
    under mixed precision the output must not be float16).
    """
    validate_architecture(patch_size, channels, latent_dim)
    code = keras.Input((1, 1, latent_dim), name="code")
    x = keras.layers.Conv2DTranspose(
        32, patch_size // 16, padding="valid", kernel_initializer=_INIT, name="deconv9"
    )(code)
    x = _leaky("deconv9")(x)
    mirrored = list(ENCODER_LAYERS[1:])[::-1]  # conv8 ... conv2; conv1 becomes the output layer
    input_filters = [f for _, f, _, _ in ENCODER_LAYERS]
    for (layer_name, _, kernel, stride), filters in zip(mirrored, input_filters[:-1][::-1]):
        # A decoder layer outputs what the mirrored encoder layer took in.
        name_ = "de" + layer_name
        if stride == 2:
            x = keras.layers.Conv2DTranspose(
                filters, kernel, strides=2, padding="same", kernel_initializer=_INIT, name=name_
            )(x)
        else:
            x = keras.layers.Conv2D(filters, kernel, padding="same", kernel_initializer=_INIT, name=name_)(x)
        x = _leaky(name_)(x)
    x = keras.layers.Conv2DTranspose(
        channels, 4, strides=2, padding="same", kernel_initializer=_INIT, name="deconv1"
    )(x)
    outputs = keras.layers.Activation("sigmoid", dtype="float32", name="reconstruction")(x)
    return keras.Model(code, outputs, name=name)


def build_autoencoder(
    patch_size: int = 128, channels: int = 1, latent_dim: int = 100, name: str = "autoencoder"
) -> keras.Model:
    """The paper's convolutional autoencoder as a Functional ``keras.Model``.

    Args:
        patch_size: Side of the square input patches; a multiple of 16 (paper: 32, 64, 128).
        channels: 1 for grayscale, 3 for RGB.
        latent_dim: Size d of the bottleneck (paper's best: 100; ablation 50-1000).
        name: Model name.

    Returns:
        A model mapping ``[B, p, p, C]`` in [0, 1] to reconstructions of the same shape, with
        ``encoder`` and ``decoder`` sub-models (``model.get_layer("encoder")``). For
        ``patch_size=128, channels=1, latent_dim=100`` it has 1,048,549 parameters.

    Example:
        >>> model = build_autoencoder(128, 1, 100)
        >>> model.compile(optimizer="adam", loss=tfssim.core.losses.SSIMLoss())
    """
    encoder = build_encoder(patch_size, channels, latent_dim)
    decoder = build_decoder(patch_size, channels, latent_dim)
    inputs = keras.Input((patch_size, patch_size, channels), name="patch")
    return keras.Model(inputs, decoder(encoder(inputs)), name=name)
