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

# Ground-truth mask names tried for an image <stem>, in order: NanoTWICE's <stem>_gt, a mask with
# the image's own stem, MVTec AD's <stem>_mask (the suffixes tfssim.data.layouts matches).
MASK_SUFFIXES = ("_gt", "", "_mask")


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


def output_stems(paths: list[Path]) -> list[str]:
    """A distinct output name per image: its stem, prefixed by its folder's name where stems collide."""
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    stems: list[str] = []
    for path in paths:
        stem = path.stem if counts[path.stem] == 1 else f"{path.parent.name or 'root'}_{path.stem}"
        candidate, i = stem, 2
        while candidate in stems or (candidate != path.stem and candidate in counts):
            candidate, i = f"{stem}_{i}", i + 1
        stems.append(candidate)
    return stems


def find_mask(mask_dir: Path, image: Path) -> Path | None:
    """The ground-truth mask of ``image`` in ``mask_dir`` (see :data:`MASK_SUFFIXES`), or ``None``."""
    from tfssim.data import IMAGE_SUFFIXES

    for suffix in MASK_SUFFIXES:
        for ext in IMAGE_SUFFIXES:
            for candidate in (mask_dir / f"{image.stem}{suffix}{ext}", mask_dir / f"{image.stem}{suffix}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


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
              help="Folder of ground-truth masks (<stem>_gt, <stem> or <stem>_mask; .png, .tif, ...) "
                   "drawn as red contours.")
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
    missing_masks = 0
    for path, stem in tqdm(list(zip(paths, output_stems(paths))), desc="predict", unit="img", disable=None):
        try:
            image = data.read_image(path, model.channels)
            gt = None
            if mask_dir:
                found = find_mask(Path(mask_dir), path)
                if found is None:
                    missing_masks += 1
                    tqdm.write(f"warning: no ground-truth mask for {path} in {mask_dir} (looked for "
                               f"{', '.join(path.stem + s + '.*' for s in MASK_SUFFIXES)})", file=sys.stderr)
                else:
                    gt = data.read_mask(found, shape=image.shape[:2])
            maps = model.predict(image, source=path)
        except ValueError as err:
            message = str(err) if str(path) in str(err) else f"{path}: {err}"
            failures.append(message)
            tqdm.write(f"skipped {message}", file=sys.stderr)
            continue
        anomaly_map = maps["anomaly_map"]
        mask, regions = processor(anomaly_map)
        _save_tiff(out / f"{stem}_anomaly_map.tif", anomaly_map)
        plots.plot_anomaly_map(image, anomaly_map, out / f"{stem}_anomaly_map.png")
        _save_png(out / f"{stem}_mask.png", (mask * 255).astype(np.uint8))
        plots.plot_overlay(image, mask, gt, out / f"{stem}_overlay.png")
        postprocess.regions_to_json(regions, out / f"{stem}_regions.json")
        label = path.name if stem == path.stem else str(path)
        tqdm.write(f"{label}: {'DEFECT' if regions else 'ok'}  regions {len(regions)}  max score {anomaly_map.max():.4f}")
    summary = {"export": str(model.path), "threshold": threshold, "images": len(paths), "failed": failures,
               "images_without_mask": missing_masks if mask_dir else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if failures:
        click.echo(f"{len(failures)} of {len(paths)} image(s) could not be processed:", err=True)
        for line in failures:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    click.echo(f"wrote results for {len(paths)} image(s) to {out}")


if __name__ == "__main__":
    main()
