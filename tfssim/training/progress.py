"""Training's terminal output: a progress bar within the epoch, and one known C++ line filtered.

The per-epoch line itself is the run state's.

Keras's own progress bar (``fit(verbose=1)``) leaves each finished epoch's bar on screen, next to
the ``HH:MM:SS epoch N/M ...`` line that :class:`tfssim.training.run_folder._RunState` logs, and
``verbose=2`` prints a second line per epoch: training runs ``fit`` with ``verbose=0`` and shows
this bar instead, which is erased when the epoch ends.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from typing import IO, Iterator

import keras


def wants_bar(verbose: int | str | bool, stream: IO[str] | None = None) -> bool:
    """Whether training shows a progress bar.

    Args:
        verbose: ``"auto"``: a bar when ``stream`` is a terminal; a true value (``1``): a bar;
            ``0``/``2``/``False``: none (``2`` was Keras's one-line-per-epoch mode, which the
            run state's own line now is).
        stream: Where the bar would be drawn (default ``sys.stderr``).

    Returns:
        True to show the bar.
    """
    if verbose == "auto":
        stream = sys.stderr if stream is None else stream
        try:
            return stream.isatty()
        except (AttributeError, ValueError):  # a closed or stand-in stream
            return False
    return verbose is True or verbose == 1


class ProgressBar(keras.callbacks.Callback):
    """One self-erasing line ``epoch 3/200 [=====>    ] 45/125 loss 0.1234 ETA 12s`` on a terminal.

    Args:
        steps: Batches per epoch.
        epochs: Total epochs of the run (for the label).
        stream: A terminal (default ``sys.stderr``).
        interval: Least seconds between redraws.
    """

    def __init__(self, steps: int, epochs: int, stream: IO[str] | None = None, interval: float = 0.1) -> None:
        super().__init__()
        self.steps, self.epochs, self.interval = steps, epochs, interval
        self._stream = stream
        self._epoch, self._started, self._drawn = 0, 0.0, 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch, self._started, self._drawn = epoch, time.perf_counter(), 0.0
        self._draw(0, None)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        if now - self._drawn >= self.interval or batch + 1 == self.steps:
            self._draw(batch + 1, (logs or {}).get("loss"))

    def on_test_begin(self, logs: dict | None = None) -> None:
        self._write(f"\r\033[Kepoch {self._epoch + 1}/{self.epochs}  validating ...")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._write("\r\033[K")  # erased: the run state's epoch line follows

    def on_train_end(self, logs: dict | None = None) -> None:
        self._write("\r\033[K")

    def _draw(self, done: int, loss: object) -> None:
        self._drawn = time.perf_counter()
        width = 30
        filled = width * done // max(self.steps, 1)
        bar = "=" * filled + (">" if filled < width else "") + " " * max(width - filled - 1, 0)
        text = f"epoch {self._epoch + 1}/{self.epochs} [{bar}] {done}/{self.steps}"
        if loss is not None:
            text += f"  loss {float(loss):.5f}"
        if 0 < done < self.steps:
            eta = (self._drawn - self._started) / done * (self.steps - done)
            text += f"  ETA {eta:.0f}s"
        self._write("\r\033[K" + text)

    def _write(self, text: str) -> None:
        stream = sys.stderr if self._stream is None else self._stream  # looked up now: see quiet_remapper
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # the terminal went away: the bar is not worth a failed run
            pass


# Grappler's remapper tries to fuse Conv2D+BiasAdd+LeakyRelu in the training step's graph. When the
# gradient of the LeakyRelu reads the BiasAdd's output (keras.layers.LeakyReLU's does), it gives up
# on that fusion and logs it at ERROR level ("remapper failed: INVALID_ARGUMENT: Mutation::Apply
# error: fanout '...LeakyReluGrad' exist for missing node '...BiasAdd'"); training and its numbers
# are unaffected. The models built by tfssim.models use tfssim.models.LeakyReLU, whose
# gradient reads the output, so the fusion applies and nothing is logged (a resumed tfssim-train
# run rebuilds its model, so it gets that layer too); .keras files saved before that layer still
# hold Keras's LeakyReLU and still make Grappler log the line when a loaded one is trained on.
# So this one line is dropped.
_REMAPPER_LINE = re.compile(
    rb"^E\d{4} [\d:. ]+\d+ meta_optimizer\.cc:\d+\] remapper failed: INVALID_ARGUMENT: Mutation::Apply error: "
    rb"fanout '[^']*LeakyReluGrad' exist for missing node '[^']*BiasAdd'\.?\s*$"
)


@contextlib.contextmanager
def quiet_remapper() -> Iterator[None]:
    """Drop Grappler's harmless ``remapper failed ... LeakyReluGrad`` line from fd 2 while inside.

    TensorFlow's C++ code writes to file descriptor 2, so fd 2 goes through a pipe whose reader
    passes every other line on unchanged; Python's own writes (log lines, the progress bar) are
    sent straight to the terminal meanwhile (when ``sys.stderr`` is fd 2), so nothing waits for a
    newline. Where fd 2 cannot be redirected, nothing is filtered.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        pending = b""
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not _REMAPPER_LINE.match(line))
            if out:
                os.write(saved, out)
        if pending and not _REMAPPER_LINE.match(pending):  # a last line without its newline
            os.write(saved, pending)

    reader = threading.Thread(target=forward, name="tfssim-stderr-filter", daemon=True)
    reader.start()
    python_stderr = sys.stderr
    direct = None
    with contextlib.suppress(AttributeError, OSError, ValueError):
        if python_stderr.fileno() == 2:
            direct = open(saved, "w", buffering=1, closefd=False, encoding=getattr(python_stderr, "encoding", None),
                          errors="backslashreplace")
            sys.stderr = direct
    try:
        yield
    finally:
        if direct is not None:
            direct.flush()
            sys.stderr = python_stderr
            direct.close()
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF
        reader.join(timeout=10)
        os.close(read_end)
        os.close(saved)
