"""The blob files: one read-only file per blob under blobs/sha256/<2 hex>/<64 hex>.

Modelled on containerd's content store: bytes are written to a temp file in ingest/ while being
hashed, fsynced, checked against the expected digest, made read-only and only then renamed into
place. A crash leaves either nothing in blobs/ or a complete, verified blob.
"""

from __future__ import annotations

import errno
import os
import queue
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

from packcache.digest import CHUNK, LayerDigester, VerifyingReader, digest_hex
from packcache.errors import CorruptBlobError, PackcacheError
from packcache.store.layout import (
    BLOB_MODE,
    BLOBS,
    DIR_MODE,
    FILE_MODE,
    INGEST,
    SHA256,
    CacheLayout,
    UnsafeCacheError,
    describe,
    lstat_in,
    open_root,
    open_subdir,
    opened_dir,
)
from packcache.store.queries import HOST, pid_alive

INGEST_SUFFIX = ".partial"
STALE_INGEST_AGE_S = 24 * 3600.0  # a temp file this old belongs to no live ingest, whoever wrote it
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
        # Once on disk, the blob's pages leave the page cache: keeping every ingested byte
        # cached makes the next blob's writes pay to reclaim that memory; reads refill it.
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


class Partial(NamedTuple):
    """A temp file in ingest/: a blob being written, or left by a process that died."""

    name: str
    size: int
    reclaimable: bool  # its writer is gone (or it is not a name packcache writes)


def partial_owner_gone(name: str, mtime: float, now: float) -> bool:
    """Whether the process that named this temp file (<host>-<pid>-<token>.partial) is gone: a
    process of this host that no longer runs, or a day without a write from another host."""
    try:
        host, pid, _ = name.removesuffix(INGEST_SUFFIX).rsplit("-", 2)
        if host == HOST and not pid_alive(int(pid)):
            return True
    except ValueError:
        return True  # not a name packcache writes
    return now - mtime > STALE_INGEST_AGE_S


def _check_expected(label: str, expected: str | None, actual: str) -> None:
    if expected is not None and expected != actual:
        raise CorruptBlobError(
            f"layer bytes do not match their {label}: expected {expected}, got {actual}"
        )


def ensure_dir(parent_fd: int, name: str, where: Path) -> tuple[int, bool]:
    """Open directory `name` in `parent_fd`, creating it 0700 if missing (chmod after mkdir,
    so the umask does not decide); returns (descriptor, created). A link there is refused."""
    try:
        os.mkdir(name, DIR_MODE, dir_fd=parent_fd)
        created = True
    except FileExistsError:
        created = False
    fd = open_subdir(parent_fd, name, where)
    if created:
        os.fchmod(fd, DIR_MODE)
    return fd, created


