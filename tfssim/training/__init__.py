"""Training runs: one function that ``tfssim-train`` and user scripts share.

A run lives in one folder, whose files :mod:`tfssim.run_record` names and reads.

Under ``strategy="multiworker"`` only the chief (task 0) writes the run folder, and training runs
in a custom distributed loop instead of ``model.fit`` (see ``_custom_fit``).

Every file is written atomically (temporary name, then ``os.replace``), so a run killed at
any moment resumes from its last finished epoch with ``resume=True`` and keeps every history
row it had; the patch pipeline is index-seeded and skips ahead to the batches not yet seen.
A new run that fails (or is interrupted) before its first epoch finished removes what it
created, so that the corrected command can use the same folder.

The package, by seam: :mod:`~tfssim.training.config` (the settings and their checks),
:mod:`~tfssim.training.optimizer` (AdamW with TensorFlow's fused Adam step),
:mod:`~tfssim.training.run_folder` (the folder, resume state, lock; its record's schema is
:mod:`tfssim.run_record`, which imports no TensorFlow), :mod:`~tfssim.training.distribute`
(strategies and the multi-worker loop), :mod:`~tfssim.training.precision` (the mixed-precision
policy) and :mod:`~tfssim.training.loop` (:func:`train`).

Importing this package loads no TensorFlow: the settings (:class:`TrainConfig`, :func:`load_config`
and the choice lists) are imported at once, every other name on first use (PEP 562 module
``__getattr__``), so that ``tfssim-train --help`` and the scripts that only read the settings
stay cheap.
"""
from __future__ import annotations

from tfssim._lazy import lazy_names
from tfssim.training.config import (
    CONFIG_ALIASES,
    CONFIG_MAX_BYTES,
    CONFIG_MAX_DEPTH,
    PRECISION_MODES,
    STRATEGIES,
    TrainConfig,
    load_config,
)

# Names served by a submodule that imports TensorFlow: resolved on first access only.
_LAZY = {
    "train": "tfssim.training.loop",
    "TrainResult": "tfssim.training.loop",
    "OutOfMemoryError": "tfssim.training.loop",
    "FusedAdamW": "tfssim.training.optimizer",
    "RunExistsError": "tfssim.training.run_folder",
    "RunInUseError": "tfssim.training.run_folder",
    "resume_config": "tfssim.training.run_folder",
}

# The package's submodules, reachable as attributes (``tfssim.training.<module>``) before anything imported them.
_SUBMODULES = ("config", "distribute", "loop", "optimizer", "precision", "progress", "run_folder")

__all__ = [
    "TrainConfig", "load_config", "STRATEGIES", "PRECISION_MODES", "CONFIG_ALIASES", "CONFIG_MAX_BYTES",
    "CONFIG_MAX_DEPTH", *_LAZY,
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, _SUBMODULES, light=("tfssim.training.config",))
