"""TensorFlow Serving's versioned layout: ``<root>/<name>/<version>/``, never overwriting a version.

This module is the one owner of the version-folder rule: a version is a folder whose name is
ASCII digits (``0-9`` only: ``int()`` also reads ``²`` or ``١٢``, which TF Serving does not) with
a value from 1 to :data:`MAX_VERSION`, TF Serving's int64 (:func:`parse_version`). Every tfssim
command that lists, picks or numbers versions asks here (:func:`list_versions`,
:func:`newest_version`, :func:`next_version`, :func:`version_folder`). It also owns what a
version may hold: regular files and folders only (:func:`check_version_files`,
:func:`copy_version`), so a link or a device inside a version is refused in one line instead of
being followed. It names the files a version holds that tfssim reads (:data:`METADATA_FILE`,
:data:`SAVED_MODEL_FILE`) and finds a version from its model folder (:func:`resolve_version`).
It imports no TensorFlow and no other tfssim.export module (:mod:`tfssim.export.metadata` and
:mod:`tfssim.serving.inference`, used by a TF Serving client, import it).

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
import stat
from pathlib import Path
from typing import Any, Callable

from tfssim.errors import InputError

__all__ = [
    "EXPORT_ROOT", "MAX_VERSION", "METADATA_FILE", "SAVED_MODEL_FILE", "check_loadable_path", "check_name", "check_version_files", "copy_version", "is_model_name", "list_versions",
    "newest_version", "next_version", "parse_version", "resolve_export_dir", "resolve_version", "version_folder",
]

logger = logging.getLogger(__name__)

# TF Serving's version numbers are int64.
MAX_VERSION = 2**63 - 1
# Where exports go when no folder is named: <EXPORT_ROOT>/<name>/<version>.
EXPORT_ROOT = "exported_models"
# The files of a version that tfssim reads: tfssim's metadata (tfssim.export.metadata) and the graph.
METADATA_FILE = Path("assets") / "tfssim.json"
SAVED_MODEL_FILE = "saved_model.pb"


def parse_version(name: str) -> int | None:
    """The version number a folder name stands for, or ``None`` when it names no version.

    Args:
        name: A folder name (the last part of a path).

    Returns:
        The number, from 1 to :data:`MAX_VERSION`, when ``name`` is ASCII digits only (leading
        zeros allowed, as TF Serving reads them); ``None`` for anything else: other Unicode
        digits (``'²'``, ``'١٢'``), signs, spaces, ``'0'``, or a number past int64.

    Example:
        >>> parse_version("12"), parse_version("²"), parse_version("9223372036854775808")
        (12, None, None)
    """
    if not isinstance(name, str) or not name.isascii() or not name.isdigit():
        return None
    version = int(name)
    return version if 1 <= version <= MAX_VERSION else None


def list_versions(model_root: str | os.PathLike) -> list[tuple[int, Path]]:
    """The version folders of a model folder, oldest first.

    Args:
        model_root: A model folder ``<root>/<name>``.

    Returns:
        ``(version, folder)`` for every folder (or link to one) in ``model_root`` whose name
        :func:`parse_version` reads, sorted by number (then name: ``7`` before ``007``); empty
        when ``model_root`` is no folder or cannot be listed.
    """
    root = Path(model_root)
    try:
        entries = list(root.iterdir()) if root.is_dir() else []
    except OSError:
        return []
    found = [(version, path) for path in entries if (version := parse_version(path.name)) is not None
             and path.is_dir()]
    return sorted(found, key=lambda item: (item[0], item[1].name))


def newest_version(model_root: str | os.PathLike) -> Path | None:
    """The version folder with the largest number in ``model_root`` (TF Serving's default), or ``None``."""
    versions = list_versions(model_root)
    return versions[-1][1] if versions else None


def resolve_version(path: str | os.PathLike, holds: str | os.PathLike = METADATA_FILE) -> Path | None:
    """The version folder ``path`` names: itself when it holds ``holds``, else its newest version.

    A version folder, or a bare export folder of any name, is taken as it is; a model folder
    ``<root>/<name>`` gives its newest version (TF Serving's default).

    Args:
        path: A version folder, an export folder or a model folder.
        holds: The file (relative to a version) that marks ``path`` itself as one
            (:data:`METADATA_FILE` or :data:`SAVED_MODEL_FILE`).

    Returns:
        ``path`` when ``path / holds`` exists, else :func:`newest_version` of ``path`` (``None``
        where ``path`` is no folder or has no versions). Whether the newest version holds
        ``holds`` is the caller's check (its message names the version).
    """
    path = Path(path)
    if (path / holds).exists():
        return path
    return newest_version(path) if path.is_dir() else None


def next_version(model_root: str | os.PathLike) -> int:
    """The next free version number under ``model_root`` (1 for a new model).

    Raises:
        InputError: ``model_root`` already holds version :data:`MAX_VERSION`, so no later one
            fits TF Serving's int64.
    """
    root = Path(model_root)
    # Every entry named like a version counts, a stray *file* too: its number is not free.
    names = [p.name for p in root.iterdir()] if root.is_dir() else []
    newest, name = max(((v, n) for n in names if (v := parse_version(n)) is not None), default=(0, ""))
    if newest >= MAX_VERSION:
        raise InputError(f"{root / name} is version {MAX_VERSION}, the largest TensorFlow Serving reads (int64), "
                         "so no later version can be written there; remove or rename it if it is stray, else "
                         "export into a new model folder (another name), numbered from 1")
    return newest + 1


def is_model_name(name: Any) -> bool:
    """Whether ``name`` is a usable model name: a plain folder name (see :func:`check_name`)."""
    # Control characters (a newline, a tab) make a folder name that TF Serving's config and every
    # log line would mangle.
    return isinstance(name, str) and bool(name) and not name.startswith(".") \
        and not any(c in name for c in "/\\\0") and name == name.strip() \
        and not any(ord(c) < 32 or ord(c) == 127 for c in name) \
        and len(name.encode("utf-8", "surrogateescape")) <= 255


def check_name(name: Any) -> None:
    """Refuse a model name that is not a plain folder name.

    Raises:
        InputError: ``name`` is empty, has a slash, a control character, a leading dot, outer
            spaces or more than 255 bytes.
    """
    if not is_model_name(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise InputError(f"invalid model name {shown}: use a plain folder name such as 'nanotwice_ssim' "
                         "(no slashes, control characters or leading dot, at most 255 bytes)")


# --------------------------------------------------------------------------------------------
# What a version may hold


def _printable(text: str) -> str:
    """``text`` as it is, or quoted where it holds a control character (a newline would split the line)."""
    return repr(text) if any(ord(c) < 32 or ord(c) == 127 for c in text) else text


def _not_regular(path: Path, mode: int) -> InputError:
    """The one line refusing ``path`` (of ``lstat`` mode ``mode``) inside an export version."""
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        what = f"a symbolic link (to {_printable(target)}), which every reader would follow"
    else:
        what = {stat.S_IFIFO: "a named pipe", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device",
                stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(mode), "not a regular file")
    return InputError(f"{_printable(str(path))} is {what}; an export version holds only regular files and "
                      "folders: remove it or put the regular file in its place, or re-export the model with "
                      "tfssim-export")


# TensorFlow reads a SavedModel's variables through a file pattern: these characters in its path
# would be taken as wildcards and the variables not found.
_PATTERN_CHARACTERS = "*?["


def check_loadable_path(path: str | os.PathLike, what: str = "export") -> None:
    """Refuse an export path TensorFlow cannot load from: one holding ``*``, ``?`` or ``[``.

    ``tf.saved_model.load`` finds ``variables/variables.*`` by pattern, so a folder named
    ``x[2]`` fails with "Failed to find any matching files"; refusing it up front (also where an
    export is written) gives one line instead.

    Raises:
        InputError: naming the path and the fix.
    """
    shown = os.path.abspath(os.fspath(path))
    if any(c in shown for c in _PATTERN_CHARACTERS):
        raise InputError(f"{what} path {shown!r} holds '*', '?' or '[', which TensorFlow takes as wildcards when "
                         "it loads a SavedModel; move (or link) it to a folder whose path has none of them")


def check_version_files(version_dir: str | os.PathLike) -> None:
    """Refuse a version folder holding anything but regular files and folders.

    A link inside a version (``assets.extra/x -> /dev/zero``, ``variables/... -> ~/.ssh/id_rsa``)
    would be followed by whatever reads or copies the version: copied without end, or its
    target's bytes put into a new version; a pipe would block the reader. None is written by
    tfssim-export, so one found is refused before anything reads the files. The folder itself
    may be reached through a link (the user's path); only what lies inside it is checked.

    Args:
        version_dir: An export version folder.

    Raises:
        InputError: one line naming the first such entry and what to do.
        FileNotFoundError: ``version_dir`` does not exist.
    """
    top = Path(version_dir)
    if not top.is_dir():
        raise FileNotFoundError(f"export {top} does not exist (or is not a folder)")
    pending = [top]
    while pending:  # iterative: a deeply nested hostile folder cannot exhaust the recursion limit
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    mode = entry.stat(follow_symlinks=False).st_mode
                    if stat.S_ISDIR(mode):
                        pending.append(Path(entry.path))
                    elif not stat.S_ISREG(mode):
                        raise _not_regular(Path(entry.path), mode)
        except OSError as err:
            raise InputError(f"cannot read export {top}: {err.strerror or type(err).__name__} "
                             f"({err.filename or folder})") from None


def _copy_regular_file(source: Path, destination: Path) -> None:
    """Copy one regular file, refusing it if it was replaced by a link or device since the check."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(source, flags)
    except OSError:
        if os.path.islink(source):  # O_NOFOLLOW refused a link put there after the check
            raise _not_regular(source, os.lstat(source).st_mode) from None
        raise
    with os.fdopen(fd, "rb") as reader:
        mode = os.fstat(reader.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(source, mode)
        with open(destination, "xb") as writer:
            shutil.copyfileobj(reader, writer, 2**20)
    shutil.copystat(source, destination, follow_symlinks=False)


def copy_version(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copy an export version folder's files to ``destination`` (a new folder), links never followed.

    :func:`check_version_files` runs first, so a version holding a link, a device or a pipe is
    refused before anything is written; the copy itself opens every file without following
    links, so one swapped in meanwhile is refused too.

    Args:
        source: The version folder.
        destination: The folder to create (must not exist).

    Raises:
        InputError: ``source`` holds something that is not a regular file or folder.
        FileExistsError: ``destination`` exists.
    """
    source, destination = Path(source), Path(destination)
    check_version_files(source)
    pending = [(source, destination)]
    while pending:
        src, dst = pending.pop()
        dst.mkdir()
        with os.scandir(src) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    pending.append((Path(entry.path), dst / entry.name))
                elif stat.S_ISREG(mode):
                    _copy_regular_file(Path(entry.path), dst / entry.name)
                else:
                    raise _not_regular(Path(entry.path), mode)
        shutil.copystat(src, dst, follow_symlinks=False)


# --------------------------------------------------------------------------------------------
# Building a version beside the others

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


def _partial_version(name: str) -> int | None:
    """The version of a partial export folder's name ``.<version>.partial-<random>``, else ``None``."""
    version, sep, rest = name[1:].partition(".partial-") if name.startswith(".") else ("", "", "")
    return parse_version(version) if sep and rest else None


def _remove_dead_partials(model_root: Path) -> None:
    """Remove the ``.N.partial-*`` folders of killed exports in ``model_root`` (never a running export's)."""
    import time

    if not model_root.is_dir():
        return
    now = time.time()
    for folder in model_root.iterdir():
        if _partial_version(folder.name) is not None and folder.is_dir() and not folder.is_symlink() \
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
                     renumber: Callable[[Path, int], None] | None = None, retries: int = MAX_VERSION_RETRIES) -> Path:
    """Rename the finished ``export_dir`` to ``model_root/version``, never replacing anything there.

    With ``auto`` (the version was chosen by :func:`next_version`, not by the user), a version
    taken meanwhile by another export is no error: the export takes the next free number
    instead, at most ``retries`` times, calling ``renumber(export_dir, version)`` (when given:
    :func:`tfssim.export.metadata.renumber_export`) first. An explicit version raises ``FileExistsError`` at once.

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
        if version > MAX_VERSION:
            raise InputError(f"{model_root / str(taken)} was taken by another export meanwhile and it is version "
                             f"{MAX_VERSION}, the largest TensorFlow Serving reads; move the model's versions to "
                             "a new model folder numbered from 1")
        logger.warning("%s was taken by another export meanwhile; this export becomes version %d",
                       model_root / str(taken), version)
        if renumber is not None:
            renumber(export_dir, version)
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
    version = parse_version(name)
    if version is None:
        raise InputError(
            f"{path} is not a version folder of TensorFlow Serving's layout NAME/VERSION (its name is not a "
            "version number), so no new version can be written beside it; move the SavedModel into a "
            "numbered folder, e.g. exported_models/my_model/1, and give that folder (or exported_models/my_model)")
    absolute = Path(os.path.abspath(path))
    return (path.parent if path.name == name else absolute.parent), version


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

def resolve_export_dir(path: str | Path) -> Path:
    """A version folder (holding ``saved_model.pb``) from itself or its model folder (newest version).

    The versions of a model folder are :mod:`tfssim.export.layout`'s (ASCII digits, 1 to 2**63 - 1);
    the version must hold only regular files and folders
    (:func:`tfssim.export.layout.check_version_files`): a link inside is refused, not followed.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        InputError: naming the path, when neither holds an export with tfssim metadata, or the
            version holds a link, a device or a pipe.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"export {path} does not exist")
    check_loadable_path(path)
    version = resolve_version(path, SAVED_MODEL_FILE)
    if version is None:
        raise InputError(f"{path} is not a SavedModel (no {SAVED_MODEL_FILE}) and has no numbered version folders")
    path = version
    if not (path / SAVED_MODEL_FILE).exists():
        raise InputError(f"{path} has no {SAVED_MODEL_FILE}; is the export complete?")
    check_version_files(path)
    if not (path / METADATA_FILE).is_file():
        raise InputError(
            f"export {path} has no {METADATA_FILE} metadata; it was not written by tfssim-export "
            "(re-export the model with tfssim-export)"
        )
    return path
