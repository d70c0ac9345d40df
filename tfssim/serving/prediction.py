"""Run an export on image files and write, per image, the anomaly map, mask, overlay and region table.

The library behind ``tfssim-predict`` (which is a thin wrapper around :func:`predict_files`), for
scripts that inspect folders of images without going through the command line.

The input expansion, the output names and the per-image writes are the three steps of one
file-to-files job whose rules (no input overwritten, one distinct output name per input) hold
only together. :class:`PredictionPlan` holds those rules
for one run; :func:`predict_files` runs it in this process, :mod:`tfssim.serving.beam` on an
Apache Beam runner, both through the same read, segment and write steps.

Example:
    >>> from tfssim.serving.inference import ExportedModel
    >>> from tfssim.serving.prediction import expand_inputs, predict_files
    >>> model = ExportedModel.load("exported_models/nanotwice/1")   # threshold set by tfssim-calibrate
    >>> summary = predict_files(model, expand_inputs(["images/*.tif"]), "predictions", mask_dir="gt")
    >>> [r.path.name for r in summary.results if r.defect], summary.failures
"""
from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from tfssim._io import atomic_write, atomic_write_json, output_dir_lock, prepare_output_dir
from tfssim.errors import InputError
from tfssim.export.metadata import ExportMetadata
from tfssim.serving.inference import ExportedModel, ServingTime
from tfssim.serving.postprocess import PostProcessor

__all__ = [
    "OUTPUT_SUFFIXES", "SUMMARY_FILE", "ImageResult", "PredictionPlan", "PredictionSummary", "expand_inputs",
    "failure_message", "output_stems", "predict_files", "speed_line",
    "write_stopped_summary", "write_summary",
]

# The run's record, written last (also when the run stops early): a folder holding one was a run's output.
SUMMARY_FILE = "summary.json"


# The files written per image, as ``<stem><suffix>`` in the output folder, by kind.
OUTPUT_SUFFIXES = {
    "anomaly_map_tif": "_anomaly_map.tif",
    "anomaly_map_png": "_anomaly_map.png",
    "mask": "_mask.png",
    "overlay": "_overlay.png",
    "regions": "_regions.json",
}


@dataclass
class ImageResult:
    """What :func:`predict_files` found and wrote for one image.

    Attributes:
        path: The input image.
        stem: Prefix of its output files (see :func:`output_stems`).
        regions: The region table (``tfssim.serving.postprocess.region_table`` rows), as in ``<stem>_regions.json``.
        max_score: Maximum of the anomaly map.
        files: Paths of the files written, keyed as :data:`OUTPUT_SUFFIXES`.
        ground_truth: The mask file drawn on the overlay, or ``None``.
    """

    path: Path
    stem: str
    regions: list[dict[str, Any]]
    max_score: float
    files: dict[str, Path]
    ground_truth: Path | None = None

    @property
    def defect(self) -> bool:
        """Whether the post-processed segmentation has at least one region."""
        return bool(self.regions)

    def summary_line(self) -> str:
        """``name: DEFECT|ok  regions N  max score S`` (the full path where the stem was renamed)."""
        label = self.path.name if self.stem == self.path.stem else str(self.path)
        return (f"{label}: {'DEFECT' if self.regions else 'ok'}  regions {len(self.regions)}  "
                f"max score {self.max_score:.4f}")


