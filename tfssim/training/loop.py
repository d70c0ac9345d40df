"""The training loop: :func:`train`, loading the run's images, the banner, the callbacks.

:func:`train` claims the run folder (:mod:`tfssim.training.run_folder`), picks the strategy
(:mod:`tfssim.training.distribute`) and runs ``model.fit`` (or the multi-worker loop) with the
run folder's :class:`~tfssim.training.run_folder._RunState` callback writing history, resume
state and the best model after every epoch, and TensorBoard's.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfssim import __version__
from tfssim._io import atomic_write, atomic_write_text, machine_errno
from tfssim.core import resize
from tfssim.errors import InputError
from tfssim.models import get_spec
from tfssim.run_record import (
    BEST_MODEL_NAME,
    CONFIG_NAME,
    CURVES_NAME,
    EXAMPLES_DIR,
    FINAL_MODEL_NAME,
    HISTORY_NAME,
    LOCK_NAME,
    STATE_DIR,
    TENSORBOARD_DIR,
    read_resume_state,
    resume_settings,
    run_record,
)
from tfssim.training import precision
from tfssim.training.config import TrainConfig
from tfssim.training.distribute import (
    _all_workers,
    _custom_fit,
    _from_chief,
    _is_chief,
    _make_strategy,
    _strategy_label,
    _strategy_name,
)
from tfssim.training.optimizer import FusedAdamW
from tfssim.training.progress import ProgressBar, quiet_remapper, wants_bar
from tfssim.training.run_folder import (
    RunExistsError,
    _check_same_data,
    _claim_run_folder,
    _load_checkpoint,
    _RunState,
    check_run_settings,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` leaves behind."""

    run_dir: Path
    history: dict[str, list[float]]
    epochs_run: int
    best_path: Path
    final_path: Path
    seconds: float
    images: dict[str, int] = field(default_factory=dict)
    chief: bool = True  # False on the other workers of a multi-worker run, which write no files


def _load_images(config: TrainConfig) -> tuple[Any, list[np.ndarray], list[np.ndarray], list[str]]:
    from tfssim import data

    try:
        split = data.load_dataset(config.data, layout=config.layout, val_fraction=config.val_split, seed=config.seed)
    except (ValueError, FileNotFoundError) as err:
        if config.layout == "auto":
            raise
        raise InputError(
            f"{config.data} does not look like a {config.layout} dataset: {err} (check DATA, or use --layout auto "
            "to detect the layout)"
        ) from None
    train, train_paths, bad_train = data.read_images(split.train, config.channels)
    val, val_paths, bad_val = data.read_images(split.val, config.channels)
    skipped = [f"{p}: {reason}" for p, reason in bad_train + bad_val]
    if skipped and not config.skip_bad_images:
        raise InputError(
            f"unreadable images in {config.data}: {'; '.join(skipped)} (fix or remove them, or pass --skip-bad-images)"
        )
    if not train:
        raise InputError(f"no readable training images in {config.data} (all were skipped); add readable images")
    if not resize.is_identity(config.scale, config.image_size):
        # Before patches are drawn (and before the size checks): the export resizes requests alike.
        train = [resize.resize_to(img, config.scale, config.image_size).numpy() for img in train]
        val = [resize.resize_to(img, config.scale, config.image_size).numpy() for img in val]
    scaled = f" at --scale {config.scale:g}" if config.scale != 1.0 else ""
    too_small = [(p, img.shape) for p, img in zip(train_paths, train) if min(img.shape[:2]) < config.patch_size]
    if too_small:
        smallest = min(min(s[:2]) for _, s in too_small)
        fits = smallest // 16 * 16
        hint = f"use --patch-size {fits} or smaller (a multiple of 16)" if fits >= 16 else \
            "use larger images (at least 16x16)"
        if scaled:
            hint += " or a larger --scale"
        more = f" and {len(too_small) - 5} more" if len(too_small) > 5 else ""
        raise InputError(
            f"images smaller than the {config.patch_size}x{config.patch_size} patch"
            + (f"{scaled} (sizes after resizing)" if scaled else "") + ": "
            + ", ".join(f"{p} {s[0]}x{s[1]}" for p, s in too_small[:5])
            + f"{more}; {hint}, or remove those images"
        )
    dropped = [f"{p} {v.shape[0]}x{v.shape[1]}" for p, v in zip(val_paths, val) if min(v.shape[:2]) < config.patch_size]
    if dropped:
        logger.warning(
            "validation images smaller than the %dx%d patch are not used: %s", config.patch_size, config.patch_size,
            ", ".join(dropped),
        )
        val = [v for v in val if min(v.shape[:2]) >= config.patch_size]
        if not val:
            logger.warning("no validation image is left: %s is chosen by the training loss instead", BEST_MODEL_NAME)
    return split, train, val, skipped


