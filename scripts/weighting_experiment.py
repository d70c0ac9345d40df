#!/usr/bin/env python
"""Does the SSIM window's weighting matter in training, in scoring, or both? A 2 x 2 at one budget.

Trains two SSIM autoencoders that differ only in the SSIM window's weighting (``gaussian``:
``tf.image.ssim``'s window, sigma 1.5; ``uniform``: plain K x K patch means, the paper's
definition), exports each twice (the anomaly map scored with either window), and evaluates the
four exports together with the segmentation ROC AUC, all through
:func:`_experiments.train_export_evaluate` (the library, no subprocesses). Writes ``OUTPUT/weighting_table.md`` and ``OUTPUT/weighting.json``
(the ROC figure is ``OUTPUT/evaluation/roc.png``).
Re-running resumes: finished trainings and exports are reused, an interrupted training continues.

Example (the run in the README, about 45 min on 2 CPU cores):
    python scripts/weighting_experiment.py ../shared/data/NanoTWICE --output runs/weighting \
        --epochs 20 --patches-per-epoch 4000 --learning-rate 1e-3
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _experiments import Experiment, train_export_evaluate

from tfssim._io import atomic_write_text
from tfssim.core.ssim import WEIGHTINGS
from tfssim.run_record import HISTORY_NAME, read_history, read_run_record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--output", type=Path, default=Path("runs/weighting"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patches-per-epoch", type=int, default=4000)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--stride", type=int, default=30)
    parser.add_argument("--fpr", type=float, default=0.01)
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=100)
    args = parser.parse_args(argv)

    settings = {"model": "ssim", "epochs": args.epochs, "patches_per_epoch": args.patches_per_epoch,
                "learning_rate": args.learning_rate, "patch_size": args.patch_size, "latent_dim": args.latent_dim}
    experiments = [Experiment(f"train_{trained}_score_{scored}", {**settings, "ssim_weighting": trained},
                              {"stride": args.stride, "ssim_overrides": {"weighting": scored}}, run=trained)
                   for trained in WEIGHTINGS for scored in WEIGHTINGS]
    outcome = train_export_evaluate(args.data, args.output, experiments, fpr=args.fpr, segmentation_auroc=True)
    rows = []
    for experiment in experiments:
        trained, scored = experiment.run, experiment.export["ssim_overrides"]["weighting"]
        scores = outcome.scores[experiment.name]
        run_dir = args.output / "runs" / trained
        history = read_history(run_dir / HISTORY_NAME)
        # A reused run keeps its own budget: report what it was trained with, not this call's arguments.
        config = read_run_record(run_dir)["config"]
        rows.append({"trained_with": trained, "scored_with": scored, "epochs": len(history),
                     "patches": len(history) * int(config["patches_per_epoch"]),
                     "learning_rate": float(config["learning_rate"]),
                     "train_s": round(sum(float(r["seconds"]) for r in history), 1),
                     "pixel_auroc": scores["pixel_auroc"],
                     "segmentation_auroc": scores["segmentation_auroc"],
                     "aupro_0.3": scores["aupro_0.3"]})
    lines = ["| loss window (training) | anomaly-map window (scoring) | patches | pixel ROC AUC, raw map | "
             "pixel ROC AUC, segmentation | AUPRO@0.3 |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['trained_with']} | {r['scored_with']} | {r['patches']:,} | {r['pixel_auroc']:.3f} | "
              f"{r['segmentation_auroc']:.3f} | {r['aupro_0.3']:.3f} |" for r in rows]
    atomic_write_text(args.output / "weighting_table.md", "\n".join(lines) + "\n")
    atomic_write_text(args.output / "weighting.json", json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    print(f"written: {args.output / 'weighting_table.md'}, {args.output / 'weighting.json'}")


if __name__ == "__main__":
    main()
