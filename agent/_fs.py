"""Crash-safe file writes (after a kill -9 at any instant, the old or the new content remains),
and bounded reads of files a user names."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "fsync_dir", "open_own", "read_regular"]


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry so a rename inside it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, rename, fsync dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    fsync_dir(path.parent)


def open_own(path: Path, *, append: bool) -> BinaryIO:
    """``path`` opened for writing (appending, or truncated), as a regular file of this
    process's own: a symbolic link another program put there is not followed (the agent runs
    as root: its target, any file, would be written), a FIFO is not waited on. Whatever
    non-regular file is found there first is removed (a directory is left, and refused).

    Raises:
        OSError: it cannot be opened, or something other than a regular file took its place.
    """
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(path.lstat().st_mode):
            path.unlink()  # a directory: IsADirectoryError (the caller says so)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags | (os.O_APPEND if append else os.O_TRUNC), 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "ab" if append else "wb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed), refusing more than
    ``limit``.

    A pipe would block the reader until someone writes to it, and ``/dev/zero`` never ends:
    both are refused before a byte is read.

    Raises:
        FileNotFoundError: nothing at ``path``.
        OSError: not a regular file (EINVAL), larger than ``limit`` (EFBIG), or unreadable.
    """
    # O_NONBLOCK: opening a pipe that no one writes to would otherwise block in open().
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a pipe, device or folder)")
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{info.st_size} bytes, more than the {limit} allowed")
        data = handle.read(limit + 1)  # the file may grow while it is read
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"more than the {limit} bytes allowed")
    return data
