#!/usr/bin/env python
"""``tfssim-tune`` at real scale: peak memory and time against the number of validation images.

Builds its own validation sets of defect-free 1024x1024 gray images (a scikit-image texture,
mirrored up to 1024x1024, each image its own random shift, flip and faint noise), an export of
the paper's autoencoder (128x128 patches, d = 100, stride 30; weights as initialised, seeded:
tuning costs the same whatever the weights, and an untrained model shows the warning of a
choice that means little), then runs ``tfssim-tune`` with its default settings once per image
count, each in a fresh process, and prints per run:

* the peak resident memory of the process (``wait4``'s ``ru_maxrss``), against ``--memory-target``;
* the wall time, against ``--time-target`` for the image count of the issue (26);
* the seconds per stage the tuner records (``tuning.json`` ``settings.stage_seconds``): the
  export's reconstructions against the candidate sweep (map candidates, tilings, map formulas,
  threshold, post-processing), whose ratio must stay at or below 1;
* the stride frontier's seconds (pass 1d: the chosen map at the larger strides, which reconstructs
  every copy and clean image once more per stride, and their serving time), apart from both;
* seconds per image, to show that time is linear in the number of images.

    python scripts/benchmark_tune.py                          # 26 and 100 images (about 40 minutes)
    python scripts/benchmark_tune.py --images 4 16 --size 512 # a quick look

``--json`` writes the numbers (docs/results/benchmark_tune.json).
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


def validation_images(folder: Path, count: int, size: int, texture: str = "gravel", seed: int = 0) -> list[Path]:
    """``count`` defect-free ``size`` x ``size`` PNGs: the texture mirrored to size, each image
    rolled, flipped and with faint noise of its own."""
    from skimage import data as skdata
    from skimage import io

    base = getattr(skdata, texture)().astype(np.float32) / 255.0
    reps = int(np.ceil(size / base.shape[0])) + 1
    tiled = np.pad(base, [(0, base.shape[0] * reps), (0, base.shape[1] * reps)], mode="symmetric")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        y, x = (int(v) for v in rng.integers(0, tiled.shape[0] - size, 2))
        image = tiled[y:y + size, x:x + size]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        image = np.clip(image + rng.normal(0, 0.01, image.shape), 0, 1)
        path = folder / f"val_{i:03d}.png"
        io.imsave(path, (image * 255).round().astype(np.uint8), check_contrast=False)
        paths.append(path)
    return paths


def paper_export(root: Path, patch_size: int, latent_dim: int, stride: int) -> Path:
    """The paper's autoencoder (seeded initial weights) saved as ``.keras`` and exported."""
    import keras

    from tfssim import export
    from tfssim.models import build_model

    keras.utils.set_random_seed(0)
    model_file = root / "paper.keras"
    build_model("ssim", patch_size, 1, latent_dim).save(model_file)
    return Path(export.export_model(model_file, root / "exports", name="bench", stride=stride))


def run_tune(export_dir: Path, images: Path, output: Path, options: list[str] = ()) -> dict:
    """``tfssim-tune EXPORT IMAGES --output OUTPUT [options]`` in a fresh process: wall time, peak RSS, its record."""
    command = [sys.executable, "-m", "tfssim.cli.tune", str(export_dir), str(images), "--output", str(output),
               *options]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    output_text = process.stdout.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"tfssim-tune failed ({process.returncode}):\n{output_text}")
    record = json.loads((output / "tuning.json").read_text())
    return {"wall_seconds": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 3),
            "stage_seconds": record["settings"]["stage_seconds"], "output": output_text.strip().splitlines()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[26, 100], help="image counts, one run each")
    parser.add_argument("--size", type=int, default=1024, help="side of the square validation images")
    parser.add_argument("--texture", default="gravel", help="scikit-image texture the images are made of")
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=100)
    parser.add_argument("--stride", type=int, default=30)
    parser.add_argument("--memory-target", type=float, default=3.0, help="peak RSS target, GB")
    parser.add_argument("--time-target", type=float, default=12.0, help="minutes for --time-target-images")
    parser.add_argument("--time-target-images", type=int, default=26)
    parser.add_argument("--paper-tiling", action="store_true",
                        help="tune only the export's own tiling (--border none --blend mean): no blend candidate")
    parser.add_argument("--both-borders", action="store_true",
                        help="also compare the mirrored border (--border none --border reflect): one more model pass "
                             "per image and copy")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args(argv)

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="benchmark-tune-"))
    work.mkdir(parents=True, exist_ok=True)
    export_dir = paper_export(work, args.patch_size, args.latent_dim, args.stride)
    runs = []
    for count in args.images:
        folder = validation_images(work / f"val_{count}", count, args.size, args.texture)[0].parent
        options = ["--border", "none", "--blend", "mean"] if args.paper_tiling else []
        options += ["--border", "none", "--border", "reflect"] if args.both_borders else []
        result = run_tune(export_dir, folder, work / f"tuning_{count}", options)
        stages = result["stage_seconds"]
        sweep = (stages["map_candidates"] + stages.get("tilings", 0.0) + stages.get("formulas", 0.0)
                 + stages["threshold"] + stages["post_processing"])
        row = {"images": count, "size": args.size, **{k: result[k] for k in ("wall_seconds", "peak_rss_gb")},
               "stage_seconds": stages, "sweep_seconds": round(sweep, 1),
               "sweep_over_reconstructions": round(sweep / stages["reconstructions"], 3),
               "seconds_per_image": round(result["wall_seconds"] / count, 2)}
        runs.append(row)
        print(f"{count} images of {args.size}x{args.size}: {result['wall_seconds'] / 60:.1f} min, peak RSS "
              f"{result['peak_rss_gb']:.2f} GB (target {args.memory_target:g}); reconstructions "
              f"{stages['reconstructions']:.0f} s, candidate sweep {sweep:.0f} s (ratio "
              f"{row['sweep_over_reconstructions']:.2f}, target <= 1), stride frontier "
              f"{stages.get('strides', 0.0):.0f} s, painting {stages['painting']:.0f} s; "
              f"{row['seconds_per_image']:.1f} s per image", flush=True)
    for row in runs:
        if row["images"] == args.time_target_images:
            print(f"time target: {row['wall_seconds'] / 60:.1f} min for {row['images']} images "
                  f"(target {args.time_target:g} min)")
    if len(runs) > 1:
        memory = [r["peak_rss_gb"] for r in runs]
        per_image = [r["seconds_per_image"] for r in runs]
        print(f"peak RSS from {runs[0]['images']} to {runs[-1]['images']} images: {memory[0]:.2f} -> {memory[-1]:.2f} GB "
              f"(ratio {memory[-1] / memory[0]:.2f}); seconds per image {per_image[0]:.1f} -> {per_image[-1]:.1f} "
              f"(ratio {per_image[-1] / per_image[0]:.2f})")
    if args.json:
        import tensorflow as tf

        from tfssim import __version__

        payload = {"runs": runs, "settings": {k: v for k, v in vars(args).items() if k not in ("json", "keep")},
                   "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
                   "versions": {"tfssim": __version__, "tensorflow": tf.__version__}}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