def _banner(config: TrainConfig, split: Any, train: Sequence[np.ndarray], val: Sequence[np.ndarray],
            policy: str, strategy: tf.distribute.Strategy, skipped: list[str], initial_epoch: int) -> None:
    devices = ", ".join(d.name for d in tf.config.list_logical_devices() if d.device_type in ("GPU", "CPU"))
    pixels = sum(int(np.prod(img.shape[:2])) for img in train)
    lines = [
        f"tfssim {__version__} / TensorFlow {tf.__version__} / Keras {keras.__version__}",
        f"data      {config.data} (layout: {split.layout}): {len(train)} training images ({pixels / 1e6:.2f} Mpx), "
        f"{len(val)} validation images, {len(split.test)} test images",
        f"model     {config.model}: {get_spec(config.model).description}"
        + (f"; SSIM window {config.ssim_window} ({config.ssim_weighting})" if get_spec(config.model).residual == "ssim"
           else ""),
        f"patches   {config.patches_per_epoch} of {config.patch_size}x{config.patch_size}x{config.channels} per epoch, "
        f"batch {config.batch_size}, augment {'on' if config.augment else 'off'}"
        + ("" if resize.is_identity(config.scale, config.image_size) else
           f"; images resized {resize.describe(config.scale, config.image_size)} ({resize.INTERPOLATION})"),
        f"training  {config.epochs} epochs, AdamW lr {config.learning_rate:g}, weight decay {config.weight_decay:g}"
        + (f", resuming after epoch {initial_epoch}" if initial_epoch else ""),
        f"devices   {devices}; precision {policy}; strategy {_strategy_label(strategy)}",
    ]
    if skipped:
        lines.append(f"skipped   {len(skipped)} unreadable image(s): " + "; ".join(skipped))
    for line in lines:
        logger.info(line)


def _versions() -> dict[str, str]:
    return {"tfssim": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _build_loss(config: TrainConfig) -> keras.losses.Loss:
    return get_spec(config.model).build_loss(
        ssim_params=config.ssim_params, fm_weight=config.fm_weight, fm_weights=config.fm_weights
    )


def _compile(model: keras.Model, config: TrainConfig, loss: keras.losses.Loss) -> None:
    optimizer = FusedAdamW(learning_rate=config.learning_rate, weight_decay=config.weight_decay)
    model.compile(optimizer=optimizer, loss=loss, jit_compile=config.jit_compile)


def _save_examples(model: keras.Model, config: TrainConfig, patches: np.ndarray, folder: Path) -> None:
    from tfssim import plots
    from tfssim.core.ssim import ssim_maps

    folder.mkdir(exist_ok=True)
    x = patches[:4]
    if len(x) == 0:
        return
    # A direct call, not predict(): under MultiWorkerMirroredStrategy predict() would distribute
    # the batch over the workers, and only the chief gets here.
    recon = keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float32)
    if config.model == "vae":
        residual = np.asarray(model.anomaly_map(x, config.vae_samples))
    elif get_spec(config.model).residual == "ssim":
        residual = 1.0 - ssim_maps(x, recon, config.ssim_params, padding="same").ssim.numpy().mean(axis=-1)
    else:
        residual = np.mean(np.square(x - recon), axis=-1)
    plots.plot_examples(list(x), list(recon), list(residual), folder / "examples.png")


