"""Train -> export -> evaluate in one call, for research scripts: the library's functions, no CLIs.

An experiment folder holds ``runs/<run>/`` (:func:`tfssim.training.train` run folders),
``exported_models/<name>/1/`` (:func:`tfssim.export.export_model`; with ``min_defect_area`` also
its calibrated copy ``exported_models/<name>/2/``) and one evaluation folder
(:func:`tfssim.evaluation.evaluate.evaluate`). Every step is resumable: a finished run
(:func:`tfssim.run_record.is_finished`) or an existing export is reused, an interrupted run continues from its last epoch, so a script
built on :func:`train_export_evaluate` can be stopped and started again at any time.

TensorFlow is imported inside the functions: importing this module is cheap.

Example:
    >>> runs = [Experiment("ssim", {"model": "ssim", "epochs": 4}),
    ...         Experiment("l2", {"model": "l2", "epochs": 4})]
    >>> outcome = train_export_evaluate("NanoTWICE", "runs/compare", runs)
    >>> outcome.scores["ssim"]["pixel_auroc"]
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from tfssim.errors import InputError

__all__ = ["Experiment", "ExperimentResult", "train_run", "export_run", "train_export_evaluate"]

log = logging.getLogger(__name__)
EXPORT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One export to evaluate, and the training it comes from.

    Args:
        name: Export name (``exported_models/<name>/1``) and, unless ``run`` is given, the run
            folder's name (``runs/<name>``).
        train: :class:`tfssim.training.TrainConfig` fields other than ``data`` and ``output``
            (e.g. ``{"model": "ssim", "epochs": 4, "ssim_window": 7}``).
        export: Keyword arguments of :func:`tfssim.export.export_model` (e.g. ``{"stride": 30,
            "ssim_overrides": {"weighting": "uniform"}}``).
        run: Name of the run folder, when several exports share one training.
    """

    name: str
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    export: dict[str, Any] = dataclasses.field(default_factory=dict)
    run: str | None = None

    @property
    def run_name(self) -> str:
        return self.run or self.name


@dataclasses.dataclass
class ExperimentResult:
    """What :func:`train_export_evaluate` produced.

    Attributes:
        run_dirs: Run folder of each experiment, by experiment name.
        exports: Export (version) folder of each experiment, by name: the calibrated version
            when :func:`train_export_evaluate` calibrated (``min_defect_area``), the one evaluated.
        scores: The evaluation's scores of each experiment (``pixel_auroc``, ``aupro_0.3``,
            ``f1``, ``iou``, ``segmentation_auroc`` ...), by name.
        evaluation_dir: The evaluation folder (``results.json``, curves, figures).
        thresholds: The threshold each export was calibrated to and stored (``min_defect_area``
            of :func:`train_export_evaluate`), by name; empty without calibration.
    """

    run_dirs: dict[str, Path]
    exports: dict[str, Path]
    scores: dict[str, dict[str, Any]]
    evaluation_dir: Path
    thresholds: dict[str, float] = dataclasses.field(default_factory=dict)


def train_run(data: str | os.PathLike, run_dir: str | os.PathLike, settings: dict[str, Any] | None = None, *,
              verbose: int | str = "auto") -> Path:
    """Train a run folder unless it is finished: reuse (finished), resume (a run record there) or start.

    Args:
        data: Training data folder (any layout :func:`tfssim.data.load_dataset` reads).
        run_dir: The run folder.
        settings: :class:`tfssim.training.TrainConfig` fields other than ``data`` and ``output``.
        verbose: Keras ``fit`` verbosity.

    Returns:
        ``run_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: Bad settings (see :meth:`tfssim.training.TrainConfig.validate`), or a resumed
            run started with other settings.
    """
    from tfssim.run_record import has_run, is_finished
    from tfssim.training import TrainConfig, train

    run_dir = Path(run_dir)
    if is_finished(run_dir):
        log.info("%s: finished run, reused", run_dir)
        return run_dir
    config = TrainConfig(data=str(data), output=str(run_dir), **(settings or {}))
    train(config, resume=has_run(run_dir), verbose=verbose)
    return run_dir


def export_run(run_dir: str | os.PathLike, export_root: str | os.PathLike, name: str, **export_kwargs: Any) -> Path:
    """Export a run folder as ``export_root/name/1`` unless that export exists; return its folder."""
    from tfssim.export import export_model

    folder = Path(export_root) / name / str(EXPORT_VERSION)
    if folder.exists():
        log.info("%s: exported before, reused", folder)
        return folder
    return Path(export_model(run_dir, output_root=export_root, name=name, version=EXPORT_VERSION, **export_kwargs))


