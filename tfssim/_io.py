"""Writing files safely (atomic writes, the output folder of a command), and the commands' progress bars.

Atomic writes: a temporary file beside the target, renamed over it only when complete. A reader
(or TF Serving, or a crash) never sees half a file: either the old content or the new.
The temporary name is hidden, unique per call (concurrent writers do not clash) and keeps the
target's extension, so writers that pick the format from it (matplotlib, scikit-image,
tifffile) work unchanged.

Output folders: :func:`prepare_output_dir` is the one check every command that writes a folder
runs before any work (never beside or inside its inputs, writable), and :func:`output_dir_lock`
holds the folder for one command at a time.

Failures of the machine: :func:`machine_errno` tells a full disk, a full quota or a failing
device from any other error, whoever reports it (an ``OSError``, TensorFlow, h5py).

Progress: :func:`progress_bar` is the bar of the commands that go through many images
(evaluation, tuning).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tfssim.errors import InputError

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "save_array", "open_lock_file",
           "check_output_location", "prepare_output_dir", "output_dir_lock", "OUTPUT_LOCK_NAME", "MACHINE_ERRNOS",
           "machine_errno", "progress_bar"]

# Errors of the machine, not of a command's input: a full disk, a full quota, a failing device.
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, getattr(errno, "EDQUOT", errno.ENOSPC)})
# How libraries that raise no OSError (TensorFlow's OpError, h5py's, Keras's) word them: the C library's text.
_MACHINE_MESSAGES = tuple((code, os.strerror(code)) for code in sorted(MACHINE_ERRNOS))


def machine_errno(err: BaseException) -> int | None:
    """The errno of a full disk, a full quota or a failing device that ``err`` reports, else ``None``.

    An ``OSError`` with an errno is read by it; any other error (TensorFlow's ``OpError``, an
    h5py or Keras error wrapping a failed write, an ``OSError`` without errno) by its message,
    which holds the C library's text (``"No space left on device"``, ``"Disk quota exceeded"``,
    ``"Input/output error"``).

    Args:
        err: Any exception.

    Returns:
        ``errno.ENOSPC``, ``errno.EDQUOT`` or ``errno.EIO``, or ``None``.

    Example:
        >>> machine_errno(OSError(errno.ENOSPC, "No space left on device")) == errno.ENOSPC
        True
    """
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno if err.errno in MACHINE_ERRNOS else None
    text = " ".join(str(err).split())
    return next((code for code, message in _MACHINE_MESSAGES if message in text), None)


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


def save_array(path: str | os.PathLike, array: Any) -> Path:
    """``numpy.save`` for a working file (a cache), a full disk reported as such.

    NumPy reports a short write as ``OSError("N requested and M written")`` without an errno;
    here it is ``ENOSPC``, so that the commands report a full disk (exit 1, "free disk space")
    and not bad input.
    """
    import numpy as np

    path = Path(path)
    try:
        np.save(path, array)
    except OSError as err:
        if err.errno is None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
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



# --- the output folder of a command -------------------------------------------------------------


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _within(inner: str, outer: str) -> bool:
    """Whether the real path ``inner`` is ``outer`` or lies under it."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def check_output_location(output_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *,
                          masks: str | os.PathLike | None = None) -> None:
    """Refuse an output folder that would mix a command's results with its inputs.

    The one rule of every tfssim command that writes into a folder, checked before any work:
    results written beside an input could replace it (``a_mask.png`` is both a user's mask name
    and the mask of ``a.png``; ``roc.png`` or ``tuning.png`` could be a user's image), and
    results inside a dataset or image folder are read back as images by the next run on it. The
    output folder may not be any input (an image folder, a dataset, the ``masks`` folder, an
    export), lie inside one, or hold one at any depth.

    Paths are compared after resolving links (and, for folders that exist, by device and inode,
    so a bind mount of the same folder is caught too).

    Args:
        output_dir: The command's output folder (it need not exist yet).
        inputs: The files and folders the command reads.
        masks: A folder of ground-truth masks (also an input; named as such in the message).

    Raises:
        InputError: One line naming the output folder, the input and what to do.
    """
    out = _real(output_dir)
    out_id = _identity(out)
    named = [(p, "input") for p in inputs] + ([(masks, "ground-truth mask folder")] if masks is not None else [])
    fix = "choose an output folder outside the inputs (e.g. a new folder beside them)"
    for given, what in named:
        path = os.path.abspath(os.fspath(given))
        target = _real(path)
        # Where the input lives: its target, and (for a link) the folder the link itself is in.
        places = [target, _real(os.path.dirname(path))]
        if os.path.isdir(target) and (_within(out, target) or (out_id is not None and out_id == _identity(target))):
            where = "is" if out == target or out_id == _identity(target) else "lies inside"
            raise InputError(f"output folder {os.fspath(output_dir)} {where} the {what} {os.fspath(given)}; "
                             f"results written there could replace inputs or be read as inputs; {fix}")
        folder_id = _identity(os.path.dirname(target)) if not os.path.isdir(target) else None
        if any(_within(place, out) for place in places) or (out_id is not None and folder_id == out_id):
            raise InputError(f"output folder {os.fspath(output_dir)} holds the {what} {os.fspath(given)}; "
                             f"results written there could replace inputs or be read back as inputs; {fix}")


