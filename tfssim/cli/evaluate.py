"""``tfssim-evaluate``: the paper's metrics and figures for one or more exports on a labelled dataset."""
from __future__ import annotations

import time

import click

from tfssim.cli._common import setup_logging, usage_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.argument("exports", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True, help="Folder for results and plots.")
@click.option("--layout", type=click.Choice(("auto", "nanotwice", "mvtec", "folder")), default="auto")
@click.option("--fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              help="Pixel false-positive rate on the validation images that sets the threshold.")
@click.option("--val-split", type=click.FloatRange(0, 1, max_open=True), default=0.1,
              help="Validation share for MVTec AD / plain folders (as used in training).")
@click.option("--seed", type=int, default=0, help="Seed of the validation split (as used in training).")
@click.option("--verbose", "-v", is_flag=True)
def main(dataset: str, exports: tuple[str, ...], output: str, layout: str, fpr: float, val_split: float,
         seed: int, verbose: bool) -> None:
    """Evaluate EXPORTS (export folders) on the labelled DATASET (NanoTWICE, MVTec AD category,
    or a folder with val/, test/ and ground_truth/)."""
    setup_logging(verbose)
    from tfssim import data, evaluation
    from tfssim.inference import ExportedModel

    started = time.perf_counter()
    with usage_errors():
        split = data.load_dataset(dataset, layout=layout, val_fraction=val_split, seed=seed)
        models = [ExportedModel.load(e) for e in exports]
        results = evaluation.evaluate(split, models, output, fpr=fpr)
    click.echo(evaluation.format_table(results))
    click.echo(f"results: {output}/results.json, results.csv, roc.png, roc_*.csv, pro_*.png, pro_*.csv, overlays/ "
               f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
