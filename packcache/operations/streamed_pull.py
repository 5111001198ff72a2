"""A pull whose layers a `docker load` sends while the rest still download: create-builder's
build image and buildpackages, fetched from registries for a daemon loaded with `docker load`.

A graphdriver's loader (moby image/tarexport/load.go) unpacks the whole archive into a temp
directory before it reads manifest.json, and a containerd store's importer writes every blob
before it reads index.json; so the archive may carry the layers in the order their downloads
end (see archive/load_writer.py), and the load begins as soon as the builder's config is known
instead of after the last download.

A layer enters the archive only once the cache staged it: its digest and diffID verified as
it downloaded. Its bytes are read back from the staged file, checked against the digest again.
A download that fails (after one more try) ends the archive before its manifest, so the daemon
refuses the load and keeps nothing of it. The staged blobs are committed and the images
recorded (`settle`) only once every download succeeded; `abort` drops them: a failure leaves the
cache as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import BinaryIO

from packcache.digest import VerifyingReader
from packcache.errors import PackcacheError
from packcache.operations.pulling import (
    PARALLEL_BLOBS,
    PlannedFetch,
    PullReport,
    commit_pulled,
    plan_pull,
)
from packcache.store.blobs import StagedBlob
from packcache.store.layer import CachedLayer
from packcache.store.store import Lease, Store
from packcache.transports.registry_pull import RemoteImage

TRIES = 2  # a blob broken once in transit costs a second download, not the builder


class _Stopped(PackcacheError):
    """The pull was aborted while this blob downloaded."""


class _Stoppable:
    """A blob download that stops at its next read once the pull is aborted."""

    def __init__(self, source: BinaryIO, stop: threading.Event) -> None:
        self._source = source
        self._stop = stop

    def read(self, n: int = -1) -> bytes:
        if self._stop.is_set():
            raise _Stopped("the pull was stopped")
        return self._source.read(n)


class StreamedPull:
    """The layers of `images` (and of those `add`ed later) the cache lacks, downloading in the
    background from the moment each image is given (see the module doc)."""

    def __init__(
        self, store: Store, images: list[RemoteImage], lease: Lease, parallel: int = PARALLEL_BLOBS
    ) -> None:
        self.store = store
        self.images: list[RemoteImage] = []
        self.lease = lease
        self.reports: list[PullReport] = []
        self._fetches: list[PlannedFetch] = []
        self._planned: set[str] = set()
        self._staged: dict[str, StagedBlob] = {}
        self._arrived: list[str] = []  # diffIDs in the order their downloads ended
        self._failure: BaseException | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._done = False
        self._pool = ThreadPoolExecutor(max(1, parallel), thread_name_prefix="packcache-pull")
        self._futures: list[Future[None]] = []
        for image in images:
            self.add(image)

    def add(self, image: RemoteImage) -> None:
        """Start downloading the layers of `image` the cache and this pull lack (its manifest
        and config read while the layers of the images before it already download)."""
        reports, fetches = plan_pull([image], self.lease, self._planned)
        self.images.append(image)
        self.reports.extend(reports)
        self._fetches.extend(fetches)
        self._futures.extend(self._pool.submit(self._fetch, job) for job in fetches)

    @property
    def pending(self) -> set[str]:
        """The diffIDs this pull downloads."""
        return {job.diff_id for job in self._fetches}

    def _fetch(self, job: PlannedFetch) -> None:
        repository, digest = job.image.name.repository, job.layer["digest"]
        for attempt in range(TRIES):
            try:
                with job.image.client.open_blob(repository, digest, job.layer.get("size")) as blob:
                    staged = self.store.stage(
                        _Stoppable(blob, self._stop),  # type: ignore[arg-type]
                        expected_digest=digest,
                        expected_diff_id=job.diff_id,
                    )
                break
            except PackcacheError as exc:
                if attempt + 1 < TRIES and not self._stop.is_set():
                    continue
                self._fail(PackcacheError(f"{job.image.what}: layer {digest}: {exc}"))
                return
            except BaseException as exc:
                self._fail(exc)
                return
        with self._changed:
            self._staged[job.diff_id] = staged
            self._arrived.append(job.diff_id)
            self._changed.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._changed:
            if self._failure is None and not self._stop.is_set():
                self._failure = exc
            self._changed.notify_all()

    def arrivals(
        self, diff_ids: Iterable[str], until: Callable[[], bool] | None = None
    ) -> Iterator[str]:
        """These layers of the pull, each once it is staged, in the order their downloads
        ended; the first failure of the pull (or its abort) is raised instead of what is still
        to come. Ends early once `until()` holds (checked whenever `wake` is called)."""
        waiting = set(diff_ids)
        seen = 0
        while waiting:
            with self._changed:
                while (
                    self._failure is None and not self._stop.is_set() and seen == len(self._arrived)
                ):
                    if until is not None and until():
                        return
                    self._changed.wait()
                if self._failure is not None:
                    raise self._failure
                if self._stop.is_set():
                    raise _Stopped("the pull was stopped")
                ready, seen = self._arrived[seen:], len(self._arrived)
            for diff_id in ready:
                if diff_id in waiting:
                    waiting.discard(diff_id)
                    yield diff_id

    def arrived(self, diff_id: str, until: Callable[[], bool]) -> bool:
        """Wait until this layer of the pull is staged (True) or `until()` holds (False,
        checked whenever `wake` is called); the pull's failure (or abort) is raised."""
        with self._changed:
            while diff_id not in self._staged:
                if self._failure is not None:
                    raise self._failure
                if self._stop.is_set():
                    raise _Stopped("the pull was stopped")
                if until():
                    return False
                self._changed.wait()
            return True

    def wake(self) -> None:
        """Have those waiting in `arrivals` or `arrived` check their `until` again."""
        with self._changed:
            self._changed.notify_all()

    def layers(self) -> dict[str, ArrivingLayer]:
        """Every layer this pull downloads, as a load sends it."""
        return {job.diff_id: ArrivingLayer(self, job) for job in self._fetches}

    def staged(self, diff_id: str) -> StagedBlob:
        """The staged blob of a layer `arrivals` gave."""
        with self._changed:
            return self._staged[diff_id]

    def settle(self) -> list[PullReport]:
        """Wait for every download; then commit the layers and record the images (once). A
        failure drops everything staged and is raised."""
        if self._done:
            return self.reports
        self._pool.shutdown(wait=False)  # its threads end with the last download
        wait(self._futures)
        if self._failure is not None:
            failure = self._failure
            self.abort()
            raise failure
        self._done = True
        staged = [self._staged[job.diff_id] for job in self._fetches]
        commit_pulled(self.store, self.images, self._fetches, staged, self.lease)
        return self.reports

    def abort(self) -> None:
        """Stop the downloads and drop what was staged: the cache is left as it was."""
        if self._done:
            return
        self._done = True
        with self._changed:
            self._stop.set()
            self._changed.notify_all()  # a load waiting for arrivals ends
        self._pool.shutdown(wait=False, cancel_futures=True)
        # A download cancelled before it began is never done for `wait`: only those begun.
        wait([future for future in self._futures if not future.cancelled()])
        for blob in self._staged.values():
            self.store.discard(blob)