# --- the run --------------------------------------------------------------------------------


def train(config: TrainConfig, *, resume: bool = False, verbose: int | str = "auto") -> TrainResult:
    """Train one model as configured and leave a complete run folder.

    Args:
        config: The run's configuration (validated here).
        resume: Continue the run in ``config.output`` from its last finished epoch. Without it
            an existing run folder raises :class:`RunExistsError`.
        verbose: The progress bar within each epoch (on stderr; the one ``epoch N/M`` log line
            per epoch is always written): ``"auto"`` shows it when stderr is a terminal, ``1``
            always, ``0`` or ``2`` never. The same under ``fit`` and the multi-worker loop.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: bad configuration or data (message names the option/path and the fix). Under
            ``strategy="multiworker"`` a worker whose chief (or another worker) stopped before
            training raises it too, saying so, instead of waiting for it. With ``resume``, a
            damaged run folder (:func:`tfssim.run_record.read_resume_state`, or a checkpoint that
            does not load) is one line naming the file; every file is read before any is written.
        RunExistsError: ``config.output`` holds a run and ``resume`` is false.
        OSError: the run folder cannot be created or written (e.g. no permission).
        FloatingPointError: the loss (or a weight) became NaN/inf; the last good epoch's state
            is kept and no final model is written.
        tfssim.core.features.WeightsUnavailableError: ``model="fm"`` with ImageNet weights that cannot
            be downloaded (the message names ``--weights FILE``); nothing is written.

    Side effects on the calling process:
        * Random seeds: the model is built after ``keras.utils.set_random_seed(config.seed)``,
          which seeds Python's ``random``, NumPy's global generator and TensorFlow's global seed
          (and Keras's). That makes the initial weights reproducible; the seeds are not
          restored afterwards, so random draws after ``train`` returns follow from
          ``config.seed``. (The patch pipeline has its own index-seeded generators.)
        * Keras's global dtype policy is set from ``config.mixed_precision`` for the run and
          restored to the caller's when ``train`` returns or raises.
        * ``strategy="multiworker"`` starts TensorFlow's collective runtime in this process.
    """
    config.validate()
    # The strategy comes first: MultiWorkerMirroredStrategy must exist before other TF work.
    strategy = _make_strategy(config.strategy)
    with precision.precision_policy(config.mixed_precision) as policy:
        # Only the chief writes (and so claims) the run folder.
        claim = _claim_run_folder(Path(config.output), resume) if _is_chief(strategy) else contextlib.nullcontext()
        with claim:
            try:
                return _train(config, strategy, policy, resume=resume, verbose=verbose)
            except (MemoryError, tf.errors.ResourceExhaustedError) as err:
                if machine_errno(err) is not None:
                    raise  # TensorFlow reports a full disk this way too: not a memory problem
                raise OutOfMemoryError(_out_of_memory_line(config, err)) from None


class OutOfMemoryError(MemoryError):
    """Building or training the model needed more memory than the machine has (the message says what to lower)."""


def _out_of_memory_line(config: TrainConfig, err: BaseException) -> str:
    import re

    # TensorFlow's message starts with a function-node name: its "OOM when allocating ..." part says it.
    oom = re.search(r"OOM when allocating tensor with shape\s*\[[^\]]*\]", str(err))
    detail = oom.group(0) if oom else (str(err).strip().splitlines() or [type(err).__name__])[0]
    detail = detail if len(detail) <= 160 else detail[:157] + "..."
    return (f"out of memory building or training the model (patch size {config.patch_size}, latent dim "
            f"{config.latent_dim}, batch size {config.batch_size}: {detail or type(err).__name__}); lower "
            "--batch-size, --latent-dim or --patch-size (or free memory on the device) and train again")


