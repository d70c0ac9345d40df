"""Keras 3 losses for autoencoders: SSIM, MS-SSIM, l2 and feature matching.

All losses are written in ``keras.ops`` (any Keras backend; the feature-matching loss needs
TensorFlow for its backbone, imported when one is built), compute in float32 whatever the model's dtype policy, return one value per
sample (Keras applies the reduction) and are registered for ``.keras`` serialization, so a
model compiled with them reloads with ``keras.saving.load_model``.

Example:
    >>> model = tfssim.models.build_autoencoder(patch_size=128, latent_dim=100)
    >>> model.compile(optimizer=keras.optimizers.AdamW(2e-4, weight_decay=1e-5),
    ...               loss=tfssim.core.losses.SSIMLoss(window_size=11))
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfssim.core import ssim as ssim_lib
from tfssim.core.ssim import SSIMParams
from tfssim.errors import InputError

__all__ = ["SSIMLoss", "MSSSIMLoss", "L2Loss", "FeatureMatchingLoss", "get"]

_PACKAGE = "tfssim"


# The SSIM parameters MS-SSIM uses (a Gaussian window; no exponents).
_MS_SSIM_KEYS = ("window_size", "sigma", "k1", "k2", "data_range")


def _params_field(loss: keras.losses.Loss, name: str) -> Any:
    """``loss.window_size``, ``loss.sigma``, ...: the fields of the loss's :class:`SSIMParams`."""
    params = loss.__dict__.get("params")
    if params is not None and name in SSIMParams.keys():
        return getattr(params, name)
    raise AttributeError(f"{type(loss).__name__!r} object has no attribute {name!r}")


