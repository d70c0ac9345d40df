#!/usr/bin/env python
"""Choose ``tfssim-export --map-sigma`` on the validation images, without the test set.

Synthetic defects (scratches, flattened blobs, specks; exact masks) are painted into copies of
the dataset's defect-free validation images, an export made without smoothing scores them, and
the pixel ROC AUC on those masks is printed for each candidate sigma
(:func:`tfssim.tuning.choose_map_sigma`). With ``--test`` the same sigmas are also scored on the
real test set, only to see how well the proxy chose: the choice itself never sees it.

Example (the README's NanoTWICE numbers):
    python scripts/choose_map_sigma.py ../shared/data/NanoTWICE exported_models/nanotwice_ssim/1 \\
        --map-sigma 0 --map-sigma 4 --map-sigma 8 --map-sigma 12 --map-sigma 16 --test --output sigma.json
    tfssim-export RUN_DIR --name nanotwice_ssim_smoothed --map-sigma <best_sigma>
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="dataset root (NanoTWICE, MVTec AD category or plain folders)")
    parser.add_argument("export", type=Path, help="an export made without --map-sigma")
    parser.add_argument("--map-sigma", type=float, action="append", default=None,
                        help="candidate sigma in pixels; repeat (default 0 2 4 8 12 16)")
    parser.add_argument("--copies", type=int, default=4, help="defective copies per validation image")
    parser.add_argument("--defects-per-patch", type=float, default=1.0,
                        help="synthetic defects per patch-sized area of an image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test", action="store_true", help="also score each sigma on the real test set (a check)")
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the results (written atomically)")
    args = parser.parse_args()

    from tfssim import _io, data, evaluation, metrics, scoring, tuning
    from tfssim.inference import ExportedModel

    split = data.load_dataset(args.data)
    if not split.val:
        parser.error(f"{args.data} has no defect-free validation images to paint defects into")
    model = ExportedModel.load(args.export)
    sigmas = args.map_sigma or list(tuning.DEFAULT_SIGMAS)
    start = time.perf_counter()
    val_images = [data.read_image(p, model.channels) for p in split.val]
    choice = tuning.choose_map_sigma(model, val_images, sigmas, copies=args.copies,
                                     defects_per_patch=args.defects_per_patch, seed=args.seed)
    result = {"export": str(args.export), "validation_images": [str(p) for p in split.val], **choice.as_dict(),
              "copies": args.copies, "defects_per_patch": args.defects_per_patch, "seed": args.seed,
              "seconds": round(time.perf_counter() - start, 1)}
    for sigma, auc in zip(choice.sigmas, choice.aurocs):
        print(f"map sigma {sigma:5g}: synthetic-defect pixel ROC AUC {auc:.3f}")
    print(f"chosen map sigma: {choice.best_sigma:g} ({choice.images} defective copies, "
          f"{100 * choice.defect_fraction:.2f} % defect pixels)")

    if args.test:
        images = [data.read_image(p, model.channels) for p in split.test]
        masks = data.read_test_masks(split.test_masks, images)
        raw = evaluation.compute_maps(model, images, "test")
        result["test_aurocs"] = [metrics.pixel_roc_auc([scoring.smooth_map(m, s).numpy() for m in raw], masks)
                                 for s in choice.sigmas]
        for sigma, auc in zip(choice.sigmas, result["test_aurocs"]):
            print(f"map sigma {sigma:5g}: test-set pixel ROC AUC {auc:.3f}")
    if args.output:
        _io.atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
