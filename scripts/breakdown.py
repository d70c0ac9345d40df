"""Where an export falls short on a labelled test set: pixel ROC AUC per test image, and the share
of each ground-truth region it finds, by region size.

Each test image's AUROC pools that image's pixels only (its defects against its own good pixels);
for the sizes, every connected ground-truth region gets its equivalent diameter and the share of
its pixels above the export's stored threshold (the region's recall), and regions are grouped by
size quartile. A report of results, not a way to choose settings: run it after the settings were
fixed (e.g. by tfssim-tune on defect-free images).

Example:
    python scripts/breakdown.py ../shared/data/NanoTWICE exported_models/nanotwice_ssim/2 \\
        --output breakdown.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def breakdown(dataset: str, export: str) -> dict:
    """Per-image pixel AUROC and per-size region recall of ``export`` on ``dataset``'s test images."""
    from skimage import measure

    from tfssim import data
    from tfssim.evaluation import metrics
    from tfssim.evaluation.evaluate import compute_maps
    from tfssim.evaluation.splits import load_split
    from tfssim.serving.inference import ExportedModel

    model = ExportedModel.load(export)
    if model.threshold is None:
        raise SystemExit(f"Error: export {model.path} has no threshold; run tfssim-calibrate or tfssim-tune first")
    split, _, _ = load_split(dataset, [model])
    images = [data.read_image(p, model.channels) for p in split.test]
    masks = data.read_test_masks(split.test_masks, images)
    maps = compute_maps(model, images, "test", sources=split.test)
    per_image = []
    regions = []
    for path, anomaly_map, mask in zip(split.test, maps, masks):
        auroc = metrics.pixel_roc_auc([anomaly_map], [mask]) if 0 < mask.sum() < mask.size else None
        per_image.append({"image": Path(path).name, "pixel_auroc": auroc, "defect_pixels": int(mask.sum())})
        flagged = anomaly_map > model.threshold
        for region in measure.regionprops(measure.label(mask)):
            rows, cols = region.coords[:, 0], region.coords[:, 1]
            regions.append({"image": Path(path).name, "area": int(region.area),
                            "diameter": float(region.equivalent_diameter_area),
                            "recall": float(flagged[rows, cols].mean())})
    diameters = np.array([r["diameter"] for r in regions])
    edges = np.quantile(diameters, [0, 0.25, 0.5, 0.75, 1.0]) if regions else np.array([])
    by_size = []
    for low, high in zip(edges[:-1], edges[1:]):
        chosen = [r for r in regions if low <= r["diameter"] <= high]
        by_size.append({"diameter_px": [float(low), float(high)], "regions": len(chosen),
                        "mean_recall": float(np.mean([r["recall"] for r in chosen])),
                        "found_half": float(np.mean([r["recall"] >= 0.5 for r in chosen]))})
    return {"export": str(model.path), "threshold": model.threshold,
            "pooled_pixel_auroc": metrics.pixel_roc_auc(maps, masks),
            "per_image": per_image, "regions_by_size": by_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("export")
    parser.add_argument("--output", default=None, help="Write the breakdown as JSON here.")
    args = parser.parse_args(argv)
    result = breakdown(args.dataset, args.export)
    aurocs = [r["pixel_auroc"] for r in result["per_image"] if r["pixel_auroc"] is not None]
    print(f"pooled pixel AUROC {result['pooled_pixel_auroc']:.4f}; per image: min {min(aurocs):.3f}, "
          f"median {np.median(aurocs):.3f}, max {max(aurocs):.3f}")
    for row in sorted(result["per_image"], key=lambda r: r["pixel_auroc"] or 1)[:5]:
        print(f"  lowest: {row['image']}  {row['pixel_auroc']:.3f}  ({row['defect_pixels']} defect pixels)")
    for row in result["regions_by_size"]:
        low, high = row["diameter_px"]
        print(f"regions {low:5.1f}-{high:5.1f} px across: {row['regions']:4d}, mean recall at the threshold "
              f"{row['mean_recall']:.3f}, half or more found {row['found_half']:.3f}")
    if args.output:
        from tfssim._io import atomic_write_json

        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
