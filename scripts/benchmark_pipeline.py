#!/usr/bin/env python
"""Is the tf.data patch pipeline ever the bottleneck? Prints, from one run:

* patches/s the pipeline delivers on its own (128x128 patches, batch 32, augmentation on),
* patches/s of training the paper's 128x128 SSIM autoencoder (float32 forced, this machine),
* their ratio (target: >= 5).

Training is timed per step inside one ``fit`` call, from the end of the last warm-up step to
the end of the last timed step, so tracing and ``fit``'s start-up are not counted.

Images: the four NanoTWICE training images when ``--data`` points at them, else four
synthetic 700x1024 images of the same size.
"""
from __future__ import annotations

import argparse
import time

import keras
import numpy as np


class _StepTimes(keras.callbacks.Callback):
    """Wall-clock time at the end of every training step (the loss is read, so the step is done)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        float((logs or {}).get("loss", 0.0))  # wait for the step's result
        self.times.append(time.perf_counter())


def training_patches_per_second(model: keras.Model, ds, batch_size: int, warmup: int, steps: int) -> float:
    """Patches/s of ``steps`` training steps after ``warmup`` untimed ones, in one ``fit``."""
    timer = _StepTimes()
    model.fit(ds, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer])
    return steps * batch_size / (timer.times[-1] - timer.times[warmup - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="NanoTWICE folder (optional)")
    parser.add_argument("--batches", type=int, default=200, help="batches timed for the pipeline alone")
    parser.add_argument("--steps", type=int, default=20, help="training steps timed (after the warm-up steps)")
    parser.add_argument("--warmup", type=int, default=3, help="training steps run first and not timed (>= 1)")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")

    from tfssim import data, models
    from tfssim.core import losses
    from tfssim.training import precision

    precision.set_precision("off")  # the figure asked for is float32 training
    if args.data:
        images = [data.read_image(p) for p in data.load_dataset(args.data).train]
    else:
        rng = np.random.default_rng(0)
        images = [rng.random((700, 1024, 1), dtype=np.float32) for _ in range(4)]
    ds = data.patch_dataset(images, patch_size=128, patches_per_epoch=20000, batch_size=32, seed=0, augment=True)

    it = iter(ds)
    for _ in range(5):
        next(it)
    started = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    pipeline = args.batches * 32 / (time.perf_counter() - started)

    model = models.build_autoencoder(128, 1, 100)
    model.compile(optimizer=keras.optimizers.AdamW(2e-4, weight_decay=1e-5), loss=losses.SSIMLoss())
    training = training_patches_per_second(model, ds, 32, args.warmup, args.steps)

    print(f"images            : {len(images)} x {images[0].shape}")
    print(f"pipeline alone    : {pipeline:8.0f} patches/s")
    print(f"training (float32): {training:8.1f} patches/s  ({32 / training:.2f} s per 32-patch step)")
    print(f"ratio             : {pipeline / training:8.1f}  (target >= 5)")


if __name__ == "__main__":
    main()