def _train(config: TrainConfig, strategy: tf.distribute.Strategy, policy: str, *, resume: bool,
           verbose: int | str) -> TrainResult:
    """Train one run (``train``'s body, inside its strategy, precision policy and run-folder claim).

    The steps, in the order that keeps a refused or failed run from changing the folder: read and
    check everything (:func:`_start`), build the model, load the checkpoint and write the record
    (:func:`_build`), fit (:func:`_fit`), refuse a NaN loss (:func:`_raise_if_nan`), write the
    models and figures (:func:`_write_results`).
    """
    chief = _is_chief(strategy)
    run_dir = Path(config.output)
    if not chief:
        # Other workers train in lock-step with the chief and write no files (every write below
        # is the chief's); this path, never created, only stands in for the run folder.
        import tempfile

        run_dir = Path(tempfile.gettempdir()) / f"tfssim-worker-{os.getpid()}"
        resume = False
    start = _start(config, strategy, chief, run_dir, resume=resume)
    with _all_workers(strategy, chief):
        # Built before anything is written: a feature extractor whose weights cannot be loaded or
        # downloaded fails here and leaves no half-made run folder behind. (Its variables are
        # created, by the same collective broadcasts on every worker, before the weights load.)
        with strategy.scope():
            loss = _build_loss(config)
        _banner(config, start.split, start.train_images, start.val_images, policy, strategy, start.skipped,
                start.initial_epoch)
    model = _build(config, strategy, chief, run_dir, start, loss, policy)
    state, seconds, val_patches = _fit(model, config, strategy, chief, run_dir, start, verbose)
    _raise_if_nan(state, config, policy, chief, run_dir)
    return _write_results(model, config, chief, run_dir, start, state, seconds, val_patches)


@dataclass
class _Start:
    """What a run starts from, read and checked before anything is written (:func:`_start`)."""

    split: Any
    train_images: list[np.ndarray]
    val_images: list[np.ndarray]
    skipped: list[str]
    previous: dict[str, Any] | None  # the resumed run's record
    fingerprint: dict[str, Any] | None  # the data's, when it moved (check_same_data)
    initial_epoch: int = 0
    best: float = math.inf
    weights_path: Path | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def _start(config: TrainConfig, strategy: tf.distribute.Strategy, chief: bool, run_dir: Path, *,
           resume: bool) -> _Start:
    """Read and check the run folder (a resume's files, or that it is empty) and the images.

    Raises:
        InputError: ``--resume`` of a folder without a run, a damaged run folder, or settings
            that differ from the resumed run's. RunExistsError: a new run into a non-empty folder.
    """
    # Each block may fail on one worker only (the run-folder checks are the chief's): every
    # worker learns of it at the block's end, before the next collective (see _all_workers).
    with _all_workers(strategy, chief):
        saved = None
        if resume:
            # Every file the resume continues from, read and checked before anything is written
            # (the checkpoint's loading is the last check, the record the first write).
            saved = read_resume_state(run_dir)
            if saved is None:
                raise InputError(
                    f"--resume given but {run_dir} holds no run ({CONFIG_NAME} missing); drop --resume to start one"
                )
            # The record's settings as tfssim-export checks them (read_run): a damaged value is the
            # file's fault, named as such, not "a setting that differs" below.
            check_run_settings(saved.record, run_dir)
            # Every setting is given here: one that differs from the run's is refused (resume_config
            # fills in the run's own settings for a caller that gave only some).
            resume_settings(saved.record["config"], config.to_dict(), run_dir)
        elif run_dir.exists() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
            raise RunExistsError(
                f"run folder {run_dir} already exists and is not empty; pass --resume to continue it or choose "
                "another --output"
            )
        split, train_images, val_images, skipped = _load_images(config)
        start = _Start(split, train_images, val_images, skipped, previous=None, fingerprint=None)
        if saved is not None:
            start.previous = saved.record
            start.fingerprint = _check_same_data(saved.record, config, split, run_dir)
            start.initial_epoch, start.best, start.weights_path = saved.epochs_done, saved.best, saved.weights
            start.rows = list(saved.history)
    return start