def prepare_output_dir(output_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *,
                       masks: str | os.PathLike | None = None) -> Path:
    """Check an output folder (:func:`check_output_location`), create it and make sure it can be written.

    Run before any work, so that a command that cannot write its results fails at once.

    Args:
        output_dir: The folder for the results; created with its parents if missing.
        inputs, masks: As :func:`check_output_location`.

    Returns:
        ``output_dir`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: a path that is a file or lies under one, a folder that cannot be created
            or written to (no permission, read-only file system), or one that mixes results
            with inputs.
        OSError: a full disk or an I/O error (no fault of the arguments).

    Example:
        >>> prepare_output_dir("predictions", ["scans/a.png", "scans/b.png"])
        PosixPath('predictions')
    """
    import tempfile

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out} is a file, not a folder; choose another output folder")
    check_output_location(out, inputs, masks=masks)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tfssim-write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        if err.errno in MACHINE_ERRNOS:
            raise
        reason = ("a parent of it is a file" if isinstance(err, (FileExistsError, NotADirectoryError))
                  else err.strerror or type(err).__name__)
        raise InputError(f"cannot write results to {out}: {reason}; choose an output folder you may write to") from None
    return out


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return "a special file"


def open_lock_file(path: str | os.PathLike, *, create: bool, fix: str) -> int | None:
    """A descriptor of the lock file ``path``, opened only if it is a regular file.

    A lock file is written in place (truncated, a process id written), so a link would let that
    write reach its target and a named pipe would block the open forever. Hence: ``lstat`` first
    (a device or pipe is not even opened), then ``O_NOFOLLOW`` (never through a link) and
    ``O_NONBLOCK`` (a pipe swapped in meanwhile cannot block), then ``fstat`` of what was opened
    (the name may have changed between the two). A writer also refuses a file with other hard
    links: its other names would lose what they hold.

    Args:
        path: The lock file.
        create: Open it to write, creating it if missing (the lock holder); else read-only, and
            ``None`` where there is none (a probe).
        fix: What to do besides removing it, for the message (e.g. "tfssim-train makes a new one").

    Returns:
        An open descriptor (the caller closes it), or ``None`` (``create`` false, no file).

    Raises:
        InputError: ``path`` is a link, a folder, a pipe, a device or (``create``) a file with
            other hard links; one line naming it and saying to remove it.
        OSError: it cannot be opened otherwise (e.g. no permission).
    """
    path = Path(path)

    def refused(kind: str) -> InputError:
        return InputError(f"{path} is {kind}, not a lock file; remove it ({fix})")

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None  # a writer creates it; a probe finds none below
    if mode is not None and not stat.S_ISREG(mode):
        raise refused(_file_kind(mode))
    flags = (os.O_RDWR | os.O_CREAT if create else os.O_RDONLY)
    for name in ("O_NOFOLLOW", "O_NONBLOCK", "O_CLOEXEC"):  # POSIX; Windows has none (and takes no lock)
        flags |= getattr(os, name, 0)
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # a link, folder or socket put there meanwhile
            raise refused({errno.ELOOP: "a symbolic link", errno.EISDIR: "a folder"}.get(err.errno, "a socket")) \
                from None
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise refused(_file_kind(status.st_mode))
        if create and status.st_nlink > 1:
            raise refused(f"a hard link to a file with {status.st_nlink} names (writing the lock would change it "
                          "under the others too)")
    except BaseException:
        os.close(fd)
        raise
    return fd


# The lock file of an output folder (hidden: no command reads it as an image).
OUTPUT_LOCK_NAME = ".tfssim-output.lock"


@contextlib.contextmanager
def output_dir_lock(output_dir: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold an output folder for one command at a time; a second one is refused at once.

    An advisory ``flock`` on :data:`OUTPUT_LOCK_NAME` in the folder: the operating system
    releases it when the process ends, killed or not, so a stale lock never blocks a later run.
    Check "is the result already there?" inside the block: check and claim are then one step for
    every command that takes this lock. Where ``fcntl`` is missing (Windows) nothing is locked.

    Args:
        output_dir: An existing folder (:func:`prepare_output_dir`).
        command: Who takes it, for the message of the one refused (e.g. ``"tfssim-tune"``).

    Yields:
        ``output_dir`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: another process holds the folder.
    """
    out = Path(output_dir)
    try:
        import fcntl
    except ImportError:  # no advisory locks here: the checks inside the block still run
        yield out
        return
    fd = open_lock_file(out / OUTPUT_LOCK_NAME, create=True, fix="or choose another output folder")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            except OSError:
                holder = "another process"
            raise InputError(f"output folder {out} is in use by {holder}; wait for it to finish or choose "
                             "another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command} (process {os.getpid()})".encode(), 0)
        yield out
    finally:
        os.close(fd)  # closing releases the lock


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str, enabled: bool, total: int | None = None,
                 unit: str = "img") -> Any:
    """A progress bar with an ETA on a terminal (tqdm's own test); nothing elsewhere or when not ``enabled``.

    Args:
        iterable: What to go through (the bar counts its items); ``None`` for a bar advanced by
            ``update``.
        desc: The bar's label.
        enabled: Whether the caller wants a bar at all (a command's ``--progress``).
        total: The number of steps (default: ``len(iterable)``).
        unit: What a step is.

    Returns:
        A ``tqdm`` bar: iterate over it, or call ``update`` and ``close``; disabled, it yields
        ``iterable``'s items and ``update`` does nothing.
    """
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, disable=None if enabled else True)
