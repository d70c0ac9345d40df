"""``tfssim-tune``: choose an export's scoring from defect-free images and write it as a new version."""
from __future__ import annotations

import click

from tfssim.cli._common import setup_logging, tensorflow_required, usage_errors
from tfssim.errors import InputError
from tfssim.prediction import expand_inputs


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("export", type=click.Path(exists=True, file_okay=False))
@click.argument("images", metavar="VALIDATION_IMAGES...", nargs=-1, required=True)
@click.option("--defect-size", type=(click.FloatRange(min=1), click.FloatRange(min=1)), default=None,
              metavar="MIN MAX",
              help="Range of synthetic defect sizes (equivalent diameter, pixels): the sizes you must find  "
                   "[default: 1/16 to 1/2 of the patch side]")
@click.option("--fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              help="Share of defect-free pixels allowed above the threshold.")
@click.option("--copies", type=click.IntRange(min=1), default=4, help="Defective copies painted per image.")
@click.option("--seed", type=int, default=0, help="Seed of the synthetic defects.")
@click.option("--output", "-o", type=click.Path(file_okay=False), default="tuning",
              help="Folder for tuning.json and tuning.png.")
@click.option("--model", "source", type=click.Path(exists=True), default=None,
              help="Run folder or .keras file the export was made from; default the one its metadata records.")
@click.option("--verbose", "-v", is_flag=True)
@tensorflow_required()  # one Error line naming the install command without TensorFlow
def main(export: str, images: tuple[str, ...], defect_size: tuple[float, float] | None, fpr: float, copies: int,
         seed: int, output: str, source: str | None, verbose: bool) -> None:
    """Paint synthetic defects (texture transplants, smeared areas, foreign bodies, scratches;
    exact masks) into copies of the defect-free VALIDATION_IMAGES (files, folders or globs),
    choose the anomaly map (SSIM window and weighting, map smoothing) by pixel ROC AUC and the
    post-processing (opening, minimum area) by segmentation F1 on them, calibrate the threshold
    at FPR on the clean images, and write the result as a NEW version of EXPORT (the old one is
    never changed), with tuning.json and tuning.png in OUTPUT. No test image is read."""
    setup_logging(verbose)
    from pathlib import Path

    from tfssim import data, plots, tuning
    from tfssim._io import atomic_write_json
    from tfssim.inference import ExportedModel

    with usage_errors():
        paths = expand_inputs(images)
        if defect_size is not None and defect_size[0] > defect_size[1]:
            raise InputError(f"--defect-size MIN MAX needs MIN <= MAX, got {defect_size[0]:g} {defect_size[1]:g}")
        out = Path(output)
        if (out / "tuning.json").exists():  # the record of an earlier tuning: never overwritten
            raise InputError(f"{out / 'tuning.json'} exists (an earlier tuning's record); choose another --output")
        model = ExportedModel.load(export)
        source = tuning.find_source(model, source)  # before the work, not after
        val = [data.read_image(p, model.channels) for p in paths]
        result = tuning.tune(model, val, size_range=defect_size, fpr=fpr, copies=copies, seed=seed,
                             sources=paths)
        new_version = tuning.write_tuned_export(model, result, source, check_image=val[0])
        out.mkdir(parents=True, exist_ok=True)
        record = {**result.as_dict(), "validation_images": [str(p) for p in paths], "new_version": str(new_version)}
        atomic_write_json(out / "tuning.json", record)
        plots.plot_tuning(result.map_candidates, result.post_candidates, result.choice, out / "tuning.png")
    c = result.choice
    scoring = f"SSIM window {c['window_size']} ({c['weighting']}), " if c["window_size"] is not None else ""
    click.echo(f"chosen: {scoring}map sigma {c['map_sigma']:g}, opening {c['opening_diameter']}, "
               f"min area {c['min_area']}; threshold {c['threshold']:.6f} at pixel FPR {fpr:g}")
    click.echo(f"synthetic defects: pixel ROC AUC {result.synthetic['pixel_auroc']:.4f}, "
               f"AUPRO@0.3 {result.synthetic['aupro_0.3']:.4f}, F1 {result.synthetic['f1']:.4f}")
    click.echo(f"new version: {new_version}\ntuning:      {out / 'tuning.json'}")


if __name__ == "__main__":
    main()
