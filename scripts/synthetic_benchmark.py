#!/usr/bin/env python
"""Exports compared on synthetic defects painted with a seed no tuning used: pooled and per-family
pixel ROC AUC, and region recall by family and size at each export's stored threshold.

``tfssim-tune`` chooses its settings on synthetic defects it paints with its ``--seed`` (0 by
default). This paints fresh copies of the given defect-free images with another seed (``--seed``,
default 1000) and every family of ``tfssim.data.defects`` (large ones included), runs each
export's served graph on them (``ExportedModel.predict``: its own map formula, tiling and
smoothing) and scores the maps against the exact masks with scikit-learn. A region counts as
found when at least ``tfssim.evaluation.tuning.REGION_FOUND_SHARE`` of its pixels are in the export's
post-processed segmentation at its stored threshold (``tfssim.serving.postprocess``), as the tuner's
report counts it. No test image is read: use it to compare exports (e.g. a tune with and without
map formulas, or with the large families painted) on the defect kinds a test set may lack.

Example (docs/results.md):
    python scripts/synthetic_benchmark.py ../shared/data/NanoTWICE/Normal/ITIA1145.tif \\
        --export exported_models/nt/2 --export exported_models/nt/3 --copies 8 \\
        --output docs/results/synthetic_benchmark_nanotwice.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def family_labels(mask: np.ndarray, infos: list[dict]) -> np.ndarray:
    """Index + 1 of each defect pixel's family in ``FAMILIES`` (0: good); a later defect wins."""
    from tfssim.data.defects import FAMILIES

    out = np.zeros(mask.shape, np.int8)
    for info in infos:
        r0, r1, c0, c1 = info["box"]
        region = info["region"] & mask[r0:r1, c0:c1]
        out[r0:r1, c0:c1][region] = FAMILIES.index(info["family"]) + 1
    return out


def benchmark(images: list[np.ndarray], exports: list[str], *, seed: int, copies: int,
              size_range: tuple[float, float] | None) -> dict:
    """The table of the module docstring for every export, on the same painted copies."""
    from sklearn.metrics import roc_auc_score
    from tqdm.auto import tqdm

    from tfssim.data import defects
    from tfssim.evaluation import tuning
    from tfssim.serving import postprocess
    from tfssim.serving.inference import ExportedModel

    models = [ExportedModel.load(e) for e in exports]
    patch = models[0].metadata.patch_size
    size_range = tuple(size_range or defects.default_size_range(patch))
    painted = []
    for i, image in enumerate(images):
        count = tuning.defects_per_copy(image.shape, patch)
        source = images[(i + 1) % len(images)] if len(images) > 1 else None
        painted += [tuning.synthetic_copy(image, i, k, seed=seed, count=count, size_range=size_range,
                                          families=defects.FAMILIES, source=source) for k in range(copies)]
    labels = np.concatenate([family_labels(m, infos).ravel() for _, m, infos in painted])
    bins = tuning._size_bins(size_range, defects.FAMILIES, min(min(im.shape[:2]) for im in images))
    out = {"seed": seed, "copies_per_image": copies, "images": len(images), "size_range": list(size_range),
           "families": list(defects.FAMILIES), "defect_fraction": float(np.mean(labels > 0)), "exports": []}
    for model in models:
        md = model.metadata
        if model.threshold is None:
            raise SystemExit(f"Error: export {model.path} has no threshold; tune or calibrate it first")
        processor = postprocess.PostProcessor.from_metadata(md)  # the export's own post-processing
        maps, found, total = [], {}, {}
        for picture, mask, infos in tqdm(painted, desc=f"{model.path}", leave=False):
            m = model.predict(picture)["anomaly_map"]
            maps.append(m.ravel())
            seg = processor.segment(m)
            for family, size_bin, box, region in tuning._defect_regions(infos, mask, bins):
                key = (family, size_bin)
                total[key] = total.get(key, 0) + 1
                hit = np.count_nonzero(seg[box] & region) >= tuning.REGION_FOUND_SHARE * np.count_nonzero(region)
                found[key] = found.get(key, 0) + int(hit)
        scores = np.concatenate(maps)
        row = {"export": str(model.path), "residual": md.residual, "map_formula": md.map_formula,
               "border": md.border, "blend": md.blend, "map_sigma": md.map_sigma,
               "threshold": model.threshold, "pixel_auroc": float(roc_auc_score(labels > 0, scores)),
               "pixel_auroc_by_family": {}, "region_recall_by_family": {}, "region_recall_by_size": []}
        for k, family in enumerate(defects.FAMILIES, 1):
            keep = (labels == k) | (labels == 0)
            if (labels == k).any():
                row["pixel_auroc_by_family"][family] = float(roc_auc_score(labels[keep] == k, scores[keep]))
            n = sum(v for (f, _), v in total.items() if f == family)
            row["region_recall_by_family"][family] = sum(v for (f, _), v in found.items() if f == family) / n if n \
                else None
        for b in range(len(bins) - 1):
            n = sum(v for (_, s), v in total.items() if s == b)
            row["region_recall_by_size"].append({"min": float(bins[b]), "max": float(bins[b + 1]), "defects": n,
                                                 "recall": sum(v for (_, s), v in found.items() if s == b) / n
                                                 if n else None})
        out["exports"].append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path, nargs="+", help="defect-free images (not test images)")
    parser.add_argument("--export", action="append", required=True, help="an export version folder (repeat)")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the painted defects (not the tuner's)")
    parser.add_argument("--copies", type=int, default=8, help="painted copies per image")
    parser.add_argument("--defect-size", type=float, nargs=2, default=None, metavar=("MIN", "MAX"))
    parser.add_argument("--output", type=Path, default=None, help="write the result here as JSON")
    args = parser.parse_args()
    from tfssim import data
    from tfssim.serving.inference import ExportedModel

    channels = ExportedModel.load(args.export[0]).channels
    images = [data.read_image(p, channels) for p in args.images]
    result = benchmark(images, args.export, seed=args.seed, copies=args.copies, size_range=args.defect_size)
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    for row in result["exports"]:
        families = ", ".join(f"{f} {a:.3f}" for f, a in row["pixel_auroc_by_family"].items())
        recall = ", ".join(f"{f} {100 * r:.0f} %" for f, r in row["region_recall_by_family"].items() if r is not None)
        name = (row["map_formula"] or {}).get("name", row["residual"])
        print(f"{row['export']}: {name}, pixel ROC AUC {row['pixel_auroc']:.4f} "
              f"({families}); region recall {recall}", file=sys.stdout)


if __name__ == "__main__":
    main()
