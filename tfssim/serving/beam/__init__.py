"""Score an archive of images on Apache Beam: ``tfssim-predict --runner``.

The same run as :func:`tfssim.serving.prediction.predict_files` (the same checks before the first image,
the same per-image files, the same ``summary.json``), spread over the workers of a Beam runner:
the DirectRunner on one machine, or Flink, Spark or Dataflow where the images, the export and the
output folder lie on storage every worker reads and writes. The steps are
:class:`tfssim.serving.prediction.PredictionPlan`'s, so both paths write the same files.

This module imports without Apache Beam (``pip install 'tfssim[beam]'`` adds it); only
:func:`predict_with_beam` needs it, and says so in one line where it is missing.

Example:
    >>> from tfssim.serving.beam import predict_with_beam
    >>> from tfssim.serving.prediction import expand_inputs
    >>> summary = predict_with_beam("exported_models/nanotwice/2", expand_inputs(["scans/"]), "predictions",
    ...                             runner="DirectRunner",
    ...                             pipeline_args=["--direct_num_workers", "2", "--direct_running_mode",
    ...                                            "multi_processing"])
    >>> summary["failed"]
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from tfssim.errors import InputError

__all__ = ["BEAM_INSTALL", "PipelineFailed", "check_pipeline", "predict_with_beam", "require_beam"]

# The command that adds Apache Beam, named wherever it is missing.
BEAM_INSTALL = "pip install 'tfssim[beam]'"


class PipelineFailed(RuntimeError):
    """The Beam pipeline stopped with an error (a worker's exception, a runner failure); one line."""


def require_beam() -> None:
    """Check that Apache Beam imports.

    Raises:
        InputError: It is not installed (or does not import); the line names :data:`BEAM_INSTALL`.
    """
    import logging

    # Beam's import warns on the root logger that Google Cloud's BigQuery clients are missing, which
    # no tfssim pipeline uses; the first import is made without it.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import apache_beam  # noqa: F401
    except ImportError as err:
        raise InputError(f"--runner needs Apache Beam, which is not installed here ({err}); install it with "
                         f"{BEAM_INSTALL}") from None
    finally:
        logging.disable(previous)


def check_pipeline(runner: str, pipeline_args: Sequence[str] = ()) -> Any:
    """Check that Beam imports, that ``runner`` exists and that every pipeline option is known and well-formed.

    Returns:
        The ``apache_beam`` ``PipelineOptions`` to run with.

    Raises:
        InputError: One line saying what is wrong (naming :data:`BEAM_INSTALL` where Beam is missing).
    """
    require_beam()
    from tfssim.serving.beam import _pipeline

    return _pipeline.pipeline_options(runner, pipeline_args)


def predict_with_beam(
    export: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    runner: str,
    pipeline_args: Sequence[str] = (),
    threshold: float | None = None,
    mask_dir: str | os.PathLike | None = None,
    min_area: int | None = None,
    inputs: Sequence[str | os.PathLike] = (),
) -> dict[str, Any]:
    """Run an export on image files with an Apache Beam runner; write what ``predict_files`` writes.

    Before the pipeline starts, in this process: Beam is importable, the runner exists, every
    pipeline option is known and well-formed, the export and its metadata are readable, and the
    output folder passes :func:`tfssim.serving.prediction.PredictionPlan.create`'s checks (the same as
    the local path's). The folder is then held for this command (a second ``tfssim-predict``
    into it is refused, as the local path refuses it) until the pipeline ends. In the pipeline
    each worker loads the export once (``tfssim.serving.inference.ExportedModel``); each image is read
    once, scored, post-processed and written (atomically, all of its files or none); an image
    that cannot be read or is refused by the export is a recorded failure, the others go on;
    one last step writes ``summary.json``.

    Args:
        export: The export's version folder, or its model folder (newest version). On a runner
            with remote workers: a path every worker can read.
        paths: Image files (:func:`tfssim.serving.prediction.expand_inputs` turns folders and globs into these).
        output_dir: Folder for the results, created if missing; on remote workers, shared storage.
        runner: A Beam runner name (``DirectRunner``, ``FlinkRunner``, ``SparkRunner``,
            ``DataflowRunner``, ...).
        pipeline_args: Further Beam pipeline options, e.g. ``["--direct_num_workers", "2"]``.
        threshold, mask_dir, min_area, inputs: As :func:`tfssim.serving.prediction.predict_files`.

    Returns:
        The content of ``summary.json`` (:meth:`tfssim.serving.prediction.PredictionSummary.to_dict`).

    Raises:
        InputError: Beam missing, an unknown runner or pipeline option, a bad export, or an
            output folder that cannot be used; nothing is written.
        PipelineFailed: The pipeline stopped (e.g. a full disk on a worker); ``summary.json``
            then says ``interrupted`` and lists no image (the files of the images written
            before are whole).
    """
    from tfssim.export.layout import resolve_export_dir
    from tfssim.export.metadata import read_export_metadata
    from tfssim.serving.prediction import PredictionPlan

    options = check_pipeline(runner, pipeline_args)  # before anything is read or created
    from tfssim.serving.beam import _pipeline

    export_dir = resolve_export_dir(export)
    plan = PredictionPlan.create(export_dir, read_export_metadata(export_dir), paths, output_dir,
                                 threshold=threshold, mask_dir=mask_dir, min_area=min_area, inputs=inputs)
    return _pipeline.run(plan, options)
