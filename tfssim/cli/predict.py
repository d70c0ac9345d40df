"""``tfssim-predict``: anomaly maps, masks, overlays and region tables for image files.

A thin wrapper around :func:`tfssim.prediction.predict_files`.
"""
from __future__ import annotations

import math
import os
import sys

import click

from tfssim.cli._common import Command, setup_logging, tensorflow_required, usage_errors
from tfssim.data.layouts import MASK_SUFFIXES, find_mask  # importable from here as before
from tfssim.errors import InputError

# The work is tfssim.prediction's; its helpers stay importable from here as before.
from tfssim.prediction import expand_inputs, output_stems, predict_files

__all__ = ["main", "MASK_SUFFIXES", "expand_inputs", "find_mask", "output_stems"]


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """click callback: a finite threshold (NaN would flag nothing, +-inf everything or nothing)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"the threshold must be a finite number, got {value}; give a score such as 0.3 "
                                 "or omit --threshold to use the export's calibrated one")
    return value


@click.command(cls=Command,
               interrupted="the results of the images finished so far are in --output")
@click.argument("export", type=click.Path(exists=True, file_okay=False))
@click.argument("images", nargs=-1, required=True)
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True, help="Folder for the results.")
@click.option("--threshold", type=float, default=None, callback=_finite,
              help="Score threshold (a finite number); default: the export's calibrated one.")
@click.option("--masks", "mask_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of ground-truth masks (<stem>_gt, <stem> or <stem>_mask; .png, .tif, ...) "
                   "drawn as red contours.")
@click.option("--min-area", type=click.IntRange(min=0), default=None,
              help="Drop regions smaller than this (pixels); default: the export metadata's min_area, else 0.")
@click.option("--verbose", "-v", is_flag=True)
@tensorflow_required()  # every command needs TensorFlow: one Error line naming the install command without it
def main(export: str, images: tuple[str, ...], output: str, threshold: float | None, mask_dir: str | None,
         min_area: int | None, verbose: bool) -> None:
    """Run the export in EXPORT on IMAGES (files, folders or globs) and write per image: the
    anomaly map (float TIFF + PNG with colour bar), the binary mask (threshold, opening, convex hulls and
    minimum area as the export's metadata sets them; --threshold and --min-area override), an overlay
    and the region JSON."""
    setup_logging(verbose)
    from tfssim.inference import ExportedModel

    try:
        paths = expand_inputs(images)
    except (InputError, OSError) as err:
        raise click.BadParameter(str(err), param_hint="IMAGES") from None
    with usage_errors():
        model = ExportedModel.load(export)
    threshold = threshold if threshold is not None else model.threshold
    if threshold is None:
        from tfssim.prediction import no_threshold_message

        raise click.UsageError(no_threshold_message(model.path, "or pass --threshold"))
    try:
        # Output-side problems are found before the first image (exit 2; a full disk exit 1); a
        # write failure later stops the run with one line, summary.json saying what was done.
        with usage_errors():
            summary = predict_files(model, paths, output, threshold=threshold, mask_dir=mask_dir, min_area=min_area,
                                    inputs=[item for item in images if os.path.isdir(item)])
    except KeyboardInterrupt:
        click.echo(f"Interrupted: the results of the images finished so far are in {output} (summary.json lists "
                   "them; the image being written when you pressed Ctrl-C has no files)", err=True)
        sys.exit(130)
    if summary.failures:
        click.echo(f"{len(summary.failures)} of {summary.images} image(s) could not be processed:", err=True)
        for line in summary.failures:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    click.echo(f"wrote results for {summary.images} image(s) to {summary.output_dir}")
    if summary.speed_line() is not None:
        click.echo(summary.speed_line())


if __name__ == "__main__":
    main()
