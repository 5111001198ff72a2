"""A load made through the daemon's containerd instead of `docker load`, on a containerd store.

The blobs the content store lacks, the config and the manifest are written into it under a
lease, and the image record is pointed at the manifest: the daemon has the image at once and
unpacks it on first use. Names move as the daemon moves them (moby's daemon/containerd
image_tag.go, soft_delete.go): an image that loses its last name is kept as
`moby-dangling@<digest>`, which the daemon lists as `<none>` and can still run by ID.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import replace
from weakref import WeakKeyDictionary

from packcache.archive.load_writer import LoadLayer
from packcache.errors import PackcacheError
from packcache.image import manifest as oci
from packcache.image.inspected import InspectedImage
from packcache.image.layer import Layer
from packcache.progress import NO_PROGRESS, Progress
from packcache.transports.containerd import (
    ENV_ADDRESS,
    WRITE_CHUNK,
    Containerd,
    ContainerdError,
    Descriptor,
    find_endpoint,
    gc_ref_labels,
)
from packcache.transports.daemon import Daemon

log = logging.getLogger(__name__)

DANGLING_PREFIX = "moby-dangling@"
# The diffID of a compressed layer blob, as containerd's unpacker labels it after unpacking:
# set on what we write, so the daemon's builder need not unpack to learn it.
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"
PARALLEL_WRITES = 4  # blobs written into containerd at once by a load
# The value of the address setting that keeps packcache on `docker load`.
OFF = "off"

# One connection (or the finding that there is none) per daemon client: planners are made
# several times in one operation, and the fallback is said once.
_connections: WeakKeyDictionary[Daemon, Containerd | None] = WeakKeyDictionary()
_pending: WeakKeyDictionary[Daemon, Future[Containerd | None]] = WeakKeyDictionary()
_lock = threading.Lock()
# The blobs a plan found in each connection's content store, and their sizes: an operation
# plans several loads on the same layers (the base image first). Only for planning: what a
# load relies on is asked again once its manifest holds it (restore_missing).
_found_sizes: WeakKeyDictionary[Containerd, dict[str, int]] = WeakKeyDictionary()
# The blobs a ContentMirror of this connection wrote, while it is open: a load names them as
# it names blobs it writes itself, so its image is the one it would be without the mirror.
_mirrored: WeakKeyDictionary[Containerd, set[str]] = WeakKeyDictionary()


def mirrored_blobs(containerd: Containerd) -> set[str]:
    return _mirrored.get(containerd, set())


def connect_soon(daemon: Daemon) -> None:
    """Start connecting to the daemon's containerd in a thread of its own: importing grpc and
    the first call then overlap with what the caller asks the daemon meanwhile, and
    `daemon_containerd` waits for it."""
    with _lock:
        if daemon in _connections or daemon in _pending:
            return
        pending: Future[Containerd | None] = Future()
        _pending[daemon] = pending

    def connect() -> None:
        try:
            pending.set_result(_connect(daemon))
        except BaseException as exc:  # raised where the connection is asked for
            pending.set_exception(exc)

    # A daemon thread: a command that ends without needing the connection (a builder the
    # daemon held already) does not wait for it, nor tear down the grpc it was importing.
    threading.Thread(target=connect, name="containerd-connect", daemon=True).start()


def daemon_containerd(daemon: Daemon) -> Containerd | None:
    """The daemon's containerd, connected, or None where it cannot be used."""
    with _lock:
        if daemon in _connections:
            return _connections[daemon]
        pending = _pending.get(daemon)
    connection = _connect(daemon) if pending is None else pending.result()
    with _lock:
        _pending.pop(daemon, None)
        kept = _connections.setdefault(daemon, connection)
    if kept is not connection and connection is not None:
        connection.close()  # another thread connected first
    return kept


