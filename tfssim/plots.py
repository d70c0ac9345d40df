"""Figures people would rather look at than read: ROC and overlap curves, maps, overlays, training curves.

Every function builds its own ``matplotlib.figure.Figure`` (no pyplot state) and writes a PNG
atomically (a temporary file renamed into place).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from tfssim._io import atomic_write
from tfssim.core.map_formula import MapFormula
from tfssim.core.tiling_params import DEFAULT_BLEND, DEFAULT_BORDER

__all__ = [
    "plot_roc_curves", "plot_pro_quantiles", "plot_anomaly_map", "plot_overlay", "plot_training_curves",
    "plot_examples", "plot_per_type", "plot_tuning", "save_figure",
]


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (PNG) atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight"))


def _gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return np.clip(image, 0, 1)


def plot_roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | os.PathLike) -> Path:
    """Pixel ROC curves of several models in one plot, AUC in the legend (paper Figure 5, left).

    Args:
        curves (mapping): ``name -> (fpr, tpr, auc)``.
        path (path-like): PNG to write.
    """
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="gray", lw=0.8, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title="pixel ROC")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_pro_quantiles(fpr: np.ndarray, quantiles: Mapping[float, np.ndarray] | np.ndarray, path: str | os.PathLike,
                       max_fpr: float = 0.3) -> Path:
    """Per-region overlap quantiles against the false-positive rate (paper Figure 5, right).

    ``quantiles`` maps a quantile level (e.g. 0.25) to the overlap at each FPR, or is an array
    ``[levels, len(fpr)]`` for the levels 0.1, 0.25, 0.5, 0.75, 0.9.
    """
    if not isinstance(quantiles, Mapping):
        quantiles = dict(zip((0.1, 0.25, 0.5, 0.75, 0.9), np.asarray(quantiles)))
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for level, values in sorted(quantiles.items()):
        ax.plot(fpr, values, label=f"{int(round(level * 100))}% quantile")
    ax.set(xlabel="false positive rate", ylabel="per-region overlap", xlim=(0, max_fpr), ylim=(0, 1.01),
           title="per-region overlap")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_anomaly_map(image: np.ndarray, anomaly_map: np.ndarray, path: str | os.PathLike) -> Path:
    """The input beside its anomaly map with a colour bar."""
    fig = Figure(figsize=(11, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.imshow(_gray(image), cmap="gray", vmin=0, vmax=1)
    ax1.set_title("input")
    im = ax2.imshow(np.asarray(anomaly_map), cmap="inferno")
    ax2.set_title("anomaly map")
    fig.colorbar(im, ax=ax2, fraction=0.046, pad=0.04)
    for ax in (ax1, ax2):
        ax.axis("off")
    return save_figure(fig, path)


def plot_overlay(image: np.ndarray, segmentation: np.ndarray, gt_mask: np.ndarray | None, path: str | os.PathLike) -> Path:
    """Input in gray, segmentation filled green, ground-truth contours red (paper Figure 1 style)."""
    from skimage.measure import find_contours

    gray = _gray(image)
    rgb = np.stack([gray] * 3, axis=-1) if gray.ndim == 2 else gray[..., :3]
    seg = np.asarray(segmentation, bool)
    overlay = rgb.copy()
    overlay[seg] = 0.55 * overlay[seg] + 0.45 * np.array([0.0, 1.0, 0.0])
    h, w = seg.shape
    fig = Figure(figsize=(max(4, w / 100), max(3, h / 100)))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(overlay)
    if gt_mask is not None:
        for contour in find_contours(np.asarray(gt_mask, float), 0.5):
            ax.plot(contour[:, 1], contour[:, 0], c="red", lw=1)
    ax.set(xlim=(-0.5, w - 0.5), ylim=(h - 0.5, -0.5))
    ax.axis("off")
    return save_figure(fig, path)


def plot_training_curves(history: Mapping[str, Sequence[float]], path: str | os.PathLike) -> Path:
    """Loss curves per epoch (e.g. ``loss`` and ``val_loss``); log scale when they span a decade."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    values = []
    for name, series in history.items():
        epochs = np.arange(1, len(series) + 1)
        ax.plot(epochs, series, marker="o" if len(series) < 30 else None, label=name)
        values.extend(v for v in series if np.isfinite(v))
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 10:
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="loss", title="training")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_examples(inputs: Sequence[np.ndarray], reconstructions: Sequence[np.ndarray], residuals: Sequence[np.ndarray],
                  path: str | os.PathLike) -> Path:
    """Rows of input / reconstruction / residual map."""
    n = len(inputs)
    fig = Figure(figsize=(7.5, 2.5 * n))
    axes = np.asarray(fig.subplots(n, 3, squeeze=False))
    for row, (x, r, e) in enumerate(zip(inputs, reconstructions, residuals)):
        for col, (img, title, cmap) in enumerate(((x, "input", "gray"), (r, "reconstruction", "gray"), (e, "residual", "inferno"))):
            ax = axes[row, col]
            shown = _gray(img) if cmap == "gray" else np.asarray(img).squeeze()
            ax.imshow(shown, cmap=cmap, **({"vmin": 0, "vmax": 1} if cmap == "gray" else {}))
            ax.set_title(title if row == 0 else "")
            ax.axis("off")
    return save_figure(fig, path)


