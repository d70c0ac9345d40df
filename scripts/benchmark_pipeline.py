#!/usr/bin/env python
"""Is the tf.data patch pipeline ever the bottleneck? Prints, from one run:

* patches/s the pipeline delivers on its own (128x128 patches, batch 32, augmentation on),
* patches/s of training the paper's 128x128 SSIM autoencoder (float32, this machine),
* their ratio (target: >= 5).

Images: the four NanoTWICE training images when ``--data`` points at them, else four
synthetic 700x1024 images of the same size.
"""
from __future__ import annotations

import argparse
import time

import keras
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="NanoTWICE folder (optional)")
    parser.add_argument("--batches", type=int, default=200, help="batches timed for the pipeline alone")
    parser.add_argument("--steps", type=int, default=12, help="training steps timed (after 3 warm-up steps)")
    args = parser.parse_args()

    from tfssim import data, losses, models

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
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
    training = args.steps * 32 / (time.perf_counter() - started)

    print(f"images            : {len(images)} x {images[0].shape}")
    print(f"pipeline alone    : {pipeline:8.0f} patches/s")
    print(f"training (float32): {training:8.1f} patches/s  ({32 / training:.2f} s per 32-patch step)")
    print(f"ratio             : {pipeline / training:8.1f}  (target >= 5)")


if __name__ == "__main__":
    main()