def _as_float32(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    y_true = ops.cast(ops.convert_to_tensor(y_true), "float32")
    y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
    if len(y_true.shape) != 4 or len(y_pred.shape) != 4:
        raise InputError(
            f"autoencoder losses expect image batches [batch, height, width, channels]; "
            f"got targets {tuple(y_true.shape)} and predictions {tuple(y_pred.shape)}"
        )
    if y_true.shape[-1] is not None and y_pred.shape[-1] is not None and y_true.shape[-1] != y_pred.shape[-1]:
        raise InputError(
            f"targets have {y_true.shape[-1]} channels but the model outputs {y_pred.shape[-1]}; "
            "build the model with the same channel count as the data (grayscale=1, RGB=3)"
        )
    return y_true, y_pred


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SSIMLoss(keras.losses.Loss):
    """``1 - mean SSIM`` between targets and reconstructions (Bergmann et al. 2019, Eq. 5).

    Args:
        params: The SSIM's :class:`tfssim.core.ssim.SSIMParams` (default the paper's: Gaussian 11x11
            window, K1 = 0.01, K2 = 0.03); exposed as ``loss.params`` and its fields as
            attributes (``loss.window_size``).
        **ssim_kwargs: Fields of :class:`tfssim.core.ssim.SSIMParams` (``window_size``, ``sigma``,
            ``weighting``, ``k1``, ``k2``, ``alpha``, ``beta``, ``gamma``, ``data_range``),
            overriding ``params``; ``get_config`` stores all nine flat (as before this type).
        reduction: Keras reduction over the per-sample losses.
        name: Loss name.

    Returns (when called):
        The reduced loss; per sample it lies in ``[0, 2]``, 0 for a perfect reconstruction.

    Example:
        >>> loss = SSIMLoss()
        >>> x = keras.random.uniform([2, 32, 32, 1])
        >>> float(loss(x, x)) < 1e-6
        True
    """

    def __init__(
        self,
        params: SSIMParams | None = None,
        *,
        reduction: str = "sum_over_batch_size",
        name: str = "ssim_loss",
        dtype: Any = None,
        **ssim_kwargs: Any,
    ) -> None:
        params = SSIMParams.of(params, **ssim_kwargs)  # validated before Keras sees anything
        super().__init__(name=name, reduction=reduction, dtype=dtype or "float32")
        self.params = params

    def __getattr__(self, name: str) -> Any:
        return _params_field(self, name)

    @property
    def ssim_kwargs(self) -> dict[str, Any]:
        """The SSIM parameters, as keyword arguments of :func:`tfssim.core.ssim.ssim_maps`."""
        return self.params.to_dict()

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true, y_pred = _as_float32(y_true, y_pred)
        return 1.0 - ssim_lib.ssim(y_true, y_pred, self.params)

    def get_config(self) -> dict[str, Any]:
        # Flat keys (window_size, sigma, ...), as before SSIMParams: saved .keras files still load.
        config = super().get_config()
        config.update(self.params.to_dict())
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MSSSIMLoss(keras.losses.Loss):
    """``1 - MS-SSIM`` (multi-scale SSIM, Wang et al. 2003), see :func:`tfssim.core.ssim.ms_ssim`.

    Args:
        power_factors: Per-scale weights; ``None`` fits the standard five weights to the
            patch size (a 128-pixel patch with an 11 window gets four scales).
        **ssim_kwargs: The Gaussian window's ``window_size`` and ``sigma``, ``k1``, ``k2`` and
            ``data_range`` (fields of :class:`tfssim.core.ssim.SSIMParams`).
    """

    def __init__(
        self,
        power_factors: tuple[float, ...] | list[float] | None = None,
        *,
        reduction: str = "sum_over_batch_size",
        name: str = "ms_ssim_loss",
        dtype: Any = None,
        **ssim_kwargs: Any,
    ) -> None:
        other = set(ssim_kwargs) - set(_MS_SSIM_KEYS)
        if other:
            raise InputError(f"MS-SSIM takes the SSIM parameters {', '.join(_MS_SSIM_KEYS)}; got {sorted(other)}")
        params = SSIMParams(**ssim_kwargs)
        super().__init__(name=name, reduction=reduction, dtype=dtype or "float32")
        self.power_factors = tuple(power_factors) if power_factors is not None else None
        self.params = params

    def __getattr__(self, name: str) -> Any:
        return _params_field(self, name)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true, y_pred = _as_float32(y_true, y_pred)
        kwargs = {k: getattr(self.params, k) for k in _MS_SSIM_KEYS}
        return 1.0 - ssim_lib.ms_ssim(y_true, y_pred, power_factors=self.power_factors, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["power_factors"] = list(self.power_factors) if self.power_factors is not None else None
        config.update({k: getattr(self.params, k) for k in _MS_SSIM_KEYS})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class L2Loss(keras.losses.Loss):
    """Per-pixel squared error, averaged over pixels and channels (the paper's Eq. 2 / HWC).

    The mean rather than the sum keeps the loss scale independent of the patch size, so the
    same learning rate works for 32, 64 and 128 pixel patches.
    """

    def __init__(self, reduction: str = "sum_over_batch_size", name: str = "l2_loss", dtype: Any = None) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype or "float32")

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true, y_pred = _as_float32(y_true, y_pred)
        return ops.mean(ops.square(y_true - y_pred), axis=(1, 2, 3))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FeatureMatchingLoss(keras.losses.Loss):
    """Feature-matching loss ``l2(x, x_hat) + weight * mean((F(x) - F(x_hat))**2)`` (Eq. 3).

    ``F`` is a frozen feature extractor: the first ``num_conv_layers`` convolutions of a
    pretrained ImageNet CNN (see :func:`tfssim.core.features.build_feature_extractor`).
    The paper used AlexNet's first three conv layers with ``weight = 1``; Keras ships no
    AlexNet, so the default is VGG16's first three (``block1_conv1``, ``block1_conv2``,
    ``block2_conv1``). Grayscale inputs are repeated to three channels.

    Args:
        weight: lambda, the weight of the feature term.
        backbone: ``"vgg16"`` or ``"vgg19"``.
        num_conv_layers: How many leading conv layers form F.
        weights: ``"imagenet"`` (downloaded by Keras on first use), a path to a local
            weights file for the backbone (``.h5`` / ``.weights.h5``), or ``None`` for random
            weights (tests only: random features carry no perceptual meaning).
        feature_extractor: An already-built frozen ``keras.Model`` taking VGG "caffe" input
            to use as F instead; not serialised (the backbone arguments are).
    """

    def __init__(
        self,
        weight: float = 1.0,
        backbone: str = "vgg16",
        num_conv_layers: int = 3,
        weights: str | None = "imagenet",
        feature_extractor: keras.Model | None = None,
        reduction: str = "sum_over_batch_size",
        name: str = "feature_matching_loss",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype or "float32")
        if weight < 0:
            raise InputError(f"feature-matching weight lambda must be >= 0, got {weight}")
        self.weight = float(weight)
        self.backbone = backbone
        self.num_conv_layers = int(num_conv_layers)
        self.weights = weights
        # Built eagerly so that a missing weights file fails at construction, not mid-fit.
        from tfssim.core.features import build_feature_extractor  # TensorFlow: only when used

        self.feature_extractor = feature_extractor or build_feature_extractor(
            backbone=backbone, num_conv_layers=num_conv_layers, weights=weights
        )

    def call(self, y_true: Any, y_pred: Any) -> Any:
        from tfssim.core.features import extract_features

        y_true, y_pred = _as_float32(y_true, y_pred)
        pixel = ops.mean(ops.square(y_true - y_pred), axis=(1, 2, 3))
        f_true = ops.stop_gradient(ops.cast(extract_features(self.feature_extractor, y_true), "float32"))
        f_pred = ops.cast(extract_features(self.feature_extractor, y_pred), "float32")
        feature = ops.mean(ops.square(f_true - f_pred), axis=(1, 2, 3))
        return pixel + self.weight * feature

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            weight=self.weight, backbone=self.backbone, num_conv_layers=self.num_conv_layers,
            weights=self.weights,
        )
        return config


_LOSSES = {"ssim": SSIMLoss, "ms_ssim": MSSSIMLoss, "l2": L2Loss, "fm": FeatureMatchingLoss}


def get(name: str, **kwargs: Any) -> keras.losses.Loss:
    """Build a loss by short name: ``"ssim"``, ``"ms_ssim"``, ``"l2"`` or ``"fm"``."""
    try:
        cls = _LOSSES[name]
    except KeyError:
        raise InputError(f"unknown loss {name!r}; choose one of {sorted(_LOSSES)}") from None
    return cls(**kwargs)
