"""The four model kinds by name, the anomaly map each is scored with, and the sizes an autoencoder takes.

Plain Python, no Keras: the training settings (:class:`tfssim.training.config.TrainConfig`) check
a run's model and sizes against these without loading TensorFlow, and
:mod:`tfssim.models.registry` builds each kind's network and loss from this table.
"""
from __future__ import annotations

from dataclasses import dataclass

from tfssim.errors import InputError

__all__ = ["MODEL_KINDS", "ModelKind", "get_kind", "validate_architecture"]


@dataclass(frozen=True)
class ModelKind:
    """One model kind: its name, a one-line description, and the anomaly map it is scored with.

    Attributes:
        name: ``"ssim"``, ``"l2"``, ``"vae"`` or ``"fm"``.
        description: What the kind is, in one line.
        residual: ``"ssim"``, ``"l2"`` or ``"vae"``: which anomaly map the kind is evaluated with.
    """

    name: str
    description: str
    residual: str


_KINDS = {
    kind.name: kind
    for kind in (
        ModelKind("ssim", "autoencoder trained and scored with SSIM (the paper's method)", "ssim"),
        ModelKind("l2", "autoencoder trained and scored with per-pixel l2", "l2"),
        ModelKind("vae", "variational autoencoder scored by reconstruction probability", "vae"),
        ModelKind("fm", "feature-matching autoencoder (l2 + lambda * pretrained-CNN feature l2), scored with l2",
                  "l2"),
    )
}
MODEL_KINDS = tuple(_KINDS)


def get_kind(kind: str) -> ModelKind:
    """The :class:`ModelKind` named ``kind``.

    Raises:
        InputError: ``kind`` is not one of :data:`MODEL_KINDS`.
    """
    try:
        return _KINDS[kind]
    except (KeyError, TypeError):
        raise InputError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}") from None


def validate_architecture(patch_size: int, channels: int, latent_dim: int) -> None:
    """Raise ``ValueError`` unless the three sizes define a valid paper autoencoder."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 16 or patch_size % 16:
        raise InputError(
            f"patch size must be a multiple of 16 (the encoder halves it four times), got {patch_size!r}; "
            "the paper uses 32, 64 or 128"
        )
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise InputError(f"latent dimension d must be a positive integer, got {latent_dim!r}")