def _build(config: TrainConfig, strategy: tf.distribute.Strategy, chief: bool, run_dir: Path, start: _Start,
           loss: keras.losses.Loss, policy: str) -> keras.Model:
    """Build and compile the model, load the resumed checkpoint, write the run's record (the first write).

    On a multi-worker run every worker then takes the chief's epoch count and weights
    (``start.initial_epoch`` is updated).
    """
    with strategy.scope():
        spec = get_spec(config.model)
        extra = {"observation_std": config.vae_observation_std, "num_samples": config.vae_samples, "seed": config.seed} \
            if config.model == "vae" else {}
        # Seeds the whole process (documented in train()): the initial weights are reproducible.
        keras.utils.set_random_seed(config.seed)
        model = spec.build_model(config.patch_size, config.channels, config.latent_dim, **extra)
        _compile(model, config, loss)
        # Built here rather than on fit's first step: variables created inside the first call
        # make TensorFlow trace the training step twice (measured: fit start-up 9.3 -> 4.5 s).
        model.optimizer.build(model.trainable_variables)
    with _all_workers(strategy, chief):
        if start.initial_epoch:
            # Outside strategy.scope(): Keras's weight loading and saving create variables (a
            # throwaway optimizer's iteration and learning_rate), which MultiWorkerMirroredStrategy
            # would initialise by a broadcast from the chief that the other workers never join.
            _load_checkpoint(model, start.weights_path)
        if chief:
            # The first write, after every check (a refused resume leaves the run folder as it was).
            run_dir.mkdir(parents=True, exist_ok=True)
            split = start.split
            record = run_record(config.to_dict(), ssim=config.ssim_params, versions=_versions(),
                                train_images=split.train, val_images=split.val, fingerprint=start.fingerprint,
                                previous=start.previous, layout=split.layout, precision=policy,
                                strategy=_strategy_name(strategy), replicas=strategy.num_replicas_in_sync,
                                skipped_images=start.skipped,
                                resize={"scale": config.scale, "image_size": config.to_dict()["image_size"],
                                        "interpolation": resize.INTERPOLATION})
            atomic_write_text(run_dir / CONFIG_NAME, json.dumps(record, indent=2))
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Only the chief read the run folder: every worker takes its epoch count and weights.
        variables = list({id(v): v for v in [*model.variables, *model.optimizer.variables]}.values())
        epoch_t, *values = _from_chief(strategy, [float(start.initial_epoch), *variables])
        start.initial_epoch = int(epoch_t)
        for variable, value in zip(variables, values):
            variable.assign(value)
    return model


