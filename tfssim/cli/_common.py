"""What every tfssim command shares: logging set-up and turning library errors into exit 2."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

import click


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
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Report a library ``ValueError`` or an ``OSError`` as one ``Error:`` line, exit 2.

    tfssim's own errors (``ValueError``, ``FileNotFoundError``/``FileExistsError`` raised with a
    message) are printed as they are; an operating-system error (e.g. ``PermissionError``
    creating ``--output``) becomes one line naming the path and the reason.
    """
    try:
        yield
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    except OSError as err:
        raise click.UsageError(_os_error_line(err)) from None


def _os_error_line(err: OSError) -> str:
    if err.filename is None:
        return str(err)
    paths = repr(os.fspath(err.filename)) if err.filename2 is None else (
        f"{os.fspath(err.filename)!r} -> {os.fspath(err.filename2)!r}")
    reason = err.strerror or type(err).__name__
    return (f"cannot use {paths}: {reason}; check that the path is right, that its parent folders exist and are "
            "folders, and that you may write there")
