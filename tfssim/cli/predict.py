"""``tfssim-predict``: anomaly maps, masks, overlays and region tables for image files.

A thin wrapper around :func:`tfssim.serving.prediction.predict_files`.
"""
from __future__ import annotations

import math
import os
import sys

import click

from tfssim.cli._common import Command, setup_logging, tensorflow_required, usage_errors
from tfssim.errors import InputError
from tfssim.serving.prediction import expand_inputs, predict_files, speed_line

__all__ = ["main"]


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """click callback: a finite threshold (NaN would flag nothing, +-inf everything or nothing)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"the threshold must be a finite number, got {value}; give a score such as 0.3 "
                                 "or omit --threshold to use the export's calibrated one")
    return value


def _is_runner(arg: str) -> bool:
    return arg == "--runner" or arg.startswith("--runner=")


class _PredictCommand(Command):
    """With ``--runner``, what follows ``--`` is Beam pipeline options (kept in ``ctx.meta``), not images."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            if any(_is_runner(arg) for arg in args[:cut]):
                ctx.meta[_PIPELINE_ARGS] = args[cut + 1:]
                args = args[:cut]
        return super().parse_args(ctx, args)


_PIPELINE_ARGS = "tfssim.pipeline_args"


@click.command(cls=_PredictCommand,
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
@click.option("--runner", default=None, metavar="NAME",
              help="Score on an Apache Beam runner (DirectRunner, FlinkRunner, SparkRunner, DataflowRunner, ...; "
                   "needs pip install 'tfssim[beam]'); Beam pipeline options go after --, e.g. "
                   "-- --direct_num_workers 2 --direct_running_mode multi_processing. Default: this process.")
@click.option("--verbose", "-v", is_flag=True)
@tensorflow_required()  # every command needs TensorFlow: one Error line naming the install command without it
def main(export: str, images: tuple[str, ...], output: str, threshold: float | None, mask_dir: str | None,
         min_area: int | None, runner: str | None, verbose: bool) -> None:
    """Run the export in EXPORT on IMAGES (files, folders or globs) and write per image: the
    anomaly map (float TIFF + PNG with colour bar), the binary mask (threshold, opening, convex hulls and
    minimum area as the export's metadata sets them; --threshold and --min-area override), an overlay
    and the region JSON. With --runner, the same files on an Apache Beam runner."""
    setup_logging(verbose)
    from tfssim.export.layout import resolve_export_dir
    from tfssim.export.metadata import read_export_metadata
    from tfssim.serving.inference import ExportedModel

    try:
        paths = expand_inputs(images)
    except (InputError, OSError) as err:
        raise click.BadParameter(str(err), param_hint="IMAGES") from None
    with usage_errors():
        if runner is None:
            model = ExportedModel.load(export)
            export_dir, metadata = model.path, model.metadata
        else:
            from tfssim.serving.beam import check_pipeline

            check_pipeline(runner, click.get_current_context().meta.get(_PIPELINE_ARGS, []))
            export_dir = resolve_export_dir(export)
            metadata = read_export_metadata(export_dir)  # the workers load the model; this process needs none
    if threshold is None and metadata.threshold is None:
        from tfssim.serving.prediction import no_threshold_message

        raise click.UsageError(no_threshold_message(export_dir, "or pass --threshold"))
    inputs = [item for item in images if os.path.isdir(item)]
    try:
        # Output-side problems are found before the first image (exit 2; a full disk exit 1); a
        # write failure later stops the run with one line, summary.json saying what was done.
        with usage_errors():
            if runner is None:
                summary = predict_files(model, paths, output, threshold=threshold, mask_dir=mask_dir,
                                        min_area=min_area, inputs=inputs)
                done, where = summary.to_dict(), summary.output_dir
            else:
                done = _predict_with_beam(export_dir, paths, output, runner, threshold, mask_dir, min_area, inputs)
                where = output
            images_done, failures = done["images"], done["failed"]
    except KeyboardInterrupt:
        click.echo(f"Interrupted: the results of the images finished so far are in {output} (summary.json lists "
                   "them; the image being written when you pressed Ctrl-C has no files)", err=True)
        sys.exit(130)
    if failures:
        click.echo(f"{len(failures)} of {images_done} image(s) could not be processed:", err=True)
        for line in failures:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    click.echo(f"wrote results for {images_done} image(s) to {where}")
    if speed_line(done) is not None:
        click.echo(speed_line(done))


def _predict_with_beam(export_dir, paths, output, runner, threshold, mask_dir, min_area, inputs) -> dict:
    """:func:`tfssim.serving.beam.predict_with_beam` with the pipeline options given after ``--``;
    a failed pipeline is one ``Error:`` line (exit 1: a failure at run time, not bad input)."""
    from tfssim.serving.beam import PipelineFailed, predict_with_beam

    try:
        return predict_with_beam(export_dir, paths, output, runner=runner,
                                 pipeline_args=click.get_current_context().meta.get(_PIPELINE_ARGS, []),
                                 threshold=threshold, mask_dir=mask_dir, min_area=min_area, inputs=inputs)
    except PipelineFailed as err:
        raise click.ClickException(f"{err}; the images written before it have all their files in {output}") from None


if __name__ == "__main__":
    main()
