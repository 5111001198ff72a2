"""`verify`: re-hash every blob and reconcile blob files with the index.

The walk goes through directory descriptors and never follows a link: whatever is not a blob
file where a blob belongs (a link, a fifo, a directory, a misnamed file) is a stray, and repair
removes that entry itself, never what a link points to. One bad entry never stops the walk.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from packcache.digest import CHUNK, SHA256_PREFIX
from packcache.errors import CorruptBlobError, PackcacheError
from packcache.store.blobs import INGEST_SUFFIX, partial_owner_gone
from packcache.store.layout import (
    BLOBS,
    INGEST,
    SHA256,
    UnsafeCacheError,
    lstat_in,
    open_subdir,
    opened_dir,
)
from packcache.store.store import Store

SHARD = re.compile(r"[0-9a-f]{2}")
BLOB_NAME = re.compile(r"[0-9a-f]{64}")


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)  # diffIDs whose blob file is gone
    corrupt: list[str] = field(default_factory=list)  # diffIDs whose blob does not hash right
    unreadable: list[str] = field(default_factory=list)  # diffIDs whose blob this user can't read
    orphans: list[str] = field(default_factory=list)  # entries under blobs/ no row names
    stale_ingest: list[str] = field(default_factory=list)  # ingest/ entries no live ingest owns
    unremoved: list[str] = field(default_factory=list)  # what repair could not remove, and why
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not (
            self.missing or self.corrupt or self.unreadable or self.orphans or self.stale_ingest
        )


@dataclass(frozen=True)
class _Entry:
    """An entry of the layout, by its parent's path parts (from the root) and its name."""

    parts: tuple[str, ...]
    name: str

    def path(self, root: Path) -> str:
        return str(root.joinpath(*self.parts, self.name))


def _check_blob(store: Store, digest: str, size: int) -> str | None:
    """'missing', 'corrupt' or 'unreadable', or None for a blob that hashes right."""
    try:
        fd = store.blobs.open_fd(digest)
    except FileNotFoundError:
        return "missing"
    except CorruptBlobError:
        return "corrupt"
    except PermissionError:
        return "unreadable"
    except OSError:
        return "corrupt"
    with os.fdopen(fd, "rb", buffering=0) as handle:
        if os.fstat(fd).st_size != size:
            return "corrupt"
        hasher = hashlib.sha256()
        try:
            while chunk := handle.read(CHUNK):
                hasher.update(chunk)
        except OSError:
            return "corrupt"
    return None if SHA256_PREFIX + hasher.hexdigest() == digest else "corrupt"


def _walk_blobs(store: Store, indexed: set[str], report: VerifyReport) -> list[_Entry]:
    """Entries under blobs/ that are not indexed blob files, in order."""
    root = store.root
    found: list[_Entry] = []
    try:
        with opened_dir(root, BLOBS) as blobs_fd:
            for name in sorted(os.listdir(blobs_fd)):
                st = lstat_in(blobs_fd, name)
                if st is not None and not (name == SHA256 and stat.S_ISDIR(st.st_mode)):
                    found.append(_Entry((BLOBS,), name))
        with opened_dir(root, BLOBS, SHA256) as sha_fd:
            for shard in sorted(os.listdir(sha_fd)):
                found += _walk_shard(store, sha_fd, shard, indexed, report)
    except FileNotFoundError:
        pass
    return found


def _walk_shard(
    store: Store, sha_fd: int, shard: str, indexed: set[str], report: VerifyReport
) -> list[_Entry]:
    st = lstat_in(sha_fd, shard)
    here = (BLOBS, SHA256)
    if st is None:
        return []
    if not (stat.S_ISDIR(st.st_mode) and SHARD.fullmatch(shard)):
        return [_Entry(here, shard)]
    try:
        fd = open_subdir(sha_fd, shard, store.layout.blobs_dir / shard)
    except UnsafeCacheError:  # swapped for a link since the lstat
        return [_Entry(here, shard)]
    except OSError as exc:
        report.unremoved.append(f"{store.layout.blobs_dir / shard}: cannot read: {exc.strerror}")
        return []
    found = []
    try:
        for name in sorted(os.listdir(fd)):
            entry_st = lstat_in(fd, name)
            if entry_st is None:
                continue
            blob_file = (
                stat.S_ISREG(entry_st.st_mode)
                and BLOB_NAME.fullmatch(name)
                and name.startswith(shard)
            )
            if not blob_file or SHA256_PREFIX + name not in indexed:
                found.append(_Entry((*here, shard), name))
    finally:
        os.close(fd)
    return found


