"""``tfssim-tune``: choose an export's scoring from defect-free images and write it as a new version."""
from __future__ import annotations

import click

from tfssim.cli._common import Command, FloatRange, setup_logging, tensorflow_required, usage_errors
from tfssim.core.map_formula import FORMULAS
from tfssim.core.tiling_params import BLENDS, BORDERS
from tfssim.data.defects import FAMILIES
from tfssim.errors import InputError
from tfssim.evaluation.tuning import (
    DEFAULT_COPIES,
    DEFAULT_DEFECT_SEED,
    DEFAULT_OUTPUT,
    STRIDE_TOLERANCE,
    THRESHOLD_RULES,
)
from tfssim.serving.postprocess import DEFAULT_FPR


@click.command(cls=Command, interrupted="no new version was written; the export is unchanged")
@click.argument("export", type=click.Path(exists=True, file_okay=False))
@click.argument("images", metavar="[VALIDATION_IMAGES]...", nargs=-1)
@click.option("--defect-size", type=(FloatRange(min=1), FloatRange(min=1)), default=None,
              metavar="MIN MAX",
              help="Range of synthetic defect sizes (equivalent diameter, pixels): the sizes you must find  "
                   "[default: 1/16 to 1/2 of the patch side]")
@click.option("--fpr", type=FloatRange(0, 1, min_open=True, max_open=True), default=DEFAULT_FPR,
              help="Share of defect-free pixels allowed above the threshold.")
@click.option("--threshold-rule", type=click.Choice(THRESHOLD_RULES), default=THRESHOLD_RULES[0],
              help="fpr: the threshold at --fpr on the clean images (the paper's); f1: the threshold with the best "
                   "synthetic-defect F1 among those whose clean-pixel FPR stays within --fpr (both are recorded).")
@click.option("--copies", type=click.IntRange(min=1), default=DEFAULT_COPIES, help="Defective copies painted per image.")
@click.option("--seed", type=int, default=DEFAULT_DEFECT_SEED, help="Seed of the synthetic defects.")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=DEFAULT_OUTPUT,
              help="Folder for tuning.json and tuning.png (never an input folder).")
@click.option("--model", "source", type=click.Path(exists=True), default=None,
              help="Run folder or .keras file the export was made from; default the one its metadata records.")
@click.option("--border", "borders", type=click.Choice(BORDERS), multiple=True,
              help="Border handling candidates (repeat the option): none (the paper) and reflect (mirror the image "
                   "outward by half a patch before tiling). Comparing a second border costs one more model pass "
                   "per image (about twice the tuning time)  [default: the export's own only]")
@click.option("--blend", "blends", type=click.Choice(BLENDS), multiple=True,
              help="Tile blend candidates (repeat the option): mean (the paper) and gaussian (tiles weighted toward "
                   "their centres)  [default: both]")
@click.option("--formula", "formulas", type=click.Choice(FORMULAS), multiple=True,
              help="Map formula candidates (repeat the option): ssim (the paper's 1 - SSIM), ssim_lowfreq (with a "
                   "low-frequency intensity residual: large low-contrast areas, flat missing material) and "
                   "ssim_multiscale (with SSIM at a wider window); each second term normalised by its clean-image "
                   "quantiles and combined by max or a weighted sum  [default: all, for SSIM exports whose maps the "
                   "tuner recomputes; else the export's own]")
@click.option("--stride", "strides", type=click.IntRange(min=1), multiple=True,
              help="Tiling strides compared (repeat the option; each at most the patch side): the new version "
                   "serves the largest whose synthetic pixel ROC AUC is within --stride-tolerance of the best "
                   "stride's, by default; tuning.json and tuning.png show each one's AUC and serving time per "
                   "megapixel. Each stride costs one more model pass per image  [default: the export's own and "
                   "3/8 and 1/2 of the patch side, those larger]")
@click.option("--stride-tolerance", type=FloatRange(0, 1, max_open=True), default=STRIDE_TOLERANCE,
              show_default=True, help="How much synthetic pixel ROC AUC (and ROC area up to FPR 0.3) a larger "
                                      "stride may lose against the best stride's.")
@click.option("--family", "families", type=click.Choice(FAMILIES), multiple=True,
              help="Synthetic defect families to paint (repeat the option): transplant, smear, foreign, scratch "
                   "(local structure, the default) and shading (large, low-contrast) and missing (flat, at the "
                   "image border), which SSIM maps barely see: add these to see it in the report.")
@click.option("--verbose", "-v", is_flag=True)
@tensorflow_required()  # one Error line naming the install command without TensorFlow
def main(export: str, images: tuple[str, ...], defect_size: tuple[float, float] | None, fpr: float,
         threshold_rule: str, copies: int, seed: int, output: str, source: str | None, borders: tuple[str, ...],
         blends: tuple[str, ...], formulas: tuple[str, ...], strides: tuple[int, ...], stride_tolerance: float,
         families: tuple[str, ...], verbose: bool) -> None:
    """Paint synthetic defects (texture transplants, smeared areas, foreign bodies, scratches;
    exact masks) into copies of the defect-free VALIDATION_IMAGES (files, folders or globs; none:
    the validation images of the export's training run), choose the anomaly map (SSIM window and
    weighting, map smoothing, the map formula, --formula, and the tiling it is computed from:
    image border and tile blend, --border / --blend) by pixel ROC AUC, the tiling stride the new
    version serves (--stride: the largest that keeps the AUC) and the post-processing (opening, minimum area) by
    segmentation F1 on them, set the threshold on the clean images (--threshold-rule), and write
    the result as a NEW version of EXPORT (the old one is never changed), with tuning.json and
    tuning.png in OUTPUT: what the threshold finds (region recall by defect size and family,
    false regions per clean image, F1). Memory stays that of about one image, for any number
    of images. No test image is read."""
    setup_logging(verbose)
    from tfssim.evaluation import tuning

    def announce(paths, origin: str) -> None:
        click.echo(f"validation images: {len(paths)} from {origin}", err=True)

    with usage_errors():
        if defect_size is not None and defect_size[0] > defect_size[1]:
            raise InputError(f"--defect-size MIN MAX needs MIN <= MAX, got {defect_size[0]:g} {defect_size[1]:g}")
        run = tuning.tune_export(export, list(images) or None, output, source=source, size_range=defect_size,
                                 fpr=fpr, threshold_rule=threshold_rule, copies=copies, seed=seed, announce=announce,
                                 borders=borders or None, blends=blends or None, formulas=formulas or None,
                                 strides=strides or None, stride_tolerance=stride_tolerance,
                                 **({"families": list(dict.fromkeys(families))} if families else {}))
    for line in run.tuning.warnings:
        click.echo(line, err=True)
    for line in run.tuning.summary_lines():
        click.echo(line)
    click.echo(f"new version: {run.new_version}\ntuning:      {run.record}")


if __name__ == "__main__":
    main()