PER_TYPE_METRICS = (("pixel_auroc", "pixel AUROC"), ("aupro_0.3", "AUPRO@0.3"), ("image_auroc", "image AUROC"),
                    ("f1", "F1"))


def plot_per_type(scores: Mapping[str, Mapping[str, Mapping[str, float | None]]], path: str | os.PathLike) -> Path:
    """Bar chart of the scores per defect type: one panel per metric, one bar per type and model.

    Args:
        scores: ``{model: {defect type: {"pixel_auroc": ..., "aupro_0.3": ..., "image_auroc": ...,
            "f1": ...}}}`` (:func:`tfssim.evaluation.per_type.per_type_scores` per model). A missing or
            ``None`` score leaves its bar out.
        path: The PNG to write.

    Returns:
        ``path``.
    """
    models = list(scores)
    types = sorted({kind for per_model in scores.values() for kind in per_model})
    fig = Figure(figsize=(max(6.0, 1.0 + 0.9 * len(types) * max(1, len(models)) ** 0.5), 2.6 * len(PER_TYPE_METRICS)))
    axes = fig.subplots(len(PER_TYPE_METRICS), 1, squeeze=False)[:, 0]
    x = np.arange(len(types))
    width = 0.8 / max(1, len(models))
    for ax, (key, label) in zip(axes, PER_TYPE_METRICS):
        for i, model in enumerate(models):
            values = np.array([np.nan if scores[model].get(t, {}).get(key) is None else float(scores[model][t][key])
                               for t in types])
            ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(values, nan=0.0), width,
                   label=model if ax is axes[0] else None)
        ax.set(ylabel=label, ylim=(0, 1.05), xticks=x)
        ax.set_xticklabels(types if ax is axes[-1] else [""] * len(types), rotation=30, ha="right")
        if key.endswith("auroc"):
            ax.axhline(0.5, color="gray", lw=0.8, ls="--")  # chance level of an AUROC
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_title("scores per defect type")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: bars stay visible
    return save_figure(fig, path)


