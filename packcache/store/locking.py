"""A cache-wide reader/writer file lock.

Ingest commits (rename + index) hold it shared; prune, rm, verify and migrations hold it
exclusive. So a blob can never be unlinked between "the file is there" and "the row says so".
flock locks die with their process, so a killed packcache never leaves the cache locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from packcache.errors import PackcacheError
from packcache.store.layout import FILE_MODE, UnsafeCacheError


class CacheLock:
    """flock on <cache>/lock, opened without following a link. A read-only cache (one this
    user may not write) is locked through a read-only descriptor if the file exists; with no
    lock file there, no writer has ever run, and nothing is locked."""

    def __init__(self, path: Path, *, writable: bool = True) -> None:
        self.path = path
        self.writable = writable

    def _open(self) -> int | None:
        flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            if self.writable:
                try:
                    fd = os.open(self.path, flags | os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
                    os.fchmod(fd, FILE_MODE)
                    return fd
                except FileExistsError:
                    return os.open(self.path, flags | os.O_RDWR)
            try:
                return os.open(self.path, flags | os.O_RDONLY)
            except (FileNotFoundError, PermissionError):
                return None
        except PermissionError:
            raise PackcacheError(f"cannot lock the cache: {self.path}: permission denied") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                raise UnsafeCacheError(
                    f"{self.path} is a symbolic link or not a regular file: packcache does not "
                    "follow links in its cache"
                ) from None
            raise

    @contextmanager
    def _hold(self, mode: int) -> Iterator[None]:
        fd = self._open()
        if fd is None:
            yield
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafeCacheError(f"{self.path} is not a regular file")
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def shared(self) -> contextmanager:
        return self._hold(fcntl.LOCK_SH)

    def exclusive(self) -> contextmanager:
        return self._hold(fcntl.LOCK_EX)
