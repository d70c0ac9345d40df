#!/usr/bin/env python
"""How close is the exported signature to the compute floor? From one run, for a 700x1024
grayscale image at stride 30 (651 tiles) and the paper's 128x128 model (d = 100), it times:

(a) the exported ``serving_default`` signature end to end (uint8 in; tiling, model, averaging,
    SSIM maps out), loaded with ``tf.saved_model.load``, for each ``--chunk-sizes`` (and with
    XLA when ``--jit`` asks);
(b) the bare batched forward pass of the Keras model over exactly the same tiles, precomputed
    (the compute floor), at the same batch sizes;
(c) a per-tile ``model.predict`` loop, as public implementations do it (all tiles by default;
    ``--loop-tiles N`` times N and scales, and says so);
(d) a 2048x2048 float32 matmul in the same process: this machine's practical FLOP/s;

then prints the tile count, the times and the ratios (a)/(b) (target <= 1.25), (c)/(a)
(target >= 8), (a) against the paper's 9.6 s per image on a Tesla K40c, and the forward pass's
FLOP/s against the matmul's (target >= 0.5). (a), (b) and (d) are timed round-robin, best of
``--repeats`` rounds, so that other load on the machine hits them alike; (c) runs once.
``--large`` also runs the export on a 4096x4096 image and reports the peak memory it added.

``--strides 16,30,64`` instead times the speed/quality frontier's other axis: the export's
``serve_with_stride`` signature at each stride on the same image, in seconds per megapixel,
against its floor at that stride (tiles x FLOP per tile / the matmul's FLOP/s, measured in the
same rounds).

Thread pools must be set before TensorFlow starts, so compare ``--intra-op`` / ``--inter-op``
settings across runs.

    python scripts/benchmark_export.py                       # the issue's configuration
    python scripts/benchmark_export.py --chunk-sizes 32,64,128 --jit both
    python scripts/benchmark_export.py --strides 16,30,64    # seconds per megapixel by stride
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

PAPER_SECONDS_PER_IMAGE = 9.6  # Bergmann et al. 2019, NanoTWICE 700x1024 on a Tesla K40c


def forward_flops(model) -> float:
    """2 x multiply-adds of the convolutions and transposed convolutions for one tile."""
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):  # noqa: SLF001
        if isinstance(layer, keras.layers.Conv2DTranspose):
            k_h, k_w, c_out, c_in = layer.kernel.shape
            inp = layer.input.shape  # every input pixel scatters a k x k x c_out kernel
            total += inp[1] * inp[2] * k_h * k_w * c_in * c_out
        elif isinstance(layer, keras.layers.Conv2D):
            k_h, k_w, c_in, c_out = layer.kernel.shape
            out = layer.output.shape
            total += out[1] * out[2] * k_h * k_w * c_in * c_out
    return 2.0 * total


def stride_frontier(model, flops: float, image: np.ndarray, strides: list[int], chunk: int, repeats: int) -> None:
    """Seconds per megapixel of the exported ``serve_with_stride`` signature at each stride, against
    the floor: that stride's tiles x ``flops`` at the FLOP/s of a 2048^3 matmul timed in the same rounds."""
    from tfssim import export
    from tfssim.core import tiling

    height, width = image.shape[:2]
    megapixels = height * width / 1e6
    tmp = tempfile.TemporaryDirectory()
    path = export.export_model(model, tmp.name, name="bench", stride=strides[0], chunk_size=chunk)
    serve = tf.saved_model.load(str(path)).signatures["serve_with_stride"]
    request = tf.constant(image.astype(np.float32) / 255)
    a = tf.random.normal([2048, 2048])
    matmul = tf.function(lambda: tf.matmul(a, a))
    candidates = {"matmul": lambda: matmul().numpy()}
    for stride in strides:
        candidates[stride] = lambda stride=stride: serve(image=request, stride=tf.constant(stride))["anomaly_map"].numpy()
    for fn in candidates.values():  # warm-up
        fn()
    times = {key: [] for key in candidates}
    for round_ in range(repeats):
        for key, fn in candidates.items():
            started = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - started)
        print(f"round {round_ + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items()), flush=True)
    best = {key: min(v) for key, v in times.items()}
    rate = 2 * 2048**3 / best["matmul"]
    base = best[strides[0]]
    print(f"\n{height}x{width} image ({megapixels:.3f} megapixels), 128x128 patches, chunk {chunk}, "
          f"matmul {rate / 1e9:.1f} GFLOP/s")
    print(f"{'stride':>6} {'tiles':>7} {'s/image':>9} {'s/MPx':>8} {'floor s/MPx':>12} {'/floor':>7} "
          f"{'speed-up vs ' + str(strides[0]):>16}")
    for stride in strides:
        tiles = tiling.num_tiles(height, width, 128, stride)
        floor = tiles * flops / rate
        print(f"{stride:>6} {tiles:>7} {best[stride]:>9.3f} {best[stride] / megapixels:>8.3f} "
              f"{floor / megapixels:>12.3f} {best[stride] / floor:>7.2f} {base / best[stride]:>16.2f}")
    tmp.cleanup()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-tiles", type=int, default=0, help="tiles for (c); 0 = all")
    parser.add_argument("--chunk-sizes", default="64", help="comma-separated tiles per model call to try")
    parser.add_argument("--jit", choices=("off", "on", "both"), default="off", help="XLA for the model call")
    parser.add_argument("--intra-op", type=int, default=0, help="intra-op threads (0 = TensorFlow's default)")
    parser.add_argument("--inter-op", type=int, default=0, help="inter-op threads (0 = TensorFlow's default)")
    parser.add_argument("--height", type=int, default=700)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=30)
    parser.add_argument("--large", action="store_true", help="also run a 4096x4096 image through the export")
    parser.add_argument("--strides", default="", help="comma-separated strides: time seconds per megapixel by "
                                                      "stride against the floor (instead of (a)-(d))")
    args = parser.parse_args()
    if args.intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)
    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)

    import keras

    from tfssim import export
    from tfssim.core import tiling
    from tfssim.models import build_model

    chunks = [int(c) for c in args.chunk_sizes.split(",")]
    jits = {"off": [False], "on": [True], "both": [False, True]}[args.jit]
    keras.utils.set_random_seed(0)
    model = build_model("ssim", 128, 1, 100)
    flops = forward_flops(model)
    image = (np.random.default_rng(0).random((args.height, args.width, 1)) * 255).astype(np.uint8)
    n = tiling.num_tiles(args.height, args.width, 128, args.stride)
    print(f"device                        : {'GPU ' + tf.config.list_physical_devices('GPU')[0].name if tf.config.list_physical_devices('GPU') else 'CPU'}"
          f", {os.cpu_count()} cores, TensorFlow {tf.__version__}, intra-op {args.intra_op or 'default'}, "
          f"inter-op {args.inter_op or 'default'}")
    print(f"tiles                         : {n} ({args.height}x{args.width}, stride {args.stride}, 128x128 patches)")
    print(f"model                         : {flops / 1e9:.3f} GFLOP per tile, {model.count_params():,} parameters")

    if args.strides:
        stride_frontier(model, flops, image, [int(s) for s in args.strides.split(",")], chunks[0], args.repeats)
        return
    # Every candidate is set up and warmed first, then all are timed round-robin, `--repeats`
    # rounds, best of each: other load on the machine then hits all of them alike.
    candidates: dict[str, object] = {}

    a = tf.random.normal([2048, 2048])
    matmul = tf.function(lambda: tf.matmul(a, a))
    candidates["d"] = lambda: matmul().numpy()

    # (b) bare batched forward over the precomputed tiles.
    tiles, _ = tiling.extract_tiles(tf.constant(image.astype(np.float32) / 255), 128, args.stride)
    assert int(tiles.shape[0]) == n
    for jit in jits:
        forward = tf.function(lambda batch: model(batch, training=False), jit_compile=jit)
        for chunk in chunks:
            batches = [tiles[i : i + chunk] for i in range(0, n, chunk)]

            def batched(forward=forward, batches=batches) -> None:
                for batch in batches:
                    out = forward(batch)
                out.numpy()

            candidates[f"b {chunk} {int(jit)}"] = batched

    # (a) the exported signature, end to end.
    tmp = tempfile.TemporaryDirectory()
    request = tf.constant(image)
    signatures = {}
    for jit in jits:
        for chunk in chunks:
            path = export.export_model(model, tmp.name, name=f"bench_{chunk}_{int(jit)}", stride=args.stride,
                                       chunk_size=chunk, jit_compile=jit)
            signatures[chunk, jit] = tf.saved_model.load(str(path)).signatures["serving_default"]
            candidates[f"a {chunk} {int(jit)}"] = (
                lambda serve=signatures[chunk, jit]: serve(image=request)["anomaly_map"].numpy()
            )

    for fn in candidates.values():  # warm-up: tracing, allocation, XLA compilation
        fn()
    times = {key: [] for key in candidates}
    for round_ in range(args.repeats):
        for key, fn in candidates.items():
            started = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - started)
        print(f"round {round_ + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items()),
              flush=True)
    best = {key: min(v) for key, v in times.items()}
    t_d = best["d"]
    matmul_rate = 2 * 2048**3 / t_d
    floor = {(chunk, jit): best[f"b {chunk} {int(jit)}"] for jit in jits for chunk in chunks}
    served = {(chunk, jit): best[f"a {chunk} {int(jit)}"] for jit in jits for chunk in chunks}
    for (chunk, jit), value in floor.items():
        print(f"(b) forward, batch {chunk:4d}{' XLA' if jit else '    '}  : {value:7.3f} s "
              f"({value / n * 1e3:.2f} ms per tile)")
    for (chunk, jit), value in served.items():
        print(f"(a) signature, chunk {chunk:4d}{' XLA' if jit else '    '}: {value:7.3f} s "
              f"(/(b) same batch: {value / floor[chunk, jit]:.2f})")

    large = None
    if args.large:
        key = min(served, key=served.get)
        serve = signatures[key]
        big = tf.constant((np.random.default_rng(1).random((4096, 4096, 1)) * 255).astype(np.uint8))
        before = peak_rss_mb()
        started = time.perf_counter()
        serve(image=big)["anomaly_map"].numpy()
        large = (time.perf_counter() - started, peak_rss_mb() - before, tiling.num_tiles(4096, 4096, 128, args.stride),
                 key[0])
    tmp.cleanup()

    # (c) per-tile model.predict loop.
    count = args.loop_tiles or n
    sample = tiles[:count].numpy()
    model.predict(sample[:1], verbose=0)
    started = time.perf_counter()
    for i in range(count):
        model.predict(sample[i : i + 1], verbose=0)
    t_c = (time.perf_counter() - started) / count * n

    best_a = min(served, key=served.get)
    best_b = min(floor, key=floor.get)
    t_a, t_b = served[best_a], floor[best_b]
    same_b = floor.get(best_a, t_b)
    forward_rate = flops * n / t_b
    label = lambda key: f"chunk {key[0]}{', XLA' if key[1] else ''}"  # noqa: E731
    print()
    print(f"tiles                         : {n}")
    print(f"(a) exported signature        : {t_a:7.3f} s per image ({label(best_a)}; {t_a / n * 1e3:.2f} ms per tile)")
    print(f"(b) batched forward, floor    : {t_b:7.3f} s ({label(best_b)}; {t_b / n * 1e3:.2f} ms per tile)")
    scaled = "" if count == n else f", timed on {count} tiles and scaled to {n}"
    print(f"(c) per-tile predict loop     : {t_c:7.3f} s ({t_c / n * 1e3:.1f} ms per tile{scaled})")
    print(f"(d) 2048^3 float32 matmul     : {t_d * 1e3:7.1f} ms = {matmul_rate / 1e9:.1f} GFLOP/s")
    print(f"(a)/(b)                       : {t_a / t_b:7.2f}  (target <= 1.25; {t_a / same_b:.2f} against the same "
          f"batch size)")
    print(f"(c)/(a)                       : {t_c / t_a:7.1f}  (target >= 8)")
    print(f"(a) vs paper, 9.6 s per image : {t_a:7.3f} s = {t_a / PAPER_SECONDS_PER_IMAGE:.2f} x the paper's time")
    print(f"forward / matmul FLOP/s       : {forward_rate / matmul_rate:7.2f}  ({forward_rate / 1e9:.1f} vs "
          f"{matmul_rate / 1e9:.1f} GFLOP/s; target >= 0.5)")
    if large:
        seconds, added, tiles_large, chunk = large
        print(f"4096x4096 image               : {tiles_large} tiles in {seconds:.1f} s, peak memory +{added:.0f} MB "
              f"(all tiles at once would be {tiles_large * 128 * 128 * 4 / 2**20:.0f} MB; chunk {chunk})")


if __name__ == "__main__":
    main()
