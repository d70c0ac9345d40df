"""TensorFlow Serving's versioned layout: ``<root>/<name>/<version>/``, never overwriting a version.

An export is built in a hidden ``.<version>.partial-*`` folder beside its destination (TF
Serving ignores it: not an integer) and renamed into place with Linux's
``renameat2(RENAME_NOREPLACE)`` (check and move in one step); a version taken meanwhile by a
concurrent export becomes the next free one when the version was chosen automatically. Partial
folders of dead exports are removed by the next export of the same model.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from tfssim._io import atomic_write_json
from tfssim.errors import InputError
from tfssim.metadata import METADATA_FILE

logger = logging.getLogger(__name__)

def next_version(model_root: str | os.PathLike) -> int:
    """The next free integer version under ``model_root`` (1 for a new model)."""
    root = Path(model_root)
    # Every entry named like a version counts, a stray *file* too: its number is not free.
    versions = [int(p.name) for p in root.iterdir() if p.name.isascii() and p.name.isdigit()] if root.is_dir() else []
    return max(versions, default=0) + 1


# TF Serving's version numbers are int64.
MAX_VERSION = 2**63 - 1
# A ``.<version>.partial-*`` folder whose export is dead is removed by the next export of the same
# model: dead when the process that made it (recorded in it) no longer runs on this machine, or,
# where that cannot be told (another machine, no record), when it is older than this. An export
# takes minutes, so a day-old one is no running export's.
PARTIAL_MAX_AGE_S = 24 * 3600
_OWNER_FILE = "owner.json"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``; None where unknown): tells a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        pass
    except (OSError, OverflowError, ValueError):
        return False
    return started is None or _process_start(pid) in (None, started)


def _partial_is_dead(folder: Path, now: float) -> bool:
    """Whether ``folder`` (a ``.N.partial-*`` export folder) belongs to no running export."""
    import socket

    try:
        owner = json.loads((folder / _OWNER_FILE).read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        owner = None
    if owner is not None and host == socket.gethostname():
        return not _process_alive(pid, owner.get("started"))
    try:
        return now - folder.stat().st_mtime > PARTIAL_MAX_AGE_S
    except OSError:
        return False


def _remove_dead_partials(model_root: Path) -> None:
    """Remove the ``.N.partial-*`` folders of killed exports in ``model_root`` (never a running export's)."""
    import re
    import time

    if not model_root.is_dir():
        return
    now = time.time()
    for folder in model_root.iterdir():
        if re.fullmatch(r"\.\d+\.partial-.+", folder.name) and folder.is_dir() and not folder.is_symlink() \
                and _partial_is_dead(folder, now):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                logger.info("removed %s, left behind by an export that no longer runs", folder)


def _record_owner(folder: Path) -> None:
    """Write who builds the export in ``folder`` (see :func:`_partial_is_dead`)."""
    import socket

    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid())}
    (folder / _OWNER_FILE).write_text(json.dumps(owner))


_RENAME_NOREPLACE = 1  # linux/fs.h
_AT_FDCWD = -100


def _renameat2(source: Path, destination: Path) -> bool | None:
    """Linux ``renameat2(..., RENAME_NOREPLACE)``: True when moved, None when unavailable here.

    Raises ``FileExistsError`` when ``destination`` exists (even an empty folder).
    """
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28 or another libc without the wrapper
        return None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # kernel or file system without the flag
        return None
    if code in (errno.EEXIST, errno.ENOTEMPTY):
        raise FileExistsError(f"{destination} appeared while exporting; exports are never overwritten")
    raise OSError(code, f"cannot move the export into {destination}: {os.strerror(code)}", str(destination))


