"""``tfssim-export``: write a TF Serving SavedModel that tiles whole images inside the graph."""
from __future__ import annotations

import click

from tfssim.cli._common import Command, FloatRange, odd_window, setup_logging, tensorflow_required, usage_errors
from tfssim.core.ssim_params import WEIGHTINGS
from tfssim.core.tiling_params import BLENDS, BORDERS, DEFAULT_CHUNK_SIZE, DEFAULT_STRIDE, MAX_CHUNK_SIZE

# The bounds the metadata is checked against and export_model's defaults; no TF: --help stays cheap.
from tfssim.export.layout import EXPORT_ROOT, MAX_VERSION
from tfssim.export.metadata import ExportMetadata
from tfssim.models.kinds import MODEL_KINDS


@click.command(cls=Command,
               interrupted="no version was written (a hidden .N.partial-* folder left behind is removed by the next export)")
@click.argument("source", metavar="RUN_DIR_OR_MODEL", type=click.Path(exists=True))
@click.option("--name", required=True, help="Model name: the export goes to OUTPUT/NAME/VERSION.")
@click.option("--version", type=click.IntRange(min=1, max=MAX_VERSION), default=None,
              help="Version number; default the next free one. An existing version is never overwritten.")
@click.option("--stride", type=click.IntRange(min=1), default=DEFAULT_STRIDE, show_default=True,
              help="Default tiling stride of the signatures, at most the patch size (the paper: 30 for 128).")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=EXPORT_ROOT, show_default=True,
              help="Export root folder.")
@click.option("--kind", type=click.Choice(MODEL_KINDS), default=None,
              help="Model kind; default from the run folder or the model.")
@click.option("--chunk-size", type=click.IntRange(min=1, max=MAX_CHUNK_SIZE), default=DEFAULT_CHUNK_SIZE,
              show_default=True, help="Tiles per model call inside the graph (bounds memory).")
@click.option("--threshold", type=FloatRange(), default=None, help="A calibrated threshold to store in the metadata.")
@click.option("--ssim-window", type=int, default=None, callback=odd_window,
              help="SSIM window of the anomaly map (odd); default the one the model was trained with.")
@click.option("--ssim-weighting", type=click.Choice(WEIGHTINGS), default=None,
              help="Window weighting of the anomaly map's SSIM: Gaussian (tf.image.ssim's) or uniform (plain "
                   "patch means, the paper's definition); default the one the model was trained with.")
@click.option("--map-sigma", type=FloatRange(min=0), default=ExportMetadata.map_sigma,
              help="Gaussian smoothing (sigma in pixels) of the served anomaly maps, inside the graph; 0 = none, "
                   "as in the paper. Not in the paper: it removes fibre- and grain-sized noise from the maps "
                   "(README, NanoTWICE). Calibrate the threshold on the smoothed export.")
@click.option("--scale", type=FloatRange(0, 1, min_open=True), default=None,
              help="Resize requests by this factor inside the graph (maps come back at the input's size); "
                   "default the run folder's --scale. Give it for a .keras file of a run trained with --scale: "
                   "the file does not record it.")
@click.option("--image-size", type=click.IntRange(min=1), nargs=2, default=None, metavar="H W",
              help="Resize requests to exactly H x W inside the graph; default the run folder's --image-size "
                   "(give it for a .keras file of such a run).")
@click.option("--border", type=click.Choice(BORDERS), default=ExportMetadata.border, show_default=True,
              help="Image border, inside the graph: none (the paper) or reflect (mirror each request outward by "
                   "half a patch before tiling, crop the maps back: border pixels are reconstructed by tile "
                   "centres). Let tfssim-tune choose it: on an oriented texture the mirror can make the border worse.")
@click.option("--blend", type=click.Choice(BLENDS), default=ExportMetadata.blend, show_default=True,
              help="How overlapping tiles are combined, inside the graph: mean (the paper) or gaussian (each "
                   "tile weighted by a Gaussian falling off toward its edges, as nnU-Net does).")
@click.option("--verbose", "-v", is_flag=True)
@tensorflow_required()  # every command needs TensorFlow: one Error line naming the install command without it
def main(source: str, name: str, version: int | None, stride: int, output: str, kind: str | None,
         chunk_size: int, threshold: float | None, ssim_window: int | None, ssim_weighting: str | None,
         map_sigma: float, scale: float | None, image_size: tuple[int, int] | None, border: str, blend: str,
         verbose: bool) -> None:
    """Export the model in RUN_DIR_OR_MODEL (a tfssim-train run folder or a .keras file) to
    OUTPUT/NAME/VERSION in TensorFlow Serving's layout, and print that folder."""
    setup_logging(verbose)
    from tfssim.export import export_model

    overrides = {k: v for k, v in (("window_size", ssim_window), ("weighting", ssim_weighting)) if v is not None}
    with usage_errors():
        path = export_model(source, output_root=output, name=name, version=version, stride=stride, kind=kind,
                            chunk_size=chunk_size, threshold=threshold, ssim_overrides=overrides,
                            map_sigma=map_sigma, scale=scale, image_size=image_size or None, border=border,
                            blend=blend)
    click.echo(str(path))


if __name__ == "__main__":
    main()
