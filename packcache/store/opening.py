"""Checking a cache directory before it is used, and creating a new one.

Nothing is written until what is there has been looked at without following links: a link or
a file where a layout directory belongs is refused, a directory others may write to is reported
(and refused for writing if every user may), and a foreign file at index.db is refused before
blobs/ and ingest/ are created beside it.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from packcache.errors import IndexError_, PackcacheError
from packcache.store.blobs import BlobFiles
from packcache.store.database import HEAD_REVISION, identify
from packcache.store.layout import (
    BLOBS,
    DIR_MODE,
    INGEST,
    SHA256,
    CacheLayout,
    UnsafeCacheError,
    check_access,
    describe,
    open_root,
    opened_dir,
)


def _root_stat(root: Path) -> os.stat_result | None:
    try:
        st = root.stat()  # the root is the user's choice of path: links to it are followed
    except (FileNotFoundError, NotADirectoryError):
        return None  # to be created (where a file is in the way, creating it says so)
    except OSError as exc:
        raise PackcacheError(f"cannot use the cache directory {root}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise PackcacheError(f"cache directory {root} is not a directory")
    return st


def _check_layout(layout: CacheLayout, *, writing: bool) -> None:
    """Refuse links and non-directories where the layout's directories belong; say so when
    one is open to other users."""
    root_st = layout.root.stat()
    check_access(root_st, layout.root, writing=writing)
    for parts in ((BLOBS,), (BLOBS, SHA256), (INGEST,)):
        path = layout.root.joinpath(*parts)
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise PackcacheError(f"cannot use {path}: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeCacheError(
                f"{path} is {describe(st.st_mode)}, not a directory: packcache does not follow "
                "links in its cache; remove it"
            )
        check_access(st, path, writing=writing)


def _create_root(root: Path) -> None:
    try:
        root.mkdir(parents=True, mode=DIR_MODE)
    except FileExistsError:
        return  # made by another process meanwhile (or a dangling link: open_root says so)
    fd = open_root(root)
    try:
        os.fchmod(fd, DIR_MODE)  # private whatever the umask
    finally:
        os.close(fd)


def _probe(layout: CacheLayout) -> None:
    """Root ignores permission bits: only a real write tells whether the cache is writable."""
    name = f".probe-{os.getpid()}-{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with opened_dir(layout.root, INGEST) as ingest_fd:
        os.close(os.open(name, flags, 0o600, dir_fd=ingest_fd))
        os.unlink(name, dir_fd=ingest_fd)


def _check_index_writable(index: Path) -> None:
    if os.path.lexists(index) and not os.access(index, os.R_OK | os.W_OK, effective_ids=True):
        st = index.lstat()
        raise IndexError_(
            f"cannot write the index {index}: permission denied (mode "
            f"{stat.S_IMODE(st.st_mode):04o}, owned by uid {st.st_uid}; you are uid {os.geteuid()})"
        )


def prepare(layout: CacheLayout, blobs: BlobFiles, *, writable: bool) -> bool:
    """Check (and for writing, create) the cache directory; returns whether to open it
    writable. A read-only open of a cache with no index yet (or one to upgrade) opens it
    writable, as `ls` always has."""
    root = layout.root
    exists = _root_stat(root) is not None
    if not writable and exists and identify(layout.index) == HEAD_REVISION:
        _check_layout(layout, writing=False)
        return False
    try:
        if not exists:
            _create_root(root)
        _check_layout(layout, writing=True)
        identify(layout.index)  # a foreign file at index.db is refused before anything is made
        blobs.create_dirs()
        _probe(layout)
        _check_index_writable(layout.index)
    except OSError as exc:
        raise PackcacheError(
            f"cache directory {root} is not writable: {exc.strerror or exc}"
        ) from exc
    return True
