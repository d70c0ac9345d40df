#!/usr/bin/env python
"""Training throughput of ``tfssim-train``'s own step, as patches/s and as a fraction of matmul FLOP/s.

In one process: the rate of a 2048x2048x2048 float32 matmul (the machine's practical ceiling),
and the training rate of the step that :func:`tfssim.training.train` runs, for each model kind
and patch size asked for (default: SSIM-AE and l2-AE at 128 and 64). The step is built with the
library's own functions, as ``train`` builds it: :class:`~tfssim.training.TrainConfig`'s
defaults (batch 32, AdamW lr 2e-4, weight decay 1e-5, precision ``auto``), the model from
``get_spec(kind).build_model``, the loss and optimizer from ``tfssim.training.loop``'s
``_build_loss`` and ``_compile`` (so whatever those set, e.g. ``steps_per_execution``, is
measured), and the index-seeded pipeline of :func:`tfssim.data.patch_dataset`, trained by
``model.fit`` with a callback that reads the loss after every step as the run state's NaN check
does.

The matmul and the training configurations are timed round-robin (``--repeats`` rounds, each
timing the matmul and then every configuration), so that a slower phase of a shared machine
hits all of them; best and median over the rounds are reported. The fraction of matmul is taken
per round (the training rate against that round's matmul rate). On a machine shared with other
work the wall-clock rates move by 2x from round to round; ``cpu_fraction_of_matmul`` (training
FLOPs per CPU second of this process, pipeline threads included, against the matmul's FLOPs per
CPU second) moves much less and is the better before/after comparison there.

FLOPs are counted from the model: every Conv2D layer does ``H_out * W_out * k * k * C_in * C_out``
multiply-adds per patch, every Conv2DTranspose ``H_in * W_in * k * k * C_in * C_out`` (the
convolution it is the transpose of); a multiply-add is 2 FLOPs, and forward + backward is 3x
the forward (the backward pass has one gradient-of-input and one gradient-of-weights
convolution per layer of the same size). Biases, activations, the loss and the optimizer are
not counted. For the paper's 128x128x1 model with d = 100 that is 121 M multiply-adds,
0.727 GFLOP per patch per step.

With ``--breakdown`` each configuration is also timed, in the same rounds, as three parts of
its step, each as patches/s and fraction of matmul, so that one run says where the time goes:

- ``convolutions``: forward + backward of the model's (transposed) convolutions alone, chained
  in order with the model's kernel shapes and no bias, activation, loss or optimizer: the same
  FLOPs run by the same oneDNN kernels, i.e. the ceiling that this FLOP count allows here;
- ``network``: forward + backward of the model itself (bias, LeakyReLU, sigmoid) under a
  trivial loss, no optimizer;
- ``step_without_pipeline``: ``model.fit`` with the step above on the first 8 batches of the
  pipeline, cached in memory (loss, optimizer and Keras's loop, no patch extraction).

The gap from ``step_without_pipeline`` to the full step is the pipeline's share (its own CPU
and its threads' interference with the step's on a machine with few cores).

Examples:
    python scripts/benchmark_training.py --json
    python scripts/benchmark_training.py --models ssim --breakdown
    PYTHONPATH=/path/to/other/checkout python scripts/benchmark_training.py --repeats 5 --json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

MATMUL_N = 2048


def conv_layers(model: Any) -> list:
    """Every ``Conv2D`` / ``Conv2DTranspose`` of ``model`` in order, nested models walked."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += conv_layers(layer)
        elif isinstance(layer, keras.layers.Conv2D | keras.layers.Conv2DTranspose):
            found.append(layer)
    return found


def conv_macs(model: Any) -> int:
    """Multiply-adds of one forward pass of one sample through every (transposed) convolution.

    Args:
        model: A built Keras model; nested models are walked.

    Returns:
        The count, summed over layers (see the module docstring for the rule).
    """
    import keras

    total = 0
    for layer in conv_layers(model):
        k_h, k_w = layer.kernel_size
        if isinstance(layer, keras.layers.Conv2DTranspose):  # counted at its input: the conv it transposes
            _, h, w, c_in = layer.input.shape
        else:
            _, h, w, _ = layer.output.shape
            c_in = layer.input.shape[-1]
        total += h * w * k_h * k_w * c_in * layer.filters
    return int(total)


