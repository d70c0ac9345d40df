#!/usr/bin/env python
"""The extended paper's toy example (its Figure 3): l2 vs SSIM on a defective checkerboard.

Trains an l2 and an SSIM autoencoder on defect-free checkerboards of various scales and
orientations, reconstructs a 128x128 board with gray strokes and dots, and saves one figure:
input, l2 reconstruction, l2 residual, SSIM reconstruction, the SSIM luminance, contrast and
structure residuals and their product (1 - SSIM), each titled with its pixel ROC AUC on the
defect mask. Prints the AUCs and writes them to ``toy_auc.json``.

Example:
    python scripts/toy_example.py --output runs/toy --steps 1500
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("runs/toy"))
    parser.add_argument("--steps", type=int, default=1500, help="training steps per model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--latent-dim", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from matplotlib.figure import Figure

    from tfssim import losses, metrics, models, ssim
    from tfssim.data import synthetic

    args.output.mkdir(parents=True, exist_ok=True)
    boards = synthetic.checkerboard_patches(args.steps * args.batch_size // 4, size=128, seed=args.seed)
    ds = tf.data.Dataset.from_tensor_slices((boards, boards)).shuffle(4096, seed=args.seed).repeat().batch(args.batch_size)
    image, mask = synthetic.defective_checkerboard(size=128, seed=args.seed + 1)
    x = image[None].astype(np.float32)

    recon = {}
    for kind, loss in (("l2", losses.L2Loss()), ("ssim", losses.SSIMLoss(window_size=11))):
        keras.utils.set_random_seed(args.seed)
        model = models.build_autoencoder(128, 1, args.latent_dim, name=f"{kind}_autoencoder")
        model.compile(optimizer=keras.optimizers.AdamW(2e-4, weight_decay=1e-5), loss=loss)
        model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=2)
        recon[kind] = model.predict(x, verbose=0)

    l2_residual = np.square(x - recon["l2"])[0, ..., 0]
    maps = ssim.ssim_maps(x, recon["ssim"], window_size=11, padding="same")
    panels = {
        "input": image[..., 0],
        "l2 reconstruction": recon["l2"][0, ..., 0],
        "l2 residual": l2_residual,
        "SSIM reconstruction": recon["ssim"][0, ..., 0],
        "1 - luminance": 1 - maps.luminance.numpy()[0, ..., 0],
        "1 - contrast": 1 - maps.contrast.numpy()[0, ..., 0],
        "1 - structure": 1 - maps.structure.numpy()[0, ..., 0],
        "1 - SSIM (l·c·s)": 1 - maps.ssim.numpy()[0, ..., 0],
    }
    aucs = {name: metrics.pixel_roc_auc([panel], [mask]) for name, panel in panels.items()
            if name not in ("input", "l2 reconstruction", "SSIM reconstruction")}
    fig = Figure(figsize=(16, 8))
    for i, (name, panel) in enumerate(panels.items()):
        ax = fig.add_subplot(2, 4, i + 1)
        ax.imshow(panel, cmap="gray" if "reconstruction" in name or name == "input" else "inferno")
        ax.set_title(f"{name}" + (f"\nAUC {aucs[name]:.3f}" if name in aucs else ""))
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.output / "toy_example.png", dpi=100)
    (args.output / "toy_auc.json").write_text(json.dumps(aucs, indent=2))
    for name, auc in aucs.items():
        print(f"{name:>20}: pixel ROC AUC {auc:.3f}")
    print(f"figure: {args.output / 'toy_example.png'}")


if __name__ == "__main__":
    main()
