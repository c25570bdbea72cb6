"""Atomic writes: output appears whole or not at all, readable like any other file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from faults import full_disk

from mergesearch.io import atomic_dir, atomic_write_text


def test_a_failed_block_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_a_successful_block_replaces_the_old_folder_whole(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with atomic_dir(tmp_path / "out") as tmp:
        private = tmp / "weights.bin"
        private.write_bytes(b"w")
        private.chmod(0o600)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["weights.bin"]
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "weights.bin").stat().st_mode) & 0o044 == 0o044


def test_atomic_text_write_leaves_no_temp_files(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a" / "b.json", "{}")
    assert (tmp_path / "a" / "b.json").read_text() == "{}"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]


def test_a_write_the_full_disk_refuses_part_way_leaves_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "ledger.json"
    atomic_write_text(target, '{"trials": 3}')
    full_disk(monkeypatch)
    with pytest.raises(OSError, match="No space left") as refused:
        atomic_write_text(target, '{"trials": 4, "padding": "' + "x" * 4096 + '"}')
    assert refused.value.filename == str(target)  # the user's file is named, not our temp file
    assert target.read_text() == '{"trials": 3}'
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]
