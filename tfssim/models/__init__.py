"""The paper's autoencoders and a registry of the four model kinds by name.

| kind   | network                    | training loss            | anomaly map                   |
|--------|----------------------------|--------------------------|-------------------------------|
| `ssim` | convolutional autoencoder  | 1 - SSIM                 | 1 - SSIM map                  |
| `l2`   | convolutional autoencoder  | mean squared error       | squared error                 |
| `vae`  | VAE on the same net        | MSE + scaled KL          | -log reconstruction prob.     |
| `fm`   | convolutional autoencoder  | l2 + lambda * feature l2 | squared error                 |

Example:
    >>> spec = tfssim.models.get_spec("ssim")
    >>> model = spec.build_model(patch_size=64, latent_dim=100)
    >>> model.compile(optimizer=keras.optimizers.AdamW(2e-4, weight_decay=1e-5),
    ...               loss=spec.build_loss(ssim_window=11))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import tfssim._tensorflow  # noqa: F401,I001 - before keras: without TensorFlow, an ImportError naming the install command
import keras

from tfssim.core import losses
from tfssim.models.cae import (
    ENCODER_LAYERS,
    LeakyReLU,
    build_autoencoder,
    build_decoder,
    build_encoder,
    validate_architecture,
)
from tfssim.models.features import WeightsUnavailableError, build_feature_extractor, extract_features
from tfssim.models.vae import VariationalAutoencoder, reconstruction_nll
from tfssim.errors import InputError
from tfssim.core.ssim_params import SSIMParams

__all__ = [
    "ENCODER_LAYERS", "LeakyReLU", "MODEL_KINDS", "ModelSpec", "VariationalAutoencoder", "build_autoencoder",
    "build_decoder", "build_encoder", "build_feature_extractor", "extract_features", "get_spec",
    "build_model", "build_loss", "reconstruction_nll", "validate_architecture", "kind_of", "WeightsUnavailableError",
]


@dataclass(frozen=True)
class ModelSpec:
    """How one model kind is built, trained and scored."""

    kind: str
    description: str
    residual: str  # "ssim", "l2" or "vae": which anomaly map the kind is evaluated with
    _build_model: Callable[..., keras.Model]
    _build_loss: Callable[..., keras.losses.Loss]

    def build_model(
        self, patch_size: int = 128, channels: int = 1, latent_dim: int = 100, **kwargs: Any
    ) -> keras.Model:
        """Build an untrained model of this kind."""
        return self._build_model(patch_size=patch_size, channels=channels, latent_dim=latent_dim, **kwargs)

    def build_loss(
        self,
        ssim_window: int | None = None,
        fm_weight: float = 1.0,
        fm_weights: str | None = "imagenet",
        fm_backbone: str = "vgg16",
        *,
        ssim_params: SSIMParams | None = None,
        **ssim_kwargs: Any,
    ) -> keras.losses.Loss:
        """Build this kind's training loss; arguments that do not apply to it are ignored.

        Args:
            ssim_window: SSIM window size (overrides ``ssim_params.window_size``).
            fm_weight: Weight of the feature term (``fm``).
            fm_weights: ``"imagenet"``, a weights file or ``None`` (``fm``).
            fm_backbone: Feature extractor (``fm``).
            ssim_params: The SSIM of the loss (``ssim``); default :class:`SSIMParams` ().
            **ssim_kwargs: :class:`SSIMParams` fields overriding ``ssim_params``.

        Returns:
            The loss.
        """
        if ssim_window is not None:
            ssim_kwargs["window_size"] = ssim_window
        return self._build_loss(ssim_params=ssim_params, ssim_overrides=ssim_kwargs, fm_weight=fm_weight,
                                fm_weights=fm_weights, fm_backbone=fm_backbone)


def _named_autoencoder(name: str) -> Callable[..., keras.Model]:
    def build(patch_size: int, channels: int, latent_dim: int, **_: Any) -> keras.Model:
        return build_autoencoder(patch_size, channels, latent_dim, name=name)
    return build


def _build_vae(patch_size: int, channels: int, latent_dim: int, **kwargs: Any) -> keras.Model:
    model = VariationalAutoencoder(patch_size, channels, latent_dim, **kwargs)
    model.build()
    return model


_SPECS = {
    "ssim": ModelSpec(
        "ssim", "autoencoder trained and scored with SSIM (the paper's method)", "ssim",
        _named_autoencoder("ssim_autoencoder"),
        lambda ssim_params, ssim_overrides, **_: losses.SSIMLoss(params=SSIMParams.of(ssim_params, **ssim_overrides)),
    ),
    "l2": ModelSpec(
        "l2", "autoencoder trained and scored with per-pixel l2", "l2",
        _named_autoencoder("l2_autoencoder"), lambda **_: losses.L2Loss(),
    ),
    "vae": ModelSpec(
        "vae", "variational autoencoder scored by reconstruction probability", "vae",
        _build_vae, lambda **_: losses.L2Loss(),
    ),
    "fm": ModelSpec(
        "fm", "feature-matching autoencoder (l2 + lambda * pretrained-CNN feature l2), scored with l2", "l2",
        _named_autoencoder("fm_autoencoder"),
        lambda fm_weight, fm_weights, fm_backbone, **_: losses.FeatureMatchingLoss(
            weight=fm_weight, weights=fm_weights, backbone=fm_backbone
        ),
    ),
}
MODEL_KINDS = tuple(_SPECS)


def get_spec(kind: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``kind`` (``"ssim"``, ``"l2"``, ``"vae"`` or ``"fm"``)."""
    try:
        return _SPECS[kind]
    except KeyError:
        raise InputError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}") from None


def build_model(
    kind: str, patch_size: int = 128, channels: int = 1, latent_dim: int = 100, **kwargs: Any
) -> keras.Model:
    """Build an untrained model of ``kind``; see :class:`ModelSpec`."""
    return get_spec(kind).build_model(patch_size, channels, latent_dim, **kwargs)


def build_loss(kind: str, **kwargs: Any) -> keras.losses.Loss:
    """Build the training loss of ``kind``; see :meth:`ModelSpec.build_loss`."""
    return get_spec(kind).build_loss(**kwargs)


def kind_of(model: keras.Model) -> str:
    """Infer the kind of a model built by this registry, from its class and name."""
    if isinstance(model, VariationalAutoencoder):
        return "vae"
    for kind in ("ssim", "l2", "fm"):
        if model.name == f"{kind}_autoencoder":
            return kind
    raise InputError(
        f"cannot tell the kind of model {model.name!r}; pass it explicitly (one of {', '.join(MODEL_KINDS)})"
    )