def training_flops_per_patch(model: Any) -> float:
    """FLOPs of one training step per patch: conv multiply-adds x 2 x 3 (forward + backward)."""
    return 6.0 * conv_macs(model)


def _images(patch: int, seed: int = 0) -> list[np.ndarray]:
    """Four 8-bit-like grayscale 'images' (values code / 255, as read from 8-bit files)."""
    rng = np.random.default_rng(seed)
    side = max(4 * patch, 512)
    return [(rng.integers(0, 256, (side, side + 37 * i, 1)) / 255.0).astype(np.float32) for i in range(4)]


class _StepClock:
    """Wall time from the end of the first call of the training function to the end of training.

    The first call (pipeline start, first batch) is left out; so are Keras's fit start-up and
    teardown. ``float(loss)`` after every call mirrors the run state's per-batch NaN check.
    """

    def __init__(self) -> None:
        import keras

        class Clock(keras.callbacks.Callback):
            def __init__(self, outer: "_StepClock") -> None:
                super().__init__()
                self.outer = outer

            def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
                float((logs or {}).get("loss", 0.0))
                if self.outer.first is None:
                    self.outer.first = time.perf_counter()
                    self.outer.first_batch = batch

            def on_train_end(self, logs: dict | None = None) -> None:
                self.outer.last = time.perf_counter()

        self.callback = Clock(self)
        self.first: float | None = None
        self.first_batch = 0
        self.last = 0.0

    def reset(self) -> None:
        self.first, self.first_batch, self.last = None, 0, 0.0


def conv_chain(model: Any, input_shape: tuple[int, ...]) -> Any:
    """The model's convolutions alone, in order, as one ``keras.Sequential`` (no bias, no activation).

    Every ``Conv2D``/``Conv2DTranspose`` of ``model`` (nested models walked) is re-created from
    its config with ``use_bias=False`` and no activation. Returns ``None`` when the layers do not
    chain into the model's output shape with the model's multiply-adds (convolutions that are not
    one straight path, e.g. the VAE's, whose encoder ends in 2d channels and decoder takes d).
    """
    import keras

    layers = []
    for layer in conv_layers(model):
        config = dict(layer.get_config(), use_bias=False, activation=None, dtype=layer.dtype_policy)
        layers.append(layer.__class__.from_config(config))
    try:
        chain = keras.Sequential([keras.Input(input_shape[1:])] + layers)
    except ValueError:  # the convolutions' shapes do not follow one another
        return None
    if tuple(chain.output_shape[1:]) != tuple(input_shape[1:]) or conv_macs(chain) != conv_macs(model):
        return None
    return chain


class BreakdownCase:
    """The parts of one :class:`TrainingCase`'s step, timed on one fixed batch (see the module docstring)."""

    def __init__(self, case: "TrainingCase", calls: int = 4) -> None:
        import tensorflow as tf

        self.case, self.calls = case, calls
        batch = next(iter(case.dataset))[0]
        self.batch = tf.constant(batch)
        weights = tf.constant(np.random.default_rng(1).random(batch.shape), batch.dtype)
        chain = conv_chain(case.model, tuple(batch.shape))

        def gradient_of(model: Any) -> Callable:
            @tf.function
            def step(x: tf.Tensor) -> list:
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(tf.cast(model(x, training=True), tf.float32) * weights)
                return tape.gradient(loss, model.trainable_variables)

            return step

        self.parts: dict[str, Callable[[], float]] = {}
        if chain is not None:
            self.parts["convolutions"] = self._timer(gradient_of(chain))
        self.parts["network"] = self._timer(gradient_of(case.model))
        self.cached = case.dataset.take(8).cache().repeat()
        self.parts["step_without_pipeline"] = lambda: case.run(self.cached)
        for part in self.parts.values():  # trace and warm up
            part()

    def _timer(self, step: Callable) -> Callable[[], float]:
        def run() -> float:
            best = float("inf")
            for _ in range(self.calls):
                started = time.perf_counter()
                [g.numpy() for g in step(self.batch)]
                best = min(best, time.perf_counter() - started)
            return self.case.config.batch_size / best

        return run