class BlobFiles:
    def __init__(self, layout: CacheLayout) -> None:
        self.layout = layout
        self.root = layout.root
        self.blobs_dir = layout.blobs_dir
        self.ingest_dir = layout.ingest_dir

    def create_dirs(self) -> None:
        """blobs/, blobs/sha256 and ingest/, 0700; their names on disk before blobs go in."""
        root_fd = open_root(self.root)
        opened = []
        try:
            ingest_fd, new_ingest = ensure_dir(root_fd, INGEST, self.ingest_dir)
            opened.append(ingest_fd)
            blobs_fd, new_blobs = ensure_dir(root_fd, BLOBS, self.blobs_dir.parent)
            opened.append(blobs_fd)
            sha_fd, new_sha = ensure_dir(blobs_fd, SHA256, self.blobs_dir)
            opened.append(sha_fd)
            if new_sha:
                os.fsync(blobs_fd)
            if new_ingest or new_blobs:
                os.fsync(root_fd)
                with suppress(OSError):  # the root's own name, if we may open its parent
                    parent = os.open(self.root.parent, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(parent)
                    finally:
                        os.close(parent)
        finally:
            for fd in [root_fd, *opened]:
                os.close(fd)

    def path(self, digest: str) -> Path:
        return self.layout.blob_path(digest_hex(digest))

    def open_fd(self, digest: str) -> int:
        """A read descriptor of a blob, reached without following any link; raises
        FileNotFoundError when it is missing, CorruptBlobError when it is not a regular file."""
        hex_ = digest_hex(digest)
        try:
            with opened_dir(self.root, BLOBS, SHA256, hex_[:2]) as shard_fd:
                # O_NONBLOCK: a fifo planted there must not hang the open.
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                fd = os.open(hex_, flags, dir_fd=shard_fd)
        except UnsafeCacheError as exc:
            raise CorruptBlobError(f"blob {digest}: {exc}") from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise CorruptBlobError(f"blob {digest} is a symbolic link: it is not used") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CorruptBlobError(f"blob {digest} is not a regular file: it is not used")
        os.set_blocking(fd, True)
        return fd

    def open(self, digest: str, size: int | None = None, on_mismatch=None) -> VerifyingReader:
        """Open a blob for reading; the reader raises CorruptBlobError at EOF if it was altered."""
        try:
            fd = self.open_fd(digest)
        except FileNotFoundError as exc:
            if on_mismatch is not None:
                on_mismatch()
            raise CorruptBlobError(
                f"blob {digest} is missing from {self.path(digest).parent}"
            ) from exc
        except CorruptBlobError:
            if on_mismatch is not None:
                on_mismatch()
            raise
        if size is not None and os.fstat(fd).st_size != size:
            os.close(fd)
            if on_mismatch is not None:
                on_mismatch()
            raise CorruptBlobError(f"blob {digest} has the wrong size on disk: it is corrupt")
        raw = os.fdopen(fd, "rb", buffering=0)
        return VerifyingReader(raw, digest, size, on_mismatch)

    def prefetch(self, digests: Iterable[str]) -> None:
        """Have the kernel start reading these blobs now (POSIX_FADV_WILLNEED): a load streams
        them one after another, and ingests drop blobs from the page cache (see above)."""
        for digest in digests:
            try:
                fd = self.open_fd(digest)
            except (OSError, PackcacheError):
                continue  # a missing or bad blob is reported when it is read
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def _create_temp(self) -> tuple[Path, BinaryIO]:
        name = f"{HOST}-{os.getpid()}-{secrets.token_hex(8)}{INGEST_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with opened_dir(self.root, INGEST) as ingest_fd:
            fd = os.open(name, flags, FILE_MODE, dir_fd=ingest_fd)
        return self.ingest_dir / name, os.fdopen(fd, "wb", buffering=0)

    def _unlink_temp(self, path: Path) -> None:
        with opened_dir(self.root, INGEST) as ingest_fd, suppress(FileNotFoundError):
            os.unlink(path.name, dir_fd=ingest_fd)

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
        save`) goes on to the next one while the kernel writes this one out; `commit_many`
        waits for it, so nothing reaches blobs/ before it is on disk.
        """
        digester = LayerDigester()
        temp: Path | None = None
        out = None
        if write:
            temp, out = self._create_temp()

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
            _check_expected("digest", expected_digest, digest)
            _check_expected("diffID", expected_diff_id, diff_id)
            durable = None
            if out is not None:
                os.fchmod(out.fileno(), BLOB_MODE)
                durable = _fsync_later(out)
        except BaseException:
            if worker is not None:
                worker.close()
            if out is not None:
                out.close()
            if temp is not None:
                self._unlink_temp(temp)
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

    def commit_many(self, staged_blobs: list[StagedBlob], renamed: list[str]) -> None:
        """Move staged blobs into place, appending each digest to `renamed` once it is there.

        Each blob is on disk before it is named; each shard directory touched is fsynced once
        for the whole batch, before this returns and so before the caller commits the index
        rows naming them. Concurrent commits of one digest both win.
        """
        if not staged_blobs:
            return
        self._make_durable(staged_blobs)
        shard_fds: dict[str, int] = {}
        with (
            opened_dir(self.root, BLOBS, SHA256) as sha_fd,
            opened_dir(self.root, INGEST) as ingest_fd,
        ):
            try:
                self._open_shards(sha_fd, staged_blobs, shard_fds)
                for staged in staged_blobs:
                    hex_ = digest_hex(staged.digest)
                    name = staged.path.name  # type: ignore[union-attr]
                    os.replace(name, hex_, src_dir_fd=ingest_fd, dst_dir_fd=shard_fds[hex_[:2]])
                    renamed.append(staged.digest)
                for fd in shard_fds.values():
                    os.fsync(fd)
            except PermissionError as exc:
                raise PackcacheError(
                    f"cannot write to {self.blobs_dir}: permission denied (is part of the cache "
                    "another user's?)"
                ) from exc
            finally:
                for fd in shard_fds.values():
                    os.close(fd)

    def _make_durable(self, staged_blobs: list[StagedBlob]) -> None:
        """Wait for the blobs' fsyncs (run in the background as they were staged)."""
        for staged in staged_blobs:
            assert staged.path is not None
            if staged.durable is not None:
                try:
                    staged.durable.result()
                except OSError as exc:
                    raise self._write_error(exc) from exc

    def _open_shards(
        self, sha_fd: int, staged_blobs: list[StagedBlob], shard_fds: dict[str, int]
    ) -> None:
        """Open (making them if needed) the shards these blobs go to, into `shard_fds`; new
        shards' names are on disk before anything is put in them."""
        new_shard = False
        for staged in staged_blobs:
            shard = digest_hex(staged.digest)[:2]
            if shard not in shard_fds:
                fd, created = ensure_dir(sha_fd, shard, self.path(staged.digest).parent)
                shard_fds[shard] = fd
                new_shard = new_shard or created
        if new_shard:
            os.fsync(sha_fd)

    def _write_error(self, exc: OSError) -> PackcacheError:
        """Disk full or an I/O error while a blob is written: say where."""
        return PackcacheError(f"cannot write to the cache at {self.root}: {exc.strerror or exc}")

    def open_staged(self, staged: StagedBlob) -> VerifyingReader:
        """Read back a staged blob's temp file (never through a link), checked again against
        its digest as it is read: a load may send a blob before it is committed."""
        if staged.path is None:
            raise PackcacheError(f"blob {staged.digest} was only hashed, not written")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            with opened_dir(self.root, INGEST) as ingest_fd:
                fd = os.open(staged.path.name, flags, dir_fd=ingest_fd)
        except (OSError, UnsafeCacheError) as exc:
            raise CorruptBlobError(f"staged blob {staged.digest} cannot be read: {exc}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_size != staged.size:
            os.close(fd)
            raise CorruptBlobError(f"staged blob {staged.digest} was changed on disk")
        os.set_blocking(fd, True)
        return VerifyingReader(os.fdopen(fd, "rb", buffering=0), staged.digest, staged.size)

    def discard(self, staged: StagedBlob) -> None:
        if staged.durable is not None:
            with suppress(OSError):  # its file is removed either way
                staged.durable.result()
        if staged.path is not None:
            self._unlink_temp(staged.path)

    def removal_problem(self, digest: str) -> str | None:
        """Why this process could not unlink the blob, or None if it can (or it is gone).
        Asked before an eviction commits, so rows are never dropped with their file left."""
        hex_ = digest_hex(digest)
        shard = hex_[:2]
        path = self.path(digest)
        try:
            with opened_dir(self.root, BLOBS, SHA256) as sha_fd:
                shard_st = lstat_in(sha_fd, shard)
                if shard_st is None:
                    return None
                if not stat.S_ISDIR(shard_st.st_mode):
                    return f"{path.parent} is {describe(shard_st.st_mode)}"
                if not os.access(shard, os.W_OK | os.X_OK, dir_fd=sha_fd, effective_ids=True):
                    return _denied(path, shard_st)
                with opened_dir(self.root, BLOBS, SHA256, shard) as shard_fd:
                    st = lstat_in(shard_fd, hex_)
                    if st is None:
                        return None
                    euid = os.geteuid()
                    sticky = shard_st.st_mode & stat.S_ISVTX
                    if sticky and euid not in (0, st.st_uid, shard_st.st_uid):
                        return _denied(path, shard_st)
                    # Root passes every mode check; only an immutable file stops it.
                    if euid == 0 and not os.access(
                        hex_, os.W_OK, dir_fd=shard_fd, effective_ids=True, follow_symlinks=False
                    ):
                        return f"cannot remove {path}: it is immutable or on a read-only mount"
        except (OSError, PackcacheError) as exc:
            return f"cannot remove {path}: {getattr(exc, 'strerror', None) or exc}"
        return None

    def remove(self, digest: str) -> None:
        """Unlink a blob (a link found in its place is what is unlinked, never its target)."""
        hex_ = digest_hex(digest)
        try:
            with opened_dir(self.root, BLOBS, SHA256, hex_[:2]) as shard_fd:
                os.unlink(hex_, dir_fd=shard_fd)
        except FileNotFoundError:
            pass

    def iter_blob_paths(self) -> Iterator[tuple[str, Path]]:
        """(digest, path) of every regular file in a shard under blobs/sha256, links and
        other entries skipped (verify reports those)."""
        try:
            with opened_dir(self.root, BLOBS, SHA256) as sha_fd:
                for shard in sorted(os.listdir(sha_fd)):
                    try:
                        shard_fd = open_subdir(sha_fd, shard, self.blobs_dir / shard)
                    except (OSError, PackcacheError):
                        continue
                    try:
                        for name in sorted(os.listdir(shard_fd)):
                            st = lstat_in(shard_fd, name)
                            if st is not None and stat.S_ISREG(st.st_mode):
                                yield f"sha256:{name}", self.blobs_dir / shard / name
                    finally:
                        os.close(shard_fd)
        except FileNotFoundError:
            return

    def partials(self) -> list[Partial]:
        """The temp files in ingest/ (regular files only; anything else is verify's business)."""
        now = time.time()
        found = []
        try:
            with opened_dir(self.root, INGEST) as ingest_fd:
                for name in os.listdir(ingest_fd):
                    st = lstat_in(ingest_fd, name)
                    if st is None or not stat.S_ISREG(st.st_mode):
                        continue
                    if name.endswith(INGEST_SUFFIX):
                        gone = partial_owner_gone(name, st.st_mtime, now)
                        found.append(Partial(name, st.st_size, gone))
        except FileNotFoundError:
            return []
        return found

    def reclaim_partials(self) -> list[Partial]:
        """Remove the temp files whose writer is gone; a live writer's are never touched."""
        reclaimed = []
        dead = [partial for partial in self.partials() if partial.reclaimable]
        if not dead:
            return []
        with opened_dir(self.root, INGEST) as ingest_fd:
            for partial in dead:
                try:
                    os.unlink(partial.name, dir_fd=ingest_fd)
                except FileNotFoundError:
                    continue
                except PermissionError:
                    continue  # another user's leftover in a shared cache: verify reports it
                reclaimed.append(partial)
        return reclaimed


def _denied(path: Path, shard_st: os.stat_result) -> str:
    mode = stat.S_IMODE(shard_st.st_mode)
    return (
        f"cannot remove {path}: permission denied (its directory is mode {mode:04o}, "
        f"owned by uid {shard_st.st_uid}; you are uid {os.geteuid()})"
    )
