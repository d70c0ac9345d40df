"""Which tfssim a result came from, for benchmark and check scripts: version and git commit, no paths."""
from __future__ import annotations

import os
import subprocess
from typing import Any


def source() -> dict[str, Any]:
    """``{"version": ..., "commit": ...}`` of the imported tfssim.

    ``commit`` is the short hash of the git checkout the package was imported from, with
    ``"+changes"`` when its tracked files differ from that commit, or ``None`` outside a
    checkout (an installed wheel). No local path is recorded: results are committed to docs/.
    """
    import tfssim

    folder = os.path.dirname(os.path.abspath(tfssim.__file__))

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    if commit is not None and git("status", "--porcelain", "--untracked-files=no"):
        commit += "+changes"
    return {"version": tfssim.__version__, "commit": commit}
