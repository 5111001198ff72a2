"""`verify`: re-hash every blob and reconcile blob files with the index."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from packcache.digest import CHUNK, SHA256_PREFIX
from packcache.store.blobs import INGEST_SUFFIX
from packcache.store.queries import HOST, pid_alive
from packcache.store.store import Store

STALE_INGEST_AGE_S = 24 * 3600.0  # a temp file this old belongs to no live ingest, whoever wrote it


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)  # diffIDs whose blob file is gone
    corrupt: list[str] = field(default_factory=list)  # diffIDs whose blob does not hash right
    orphans: list[str] = field(default_factory=list)  # files under blobs/ no row names
    stale_ingest: list[str] = field(default_factory=list)  # temp files of dead ingests
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.orphans or self.stale_ingest)


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
    return SHA256_PREFIX + hasher.hexdigest()


def _is_stale_ingest(path: Path, now: float) -> bool:
    try:
        host, pid, _ = path.name.rsplit("-", 2)
        if host == HOST and not pid_alive(int(pid)):
            return True
    except ValueError:
        return True  # not a name packcache writes
    try:
        return now - path.stat().st_mtime > STALE_INGEST_AGE_S
    except FileNotFoundError:
        return False


def verify(store: Store, repair: bool = False) -> VerifyReport:
    """Check every indexed blob is on disk with the right bytes; find orphans and stale temps.

    Holds the exclusive cache lock so that no ingest or prune changes files while they are
    compared with the index. With `repair`, bad layers are evicted and stray files removed.
    """
    report = VerifyReport()
    with store.lock.exclusive():
        with store.db.read() as conn:
            rows = conn.execute(
                "SELECT diff_id, blob_digest, blob_size FROM layers WHERE blob_digest IS NOT NULL"
            ).fetchall()
        indexed = {blob_digest for _, blob_digest, _ in rows}
        for diff_id, blob_digest, blob_size in rows:
            report.checked += 1
            path = store.blobs.path(blob_digest)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                report.missing.append(diff_id)
                continue
            if size != blob_size or _hash_file(path) != blob_digest:
                report.corrupt.append(diff_id)
        for digest, path in store.blobs.iter_blob_paths():
            if digest not in indexed:
                report.orphans.append(str(path))
        now = time.time()
        if store.blobs.ingest_dir.exists():
            for path in sorted(store.blobs.ingest_dir.iterdir()):
                if not path.name.endswith(INGEST_SUFFIX) or _is_stale_ingest(path, now):
                    report.stale_ingest.append(str(path))
        if repair and not report.ok:
            bad = report.missing + report.corrupt
            with store.db.write() as conn:
                store.uncache_rows(conn, bad)
            for diff_id, blob_digest, _size in rows:
                if diff_id in report.corrupt:
                    store.blobs.remove(blob_digest)
            for path in report.orphans + report.stale_ingest:
                try:
                    os.chmod(path, 0o600)
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            report.repaired = True
    return report