class TrainingCase:
    """One model kind at one patch size, built as ``tfssim.training.train`` builds it."""

    def __init__(self, kind: str, patch: int, batch: int, steps: int) -> None:
        import keras

        from tfssim import data
        from tfssim.models import get_spec
        from tfssim.training import TrainConfig, loop

        self.kind, self.patch, self.steps = kind, patch, steps
        self.config = TrainConfig(data="unused", output="unused", model=kind, patch_size=patch, batch_size=batch,
                                  fm_weights=None)
        self.config.validate()
        keras.utils.set_random_seed(self.config.seed)
        loss = loop._build_loss(self.config)
        self.model = get_spec(kind).build_model(self.config.patch_size, self.config.channels, self.config.latent_dim)
        loop._compile(self.model, self.config, loss)
        self.model.optimizer.build(self.model.trainable_variables)
        self.dataset = data.patch_dataset(_images(patch), patch_size=patch,
                                          patches_per_epoch=self.config.patches_per_epoch,
                                          batch_size=self.config.batch_size, seed=self.config.seed,
                                          augment=self.config.augment, repeat=True)
        self.flops_per_patch = training_flops_per_patch(self.model)
        self.clock = _StepClock()
        self.name = f"{kind}-{patch}"

    def run(self, dataset: Any = None) -> float:
        """Train ``steps`` steps on ``dataset`` (default: the pipeline); return patches/s over all but the
        first call (``cpu_seconds``: of all calls)."""
        self.clock.reset()
        cpu = time.process_time()
        self.model.fit(self.dataset if dataset is None else dataset, epochs=1, steps_per_epoch=self.steps, callbacks=[self.clock.callback],
                       verbose=0)
        per_call = int(getattr(self.model, "steps_per_execution", 1) or 1)
        timed_steps = self.steps - min(per_call, self.steps)
        seconds = self.clock.last - (self.clock.first or self.clock.last)
        self.cpu_seconds_per_patch = (time.process_time() - cpu) / (self.steps * self.config.batch_size)
        if timed_steps <= 0 or seconds <= 0:
            raise SystemExit("Error: too few --steps to time (need more than steps_per_execution)")
        return timed_steps * self.config.batch_size / seconds