def _connect(daemon: Daemon) -> Containerd | None:
    settings = daemon.containerd_settings
    if settings is None:
        settings = os.environ
    connection = None
    if settings.get(ENV_ADDRESS) == OFF:
        log.info("containerd not used (its address is set to %r): loading with docker load", OFF)
    else:
        endpoint = find_endpoint({"Containerd": daemon.info.containerd}, settings)
        try:
            connection = Containerd(endpoint)
        except ContainerdError as exc:
            log.info("%s; loading with docker load instead", exc)
    return connection


def held_blobs(
    containerd: Containerd, layers: list[list[tuple[str, int | None, str]]]
) -> list[oci.Descriptor | None]:
    """Per layer, the first of its blob forms (digest, size or None, media type) the content
    store holds, as the manifest must name it; None where it holds none. Asked form by form:
    every layer's first form at once, then the next form of the layers still unfound, so a
    store holding the usual form answers in one call per layer. A digest found is not asked
    about again on this connection."""
    found: list[oci.Descriptor | None] = [None] * len(layers)
    sizes: dict[str, int | None] = dict(_found_sizes.setdefault(containerd, {}))
    for rank in range(max((len(forms) for forms in layers), default=0)):
        wanted = {
            index: forms[rank]
            for index, forms in enumerate(layers)
            if found[index] is None and rank < len(forms)
        }
        asked = containerd.blob_sizes(d for d, _, _ in wanted.values() if d not in sizes)
        sizes.update(asked)
        _found_sizes[containerd].update((d, n) for d, n in asked.items() if n is not None)
        for index, (digest, size, media_type) in wanted.items():
            held_size = sizes[digest]
            if held_size is not None and size in (None, held_size):
                found[index] = oci.Descriptor(media_type, digest, held_size)
    return found


def _blob_chunks(layer: Layer) -> Iterator[bytes]:
    with layer.compressed() as blob:
        while chunk := blob.read(WRITE_CHUNK):
            yield chunk


def _shown_chunks(layer: Layer, progress: Progress) -> Iterator[bytes]:
    # The task starts with the first read: a blob containerd already holds is never read.
    with progress.task(f"Writing {layer.digest[7:19]} into containerd", layer.size) as task:
        for chunk in _blob_chunks(layer):
            task.advance(len(chunk))
            yield chunk


def write_layers(
    containerd: Containerd, plan: list[LoadLayer], lease: str, progress: Progress = NO_PROGRESS
) -> set[str]:
    """The layer blobs of `plan` the content store lacks, written from the cache under
    `lease`, each shown as it goes, several at once. Returns the digests written."""
    to_write: dict[str, LoadLayer] = {}
    for item in plan:
        if item.layer is not None:
            to_write.setdefault(item.digest, item)

    def write(item: LoadLayer) -> str | None:
        layer = item.layer
        assert layer is not None
        labels = {UNCOMPRESSED_LABEL: item.diff_id} if item.digest != item.diff_id else {}
        chunks = _shown_chunks(layer, progress)
        written = containerd.write_blob(layer.digest, layer.size, chunks, lease, labels)
        return layer.digest if written else None

    if len(to_write) < 2:
        done = [write(item) for item in to_write.values()]
    else:
        with ThreadPoolExecutor(max_workers=PARALLEL_WRITES) as pool:
            done = list(pool.map(write, to_write.values()))
    return {digest for digest in done if digest is not None}


def restore_missing(
    containerd: Containerd,
    plan: list[LoadLayer],
    written: set[str],
    lease: str,
    cached: Callable[[str], Layer | None],
    progress: Progress = NO_PROGRESS,
) -> int:
    """The layer blobs not written now (the content store had them) are there still, or are
    written again from the cache. Asked once the manifest, held by the lease, names them in its
    labels: from then on containerd's GC keeps them. One it took before (a blob a failed
    command left unreferenced, collected while this load ran) is written here from the cache
    where the cache holds that very blob, else the load fails, before the image is named.
    Returns the bytes written."""
    sizes = containerd.blob_sizes(item.digest for item in plan if item.digest not in written)
    missing: dict[str, LoadLayer] = {}
    for item in plan:
        if item.digest in written or sizes[item.digest] == item.size:
            continue
        layer = cached(item.diff_id)
        if layer is None or (layer.digest, layer.size) != (item.digest, item.size):
            raise PackcacheError(
                f"layer {item.diff_id}: blob {item.digest} left containerd's content store "
                "during the load, and the cache holds the layer in no such blob; run the "
                "command again"
            )
        missing.setdefault(item.digest, replace(item, layer=layer))
    if not missing:
        return 0
    log.info("writing again %d blobs containerd collected during the load", len(missing))
    rewritten = write_layers(containerd, list(missing.values()), lease, progress)
    return sum(missing[digest].size for digest in rewritten)


