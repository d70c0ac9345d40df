"""What every tfssim command shares: logging set-up and turning library errors into exit 2."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

import click


def setup_logging(verbose: bool = False) -> None:
    """Plain ``HH:MM:SS message`` lines on stderr; TensorFlow's C++ chatter silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr, force=True,
    )
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Report a library ``ValueError``/``FileNotFoundError``/``FileExistsError`` as one line, exit 2."""
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise click.UsageError(str(err)) from None
