"""``tfssim-evaluate``: the paper's metrics and figures for one or more exports on a labelled dataset."""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import click

from tfssim.cli._common import setup_logging, tensorflow_required, usage_errors

# The validation split of MVTec AD and plain folders when neither the command line nor the
# export's training_config gives it (tfssim-train's defaults).
DEFAULT_VAL_SPLIT = 0.1
DEFAULT_SEED = 0


def split_settings(metadatas: Sequence[dict[str, Any]], val_split: float | None, seed: int | None,
                   names: Sequence[str] | None = None) -> tuple[float, int, list[str]]:
    """The validation split and seed to evaluate with, and warnings.

    A value given on the command line wins; else the first export's ``training_config``
    (``val_split``, ``seed``: the split the model was trained with, so that its training images
    are not used to set the threshold); else tfssim-train's defaults. A warning names the
    exports whose training configs disagree on a value taken from the first one.
    """
    names = list(names) if names is not None else [str(i) for i in range(len(metadatas))]
    configs = [m.get("training_config") if isinstance(m.get("training_config"), dict) else {} for m in metadatas]
    warnings: list[str] = []
    resolved: dict[str, Any] = {}
    for key, given, default in (("val_split", val_split, DEFAULT_VAL_SPLIT), ("seed", seed, DEFAULT_SEED)):
        if given is not None:
            resolved[key] = given
            continue
        stored = [(name, config.get(key)) for name, config in zip(names, configs)]
        first = stored[0][1] if stored else None
        resolved[key] = default if first is None else first
        values = {value for _, value in stored if value is not None}
        if len(values) > 1:
            listed = ", ".join(f"{name}: {value}" for name, value in stored if value is not None)
            option = "--" + key.replace("_", "-")
            warnings.append(
                f"warning: the exports were trained with different {key} ({listed}); using "
                f"{resolved[key]} from {names[0]}, so the others may be calibrated on their own training "
                f"images: evaluate them separately or pass {option}"
            )
    return float(resolved["val_split"]), int(resolved["seed"]), warnings


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.argument("exports", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True, help="Folder for results and plots.")
@click.option("--layout", type=click.Choice(("auto", "nanotwice", "mvtec", "folder")), default="auto")
@click.option("--fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              help="Pixel false-positive rate on the validation images that sets the threshold.")
@click.option("--val-split", type=click.FloatRange(0, 1, max_open=True), default=None,
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
    from tfssim import data, evaluation
    from tfssim.inference import ExportedModel, read_export_metadata, resolve_export_dir

    started = time.perf_counter()
    with usage_errors():
        # The metadata alone first (cheap): the split must be the one of training.
        folders = [resolve_export_dir(e) for e in exports]
        metadatas = [read_export_metadata(f) for f in folders]  # checked; a fault names the file
        given = (val_split, seed)
        val_split, seed, warnings = split_settings(metadatas, val_split, seed, [str(f) for f in folders])
        if (layout if layout != "auto" else data.detect_layout(dataset)) != "nanotwice":  # fixed split there
            for line in warnings:
                click.echo(line, err=True)
            source = "given" if None not in given else "from the training config where the export has one"
            logging.getLogger(__name__).info("validation split %g, seed %d (%s)", val_split, seed, source)
        split = data.load_dataset(dataset, layout=layout, val_fraction=val_split, seed=seed)
        models = [ExportedModel.load(f) for f in folders]
        results = evaluation.evaluate(split, models, output, fpr=fpr, segmentation_auroc=segmentation_auroc)
    click.echo(evaluation.format_table(results))
    click.echo(f"results: {output}/results.json, results.csv, roc.png, roc_*.csv, pro_*.png, pro_*.csv, "
               f"{'segroc_*.csv, ' if segmentation_auroc else ''}"
               f"{'per_type.png, ' if any(r.per_type for r in results) else ''}overlays/ "
               f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