def write_image(
    containerd: Containerd,
    config: bytes,
    manifest: bytes,
    plan: list[LoadLayer],
    lease: str,
    progress: Progress = NO_PROGRESS,
    cached: Callable[[str], Layer | None] = lambda diff_id: None,
) -> tuple[Descriptor, int]:
    """Layers, config and manifest written under `lease` where the store lacks them, and the
    layers it had checked once the manifest holds them (written again from `cached`, the cache's
    layer by diffID, where containerd lost them meanwhile); the manifest's descriptor and the
    bytes written. A manifest the store held already, its labels naming every layer, needs no
    check: containerd's GC takes the blobs it names only with it, and it is still there."""
    written = write_layers(containerd, plan, lease, progress)
    sent = sum({item.digest: item.size for item in plan if item.digest in written}.values())
    config_digest = oci.digest_of(config)
    manifest_digest = oci.digest_of(manifest)
    # The labels make the manifest keep its config and layers once the lease is gone.
    labels = gc_ref_labels(config_digest, [item.digest for item in plan])
    # Written at once: neither needs the other in the store, and each is a commit containerd
    # makes durable before it answers.
    with ThreadPoolExecutor(max_workers=1) as pool:
        config_written = pool.submit(
            containerd.write_blob, config_digest, len(config), [config], lease
        )
        manifest_written = containerd.write_blob(
            manifest_digest, len(manifest), [manifest], lease, labels
        )
        if manifest_written:
            sent += len(manifest)
        if config_written.result():
            sent += len(config)
    held_labels = {} if manifest_written else containerd.blob_labels(manifest_digest)
    if any(held_labels.get(key) != value for key, value in labels.items()):
        sent += restore_missing(containerd, plan, written, lease, cached, progress)
    return Descriptor(oci.OCI_MANIFEST, manifest_digest, len(manifest)), sent


def name_image(containerd: Containerd, name: str, target: Descriptor) -> None:
    """Point the image record `name` (as the daemon names it, docker.io/library/app:1) at
    `target`, as the daemon's own tagging does."""
    old = containerd.get_image(name)
    if old is not None and old.target.digest == target.digest:
        return  # already so: its record (and its labels) stay as they are
    # The old image's names, and whether this one is dangling (a result replaced before and
    # made again), asked at once.
    names = containerd.names_by_target([target.digest, *([old.target.digest] if old else [])])
    if old is not None and names[old.target.digest] == [name]:
        # Its last name: kept as a dangling image, so a container of it still has its image.
        labels = {
            key: value
            for key, value in old.labels.items()
            if key not in ("io.containerd.image.name", "org.opencontainers.image.ref.name")
        }
        containerd.put_image(DANGLING_PREFIX + old.target.digest, old.target, labels)
    containerd.put_image(name, target, exists=old is not None)
    if DANGLING_PREFIX + target.digest in names[target.digest]:
        containerd.delete_image(DANGLING_PREFIX + target.digest)  # it has a name now


