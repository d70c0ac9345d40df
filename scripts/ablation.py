#!/usr/bin/env python
"""The paper's Table 1 ablation: SSIM-AE pixel ROC AUC over latent size, SSIM window and patch size.

Each configuration is trained, exported and scored by :func:`_experiments.train_export_evaluate`
(the library's train -> export -> evaluate, no subprocesses); results accumulate in ``<output>/ablation.json`` and the table in
``<output>/ablation.md``. A finished configuration is skipped and an interrupted one resumes,
so the sweep can be stopped and restarted at any time.

Example:
    python scripts/ablation.py ../shared/data/NanoTWICE --sweep window --epochs 4 --patches-per-epoch 2000
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _experiments import Experiment, train_export_evaluate

from tfssim._io import atomic_write_json, atomic_write_text

GRIDS = {  # the paper's grids (DESIGN.md); the other two settings stay at 100 / 11 / 128
    "latent": ("latent_dim", [50, 100, 200, 500, 1000]),
    "window": ("ssim_window", [3, 7, 11, 15, 19]),
    "patch": ("patch_size", [32, 64, 128]),
}
# The paper's best setting sits in every column: it is trained once and shared.
BASELINE = {"latent": 100, "window": 11, "patch": 128}
PAPER = {"latent": [0.848, 0.935, 0.961, 0.966, 0.962], "window": [0.889, 0.965, 0.966, 0.960, 0.952],
         "patch": [0.949, 0.959, 0.966]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--output", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--sweep", default="window", help="comma-separated: latent, window, patch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--patches-per-epoch", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--fpr", type=float, default=0.01)
    parser.add_argument("--grid", action="append", default=[], metavar="SWEEP=V1,V2",
                        help="other values for a sweep than the paper's, e.g. window=7,11 (repeatable)")
    args = parser.parse_args(argv)
    grids = dict(GRIDS)
    for item in args.grid:
        sweep, _, values = item.partition("=")
        if sweep not in GRIDS or not values:
            parser.error(f"--grid {item!r}: expected one of {', '.join(GRIDS)}=V1,V2,...")
        grids[sweep] = (GRIDS[sweep][0], [int(v) for v in values.split(",")])

    store = args.output / "ablation.json"
    results: dict[str, float] = json.loads(store.read_text()) if store.exists() else {}
    # One output folder holds one budget: finished configurations (and the shared baseline) are
    # reused, so another budget must not mix into their table.
    budget_file = args.output / "budget.json"
    budget = {"epochs": args.epochs, "patches_per_epoch": args.patches_per_epoch, "learning_rate": args.learning_rate}
    if budget_file.exists() and json.loads(budget_file.read_text()) != budget:
        raise SystemExit(f"error: {args.output} holds a sweep with budget {budget_file.read_text().strip()}; "
                         f"use the same --epochs/--patches-per-epoch/--learning-rate or another --output")
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(budget_file, budget, indent=None)
    for sweep in args.sweep.split(","):
        option, values = grids[sweep]
        for value in values:
            key = f"{sweep}={value}"
            if key in results:
                continue
            if value == BASELINE[sweep]:
                shared = next((f"{s}={BASELINE[s]}" for s in GRIDS if f"{s}={BASELINE[s]}" in results), None)
                if shared is not None:
                    print(f"{key}: the baseline configuration, already run as {shared}", flush=True)
                    results[key] = results[shared]
                    continue
            patch = value if sweep == "patch" else 128
            name = key.replace("=", "_")
            settings = {"model": "ssim", option: value, "epochs": args.epochs,
                        "patches_per_epoch": args.patches_per_epoch, "learning_rate": args.learning_rate}
            outcome = train_export_evaluate(
                args.data, args.output, [Experiment(name, settings, {"stride": 30 if patch == 128 else max(1, patch // 4)})],
                evaluation_dir=args.output / "evaluation" / name, fpr=args.fpr)
            results[key] = outcome.scores[name]["pixel_auroc"]
            atomic_write_json(store, results)

    lines = []
    for sweep, (option, values) in grids.items():
        done = [(v, results.get(f"{sweep}={v}")) for v in values]
        if not any(r is not None for _, r in done):
            continue
        lines += [f"| {option} | AUC (ours) | AUC (paper) |", "|---|---|---|"]
        paper = dict(zip(GRIDS[sweep][1], PAPER[sweep]))
        for v, r in done:
            lines.append(f"| {v} | {'-' if r is None else f'{r:.3f}'} | {paper[v]:.3f} |" if v in paper
                         else f"| {v} | {'-' if r is None else f'{r:.3f}'} | - |")
        lines.append("")
    table = "\n".join(lines)
    atomic_write_text(args.output / "ablation.md", f"Budget: {args.epochs} epochs x {args.patches_per_epoch} patches, learning rate {args.learning_rate:g}\n\n{table}")
    print(table)


if __name__ == "__main__":
    main()
