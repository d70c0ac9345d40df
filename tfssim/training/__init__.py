"""Training runs: one function that ``tfssim-train`` and user scripts share.

A run lives in one folder::

    RUN_DIR/
      config.json           the resolved configuration, package and TensorFlow versions
      final.keras           the model after the last epoch
      best.keras            the model with the lowest validation loss (training loss if no
                            validation images)
      history.csv           one row per finished epoch
      training_curves.png   loss / val_loss per epoch
      tensorboard/          TensorBoard logs
      examples/             input / reconstruction / residual PNGs of validation patches
      state/                resume state: progress.json (epochs done, best value) naming the
                            weights + optimizer file of the last finished epoch
      .tfssim-train.lock    held (flock) while a tfssim-train uses the folder: a second one is refused

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
(strategies and the multi-worker loop) and :mod:`~tfssim.training.loop` (:func:`train`).
"""
from __future__ import annotations

import tfssim._tensorflow  # noqa: F401,I001 - first: without TensorFlow, an ImportError naming the install command
from tfssim.training.config import (
    CONFIG_ALIASES,
    CONFIG_MAX_BYTES,
    CONFIG_MAX_DEPTH,
    LAYOUTS,
    STRATEGIES,
    TrainConfig,
    load_config,
)
from tfssim.training.loop import OutOfMemoryError, TrainResult, train
from tfssim.training.optimizer import FusedAdamW
from tfssim.training.run_folder import (
    CONFIG_NAME,
    HISTORY_NAME,
    LOCK_NAME,
    PROGRESS_NAME,
    RunExistsError,
    RunInUseError,
    data_fingerprint,
    resume_config,
)

__all__ = [
    "TrainConfig", "TrainResult", "train", "FusedAdamW", "load_config", "RunExistsError", "RunInUseError",
    "OutOfMemoryError", "STRATEGIES", "LAYOUTS", "LOCK_NAME", "CONFIG_NAME", "HISTORY_NAME", "PROGRESS_NAME",
    "CONFIG_ALIASES", "CONFIG_MAX_BYTES", "CONFIG_MAX_DEPTH", "data_fingerprint", "resume_config",
]
