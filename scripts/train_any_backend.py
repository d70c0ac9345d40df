#!/usr/bin/env python
"""Train the paper's SSIM / l2 autoencoder with Keras 3 on any backend (JAX on a GPU without TensorFlow).

``tfssim-train`` needs TensorFlow (``tf.data``, ``tf.distribute``). A GPU machine that has JAX
or PyTorch but no TensorFlow can still train the same network at the paper's budget: this
script builds it with ``tfssim/models/cae.py`` (plain Keras 3, loaded by file path so that no
TensorFlow import happens), trains it with ``model.fit`` on whatever backend ``KERAS_BACKEND``
names, and writes a folder that ``tfssim-export`` takes like a ``tfssim-train`` run folder
(:mod:`tfssim.run_record`'s files: the final model, the run's record, its history). Export, calibration and
evaluation then run with tfssim on TensorFlow as usual.

Everything but the backend-specific loop comes from the library, which imports no TensorFlow
for these parts: the losses (:mod:`tfssim.core.losses`, SSIM in ``keras.ops``), their parameters
(:class:`tfssim.core.ssim.SSIMParams`), the image reader (:mod:`tfssim.data.io`), the sampling rule
(:mod:`tfssim.data.sampling`), atomic writes (:mod:`tfssim._io`) and the run folder's record with
its resume rule (:mod:`tfssim.run_record`: the record, the history, the data fingerprint).
Patches are drawn as ``tfssim-train`` draws them: an image with probability proportional to its number of patch
origins, a uniform crop origin, random horizontal/vertical flips and 90-degree rotations.
Training is resumable: the model and optimizer are saved after every epoch, and the same
command continues where it stopped (``--time-limit`` stops it cleanly between epochs); settings
not given again keep the run's recorded values, as with ``tfssim-train --resume``.

Example (the README's GPU row; the data folder holds the five normal NanoTWICE images, the last
one sorted by name is the validation image, as in the paper's split):
    KERAS_BACKEND=jax python scripts/train_any_backend.py NanoTWICE/Normal --output runs/ssim \\
        --loss ssim --epochs 200 --patches-per-epoch 20000 --learning-rate 2e-4
    tfssim-export runs/ssim --name nanotwice_ssim
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import keras
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("tfssim") is None:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))

from tfssim._io import atomic_write, atomic_write_json  # noqa: E402
from tfssim.core.losses import L2Loss, SSIMLoss  # noqa: E402
from tfssim.core.ssim_params import WEIGHTINGS, SSIMParams  # noqa: E402
from tfssim.data.io import list_images, read_image  # noqa: E402
from tfssim.data.sampling import image_probabilities  # noqa: E402
from tfssim.errors import InputError  # noqa: E402
from tfssim.run_record import (  # noqa: E402
    ANY_BACKEND_STATE_NAME,
    CONFIG_NAME,
    FINAL_MODEL_NAME,
    HISTORY_NAME,
    check_same_data,
    damaged,
    read_history,
    read_run_record,
    resume_settings,
    run_record,
    write_history,
)
from tfssim.training.config import TrainConfig  # noqa: E402 - the settings' defaults, without TensorFlow

# tfssim-train's defaults (TrainConfig's fields), which this script's arguments share.
TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                  if f.default is not dataclasses.MISSING}


def load_cae_module() -> Any:
    """``tfssim/models/cae.py`` (plain Keras 3) as a module, without ``tfssim.models`` (TensorFlow).

    Loaded once per process, and not at all where ``tfssim.models`` is imported already: each
    load registers the file's Keras classes (``tfssim>LeakyReLU``) again, and a second class under
    the same name would be what ``keras.saving.load_model`` builds from then on.
    """
    for name in ("tfssim.models.cae", "tfssim_cae"):
        if name in sys.modules:
            return sys.modules[name]
    spec = importlib.util.spec_from_file_location("tfssim_cae", ROOT / "tfssim" / "models" / "cae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["tfssim_cae"] = module
    return module


def read_split(folder: Path, val_count: int, patch_size: int) -> tuple[list[Path], list[Path], list[np.ndarray],
                                                                         list[np.ndarray]]:
    """The folder's images (sorted), the last ``val_count`` for validation, read as gray float32.

    Raises:
        SystemExit: Not a folder, too few images, an unreadable image or one smaller than the patch.
    """
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} is not a folder of images")
    try:
        files = list_images(folder)
    except ValueError:
        files = []
    if len(files) <= val_count:
        raise SystemExit(f"error: {folder} holds {len(files)} images; need more than --val-count {val_count}")
    images = []
    for path in files:
        try:
            image = read_image(path, channels=1)
        except (OSError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
        if min(image.shape[:2]) < patch_size:
            raise SystemExit(f"error: {path} is {image.shape[0]}x{image.shape[1]}, smaller than the patch")
        images.append(image)
    return files[:-val_count], files[-val_count:], images[:-val_count], images[-val_count:]


def sample_patches(images: list[np.ndarray], count: int, patch_size: int, rng: np.random.Generator,
                   augment: bool) -> np.ndarray:
    """``count`` random crops ``[count, p, p, C]`` (the images' dtype); an image is chosen with
    :func:`tfssim.data.sampling.image_probabilities` (by its number of patch origins)."""
    out = np.empty((count, patch_size, patch_size, images[0].shape[-1]), images[0].dtype)
    which = rng.choice(len(images), count, p=image_probabilities([i.shape for i in images], patch_size))
    tops = rng.random(count)
    lefts = rng.random(count)
    for k, image in enumerate(images):
        chosen = np.flatnonzero(which == k)
        top = (tops[chosen] * (image.shape[0] - patch_size + 1)).astype(np.int64)
        left = (lefts[chosen] * (image.shape[1] - patch_size + 1)).astype(np.int64)
        windows = np.lib.stride_tricks.sliding_window_view(image, (patch_size, patch_size), axis=(0, 1))
        out[chosen] = np.moveaxis(windows[top, left], 1, -1)  # [n, C, p, p] -> [n, p, p, C]
    if augment:
        flips = rng.random((2, count)) < 0.5
        out[flips[0]] = out[flips[0]][:, :, ::-1]
        out[flips[1]] = out[flips[1]][:, ::-1]
        turns = rng.integers(0, 4, count)
        for k in (1, 2, 3):
            chosen = turns == k
            out[chosen] = np.rot90(out[chosen], k, axes=(1, 2))
    return out


# How the history's cells are written; a resumed run writes its earlier rows again exactly so.
HISTORY_FORMATS = {"epoch": "{:d}", "loss": "{:.6f}", "val_loss": "{:.6f}", "seconds": "{:.2f}"}


def history_row(row: dict[str, Any]) -> dict[str, str]:
    """One epoch's history row as text (:data:`HISTORY_FORMATS`; other columns as ``str``)."""
    return {key: HISTORY_FORMATS.get(key, "{}").format(int(value) if key == "epoch" else float(value))
            for key, value in row.items()}


def load_state(path: Path) -> keras.Model:
    """The resume state ``state.keras`` (model and optimizer).

    Raises:
        SystemExit: the file does not load; one line naming it.
    """
    try:
        # Runs started before the script used the library's losses saved them under these names.
        return keras.saving.load_model(path, custom_objects={"BackendSSIMLoss": SSIMLoss, "BackendL2Loss": L2Loss})
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - any other failure to load it is a damaged file
        detail = " ".join(str(err).split())
        detail = detail if len(detail) <= 200 else detail[:197] + "..."
        raise SystemExit(f"error: {damaged(path, f'the resume state does not load ({type(err).__name__}: {detail})')}"
                         ) from None


def atomic_save(path: Path, model: keras.Model) -> None:
    """``model.save(path)`` atomically (:func:`tfssim._io.atomic_write`; the name keeps ``.keras``)."""
    atomic_write(path, lambda tmp: model.save(str(tmp)))


# The run's settings as the run record's "config" holds them (TrainConfig field names) and the
# argument each comes from; the others are fixed here (a folder of grayscale images, TrainConfig's SSIM
# sigma, K1 and K2) or are the script's own (val_count: how many images, sorted, validate).
CONFIG_ARGS = {"model": "loss", "epochs": "epochs", "patches_per_epoch": "patches_per_epoch",
               "batch_size": "batch_size", "patch_size": "patch_size", "latent_dim": "latent_dim",
               "ssim_window": "ssim_window", "ssim_weighting": "ssim_weighting", "learning_rate": "learning_rate",
               "weight_decay": "weight_decay", "seed": "seed", "augment": "augment", "val_patches": "val_patches",
               "val_count": "val_count"}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, set[str]]:
    """The arguments, and the names of those given on the command line (not defaults)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path, help="folder of defect-free images; the last --val-count (sorted) validate")
    parser.add_argument("--output", type=Path, required=True,
                        help="run folder (tfssim-export takes it); if it holds a run, that run is resumed with its "
                             "recorded settings (arguments given again must agree; only --epochs may change)")
    defaults = TRAIN_DEFAULTS
    parser.add_argument("--loss", choices=("ssim", "l2"), default=defaults["model"])
    parser.add_argument("--epochs", type=int, default=defaults["epochs"])
    parser.add_argument("--patches-per-epoch", type=int, default=defaults["patches_per_epoch"])
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    parser.add_argument("--patch-size", type=int, default=defaults["patch_size"])
    parser.add_argument("--latent-dim", type=int, default=defaults["latent_dim"])
    parser.add_argument("--ssim-window", type=int, default=defaults["ssim_window"])
    parser.add_argument("--ssim-weighting", choices=WEIGHTINGS, default=defaults["ssim_weighting"],
                        help="SSIM window weighting of the loss (and of the exported anomaly map)")
    parser.add_argument("--learning-rate", type=float, default=defaults["learning_rate"])
    parser.add_argument("--weight-decay", type=float, default=defaults["weight_decay"])
    parser.add_argument("--val-count", type=int, default=1)
    parser.add_argument("--val-patches", type=int, default=defaults["val_patches"])
    parser.add_argument("--seed", type=int, default=defaults["seed"])
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--steps-per-execution", type=int, default=25,
                        help="optimizer steps per compiled call (amortises dispatch on a GPU)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="stop cleanly between epochs before this many seconds; run again to resume")
    args = parser.parse_args(argv)
    _check_args(parser, args)
    for action in parser._actions:  # parsed again without defaults: what remains was given
        action.default = argparse.SUPPRESS
    return args, set(vars(parser.parse_args(argv)))


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("epochs", "patches_per_epoch", "batch_size", "latent_dim", "val_count", "val_patches",
                 "steps_per_execution"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.ssim_window < 1 or args.ssim_window % 2 == 0:
        parser.error(f"--ssim-window must be odd and positive, got {args.ssim_window}")
    if args.patch_size < 16 or args.patch_size % 16:
        parser.error(f"--patch-size must be a multiple of 16 (the encoder halves it four times), got {args.patch_size}")
    if args.ssim_window > args.patch_size:
        parser.error(f"--ssim-window {args.ssim_window} is larger than the {args.patch_size}-pixel patch")


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run record's ``config``: the run's settings by :class:`tfssim.training.TrainConfig` field name."""
    return {"data": str(args.images), "output": str(args.output), "layout": "folder", "grayscale": True,
            **{key: TRAIN_DEFAULTS[key] for key in ("ssim_sigma", "ssim_k1", "ssim_k2")},
            **{key: getattr(args, arg) for key, arg in CONFIG_ARGS.items()}}