def plot_tuning(tuning: Any, path: str | os.PathLike) -> Path:
    """What the tuner (:func:`tfssim.evaluation.tuning.tune`) measured and chose, in four panels, and a fifth
    and sixth when it compared strides.

    Top: synthetic-defect pixel ROC AUC against the map sigma, one line per SSIM window /
    weighting; segmentation F1 against the minimum area, one line per opening diameter (the
    choice starred). Bottom: at the chosen threshold, the share of synthetic defect regions
    found per defect size and per family; and F1, region recall and false regions per clean
    image against the clean-pixel FPR of each threshold tried (``f1`` rule) or at the one
    threshold (``fpr`` rule). Right, with strides compared: the speed/quality frontier, the
    chosen map's pixel ROC AUC and AUPRO against the serving time per megapixel, one point per
    stride.

    Args:
        tuning: A :class:`tfssim.evaluation.tuning.Tuning`.
        path: The PNG to write (atomically).
    """
    choice, op = tuning.choice, tuning.operating_point
    if tuning.strides:
        fig = Figure(figsize=(17, 8.4))
        (left, right, auroc_ax), (recall_ax, rule_ax, aupro_ax) = fig.subplots(2, 3)
        _plot_frontier(tuning.strides, auroc_ax, aupro_ax)
    else:
        fig = Figure(figsize=(12, 8.4))
        (left, right), (recall_ax, rule_ax) = fig.subplots(2, 2)
    groups: dict[tuple, list[Mapping]] = {}
    before = tuning.synthetic.get("before") or {}
    own_tiling = (before.get("border", DEFAULT_BORDER), before.get("blend", DEFAULT_BLEND))
    for c in tuning.map_candidates:
        formula = MapFormula.of(c.get("map_formula"))
        key = (c["window_size"], c["weighting"], c.get("border", DEFAULT_BORDER), c.get("blend", DEFAULT_BLEND), formula.describe())
        groups.setdefault(key, []).append(c)
    # Of the formulas with a second term, one line per second term: its best combination.
    best_combination: dict[tuple, tuple] = {}
    for key, rows in groups.items():
        formula = MapFormula.of(rows[0].get("map_formula"))
        term = (formula.name, formula.lowfreq_sigma, formula.window_size)
        top = max(c["pixel_auroc"] for c in rows)
        if not formula.plain and (term not in best_combination or top > best_combination[term][0]):
            best_combination[term] = (top, key)
    shown = {key for _, key in best_combination.values()}
    for (window, weighting, border, blend, formula), rows in groups.items():
        if formula != "ssim" and (window, weighting, border, blend, formula) not in shown:
            continue
        rows = sorted(rows, key=lambda c: c["map_sigma"])
        label = "map" if window is None else f"window {window}, {weighting}"
        if (border, blend) != own_tiling:  # the export's own tiling: solid lines, unlabelled
            label += f"; border {border}, blend {blend}"
        if formula != "ssim":
            label += f"; {formula}"
        left.plot([c["map_sigma"] for c in rows], [c["pixel_auroc"] for c in rows], marker="o", label=label,
                  ls=":" if formula != "ssim" else "-" if (border, blend) == own_tiling else "--")
    chosen_formula = MapFormula.of(choice.map_formula)
    best = next(c for c in tuning.map_candidates
                if (c["window_size"], c["weighting"], c["map_sigma"], c.get("border", DEFAULT_BORDER), c.get("blend", DEFAULT_BLEND))
                == (choice.window_size, choice.weighting, choice.map_sigma, choice.border, choice.blend)
                and MapFormula.of(c.get("map_formula")) == chosen_formula)
    left.plot([best["map_sigma"]], [best["pixel_auroc"]], marker="*", ms=16, c="k", ls="", label="chosen")
    left.set(xlabel="map smoothing sigma (pixels)", ylabel="pixel ROC AUC (synthetic defects)", title="anomaly map")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    openings: dict[int, list[Mapping]] = {}
    for c in tuning.post_candidates:
        openings.setdefault(c["opening_diameter"], []).append(c)
    for opening, rows in sorted(openings.items()):
        rows = sorted(rows, key=lambda c: c["min_area"])
        right.plot([c["min_area"] for c in rows], [c["f1"] for c in rows], marker="o", label=f"opening {opening}")
    post = next(c for c in tuning.post_candidates
                if (c["opening_diameter"], c["min_area"]) == (choice.opening_diameter, choice.min_area))
    right.plot([post["min_area"]], [post["f1"]], marker="*", ms=16, c="k", ls="", label="chosen")
    fpr_point = op.get("fpr_rule", op)
    right.set(xlabel="minimum region area (pixels)", ylabel="pixel F1 (synthetic defects)",
              title=f"post-processing at threshold {fpr_point['threshold']:.4g} (FPR {choice.fpr:g})")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)

    sizes = op["region_recall_by_size"]
    families = op["region_recall_by_family"]
    labels = [f"{b['min']:g}-{b['max']:g} px" for b in sizes] + list(families)
    values = [b["recall"] for b in sizes] + [b["recall"] for b in families.values()]
    counts = [b["defects"] for b in sizes] + [b["defects"] for b in families.values()]
    colours = ["tab:blue"] * len(sizes) + ["tab:orange"] * len(families)
    positions = np.arange(len(labels))
    recall_ax.bar(positions, [0 if v is None else v for v in values], color=colours)
    for x, v, n in zip(positions, values, counts):
        recall_ax.text(x, (v or 0) + 0.02, f"{'n/a' if v is None else f'{100 * v:.0f}%'}\n(n={n})", ha="center",
                       fontsize=7)
    recall_ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize=8)
    recall_ax.set(ylim=(0, 1.15), ylabel=f"regions found (>= {100 * tuning.settings['region_found_share']:.0f} % "
                                          "flagged)",
                  title=f"at the chosen threshold: by defect size (blue) and family (orange); "
                        f"{op['false_regions_per_clean_image']:.2f} false regions per clean image")
    recall_ax.title.set_fontsize(9)
    recall_ax.grid(alpha=0.3, axis="y")
    points = op.get("thresholds") or [{"val_fpr": op["val_fpr"], "pixel_f1": op["pixel_f1"],
                                       "region_recall": op["region_recall"],
                                       "false_regions_per_clean_image": op["false_regions_per_clean_image"]}]
    fprs = [p["val_fpr"] for p in points]
    rule_ax.plot(fprs, [p["pixel_f1"] for p in points], marker="o", label="pixel F1")
    rule_ax.plot(fprs, [p["region_recall"] or 0 for p in points], marker="s", label="region recall")
    rule_ax.plot([choice.val_fpr], [op["pixel_f1"]], marker="*", ms=16, c="k", ls="", label="chosen")
    rule_ax.set(xlabel="clean-pixel false-positive rate of the threshold", ylabel="share (synthetic defects)",
                title=f"threshold rule {choice.threshold_rule}: threshold {choice.threshold:.4g}")
    twin = rule_ax.twinx()
    twin.plot(fprs, [p["false_regions_per_clean_image"] for p in points], c="tab:red", marker="^", ls="--",
              label="false regions per clean image")
    twin.set_ylabel("false regions per clean image", color="tab:red")
    handles = rule_ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    rule_ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7)
    rule_ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _plot_frontier(rows: Sequence[Mapping[str, Any]], auroc_ax: Any, aupro_ax: Any) -> None:
    """The stride frontier (:attr:`tfssim.evaluation.tuning.Tuning.strides`): synthetic pixel ROC AUC and AUPRO
    against the serving time per megapixel, each point labelled with its stride, the chosen starred."""
    rows = sorted(rows, key=lambda r: r["seconds_per_megapixel"])
    seconds = [r["seconds_per_megapixel"] for r in rows]
    for ax, key, label in ((auroc_ax, "pixel_auroc", "pixel ROC AUC"), (aupro_ax, "aupro_0.3", "AUPRO@0.3")):
        ax.plot(seconds, [r[key] for r in rows], marker="o")
        for r in rows:
            ax.annotate(f"stride {r['stride']}" + (" (export's)" if r["own"] else ""),
                        (r["seconds_per_megapixel"], r[key]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        chosen = next(r for r in rows if r["chosen"])
        ax.plot([chosen["seconds_per_megapixel"]], [chosen[key]], marker="*", ms=16, c="k", ls="", label="chosen")
        ax.set(xlabel="serving time (s per megapixel, this machine)", ylabel=f"{label} (synthetic defects)",
               title=f"stride: {label} against serving time")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
