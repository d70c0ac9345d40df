#!/usr/bin/env python
"""The extended paper's toy example (its Figure 3): l2 vs SSIM on a defective checkerboard.

Trains an l2 and an SSIM autoencoder on defect-free checkerboards of various scales and
orientations, reconstructs a 128x128 board with gray strokes and dots, and saves one figure:

* top row, the paper's Figure 3: input, l2-AE reconstruction, its l2 residual, and the SSIM
  luminance, contrast and structure residuals of the same reconstruction with their product
  (the SSIM residual ``1 - l*c*s``);
* bottom row: the defect mask, the SSIM-AE's reconstruction and its l2 residual, and the
  l, c, s and SSIM residuals of the SSIM-AE's reconstruction.

Each residual map is titled with its pixel ROC AUC on the defect mask. The AUCs are printed and
written to ``toy_auc.json``.

Example:
    python scripts/toy_example.py --output runs/toy --steps 1500
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


def residual_panels(x: np.ndarray, recon: np.ndarray) -> dict[str, np.ndarray]:
    """l2 and SSIM-component residual maps ``[H, W]`` of one image and its reconstruction."""
    from tfssim.core import ssim

    maps = ssim.ssim_maps(x, recon, window_size=11, padding="same")
    return {
        "l2 residual": np.square(x - recon)[0, ..., 0],
        "1 - l": 1 - maps.luminance.numpy()[0, ..., 0],
        "1 - c": 1 - maps.contrast.numpy()[0, ..., 0],
        "1 - s": 1 - maps.structure.numpy()[0, ..., 0],
        "1 - SSIM (l·c·s)": 1 - maps.ssim.numpy()[0, ..., 0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("runs/toy"))
    parser.add_argument("--steps", type=int, default=1500, help="training steps per model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--latent-dim", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from matplotlib.figure import Figure

    from tfssim import models
    from tfssim.core import losses
    from tfssim.data import synthetic
    from tfssim.evaluation import metrics

    args.output.mkdir(parents=True, exist_ok=True)
    boards = synthetic.checkerboard_patches(max(256, args.steps * args.batch_size // 4), size=128, seed=args.seed)
    ds = tf.data.Dataset.from_tensor_slices((boards, boards)).shuffle(4096, seed=args.seed).repeat().batch(args.batch_size)
    image, mask = synthetic.defective_checkerboard(size=128, seed=args.seed + 1)
    x = image[None].astype(np.float32)

    recon, seconds = {}, {}
    for kind, loss in (("l2", losses.L2Loss()), ("ssim", losses.SSIMLoss(window_size=11))):
        keras.utils.set_random_seed(args.seed)
        model = models.build_autoencoder(128, 1, args.latent_dim, name=f"{kind}_autoencoder")
        model.compile(optimizer=keras.optimizers.AdamW(args.learning_rate, weight_decay=1e-5), loss=loss)
        started = time.perf_counter()
        model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=2)
        seconds[kind] = round(time.perf_counter() - started, 1)
        recon[kind] = model.predict(x, verbose=0)

    rows = {kind: residual_panels(x, recon[kind]) for kind in recon}
    aucs = {f"{kind}-AE {name}": metrics.pixel_roc_auc([panel], [mask])
            for kind, panels in rows.items() for name, panel in panels.items()}

    fig = Figure(figsize=(21, 7.4), layout="constrained")
    layout = [
        [("input", image[..., 0], None), ("l2-AE reconstruction", recon["l2"][0, ..., 0], None)]
        + [(f"l2-AE {n}", p, aucs[f"l2-AE {n}"]) for n, p in rows["l2"].items()],
        [("defect mask", mask.astype(np.float32), None), ("SSIM-AE reconstruction", recon["ssim"][0, ..., 0], None)]
        + [(f"SSIM-AE {n}", p, aucs[f"ssim-AE {n}"]) for n, p in rows["ssim"].items()],
    ]
    for r, row in enumerate(layout):
        for c, (title, panel, auc) in enumerate(row):
            ax = fig.add_subplot(2, 7, r * 7 + c + 1)
            residual = auc is not None
            ax.imshow(panel, cmap="inferno" if residual else "gray", vmin=None if residual else 0, vmax=None if residual else 1)
            ax.set_title(title + (f"\nAUC {auc:.3f}" if residual else ""), fontsize=10)
            ax.axis("off")
    fig.suptitle(f"Toy example (Bergmann et al., Fig. 3): {args.steps} steps x {args.batch_size} boards per model, "
                 f"learning rate {args.learning_rate:g}")
    fig.savefig(args.output / "toy_example.png", dpi=90)
    report = {"pixel_auroc": aucs, "steps": args.steps, "batch_size": args.batch_size,
              "learning_rate": args.learning_rate, "train_seconds": seconds}
    (args.output / "toy_auc.json").write_text(json.dumps(report, indent=2))
    for name, auc in aucs.items():
        print(f"{name:>26}: pixel ROC AUC {auc:.3f}")
    print(f"figure: {args.output / 'toy_example.png'}")


if __name__ == "__main__":
    main()
