#!/usr/bin/env python
"""MVTec AD with the MVTec AD paper's autoencoder protocol, category by category, beside its published numbers.

For every category folder found under ``MVTEC_ROOT`` (MVTec AD's layout: ``<category>/train/good``,
``<category>/test/<type>/``, ``<category>/ground_truth/<type>/<stem>_mask.png``), the SSIM
autoencoder is trained, exported, calibrated and evaluated with tfssim's library functions
(:func:`_experiments.train_export_evaluate`: :func:`tfssim.training.train`,
:func:`tfssim.export.export_model`, :func:`tfssim.evaluation.calibration.calibrate`,
:func:`tfssim.evaluation.evaluate.evaluate`; no subprocesses), following the protocol of Bergmann et al.,
"MVTec AD — A Comprehensive Real-World Dataset for Unsupervised Anomaly Detection", CVPR 2019:

- textures (carpet, grid, leather, tile, wood): grayscale, 128-pixel patches, the anomaly map
  averaged over tiles at stride 30 (``--texture-scale`` resizes them first; default 1, native size);
- objects (bottle, cable, capsule, hazelnut, metal_nut, pill, screw, toothbrush, transistor,
  zipper): the whole image resized to 256 x 256 (aspect not kept) and reconstructed by one
  autoencoder pass (``TrainConfig.image_size`` with ``patch_size`` 256); RGB, except screw and
  zipper, whose images are gray;
- the threshold: MVTec AD's rule, the smallest threshold at which no connected region of the
  post-processed segmentation of any defect-free validation image is larger than
  ``--min-defect-area`` pixels (:func:`tfssim.evaluation.calibration.threshold_at_min_defect_area`), written
  as a new version of the export (``<category>/exported_models/<category>/2``, calibrated from
  version 1, which stays as exported; ``result.json``'s ``export_dir``), the one evaluated. The
  validation images are a seeded 10 % of ``train/good`` held out of training (MVTec AD ships no
  validation split); the area is one number for all categories, chosen by the
  user, never from test data.

Scores (threshold-free, from :func:`tfssim.evaluation.evaluate.evaluate`): pixel ROC AUC over all pixels of
all test images; AUPRO up to a false-positive rate of 0.3, normalised; image ROC AUC with the
**maximum of the anomaly map** as each image's score (defective test images against the good
ones). The published AE (SSIM) and AE (ℓ2) ROC AUC per category stand beside them.

Resumable: a category whose ``<output>/<category>/result.json`` exists is skipped; otherwise a
finished training or export is reused and an interrupted training continues from its last epoch.
One output folder holds one budget and protocol (``settings.json``): another is refused.

Published numbers (``PUBLISHED``): the per-category ROC AUC of "AE (SSIM)" and "AE (L2)" in
Table 2 of the CVPR 2019 paper
(https://openaccess.thecvf.com/content_CVPR_2019/papers/Bergmann_MVTec_AD_--_A_Comprehensive_Real-World_Dataset_for_Unsupervised_Anomaly_CVPR_2019_paper.pdf).
They were not read from the paper itself here but from two public sources quoting it:
the README of github.com/LeapMind/MLF-SC (the five textures, "cited from Table 2 of (Bergmann
et al., 2019)"), and Table 1 ("AUC-ROC", columns "AE (SSIM)" and "AE (MSE)") of the anonymous
submission "Few-Shot Fast-Adaptive Anomaly Detection", which lists all fifteen categories and
agrees with the former on the textures. Check them against the paper before quoting them.

Example:
    python scripts/benchmark_mvtec.py ~/data/mvtec_anomaly_detection --categories carpet,bottle \\
        --budget 10x4000 --min-defect-area 200 --output runs/mvtec
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from tfssim._io import atomic_write_json, atomic_write_text, output_dir_lock, prepare_output_dir
from tfssim.errors import InputError

TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS = ("bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor",
           "zipper")
CATEGORIES = TEXTURES + OBJECTS
# Objects whose MVTec AD images are gray: modelled in one channel like the textures.
GRAY_OBJECTS = ("screw", "zipper")

# Pixel ROC AUC per category (AE (SSIM), AE (L2)) of Table 2 of Bergmann et al., CVPR 2019, as quoted
# by the sources named in the module docstring.
PUBLISHED: dict[str, tuple[float, float]] = {
    "carpet": (0.87, 0.59), "grid": (0.94, 0.90), "leather": (0.78, 0.75), "tile": (0.59, 0.51),
    "wood": (0.73, 0.73), "bottle": (0.93, 0.86), "cable": (0.82, 0.86), "capsule": (0.94, 0.88),
    "hazelnut": (0.97, 0.95), "metal_nut": (0.89, 0.86), "pill": (0.91, 0.85), "screw": (0.96, 0.96),
    "toothbrush": (0.92, 0.93), "transistor": (0.90, 0.86), "zipper": (0.88, 0.77),
}
RESULT_FILE = "result.json"
SETTINGS_FILE = "settings.json"
SCORE_KEYS = ("pixel_auroc", "aupro_0.3", "image_auroc")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The settings every category of one benchmark run shares (recorded in ``settings.json``)."""

    epochs: int = 10
    patches_per_epoch: int = 4000
    batch_size: int = 32
    learning_rate: float = 2e-4
    latent_dim: int = 100
    texture_patch: int = 128
    texture_scale: float = 1.0
    stride: int = 30
    object_size: int = 256
    min_defect_area: int = 200
    seed: int = 0

    def category_settings(self, category: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """``(kind, train settings, export settings)`` of one category (textures or objects)."""
        common = {"model": "ssim", "epochs": self.epochs, "patches_per_epoch": self.patches_per_epoch,
                  "batch_size": self.batch_size, "learning_rate": self.learning_rate, "latent_dim": self.latent_dim,
                  "seed": self.seed}
        if category in TEXTURES:
            train = {**common, "grayscale": True, "patch_size": self.texture_patch}
            if self.texture_scale != 1.0:
                train["scale"] = self.texture_scale
            return "texture", train, {"stride": self.stride}
        size = self.object_size
        train = {**common, "grayscale": category in GRAY_OBJECTS, "patch_size": size, "image_size": [size, size]}
        return "object", train, {"stride": self.stride if self.stride <= size else size}


def find_categories(root: Path, wanted: Sequence[str] | None) -> list[str]:
    """The MVTec AD categories under ``root`` (folders with ``train/good``), in MVTec AD's order.

    Raises:
        InputError: ``root`` holds none, or a wanted category is unknown or missing.
    """
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; give the MVTec AD root (holding carpet/, bottle/, ...)")
    present = [c for c in CATEGORIES if (root / c / "train" / "good").is_dir()]
    if wanted:
        unknown = [c for c in wanted if c not in CATEGORIES]
        if unknown:
            raise InputError(f"unknown categories {unknown}; MVTec AD has {', '.join(CATEGORIES)}")
        missing = [c for c in wanted if c not in present]
        if missing:
            raise InputError(f"{root} has no {', '.join(f'{c}/train/good' for c in missing)}; give the MVTec AD root "
                             "that holds them or leave them out of --categories")
        return [c for c in CATEGORIES if c in wanted]
    if not present:
        raise InputError(f"no MVTec AD category (e.g. carpet/train/good) under {root}; give the MVTec AD root")
    return present


def run_category(root: Path, output: Path, category: str, protocol: Protocol, *, verbose: int | str = 2) -> dict:
    """Train, export, calibrate and evaluate one category (resumably); write and return its result."""
    from _experiments import Experiment, train_export_evaluate

    folder = output / category
    kind, train, export = protocol.category_settings(category)
    started = time.perf_counter()
    outcome = train_export_evaluate(
        root / category, folder, [Experiment(category, train, export)], layout="mvtec",
        min_defect_area=protocol.min_defect_area, verbose=verbose)
    scores = outcome.scores[category]
    result = {
        "category": category, "kind": kind, "train": train, "export": export,
        "min_defect_area": protocol.min_defect_area, "threshold": outcome.thresholds[category],
        "export_dir": str(outcome.exports[category]),  # the calibrated version (the threshold is in its metadata)
        "scores": {key: scores.get(key) for key in (*SCORE_KEYS, "f1", "iou", "threshold", "fpr_target")},
        # The evaluation's per-defect-type scores (its results.json holds this one export).
        "per_type": next(iter(json.loads((outcome.evaluation_dir / "results.json").read_text())["exports"].values()))
        .get("per_type"),
        "published": dict(zip(("ae_ssim", "ae_l2"), PUBLISHED[category])),
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(folder / RESULT_FILE, result)  # last: its presence marks the category done
    return result


def check_protocol(protocol: Protocol, root: Path, output: Path, categories: Sequence[str]) -> None:
    """Refuse a protocol whose training settings tfssim-train would refuse (one line), before anything runs.

    Raises:
        InputError: naming the setting, as :meth:`tfssim.training.TrainConfig.validate` does.
    """
    import math

    from tfssim.training.config import TrainConfig

    for name in ("learning_rate", "texture_scale"):
        value = getattr(protocol, name)
        if not math.isfinite(value):
            raise InputError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if protocol.min_defect_area < 0:
        raise InputError(f"--min-defect-area must be >= 0, got {protocol.min_defect_area}")
    for category in categories:
        _, train, export = protocol.category_settings(category)
        TrainConfig(data=str(root / category), output=str(output / category / "run"), **train).validate()
        if not 1 <= export["stride"] <= train["patch_size"]:
            raise InputError(f"--stride must be between 1 and the patch size {train['patch_size']}, got "
                             f"{export['stride']}")


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(results: Sequence[dict]) -> tuple[str, dict]:
    """The markdown table and its JSON of per-category results (with the mean over those categories)."""
    rows = []
    for r in results:
        ssim, l2 = PUBLISHED[r["category"]]
        rows.append({"category": r["category"], "kind": r["kind"], **{k: r["scores"].get(k) for k in SCORE_KEYS},
                     "threshold": r["threshold"], "min_defect_area": r["min_defect_area"],
                     "published_ae_ssim": ssim, "published_ae_l2": l2})
    lines = ["| category | protocol | pixel AUROC | AUPRO@0.3 | image AUROC | threshold (min. defect area) | "
             "AE-SSIM (paper) | AE-ℓ2 (paper) |", "|---|---|---|---|---|---|---|---|"]
    for row, r in zip(rows, results):
        train, export = r.get("train") or {}, r.get("export") or {}
        if not train:
            protocol = row["kind"]
        elif row["kind"] == "texture":
            protocol = f"patches {train.get('patch_size')}, stride {export.get('stride')}"
            protocol += f", scale {train['scale']:g}" if "scale" in train else ""
        else:
            protocol = "whole image {}x{}".format(*train.get("image_size", ("?", "?")))
        protocol += "" if not train else ", gray" if train.get("grayscale") else ", RGB"
        lines.append(f"| {row['category']} | {protocol} | {_cell(row['pixel_auroc'])} | "
                     f"{_cell(row['aupro_0.3'])} | {_cell(row['image_auroc'])} | "
                     f"{row['threshold']:.4f} ({row['min_defect_area']} px) | {row['published_ae_ssim']:.2f} | "
                     f"{row['published_ae_l2']:.2f} |")
    means: dict[str, float | None] = {}
    for key in (*SCORE_KEYS, "published_ae_ssim", "published_ae_l2"):
        values = [row[key] for row in rows if row[key] is not None]
        means[key] = sum(values) / len(values) if values and len(values) == len(rows) else None
    if rows:
        lines.append(f"| mean ({len(rows)}) | | {_cell(means['pixel_auroc'])} | {_cell(means['aupro_0.3'])} | "
                     f"{_cell(means['image_auroc'])} | | {_cell(means['published_ae_ssim'])} | "
                     f"{_cell(means['published_ae_l2'])} |")
    notes = ("Image AUROC: each test image scored by the maximum of its anomaly map. Published: pixel ROC AUC of "
             "AE (SSIM) and AE (L2), Table 2 of Bergmann et al., CVPR 2019 (as quoted; see "
             "scripts/benchmark_mvtec.py).")
    return "\n".join(lines) + "\n\n" + notes + "\n", {"rows": rows, "mean": means, "notes": notes}


class _Parser(argparse.ArgumentParser):
    """argparse with tfssim's rule for bad input: one ``Error:`` line on stderr, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"Error: {message}; see {self.prog} --help\n")
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    """The command line: bad input is one ``Error:`` line and exit status 2, Ctrl-C exit status 130."""
    from tfssim.cli._common import setup_logging

    setup_logging()  # TensorFlow's start-up chatter filtered, as in the commands
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mvtec_root", type=Path, metavar="MVTEC_ROOT")
    parser.add_argument("--categories", default=None, help="comma-separated (default: every category found)")
    parser.add_argument("--budget", default="10x4000", metavar="EPOCHSxPATCHES",
                        help="training budget of every category: epochs x patches per epoch (objects: whole images)")
    parser.add_argument("--output", type=Path, default=Path("runs/mvtec"))
    parser.add_argument("--min-defect-area", type=int, default=Protocol.min_defect_area, metavar="PIXELS",
                        help="threshold rule: largest region allowed on the validation images, in pixels of the "
                             "original images (one value for all categories)")
    parser.add_argument("--batch-size", type=int, default=Protocol.batch_size)
    parser.add_argument("--learning-rate", type=float, default=Protocol.learning_rate)
    parser.add_argument("--latent-dim", type=int, default=Protocol.latent_dim)
    parser.add_argument("--texture-patch", type=int, default=Protocol.texture_patch, help="textures' patch size")
    parser.add_argument("--texture-scale", type=float, default=Protocol.texture_scale,
                        help="resize textures by this factor before patches (0 < S <= 1)")
    parser.add_argument("--stride", type=int, default=Protocol.stride, help="textures' tiling stride")
    parser.add_argument("--object-size", type=int, default=Protocol.object_size,
                        help="objects: side of the square the whole image is resized to (and the patch size)")
    parser.add_argument("--seed", type=int, default=Protocol.seed)
    args = parser.parse_args(argv)

    epochs, _, patches = args.budget.partition("x")
    if not (epochs.isascii() and epochs.isdigit() and patches.isascii() and patches.isdigit()
            and int(epochs) > 0 and int(patches) > 0):
        parser.error(f"--budget {args.budget!r}: expected EPOCHSxPATCHES, e.g. 10x4000")
    if args.min_defect_area < 0:
        parser.error(f"--min-defect-area must be >= 0, got {args.min_defect_area}")
    protocol = Protocol(int(epochs), int(patches), args.batch_size, args.learning_rate, args.latent_dim,
                        args.texture_patch, args.texture_scale, args.stride, args.object_size, args.min_defect_area,
                        args.seed)
    wanted = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    try:
        run(args.mvtec_root, args.output, protocol, wanted)
    except (InputError, OSError) as err:
        reason = str(err) if isinstance(err, InputError) or err.filename is None else \
            f"cannot use {err.filename}: {err.strerror or type(err).__name__}"
        sys.stderr.write(f"Error: {reason}\n")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        sys.stderr.write(f"Interrupted: the categories finished so far are in {args.output}; run the same command "
                         "again to continue\n")
        raise SystemExit(130) from None


def run(mvtec_root: Path, output: Path, protocol: Protocol, wanted: Sequence[str] | None = None) -> None:
    """Run ``protocol`` on the categories under ``mvtec_root`` (``wanted`` or all), resumably, into ``output``."""
    categories = find_categories(mvtec_root, wanted)
    check_protocol(protocol, mvtec_root, output, categories)  # before settings.json records it
    # Never inside the data: results there would be read back as images (tfssim's output rule).
    prepare_output_dir(output, [mvtec_root])
    with output_dir_lock(output, "benchmark_mvtec.py"):
        # One output folder holds one protocol: finished categories are reused, so another budget or
        # threshold rule must not mix into their table.
        settings_file = output / SETTINGS_FILE
        settings = dataclasses.asdict(protocol)
        if settings_file.exists():
            try:
                recorded = json.loads(settings_file.read_text())
            except (ValueError, UnicodeDecodeError):
                raise InputError(f"{settings_file} is not valid JSON (damaged); use another --output") from None
            if recorded != settings:
                raise InputError(f"{output} holds a benchmark with settings {json.dumps(recorded)}; "
                                 "use the same options or another --output")
        atomic_write_json(settings_file, settings)

        results = []
        for category in categories:
            done = output / category / RESULT_FILE
            if done.exists():
                print(f"{category}: done before ({done}), skipped", flush=True)
                try:
                    results.append(json.loads(done.read_text()))
                except (ValueError, UnicodeDecodeError):
                    raise InputError(f"{done} is not valid JSON (damaged); remove it to run {category} again") \
                        from None
                continue
            print(f"{category}: training, exporting, calibrating, evaluating", flush=True)
            results.append(run_category(mvtec_root, output, category, protocol))
        markdown, payload = table(results)
        atomic_write_text(output / "mvtec_table.md", markdown)
        atomic_write_json(output / "mvtec_table.json", {"settings": settings, **payload})
    sys.stdout.write(markdown)


if __name__ == "__main__":
    main()
