"""Laws of the shared file helpers (tinytransformer._files): untrusted reads never block,
and writes replace a file whole or not at all."""
from __future__ import annotations

import os

import pytest

from fuzzing import run_bounded
from tinytransformer._files import atomic_write, open_regular_file


def test_only_regular_files_are_opened_and_nothing_blocks(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (tmp_path, "a folder"), ("/dev/null", "a character device")):
        outcome = run_bounded(lambda: open_regular_file(path), clean=(OSError,), seconds=5)
        assert outcome.kind == "clean error" and f"not a regular file ({kind})" in outcome.detail, outcome
    (tmp_path / "plain").write_bytes(b"abc")
    with open_regular_file(tmp_path / "plain") as f:
        assert f.read() == b"abc"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_write(path, "w") as f:
            f.write("new, but")
            raise RuntimeError("half-way")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["notes.txt"]


def test_a_write_replaces_the_file_whole_keeping_its_permissions(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("old")
    path.chmod(0o600)
    with open(path) as reader:  # a reader of the old file keeps reading the old file
        with atomic_write(path, "w") as f:
            f.write("new")
        assert reader.read() == "old"
    assert path.read_text() == "new" and (path.stat().st_mode & 0o777) == 0o600
    with atomic_write(tmp_path / "fresh.bin") as f:
        f.write(b"\0")
    assert (tmp_path / "fresh.bin").stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_bad_mode_raises_a_clear_value_error(tmp_path):
    with pytest.raises(ValueError, match="mode: expected 'w' or 'wb', got 'a'"):
        with atomic_write(tmp_path / "x", "a"):
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
