"""Reading untrusted files and writing files safely: two helpers the file formats share.

- `open_regular_file(path, where)` opens a file for reading only if it is a regular
  file. A FIFO, a terminal or a device given as a path would otherwise block the
  reader forever (opening a FIFO waits for a writer) or never end.
- `atomic_writer(path, where)` writes to a temporary file in the target's folder and
  renames it into place when the body finishes. A reader that has the old file open
  (or memory-mapped) keeps reading the old bytes, and a write that fails halfway
  leaves the old file as it was and no temporary file behind. The temporary is
  `.NAME.tmp-PID-RANDOM`, created with O_EXCL|O_NOFOLLOW (a planted file or symlink
  of that name is never written through); one left by a writer that was killed
  (its PID is gone, or it is this PID's but older than this process) is removed by
  the next write of NAME in that folder (`remove_stale_temporaries`).

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
import hashlib
import os
import re
import secrets
import stat
import time
from pathlib import Path

__all__ = ["open_regular_file", "atomic_writer", "remove_stale_temporaries", "data_checksum"]

_STARTED = time.time()  # this process's temporaries older than this were left by an earlier process of its PID
_OPEN_TEMPORARIES: set[str] = set()  # the temporaries this process is writing now: never stale


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
    remove_stale_temporaries(target)
    fd, temporary = _create_temporary(target, where)
    _OPEN_TEMPORARIES.add(temporary)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _mode_for(target))  # created private (0600): give the usual mode
        os.replace(temporary, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.filename is None and error.errno is not None:  # disk full and the like: say which file
            raise OSError(error.errno, f"{where}: writing {str(target)!r} failed: {error.strerror}") from error
        raise
    finally:
        _OPEN_TEMPORARIES.discard(temporary)


def _temporary_name(target: Path) -> str:
    """`.NAME.tmp-PID-RANDOM` beside target: recognisable, with the writer's PID."""
    return str(target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}"))


def _create_temporary(target: Path, where: str):
    """(fd, name) of a new private file beside target: O_EXCL|O_NOFOLLOW, so nothing there is followed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = _temporary_name(target)
        try:
            return os.open(name, flags, 0o600), name
        except FileExistsError:
            continue
    raise FileExistsError(f"{where}: could not create a temporary file beside {str(target)!r}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or a pid we cannot ask about): leave its file
    return True


def remove_stale_temporaries(path) -> list[str]:
    """Remove the `.NAME.tmp-PID-*` files beside path that no live writer owns; returns their names.

    Stale: its PID is not running, or it is this process's PID (reused, as in a restarted
    container) but the file is older than this process. Only links are removed (os.unlink):
    a symlink's target is never touched.
    """
    target = Path(path)
    pattern = re.compile(re.escape(f".{target.name}.tmp-") + r"(\d+)-[0-9a-f]+\Z")
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or entry.path in _OPEN_TEMPORARIES:
            continue
        pid = int(match.group(1))
        try:
            old = entry.stat(follow_symlinks=False).st_mtime < _STARTED
        except OSError:
            continue
        if (pid == os.getpid() and old) or (pid != os.getpid() and not _pid_alive(pid)):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(entry.path)
    return removed


def data_checksum(blocks: dict) -> str:
    """SHA-256 (hex) of named byte blocks (name -> bytes-like), in name order: a file's tensor data."""
    digest = hashlib.sha256()
    for name in sorted(blocks):
        data = memoryview(blocks[name]).cast("B")
        digest.update(f"{name}:{data.nbytes}:".encode())
        digest.update(data)
    return digest.hexdigest()
