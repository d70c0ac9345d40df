#!/usr/bin/env python
"""``tfssim-evaluate`` at real scale: peak memory and time against the number of test images.

Builds its own dataset in the plain-folder layout with defect types (``val/``, ``test/scratch``,
``test/spot``, ``test/good`` and ``ground_truth/<type>/``): defect-free 1024x1024 gray images (a
scikit-image texture mirrored up to size, each image its own random shift, flip and faint noise),
the defective ones with a bright or dark patch and its mask. Exports a tiny autoencoder (weights
as initialised, seeded: evaluation costs the same whatever the weights), then runs
``tfssim-evaluate`` once per test-image count, each in a fresh process, and prints per run the
peak resident memory of the process (``wait4``'s ``ru_maxrss``) and the wall time.

    python scripts/benchmark_evaluate.py                           # 8 and 32 test images of 1024x1024
    python scripts/benchmark_evaluate.py --images 4 16 --size 256  # a quick look
    git archive HEAD tfssim | tar -x -C /tmp/before               # an older tfssim beside this one:
    python scripts/benchmark_evaluate.py --checkouts /tmp/before .  # both, on the same data, in one run

``--checkouts``: folders holding a ``tfssim`` package; each run imports the one named (first on
``PYTHONPATH``), so versions are compared on the same machine, data and export. ``--json`` writes
the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TYPES = ("scratch", "spot")


def _texture(size: int, texture: str) -> np.ndarray:
    from skimage import data as skdata

    base = getattr(skdata, texture)().astype(np.float32) / 255.0
    reps = int(np.ceil(size / base.shape[0])) + 1
    return np.pad(base, [(0, base.shape[0] * reps), (0, base.shape[1] * reps)], mode="symmetric")


def _clean(tiled: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = (int(v) for v in rng.integers(0, tiled.shape[0] - size, 2))
    image = tiled[y:y + size, x:x + size]
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return np.clip(image + rng.normal(0, 0.01, image.shape), 0, 1)


def dataset(root: Path, val: int, test: int, size: int, texture: str = "gravel", seed: int = 0) -> Path:
    """A typed plain-folder dataset: ``val`` defect-free validation images and ``test`` test images
    (a quarter defect-free, the rest split between the two defect types)."""
    from skimage import io

    rng = np.random.default_rng(seed)
    tiled = _texture(size, texture)

    def save(path: Path, image: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        io.imsave(path, (np.clip(image, 0, 1) * 255).round().astype(np.uint8), check_contrast=False)

    save(root / "train" / "train_000.png", _clean(tiled, size, rng))
    for i in range(val):
        save(root / "val" / f"val_{i:03d}.png", _clean(tiled, size, rng))
    good = max(1, test // 4)
    for i in range(test):
        kind = "good" if i < good else TYPES[i % len(TYPES)]
        image = _clean(tiled, size, rng)
        if kind != "good":
            mask = np.zeros((size, size), bool)
            h, w = (int(v) for v in rng.integers(size // 32, size // 8, 2))
            y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
            mask[y:y + h, x:x + w] = True
            image[mask] = 0.95 if kind == "scratch" else 0.05
            save(root / "ground_truth" / kind / f"{i:03d}_mask.png", mask.astype(np.float32))
        save(root / "test" / kind / f"{i:03d}.png", image)
    return root


def tiny_export(root: Path, patch_size: int, latent_dim: int, stride: int) -> Path:
    """An untrained SSIM autoencoder (seeded initial weights), exported."""
    import keras

    from tfssim import export
    from tfssim.models import build_model

    keras.utils.set_random_seed(0)
    return Path(export.export_model(build_model("ssim", patch_size, 1, latent_dim), root / "exports", name="bench",
                                    stride=stride))


def run_evaluate(data_dir: Path, export_dir: Path, output: Path, extra: list[str], checkout: Path | None = None) -> dict:
    """``tfssim-evaluate DATASET EXPORT --output OUTPUT`` in a fresh process (importing tfssim from
    ``checkout`` if given): wall time, peak RSS, scores."""
    command = [sys.executable, "-m", "tfssim.cli.evaluate", str(data_dir), str(export_dir), "--output", str(output),
               *extra]
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(checkout).resolve()), *filter(None, [env.get("PYTHONPATH")])])
    started = time.perf_counter()
    # From the output's parent folder: `python -m` puts the working folder first on sys.path, which
    # in a checkout would import its tfssim rather than the one asked for.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=output.parent)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    output_text = process.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"tfssim-evaluate failed ({os.waitstatus_to_exitcode(status)}):\n{output_text}")
    scores = next(iter(json.loads((output / "results.json").read_text())["exports"].values()))
    return {"wall_seconds": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 3),
            "scores": {k: scores[k] for k in ("pixel_auroc", "aupro_0.3", "image_auroc", "threshold", "f1", "iou")}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[8, 32], help="test image counts, one run each")
    parser.add_argument("--val", type=int, default=2, help="validation images")
    parser.add_argument("--size", type=int, default=1024, help="side of the square images")
    parser.add_argument("--texture", default="gravel", help="scikit-image texture the images are made of")
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--segmentation-auroc", action="store_true", help="also the segmentation ROC (slower)")
    parser.add_argument("--checkouts", type=Path, nargs="+", default=[None],
                        help="folders holding the tfssim package to run (default: the installed one)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args(argv)

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="benchmark-evaluate-"))
    work.mkdir(parents=True, exist_ok=True)
    export_dir = tiny_export(work, args.patch_size, args.latent_dim, args.stride)
    extra = ["--segmentation-auroc"] if args.segmentation_auroc else []
    runs = []
    for checkout in args.checkouts:
        which = "installed tfssim" if checkout is None else f"tfssim of {checkout}"
        for count in args.images:
            data_dir = work / f"data_{count}"
            if not data_dir.exists():
                dataset(data_dir, args.val, count, args.size, args.texture)
            result = run_evaluate(data_dir, export_dir, work / f"evaluation_{count}_{time.time_ns()}", extra, checkout)
            runs.append({"checkout": None if checkout is None else str(checkout), "images": count, "size": args.size,
                         **result})
            print(f"{which}: {count} test images of {args.size}x{args.size}: {result['wall_seconds']:.0f} s, peak RSS "
                  f"{result['peak_rss_gb']:.3f} GB; {result['scores']}", flush=True)
        own = [r for r in runs if r["checkout"] == (None if checkout is None else str(checkout))]
        if len(own) > 1:
            print(f"{which}: peak RSS from {own[0]['images']} to {own[-1]['images']} test images: "
                  f"{own[0]['peak_rss_gb']:.3f} -> {own[-1]['peak_rss_gb']:.3f} GB "
                  f"(ratio {own[-1]['peak_rss_gb'] / own[0]['peak_rss_gb']:.2f})", flush=True)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "keep", "checkouts")}
        payload = {"runs": runs, "settings": settings,
                   "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
