#!/usr/bin/env python
"""How close is the exported signature to the compute floor? Prints, from one run, for a
700x1024 grayscale image at stride 30 (651 tiles) and the paper's 128x128 model (d = 100):

(a) the exported ``serving_default`` signature end to end (tiling, model, averaging, SSIM maps);
(b) the bare batched forward pass of the Keras model over exactly the same tiles, precomputed;
(c) a per-tile ``model.predict`` loop, as public implementations do it (timed on ``--loop-tiles``
    tiles and scaled to 651, stated as such);
(d) a 2048x2048 float32 matmul, this machine's practical FLOP/s;

and the ratios (a)/(b) (target <= 1.25), (c)/(a) (target >= 8), (a) vs the paper's 9.6 s per image on
a Tesla K40c, and the forward pass's FLOP/s against the matmul's (target >= 0.5).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import tensorflow as tf


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def forward_flops(model) -> float:
    """Multiply-adds x 2 of the convolutions for one tile."""
    total = 0
    for sub in model.layers:
        for layer in getattr(sub, "layers", []):
            kernel = getattr(layer, "kernel", None)
            if kernel is None:
                continue
            k_h, k_w = kernel.shape[:2]
            c_in_out = kernel.shape[2] * kernel.shape[3]
            out = layer.output.shape
            if "Transpose" in type(layer).__name__:
                inp = layer.input.shape  # each input pixel scatters a k x k x c_out kernel
                total += inp[1] * inp[2] * k_h * k_w * c_in_out
            else:
                total += out[1] * out[2] * k_h * k_w * c_in_out
    return 2.0 * total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-tiles", type=int, default=60)
    parser.add_argument("--chunk-size", type=int, default=64)
    args = parser.parse_args()

    from tfssim import export, tiling
    from tfssim.models import build_model

    model = build_model("ssim", 128, 1, 100)
    rng = np.random.default_rng(0)
    image = (rng.random((700, 1024, 1)) * 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_model(model, tmp, name="bench", stride=30, chunk_size=args.chunk_size)
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        serve(image=tf.constant(image))  # warm-up
        t_a = best_of(lambda: serve(image=tf.constant(image))["anomaly_map"].numpy(), args.repeats)

    origins = tiling.tile_grid(700, 1024, 128, 30)
    tiles = tiling.extract_tiles(tf.constant(image.astype(np.float32) / 255), origins, 128)
    n = int(tiles.shape[0])

    @tf.function
    def forward(batch):
        return model(batch, training=False)

    def batched() -> None:
        for start in range(0, n, args.chunk_size):
            forward(tiles[start : start + args.chunk_size]).numpy()

    batched()
    t_b = best_of(batched, args.repeats)

    sample = tiles[: args.loop_tiles].numpy()
    model.predict(sample[:1], verbose=0)
    started = time.perf_counter()
    for i in range(len(sample)):
        model.predict(sample[i : i + 1], verbose=0)
    t_c = (time.perf_counter() - started) / len(sample) * n

    a = tf.random.normal([2048, 2048])
    matmul = tf.function(lambda: tf.matmul(a, a))
    matmul()
    t_d = best_of(lambda: matmul().numpy(), 5)
    matmul_flops = 2 * 2048**3 / t_d
    flops = forward_flops(model)
    forward_rate = flops * n / t_b

    print(f"tiles                         : {n} (700x1024, stride 30, 128x128 patches)")
    print(f"model                         : {flops / 1e9:.3f} GFLOP per tile")
    print(f"(a) exported signature        : {t_a:7.3f} s per image")
    print(f"(b) batched forward, floor    : {t_b:7.3f} s  ({t_b / n * 1e3:.1f} ms per tile)")
    print(f"(c) per-tile predict loop     : {t_c:7.3f} s  (timed on {len(sample)} tiles, scaled to {n})")
    print(f"(d) 2048^3 matmul             : {matmul_flops / 1e9:7.1f} GFLOP/s")
    print(f"(a)/(b)                       : {t_a / t_b:7.2f}  (target <= 1.25)")
    print(f"(c)/(a)                       : {t_c / t_a:7.1f}  (target >= 8)")
    print(f"(a) vs paper's 9.6 s on a K40c: {t_a / 9.6:7.2f} x")
    print(f"forward FLOP/s / matmul FLOP/s: {forward_rate / matmul_flops:7.2f}  "
          f"({forward_rate / 1e9:.1f} vs {matmul_flops / 1e9:.1f} GFLOP/s; target >= 0.5)")


if __name__ == "__main__":
    main()
