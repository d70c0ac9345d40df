"""``tfssim-train``: train one of the four autoencoders into a resumable run folder."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import click
from click.core import ParameterSource

from tfssim.cli._common import Command, FloatRange, odd_window, setup_logging, tensorflow_required, usage_errors
from tfssim.core.ssim_params import WEIGHTINGS
from tfssim.data.layouts import LAYOUT_CHOICES
from tfssim.errors import InputError
from tfssim.models.kinds import MODEL_KINDS
from tfssim.training.config import PRECISION_MODES, STRATEGIES, TrainConfig, load_config

# Every option's default is TrainConfig's (the settings' one definition, imported without TensorFlow).
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def _load_config_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager ``--config`` callback: the file's values become defaults that flags override."""
    if value is None:
        return None
    try:
        values = load_config(value)
    except InputError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None
    except OSError as err:
        raise click.BadParameter(
            f"cannot read {value}: {err.strerror or err}; check the --config path", ctx=ctx, param=param
        ) from None
    # Keys are TrainConfig field names here (load_config maps 'weights' to 'fm_weights', which is
    # also the --weights option's parameter name), so they work as click defaults directly.
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


def _virtual_cpus(count: int) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        # TensorFlow fixes its devices when the runtime starts (in this process: before this call).
        have = len(tf.config.list_logical_devices("CPU"))
        if have == count:
            return
        raise click.UsageError(
            f"--virtual-cpus {count} cannot be applied: TensorFlow already started with {have} CPU device(s) in this "
            "process; run tfssim-train in a new process, or call main() before any TensorFlow work"
        ) from None


def _check_data(data: str) -> None:
    if not os.path.exists(data):
        raise click.BadParameter(
            f"folder {data!r} does not exist; pass the folder of defect-free training images "
            "(a plain folder, an MVTec AD category or a NanoTWICE folder)", param_hint="DATA",
        )
    if not os.path.isdir(data):
        raise click.BadParameter(
            f"{data!r} is a file, not a folder; pass the folder that holds the training images", param_hint="DATA"
        )


@click.command(cls=Command,
               interrupted="the run folder keeps every finished epoch (continue with tfssim-train --resume); a "
                           "new run stopped in its first epoch leaves nothing behind")
@click.argument("data", type=click.Path(), required=False)
@click.option("--config", type=click.Path(dir_okay=False), callback=_load_config_file, is_eager=True,
              expose_value=False, help="YAML or JSON file of option values (keys as option names); flags override it.")
@click.option("--model", type=click.Choice(MODEL_KINDS), default=_DEFAULTS["model"], help="Which autoencoder to train.")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None, help="Run folder to create (or continue with --resume).")
@click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default=_DEFAULTS["layout"], help="Dataset layout of DATA.")
@click.option("--epochs", type=click.IntRange(min=1), default=_DEFAULTS["epochs"])
@click.option("--patches-per-epoch", type=click.IntRange(min=1), default=_DEFAULTS["patches_per_epoch"], help="Random patches drawn per epoch.")
@click.option("--batch-size", type=click.IntRange(min=1), default=_DEFAULTS["batch_size"], help="Global batch size (split across replicas).")
@click.option("--patch-size", type=click.IntRange(min=16), default=_DEFAULTS["patch_size"], help="Patch side; multiple of 16.")
@click.option("--scale", type=FloatRange(0, 1, min_open=True), default=_DEFAULTS["scale"],
              help="Resize every image by this factor (0 < S <= 1; anti-aliased bilinear) before patches are drawn; "
                   "the export does the same inside its serving graph and returns maps at the input's size.")
@click.option("--image-size", type=click.IntRange(min=1), nargs=2, default=_DEFAULTS["image_size"], metavar="H W",
              help="Resize every image to exactly H x W (aspect not kept; anti-aliased bilinear) before patches "
                   "are drawn; with --patch-size equal to it, the autoencoder models whole images. The export "
                   "resizes the same way and returns maps at the input's size.")
@click.option("--latent-dim", type=click.IntRange(min=1), default=_DEFAULTS["latent_dim"], help="Latent size d.")
@click.option("--ssim-window", type=int, default=_DEFAULTS["ssim_window"], callback=odd_window,
              help="SSIM window K (odd; SSIM model only).")
@click.option("--ssim-weighting", type=click.Choice(WEIGHTINGS), default=_DEFAULTS["ssim_weighting"],
              help="SSIM model only: window weighting of the loss and the anomaly map: Gaussian "
                   "(sigma 1.5, tf.image.ssim's) or uniform (plain K x K patch means, the paper's definition).")
