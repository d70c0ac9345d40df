#!/usr/bin/env python
"""Pixel ROC AUC of one SSIM export's reconstructions scored with other SSIM windows and map smoothing.

The model is run once per test image (the export's in-graph tiling and overlap averaging);
its reconstructions are then compared with the input by ``tfssim.models.scoring.ssim_residual_maps``
under each window given, each map optionally smoothed by ``tfssim.models.scoring.smooth_map`` with
each ``--map-sigma`` given (0 = none), and the pooled raw-map pixel ROC AUC (with
``--segmentation-auroc`` also the AUROC of the paper's segmentations: threshold, opening,
convex hulls) is printed and written as JSON. This separates what the scoring does from what
training does. The sigmas are swept on the test set itself, so the best row is optimistic:
confirm a chosen setting with ``tfssim-export --map-sigma`` and ``tfssim-evaluate``.

Example (the README's NanoTWICE numbers):
    python scripts/scoring_windows.py ../shared/data/NanoTWICE runs/nanotwice_final/exported_models/nanotwice_ssim/1 \\
        --window gaussian:11:1.5 --window gaussian:19:2.59 --window gaussian:27:3.68 \\
        --window uniform:7 --window uniform:11 --output scoring_windows.json
    python scripts/scoring_windows.py ../shared/data/NanoTWICE EXPORT --window uniform:11 \\
        --map-sigma 0 --map-sigma 4 --map-sigma 8 --map-sigma 12 --segmentation-auroc --output smoothing.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


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
    parser.add_argument("--map-sigma", type=float, action="append", default=None,
                        help="Gaussian smoothing of the map (pixels); repeat for a sweep; default 0 (none)")
    parser.add_argument("--segmentation-auroc", action="store_true",
                        help="also the AUROC of the segmentations (slower: 25 thresholds x every image)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    sigmas = args.map_sigma or [0.0]

    from tfssim import _io, data
    from tfssim.evaluation import metrics
    from tfssim.models import scoring
    from tfssim.serving import postprocess
    from tfssim.serving.inference import ExportedModel

    split = data.load_dataset(args.data)
    model = ExportedModel.load(args.export)
    images = [data.read_image(p, model.channels) for p in split.test]
    masks = data.read_test_masks(split.test_masks, images)
    reconstructions = [model.predict(image)["reconstruction"] for image in images]
    rows = []
    for spec in args.window:
        raw = [scoring.ssim_residual_maps(x, r, **spec)["anomaly_map"] for x, r in zip(images, reconstructions)]
        for sigma in sigmas:
            maps = [scoring.smooth_map(m, sigma).numpy() for m in raw]
            row = {**spec, "map_sigma": sigma, "pixel_auroc": metrics.pixel_roc_auc(maps, masks)}
            if args.segmentation_auroc:
                row["segmentation_auroc"] = float(metrics.segmentation_roc(maps, masks, postprocess.segment)["auc"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.output:
        _io.atomic_write_text(args.output, json.dumps({"export": str(args.export), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
