#!/usr/bin/env python
"""Speed of the SSIM loss and its gradient: this tree's ``tfssim.core.ssim`` against an earlier commit's.

Times ``1 - mean SSIM`` and its gradient with respect to the reconstruction for a batch of 32
128x128 grayscale patches (the training step's SSIM work), inside one ``tf.function`` as
``model.fit`` runs it, best of ``--repeats``, for the ``tfssim/core/ssim.py`` of ``--before`` (a git
revision, read with ``git show``) and for the current one, in the same process; prints both and
their ratio, and that the two losses agree.

Example:
    python scripts/benchmark_ssim.py --before HEAD~1 --repeats 20
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

ROOT = Path(__file__).resolve().parents[1]


def load_revision(revision: str) -> object:
    """``tfssim/core/ssim.py`` as it was at ``revision``, as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:tfssim/core/ssim.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "ssim_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("ssim_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_loss_and_gradient(ssim_fn, x: tf.Tensor, y: tf.Tensor, repeats: int) -> tuple[float, float]:
    """Best wall time (s) of loss + gradient, and the loss."""
    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(y)
            loss = tf.reduce_mean(1.0 - ssim_fn(x, y))
        return loss, tape.gradient(loss, y)

    loss, _ = step(x, y)  # trace
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = step(x, y)
        _ = out[1].numpy()
        best = min(best, time.perf_counter() - started)
    return best, float(loss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="HEAD", help="git revision whose tfssim/core/ssim.py is the baseline")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tfssim.core import ssim as after

    before = load_revision(args.before)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((args.batch, args.size, args.size, 1), np.float32))
    y = tf.constant(np.clip(x.numpy() + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32))
    results = {}
    # Alternate the two so that a slower phase of a shared machine hits both.
    for _ in range(2):
        for label, module in (("before", before), ("after", after)):
            seconds, loss = time_loss_and_gradient(module.ssim, x, y, args.repeats)
            old = results.get(label, (float("inf"), loss))
            results[label] = (min(old[0], seconds), loss)
    (t0, l0), (t1, l1) = results["before"], results["after"]
    print(f"SSIM loss + gradient, batch {args.batch} of {args.size}x{args.size}, best of {2 * args.repeats}:")
    print(f"  before ({args.before}): {t0 * 1e3:.1f} ms   loss {l0:.7f}")
    print(f"  after  (this tree):    {t1 * 1e3:.1f} ms   loss {l1:.7f}")
    print(f"  after / before = {t1 / t0:.3f};  |loss difference| = {abs(l1 - l0):.1e}")

    # The anomaly map of a whole image (the export's path: mirror padding, 1-D convolutions).
    image = tf.constant(rng.random((1, 700, 1024, 1), np.float32))
    recon = tf.constant(np.clip(image.numpy() + rng.normal(0, 0.1, image.shape), 0, 1).astype(np.float32))
    times = {}
    for _ in range(2):
        for label, module in (("before", before), ("after", after)):
            fn = tf.function(lambda a, b, m=module: m.ssim_maps(a, b, padding="same", blur="conv").ssim,
                             input_signature=[tf.TensorSpec([1, None, None, 1])] * 2)
            fn(image, recon)
            for _ in range(max(3, args.repeats // 4)):
                started = time.perf_counter()
                fn(image, recon).numpy()
                times[label] = min(times.get(label, float("inf")), time.perf_counter() - started)
    print("SSIM map of a 700x1024 image in a graph of unknown size (padding='same', blur='conv'):")
    print(f"  before {times['before'] * 1e3:.1f} ms, after {times['after'] * 1e3:.1f} ms, "
          f"after / before = {times['after'] / times['before']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