class _StagedBlobs:
    """The LayerBlobs a CachedLayer reads a staged blob through."""

    def __init__(self, store: Store, staged: StagedBlob) -> None:
        self._store = store
        self._staged = staged

    def open_layer_blob(self, diff_id: str, digest: str, size: int) -> VerifyingReader:
        return self._store.open_staged(self._staged)

    def evict_corrupt(self, diff_id: str) -> None:
        """Nothing was recorded: a staged blob that changed on disk is only refused."""


@dataclass(frozen=True)
class ArrivingLayer:
    """A layer of a StreamedPull, read once its download ended (a Layer; `arriving_from`
    tells a load writer when)."""

    arriving_from: StreamedPull
    job: PlannedFetch

    @property
    def size_known(self) -> bool:
        """Can an archive name it before it arrives: its manifest gives size and type, and it
        is sent as it is (a zstd layer is sent to a graphdriver as its tar, of a size known
        only once it is staged)?"""
        layer = self.job.layer
        media_type = layer.get("mediaType")
        return (
            isinstance(layer.get("size"), int)
            and isinstance(media_type, str)
            and not media_type.endswith("+zstd")
        )

    @property
    def diff_id(self) -> str:
        return self.job.diff_id

    @property
    def digest(self) -> str:
        return str(self.job.layer["digest"])

    @property
    def size(self) -> int:
        return int(self.job.layer["size"])

    @property
    def media_type(self) -> str:
        return str(self.job.layer["mediaType"])

    def _staged(self) -> CachedLayer:
        staged = self.arriving_from.staged(self.diff_id)
        return CachedLayer(
            _StagedBlobs(self.arriving_from.store, staged),  # type: ignore[arg-type]
            staged.diff_id, staged.digest, staged.size, staged.uncompressed_size,
            staged.compression, 0.0, 0,
        )  # fmt: skip

    @property
    def uncompressed_size(self) -> int:
        return self._staged().uncompressed_size

    def compressed(self) -> BinaryIO:
        return self._staged().compressed()

    def uncompressed(self) -> BinaryIO:
        return self._staged().uncompressed()