def _device() -> str:
    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return "cpu"


def _versions() -> dict[str, str]:
    versions = {"keras": keras.__version__, "backend": keras.backend.backend(), "numpy": np.__version__,
                "python": platform.python_version()}
    if keras.backend.backend() == "jax":
        import jax

        versions["jax"] = jax.__version__
    return versions


def main(argv: list[str] | None = None) -> int:
    args, given = parse_args(argv)
    out = args.output
    state_path, history_path = out / ANY_BACKEND_STATE_NAME, out / HISTORY_NAME
    resuming = state_path.exists() and history_path.exists()
    rows: list[dict[str, str]] = []
    try:
        # Every file the resume continues from, read and checked (one line naming the file and key
        # where damaged) before anything is written; state.keras is checked by loading it below.
        previous = read_run_record(out) if resuming else None
        if resuming:
            rows = [history_row(row) for row in read_history(history_path)]
        config = run_config(args)
        if previous is not None:
            # The library's rule (tfssim-train --resume's): the run keeps its recorded settings;
            # arguments given again must agree with them (only --epochs may change).
            explicit = {key: value for key, value in config.items() if CONFIG_ARGS.get(key) in given}
            config.update(resume_settings(previous["config"], explicit, out))
            for key, arg in CONFIG_ARGS.items():
                setattr(args, arg, config[key])
    except InputError as err:
        raise SystemExit(f"error: {err}") from None
    train_files, val_files, train_images, val_images = read_split(args.images, args.val_count, args.patch_size)
    try:  # moved data must hold the run's images (the library's rule, as for tfssim-train)
        fingerprint = check_same_data(previous, config["data"], train_files, val_files, out) if previous else None
    except InputError as err:
        raise SystemExit(f"error: {err}") from None
    ssim_params = SSIMParams(window_size=args.ssim_window, weighting=args.ssim_weighting)

    out.mkdir(parents=True, exist_ok=True)
    cae = load_cae_module()  # also registers its LeakyReLU, which saved models name
    if resuming:
        model = load_state(state_path)
        print(f"resuming after epoch {len(rows)} from {state_path}", flush=True)
    else:
        keras.utils.set_random_seed(args.seed)
        model = cae.build_autoencoder(args.patch_size, 1, args.latent_dim)
        loss = SSIMLoss(params=ssim_params) if args.loss == "ssim" else L2Loss()
        model.compile(optimizer=keras.optimizers.AdamW(args.learning_rate, weight_decay=args.weight_decay),
                      loss=loss, steps_per_execution=args.steps_per_execution)
    val = sample_patches(val_images, args.val_patches, args.patch_size, np.random.default_rng([args.seed, 10**6]), False)

    where = {"device": _device()}
    if previous is not None:
        # Where earlier legs ran stays on record (a GPU run finished on a CPU is not "a CPU run").
        devices = previous.get("devices") or [previous.get("device", "cpu")]
        if where["device"] not in devices:
            devices.append(where["device"])
        where = {"device": " + ".join(devices), "devices": devices}
    record = run_record(config, ssim=ssim_params, versions=_versions(), train_images=train_files,
                        val_images=val_files, fingerprint=fingerprint, previous=previous,
                        trainer="scripts/train_any_backend.py", **where)
    atomic_write_json(out / CONFIG_NAME, record)
    print(f"{args.loss}-AE d={args.latent_dim} p={args.patch_size}: {model.count_params():,} parameters; "
          f"{args.epochs} x {args.patches_per_epoch} patches, batch {args.batch_size}, lr {args.learning_rate:g}, "
          f"backend {keras.backend.backend()} ({record['device']})", flush=True)

    def epoch_patches(epoch: int) -> np.ndarray:
        # Epoch e's patches depend on (seed, e) alone, so a resumed run sees the same data.
        rng = np.random.default_rng([args.seed, epoch])
        return sample_patches(train_images, args.patches_per_epoch, args.patch_size, rng, args.augment)

    started = time.perf_counter()
    last_epoch_s = 0.0
    prefetch = ThreadPoolExecutor(max_workers=1)  # the next epoch's patches are cut while this one trains
    upcoming = prefetch.submit(epoch_patches, len(rows))
    for epoch in range(len(rows), args.epochs):
        if args.time_limit is not None and time.perf_counter() - started + 1.2 * last_epoch_s > args.time_limit:
            print(f"time limit: stopped after epoch {epoch}; run the same command again to resume", flush=True)
            return 3
        t0 = time.perf_counter()
        x = upcoming.result()
        if epoch + 1 < args.epochs:
            upcoming = prefetch.submit(epoch_patches, epoch + 1)
        history = model.fit(x, x, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
        val_loss = model.evaluate(val, val, batch_size=128, verbose=0)
        last_epoch_s = time.perf_counter() - t0
        rows.append(history_row({"epoch": epoch + 1, "loss": history.history["loss"][-1], "val_loss": val_loss,
                                 "seconds": last_epoch_s}))
        atomic_save(state_path, model)
        write_history(history_path, rows)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {rows[-1]['loss']} val {rows[-1]['val_loss']} "
              f"({last_epoch_s:.1f} s)", flush=True)

    # The final model is the plain model (tfssim-export loads it with compile=False; the SSIM
    # parameters come from the run record).
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    atomic_save(out / FINAL_MODEL_NAME, plain)
    print(f"done: {out / FINAL_MODEL_NAME} ({sum(float(r['seconds']) for r in rows):.0f} s of training)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
