"""The blob files: one read-only file per blob under blobs/sha256/<2 hex>/<64 hex>.

Modelled on containerd's content store: bytes are written to a temp file in ingest/ while being
hashed, fsynced, checked against the expected digest, made read-only and only then renamed into
place. A crash leaves either nothing in blobs/ or a complete, verified blob.
"""

from __future__ import annotations

import os
import queue
import secrets
import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from packcache.digest import CHUNK, LayerDigester, VerifyingReader, digest_hex
from packcache.errors import CorruptBlobError, PackcacheError

INGEST_SUFFIX = ".partial"
PIPELINE_DEPTH = 8  # chunks queued for the hashing and writing thread: 8 MiB of a layer at most


@dataclass(frozen=True)
class StagedBlob:
    """A layer blob hashed (and written and fsynced unless `path` is None), not yet in place."""

    digest: str
    size: int
    diff_id: str
    uncompressed_size: int
    compression: str
    path: Path | None
    # Done once the file is fsynced and closed; commit waits for it (see BlobFiles.stage).
    durable: Future[None] | None = field(default=None, compare=False, repr=False)


def _fsync_and_close(out: BinaryIO) -> None:
    try:
        os.fsync(out.fileno())
        # Once on disk, the blob's pages leave the page cache. Keeping every ingested GB cached
        # made the next blob's writes pay for new page-cache memory: importing a 1 GiB image
        # cost 2.6 s of kernel time and ran at 0.79x `docker save > file`; dropping them, 0.74 s
        # and 1.02x (26.1 graphdriver, interleaved, median of 4). Reads refill it as needed.
        os.posix_fadvise(out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        out.close()


_fsyncer: tuple[int, ThreadPoolExecutor] | None = None  # (pid, executor): a fork needs its own
_fsyncer_lock = threading.Lock()


def _fsync_later(out: BinaryIO) -> Future[None]:
    """fsync and close `out` in the process's one fsync thread (blobs are synced in order)."""
    global _fsyncer
    with _fsyncer_lock:
        if _fsyncer is None or _fsyncer[0] != os.getpid():
            _fsyncer = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="packcache-fsync"))
        return _fsyncer[1].submit(_fsync_and_close, out)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Worker:
    """Runs `consume` on every chunk in a second thread, in order, through a bounded queue.

    The caller's thread then only reads the source: a daemon streaming `docker save` is not
    held up while a chunk is hashed, decompressed and written (hashlib, zlib, zstandard and
    file writes release the GIL, so both threads run at once). At most PIPELINE_DEPTH chunks
    wait in the queue. The first error of `consume` is raised in the caller's thread.
    """

    def __init__(self, consume: Callable[[bytes], object]) -> None:
        self._consume = consume
        self._error: BaseException | None = None
        self._queue: queue.Queue[bytes | None] = queue.Queue(PIPELINE_DEPTH)
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="packcache-stage", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining: the caller must never block on a full queue
            try:
                self._consume(chunk)
            except BaseException as exc:  # raised in the caller's thread
                self._error = exc

    def put(self, chunk: bytes) -> None:
        if self._error is not None:
            self.finish()
        self._queue.put(chunk)

    def close(self) -> None:
        """Stop the thread once it has taken every chunk queued (idempotent)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def finish(self) -> None:
        """Wait until every chunk is consumed; raise the first error met doing so."""
        self.close()
        if self._error is not None:
            raise self._error


class BlobFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs" / "sha256"
        self.ingest_dir = root / "ingest"

    def create_dirs(self) -> None:
        created = not (self.blobs_dir.is_dir() and self.ingest_dir.is_dir())
        for directory in (self.blobs_dir, self.ingest_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if created:  # a new cache: the directories' names on disk before blobs go in them
            for directory in (self.blobs_dir.parent, self.root, self.root.parent):
                _fsync_dir(directory)

    def path(self, digest: str) -> Path:
        hex_ = digest_hex(digest)
        return self.blobs_dir / hex_[:2] / hex_

    def open(self, digest: str, size: int | None = None, on_mismatch=None) -> VerifyingReader:
        """Open a blob for reading; the reader raises CorruptBlobError at EOF if it was altered."""
        path = self.path(digest)
        try:
            raw = open(path, "rb", buffering=0)  # noqa: SIM115 - handed to the caller
        except FileNotFoundError as exc:
            if on_mismatch is not None:
                on_mismatch()
            raise CorruptBlobError(f"blob {digest} is missing from {path.parent}") from exc
        if size is not None and os.fstat(raw.fileno()).st_size != size:
            raw.close()
            if on_mismatch is not None:
                on_mismatch()
            raise CorruptBlobError(f"blob {digest} has the wrong size on disk: it is corrupt")
        return VerifyingReader(raw, digest, size, on_mismatch)

    def prefetch(self, digests: Iterable[str]) -> None:
        """Have the kernel start reading these blobs now (POSIX_FADV_WILLNEED): a load streams
        them one after another, and ingests drop blobs from the page cache (see above)."""
        for digest in digests:
            try:
                fd = os.open(self.path(digest), os.O_RDONLY)
            except OSError:
                continue  # a missing blob is reported when it is read
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def stage(
        self,
        source: BinaryIO,
        *,
        expected_digest: str | None = None,
        expected_diff_id: str | None = None,
        write: bool = True,
    ) -> StagedBlob:
        """Copy `source` to a temp file in ingest/ while computing its digest and diffID.

        With write=False the bytes are only hashed (to learn or check digests of a layer the
        cache already holds in another form). Raises CorruptBlobError when a digest differs.
        The fsync runs in a background thread, so a caller reading a stream of blobs (`docker
        save`) goes on to the next one while the kernel writes this one out; `commit` waits
        for it, so nothing reaches blobs/ before it is on disk.
        """
        digester = LayerDigester()
        temp: Path | None = None
        out = None
        if write:
            name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(8)}{INGEST_SUFFIX}"
            temp = self.ingest_dir / name
            out = open(temp, "xb", buffering=0)  # noqa: SIM115 - closed below

        def consume(chunk: bytes) -> None:
            digester.update(chunk)
            if out is not None:
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise self._write_error(exc) from exc

        worker: _Worker | None = None
        try:
            chunk = source.read(CHUNK)
            if chunk:  # the first chunk inline: a blob that fits in one needs no thread
                consume(chunk)
                while chunk := source.read(CHUNK):
                    if worker is None:
                        worker = _Worker(consume)
                    worker.put(bytes(chunk))  # never a buffer the source may reuse (no copy)
            if worker is not None:
                worker.finish()
            digest, diff_id, uncompressed_size = digester.finish()
            for label, expected, actual in (
                ("digest", expected_digest, digest),
                ("diffID", expected_diff_id, diff_id),
            ):
                if expected is not None and expected != actual:
                    raise CorruptBlobError(
                        f"layer bytes do not match their {label}: expected {expected}, got {actual}"
                    )
            durable = None
            if out is not None:
                os.fchmod(out.fileno(), 0o444)
                durable = _fsync_later(out)
        except BaseException:
            if worker is not None:
                worker.close()
            if out is not None:
                out.close()
            if temp is not None:
                temp.unlink(missing_ok=True)
            raise
        return StagedBlob(
            digest=digest,
            size=digester.size,
            diff_id=diff_id,
            uncompressed_size=uncompressed_size,
            compression=digester.compression or "none",
            path=temp,
            durable=durable,
        )

    def commit(self, staged: StagedBlob) -> None:
        """Atomically move a staged blob into place. Concurrent commits of one digest both win."""
        assert staged.path is not None
        if staged.durable is not None:
            try:
                staged.durable.result()  # on disk before it is named a blob
            except OSError as exc:
                raise self._write_error(exc) from exc
        final = self.path(staged.digest)
        try:
            final.parent.mkdir(mode=0o700)
        except FileExistsError:
            pass
        else:  # a new shard: its own name in blobs/sha256 must be on disk before the blob is
            _fsync_dir(final.parent.parent)
        os.replace(staged.path, final)
        _fsync_dir(final.parent)

    def _write_error(self, exc: OSError) -> PackcacheError:
        """Disk full or an I/O error while a blob is written: say where."""
        return PackcacheError(f"cannot write to the cache at {self.root}: {exc.strerror or exc}")

    def discard(self, staged: StagedBlob) -> None:
        if staged.durable is not None:
            with suppress(OSError):  # its file is removed either way
                staged.durable.result()
        if staged.path is not None:
            staged.path.unlink(missing_ok=True)

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def iter_blob_paths(self):
        """Yield (digest, path) of every file under blobs/ (for verify's orphan scan)."""
        if not self.blobs_dir.exists():
            return
        for shard in sorted(self.blobs_dir.iterdir()):
            if shard.is_dir():
                for path in sorted(shard.iterdir()):
                    yield f"sha256:{path.name}", path