def _walk_ingest(store: Store) -> list[_Entry]:
    """Entries of ingest/ no live ingest owns: dead writers' temp files and anything else."""
    now = time.time()
    found = []
    try:
        with opened_dir(store.root, INGEST) as ingest_fd:
            for name in sorted(os.listdir(ingest_fd)):
                st = lstat_in(ingest_fd, name)
                if st is None:
                    continue
                live = (
                    stat.S_ISREG(st.st_mode)
                    and name.endswith(INGEST_SUFFIX)
                    and not partial_owner_gone(name, st.st_mtime, now)
                )
                if not live:
                    found.append(_Entry((INGEST,), name))
    except FileNotFoundError:
        pass
    return found


def _remove(root: Path, entry: _Entry) -> None:
    """Remove one entry where it is: a link is unlinked, never followed; a directory is
    removed with its contents by descriptor (shutil's walk does not follow links either)."""
    with opened_dir(root, *entry.parts) as fd:
        st = lstat_in(fd, entry.name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(entry.name, dir_fd=fd)
        else:
            os.unlink(entry.name, dir_fd=fd)


def _repair(store: Store, report: VerifyReport, rows: list, strays: list[_Entry]) -> None:
    corrupt = set(report.corrupt)
    bad = list(report.missing)
    to_unlink = []
    for diff_id, blob_digest, _size in rows:
        if diff_id in corrupt:
            problem = store.blobs.removal_problem(blob_digest)
            if problem is None:
                bad.append(diff_id)
                to_unlink.append(blob_digest)
            else:
                report.unremoved.append(problem)
    if bad:
        with store.db.write() as conn:
            store.uncache_rows(conn, bad)
    for digest in to_unlink:
        try:
            store.blobs.remove(digest)
        except OSError as exc:
            report.unremoved.append(f"{store.blobs.path(digest)}: {exc.strerror}")
    for entry in strays:
        try:
            _remove(store.root, entry)
        except (OSError, PackcacheError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            report.unremoved.append(f"{entry.path(store.root)}: {reason}")
    report.repaired = not (report.unremoved or report.unreadable)


def verify(store: Store, repair: bool = False) -> VerifyReport:
    """Check every indexed blob is on disk with the right bytes; find orphans and stale temps.

    Holds the exclusive cache lock so that no ingest or prune changes files while they are
    compared with the index. With `repair`, bad layers are evicted and stray entries removed.
    """
    if repair and not store.writable:
        raise PackcacheError(f"cannot repair the cache at {store.root}: it is open read-only")
    report = VerifyReport()
    with store.lock.exclusive():
        with store.read() as conn:
            rows = conn.execute(
                "SELECT diff_id, blob_digest, blob_size FROM layers WHERE blob_digest IS NOT NULL"
            ).fetchall()
        indexed = {blob_digest for _, blob_digest, _ in rows}
        for diff_id, blob_digest, blob_size in rows:
            report.checked += 1
            problem = _check_blob(store, blob_digest, blob_size)
            if problem is not None:
                getattr(report, problem).append(diff_id)
        blob_strays = _walk_blobs(store, indexed, report)
        ingest_strays = _walk_ingest(store)
        report.orphans = [entry.path(store.root) for entry in blob_strays]
        report.stale_ingest = [entry.path(store.root) for entry in ingest_strays]
        if repair and not report.ok:
            _repair(store, report, rows, blob_strays + ingest_strays)
    return report
