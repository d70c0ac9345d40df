#!/usr/bin/env python
"""Images per second of tfssim-predict: the local path against a Beam pipeline, on the same images.

One run scores the same images twice, each into a fresh output folder: with
``tfssim.serving.prediction.predict_files`` in this process (the export loaded before the clock starts),
and with ``tfssim.serving.beam.predict_with_beam`` on Beam's FnApiRunner (the DirectRunner's Python
engine) with ``--workers`` worker processes (``--direct_running_mode multi_processing``). The Beam
time is the whole command's work: starting the workers, each importing TensorFlow and loading the
export, reading, scoring, writing. It prints both rates and their ratio (Beam / local), and checks
that both wrote the same summary.

    python scripts/benchmark_beam.py EXPORT IMAGES... [--workers 2] [--threshold 0.3]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", help="an export's version folder or model folder")
    parser.add_argument("images", nargs="+", help="image files, folders or globs")
    parser.add_argument("--workers", type=int, default=2, help="Beam worker processes")
    parser.add_argument("--threshold", type=float, default=None, help="default: the export's calibrated one")
    args = parser.parse_args(argv)

    from tfssim.serving.beam import predict_with_beam
    from tfssim.serving.inference import ExportedModel
    from tfssim.serving.prediction import expand_inputs, predict_files

    paths = expand_inputs(args.images)
    model = ExportedModel.load(args.export)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        local = predict_files(model, paths, Path(tmp) / "local", threshold=args.threshold, progress=False)
        local_s = time.perf_counter() - start
        start = time.perf_counter()
        beam = predict_with_beam(model.path, paths, Path(tmp) / "beam", runner="FnApiRunner",
                                 pipeline_args=["--direct_num_workers", str(args.workers),
                                                "--direct_running_mode", "multi_processing"],
                                 threshold=args.threshold)
        beam_s = time.perf_counter() - start
        same = json.loads((Path(tmp) / "local" / "summary.json").read_text()) == beam
    n = len(paths)
    result = {"images": n, "local_images_per_s": n / local_s, "beam_images_per_s": n / beam_s,
              "ratio": local_s / beam_s}
    print(f"{n} images, {os.cpu_count()} CPUs; local path (one process): {local_s:.1f} s, "
          f"{result['local_images_per_s']:.2f} images/s")
    print(f"Beam FnApiRunner, {args.workers} worker processes: {beam_s:.1f} s, {result['beam_images_per_s']:.2f} "
          f"images/s; Beam / local {result['ratio']:.2f}x; same summary.json: {same}; failed {len(local.failures)}")
    return result


if __name__ == "__main__":
    main()
