#!/usr/bin/env python
"""Where the false positives of defect-free images lie: the image border band against the rest.

For each tiling (``--border`` x ``--blend``, as ``tfssim-export`` serves them) this scores the
defect-free images given with the model (``tfssim.models.scoring.anomaly_maps``, the serving graph's
code), sets the threshold at ``--fpr`` on those same images (the paper's rule: the threshold is
made from defect-free images), and reports the share of the pixels above it that lie within
``--band`` pixels of the image border, beside the band's share of the area. A map that is as
good at the border as inside has the two shares equal; the issue that motivated ``--border
reflect`` saw 88 % of the top-1 % pixels in a band holding 15 % of the area. Also the per-image
share of each image's own top ``--fpr`` pixels in the band (that issue's measure).

Only defect-free images are read (no test image, no labels), so nothing here is chosen on test
data; the tiling a product uses is chosen by ``tfssim-tune`` on synthetic defects.

Example (docs/results.md):
    python scripts/border_share.py runs/nt ../shared/data/NanoTWICE/Normal/ITIA1145.tif \
        --map-sigma 0 --map-sigma 12 --output docs/results/border_share_nanotwice.json
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path


def band_mask(shape: tuple[int, int], band: int):
    """Boolean ``[H, W]``: pixels within ``band`` pixels of the image border."""
    import numpy as np

    mask = np.ones(shape, bool)
    mask[band:shape[0] - band, band:shape[1] - band] = False
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a tfssim-train run folder or .keras file")
    parser.add_argument("images", type=Path, nargs="+", help="defect-free images")
    parser.add_argument("--stride", type=int, default=30)
    parser.add_argument("--fpr", type=float, default=0.01)
    parser.add_argument("--band", type=int, default=8, help="border band width in pixels")
    parser.add_argument("--map-sigma", type=float, action="append", default=None,
                        help="map smoothing sigma (repeat); default 0")
    parser.add_argument("--ssim-window", type=int, default=None, help="SSIM window; default the model's")
    parser.add_argument("--ssim-weighting", choices=("gaussian", "uniform"), default=None,
                        help="SSIM window weighting; default the model's")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from tfssim import _io, data
    from tfssim.core.tiling_params import BLENDS, BORDERS
    from tfssim.export import load_for_export
    from tfssim.models import get_spec, scoring

    model, info = load_for_export(args.model)
    kind = info.get("kind") or "ssim"
    config = info.get("training_config") or {}  # a run trained on resized images is scored resized, as exported
    resizing = {"scale": config.get("scale") or 1.0, "image_size": config.get("image_size")}
    channels = int(model.input_shape[-1])
    images = [data.read_image(p, channels) for p in args.images]
    ssim = dict(info.get("ssim") or {})
    ssim.update({k: v for k, v in (("window_size", args.ssim_window), ("weighting", args.ssim_weighting)) if v})
    rows = []
    for border, blend in itertools.product(BORDERS, BLENDS):
        graph = tf.function(lambda x, border=border, blend=blend: scoring.anomaly_maps(
            model, x, kind, stride=args.stride, ssim_kwargs=ssim, border=border, blend=blend, **resizing
        )["anomaly_map"],
            input_signature=[tf.TensorSpec([None, None, channels], tf.float32)])
        raw = [graph(np.asarray(x, np.float32).reshape(*x.shape[:2], channels)).numpy() for x in images]
        for sigma in args.map_sigma or [0.0]:
            maps = [scoring.smooth_map(m, sigma).numpy() for m in raw]
            pooled = np.concatenate([m.ravel() for m in maps])
            threshold = float(np.quantile(pooled, 1 - args.fpr, method="higher"))
            bands = [band_mask(m.shape, args.band) for m in maps]
            above = sum(int((m > threshold).sum()) for m in maps)
            in_band = sum(int((m[b] > threshold).sum()) for m, b in zip(maps, bands))
            per_image = []
            for m, b in zip(maps, bands):
                top = m > np.quantile(m, 1 - args.fpr, method="higher")
                per_image.append(float(top[b].sum() / max(top.sum(), 1)))
            rows.append({
                "border": border, "blend": blend, "map_sigma": sigma, "threshold": threshold,
                "pixels_above": above, "share_above_in_band": in_band / max(above, 1),
                "band_area_share": float(sum(b.sum() for b in bands) / sum(b.size for b in bands)),
                "per_image_top_share_in_band": per_image,
                "mean_map_in_band": float(np.mean([m[b].mean() for m, b in zip(maps, bands)])),
                "mean_map_inside": float(np.mean([m[~b].mean() for m, b in zip(maps, bands)])),
            })
            r = rows[-1]
            print(f"border {border:7s} blend {blend:8s} sigma {sigma:4g}: {100 * r['share_above_in_band']:5.1f} % of "
                  f"the pixels above the {args.fpr:g} threshold in the {args.band}-px band "
                  f"({100 * r['band_area_share']:.1f} % of the area); mean map band {r['mean_map_in_band']:.4f} "
                  f"inside {r['mean_map_inside']:.4f}", flush=True)
    if args.output:
        _io.atomic_write_json(args.output, {
            "settings": {"model": str(args.model), "kind": kind, "model_residual": get_spec(kind).residual,
                         "images": [str(p) for p in args.images], "stride": args.stride, "fpr": args.fpr,
                         "ssim": ssim if get_spec(kind).residual == "ssim" else None,
                         "band": args.band},
            "rows": rows})


if __name__ == "__main__":
    main()
