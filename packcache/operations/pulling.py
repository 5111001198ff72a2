"""`packcache pull`: images from registries straight into the store, never through a daemon.

Reads top to bottom: read every image's manifest and config (transports/registry_pull);
find the layers the cache lacks, across all the images at once (each fetched once, however
many images share it); stream them into the store several at a time, each blob's digest and
its diffID (from the config) verified in the same pass; commit them together, then record
each image. Nothing is recorded unless every layer arrived whole: a failure leaves the cache
as it was.

Given a `BlobMirror` (the daemon's containerd content store, for a load that follows), each
blob downloaded is also streamed there as it is read, and committed there only once the store
verified it: one read of each blob fills both.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from packcache.errors import NotFoundError, PackcacheError
from packcache.progress import NO_PROGRESS, Progress
from packcache.store.blobs import StagedBlob
from packcache.store.store import ImageRecord, Lease, Store
from packcache.transports.registry import (
    DEFAULT_PLATFORM,
    ImageName,
    Platform,
    RegistryClient,
    RegistryClients,
    RegistryOptions,
)
from packcache.transports.registry_pull import RemoteImage, read_image

PARALLEL_BLOBS = 4


class MirrorWrite(Protocol):
    def write(self, chunk: bytes) -> None: ...
    def finish(self) -> bool: ...
    def abort(self) -> None: ...


class BlobMirror(Protocol):
    """Somewhere else each downloaded blob goes (containerd_load.ContentMirror)."""

    def open(self, digest: str, size: int | None, diff_id: str) -> MirrorWrite | None: ...


class _Copied:
    """A blob reader that hands every chunk read to `copy` too."""

    def __init__(self, source: BinaryIO, copy: MirrorWrite) -> None:
        self._source = source
        self._copy = copy

    def read(self, n: int = -1) -> bytes:
        chunk = self._source.read(n)
        if chunk:
            self._copy.write(chunk)
        return chunk


@dataclass
class PullReport:
    ref: str
    manifest_digest: str
    config_digest: str
    downloaded: list[str] = field(default_factory=list)  # blob digests fetched
    already_cached: list[str] = field(default_factory=list)  # diffIDs the cache held
    bytes_downloaded: int = 0


@dataclass(frozen=True)
class PlannedFetch:
    """One layer to download, for the first image (in the order asked) that needs it."""

    image: RemoteImage
    layer: dict
    diff_id: str
    report: PullReport


def cached_config(store: Store) -> Callable[[str], bytes | None]:
    """The config the cache recorded under a digest, if any: a registry need not send it
    again (read_image checks it against the digest)."""

    def config(digest: str) -> bytes | None:
        try:
            return store.image_config(digest)
        except NotFoundError:
            return None

    return config


def plan_pull(
    images: list[RemoteImage], lease: Lease, planned: set[str] | None = None
) -> tuple[list[PullReport], list[PlannedFetch]]:
    """Each image's report, and the layers the cache lacks, each once: not those in `planned`
    (the diffIDs an earlier plan of the same pull fetches), which is updated."""
    reports, fetches = [], []
    planned = set() if planned is None else planned
    for image in images:
        report = PullReport(str(image.name), image.manifest.digest, image.manifest.config["digest"])
        reports.append(report)
        # Cached by diffID is enough: the image loads from it. Only a verified blob of this
        # digest records the digest -> diffID pairing, so nothing unverified is trusted.
        held = lease.hold(diff_id for _, diff_id in image.layers)
        for layer, diff_id in image.layers:
            known = None if diff_id in held else lease.hold_by_digest(layer["digest"])
            if known is not None and known.diff_id != diff_id:
                # The cache verified what this blob holds: a config naming another diffID lies.
                raise PackcacheError(
                    f"{image.what}: layer {layer['digest']} is {known.diff_id}, not the "
                    f"config's {diff_id}"
                )
            if diff_id in held or known is not None or diff_id in planned:
                report.already_cached.append(diff_id)  # as a pull of one image after another
            else:
                planned.add(diff_id)
                fetches.append(PlannedFetch(image, layer, diff_id, report))
    return reports, fetches


def _download(
    store: Store, fetches: list[PlannedFetch], parallel: int, mirror: BlobMirror | None = None
) -> list[StagedBlob]:
    """Stage every layer, `parallel` at once; on a failure the rest not begun are dropped,
    what was staged is discarded and the first error raised."""

    def fetch(job: PlannedFetch) -> StagedBlob:
        repository, digest = job.image.name.repository, job.layer["digest"]
        size = job.layer.get("size")
        with job.image.client.open_blob(repository, digest, size) as blob:
            copy = None if mirror is None else mirror.open(digest, size, job.diff_id)
            if copy is None:
                return store.stage(blob, expected_digest=digest, expected_diff_id=job.diff_id)
            try:
                staged = store.stage(
                    _Copied(blob, copy), expected_digest=digest, expected_diff_id=job.diff_id
                )  # type: ignore[arg-type]
            except BaseException:
                copy.abort()
                raise
            copy.finish()
            return staged

    staged: list[StagedBlob] = []
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures: list[Future[StagedBlob]] = [pool.submit(fetch, job) for job in fetches]
        for future in futures:
            try:
                staged.append(future.result())
            except BaseException as exc:
                errors.append(exc)
                for pending in futures:
                    pending.cancel()
    if errors:
        for blob in staged:
            store.discard(blob)
        raise errors[0]
    return staged


def pull_remote_images(
    store: Store,
    images: list[RemoteImage],
    *,
    lease: Lease,
    parallel: int = PARALLEL_BLOBS,
    mirror: BlobMirror | None = None,
) -> list[PullReport]:
    """Fetch the layers of `images` the cache lacks and record the images (module doc)."""
    reports, fetches = plan_pull(images, lease)
    staged = _download(store, fetches, parallel, mirror)
    commit_pulled(store, images, fetches, staged, lease)
    return reports


def commit_pulled(
    store: Store,
    images: list[RemoteImage],
    fetches: list[PlannedFetch],
    staged: list[StagedBlob],
    lease: Lease,
) -> None:
    """Commit the layers downloaded (`staged`, one per fetch, in order) and record each image;
    the staged files are discarded either way."""
    try:
        if staged:
            store.commit_staged_many(staged, lease=lease)
        for job, blob in zip(fetches, staged, strict=True):
            job.report.downloaded.append(blob.digest)
            job.report.bytes_downloaded += blob.size
        # Refs are tags (what `load` names the image in a daemon); the repo digest is the
        # repository and the manifest digest recorded beside them. One transaction for all.
        store.record_images(
            [
                ImageRecord(
                    config=image.config,
                    image_id=image.manifest.config["digest"],
                    manifest_digest=image.manifest.digest,
                    manifest=image.manifest.body,
                    refs=[] if image.name.reference.startswith("sha256:") else [str(image.name)],
                )
                for image in images
            ]
        )
    finally:
        for blob in staged:
            store.discard(blob)


def pull_image(
    store: Store,
    client: RegistryClient,
    name: ImageName,
    *,
    lease: Lease,
    platform: Platform = DEFAULT_PLATFORM,
    parallel: int = PARALLEL_BLOBS,
    mirror: BlobMirror | None = None,
) -> PullReport:
    """Fetch `name` (on `client`'s registry) into `store` and record it."""
    image = read_image(client, name, platform, cached_config(store))
    return pull_remote_images(store, [image], lease=lease, parallel=parallel, mirror=mirror)[0]


def pull_images(
    store: Store,
    refs: list[str],
    *,
    lease: Lease,
    options: RegistryOptions,
    platform: Platform = DEFAULT_PLATFORM,
    progress: Progress = NO_PROGRESS,
) -> list[PullReport]:
    """Every reference (all checked first) read, then their layers fetched together; one
    client per registry."""
    names = [ImageName.parse(ref) for ref in refs]
    with RegistryClients(options, progress=progress) as clients:
        known = cached_config(store)
        images = [read_image(clients.for_name(name), name, platform, known) for name in names]
        return pull_remote_images(store, images, lease=lease)
