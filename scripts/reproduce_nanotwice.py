#!/usr/bin/env python
"""Reproduce the paper's four-model comparison on NanoTWICE (Figure 5) with tfssim's commands.

Trains the SSIM-AE, l2-AE, VAE and FM-AE (the paper's split: 4 normal images train, the 5th
validates / sets the threshold, 40 test), exports each and evaluates all of them together, with
the library's functions (:mod:`_experiments`, no subprocesses); the evaluation writes the
ROC figure, the per-region-overlap figures and the results table, with both pixel ROC AUCs:
of the raw anomaly maps, and of the post-processed segmentations (threshold, opening, convex
hulls) swept over thresholds, which is how the paper counts pixels "classified as defect".
Re-running resumes: a finished training or export is reused, an interrupted training continues.

A finished run folder (holding its final model) is used as it is, e.g. one that
``scripts/train_any_backend.py`` trained at the paper's budget on a GPU machine without
TensorFlow (put it at ``OUTPUT/runs/<model>``); the table names where each model was trained.

Example (the budget used for the README table):
    python scripts/reproduce_nanotwice.py ../shared/data/NanoTWICE --output runs/nanotwice \
        --epochs 15 --patches-per-epoch 4000 --budget ssim=40x4000 --budget fm=2x2000 \
        --learning-rate 1e-3 --fm-weights none
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _experiments import Experiment, export_run, train_export_evaluate, train_run

from tfssim._io import atomic_write_json, atomic_write_text
from tfssim.core.ssim import WEIGHTINGS
from tfssim.run_record import FINAL_MODEL_NAME, HISTORY_NAME, is_finished, read_history, read_run_record


def fm_weights_file(weights: str, output: Path) -> str:
    """``--weights`` for the FM-AE: as given, or for ``none`` a VGG16 file with random weights.

    Pretrained weights need a download; ``none`` keeps the FM-AE runnable offline (its
    features are then random convolutions, which the results table says).
    """
    if weights != "none":
        return weights
    path = output / "vgg16_random_init.weights.h5"
    if not path.exists():
        import keras

        output.mkdir(parents=True, exist_ok=True)
        keras.utils.set_random_seed(0)
        keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3)).save_weights(path)
    return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--output", type=Path, default=Path("runs/nanotwice"))
    parser.add_argument("--models", default="ssim,l2,vae,fm")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patches-per-epoch", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-4, help="the paper: 2e-4 (for 200 x 20,000 patches)")
    parser.add_argument("--budget", action="append", default=[], metavar="MODEL=EPOCHSxPATCHES",
                        help="per-model budget overriding --epochs/--patches-per-epoch, e.g. fm=4x2000 (repeatable)")
    parser.add_argument("--fm-weights", default="imagenet", help="VGG16 weights for the FM-AE ('imagenet', a file, or 'none')")
    parser.add_argument("--ssim-weighting", choices=WEIGHTINGS, default="gaussian",
                        help="SSIM-AE loss and scoring window: Gaussian (tf.image.ssim's) or uniform (the paper's K x K means)")
    parser.add_argument("--stride", type=int, default=30)
    parser.add_argument("--fpr", type=float, default=0.01)
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=100)
    args = parser.parse_args(argv)

    budgets = {model: (args.epochs, args.patches_per_epoch) for model in args.models.split(",")}
    for item in args.budget:
        model, _, value = item.partition("=")
        epochs, _, patches = value.partition("x")
        budgets[model] = (int(epochs), int(patches))
    timings: dict[str, dict[str, float]] = {}
    experiments = []
    for model in args.models.split(","):
        epochs, patches = budgets[model]
        run_dir = args.output / "runs" / model
        started = time.perf_counter()
        record = read_run_record(run_dir)
        if record is not None and not is_finished(run_dir):
            trainer = record.get("trainer", "tfssim-train")
            if trainer != "tfssim-train":
                raise SystemExit(f"error: {run_dir} is an unfinished {trainer} run (no {FINAL_MODEL_NAME}); finish "
                                 "it with that script (run its command again) before reproducing")
        if model == "ssim" and record is not None:
            had = record["config"].get("ssim_weighting", "gaussian")
            if had != args.ssim_weighting:
                raise SystemExit(f"error: {run_dir} was trained with --ssim-weighting {had}, not "
                                 f"{args.ssim_weighting}; use another --output or the run's weighting")
        settings = {"model": model, "epochs": epochs, "patches_per_epoch": patches, "batch_size": args.batch_size,
                    "learning_rate": args.learning_rate, "patch_size": args.patch_size, "latent_dim": args.latent_dim}
        if model == "fm":
            settings["fm_weights"] = fm_weights_file(args.fm_weights, args.output)
        if model == "ssim":
            settings["ssim_weighting"] = args.ssim_weighting
        train_run(args.data, run_dir, settings, verbose=2)
        train_s = time.perf_counter() - started
        history = read_history(run_dir / HISTORY_NAME)
        if train_s < 5 and history:  # reused: report the recorded epoch times
            train_s = sum(row.get("seconds", 0.0) for row in history)
        started = time.perf_counter()
        export = {"stride": args.stride}
        export_run(run_dir, args.output / "exported_models", f"nanotwice_{model}", **export)
        timings[model] = {"train_s": round(train_s, 1), "export_s": round(time.perf_counter() - started, 1)}
        experiments.append(Experiment(f"nanotwice_{model}", settings, export, run=model))

    started = time.perf_counter()
    # Every run and export exists now: this evaluates them (all together, one threshold rule).
    outcome = train_export_evaluate(args.data, args.output, experiments, fpr=args.fpr, segmentation_auroc=True)
    evaluate_s = time.perf_counter() - started
    results = json.loads((outcome.evaluation_dir / "results.json").read_text())
    trained = {}
    for model in args.models.split(","):
        run_dir = args.output / "runs" / model
        record = read_run_record(run_dir) or {"config": {}}
        config = record["config"]
        epochs = int(config.get("epochs", budgets[model][0]))
        history = read_history(run_dir / HISTORY_NAME)
        if history:  # the epochs actually run (a run stopped early records more in its config)
            epochs = len(history)
        budgets[model] = (epochs, int(config.get("patches_per_epoch", budgets[model][1])))
        trained[model] = {"trainer": record.get("trainer", "tfssim-train"), "device": record.get("device", "GPU" if record.get("precision") == "mixed_float16" else "CPU"),
                          "learning_rate": config.get("learning_rate"), "batch_size": config.get("batch_size")}
    budget = {"per_model": {m: {"epochs": e, "patches_per_epoch": p, **trained[m]} for m, (e, p) in budgets.items()},
              "batch_size": args.batch_size, "learning_rate": args.learning_rate, "stride": args.stride, "fm_weights": args.fm_weights}
    summary = {"budget": budget, "timings": timings, "evaluate_s": round(evaluate_s, 1), "results": results["exports"]}
    atomic_write_json(args.output / "summary.json", summary)
    # The paper gives 0.966 (SSIM) in its text and the others only as curves in its Figure 5.
    paper = {"ssim": "0.966", "l2": "≈0.69", "vae": "barely above chance", "fm": "between l2 and SSIM"}
    lines = ["| model | budget (epochs x patches) | lr | trained on | pixel ROC AUC (raw map) | "
             "pixel ROC AUC (segmentation) | paper | AUPRO@0.3 | F1 | IoU | train min |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in args.models.split(","):
        r = outcome.scores[f"nanotwice_{model}"]
        epochs, patches = budgets[model]
        where = trained[model]
        lr = "?" if where["learning_rate"] is None else format(where["learning_rate"], "g")
        lines.append(f"| {model} | {epochs} x {patches} | {lr} | {where['device']} ({where['trainer']}) | "
                     f"{r['pixel_auroc']:.3f} | {r['segmentation_auroc']:.3f} | {paper.get(model, '')} | "
                     f"{r['aupro_0.3']:.3f} | {r['f1']:.3f} | {r['iou']:.3f} | {timings[model]['train_s'] / 60:.1f} |")
    table = "\n".join(lines)
    atomic_write_text(args.output / "table.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
