"""``tfssim-calibrate``: an export's threshold from defect-free images, at a pixel FPR or by a minimum defect area,
written as a new export version (the calibrated version is never changed)."""
from __future__ import annotations

import click

from tfssim.cli._common import Command, FloatRange, setup_logging, tensorflow_required, usage_errors
from tfssim.errors import InputError
from tfssim.serving.postprocess import DEFAULT_FPR  # no TensorFlow: --help stays cheap
from tfssim.serving.prediction import expand_inputs


@click.command(cls=Command,
               interrupted="no new version was written; the calibrated version is unchanged")
@click.argument("export", type=click.Path(exists=True, file_okay=False))
@click.argument("images", nargs=-1, required=True)
@click.option("--fpr", type=FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help=f"Share of defect-free pixels allowed above the threshold [default: {DEFAULT_FPR}].")
@click.option("--min-defect-area", type=click.IntRange(min=0), default=None, metavar="PIXELS",
              help="Instead of --fpr (MVTec AD's rule): the smallest threshold at which no region of the "
                   "post-processed segmentation (the export's opening, convex hulls, min_area) of any of the "
                   "images is larger than this many pixels, at the images' resolution.")
@click.option("--verbose", "-v", is_flag=True)
@tensorflow_required()  # every command needs TensorFlow: one Error line naming the install command without it
def main(export: str, images: tuple[str, ...], fpr: float | None, min_defect_area: int | None, verbose: bool) -> None:
    """Compute the threshold of EXPORT from defect-free IMAGES (files, folders or globs) so that
    a share FPR of their pixels lies above it, or (--min-defect-area) so that no defect region
    larger than PIXELS is found on them, and write it as a NEW VERSION of the export.

    EXPORT is a version folder NAME/VERSION of TensorFlow Serving's layout, or its model folder
    NAME (the newest version is calibrated). The new version is the next free number in NAME: a
    copy of the calibrated one with the threshold in its metadata (and calibrated_from naming
    the old version). The calibrated version is left byte for byte as it was, so TF Serving
    never sees a served version change; its default policy serves the newest version, the new
    one. The new version's folder is printed: predict and evaluate with that one. A SavedModel
    folder outside the NAME/VERSION layout is refused: move it into NAME/1 first."""
    setup_logging(verbose)
    if fpr is not None and min_defect_area is not None:
        raise click.UsageError("--fpr and --min-defect-area are mutually exclusive (two rules for the threshold); give one of them")
    from tfssim.evaluation.calibration import calibrate
    from tfssim.serving.inference import ExportedModel

    try:
        paths = expand_inputs(images)  # as tfssim-predict: a missing file, an empty glob or folder is bad input
    except (InputError, FileNotFoundError) as err:
        raise click.BadParameter(str(err), param_hint="IMAGES") from None
    with usage_errors():
        model = ExportedModel.load(export)
        # The library's calibration, written as a new version beside the calibrated one.
        result = calibrate(model, paths, fpr, min_defect_area=min_defect_area)
    rule = (f"no region over {result.min_defect_area} px" if result.method == "min_defect_area"
            else f"pixel FPR {result.fpr:g}")
    click.echo(f"threshold {result.threshold:.6f} at {rule} from {len(paths)} image(s), written as new version "
               f"{result.path} (calibrated from {result.source}, which is unchanged)")


if __name__ == "__main__":
    main()
