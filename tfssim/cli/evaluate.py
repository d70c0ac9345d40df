"""``tfssim-evaluate``: the paper's metrics and figures for one or more exports on a labelled dataset."""
from __future__ import annotations

import time

import click

from tfssim.cli._common import Command, FloatRange, setup_logging, tensorflow_required, usage_errors
from tfssim.data.layouts import LAYOUT_CHOICES
from tfssim.evaluation.splits import DEFAULT_SEED, DEFAULT_VAL_SPLIT
from tfssim.serving.postprocess import DEFAULT_FPR


@click.command(cls=Command,
               interrupted="the result files written so far are whole; run the command again for the rest")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.argument("exports", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True, help="Folder for results and plots.")
@click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default=LAYOUT_CHOICES[0])
@click.option("--fpr", type=FloatRange(0, 1, min_open=True, max_open=True), default=DEFAULT_FPR,
              help="Pixel false-positive rate on the validation images that sets the threshold.")
@click.option("--val-split", type=FloatRange(0, 1, max_open=True), default=None,
              help="Validation share for MVTec AD / plain folders; default the one the (first) export was "
                   f"trained with (its metadata's training_config), else {DEFAULT_VAL_SPLIT}.")
@click.option("--seed", type=int, default=None,
              help="Seed of the validation split; default the one the (first) export was trained with, "
                   f"else {DEFAULT_SEED}.")
@click.option("--segmentation-auroc", is_flag=True,
              help="Also the ROC AUC of the post-processed segmentations (threshold, opening, convex hulls) "
                   "swept over 25 thresholds, as the paper counts pixels classified as defect; slower.")
@click.option("--verbose", "-v", is_flag=True)
@tensorflow_required()  # every command needs TensorFlow: one Error line naming the install command without it
def main(dataset: str, exports: tuple[str, ...], output: str, layout: str, fpr: float, val_split: float | None,
         seed: int | None, segmentation_auroc: bool, verbose: bool) -> None:
    """Evaluate EXPORTS (export folders) on the labelled DATASET (NanoTWICE, MVTec AD category,
    or a folder with val/, test/ and ground_truth/).

    Test sets sorted by defect type (MVTec AD, or test/<type>/ folders) are also scored per type:
    each type's images together with the good test images."""
    setup_logging(verbose)
    from tfssim.evaluation import evaluate, splits
    from tfssim.export.layout import resolve_export_dir
    from tfssim.serving.inference import ExportedModel

    started = time.perf_counter()
    with usage_errors():
        # The metadata alone first (cheap): the split must be the one of training.
        folders = [resolve_export_dir(e) for e in exports]
        # The split the exports were trained with (tfssim.evaluation.evaluate's rule); warnings as they are found.
        split, _, _ = splits.load_split(dataset, folders, layout=layout, val_split=val_split, seed=seed,
                                            warn=lambda line: click.echo(line, err=True))
        models = [ExportedModel.load(f) for f in folders]
        results = evaluate.evaluate(split, models, output, fpr=fpr, segmentation_auroc=segmentation_auroc)
    click.echo(evaluate.format_table(results))
    click.echo(f"results: {output}/results.json, results.csv, roc.png, roc_*.csv, pro_*.png, pro_*.csv, "
               f"{'segroc_*.csv, ' if segmentation_auroc else ''}"
               f"{'per_type.png, ' if any(r.per_type for r in results) else ''}overlays/ "
               f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
