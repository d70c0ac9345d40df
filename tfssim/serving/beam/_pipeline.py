"""The Beam pipeline of :func:`tfssim.serving.beam.predict_with_beam`; the one module importing ``apache_beam``.

Its DoFns and model handler are module-level classes, pickled by reference: a worker process
(the DirectRunner's ``multi_processing`` mode, a Flink or Spark task, a Dataflow VM) imports this
module and tfssim from its own installation.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options import pipeline_options as beam_options
from apache_beam.runners.runner import create_runner

from tfssim.errors import InputError
from tfssim.serving.beam import PipelineFailed
from tfssim.serving.inference import ServingTime
from tfssim.serving.prediction import (
    SUMMARY_FILE,
    ImageResult,
    PredictionPlan,
    failure_message,
    write_stopped_summary,
    write_summary,
)


@dataclasses.dataclass(frozen=True)
class _Image:
    """One image on its way through the pipeline: what each step added, or why it was skipped."""

    index: int
    path: Path
    image: np.ndarray | None = None
    gt: np.ndarray | None = None
    found: Path | None = None
    anomaly_map: np.ndarray | None = None
    failure: str | None = None
    serving: ServingTime | None = None  # the model call's time


@dataclasses.dataclass(frozen=True)
class _Record:
    """What the summary needs of one image: its result or its failure, and whether it had no mask."""

    index: int
    result: ImageResult | None = None
    failure: str | None = None
    without_mask: bool = False
    serving: ServingTime | None = None


class _Parser(beam_options._BeamArgumentParser):  # noqa: SLF001 - the parser Beam's own options are declared on
    """Beam's option parser, reporting a malformed option as an ``InputError`` instead of exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise InputError(f"bad Beam pipeline option: {message}; see your runner's pipeline options")


def pipeline_options(runner: str, args: Sequence[str]) -> beam_options.PipelineOptions:
    """The pipeline options for ``runner`` and ``args``, every one checked before anything runs.

    Beam itself drops an option it does not know with a logged warning, and exits the process
    on a malformed one; here both are one ``InputError``.

    Raises:
        InputError: An unknown runner (or one whose extra is missing), an unknown or malformed
            option, or ``--runner`` among ``args``.
    """
    args = list(args)
    if any(a == "--runner" or a.startswith("--runner=") for a in args):
        raise InputError("give the Beam runner once, with tfssim-predict's --runner, not among the pipeline options "
                         "after --")
    try:
        create_runner(runner)
    except (ValueError, ImportError) as err:
        raise InputError(f"cannot use the Beam runner {runner!r}: {str(err).splitlines()[0]}") from None
    parser = _Parser(allow_abbrev=False)
    # Every option class Beam knows (runners' included), as PipelineOptions.get_all_options gathers them.
    for cls in {str(c): c for c in beam_options.PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # noqa: SLF001
    _, unknown = parser.parse_known_args(args)
    if unknown:
        raise InputError(f"unknown Beam pipeline option(s): {' '.join(unknown)}; check them against your runner's "
                         "pipeline options")
    options = beam_options.PipelineOptions(args)
    options.view_as(beam_options.StandardOptions).runner = runner
    workers = options.view_as(beam_options.WorkerOptions)
    if workers.default_sdk_harness_log_level is None:
        # Worker processes log every bundle at INFO; their errors reach this process as the pipeline's.
        workers.default_sdk_harness_log_level = "ERROR"
    return options


class _Read(beam.DoFn):
    """Path index -> the image and its mask, each read once (the package's reader, the run's pixel budget)."""

    def __init__(self, plan: PredictionPlan) -> None:
        self._plan = plan

    def process(self, index: int) -> Iterator[_Image]:
        path = self._plan.paths[index]
        try:
            image, gt, found = self._plan.read(path)
        except (ValueError, OSError, MemoryError) as err:
            yield _Image(index, path, failure=failure_message(path, err))
            return
        yield _Image(index, path, image, gt, found)


class ExportHandler(ModelHandler):
    """A Beam ``ModelHandler`` serving a tfssim export: loaded once per worker, one image a call.

    Beam's own TensorFlow handler imports ``tensorflow_hub``; this one needs tfssim alone. The
    examples are the pipeline's images; an example's inference is its anomaly map, or ``None``
    where it was skipped before or the export refused it (the example then carries the reason).

    Args:
        export: The export's version folder (on a path every worker reads).
    """

    def __init__(self, export: str) -> None:
        # One image a call: images differ in size, and a batch would hold several in memory at once.
        super().__init__(min_batch_size=1, max_batch_size=1)
        self._export = export

    def load_model(self) -> Any:
        from tfssim.serving.inference import ExportedModel

        return ExportedModel.load(self._export)

    def run_inference(self, batch: Sequence[_Image], model: Any,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        return [self._score(item, model) for item in batch]

    @staticmethod
    def _score(item: _Image, model: Any) -> PredictionResult:
        if item.failure is not None:
            return PredictionResult(item, None)
        clock = ServingTime()
        try:  # the failures of the local path's model call: this image's, the others go on
            anomaly_map = clock.predict(model, item.image, source=item.path)["anomaly_map"]
        except (ValueError, OSError, MemoryError) as err:
            return PredictionResult(dataclasses.replace(item, failure=failure_message(item.path, err)), None)
        return PredictionResult(dataclasses.replace(item, serving=clock), anomaly_map)

    def get_num_bytes(self, batch: Sequence[_Image]) -> int:
        # Beam's default pickles the batch to measure it, a second copy of every image in memory.
        return sum(item.image.nbytes for item in batch if item.image is not None)

    def get_metrics_namespace(self) -> str:
        return "tfssim"


class _SegmentAndWrite(beam.DoFn):
    """Scored image -> its mask and regions (the TF-free post-processor) -> its files -> a summary record."""

    def __init__(self, plan: PredictionPlan) -> None:
        self._plan = plan

    def process(self, scored: PredictionResult) -> Iterator[_Record]:
        item, anomaly_map = scored.example, scored.inference
        without_mask = self._plan.masks is not None and item.image is not None and item.found is None
        if item.failure is not None:
            yield _Record(item.index, failure=item.failure, without_mask=without_mask)
            return
        try:
            mask, regions = self._plan.segment(anomaly_map)
        except (ValueError, OSError, MemoryError) as err:
            yield _Record(item.index, failure=failure_message(item.path, err), without_mask=without_mask,
                          serving=item.serving)
            return
        # A write failure (e.g. a full disk) fails the pipeline, as it stops the local run.
        result = self._plan.write(item.path, self._plan.stems[item.index], item.image, anomaly_map, mask, regions,
                                  item.gt, item.found)
        yield _Record(item.index, result=result, without_mask=without_mask, serving=item.serving)


def _write_summary(records: list[_Record], plan: PredictionPlan) -> None:
    """The records of every image -> ``summary.json``, in input order (as the local path lists them)."""
    summary = plan.summary()
    for record in sorted(records, key=lambda r: r.index):
        if record.result is not None:
            summary.results.append(record.result)
        else:
            summary.failures.append(record.failure)
        if record.without_mask:
            summary.images_without_mask += 1
        if record.serving is not None:
            summary.serving.add(record.serving)
    write_summary(summary)


def build(pipeline: beam.Pipeline, plan: PredictionPlan) -> None:
    """Add the scoring steps for ``plan`` to ``pipeline``."""
    _ = (pipeline
         # The paths were matched before the pipeline (tfssim.serving.prediction.expand_inputs): the output
         # names and folder checks need all of them, and a folder or glob means what it means locally.
         | "Match files" >> beam.Create(range(len(plan.paths)))
         | "Read" >> beam.ParDo(_Read(plan))
         | "Score" >> RunInference(ExportHandler(str(plan.export)))
         | "Post-process and write" >> beam.ParDo(_SegmentAndWrite(plan))
         | "Gather" >> beam.combiners.ToList()
         | "Write summary" >> beam.Map(_write_summary, plan))


def run(plan: PredictionPlan, options: beam_options.PipelineOptions) -> dict[str, Any]:
    """Run the pipeline for ``plan`` with the output folder held; return ``summary.json``'s content.

    Raises:
        PipelineFailed: The pipeline failed; ``summary.json`` says ``interrupted``.
    """
    from tfssim._io import output_dir_lock

    summary_file = plan.output_dir / SUMMARY_FILE
    with output_dir_lock(plan.output_dir, "tfssim-predict"):  # one command at a time writes the folder
        try:
            pipeline = beam.Pipeline(options=options)
            build(pipeline, plan)
            pipeline.run().wait_until_finish()
        except BaseException as err:
            # Which images were written is unknown here: the summary lists none.
            write_stopped_summary(plan.summary(), err, _last_line(err))
            if isinstance(err, (KeyboardInterrupt, InputError)):
                raise
            raise PipelineFailed(f"the Beam pipeline failed: {_last_line(err)}") from err
        return json.loads(summary_file.read_text(encoding="utf-8"))


def _last_line(err: BaseException) -> str:
    """The useful line of a runner's error: a worker's exception arrives as a whole traceback in one message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    exceptions = [line for line in lines if ": " in line and line.split(":", 1)[0].split(".")[-1].endswith(
        ("Error", "Exception", "Interrupt"))]
    return (exceptions or lines or [type(err).__name__])[-1]
