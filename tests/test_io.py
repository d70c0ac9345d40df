"""tfssim._io: the one atomic-write helper of the package."""
from __future__ import annotations

import json

import pytest

from tfssim._io import atomic_write, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp.name.startswith(".")
        assert target.read_text() == "old", "the target is untouched while the temporary file is written"
        tmp.write_text("new")

    assert atomic_write(target, write) == target
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    atomic_write_json(target, {"x": [1, 2]})
    assert json.loads(target.read_text()) == {"x": [1, 2]}
    atomic_write_text(tmp_path / "b.txt", "hello")
    assert (tmp_path / "b.txt").read_text() == "hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt"]
    assert len({p for p in seen}) == 1


def test_a_failed_write_keeps_the_old_content_and_removes_the_temporary(tmp_path):
    target = tmp_path / "r.csv"
    target.write_text("old")

    def half_then_crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.csv"]
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "bad.json", {"x": object()})
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]
