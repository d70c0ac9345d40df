"""``tfssim-predict``: anomaly maps, masks, overlays and region tables for image files."""
from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path

import click
import numpy as np

from tfssim.cli._common import setup_logging, usage_errors


def expand_inputs(items: tuple[str, ...]) -> list[Path]:
    """Files, folders (their images) and glob patterns -> a sorted, de-duplicated list of paths."""
    from tfssim.data import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in items:
        matches = [Path(m) for m in sorted(glob.glob(item))] if any(c in item for c in "*?[") else [Path(item)]
        if not matches:
            raise click.BadParameter(f"no file matches {item!r}", param_hint="IMAGES")
        for path in matches:
            if path.is_dir():
                paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
            elif path.exists():
                paths.append(path)
            else:
                raise click.BadParameter(f"{path} does not exist", param_hint="IMAGES")
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise click.BadParameter("no images found in " + ", ".join(items), param_hint="IMAGES")
    return unique


def _save_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    tmp = path.with_name(path.stem + ".tmp.tif")
    tifffile.imwrite(tmp, array.astype(np.float32))
    os.replace(tmp, path)


def _save_png(path: Path, array: np.ndarray) -> None:
    from skimage import io

    tmp = path.with_name(path.stem + ".tmp.png")
    io.imsave(tmp, array, check_contrast=False)
    os.replace(tmp, path)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("export", type=click.Path(exists=True, file_okay=False))
@click.argument("images", nargs=-1, required=True)
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True, help="Folder for the results.")
@click.option("--threshold", type=float, default=None, help="Score threshold; default: the export's calibrated one.")
@click.option("--masks", "mask_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of ground-truth masks (<stem>.png or <stem>_mask.png) drawn as red contours.")
@click.option("--min-area", type=click.IntRange(min=0), default=0, help="Drop regions smaller than this (pixels).")
@click.option("--verbose", "-v", is_flag=True)
def main(export: str, images: tuple[str, ...], output: str, threshold: float | None, mask_dir: str | None,
         min_area: int, verbose: bool) -> None:
    """Run the export in EXPORT on IMAGES (files, folders or globs) and write per image: the
    anomaly map (float TIFF + PNG with colour bar), the binary mask, an overlay and the region JSON."""
    setup_logging(verbose)
    from tqdm.auto import tqdm

    from tfssim import data, plots, postprocess
    from tfssim.inference import ExportedModel

    paths = expand_inputs(images)
    with usage_errors():
        model = ExportedModel.load(export)
    threshold = threshold if threshold is not None else model.threshold
    if threshold is None:
        raise click.UsageError(
            f"export {model.path} has no calibrated threshold; run tfssim-calibrate on defect-free images first "
            "or pass --threshold"
        )
    processor = postprocess.PostProcessor(threshold=threshold, min_area=min_area,
                                          opening_diameter=int(model.metadata.get("opening_diameter", 4)))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for path in tqdm(paths, desc="predict", unit="img", disable=None):
        try:
            image = data.read_image(path, model.channels)
            gt = None
            if mask_dir:
                candidates = [Path(mask_dir) / f"{path.stem}{s}" for s in (".png", "_mask.png", ".tif", ".bmp")]
                found = next((c for c in candidates if c.exists()), None)
                gt = data.read_mask(found, shape=image.shape[:2]) if found else None
            maps = model.predict(image)
        except ValueError as err:
            failures.append(f"{path}: {err}")
            tqdm.write(f"skipped {path}: {err}", file=sys.stderr)
            continue
        anomaly_map = maps["anomaly_map"]
        mask, regions = processor(anomaly_map)
        stem = path.stem
        _save_tiff(out / f"{stem}_anomaly_map.tif", anomaly_map)
        plots.plot_anomaly_map(image, anomaly_map, out / f"{stem}_anomaly_map.png")
        _save_png(out / f"{stem}_mask.png", (mask * 255).astype(np.uint8))
        plots.plot_overlay(image, mask, gt, out / f"{stem}_overlay.png")
        postprocess.regions_to_json(regions, out / f"{stem}_regions.json")
        tqdm.write(f"{path.name}: {'DEFECT' if regions else 'ok'}  regions {len(regions)}  max score {anomaly_map.max():.4f}")
    summary = {"export": str(model.path), "threshold": threshold, "images": len(paths), "failed": failures}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if failures:
        click.echo(f"{len(failures)} of {len(paths)} image(s) could not be processed:", err=True)
        for line in failures:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    click.echo(f"wrote results for {len(paths)} image(s) to {out}")


if __name__ == "__main__":
    main()