def _rename_noreplace(source: Path, destination: Path) -> None:
    """Move the finished export folder into place, never replacing anything there.

    On Linux ``renameat2(RENAME_NOREPLACE)`` makes check and move one atomic step. Elsewhere
    (or where the file system lacks the flag) it falls back to check-then-``os.rename``, which
    refuses a non-empty destination but could still land on an *empty* folder created by
    another process in between.
    """
    if _renameat2(source, destination):
        return
    if destination.exists():
        raise FileExistsError(f"{destination} appeared while exporting; exports are never overwritten")
    try:
        os.rename(source, destination)  # atomic on one file system
    except OSError as err:
        raise FileExistsError(f"cannot move the export into {destination} ({err}); exports are never overwritten") \
            from None


# How often an export whose version was chosen automatically takes the next free number when
# another export (e.g. a concurrent tfssim-export) took its version while it was being built.
MAX_VERSION_RETRIES = 20


def _move_into_place(export_dir: Path, model_root: Path, version: int, *, auto: bool,
                     metadata: dict[str, Any] | None = None, retries: int = MAX_VERSION_RETRIES) -> Path:
    """Rename the finished ``export_dir`` to ``model_root/version``, never replacing anything there.

    With ``auto`` (the version was chosen by :func:`next_version`, not by the user), a version
    taken meanwhile by another export is no error: the export takes the next free number
    instead, at most ``retries`` times, rewriting the ``version`` of ``metadata`` (when given)
    in ``export_dir`` first. An explicit version raises ``FileExistsError`` at once.

    Returns:
        The version folder the export now lives in.
    """
    for attempt in range(retries + 1):
        destination = model_root / str(version)
        try:
            _rename_noreplace(export_dir, destination)
            return destination
        except FileExistsError as err:
            if not auto:
                raise
            if attempt == retries:
                raise FileExistsError(
                    f"{err}; gave up after {retries} retries with later versions (concurrent exports?)"
                ) from None
        taken, version = version, max(version + 1, next_version(model_root))
        logger.warning("%s was taken by another export meanwhile; this export becomes version %d",
                       model_root / str(taken), version)
        if metadata is not None:
            metadata["version"] = version
            atomic_write_json(export_dir / METADATA_FILE, metadata, default=str)
    raise AssertionError("unreachable")


def version_folder(path: str | os.PathLike) -> tuple[Path, int]:
    """The model folder and version number of a version folder ``<root>/<name>/<version>``.

    Args:
        path: A version folder of TF Serving's layout (its name is the version, an integer).

    Returns:
        ``(model_root, version)``: the folder that holds the versions, and this one's number.

    Raises:
        InputError: ``path``'s name is not a version number from 1 to :data:`MAX_VERSION` (e.g. a
            bare SavedModel folder), so there is no model folder to add a version to.

    Example:
        >>> version_folder("exported_models/nanotwice/3")
        (PosixPath('exported_models/nanotwice'), 3)
    """
    path = Path(path)
    name = path.name if path.name not in ("", ".", "..") else Path(os.path.abspath(path)).name
    if not (name.isascii() and name.isdigit() and 1 <= int(name) <= MAX_VERSION):
        raise InputError(
            f"{path} is not a version folder of TensorFlow Serving's layout NAME/VERSION (its name is not a "
            "version number), so no new version can be written beside it; move the SavedModel into a "
            "numbered folder, e.g. exported_models/my_model/1, and give that folder (or exported_models/my_model)")
    absolute = Path(os.path.abspath(path))
    return (path.parent if path.name == name else absolute.parent), int(name)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` to disk (before it is renamed into place).

    The rename is atomic, but without the flush a power cut right after it could leave a version
    folder whose files the disk never got.
    """
    for directory, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:  # some file systems cannot flush a folder; the files are flushed
            pass
        finally:
            os.close(fd)


def _check_name(name: str) -> None:
    # Control characters (a newline, a tab) make a folder name that TF Serving's config and every
    # log line would mangle.
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\0") \
            or name != name.strip() or any(ord(c) < 32 or ord(c) == 127 for c in name) \
            or len(name.encode("utf-8", "surrogateescape")) > 255:
        raise InputError(f"invalid model name {name!r}: use a plain folder name such as 'nanotwice_ssim' "
                         "(no slashes, control characters or leading dot, at most 255 bytes)")
