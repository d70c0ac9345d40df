"""``tfssim-calibrate``: set an export's threshold from defect-free images at a pixel FPR."""
from __future__ import annotations

import click

from tfssim.cli._common import setup_logging, tensorflow_required, usage_errors
from tfssim.errors import InputError
from tfssim.prediction import expand_inputs


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("export", type=click.Path(exists=True, file_okay=False))
@click.argument("images", nargs=-1, required=True)
@click.option("--fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              help="Share of defect-free pixels allowed above the threshold.")
@click.option("--verbose", "-v", is_flag=True)
@tensorflow_required()  # every command needs TensorFlow: one Error line naming the install command without it
def main(export: str, images: tuple[str, ...], fpr: float, verbose: bool) -> None:
    """Compute the threshold of EXPORT from defect-free IMAGES (files, folders or globs) so that
    a share FPR of their pixels lies above it, and store it in the export's metadata."""
    setup_logging(verbose)
    from tfssim.calibration import calibrate
    from tfssim.inference import ExportedModel

    try:
        paths = expand_inputs(images)  # as tfssim-predict: a missing file, an empty glob or folder is bad input
    except (InputError, FileNotFoundError) as err:
        raise click.BadParameter(str(err), param_hint="IMAGES") from None
    with usage_errors():
        model = ExportedModel.load(export)
        threshold = calibrate(model, paths, fpr)  # the library's calibration, stored in the metadata
    click.echo(f"threshold {threshold:.6f} at pixel FPR {fpr:g} from {len(paths)} image(s), written to {model.path}")


if __name__ == "__main__":
    main()
