"""What a missing or broken TensorFlow says, shared by the library and the commands (imports no TensorFlow).

tfssim lets the user pick the TensorFlow flavour (``pip install 'tfssim[cpu]'`` or ``[gpu]``), so a
plain ``pip install tfssim`` has none. Every module that needs TensorFlow imports
:mod:`tfssim._tensorflow` first, which calls :func:`require_tensorflow`: without TensorFlow the
import fails with a one-line message naming the install command instead of a bare
``No module named 'tensorflow'``.
"""
from __future__ import annotations

__all__ = ["INSTALL_COMMAND", "is_tensorflow_import_error", "require_tensorflow", "tensorflow_message"]

INSTALL_COMMAND = "pip install 'tfssim[cpu]' (or 'tfssim[gpu]')"


def is_tensorflow_import_error(err: BaseException) -> bool:
    """Whether ``err`` is a failed import of TensorFlow (ours from :func:`require_tensorflow`, or Python's)."""
    if not isinstance(err, ImportError):
        return False
    return (err.name or "").split(".")[0] == "tensorflow" or INSTALL_COMMAND in str(err)


def tensorflow_message(err: ImportError) -> str:
    """One line: TensorFlow is missing (or does not import) and the command that installs it.

    Args:
        err: The ``ImportError`` of ``import tensorflow``.

    Returns:
        The line, without a trailing period; it ends with :data:`INSTALL_COMMAND`.
    """
    if INSTALL_COMMAND in str(err):
        return str(err)
    if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] == "tensorflow":
        return f"TensorFlow is not installed, and this needs it; install tfssim with a TensorFlow flavour: {INSTALL_COMMAND}"
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"TensorFlow is installed but does not import ({first}); reinstall it: {INSTALL_COMMAND}"


def require_tensorflow() -> None:
    """Import TensorFlow, or raise an ``ImportError`` whose message names the install command.

    Raises:
        ModuleNotFoundError: TensorFlow is not installed (``name`` is ``"tensorflow"``).
        ImportError: TensorFlow is installed but fails to import (the cause is chained).

    Example:
        >>> require_tensorflow()  # at the top of a module that needs TensorFlow
    """
    try:
        import tensorflow  # noqa: F401
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "tensorflow":
            raise ImportError(tensorflow_message(err), name="tensorflow") from err
        raise ModuleNotFoundError(tensorflow_message(err), name="tensorflow") from None
    except ImportError as err:
        raise ImportError(tensorflow_message(err), name="tensorflow") from err
