#!/usr/bin/env python
"""Pixel ROC AUC of one SSIM export's reconstructions scored with other SSIM windows.

The model is run once per test image (the export's in-graph tiling and overlap averaging);
its reconstructions are then compared with the input by ``tfssim.scoring.ssim_residual_maps``
under each window given, and the pooled raw-map pixel ROC AUC is printed and written as JSON.
This separates what the window does at scoring time from what it does in training.

Example (the README's NanoTWICE numbers):
    python scripts/scoring_windows.py ../shared/data/NanoTWICE runs/nanotwice_final/exported_models/nanotwice_ssim/1 \\
        --window gaussian:11:1.5 --window gaussian:19:2.59 --window gaussian:27:3.68 \\
        --window uniform:7 --window uniform:11 --output scoring_windows.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def parse_window(text: str) -> dict:
    parts = text.split(":")
    if parts[0] not in ("gaussian", "uniform") or len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: expected gaussian:K:SIGMA or uniform:K")
    spec = {"weighting": parts[0], "window_size": int(parts[1])}
    if len(parts) == 3:
        spec["sigma"] = float(parts[2])
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("export", type=Path)
    parser.add_argument("--window", type=parse_window, action="append", required=True)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    from tfssim import data, metrics, scoring
    from tfssim.inference import ExportedModel

    split = data.load_dataset(args.data)
    model = ExportedModel.load(args.export)
    images = [data.read_image(p, model.channels) for p in split.test]
    masks = [np.zeros(i.shape[:2], bool) if m is None else data.read_mask(m, shape=i.shape[:2])
             for i, m in zip(images, split.test_masks)]
    reconstructions = [model.predict(image)["reconstruction"] for image in images]
    rows = []
    for spec in args.window:
        maps = [scoring.ssim_residual_maps(x, r, **spec)["anomaly_map"].numpy() for x, r in zip(images, reconstructions)]
        rows.append({**spec, "pixel_auroc": metrics.pixel_roc_auc(maps, masks)})
        print(json.dumps(rows[-1]), flush=True)
    if args.output:
        args.output.write_text(json.dumps({"export": str(args.export), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
