"""Variational autoencoder on the paper's architecture, scored by reconstruction probability."""
from __future__ import annotations

import math
from typing import Any

import tfssim._tensorflow  # noqa: F401,I001 - before keras: without TensorFlow, an ImportError naming the install command
import keras
import tensorflow as tf

from tfssim.models.cae import build_decoder, build_encoder
from tfssim.models.kinds import validate_architecture
from tfssim.errors import InputError

__all__ = ["VariationalAutoencoder", "reconstruction_nll"]


def reconstruction_nll(x: tf.Tensor, samples: tf.Tensor, observation_std: float) -> tf.Tensor:
    """Per-pixel negative log reconstruction probability (An & Cho 2015).

    ``p(x_ij) = (1/N) sum_l Normal(x_ij; xhat_ij^(l), sigma^2)`` over ``N`` decoded posterior
    samples, averaged over channels; larger means more anomalous.

    Args:
        x: Inputs ``[B, H, W, C]``.
        samples: Decoded samples ``[N, B, H, W, C]``.
        observation_std: The decoder's fixed Gaussian standard deviation sigma.

    Returns:
        ``[B, H, W]`` float32 map of ``-log p(x_ij)``.
    """
    x = tf.cast(x, tf.float32)
    samples = tf.cast(samples, tf.float32)
    var = observation_std ** 2
    log_pdf = -0.5 * tf.square(x[None] - samples) / var - 0.5 * math.log(2.0 * math.pi * var)
    n = tf.cast(tf.shape(samples)[0], tf.float32)
    log_p = tf.reduce_logsumexp(log_pdf, axis=0) - tf.math.log(n)
    return -tf.reduce_mean(log_p, axis=-1)


@keras.saving.register_keras_serializable(package="tfssim")
class VariationalAutoencoder(keras.Model):
    """VAE with the paper's encoder/decoder and a Gaussian latent (Kingma & Welling 2014).

    Conv9 outputs ``2 d`` channels (mean and log-variance of ``q(z|x)``). In training the
    decoder sees a reparameterised sample and the model adds the KL divergence to the prior
    ``N(0, I)`` through ``add_loss``, so ``compile(loss=L2Loss())`` + ``fit`` optimise the
    ELBO of a Gaussian decoder with fixed standard deviation ``observation_std``, scaled by
    ``2 sigma^2 / (pixels per patch)`` to sit on the mean-squared-error scale:
    ``loss = MSE + kl_weight * 2 sigma^2 * KL / (p * p * C)``. At inference ``call`` decodes
    the posterior mean; :meth:`sample_reconstructions` and :meth:`anomaly_map` give the
    paper's per-pixel reconstruction probability from ``N`` posterior samples.

    Args:
        patch_size: Input side, multiple of 16.
        channels: 1 or 3.
        latent_dim: d.
        observation_std: sigma of the Gaussian decoder ``p(x|z)``.
        kl_weight: Extra factor on the KL term (1 = the ELBO).
        num_samples: Default N for :meth:`anomaly_map`.
        seed: Seed of the training-time sampling.
    """

    def __init__(
        self,
        patch_size: int = 128,
        channels: int = 1,
        latent_dim: int = 100,
        observation_std: float = 0.1,
        kl_weight: float = 1.0,
        num_samples: int = 10,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "vae")
        super().__init__(**kwargs)
        validate_architecture(patch_size, channels, latent_dim)
        if not observation_std > 0:
            raise InputError(f"observation_std must be positive, got {observation_std}")
        if num_samples < 1:
            raise InputError(f"num_samples must be >= 1, got {num_samples}")
        self.patch_size = patch_size
        self.channels = channels
        self.latent_dim = latent_dim
        self.observation_std = float(observation_std)
        self.kl_weight = float(kl_weight)
        self.num_samples = int(num_samples)
        self.seed = seed
        self.encoder = build_encoder(patch_size, channels, latent_dim, code_channels=2 * latent_dim)
        self.decoder = build_decoder(patch_size, channels, latent_dim)
        self._seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape: Any = None) -> None:
        self.encoder.build((None, self.patch_size, self.patch_size, self.channels))
        self.decoder.build((None, 1, 1, self.latent_dim))
        self.built = True

    def encode(self, x: Any) -> tuple[Any, Any]:
        """Mean and log-variance of ``q(z|x)``, each ``[B, 1, 1, d]`` float32."""
        code = keras.ops.cast(self.encoder(x), "float32")
        mean, log_var = keras.ops.split(code, 2, axis=-1)
        return mean, keras.ops.clip(log_var, -20.0, 10.0)

    def call(self, x: Any, training: bool | None = None) -> Any:
        mean, log_var = self.encode(x)
        if training:
            eps = keras.random.normal(keras.ops.shape(mean), seed=self._seed_generator)
            z = mean + keras.ops.exp(0.5 * log_var) * eps
            kl = -0.5 * keras.ops.sum(1.0 + log_var - keras.ops.square(mean) - keras.ops.exp(log_var), axis=[1, 2, 3])
            pixels = self.patch_size * self.patch_size * self.channels
            scale = self.kl_weight * 2.0 * self.observation_std ** 2 / pixels
            self.add_loss(scale * keras.ops.mean(kl))
        else:
            z = mean
        return self.decoder(keras.ops.cast(z, self.compute_dtype))

    def sample_reconstructions(self, x: Any, num_samples: int | None = None, seed: int = 0) -> Any:
        """Decode ``N`` samples of ``q(z|x)``: ``[N, B, p, p, C]`` float32.

        A fixed integer ``seed`` makes scoring deterministic (the same image gets the same map).
        """
        n = num_samples or self.num_samples
        mean, log_var = self.encode(x)
        batch = keras.ops.shape(mean)[0]
        eps = keras.random.normal((n, batch, 1, 1, self.latent_dim), seed=seed)
        z = mean[None] + keras.ops.exp(0.5 * log_var)[None] * eps
        decoded = self.decoder(keras.ops.cast(keras.ops.reshape(z, (-1, 1, 1, self.latent_dim)), self.compute_dtype))
        return keras.ops.reshape(
            keras.ops.cast(decoded, "float32"), (n, batch, self.patch_size, self.patch_size, self.channels)
        )

    def anomaly_map(self, x: Any, num_samples: int | None = None, seed: int = 0) -> Any:
        """Per-pixel ``-log p(x)`` of patches ``[B, p, p, C]`` -> ``[B, p, p]``."""
        return reconstruction_nll(x, self.sample_reconstructions(x, num_samples, seed), self.observation_std)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "patch_size": self.patch_size,
            "channels": self.channels,
            "latent_dim": self.latent_dim,
            "observation_std": self.observation_std,
            "kl_weight": self.kl_weight,
            "num_samples": self.num_samples,
            "seed": self.seed,
        }
