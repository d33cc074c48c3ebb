"""Reading untrusted files and writing files safely: two helpers the file formats share.

- `open_regular_file(path, where)` opens a file for reading only if it is a regular
  file. A FIFO, a terminal or a device given as a path would otherwise block the
  reader forever (opening a FIFO waits for a writer) or never end.
- `atomic_writer(path, where)` writes to a temporary file in the target's folder and
  renames it into place when the body finishes. A reader that has the old file open
  (or memory-mapped) keeps reading the old bytes, and a write that fails halfway
  leaves the old file as it was and no temporary file behind.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "out.txt")
    >>> with atomic_writer(path, "text file") as handle:
    ...     _ = handle.write(b"hello")
    >>> with open_regular_file(path, "text file") as handle:
    ...     handle.read()
    b'hello'
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["open_regular_file", "atomic_writer"]


def _check_path(path, where: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{where}: expected a path (str or os.PathLike), got {type(path).__name__}")
    return os.fspath(path)


def open_regular_file(path, where: str):
    """An open binary handle on `path`, or an error naming `where` unless it is a regular file.

    The file is opened without blocking (O_NONBLOCK) and checked with fstat on the open
    descriptor, so a FIFO is refused at once and no other file can be swapped in between
    the check and the read.
    """
    name = _check_path(path, where)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(name, flags)
    except OSError as error:
        raise FileNotFoundError(f"{where} cannot be opened: {error.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
                    if stat.S_ISSOCK(mode) else "not a regular file")
            raise ValueError(f"{where}: expected a regular file, got {kind}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _mode_for(target: Path) -> int:
    """The permissions the written file gets: the old file's, or what open() would give a new one."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_writer(path, where: str):
    """Yield a binary handle on a temporary file next to `path`; rename it to `path` on success.

    On any exception the temporary file is removed and `path` is left untouched.
    A symlink is followed: the file it points to is replaced, the link stays.
    """
    target = Path(os.path.realpath(_check_path(path, where)))  # through a symlink: replace its target, keep it
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: the folder {str(folder)!r} does not exist")
    if target.is_dir():
        raise IsADirectoryError(f"{where}: {str(target)!r} is a directory")
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _mode_for(target))  # mkstemp makes it private (0600): give the usual mode
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