def _fit(model: keras.Model, config: TrainConfig, strategy: tf.distribute.Strategy, chief: bool, run_dir: Path,
         start: _Start, verbose: int | str) -> tuple[_RunState, float, np.ndarray | None]:
    """Fit the epochs still to train, with the run state's callback writing after each one.

    Returns:
        ``(state, seconds, val_patches)``: the run state (its rows, best value, NaN epoch), the
        seconds fitting took, and the fixed validation patches (``None`` without validation images).
    """
    from tfssim import data

    initial_epoch = start.initial_epoch
    steps = data.steps_per_epoch(config.patches_per_epoch, config.batch_size)
    train_ds = data.patch_dataset(
        start.train_images, patch_size=config.patch_size, patches_per_epoch=config.patches_per_epoch,
        batch_size=config.batch_size, seed=config.seed, augment=config.augment,
        start_batch=initial_epoch * steps, repeat=True,
    )
    val_patches = (
        data.fixed_patches(start.val_images, config.patch_size, config.val_patches, seed=config.seed + 1)
        if start.val_images else None
    )
    state = _RunState(run_dir, start.rows, start.best, config.epochs, chief)
    # One line per epoch, the run state's; on a terminal a bar within the epoch (erased before that
    # line). Keras's own output stays off: verbose=2 repeated each epoch's line, verbose=1 left
    # each epoch's finished bar on screen next to it.
    bar = [ProgressBar(steps, config.epochs)] if chief and wants_bar(verbose) else []
    callbacks: list[keras.callbacks.Callback] = [*bar, state]
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / TENSORBOARD_DIR), update_freq="epoch",
                                                     profile_batch=0, write_graph=False))
    started = time.perf_counter()
    with quiet_remapper():  # one harmless Grappler line at the first step: see progress.py
        if initial_epoch < config.epochs and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Keras's fit fails under this strategy (keras-team/keras#20585): see _custom_fit. Run
            # outside strategy.scope(), so that the chief's checkpoint saves (which create variables,
            # see load_weights above) start no collective broadcast.
            _custom_fit(model, strategy, train_ds, val_patches, batch_size=config.batch_size, epochs=config.epochs,
                        initial_epoch=initial_epoch, steps=steps, callbacks=callbacks,
                        verbose=0, jit_compile=config.jit_compile)
        elif initial_epoch < config.epochs:
            with strategy.scope():
                model.fit(
                    train_ds, epochs=config.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                    validation_data=(val_patches, val_patches) if val_patches is not None else None,
                    validation_batch_size=config.batch_size,
                    callbacks=callbacks, verbose=0, shuffle=False,
                )
    return state, time.perf_counter() - started, val_patches


def _raise_if_nan(state: _RunState, config: TrainConfig, policy: str, chief: bool, run_dir: Path) -> None:
    """Stop with one line when the loss became NaN or infinite, saying what was kept and what to lower.

    Raises:
        FloatingPointError: the run state saw a non-finite loss.
    """
    if state.nan_epoch is None:
        return
    fix = f"lower --learning-rate (was {config.learning_rate:g})" + (
        " or use --mixed-precision off" if policy != "float32" else ""
    )
    if not chief:
        kept = "the chief's run folder keeps the last good state, if an epoch finished"
    elif state.rows:
        kept = (f"the last good state (epoch {len(state.rows)}) is kept: {run_dir / BEST_MODEL_NAME}, "
                f"{run_dir / STATE_DIR} and {run_dir / HISTORY_NAME}")
    else:
        kept = "no epoch finished, so no model was kept"
    raise FloatingPointError(
        f"the loss became NaN or infinite in epoch {state.nan_epoch} and training stopped; {kept}; "
        f"{fix} and train into a new --output"
    )


def _write_results(model: keras.Model, config: TrainConfig, chief: bool, run_dir: Path, start: _Start,
                   state: _RunState, seconds: float, val_patches: np.ndarray | None) -> TrainResult:
    """Write the final model (and the best one, if no epoch improved on it), the curves and examples (the chief)."""
    from tfssim import data, plots

    history = {k: [float(r[k]) for r in state.rows] for k in (state.rows[0] if state.rows else {}) if k != "epoch"}
    final_path, best_path = run_dir / FINAL_MODEL_NAME, run_dir / BEST_MODEL_NAME
    if chief:
        atomic_write(final_path, model.save)
        if not best_path.exists():
            atomic_write(best_path, model.save)
        if state.rows:
            plots.plot_training_curves({k: v for k, v in history.items() if "loss" in k}, run_dir / CURVES_NAME)
        examples = val_patches if val_patches is not None else \
            data.fixed_patches(start.train_images, config.patch_size, 4, seed=config.seed + 2)
        _save_examples(model, config, examples, run_dir / EXAMPLES_DIR)
        logger.info("run folder %s: %s (%.1f s)", run_dir,
                    ", ".join((FINAL_MODEL_NAME, BEST_MODEL_NAME, HISTORY_NAME, CURVES_NAME)), seconds)
    else:
        logger.info("worker done (%.1f s); the chief wrote the run folder", seconds)
    return TrainResult(run_dir, history, len(state.rows), best_path, final_path, seconds,
                       {"train": len(start.train_images), "val": len(start.val_images)}, chief)
