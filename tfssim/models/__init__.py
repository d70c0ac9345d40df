"""The paper's autoencoders, a registry of the four model kinds by name, and their anomaly maps.

| kind   | network                    | training loss            | anomaly map                   |
|--------|----------------------------|--------------------------|-------------------------------|
| `ssim` | convolutional autoencoder  | 1 - SSIM                 | 1 - SSIM map                  |
| `l2`   | convolutional autoencoder  | mean squared error       | squared error                 |
| `vae`  | VAE on the same net        | MSE + scaled KL          | -log reconstruction prob.     |
| `fm`   | convolutional autoencoder  | l2 + lambda * feature l2 | squared error                 |

Example:
    >>> spec = tfssim.models.get_spec("ssim")  # imports TensorFlow
    >>> model = spec.build_model(patch_size=64, latent_dim=100)
    >>> model.compile(optimizer=keras.optimizers.AdamW(2e-4, weight_decay=1e-5),
    ...               loss=spec.build_loss(ssim_window=11))

The kinds' names, anomaly maps and the architecture's size rule (:mod:`~tfssim.models.kinds`)
import no Keras and are imported at once; every other name (:mod:`~tfssim.models.registry`,
:mod:`~tfssim.models.cae`, :mod:`~tfssim.models.vae`; :mod:`~tfssim.models.scoring`, the
anomaly maps of whole images) on first use (PEP 562 module ``__getattr__``), so that the training settings check a model kind without
TensorFlow. Using one of those names registers the package's Keras classes (``tfssim>LeakyReLU``,
``tfssim>VariationalAutoencoder``) that ``keras.saving.load_model`` needs.
"""
from __future__ import annotations

from tfssim._lazy import lazy_names
from tfssim.models.kinds import MODEL_KINDS, ModelKind, get_kind, validate_architecture

# Names served by a submodule that imports Keras (and TensorFlow): resolved on first access only.
_LAZY = {
    "ENCODER_LAYERS": "tfssim.models.cae",
    "LeakyReLU": "tfssim.models.cae",
    "build_autoencoder": "tfssim.models.cae",
    "build_decoder": "tfssim.models.cae",
    "build_encoder": "tfssim.models.cae",
    "VariationalAutoencoder": "tfssim.models.vae",
    "reconstruction_nll": "tfssim.models.vae",
    "ModelSpec": "tfssim.models.registry",
    "get_spec": "tfssim.models.registry",
    "build_model": "tfssim.models.registry",
    "build_loss": "tfssim.models.registry",
    "kind_of": "tfssim.models.registry",
}

# The package's submodules, reachable as attributes (``tfssim.models.<module>``) before anything imported them.
_SUBMODULES = ("cae", "kinds", "registry", "scoring", "vae")

__all__ = ["MODEL_KINDS", "ModelKind", "get_kind", "validate_architecture", *_LAZY]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, _SUBMODULES, light=("tfssim.models.kinds",))
