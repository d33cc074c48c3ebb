"""Laws of the shared file helpers (tinytransformer._files): untrusted reads never block,
and writes replace a file whole or not at all."""
from __future__ import annotations

import os

import pytest

from fuzzing import run_bounded
from tinytransformer._files import atomic_writer, open_regular_file


def test_only_regular_files_are_opened_and_nothing_blocks(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (tmp_path, "a directory"), ("/dev/null", "a device")):
        outcome = run_bounded(lambda: open_regular_file(path, "the file"), clean=(ValueError,), seconds=5)
        assert outcome.kind == "clean error" and f"the file: expected a regular file, got {kind}" in outcome.detail
    (tmp_path / "plain").write_bytes(b"abc")
    with open_regular_file(tmp_path / "plain", "plain") as f:
        assert f.read() == b"abc"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_writer(path, "notes") as f:
            f.write(b"new, but")
            raise RuntimeError("half-way")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["notes.txt"]


def test_a_write_replaces_the_file_whole_keeping_its_permissions(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("old")
    path.chmod(0o600)
    with open(path) as reader:  # a reader of the old file keeps reading the old file
        with atomic_writer(path, "notes") as f:
            f.write(b"new")
        assert reader.read() == "old"
    assert path.read_text() == "new" and (path.stat().st_mode & 0o777) == 0o600


def test_a_write_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("old")
    link.symlink_to(target)
    with atomic_writer(link, "notes") as f:
        f.write(b"new")
    assert link.is_symlink() and target.read_text() == "new"
