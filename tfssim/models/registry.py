"""How each model kind is built and trained: its network, its loss, and telling a built model's kind.

The kinds themselves (names, anomaly maps, the size rule) are :mod:`tfssim.models.kinds`, which
needs no Keras; this module adds the Keras builders.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import tfssim._tensorflow  # noqa: F401,I001 - before keras: without TensorFlow, an ImportError naming the install command
import keras

from tfssim.core import losses
from tfssim.core.ssim_params import SSIMParams
from tfssim.errors import InputError
from tfssim.models.cae import build_autoencoder
from tfssim.models.kinds import MODEL_KINDS, ModelKind, get_kind
from tfssim.models.vae import VariationalAutoencoder

__all__ = ["ModelSpec", "build_loss", "build_model", "get_spec", "kind_of"]


@dataclass(frozen=True)
class ModelSpec:
    """How one model kind is built, trained and scored: its :class:`~tfssim.models.kinds.ModelKind`
    (name, description, anomaly map) and the builders of its network and loss."""

    info: ModelKind
    _build_model: Callable[..., keras.Model]
    _build_loss: Callable[..., keras.losses.Loss]

    @property
    def kind(self) -> str:
        """The kind's name: ``"ssim"``, ``"l2"``, ``"vae"`` or ``"fm"``."""
        return self.info.name

    @property
    def description(self) -> str:
        """What the kind is, in one line."""
        return self.info.description

    @property
    def residual(self) -> str:
        """Which anomaly map the kind is evaluated with: ``"ssim"``, ``"l2"`` or ``"vae"``."""
        return self.info.residual

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
    spec.kind: spec
    for spec in (
        ModelSpec(
            get_kind("ssim"), _named_autoencoder("ssim_autoencoder"),
            lambda ssim_params, ssim_overrides, **_: losses.SSIMLoss(params=SSIMParams.of(ssim_params, **ssim_overrides)),
        ),
        ModelSpec(get_kind("l2"), _named_autoencoder("l2_autoencoder"), lambda **_: losses.L2Loss()),
        ModelSpec(get_kind("vae"), _build_vae, lambda **_: losses.L2Loss()),
        ModelSpec(
            get_kind("fm"), _named_autoencoder("fm_autoencoder"),
            lambda fm_weight, fm_weights, fm_backbone, **_: losses.FeatureMatchingLoss(
                weight=fm_weight, weights=fm_weights, backbone=fm_backbone
            ),
        ),
    )
}


def get_spec(kind: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``kind`` (``"ssim"``, ``"l2"``, ``"vae"`` or ``"fm"``)."""
    return _SPECS[get_kind(kind).name]


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
