"""What every tfssim command shares: logging set-up and turning library errors into clean exits."""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

import click

from tfssim._io import machine_errno
from tfssim.errors import InputError


class _StderrHandler(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record is written, not when it was made.

    click's ``CliRunner`` swaps ``sys.stderr`` for a capture stream during each invocation and
    closes it afterwards: a handler holding that stream would fail ("--- Logging error ---") on
    every later record.
    """

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__/setStream assign it: ignored
        pass


def setup_logging(verbose: bool = False) -> None:
    """Plain ``HH:MM:SS message`` lines on stderr; TensorFlow's C++ chatter silenced.

    Calling it again replaces its own handler (no duplicate lines) and leaves other handlers alone.

    Args:
        verbose: Debug-level lines, and TensorFlow's C++ start-up lines (absl's "All log
            messages before absl::InitializeLog()", oneDNN's "custom operations are on") left
            as they are.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
    if not verbose:
        _quiet_tensorflow_import()
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL", "tifffile"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Apache Beam (tfssim-predict --runner) logs every stage, and warns on import about Google Cloud
    # clients it may use; a failed pipeline reaches the command as an exception.
    logging.getLogger("apache_beam").setLevel(logging.DEBUG if verbose else logging.ERROR)


# Lines TensorFlow's shared libraries print through absl while ``import tensorflow`` runs, before
# anything can call absl::InitializeLog(): absl then writes every message to fd 2 whatever
# TF_CPP_MIN_LOG_LEVEL says (measured with TF 2.21: the variable hides cpu_feature_guard's line
# but not these). They are information only; every other line of the import is passed on.
_IMPORT_CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:. ]+\d+ \S+:\d+\] .*)$"
)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as usual, then runs its first import with fd 2 captured and filtered.

    The import stays lazy (a command that stops at bad input never loads TensorFlow); whoever
    imports it first (Keras, tfssim.training, a click callback) goes through here once.
    """

    def __init__(self) -> None:
        self._looking = False

    def find_spec(self, name, path=None, target=None):  # type: ignore[override]
        if name != "tensorflow" or self._looking:
            return None
        self._looking = True  # the lookup below goes through sys.meta_path, this finder included
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._looking = False
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader, self)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, finder: _QuietTensorFlowFinder) -> None:
        self._loader, self._finder = loader, finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        if self._finder in sys.meta_path:  # TensorFlow is imported once; later imports are plain
            sys.meta_path.remove(self._finder)
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                self._loader.exec_module(module)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                # The module keeps the real loader (its resource reader, reload) as if imported plainly.
                module.__loader__ = self._loader
                if getattr(module, "__spec__", None) is not None:
                    module.__spec__.loader = self._loader
                captured.seek(0)
                kept = [line for line in captured.read().decode(errors="replace").splitlines()
                        if not _IMPORT_CHATTER.match(line)]
                if kept:  # warnings and errors of the import are the user's to see
                    sys.stderr.write("\n".join(kept) + "\n")
                    sys.stderr.flush()


def _quiet_tensorflow_import() -> None:
    """Filter absl's start-up lines out of the (first, still lazy) ``import tensorflow``."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        return
    try:
        os.fstat(2)
    except OSError:  # no fd 2 to capture (a daemon): nothing to filter either
        return
    sys.meta_path.insert(0, _QuietTensorFlowFinder())


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Report bad input (:class:`tfssim.errors.InputError`) or an ``OSError`` as one ``Error:`` line.

    tfssim's own input checks (``InputError``, ``FileNotFoundError``/``FileExistsError`` raised
    with a message) are printed as they are and exit 2 (bad input); an operating-system error
    (e.g. ``PermissionError`` creating ``--output``) becomes one line naming the path and the
    reason, exit 2. A full disk or an I/O error is no fault of the input: it exits 1 (failed at
    run time), and the line says to free space and run again. Any other exception, a plain
    ``ValueError`` from inside Keras or TensorFlow included, is a fault of the program: it
    passes through with its traceback (exit 1).
    """
    try:
        yield
    except InputError as err:
        raise click.UsageError(str(err)) from None
    except OSError as err:
        if machine_errno(err) is not None:
            raise click.ClickException(_runtime_os_error_line(err.strerror or type(err).__name__, err.filename)) from None
        raise click.UsageError(_os_error_line(err)) from None
    except Exception as err:
        # TensorFlow's own file I/O (SavedModel, TensorBoard) reports a full disk as an OpError.
        if type(err).__module__.startswith("tensorflow") and machine_errno(err) is not None:
            raise click.ClickException(_runtime_os_error_line(str(err).strip().splitlines()[0], None)) from None
        raise


class Command(click.Command):
    """A tfssim command: Ctrl-C is one ``Interrupted:`` line and exit status 130 (the shell's convention).

    click's own handling prints ``Aborted!`` and exits 1, the status of a failure, so a script
    running the command cannot tell an interrupt from a crash. ``interrupted`` says what was left
    behind (every tfssim write is atomic: a file is whole or absent).

    Example:
        >>> @click.command(cls=Command, interrupted="no new version was written")
        ... def main() -> None: ...
    """

    def __init__(self, *args, interrupted: str = "files are written atomically: each is whole or absent",
                 **kwargs) -> None:
        kwargs["context_settings"] = {"help_option_names": ["-h", "--help"], "show_default": True,
                                      **(kwargs.get("context_settings") or {})}
        super().__init__(*args, **kwargs)
        self.interrupted = interrupted

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as err:
            err.message = _one_line(err.message)
            raise

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo(f"Interrupted: {self.interrupted}", err=True)
            raise click.exceptions.Exit(130) from None
        except click.ClickException as err:
            # One line, whatever a path or a value in the message holds (a file name may hold a newline).
            err.message = _one_line(err.message)
            raise


def _one_line(text: str) -> str:
    """``text`` with every character that is not printable escaped as Python writes it (``\\n``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class MissingTensorFlowError(click.ClickException):
    """TensorFlow is not installed (or does not import): one ``Error:`` line, exit status 2."""

    exit_code = 2


@contextlib.contextmanager
def tensorflow_required() -> Iterator[None]:
    """Turn a failed ``import tensorflow`` into one line naming the install command, exit 2.

    ``pip install tfssim`` installs no TensorFlow (the user picks ``[cpu]`` or ``[gpu]``). Used as
    a decorator on a command's ``main`` (under the click decorators) or around a callback that
    imports TensorFlow; the import stays lazy, so ``--help`` works without TensorFlow. Other
    import errors pass through.

    Example:
        >>> @click.command()
        ... @tensorflow_required()
        ... def main() -> None:
        ...     from tfssim.training import train
    """
    import importlib.util

    from tfssim._requirements import is_tensorflow_import_error, tensorflow_message

    try:
        # Checked up front without importing it (cheap), so that a missing TensorFlow is what the
        # user hears first, not a complaint about an input the command could not have used anyway.
        if importlib.util.find_spec("tensorflow") is None:
            raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
        yield
    except ImportError as err:
        if not is_tensorflow_import_error(err):
            raise
        raise MissingTensorFlowError(tensorflow_message(err)) from None


def _runtime_os_error_line(reason: str, filename: object) -> str:
    where = "" if filename is None else f" ({os.fspath(filename)!r})"
    return (f"{reason}{where}; free disk space (or fix the device) and run the command again: files are written "
            "atomically (complete or absent), and tfssim-train continues an interrupted run with --resume")


def _os_error_line(err: OSError) -> str:
    if err.filename is None:
        return str(err)
    paths = repr(os.fspath(err.filename)) if err.filename2 is None else (
        f"{os.fspath(err.filename)!r} -> {os.fspath(err.filename2)!r}")
    reason = err.strerror or type(err).__name__
    return (f"cannot use {paths}: {reason}; check that the path is right, that its parent folders exist and are "
            "folders, and that you may write there")


class FloatRange(click.FloatRange):
    """click's ``FloatRange`` that also refuses NaN (which passes every comparison of a range) and
    infinities outside an open-ended range's reach: every float option of a tfssim command."""

    def convert(self, value, param, ctx):  # type: ignore[override]
        number = super().convert(value, param, ctx)
        if number != number or number in (float("inf"), float("-inf")):
            self.fail(f"{value!r} is not a finite number; give a number such as 0.01", param, ctx)
        return number


def odd_window(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """click callback of an ``--ssim-window`` option: an odd size >= 1 (``None``: not given)."""
    if value is not None and (value < 1 or value % 2 == 0):
        why = "an even window has no centre pixel" if value >= 1 else "a window has at least one pixel"
        raise click.BadParameter(
            f"the SSIM window must be an odd size >= 1 (got {value}; {why}); "
            "use an odd size such as 7, 11 (the paper's) or 15"
        )
    return value