@dataclass
class PredictionSummary:
    """The outcome of :func:`predict_files`.

    Attributes:
        export: Version folder of the export that made the maps.
        threshold: Score threshold of the segmentation.
        output_dir: Folder holding the per-image files and ``summary.json``.
        images: Number of input images (processed and failed).
        results: One :class:`ImageResult` per processed image, in input order.
        failures: One message per skipped image (unreadable, refused by the export, bad mask).
        images_without_mask: Processed images with no ground-truth mask in ``mask_dir``;
            ``None`` when no ``mask_dir`` was given.
        postprocess: The segmentation settings used (``PostProcessor.to_dict``: threshold,
            opening_diameter, convex_hull, min_area).
        interrupted: Whether the run stopped before the last image (Ctrl-C, or an error
            writing the results); ``results`` then holds the images completed before it.
        error: What stopped it (``"KeyboardInterrupt"`` or the write error), else ``None``.
        stride: The tiling stride the export served at (its default).
        serving: Time in the export's graph and megapixels scored
            (:class:`tfssim.serving.inference.ServingTime`); ``summary.json`` has ``seconds_per_megapixel``.
    """

    export: Path
    threshold: float
    output_dir: Path
    images: int
    results: list[ImageResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    images_without_mask: int | None = None
    postprocess: dict[str, Any] | None = None
    interrupted: bool = False
    error: str | None = None
    stride: int | None = None
    serving: ServingTime = field(default_factory=ServingTime)

    @property
    def ok(self) -> bool:
        """Whether every image was processed."""
        return not self.failures and not self.interrupted

    def to_dict(self) -> dict[str, Any]:
        """The content of ``summary.json``: ``processed`` lists the input images whose results were
        written, ``failed`` one message per skipped image, ``interrupted`` / ``error`` whether and
        why the run stopped early."""
        return {"export": str(self.export), "threshold": self.threshold, "images": self.images,
                "processed": [str(r.path) for r in self.results], "failed": list(self.failures),
                "images_without_mask": self.images_without_mask, "postprocess": self.postprocess,
                "interrupted": self.interrupted, "error": self.error, "stride": self.stride,
                "seconds_per_megapixel": self.serving.seconds_per_megapixel}


def speed_line(summary: dict[str, Any]) -> str | None:
    """``0.62 s per megapixel in the export's graph at stride 30`` from ``summary.json``'s content
    (:meth:`PredictionSummary.to_dict`); ``None`` where no image was scored."""
    if summary.get("seconds_per_megapixel") is None:
        return None
    return f"{summary['seconds_per_megapixel']:.3g} s per megapixel in the export's graph at stride {summary['stride']}" \
        " (over every image, the graph's start-up included)"


def no_threshold_message(export: str | os.PathLike, alternative: str) -> str:
    """The one line for an export without a threshold: the version calibrated from it when there
    is one (``tfssim-calibrate`` writes the threshold as a new version), else how to calibrate.

    Args:
        export: The version folder that has no threshold.
        alternative: The other way out, e.g. ``"or pass --threshold"``.
    """
    from tfssim.export.metadata import calibrated_versions

    calibrated = calibrated_versions(export)
    if calibrated:
        return (f"export {export} has no calibrated threshold, but {calibrated[0]} was calibrated from it "
                f"(tfssim-calibrate writes the threshold as a new version): use that one, {alternative}")
    return f"export {export} has no calibrated threshold; run tfssim-calibrate on defect-free images first {alternative}"


def expand_inputs(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Files, folders (their images) and glob patterns -> a sorted, de-duplicated list of paths.

    Args:
        items: Image files, folders (the entries directly in them named like images, see
            ``tfssim.data.IMAGE_SUFFIXES``, except folders; broken links are kept and fail as
            images) and glob patterns (``*``, ``?``, ``[``). A path that exists is taken as
            it is, also when its name holds those characters; only one that does not exist
            is expanded as a pattern.

    Returns:
        The paths in the order of ``items`` (each folder's and pattern's matches sorted), each once.

    Raises:
        FileNotFoundError: A pattern matches nothing, or a path given by name does not exist
            (or is a broken link).
        ValueError: No image was found at all, or a folder cannot be listed.

    Example:
        >>> expand_inputs(["scans/", "extra/*.tif", "one.png"])
    """
    from tfssim.data import IMAGE_SUFFIXES

    items = [os.fspath(item) for item in items]
    paths: list[Path] = []
    for item in items:
        # A path that exists is that file or folder, whatever its name holds ("a[1].png" is
        # not the pattern matching "a1.png"); only a path that does not exist is a pattern.
        pattern = any(c in item for c in "*?[") and not os.path.lexists(item)
        matches = [Path(m) for m in sorted(glob.glob(_pattern_of(item)))] if pattern else [Path(item)]
        if not matches:
            raise FileNotFoundError(f"no file matches {item!r}")
        for path in matches:
            if path.is_dir():
                try:
                    entries = sorted(path.iterdir())
                except OSError as err:
                    raise InputError(f"cannot list folder {path}: {err.strerror or type(err).__name__}") from None
                # Everything named like an image except folders: a broken link, a link loop or a
                # file that vanishes before it is read is that image's failure, reported with it.
                paths.extend(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            elif path.exists() or (pattern and path.is_symlink()):
                paths.append(path)  # a broken link a pattern matched: reported as that image's failure
            elif path.is_symlink():
                raise FileNotFoundError(f"{path} is a broken symbolic link (its target is missing or it loops)")
            else:
                raise FileNotFoundError(f"{path} does not exist")
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise InputError("no images found in " + ", ".join(items))
    return unique


def _pattern_of(item: str) -> str:
    """The glob pattern of ``item`` with its longest existing leading folder taken literally.

    ``runs[1]/*.png`` with a folder ``runs[1]`` matches the PNGs in that folder, not those in
    ``runs1/`` (the rule of :func:`expand_inputs`: what exists is taken as it is).
    """
    head, rest = item, []
    while head and not os.path.lexists(head):
        parent, tail = os.path.split(head)
        if parent == head:  # the root itself does not exist: nothing literal
            break
        head = parent
        rest.append(tail)
    if not head or not rest:
        return item
    return os.path.join(glob.escape(head), *reversed(rest))


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A distinct output name per image: its stem, prefixed by its folder's name where stems collide.

    Args:
        paths: The images.

    Returns:
        One name per path, e.g. ``["a_x", "b_x", "y"]`` for ``a/x.png, b/x.png, c/y.png``; a
        further ``_2``, ``_3``, ... keeps names distinct where folder names collide too.
    """
    paths = [Path(p) for p in paths]
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


def _save_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, array.astype(np.float32)))


def _save_png(path: Path, array: np.ndarray) -> None:
    from skimage import io

    atomic_write(path, lambda tmp: io.imsave(tmp, array, check_contrast=False))


def failure_message(path: str | os.PathLike, err: BaseException) -> str:
    """The line recorded for an image that was skipped: the error, prefixed by the path unless it names it."""
    return str(err) if str(path) in str(err) else f"{path}: {err}"


@dataclass(frozen=True)
class PredictionPlan:
    """What a prediction run fixed and checked before its first image, and the per-image steps.

    The one implementation of a run's rules, shared by :func:`predict_files` (one process) and
    :mod:`tfssim.serving.beam` (an Apache Beam pipeline, whose workers receive this object
    pickled): the output folder and names, the segmentation settings, the pixel budget, reading
    an image and its mask, writing its files, and the summary. It holds no TensorFlow object.

    Attributes:
        export: Version folder of the export.
        channels: Channels the export takes.
        output_dir: The checked, created output folder.
        paths: The images, in input order.
        stems: Their output names (:func:`output_stems`), one per path.
        processor: The segmentation settings (``tfssim.serving.postprocess.PostProcessor``).
        max_pixels: The pixel budget of the image reader, fixed when the run started (workers of
            a distributed run may not see the caller's environment).
        masks: Folder of ground-truth masks, or ``None``.
        mask_index: Its images by stem (``tfssim.data.mask_index``), listed once.

    Example:
        >>> plan = PredictionPlan.create(model.path, model.metadata, paths, "out", threshold=0.3)
        >>> image, gt, found = plan.read(plan.paths[0])
        >>> anomaly_map = model.predict(image)["anomaly_map"]
        >>> result = plan.write(plan.paths[0], plan.stems[0], image, anomaly_map, *plan.segment(anomaly_map))
    """

    export: Path
    channels: int
    output_dir: Path
    paths: tuple[Path, ...]
    stems: tuple[str, ...]
    processor: PostProcessor
    max_pixels: int
    masks: Path | None = None
    mask_index: dict[str, Path] = field(default_factory=dict)
    stride: int | None = None

    @classmethod
    def create(cls, export: str | os.PathLike, metadata: ExportMetadata, paths: Sequence[str | os.PathLike],
               output_dir: str | os.PathLike, *, threshold: float | None = None,
               mask_dir: str | os.PathLike | None = None, min_area: int | None = None,
               inputs: Sequence[str | os.PathLike] = ()) -> "PredictionPlan":
        """Check everything that can be checked before the first image, and create the output folder.

        Args:
            export: The export's version folder.
            metadata: Its metadata (``ExportedModel.metadata`` or ``tfssim.export.metadata.read_export_metadata``'s).
            paths, output_dir, threshold, mask_dir, min_area, inputs: As :func:`predict_files`.

        Returns:
            The plan.

        Raises:
            ValueError: As :func:`predict_files`: no threshold, a negative ``min_area``, a malformed
                ``TFSSIM_MAX_IMAGE_PIXELS``, an output folder that cannot be used.
            FileNotFoundError: ``mask_dir`` is not a folder.
        """
        from tfssim import data
        from tfssim.data.io import max_image_pixels
        export = Path(export)
        if threshold is None and metadata.threshold is None:
            raise InputError(no_threshold_message(export, "or pass a threshold"))
        if min_area is not None and min_area < 0:
            raise InputError(f"min_area must be >= 0, got {min_area}")
        budget = max_image_pixels()  # a malformed TFSSIM_MAX_IMAGE_PIXELS is one error now, not one per image
        masks = Path(mask_dir) if mask_dir is not None else None
        if masks is not None and not masks.is_dir():
            raise FileNotFoundError(f"mask folder {masks} does not exist or is not a folder")
        index = data.mask_index(masks) if masks is not None else {}
        paths = [Path(p) for p in paths]
        processor = PostProcessor.from_metadata(metadata, threshold=threshold, min_area=min_area)
        # Every output-side problem before the first image: never beside an input, nor in the folders they
        # came from, the masks, the export or its model folder (a numbered folder there would be a version).
        out = prepare_output_dir(output_dir, [*paths, *inputs, export, export.parent], masks=masks)
        if (out / SUMMARY_FILE).exists():  # an earlier run's results: never written over
            raise InputError(f"{out / SUMMARY_FILE} exists: {out} holds the results of an earlier prediction, which "
                             "are never overwritten; choose another output folder")
        stems = output_stems(paths)
        blocked = [out / f"{stem}{suffix}" for stem in stems for suffix in OUTPUT_SUFFIXES.values()
                   if (out / f"{stem}{suffix}").is_dir()]
        if blocked:
            raise InputError(f"{blocked[0]} is a folder where a result file goes; move it away or choose another "
                             "output folder")
        return cls(export, metadata.channels, out, tuple(paths), tuple(stems), processor, budget, masks,
                   index, metadata.stride)

    def read(self, path: Path) -> tuple[np.ndarray, np.ndarray | None, Path | None]:
        """Read one image and its ground-truth mask (each file once).

        Returns:
            The image, its mask (``None`` without one) and the mask's file (``None`` where
            ``masks`` has none for it, or no ``masks`` was given).

        Raises:
            ValueError, OSError: The image or its mask cannot be read (this image's failure).
        """
        from tfssim import data

        image = data.read_image(path, self.channels, max_pixels=self.max_pixels)
        found = data.find_mask(self.masks, path, self.mask_index) if self.masks is not None else None
        gt = data.read_mask(found, shape=image.shape[:2], max_pixels=self.max_pixels) if found is not None else None
        return image, gt, found

    def segment(self, anomaly_map: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The mask and region table of one map (``processor``), refusing a map with NaN or infinite scores.

        Raises:
            InputError: The map is not finite (this image's failure).
        """
        if not np.isfinite(anomaly_map).all():
            raise InputError("the export produced NaN or infinite scores for this image; the model is "
                             "broken (retrain or re-export it)")
        return self.processor(anomaly_map)

    def write(self, path: Path, stem: str, image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray,
              regions: list[dict[str, Any]], gt: np.ndarray | None = None, found: Path | None = None) -> ImageResult:
        """Write one image's files (:data:`OUTPUT_SUFFIXES`) atomically, all or none.

        Args:
            path: The input image.
            stem: Its output name.
            image: The image as read.
            anomaly_map: Its map.
            mask, regions: :meth:`segment` of the map.
            gt, found: Its ground-truth mask and the mask's file, if any (drawn on the overlay).

        Returns:
            What was written.

        Raises:
            OSError: A write failed (e.g. a full disk); the files of this image written so far are
                removed, so that no image is left with part of its results. So is ``KeyboardInterrupt``.
        """
        from tfssim import plots
        from tfssim.serving import postprocess

        files = {kind: self.output_dir / f"{stem}{suffix}" for kind, suffix in OUTPUT_SUFFIXES.items()}
        try:
            _save_tiff(files["anomaly_map_tif"], anomaly_map)
            plots.plot_anomaly_map(image, anomaly_map, files["anomaly_map_png"])
            _save_png(files["mask"], (mask * 255).astype(np.uint8))
            plots.plot_overlay(image, mask, gt, files["overlay"])
            postprocess.regions_to_json(regions, files["regions"])
        except BaseException:
            for file in files.values():
                try:
                    file.unlink(missing_ok=True)
                except OSError:
                    pass
            raise
        return ImageResult(Path(path), stem, regions, float(anomaly_map.max()), files, found)

    def summary(self) -> PredictionSummary:
        """An empty :class:`PredictionSummary` of this run, to which results and failures are added."""
        return PredictionSummary(self.export, self.processor.threshold, self.output_dir, len(self.paths),
                                 images_without_mask=0 if self.masks is not None else None,
                                 postprocess=self.processor.to_dict(), stride=self.stride)


def predict_files(
    model: ExportedModel,
    paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    threshold: float | None = None,
    mask_dir: str | os.PathLike | None = None,
    min_area: int | None = None,
    progress: bool = True,
    inputs: Sequence[str | os.PathLike] = (),
) -> PredictionSummary:
    """Run ``model`` on image files and write the per-image results and ``summary.json``.

    For each image ``<stem>`` (see :func:`output_stems`) the output folder gets the anomaly
    map as float32 TIFF (``<stem>_anomaly_map.tif``) and as a PNG beside the input with a colour
    bar (``<stem>_anomaly_map.png``), the binary segmentation (``<stem>_mask.png``: threshold,
    opening, convex hulls, minimum area, as the export's metadata sets them —
    ``tfssim.serving.postprocess.PostProcessor.from_metadata``, the settings serving users read), an overlay (segmentation
    green, ground-truth contours red; ``<stem>_overlay.png``) and the region table
    (``<stem>_regions.json``). An image that cannot be read, that the export refuses (e.g.
    smaller than the patch) or whose mask cannot be read is skipped and recorded in
    ``failures``; the others are still processed. Every file is written atomically (temporary
    name, then ``os.replace``).

    Args:
        model: The loaded export.
        paths: Image files (:func:`expand_inputs` turns folders and globs into these).
        output_dir: Folder for the results; created if missing.
        threshold: Score threshold; default: the one calibrated into the export.
        mask_dir: Folder of ground-truth masks, drawn on the overlays: ``<stem>_gt``, ``<stem>`` or
            ``<stem>_mask`` with any image extension (``tfssim.data.MASK_SUFFIXES``, the names
            every dataset loader looks for; :func:`tfssim.data.find_mask`).
        min_area: Drop regions smaller than this many pixels; default: the export metadata's
            ``min_area`` (0 where it has none). Opening and convex hulls always follow the metadata.
        progress: Show a progress bar and print one summary line per image on stdout (warnings
            and skipped images on stderr), as ``tfssim-predict`` does; ``False`` prints nothing
            (everything is in the returned summary).
        inputs: The folders ``paths`` were listed from (``tfssim-predict``'s arguments): the
            output folder may not lie inside them either (:func:`tfssim._io.prepare_output_dir`).

    Returns:
        A :class:`PredictionSummary`; ``summary.json`` in ``output_dir`` holds its :meth:`~PredictionSummary.to_dict`.

    Raises:
        ValueError: No ``threshold`` given and the export has none, a threshold that is not a
            finite number, ``min_area`` negative, or an output folder that cannot be used
            (:func:`prepare_output_dir`; checked before any image is read).
        FileNotFoundError: ``mask_dir`` is not a folder.
        OSError: Writing a result failed (e.g. a full disk); the image being written has no
            files left, ``summary.json`` (``interrupted``, ``error``) lists what was done.
        KeyboardInterrupt: Ctrl-C; handled as a write failure.

    Example:
        >>> summary = predict_files(model, ["a.png", "b.png"], "out", threshold=0.3, progress=False)
        >>> summary.failures, [(r.stem, r.defect, r.max_score) for r in summary.results]
    """
    from tqdm.auto import tqdm

    from tfssim import data

    plan = PredictionPlan.create(model.path, model.metadata, paths, output_dir, threshold=threshold,
                                 mask_dir=mask_dir, min_area=min_area, inputs=inputs)
    out = plan.output_dir
    summary = plan.summary()

    def say(line: str, err: bool = False) -> None:
        if progress:
            tqdm.write(line, file=sys.stderr if err else None)

    with output_dir_lock(out, "tfssim-predict"):  # one command at a time writes the folder
        try:
            for path, stem in tqdm(list(zip(plan.paths, plan.stems)), desc="predict", unit="img",
                                   disable=None if progress else True):
                # Reading and scoring: any failure is this image's (unreadable, over the pixel budget,
                # gone since listing, refused by the export, out of memory); the others go on.
                try:
                    image, gt, found = plan.read(path)
                    if plan.masks is not None and found is None:
                        summary.images_without_mask += 1
                        say(f"warning: no ground-truth mask for {path} in {mask_dir} (looked for "
                            f"{data.mask_names(path)})", err=True)
                    anomaly_map = summary.serving.predict(model, image, source=path)["anomaly_map"]
                    mask, regions = plan.segment(anomaly_map)
                except (ValueError, OSError, MemoryError) as err:
                    message = failure_message(path, err)
                    summary.failures.append(message)
                    say(f"skipped {message}", err=True)
                    continue
                # Writing: a failure here (disk full, Ctrl-C) stops the run; this image's files go,
                # so that no image is left with part of its results.
                result = plan.write(path, stem, image, anomaly_map, mask, regions, gt, found)
                summary.results.append(result)
                say(result.summary_line())
        except BaseException as err:
            write_stopped_summary(summary, err)  # summary.json still says what was done
            raise
        write_summary(summary)
        return summary


def write_summary(summary: PredictionSummary) -> Path:
    """Write ``summary.json`` (:meth:`PredictionSummary.to_dict`) into the summary's output folder, atomically."""
    return atomic_write_json(summary.output_dir / SUMMARY_FILE, summary.to_dict())


def write_stopped_summary(summary: PredictionSummary, err: BaseException, reason: str | None = None) -> None:
    """Best effort (the disk may be full): ``summary.json`` saying the run stopped early and why.

    Args:
        summary: What was done so far.
        err: What stopped the run (``KeyboardInterrupt`` is recorded by its name).
        reason: The error's line to record; default ``str(err)``.
    """
    summary.interrupted = True
    summary.error = type(err).__name__ if isinstance(err, KeyboardInterrupt) else \
        f"{type(err).__name__}: {str(err) if reason is None else reason}"
    try:
        write_summary(summary)
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass
