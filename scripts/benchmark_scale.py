#!/usr/bin/env python
"""What does serving at a scale save? One run serves the same camera-sized image (default 2448x2048,
grayscale, uint8) through two exports of the paper's model (128x128 patches, d = 100, stride 30):
one at scale 1 (the image at its own resolution) and one at ``--scale`` (default 0.5: the serving
graph resizes the image by 0.5, tiles, reconstructs and scores it there, and resizes the maps back
to 2448x2048). It prints each export's tile count and wall time (``serving_default`` end to end,
loaded with ``tf.saved_model.load``; both timed round-robin, best of ``--repeats`` rounds, so that
other load on the machine hits them alike), the process CPU time of the same calls (less
disturbed by other processes on a shared machine), and their ratios. Expect about ``1 / scale**2`` fewer
tiles (4x at 0.5) and a time ratio a little under that: the resizing, the full-size output maps
and their transfer do not shrink.

The model's weights are random: the time does not depend on them.

    python scripts/benchmark_scale.py                        # 2448x2048, scale 1 vs 0.5
    python scripts/benchmark_scale.py --scale 0.25 --repeats 5
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--width", type=int, default=2448)
    parser.add_argument("--scale", type=float, default=0.5, help="the scale compared with 1 (0 < scale < 1)")
    parser.add_argument("--stride", type=int, default=30)
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=100)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not 0 < args.scale < 1:
        parser.error(f"--scale must be between 0 and 1 (exclusive), got {args.scale}")

    import keras
    import numpy as np
    import tensorflow as tf

    from tfssim import export
    from tfssim.core import resize, tiling
    from tfssim.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model("ssim", args.patch_size, 1, args.latent_dim)
    image = (np.random.default_rng(0).random((args.height, args.width, 1)) * 255).astype(np.uint8)
    request = tf.constant(image)
    scales = (1.0, float(args.scale))
    tiles, serve = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in scales:
            path = export.export_model(model, tmp, name=f"scale_{scale:g}".replace(".", "_"), stride=args.stride,
                                       chunk_size=args.chunk_size, scale=scale)
            serve[scale] = tf.saved_model.load(str(path)).signatures["serving_default"]
            h, w = resize.target_size(args.height, args.width, scale)
            tiles[scale] = tiling.num_tiles(h, w, args.patch_size, args.stride)
        print(f"device : {'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}, {os.cpu_count()} cores, "
              f"TensorFlow {tf.__version__}")
        print(f"image  : {args.height}x{args.width} uint8, stride {args.stride}, {args.patch_size}x{args.patch_size} "
              f"patches, d = {args.latent_dim}, chunk {args.chunk_size}")
        for scale in scales:  # warm-up: tracing and allocation
            out = serve[scale](image=request)
            assert tuple(out["anomaly_map"].shape) == (args.height, args.width), out["anomaly_map"].shape
        times: dict[float, list[float]] = {scale: [] for scale in scales}
        cpu: dict[float, list[float]] = {scale: [] for scale in scales}
        for round_ in range(args.repeats):
            for scale in scales:
                started, started_cpu = time.perf_counter(), time.process_time()
                serve[scale](image=request)["anomaly_map"].numpy()
                times[scale].append(time.perf_counter() - started)
                cpu[scale].append(time.process_time() - started_cpu)
            print(f"round {round_ + 1}/{args.repeats}: " + ", ".join(
                f"scale {s:g} {t[-1]:.2f} s (CPU {cpu[s][-1]:.2f} s)" for s, t in times.items()), flush=True)
    best = {scale: min(t) for scale, t in times.items()}
    best_cpu = {scale: min(t) for scale, t in cpu.items()}
    full, small = scales
    for scale in scales:
        h, w = resize.target_size(args.height, args.width, scale)
        print(f"scale {scale:<4g}: {h}x{w} scored, {tiles[scale]:5d} tiles, {best[scale]:7.2f} s per image "
              f"(best of {args.repeats}; CPU time {best_cpu[scale]:.2f} s), maps {args.height}x{args.width}")
    ratio = best[full] / best[small]
    print(f"ratio  : scale 1 takes {ratio:.2f}x the wall time of scale {small:g} "
          f"({best_cpu[full] / best_cpu[small]:.2f}x the CPU time, {tiles[full] / tiles[small]:.2f}x the tiles)")
    return {"seconds_full": best[full], "seconds_scaled": best[small], "ratio": ratio,
            "cpu_ratio": best_cpu[full] / best_cpu[small], "tiles_full": tiles[full], "tiles_scaled": tiles[small]}


if __name__ == "__main__":
    main()