def matmul_rate(tries: int = 5) -> tuple[float, float]:
    """Best FLOP/s of a 2048^3 float32 matmul over ``tries`` runs, and FLOPs per CPU second (all runs)."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    a = tf.constant(rng.standard_normal((MATMUL_N, MATMUL_N), np.float32))
    b = tf.constant(rng.standard_normal((MATMUL_N, MATMUL_N), np.float32))
    best = float("inf")
    cpu = time.process_time()
    for _ in range(tries):
        started = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2.0 * MATMUL_N**3 / best, 2.0 * MATMUL_N**3 * tries / (time.process_time() - cpu)


def _summary(values: list[float], digits: int = 4) -> dict[str, Any]:
    return {"best": round(max(values), digits), "median": round(statistics.median(values), digits),
            "all": [round(v, digits) for v in values]}


def benchmark(kinds: list[str], patches: list[int], repeats: int, steps: dict[int, int], batch: int,
              log: Callable[[str], None] = lambda line: None, breakdown: bool = False) -> dict[str, Any]:
    """Run the round-robin benchmark and return its results as a JSON-able dict."""
    import _provenance as provenance
    import keras
    import tensorflow as tf

    from tfssim.training import precision

    with precision.precision_policy("auto") as policy:
        cases = [TrainingCase(kind, patch, batch, steps[patch]) for patch in patches for kind in kinds]
        matmul_rate(2)  # warm-up
        for case in cases:  # trace and warm up every step before the timed rounds
            case.run()
        parts = {case.name: BreakdownCase(case) for case in cases} if breakdown else {}
        part_rates: dict[str, dict[str, list[float]]] = {
            name: {part: [] for part in b.parts} for name, b in parts.items()}
        part_fractions: dict[str, dict[str, list[float]]] = {
            name: {part: [] for part in b.parts} for name, b in parts.items()}
        matmul: list[float] = []
        rates: dict[str, list[float]] = {case.name: [] for case in cases}
        fractions: dict[str, list[float]] = {case.name: [] for case in cases}
        cpu_fractions: dict[str, list[float]] = {case.name: [] for case in cases}
        for round_ in range(repeats):
            m, m_cpu = matmul_rate()
            matmul.append(m / 1e9)
            for case in cases:
                rate = case.run()
                rates[case.name].append(rate)
                fractions[case.name].append(rate * case.flops_per_patch / m)
                cpu_fractions[case.name].append(case.flops_per_patch / case.cpu_seconds_per_patch / m_cpu)
                for part, time_part in (parts[case.name].parts.items() if breakdown else ()):
                    part_rate = time_part()
                    part_rates[case.name][part].append(part_rate)
                    part_fractions[case.name][part].append(part_rate * case.flops_per_patch / m)
            log(f"round {round_ + 1}/{repeats}: matmul {m / 1e9:.0f} GFLOP/s; "
                + "; ".join(f"{c.name} {rates[c.name][-1]:.0f} patches/s ({fractions[c.name][-1]:.2f}, CPU "
                            f"{cpu_fractions[c.name][-1]:.2f})" for c in cases))
    return {
        "tfssim": provenance.source(),
        "tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "precision": policy,
        "flops_rule": "conv multiply-adds per patch x 2 (FLOP per MAC) x 3 (forward + backward); "
                      "Conv2DTranspose counted as the convolution it transposes; bias, activations, loss and "
                      "optimizer not counted",
        "matmul": {"n": MATMUL_N, "gflops": _summary(matmul, 1)},
        "repeats": repeats,
        "cases": [
            {"model": c.kind, "patch_size": c.patch, "batch_size": c.config.batch_size,
             "steps_per_round": c.steps, "steps_per_execution": int(getattr(c.model, "steps_per_execution", 1) or 1),
             "gflop_per_patch": round(c.flops_per_patch / 1e9, 4),
             "patches_per_s": _summary(rates[c.name], 1),
             "fraction_of_matmul": _summary(fractions[c.name], 3),
             "cpu_fraction_of_matmul": _summary(cpu_fractions[c.name], 3),
             **({"breakdown": {part: {"patches_per_s": _summary(part_rates[c.name][part], 1),
                                      "fraction_of_matmul": _summary(part_fractions[c.name][part], 3)}
                               for part in part_rates[c.name]}} if c.name in part_rates else {})}
            for c in cases
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ssim,l2", help="model kinds, comma-separated (default: ssim,l2)")
    parser.add_argument("--patch-sizes", default="128,64", help="patch sizes, comma-separated (default: 128,64)")
    parser.add_argument("--repeats", type=int, default=5, help="round-robin rounds (default: 5)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per case per round (default: 24 at patch >= 128, 48 below)")
    parser.add_argument("--batch-size", type=int, default=32, help="patches per step (default: 32, train's default)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the step's parts: convolutions alone, the network, the step without "
                             "the pipeline (see above)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--output", help="also write the JSON results to this file")
    args = parser.parse_args(argv)
    try:
        kinds = [k for k in args.models.split(",") if k]
        patches = [int(p) for p in args.patch_sizes.split(",") if p]
    except ValueError:
        parser.error(f"--patch-sizes must be integers, got {args.patch_sizes!r}")
    if args.repeats < 1 or (args.steps is not None and args.steps < 2) or args.batch_size < 1:
        parser.error("--repeats and --batch-size must be >= 1, --steps >= 2")
    steps = {p: args.steps or (24 if p >= 128 else 48) for p in patches}

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    from tfssim.errors import InputError

    try:
        results = benchmark(kinds, patches, args.repeats, steps, args.batch_size, log, breakdown=args.breakdown)
    except InputError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(results, indent=2)
    if args.output:
        from tfssim._io import atomic_write_text

        atomic_write_text(args.output, text + "\n")
    if args.json:
        print(text)
    else:
        print(f"matmul {MATMUL_N}^3 float32: {results['matmul']['gflops']['best']:.0f} GFLOP/s best, "
              f"{results['matmul']['gflops']['median']:.0f} median")
        for case in results["cases"]:
            r, f, c = case["patches_per_s"], case["fraction_of_matmul"], case["cpu_fraction_of_matmul"]
            print(f"{case['model']:>5} patch {case['patch_size']:>3}: {r['best']:7.1f} patches/s best, "
                  f"{r['median']:7.1f} median; {f['best']:.3f} / {f['median']:.3f} of matmul "
                  f"(by CPU time {c['median']:.3f} median) "
                  f"({case['gflop_per_patch']} GFLOP per patch)")
            for part, numbers in case.get("breakdown", {}).items():
                r, f = numbers["patches_per_s"], numbers["fraction_of_matmul"]
                print(f"      {part:>21}: {r['best']:7.1f} patches/s best, {r['median']:7.1f} median; "
                      f"{f['best']:.3f} / {f['median']:.3f} of matmul")
    return 0


if __name__ == "__main__":
    sys.exit(main())
