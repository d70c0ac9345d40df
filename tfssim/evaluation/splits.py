"""Which validation split an evaluation sets the threshold on: the one the exports were trained with.

``tfssim-evaluate`` and the scripts that evaluate exports share this rule (:func:`split_settings`,
:func:`load_split`), so that a threshold is never set on
a model's own training images. Imports no TensorFlow (the exports' metadata is read as JSON).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tfssim.errors import InputError
from tfssim.run_record import setting_problem
from tfssim.serving.inference import ExportedModel
from tfssim.training.config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SEED", "DEFAULT_VAL_SPLIT", "load_split", "split_settings"]

# The validation split of MVTec AD and plain folders when neither the command line nor the
# export's training_config gives it: tfssim-train's defaults, read from TrainConfig (no TensorFlow).
DEFAULT_VAL_SPLIT: float = TrainConfig.val_split
DEFAULT_SEED: int = TrainConfig.seed


def split_settings(training_configs: Sequence[Mapping[str, Any] | None], val_split: float | None, seed: int | None,
                   names: Sequence[str] | None = None) -> tuple[float, int, list[str]]:
    """The validation split and seed to evaluate exports with, and warnings (``tfssim-evaluate``'s rule).

    A value given on the command line wins; else the first export's ``training_config``
    (``val_split``, ``seed``: the split the model was trained with, so that its training images
    are not used to set the threshold); else tfssim-train's defaults. A warning names the
    exports whose training configs disagree on a value taken from the first one.

    Args:
        training_configs: The exports' ``training_config`` (:attr:`tfssim.export.metadata.ExportMetadata.training_config`;
            ``None`` where an export has none).
        val_split: The validation share given by the user, or ``None``.
        seed: The split's seed given by the user, or ``None``.
        names: The exports' names for the warnings (default: their indices).

    Returns:
        ``(val_split, seed, warnings)``.

    Raises:
        InputError: a stored ``val_split`` or ``seed`` of the wrong type or range (naming the export).
    """
    names = list(names) if names is not None else [str(i) for i in range(len(training_configs))]
    configs = [config if isinstance(config, Mapping) else {} for config in training_configs]
    warnings: list[str] = []
    resolved: dict[str, Any] = {}
    for key, given, default in (("val_split", val_split, DEFAULT_VAL_SPLIT), ("seed", seed, DEFAULT_SEED)):
        if given is not None:
            resolved[key] = given
            continue
        stored = [(name, config.get(key)) for name, config in zip(names, configs)]
        for name, value in stored:
            # Metadata read through ExportMetadata is checked already; a dict from elsewhere is
            # checked here by the same rule (the run folder's table of settings).
            problem = None if value is None else setting_problem(key, value)
            if problem is not None:
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise InputError(f"export {name}: training_config {key} must be {problem}, got {shown}; "
                                 f"re-export the model with tfssim-export, or pass --{key.replace('_', '-')}")
        first = stored[0][1] if stored else None
        resolved[key] = default if first is None else first
        values = {value for _, value in stored if value is not None}
        if len(values) > 1:
            listed = ", ".join(f"{name}: {value}" for name, value in stored if value is not None)
            option = "--" + key.replace("_", "-")
            warnings.append(
                f"warning: the exports were trained with different {key} ({listed}); using "
                f"{resolved[key]} from {names[0]}, so the others may be calibrated on their own training "
                f"images: evaluate them separately or pass {option}"
            )
    return float(resolved["val_split"]), int(resolved["seed"]), warnings

def load_split(dataset: str | Path, exports: Sequence[str | Path | ExportedModel], *, layout: str = "auto",
               val_split: float | None = None, seed: int | None = None,
               warn: Callable[[str], None] | None = None) -> tuple[Any, float, int]:
    """The dataset split to evaluate ``exports`` on: the validation images of their training.

    :func:`split_settings` picks the validation share and seed (given values, else the first
    export's ``training_config``, else tfssim-train's defaults), so the threshold is never set on
    the model's own training images; NanoTWICE's split is fixed by the dataset.

    Args:
        dataset: A labelled dataset folder (NanoTWICE, an MVTec AD category, or a folder layout).
        exports: Export folders or loaded :class:`~tfssim.serving.inference.ExportedModel` s (only their
            metadata is read).
        layout: ``auto``, ``nanotwice``, ``mvtec`` or ``folder``.
        val_split: Validation share to use instead of the training's.
        seed: Split seed to use instead of the training's.
        warn: Called with each warning (exports trained with different splits) before the
            dataset is read; default ``logging.warning`` of this module's logger.

    Returns:
        ``(split, val_split, seed)``: a :class:`tfssim.data.DatasetSplit` and the values used.

    Raises:
        InputError: damaged export metadata or a dataset that does not fit ``layout`` (the
            message names it). FileNotFoundError: an export or the dataset does not exist.

    Example:
        >>> split, *_ = load_split("mvtec/carpet", ["exported_models/carpet"])
        >>> evaluate(split, [ExportedModel.load("exported_models/carpet")], "results")
    """
    from tfssim import data
    from tfssim.export.layout import resolve_export_dir
    from tfssim.export.metadata import read_export_metadata

    metadatas, names = [], []
    for export in exports:
        if isinstance(export, ExportedModel):
            metadatas.append(export.metadata)
            names.append(str(export.path))
        else:
            folder = resolve_export_dir(export)
            metadatas.append(read_export_metadata(folder))  # checked; a fault names the file
            names.append(str(folder))
    given = (val_split, seed)
    val_split, seed, warnings = split_settings([m.training_config for m in metadatas], val_split, seed, names)
    if (layout if layout != "auto" else data.detect_layout(dataset)) != "nanotwice":  # fixed split there
        for line in warnings:
            (warn or logger.warning)(line)
        source = "given" if None not in given else "from the training config where the export has one"
        logger.info("validation split %g, seed %d (%s)", val_split, seed, source)
    split = data.load_dataset(dataset, layout=layout, val_fraction=val_split, seed=seed)
    return split, val_split, seed