def _calibrated_before(export: Path, min_defect_area: int) -> tuple[Path, float] | None:
    """The newest version calibrated from ``export`` by ``min_defect_area``, and its threshold, if any.

    Calibration writes a new version each time; a resumed experiment reuses the one it wrote
    (same export, same validation split, same rule: the same threshold) instead of adding another.
    """
    from tfssim.export.metadata import ExportMetadata, calibrated_versions

    for folder in calibrated_versions(export):  # newest first
        try:
            meta = ExportMetadata.read(folder)
        except (OSError, ValueError):
            continue
        if meta.threshold_method == "min_defect_area" \
                and meta.threshold_min_defect_area == min_defect_area and meta.threshold is not None:
            log.info("%s: calibrated before from %s, reused", folder, export)
            return folder, meta.threshold
    return None


def train_export_evaluate(
    data: str | os.PathLike,
    output: str | os.PathLike,
    experiments: Sequence[Experiment],
    *,
    evaluation_dir: str | os.PathLike | None = None,
    layout: str = "auto",
    fpr: float = 0.01,
    segmentation_auroc: bool = False,
    progress: bool = False,
    verbose: int | str = 2,
    min_defect_area: int | None = None,
) -> ExperimentResult:
    """Train, export and evaluate ``experiments`` on one labelled dataset, resumably.

    Args:
        data: The dataset (NanoTWICE, an MVTec AD category or a plain folder with ``train/``,
            ``val/``, ``test/`` and ``ground_truth/``): trained on its training images,
            evaluated on its validation (threshold) and test images.
        output: Experiment folder: ``runs/``, ``exported_models/`` and ``evaluation/``.
        experiments: What to train and export; all exports are evaluated together.
        evaluation_dir: Evaluation folder (default ``output/evaluation``).
        layout: Dataset layout (``"auto"`` detects it).
        fpr: Pixel false-positive rate on the validation images that sets the threshold.
        segmentation_auroc: Also the ROC AUC of the post-processed segmentations (slower).
        progress: Progress bars during evaluation.
        verbose: Keras ``fit`` verbosity of the trainings.
        min_defect_area: Calibrate each export before evaluating it: write as a new version of
            it (``exported_models/<name>/2``, ``calibrated_from`` 1) the smallest threshold at
            which no region of the post-processed segmentation of any validation image exceeds
            this many pixels (:func:`tfssim.evaluation.calibration.calibrate`; MVTec AD's rule), and
            evaluate that version. A version calibrated from the export by the same rule and area
            before is reused (resuming). The evaluation's own scores are unchanged by it: its
            F1 / IoU threshold is set at ``fpr``, and ``export_threshold`` reports the stored one.

    Returns:
        An :class:`ExperimentResult`.

    Raises:
        ValueError: No experiments, repeated names, or bad settings of a training or export.
    """
    from tfssim.evaluation import evaluate
    from tfssim.evaluation.splits import load_split
    from tfssim.serving.inference import ExportedModel

    names = [e.name for e in experiments]
    if not names or len(set(names)) != len(names):
        raise InputError(f"experiments need distinct names, at least one; got {names}")
    output = Path(output)
    export_root = output / "exported_models"
    run_dirs: dict[str, Path] = {}
    exports: dict[str, Path] = {}
    for experiment in experiments:
        run_dir = output / "runs" / experiment.run_name
        if experiment.run_name not in {e.run_name for e in experiments[: experiments.index(experiment)]}:
            train_run(data, run_dir, experiment.train, verbose=verbose)
        run_dirs[experiment.name] = run_dir
        exports[experiment.name] = export_run(run_dir, export_root, experiment.name, **experiment.export)
    # Evaluated on the validation split the (first) model was trained with (tfssim-evaluate's
    # rule): its training images must not set the threshold (NanoTWICE's split is fixed).
    split, _, _ = load_split(data, [exports[name] for name in names], layout=layout)
    thresholds: dict[str, float] = {}
    if min_defect_area is not None:
        from tfssim.evaluation.calibration import calibrate

        for name in names:  # before the models are loaded below: they are the calibrated versions
            calibrated = _calibrated_before(exports[name], min_defect_area)
            if calibrated is None:
                result = calibrate(exports[name], list(split.val), min_defect_area=min_defect_area, progress=progress)
                calibrated = (result.path, result.threshold)
            exports[name], thresholds[name] = calibrated
    models = [ExportedModel.load(exports[name]) for name in names]
    evaluation_dir = Path(evaluation_dir) if evaluation_dir is not None else output / "evaluation"
    results = evaluate.evaluate(split, models, evaluation_dir, fpr=fpr, progress=progress,
                                  segmentation_auroc=segmentation_auroc)
    scores = {name: dict(result.scores) for name, result in zip(names, results)}
    return ExperimentResult(run_dirs, exports, scores, evaluation_dir, thresholds)