@click.option("--learning-rate", type=FloatRange(min=0, min_open=True), default=_DEFAULTS["learning_rate"])
@click.option("--weight-decay", type=FloatRange(min=0), default=_DEFAULTS["weight_decay"])
@click.option("--seed", type=int, default=_DEFAULTS["seed"])
@click.option("--grayscale/--rgb", default=_DEFAULTS["grayscale"], help="Train on 1-channel or 3-channel images.")
@click.option("--augment/--no-augment", default=_DEFAULTS["augment"], help="Random flips and 90-degree rotations.")
@click.option("--val-split", type=FloatRange(0, 1, max_open=True), default=_DEFAULTS["val_split"],
              help="Share of a plain folder / MVTec train/good held out for validation.")
@click.option("--vae-samples", type=click.IntRange(min=1), default=_DEFAULTS["vae_samples"], help="VAE: latent samples N per pixel score.")
@click.option("--fm-weight", type=FloatRange(min=0), default=_DEFAULTS["fm_weight"], help="FM-AE: weight lambda of the feature term.")
@click.option("--weights", "fm_weights", type=str, default=_DEFAULTS["fm_weights"],
              help="FM-AE: 'imagenet' (download) or a local VGG16 weights file.")
@click.option("--mixed-precision", type=click.Choice(PRECISION_MODES), default=_DEFAULTS["mixed_precision"],
              help="auto: mixed_float16 when a GPU is visible.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=_DEFAULTS["strategy"],
              help="auto: MirroredStrategy when 2+ GPUs; multiworker reads TF_CONFIG.")
@click.option("--virtual-cpus", type=click.IntRange(min=1), default=None,
              help="Split the CPU into N logical devices (to try --strategy mirrored without GPUs).")
@click.option("--skip-bad-images", is_flag=True, default=_DEFAULTS["skip_bad_images"], help="Skip unreadable images (listed in the log) instead of stopping.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --output from its last finished epoch, with its recorded settings (options "
                   "not given keep the run's values; only --epochs may change).")
@click.option("--verbose", "-v", is_flag=True)
@tensorflow_required()  # every command needs TensorFlow: one Error line naming the install command without it
def main(data: str | None, output: str | None, virtual_cpus: int | None, resume: bool, verbose: bool, **options: Any) -> None:
    """Train an autoencoder on the defect-free images in DATA.

    DATA is a plain folder of images, an MVTec AD category folder, or a NanoTWICE folder
    (detected; --layout forces one). The run folder gets the final and best models, the
    configuration, the history, a training-curve plot, TensorBoard logs and examples.

    Exit status: 0 trained; 1 training failed at run time (the loss became NaN or infinite:
    the last good checkpoint is kept; out of memory; or the disk filled up: --resume continues);
    2 bad input (options, config file, data, run folder, a run folder another tfssim-train is
    using). A new run that fails before its first epoch finished removes what it created.
    """
    setup_logging(verbose)
    ctx = click.get_current_context()
    if data is None:
        data = (ctx.default_map or {}).get("data")
        if data is None:
            raise click.UsageError("missing argument DATA (a folder of defect-free images), or give 'data' in --config")
    _check_data(str(data))
    output = output or (ctx.default_map or {}).get("output")
    if output is None:
        raise click.UsageError("missing option --output RUN_DIR (the run folder to create)")
    if virtual_cpus:
        _virtual_cpus(virtual_cpus)

    from tfssim.core.features import WeightsUnavailableError
    from tfssim.training import OutOfMemoryError, resume_config, train

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in options.items() if k in known}
    extra = {k: v for k, v in (ctx.default_map or {}).items() if k in known and k not in values and k not in ("data", "output")}
    with usage_errors():
        if resume:
            # The run keeps its recorded settings: only what was given (on the command line or in
            # --config, not a default) is compared with them (resume_config refuses a difference).
            given = {k: v for k, v in values.items()
                     if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)}
            config = resume_config(data, output, {**extra, **given})
        else:
            config = TrainConfig(data=data, output=output, **extra, **values)
        try:
            result = train(config, resume=resume)
        except WeightsUnavailableError as err:
            raise click.UsageError(str(err)) from None
        except FloatingPointError as err:
            # A run-time failure, not bad input: exit status 1 (see the help text).
            raise click.ClickException(f"training failed: {err}") from None
        except OutOfMemoryError as err:
            raise click.ClickException(str(err)) from None
    if not result.chief:
        click.echo(f"worker: trained {config.model} in lock-step with the chief in {result.seconds:.1f} s; "
                   f"the chief wrote the run folder")
        return
    click.echo(f"trained {config.model} for {result.epochs_run} epochs in {result.seconds:.1f} s; run folder: {result.run_dir}")


if __name__ == "__main__":
    main()