class ContentMirror:
    """Layer blobs written into the daemon's content store as a pull downloads them, so a
    load that follows finds them there: each downloaded blob is read once, into the cache and
    containerd together. `lease` holds them until the image that references them is named
    (what no image references is then collected when the lease ends)."""

    def __init__(self, containerd: Containerd, lease: str) -> None:
        self.containerd = containerd
        self.lease = lease
        self.written = _mirrored.setdefault(containerd, set())

    def close(self) -> None:
        _mirrored.pop(self.containerd, None)

    def open(self, digest: str, size: int | None, diff_id: str) -> MirrorWrite | None:
        """A write of this blob, or None where it needs none (held already, size unknown)."""
        if size is None:
            return None
        try:
            if self.containerd.blob_size(digest) is not None:
                return None
        except ContainerdError as exc:
            log.info("not copying %s into containerd while it downloads: %s", digest, exc)
            return None
        labels = {UNCOMPRESSED_LABEL: diff_id} if digest != diff_id else {}
        return MirrorWrite(self.containerd, digest, size, self.lease, labels, self.written)


class _Aborted(Exception):
    """The blob's bytes were refused where they were read: containerd must not commit them."""


_END, _ABORT = object(), object()
MIRROR_QUEUE = 8  # chunks waiting for containerd, at most, per blob


class MirrorWrite:
    """One blob streamed into containerd by a thread of its own while its reader goes on. It
    is committed only by `finish`, once the reader verified the bytes; `abort` drops it. A
    failed write costs only the shortcut: the load writes the blob from the cache later."""

    def __init__(
        self,
        containerd: Containerd,
        digest: str,
        size: int,
        lease: str,
        labels: dict[str, str],
        written: set[str],
    ) -> None:
        self.digest = digest
        self._written_into = written
        self._queue: queue.Queue[object] = queue.Queue(MIRROR_QUEUE)
        self._done = threading.Event()  # the write has ended, one way or another
        self._error: BaseException | None = None
        self._written = False
        self._thread = threading.Thread(
            target=self._run, args=(containerd, digest, size, lease, labels), daemon=True
        )
        self._thread.start()

    def _chunks(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if item is _ABORT:
                raise _Aborted()
            yield item  # type: ignore[misc]

    def _run(
        self, containerd: Containerd, digest: str, size: int, lease: str, labels: dict[str, str]
    ) -> None:
        try:
            self._written = containerd.write_blob(digest, size, self._chunks(), lease, labels)
        except BaseException as exc:
            self._error = exc
        finally:
            self._done.set()

    def _put(self, item: object) -> None:
        # Never blocks for good: a write that has ended takes nothing more.
        while not self._done.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def write(self, chunk: bytes) -> None:
        self._put(chunk)

    def finish(self) -> bool:
        """Commit (containerd checks the digest and size): was it written?"""
        self._put(_END)
        self._end()
        if self._error is not None:
            log.info("copying %s into containerd failed: %s", self.digest, self._error)
            return False
        if self._written:
            self._written_into.add(self.digest)
        return self._written

    def abort(self) -> None:
        self._put(_ABORT)
        self._end()

    def _end(self) -> None:
        self._thread.join()
        with suppress(queue.Full):  # wakes grpc's reader of the requests, if it still waits
            self._queue.put_nowait(_ABORT)


def announce(daemon: Daemon, image_id: str, tags: list[str]) -> dict[str, InspectedImage | None]:
    """Have the daemon say (`docker events`) that `tags` name `image_id`: it learns nothing of a
    record written into its containerd, but tagging an image with the name it already has
    makes it log a `tag` event and changes nothing (ID, created time, labels, other tags).
    Returns how the daemon inspects each tag (None: it shows no such image, or cannot say),
    asked meanwhile: the daemon reads the records from its containerd, so the answer does
    not wait for the tagging."""

    def tag_all() -> None:
        for tag in tags:
            try:
                daemon.tag(image_id, tag)
            except PackcacheError as exc:  # the image is there; only the event is missing
                log.warning("the Docker daemon did not announce %s: %s", tag, exc)

    seen: dict[str, InspectedImage | None] = {}
    with ThreadPoolExecutor(max_workers=1) as pool:
        tagged = pool.submit(tag_all)
        for tag in tags:
            try:
                seen[tag] = daemon.inspect_image_now(tag)
            except PackcacheError:
                seen[tag] = None
        tagged.result()
    return seen
