"""A quiet first run: real tfssim-train processes (TensorFlow's C++ logs go to the process's fd 2,
which CliRunner cannot see), one line per epoch, a progress bar only on a terminal."""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from skimage import io

# 1 epoch of 64 patches of 32x32, latent 8: the cheapest run that trains a few steps.
TINY = ["--patch-size", "32", "--latent-dim", "8", "--batch-size", "16", "--patches-per-epoch", "64"]
CHATTER = ("I0000", "WARNING: All log messages before absl::InitializeLog()", "remapper failed", "oneDNN")
KERAS_EPOCH_LINE = re.compile(r"\d+/\d+ - \d+m?s")  # Keras's verbose=2 line, e.g. "4/4 - 8s - 2s/step - loss: ..."
EPOCH_LINE = re.compile(r"^\d\d:\d\d:\d\d epoch \d+/\d+  loss ", re.M)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "good"
    folder.mkdir()
    for seed in range(4):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:80, :96]
        texture = 0.5 + 0.3 * np.sin(xx / 3.0 + rng.uniform(0, 6)) * np.cos(yy / 5.0) + rng.normal(0, 0.05, (80, 96))
        io.imsave(folder / f"{seed}.png", (np.clip(texture, 0, 1) * 255).astype(np.uint8), check_contrast=False)
    return folder


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the command's own choice
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfssim.cli.train", *args], capture_output=True, text=True,
                          env=_env(), timeout=300)


@pytest.mark.slow
def test_training_logs_one_line_per_epoch_and_no_tensorflow_chatter(images: Path, tmp_path: Path) -> None:
    result = _train(str(images), "-o", str(tmp_path / "run"), "--epochs", "2", *TINY)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for chatter in CHATTER:
        assert chatter not in result.stderr, result.stderr
    out = result.stdout + result.stderr
    assert not KERAS_EPOCH_LINE.search(out) and "Epoch 1/2" not in out, out
    assert [m.group(0)[9:] for m in EPOCH_LINE.finditer(result.stderr)] == ["epoch 1/2  loss ", "epoch 2/2  loss "]
    assert "\r" not in result.stderr  # no progress bar when stderr is no terminal


@pytest.mark.slow  # 43 s measured in the not-slow run on the loaded 2-core machine
def test_verbose_keeps_tensorflow_start_up_lines() -> None:
    # The commands' logging set-up, then the first `import tensorflow`, as every command does it:
    # quiet, not a line; with --verbose, TensorFlow's C++ start-up lines are left as they are
    # (this build logs oneDNN's line through absl at import).
    code = ("import sys; from tfssim.cli._common import setup_logging; setup_logging(verbose='-v' in sys.argv); "
            "import tensorflow")
    loud = subprocess.run([sys.executable, "-c", code, "-v"], capture_output=True, text=True, env=_env(), timeout=120)
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "I0000" in loud.stderr or "absl::InitializeLog" in loud.stderr, loud.stderr
    assert quiet.stderr == "", quiet.stderr


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_and_still_one_line_per_epoch(images: Path, tmp_path: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin/stdout/stderr are the pseudo-terminal
        env = _env()
        os.execve(sys.executable, [sys.executable, "-m", "tfssim.cli.train", str(images), "-o",
                                   str(tmp_path / "run"), "--epochs", "1", *TINY], env)
    chunks, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert re.search(r"epoch 1/1 \[[=> ]+\] \d+/4", text), text  # the bar, drawn with \r
    lines = [line for line in re.split(r"[\r\n]+", text) if EPOCH_LINE.match(line.replace("\x1b[K", ""))]
    assert len(lines) == 1, text
    for chatter in CHATTER:
        assert chatter not in text, text


def test_only_the_known_remapper_line_is_dropped(capfd: pytest.CaptureFixture[str]) -> None:
    from tfssim.training.progress import quiet_remapper

    remapper = (b"E0000 00:00:1796045182.882777    2768 meta_optimizer.cc:967] remapper failed: INVALID_ARGUMENT: "
                b"Mutation::Apply error: fanout 'gradient_tape/decoder_1/deconv3_lrelu_1/LeakyRelu/LeakyReluGrad' "
                b"exist for missing node 'decoder_1/deconv3_1/BiasAdd'.\n")
    with quiet_remapper():
        os.write(2, remapper)
        os.write(2, b"E0000 00:00:1796045182.9    2768 meta_optimizer.cc:967] remapper failed: another reason\n")
        os.write(2, b"F0000 00:00:1796045183.0    2768 some_kernel.cc:12] a real failure, no newline")
        print("a python line", file=sys.stderr)
    os.write(2, remapper)  # outside: passed on as it is
    err = capfd.readouterr().err
    assert err.count("LeakyReluGrad") == 1
    assert "remapper failed: another reason\n" in err and err.count("a real failure, no newline") == 1
    # Python's own write goes straight to the terminal while the filter thread passes fd-2 lines on,
    # so the two may interleave (print writes its text and its newline separately): the text is what
    # must get through.
    assert err.count("a python line") == 1
