"""Atomic file writes: a temporary file beside the target, renamed over it only when complete.

A reader (or TF Serving, or a crash) never sees half a file: either the old content or the new.
The temporary name is hidden, unique per call (concurrent writers do not clash) and keeps the
target's extension, so writers that pick the format from it (matplotlib, scikit-image,
tifffile) work unchanged.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to create a temporary file, then ``os.replace`` it onto ``path``.

    The temporary file is ``.<name>.<random>.tmp<suffix>`` in ``path``'s folder (same file
    system, so the rename is atomic); it is removed if ``write`` raises, and ``path`` keeps its
    old content. The file gets the ordinary permissions of a new file (umask applies).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, payload: Any, **dumps_kwargs: Any) -> Path:
    """Write ``payload`` as strict JSON (``indent=2`` unless given) to ``path`` atomically.

    Strict: a NaN or infinite float raises ``ValueError`` before anything is written, because
    Python's ``NaN``/``Infinity`` literals are not JSON and other readers (``jq``, browsers,
    most JSON libraries) refuse the whole file. A writer with a value that may honestly be
    undefined stores ``None`` (JSON ``null``) for it.

    Raises:
        ValueError: ``payload`` holds a non-finite float.
    """
    dumps_kwargs.setdefault("indent", 2)
    dumps_kwargs.setdefault("allow_nan", False)
    text = json.dumps(payload, **dumps_kwargs)  # before the temporary file: a refusal leaves nothing behind
    return atomic_write_text(path, text)

