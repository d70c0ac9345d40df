"""``tfssim-demo``: the whole inspection pipeline on built-in data, in minutes on a CPU.

Train an SSIM autoencoder on a real texture shipped with scikit-image, export it for TF
Serving, tune its scoring on synthetic defects painted into the defect-free validation images
(SSIM window and weighting, map smoothing, image border and tile blend, post-processing;
``tfssim-tune``) and calibrate its threshold there, written as a new export version, evaluate
that version against the test images' exact masks, and predict on those test images with its threshold (per-image maps,
masks, overlays and region tables in ``predictions/``).
"""
from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Iterator

import click

from tfssim._io import atomic_write_json
from tfssim.cli._common import Command, FloatRange, setup_logging, tensorflow_required, usage_errors
from tfssim.core.tiling_params import BORDERS, DEFAULT_STRIDE
from tfssim.data.synthetic import TEXTURES
from tfssim.errors import InputError
from tfssim.serving.postprocess import DEFAULT_FPR
from tfssim.training.config import TrainConfig


@click.command(cls=Command,
               interrupted="what the demo wrote was removed; run it again with the same --output")
@click.option("--output", "-o", type=click.Path(file_okay=False), default="demo_output", help="Folder for everything the demo makes.")
@click.option("--texture", type=click.Choice(TEXTURES), default=TEXTURES[0], help="scikit-image texture to inspect.")
@click.option("--epochs", type=click.IntRange(min=1), default=40)
@click.option("--patches-per-epoch", type=click.IntRange(min=1), default=2048)
@click.option("--patch-size", type=click.IntRange(min=16), default=64)
@click.option("--latent-dim", type=click.IntRange(min=1), default=TrainConfig.latent_dim)
@click.option("--stride", type=click.IntRange(min=1), default=None, help="Tiling stride; default patch_size // 4 (30 for 128 as in the paper).")
@click.option("--fpr", type=FloatRange(0, 1, min_open=True, max_open=True), default=DEFAULT_FPR)
@click.option("--seed", type=int, default=TrainConfig.seed)
@click.option("--verbose", "-v", is_flag=True)
@tensorflow_required()  # every command needs TensorFlow: one Error line naming the install command without it
def main(output: str, texture: str, epochs: int, patches_per_epoch: int, patch_size: int, latent_dim: int,
         stride: int | None, fpr: float, seed: int, verbose: bool) -> None:
    """Run train -> export -> tune (scoring + threshold) -> evaluate -> predict on built-in texture images."""
    setup_logging(verbose)
    from tfssim import data, export
    from tfssim.evaluation import evaluate, tuning
    from tfssim.serving import prediction
    from tfssim.serving.inference import ExportedModel
    from tfssim.training import train

    started = time.perf_counter()
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise click.UsageError(f"output folder {out} already exists and is not empty; choose another --output")
    stride = stride or (DEFAULT_STRIDE if patch_size == 128 else max(1, patch_size // 4))
    from tfssim.core.tiling import check_tiling

    # Every setting is checked here, before anything is written or trained.
    try:
        check_tiling(patch_size, stride)
    except InputError as err:
        raise click.BadParameter(f"{err}; use --stride {patch_size} or smaller, or omit --stride "
                                 "(default: a quarter of --patch-size)", param_hint="--stride") from None
    config = TrainConfig(data=str(out / "data"), output=str(out / "run"), model="ssim", epochs=epochs,
                         patches_per_epoch=patches_per_epoch, patch_size=patch_size, latent_dim=latent_dim,
                         seed=seed, val_patches=256)
    with usage_errors(), _emptied_on_failure(out):
        config.validate()
        dataset = data.texture_dataset(texture, seed=seed)
        smallest = min(min(image.shape[:2]) for image in [*dataset.train, *dataset.val, *dataset.test])
        if smallest < patch_size:
            raise InputError(f"--patch-size {patch_size} is larger than the demo's {smallest}-pixel images; use "
                             f"--patch-size {smallest // 16 * 16} or smaller (a multiple of 16)")

        click.echo(f"[1/6] data: scikit-image '{texture}' texture with synthetic defects -> {out / 'data'}")
        data.write_dataset(dataset, out / "data")

        click.echo(f"[2/6] train: SSIM autoencoder, {epochs} epochs x {patches_per_epoch} patches of {patch_size}px")
        try:
            train(config)
        except (FloatingPointError, MemoryError) as err:  # run-time failures (NaN loss, out of memory): exit 1
            raise click.ClickException(f"training failed: {err}") from None

        click.echo(f"[3/6] export: SavedModel with in-graph tiling at stride {stride}")
        first_export = export.export_model(out / "run", output_root=out / "exported_models", name="demo", stride=stride)

        click.echo(f"[4/6] tune: scoring chosen on synthetic defects in the validation images, FPR {fpr:g}")
        tune_started = time.perf_counter()
        # No images named: the tuner takes the validation images the training run recorded.
        # Both borders: the demo's two validation crops are small, so comparing them costs seconds.
        run = tuning.tune_export(first_export, None, out / "tuning", fpr=fpr, seed=seed,
                                 progress=False, borders=BORDERS)
        export_dir = run.new_version
        tune_seconds = time.perf_counter() - tune_started
        for line in run.tuning.warnings:
            click.echo(f"      {line}", err=True)
        click.echo(f"      chosen: {run.tuning.choice.describe()} ({tune_seconds:.0f} s, {len(run.images)} validation "
                   f"images of the run) -> {export_dir}")
        click.echo(f"      {run.tuning.summary_lines()[2]}")
        if run.tuning.strides:
            click.echo(f"      {tuning.stride_line(run.tuning.strides)}")

        click.echo(f"[5/6] evaluate + predict with the tuned export at pixel FPR {fpr:g}")
        # The tuned version holds its threshold and post-processing: predict uses them as served.
        split = data.load_dataset(out / "data", layout="folder", seed=seed)
        model = ExportedModel.load(export_dir)
        (result,) = evaluate.evaluate(split, [model], out / "evaluation", fpr=fpr)
        predictions = prediction.predict_files(model, split.test, out / "predictions",
                                               mask_dir=out / "data" / "ground_truth", progress=False)
        flagged = sum(r.defect for r in predictions.results)
        click.echo(f"      predicted {len(predictions.results)} test images ({flagged} with defect regions) "
                   f"-> {out / 'predictions'}")
        for line in predictions.failures:
            click.echo(f"      warning: skipped {line}", err=True)

    seconds = time.perf_counter() - started
    summary = {"pixel_auroc": result.scores["pixel_auroc"], **result.scores, "export": str(export_dir),
               "untuned_export": str(first_export),
               "tuning": {"choice": run.tuning.choice.to_dict(), "synthetic": run.tuning.synthetic,
                          "operating_point": {k: v for k, v in run.tuning.operating_point.items() if k != "thresholds"},
                          "warnings": run.tuning.warnings, "strides": run.tuning.strides,
                          "settings": run.tuning.settings, "seconds": round(tune_seconds, 1),
                          "record": str(out / "tuning" / "tuning.json")},
               "evaluation": str(out / "evaluation"), "predictions": str(out / "predictions"),
               "seconds": round(seconds, 1)}
    atomic_write_json(out / "results.json", summary)
    click.echo("[6/6] done\n" + evaluate.format_table([result]))
    click.echo(f"\nexport:      {export_dir}\noverlays:    {out / 'evaluation' / 'overlays'}\n"
               f"predictions: {out / 'predictions'}\n"
               f"ROC plot:    {out / 'evaluation' / 'roc.png'}\ntuning:      {out / 'tuning' / 'tuning.png'}\n"
               f"results:     {out / 'results.json'}")
    click.echo(f"pixel ROC AUC {result.scores['pixel_auroc']:.4f}  (total {seconds / 60:.1f} min)")


@contextlib.contextmanager
def _emptied_on_failure(out: Path) -> Iterator[None]:
    """Remove what the demo wrote into ``out`` (empty or missing before) when it fails or is
    interrupted, so that the corrected command can use the same ``--output``."""
    existed = out.exists()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        elif out.is_dir():
            for child in out.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    main()
