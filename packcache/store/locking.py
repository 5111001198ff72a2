"""A cache-wide reader/writer file lock.

Ingest commits (rename + index) hold it shared; prune, rm, verify and migrations hold it
exclusive. So a blob can never be unlinked between "the file is there" and "the row says so".
flock locks die with their process, so a killed packcache never leaves the cache locked.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class CacheLock:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _hold(self, mode: int) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def shared(self) -> contextmanager:
        return self._hold(fcntl.LOCK_SH)

    def exclusive(self) -> contextmanager:
        return self._hold(fcntl.LOCK_EX)
