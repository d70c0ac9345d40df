#!/usr/bin/env python
"""Train the paper's SSIM / l2 autoencoder with Keras 3 on any backend (JAX on a GPU without TensorFlow).

``tfssim-train`` needs TensorFlow (``tf.data``, ``tf.distribute``). A GPU machine that has JAX
or PyTorch but no TensorFlow can still train the same network at the paper's budget: this
script builds it with ``tfssim/models/cae.py`` (plain Keras 3, loaded by file path so that no
TensorFlow import happens), trains it with ``model.fit`` on whatever backend ``KERAS_BACKEND``
names, and writes a folder that ``tfssim-export`` takes like a ``tfssim-train`` run folder:
``final.keras``, ``config.json`` (the same schema), ``history.csv``. Export, calibration and
evaluation then run with tfssim on TensorFlow as usual.

The SSIM loss here is written in ``keras.ops`` with the same formula as ``tfssim.ssim``
(Gaussian window, valid windows, ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``); the test suite checks it
against scikit-image. Patches are drawn as ``tfssim-train`` draws them: a uniformly chosen
training image, a uniform crop origin, random horizontal/vertical flips and 90-degree rotations.
Training is resumable: the model and optimizer are saved after every epoch, and the same
command continues where it stopped (``--time-limit`` stops it cleanly between epochs).

Example (the README's GPU row; the data folder holds the five normal NanoTWICE images, the last
one sorted by name is the validation image, as in the paper's split):
    KERAS_BACKEND=jax python scripts/train_any_backend.py NanoTWICE/Normal --output runs/ssim \\
        --loss ssim --epochs 200 --patches-per-epoch 20000 --learning-rate 2e-4
    tfssim-export runs/ssim --name nanotwice_ssim
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def load_cae_module() -> Any:
    """``tfssim/models/cae.py`` as a module, without importing the ``tfssim`` package (TensorFlow)."""
    spec = importlib.util.spec_from_file_location("tfssim_cae", ROOT / "tfssim" / "models" / "cae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gaussian_window(window_size: int, sigma: float, weighting: str = "gaussian") -> np.ndarray:
    """The normalised 1-D window of ``tfssim.ssim.window_kernel``: ``tf.image.ssim``'s Gaussian,
    or ``1 / K`` taps for ``"uniform"`` (plain patch means)."""
    if weighting == "uniform":
        return np.full(window_size, 1.0 / window_size, np.float32)
    coords = np.arange(window_size, dtype=np.float64) - (window_size - 1) / 2.0
    g = np.exp(-(coords**2) / (2.0 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def ssim_per_sample(x: Any, y: Any, window_size: int = 11, sigma: float = 1.5, k1: float = 0.01,
                    k2: float = 0.03, data_range: float = 1.0, weighting: str = "gaussian") -> Any:
    """Mean SSIM over the valid windows of each image pair ``[B, H, W, C]`` -> ``[B]`` (keras.ops)."""
    x = ops.cast(x, "float32")
    y = ops.cast(y, "float32")
    channels = x.shape[-1]
    g = gaussian_window(window_size, sigma, weighting)
    # The five statistics of every channel are blurred in one separable depthwise convolution.
    stacked = ops.concatenate([x, y, x * x, y * y, x * y], axis=-1)
    n = 5 * channels
    rows = np.tile(g.reshape(window_size, 1, 1, 1), (1, 1, n, 1))
    cols = np.tile(g.reshape(1, window_size, 1, 1), (1, 1, n, 1))
    blurred = ops.depthwise_conv(ops.depthwise_conv(stacked, rows, padding="valid"), cols, padding="valid")
    mu_x, mu_y, xx, yy, xy = (blurred[..., i * channels:(i + 1) * channels] for i in range(5))
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    luminance = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    contrast_structure = (2.0 * cov + c2) / (var_x + var_y + c2)
    return ops.mean(luminance * contrast_structure, axis=(1, 2, 3))


@keras.saving.register_keras_serializable(package="tfssim_any_backend")
class BackendSSIMLoss(keras.losses.Loss):
    """``1 - mean SSIM`` per sample, in ``keras.ops`` (any backend)."""

    def __init__(self, window_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
                 weighting: str = "gaussian", name: str = "ssim_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.window_size, self.sigma, self.k1, self.k2 = window_size, sigma, k1, k2
        self.weighting = weighting

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return 1.0 - ssim_per_sample(y_true, y_pred, self.window_size, self.sigma, self.k1, self.k2,
                                     weighting=self.weighting)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "window_size": self.window_size, "sigma": self.sigma,
                "k1": self.k1, "k2": self.k2, "weighting": self.weighting}


@keras.saving.register_keras_serializable(package="tfssim_any_backend")
class BackendL2Loss(keras.losses.Loss):
    """Mean squared error per sample (``tfssim.losses.L2Loss``), in ``keras.ops``."""

    def call(self, y_true: Any, y_pred: Any) -> Any:
        diff = ops.cast(y_true, "float32") - ops.cast(y_pred, "float32")
        return ops.mean(diff * diff, axis=(1, 2, 3))


def read_gray(path: Path) -> np.ndarray:
    """An image file as ``[H, W, 1]`` uint8 (RGB averaged as tfssim's grayscale conversion does)."""
    from skimage import io

    image = np.asarray(io.imread(path))
    if image.dtype != np.uint8:
        raise SystemExit(f"error: {path} is a {image.dtype} image; this script reads 8-bit images "
                         "(tfssim-train reads 16-bit ones too)")
    if image.ndim == 3 and image.shape[-1] <= 2:  # gray, or gray + alpha
        image = image[..., 0]
    if image.ndim == 3:
        from skimage.color import rgb2gray

        image = np.round(rgb2gray(image[..., :3]) * 255).astype(np.uint8)
    return image[..., None]


def sample_patches(images: list[np.ndarray], count: int, patch_size: int, rng: np.random.Generator,
                   augment: bool) -> np.ndarray:
    """``count`` random crops ``[count, p, p, C]`` (uint8) from uniformly chosen images."""
    out = np.empty((count, patch_size, patch_size, images[0].shape[-1]), np.uint8)
    which = rng.integers(0, len(images), count)
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


def atomic_save(path: Path, save: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    save(str(tmp))
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path, help="folder of defect-free images; the last --val-count (sorted) validate")
    parser.add_argument("--output", type=Path, required=True, help="run folder (tfssim-export takes it)")
    parser.add_argument("--loss", choices=("ssim", "l2"), default="ssim")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--patches-per-epoch", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=100)
    parser.add_argument("--ssim-window", type=int, default=11)
    parser.add_argument("--ssim-weighting", choices=("gaussian", "uniform"), default="gaussian",
                        help="SSIM window weighting of the loss (and of the exported anomaly map)")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-5)
    parser.add_argument("--val-count", type=int, default=1)
    parser.add_argument("--val-patches", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--steps-per-execution", type=int, default=25,
                        help="optimizer steps per compiled call (amortises dispatch on a GPU)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="stop cleanly between epochs before this many seconds; run again to resume")
    args = parser.parse_args(argv)
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
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.images.is_dir():
        raise SystemExit(f"error: {args.images} is not a folder of images")
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) <= args.val_count:
        raise SystemExit(f"error: {args.images} holds {len(files)} images; need more than --val-count {args.val_count}")
    train_files, val_files = files[:-args.val_count], files[-args.val_count:]
    train_images = [read_gray(p) for p in train_files]
    val_images = [read_gray(p) for p in val_files]
    for path, image in zip(files, train_images + val_images):
        if min(image.shape[:2]) < args.patch_size:
            raise SystemExit(f"error: {path} is {image.shape[0]}x{image.shape[1]}, smaller than the patch")

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    state_path, history_path = out / "state.keras", out / "history.csv"
    custom = {"BackendSSIMLoss": BackendSSIMLoss, "BackendL2Loss": BackendL2Loss}
    rows: list[dict[str, str]] = []
    if state_path.exists() and history_path.exists():
        model = keras.saving.load_model(state_path, custom_objects=custom)
        with open(history_path) as handle:
            rows = list(csv.DictReader(handle))
        print(f"resuming after epoch {len(rows)} from {state_path}", flush=True)
    else:
        keras.utils.set_random_seed(args.seed)
        model = load_cae_module().build_autoencoder(args.patch_size, 1, args.latent_dim)
        loss = (BackendSSIMLoss(args.ssim_window, weighting=args.ssim_weighting) if args.loss == "ssim"
                else BackendL2Loss(name="l2_loss"))
        model.compile(optimizer=keras.optimizers.AdamW(args.learning_rate, weight_decay=args.weight_decay),
                      loss=loss, steps_per_execution=args.steps_per_execution)
    val = sample_patches(val_images, args.val_patches, args.patch_size, np.random.default_rng([args.seed, 10**6]), False)
    val = val.astype(np.float32) / 255.0

    record = {
        "config": {"data": str(args.images), "output": str(out), "model": args.loss, "layout": "folder",
                   "epochs": args.epochs, "patches_per_epoch": args.patches_per_epoch, "batch_size": args.batch_size,
                   "patch_size": args.patch_size, "latent_dim": args.latent_dim, "ssim_window": args.ssim_window,
                   "ssim_sigma": 1.5, "ssim_k1": 0.01, "ssim_k2": 0.03, "ssim_weighting": args.ssim_weighting,
                   "learning_rate": args.learning_rate,
                   "weight_decay": args.weight_decay, "seed": args.seed, "grayscale": True, "augment": args.augment,
                   "val_patches": args.val_patches},
        "trainer": "scripts/train_any_backend.py",
        "versions": {"keras": keras.__version__, "backend": keras.backend.backend(), "numpy": np.__version__,
                     "python": platform.python_version()},
        "channels": 1, "patch_size": args.patch_size, "latent_dim": args.latent_dim, "model": args.loss,
        "ssim": {"window_size": args.ssim_window, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "data_range": 1.0,
                 "weighting": args.ssim_weighting},
        "train_images": [str(p) for p in train_files], "val_images": [str(p) for p in val_files],
    }
    if keras.backend.backend() == "jax":
        import jax

        record["versions"]["jax"] = jax.__version__
        record["device"] = str(jax.devices()[0].device_kind)
    elif keras.backend.backend() == "torch":
        import torch

        record["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    else:
        record["device"] = "cpu"
    if rows and (out / "config.json").exists():
        # A resumed run keeps its model, loss and optimizer (they come from state.keras): refuse
        # arguments that would silently not apply, rather than record them in config.json.
        previous = json.loads((out / "config.json").read_text())
        before = previous.get("config", {})
        changed = [f"{key} {before[key]!r} -> {value!r}" for key, value in record["config"].items()
                   if key not in ("epochs", "data", "output") and key in before and before[key] != value]
        for key in ("train_images", "val_images"):  # the same images by name (the folder may move)
            names = [Path(f).name for f in previous.get(key, [])]
            if names and names != [Path(f).name for f in record[key]]:
                changed.append(f"{key} {names} -> {[Path(f).name for f in record[key]]}")
        if changed:
            raise SystemExit(f"error: {out} was started with other settings ({'; '.join(changed)}); "
                             "resume with the original ones (only --epochs may change) or use a new --output")
        # Where earlier legs ran stays on record (a GPU run finished on a CPU is not "a CPU run").
        devices = previous.get("devices") or [previous.get("device", "cpu")]
        if record.get("device", "cpu") not in devices:
            devices.append(record.get("device", "cpu"))
        record["devices"] = devices
        record["device"] = " + ".join(devices)
    (out / "config.json").write_text(json.dumps(record, indent=2))
    print(f"{args.loss}-AE d={args.latent_dim} p={args.patch_size}: {model.count_params():,} parameters; "
          f"{args.epochs} x {args.patches_per_epoch} patches, batch {args.batch_size}, lr {args.learning_rate:g}, "
          f"backend {keras.backend.backend()} ({record.get('device', 'cpu')})", flush=True)

    def epoch_patches(epoch: int) -> np.ndarray:
        # Epoch e's patches depend on (seed, e) alone, so a resumed run sees the same data.
        rng = np.random.default_rng([args.seed, epoch])
        x = sample_patches(train_images, args.patches_per_epoch, args.patch_size, rng, args.augment)
        return x.astype(np.float32) / np.float32(255.0)

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
        rows.append({"epoch": str(epoch + 1), "loss": f"{history.history['loss'][-1]:.6f}",
                     "val_loss": f"{float(val_loss):.6f}", "seconds": f"{last_epoch_s:.2f}"})
        atomic_save(state_path, model.save)
        tmp = history_path.with_name(".tmp-history.csv")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["epoch", "loss", "val_loss", "seconds"])
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, history_path)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {rows[-1]['loss']} val {rows[-1]['val_loss']} "
              f"({last_epoch_s:.1f} s)", flush=True)

    # final.keras is the plain model (tfssim-export loads it with compile=False; the SSIM
    # parameters come from config.json).
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    atomic_save(out / "final.keras", plain.save)
    print(f"done: {out / 'final.keras'} ({sum(float(r['seconds']) for r in rows):.0f} s of training)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
