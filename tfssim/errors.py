"""The error type of bad user input, and the checks of values every layer shares; standard library only.

tfssim's own checks of what a user gave (an option, a file, an image, a configuration) raise
:class:`InputError`. The command-line tools report it as one ``Error:`` line with exit status 2;
any other exception, a ``ValueError`` raised inside Keras or TensorFlow included, is a fault of
the program and keeps its traceback (exit status 1). ``InputError`` is a ``ValueError``, so a
script that catches ``ValueError`` around a library call keeps working.

Example:
    >>> from tfssim.errors import InputError
    >>> try:
    ...     tfssim.training.TrainConfig(data="d", output="o", epochs=0).validate()
    ... except InputError as err:
    ...     print(err)
    epochs (--epochs) must be an integer >= 1, got 0; set epochs to an integer >= 1
"""
from __future__ import annotations

import contextlib
import numbers
from typing import Any, Iterator

__all__ = ["InputError", "check_fpr", "input_checks"]


class InputError(ValueError):
    """A value the user gave is wrong; the message says what and how to fix it (one line)."""


@contextlib.contextmanager
def input_checks() -> Iterator[None]:
    """Treat a ``ValueError`` raised inside the block as bad input (:class:`InputError`).

    For calls into a function whose only ``ValueError`` is a check of the arguments it is given
    (e.g. :func:`tfssim.core.ssim.validate_window` on the user's ``--ssim-window``). Keep the block to
    that call: anything else raising ``ValueError`` inside it would be reported as bad input.

    Raises:
        InputError: with the ``ValueError``'s message.
    """
    try:
        yield
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from None


def check_fpr(fpr: Any, name: str = "false-positive rate") -> float:
    """A false-positive rate a threshold can be set at: a number strictly between 0 and 1.

    Args:
        fpr: The value given (a Python or NumPy number; ``True`` is no rate).
        name: How the message names it (e.g. ``"fpr"``, a parameter's name).

    Returns:
        ``fpr`` as a ``float``.

    Raises:
        InputError: ``fpr`` is not a number, or not in ``(0, 1)`` (NaN included).

    Example:
        >>> check_fpr(0.01)
        0.01
    """
    if isinstance(fpr, bool) or not isinstance(fpr, numbers.Real) or not 0 < float(fpr) < 1:
        shown = f"{float(fpr):g}" if isinstance(fpr, numbers.Real) and not isinstance(fpr, bool) else repr(fpr)
        raise InputError(f"{name} must be a number between 0 and 1 (exclusive), got {shown}")
    return float(fpr)
