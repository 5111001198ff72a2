"""The cache directory's layout, named once, and how to reach into it without following links.

Everything under the cache root is treated as possibly planted by someone else: directories are
opened one component at a time with O_NOFOLLOW, relative to their parent's descriptor, so a
link (or a directory swapped for one while we work) is refused instead of followed.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from packcache.errors import PackcacheError

DIR_MODE = 0o700  # the root and every directory in it: private whatever the umask
FILE_MODE = 0o600  # index.db (and SQLite's -wal/-shm, which take its mode), lock
BLOB_MODE = 0o444  # blobs are never written again once in place
BLOBS, SHA256, INGEST = "blobs", "sha256", "ingest"
INDEX, LOCK, CONFIG = "index.db", "lock", "config.toml"
INDEX_SIDE_FILES = ("index.db-wal", "index.db-shm", "index.db-journal")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeCacheError(PackcacheError):
    """Something in the cache directory is not what packcache made (a link, a file for a
    directory, a foreign owner): refused rather than followed or changed."""


class CacheLayout(NamedTuple):
    """Where each part of a cache lives: <root>/{blobs/sha256/<2 hex>/<64 hex>, ingest/,
    index.db, lock, config.toml}."""

    root: Path

    @property
    def blobs_dir(self) -> Path:
        return self.root / BLOBS / SHA256

    @property
    def ingest_dir(self) -> Path:
        return self.root / INGEST

    @property
    def index(self) -> Path:
        return self.root / INDEX

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    def blob_path(self, hex_: str) -> Path:
        return self.blobs_dir / hex_[:2] / hex_


def describe(mode: int) -> str:
    """What kind of file a mode says, for messages."""
    kinds = {
        stat.S_IFLNK: "a symbolic link",
        stat.S_IFDIR: "a directory",
        stat.S_IFREG: "a regular file",
        stat.S_IFIFO: "a fifo",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
    }
    return kinds.get(stat.S_IFMT(mode), "a special file")


def open_root(root: Path) -> int:
    """A descriptor of the cache root (the user's choice of path, so it may be reached through
    links; nothing below it is)."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise PackcacheError(f"cache directory {root} is not a directory") from None


def open_subdir(dir_fd: int, name: str, where: Path) -> int:
    """Open directory `name` in `dir_fd` without following a link; `where` names it."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = describe(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
            raise UnsafeCacheError(
                f"{where} is {kind}, not a directory: packcache does not follow links in its "
                "cache (remove it, or run `packcache verify --repair` if it is inside blobs/)"
            ) from None
        raise


@contextmanager
def opened_dir(root: Path, *parts: str) -> Iterator[int]:
    """A descriptor of root/parts..., each part opened without following links."""
    fd = open_root(root)
    try:
        where = root
        for part in parts:
            where = where / part
            child = open_subdir(fd, part, where)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def lstat_in(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def check_regular(dir_fd: int, name: str, where: Path) -> bool:
    """Whether `name` exists; raises if it is anything but a regular file (a link above all)."""
    st = lstat_in(dir_fd, name)
    if st is None:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeCacheError(
            f"{where} is {describe(st.st_mode)}, not a regular file: packcache does not follow "
            "links in its cache"
        )
    return True


def warn(message: str) -> None:
    sys.stderr.write(f"packcache: warning: {message}\n")


def check_access(st: os.stat_result, where: Path, *, writing: bool) -> None:
    """Say so when a cache directory others may write to, or another user owns (as ssh does
    for keys): other users' writes could plant links or files. Never changes the mode."""
    mode = stat.S_IMODE(st.st_mode)
    euid = os.geteuid()
    if mode & 0o002 and not mode & stat.S_ISVTX and writing:
        raise UnsafeCacheError(
            f"cache directory {where} is writable by every user (mode {mode:04o}): "
            f"refusing to use it; run `chmod go-w {where}`"
        )
    if mode & 0o022:
        warn(f"cache directory {where} is writable by other users (mode {mode:04o})")
    if st.st_uid != euid:
        warn(f"cache directory {where} is owned by uid {st.st_uid}, not by you (uid {euid})")
