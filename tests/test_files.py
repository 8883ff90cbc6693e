"""Atomic writes: whole files or nothing, the usual permissions, no temporary files left behind."""

from __future__ import annotations

import os
import stat

import pytest

from atbsn.files import atomic_write, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")

    def fail(tmp: str) -> None:
        open(tmp, "w").write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_written_files_get_the_mode_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_the_temporary_file_carries_the_requested_suffix(tmp_path):
    seen = []
    atomic_write(tmp_path / "c.png", lambda tmp: seen.append(tmp) or open(tmp, "wb").close(), suffix=".png")
    assert seen[0].endswith(".png") and (tmp_path / "c.png").exists()
