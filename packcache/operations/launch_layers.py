"""Layers from pack's launch caches: `packcache import --launch-cache`, and the step a cold
rebase takes before any `docker save`: find the image's config in the daemon's storage and its
layers in the launch caches on the host, each verified, so that only what no cache holds is saved.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from packcache.errors import CorruptBlobError, PackcacheError, UsageError
from packcache.image.inspected import InspectedImage
from packcache.image.layer import MEDIA_TYPES, Layer
from packcache.operations.engine_configs import record_from_engine, record_from_save_head
from packcache.operations.launch_choice import CACHE, LAUNCH_CACHE, LaunchChoice
from packcache.store.blobs import StagedBlob
from packcache.store.store import Lease, Store
from packcache.transports.daemon import Daemon, DaemonError
from packcache.transports.launch_cache import (
    Entry,
    LaunchCache,
    LaunchCacheError,
    Reader,
    bind_cache,
    find_volumes,
    named_volume,
    pack_image_part,
    reader,
)


@dataclass
class LaunchReport:
    caches: list[str] = field(default_factory=list)  # the caches read
    recorded: list[str] = field(default_factory=list)  # layers new to the cache
    known: list[str] = field(default_factory=list)  # layers the cache held already
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)  # one line per entry skipped
    in_use: list[str] = field(default_factory=list)  # caches a build was exporting to

    def notes(self) -> list[str]:
        """The problems, and the caches a build was writing, one line each."""
        busy = [f"{name}: a build is exporting to it (files in staging/)" for name in self.in_use]
        return self.problems + busy


def launch_caches(daemon: Daemon | None, source: str | None) -> list[LaunchCache]:
    """The caches `source` names (a directory, else a volume), or every launch cache volume
    of the daemon."""
    if source is not None and (Path(source).is_dir() or "/" in source):
        cache = bind_cache(Path(source))
        if cache is None:
            raise UsageError(f"{source} is not a launch cache (no committed/ directory)")
        return [cache]
    if daemon is None:
        raise UsageError("reading launch cache volumes needs the Docker daemon")
    if source is not None:
        named = named_volume(daemon, source)
        if named is None:
            raise UsageError(f"no volume {source} in the Docker daemon at {daemon.host}")
        return [named]
    return find_volumes(daemon)


def _reader_image(daemon: Daemon, preferred: Iterable[str]) -> str | None:
    """An image the daemon holds, for an idle container that mounts a volume."""
    for ref in preferred:
        if daemon.has_image(ref):
            return ref
    ids = daemon.image_ids()
    return ids[0] if ids else None


def _for_image_first(caches: list[LaunchCache], refs: Iterable[str]) -> list[LaunchCache]:
    """The caches pack made for one of these image names first: likeliest to hold its layers."""
    parts = set()
    for ref in refs:
        try:
            parts.add(pack_image_part(ref))
        except PackcacheError:
            continue
    return sorted(caches, key=lambda cache: cache.image_part not in parts)


def ingest_launch_caches(
    store: Store,
    daemon: Daemon | None,
    caches: list[LaunchCache],
    *,
    wanted: set[str] | None = None,
    image_refs: Iterable[str] = (),
    lease: Lease | None = None,
) -> LaunchReport:
    """Record the layers of these launch caches (only those `wanted`, if given, stopping once
    all are found), each only if its bytes hash to the diffID its name claims."""
    report = LaunchReport()
    refs = list(image_refs)
    remaining = None if wanted is None else set(wanted)
    for cache in _for_image_first(caches, refs):
        if remaining is not None and not remaining:
            break
        image = _reader_image(daemon, refs) if daemon is not None and cache.volume else None
        try:
            _ingest_one(store, daemon, cache, image, remaining, report, lease)
        except (LaunchCacheError, DaemonError) as exc:  # that cache only: the others may do
            report.problems.append(f"{cache.name}: cannot be read: {exc}")
    return report


def _ingest_one(
    store: Store,
    daemon: Daemon | None,
    cache: LaunchCache,
    image: str | None,
    remaining: set[str] | None,
    report: LaunchReport,
    lease: Lease | None,
) -> None:
    with reader(daemon, cache, image) as launch:
        report.caches.append(cache.name)
        for entry, stream in launch.layers(remaining):
            try:
                result = store.ingest_layer(
                    stream,
                    expected_digest=entry.diff_id,
                    expected_diff_id=entry.diff_id,
                    lease=lease,
                )
            except CorruptBlobError as exc:
                launch.problem(f"{entry.diff_id}.tar", f"does not match its name ({exc})")
                continue
            (report.recorded if result.written else report.known).append(entry.diff_id)
            report.bytes_read += max(result.size, 0)
            if remaining is not None:
                remaining.discard(entry.diff_id)
        report.problems += launch.listing.problems
        if launch.listing.in_use:
            report.in_use.append(cache.name)


def import_launch_cache(
    store: Store,
    daemon: Daemon | None,
    source: str | None,
    *,
    image: str | None = None,
    lease: Lease | None = None,
) -> LaunchReport:
    """`packcache import --launch-cache [SOURCE] [--image IMAGE]`: every layer of the caches,
    or only `image`'s (recorded with that image, whose config the daemon's storage gives)."""
    caches = launch_caches(daemon, source)
    if image is None:
        report = ingest_launch_caches(store, daemon, caches, lease=lease)
        if daemon is not None:
            _record_cached_apps(store, daemon, caches)
        return report
    if daemon is None:
        raise UsageError("--image needs the Docker daemon")
    info = daemon.inspect_image(image)
    report = ingest_launch_caches(
        store, daemon, caches, wanted=set(info.diff_ids), image_refs=[image], lease=lease
    )
    record_from_engine(store, daemon, info)
    return report


def _record_cached_apps(store: Store, daemon: Daemon, caches: list[LaunchCache]) -> None:
    """Record the daemon images these caches were built for (pack names a volume after the
    image), so that `ls` names the image a layer came from."""
    parts = {cache.image_part for cache in caches if cache.image_part}
    for tag, image_id in daemon.image_tags().items():
        try:
            if pack_image_part(tag) not in parts:
                continue
        except PackcacheError:
            continue
        record_from_engine(store, daemon, daemon.inspect_image(image_id))


@dataclass
class HostFill:
    """What the host gave for an image without a save: its config, and where its layers are."""

    config_digest: str | None
    sources: dict[str, str]  # diffID -> cache | launch-cache (absent: still missing)
    launch: LaunchReport
    save_head_bytes: int | None = None  # bytes of a save read for the config, if one was
    # With `defer`: the launch-cache layers located, to be read as the load sends them.
    deferred: DeferredLaunch | None = None


def fill_from_host(
    store: Store,
    daemon: Daemon,
    info: InspectedImage,
    layers: list[str],
    choice: LaunchChoice,
    *,
    lease: Lease | None = None,
    defer: bool = False,
) -> HostFill:
    """Before a `docker save` of image `info`: find its `layers` the cache lacks in the launch
    caches, and learn its config from the daemon's storage (or, where that cannot be read, from
    the head of a save, closed once the config has passed). The config digest is None where a
    whole save is still needed (no config, or a layer no cache holds). `defer`: the layers are
    only located, and read when a load sends them (see DeferredLaunch), if all were found."""
    cached = store.cached_diff_ids(layers, lease)
    sources = {diff_id: CACHE for diff_id in layers if diff_id in cached}
    launch = LaunchReport()
    deferred = None
    missing = set(layers) - cached
    if missing and choice.use:
        caches = launch_caches(daemon, choice.source)
        refs = [*info.repo_tags, info.id]
        if defer:
            deferred = locate_launch_layers(store, daemon, caches, missing, refs)
            found = list(deferred.located)
            if set(found) != missing:  # a save is needed anyway: read them now
                launch, deferred = deferred.finish(lease), None
                found = launch.recorded + launch.known
        else:
            launch = ingest_launch_caches(
                store, daemon, caches, wanted=missing, image_refs=refs, lease=lease
            )
            found = launch.recorded + launch.known
        sources.update(dict.fromkeys(found, LAUNCH_CACHE))
    config_digest, head_bytes = None, None
    try:
        if len(sources) == len(set(layers)):
            config_digest = record_from_engine(store, daemon, info)
            if config_digest is None:  # the daemon's storage is not readable from here
                config_digest, head_bytes = record_from_save_head(store, daemon, info)
    except BaseException:
        if deferred is not None:
            deferred.finish(lease)
        raise
    if deferred is not None and config_digest is None:
        launch, deferred = deferred.finish(lease), None
    return HostFill(config_digest, sources, launch, head_bytes, deferred)


# -- a cold load that streams launch-cache layers straight into the daemon ------------------

_END = object()
HANDED_ON = 8  # chunks of a layer waiting for the load: 8 MiB at most


class _Stopped(Exception):
    """The load stopped reading a layer: staging it is abandoned (its temp file removed)."""


class _Tap:
    """A source the store stages from, each chunk of which is also handed on."""

    def __init__(self, source: BinaryIO, hand_on: Callable[[object], None]) -> None:
        self._source = source
        self._hand_on = hand_on

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        if data:
            self._hand_on(data)
        return data


class _TeeReader:
    """One launch-cache layer on its way into a load, staged into the store as it passes: read
    once, hashed once, written once. Its end comes only after its bytes hashed to the diffID
    its name claims; otherwise reading it raises, before the load's archive is complete, and
    the layer is noted as bad and never recorded."""

    def __init__(self, deferred: DeferredLaunch, diff_id: str) -> None:
        self._deferred = deferred
        self._diff_id = diff_id
        self._queue: queue.Queue[object] = queue.Queue(HANDED_ON)
        self._stop = threading.Event()
        self._rest = b""
        self._ended = False
        self._thread = threading.Thread(target=self._stage, name="packcache-tee", daemon=True)
        self._thread.start()

    def _stage(self) -> None:
        reader, entry = self._deferred.located[self._diff_id]
        try:
            with reader.open_layer(entry) as source:
                result: object = self._deferred.store.stage(
                    _Tap(source, self._hand_on),
                    expected_digest=self._diff_id,
                    expected_diff_id=self._diff_id,
                )
        except _Stopped:
            return
        except BaseException as exc:  # handed to the reader, who raises it
            result = exc
        with contextlib.suppress(_Stopped):
            self._hand_on(result)

    def _hand_on(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def read(self, n: int = -1) -> bytes:
        if self._rest:
            data, self._rest = self._rest[:n], self._rest[n:]
            return data
        if self._ended:
            return b""
        item = self._queue.get()
        if isinstance(item, bytes):
            data, self._rest = (item, b"") if n < 0 else (item[:n], item[n:])
            return data
        self._ended = True
        if isinstance(item, StagedBlob):
            self._deferred.staged.append(item)
            return b""
        reason = "does not match its name" if isinstance(item, CorruptBlobError) else "unreadable"
        self._deferred.bad[self._diff_id] = f"{reason} ({item})"
        raise CorruptBlobError(f"launch cache layer {self._diff_id}.tar {reason}: {item}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> _TeeReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class _LaunchLayer:
    """A layer a launch cache holds, as the load writer takes it (an uncompressed tar)."""

    deferred: DeferredLaunch
    diff_id: str
    size: int
    media_type: str = MEDIA_TYPES["none"]

    @property
    def digest(self) -> str:
        return self.diff_id

    @property
    def uncompressed_size(self) -> int:
        return self.size

    def compressed(self) -> BinaryIO:
        return _TeeReader(self.deferred, self.diff_id)  # type: ignore[return-value]

    def uncompressed(self) -> BinaryIO:
        return self.compressed()


@dataclass
class DeferredLaunch:
    """Launch-cache layers located for a load but not read yet: the load streams them into the
    daemon and the store at once. `finish` records what verified, reads what the load did not
    need, and lets go of the caches."""

    store: Store
    stack: ExitStack
    located: dict[str, tuple[Reader, Entry]] = field(default_factory=dict)
    staged: list[StagedBlob] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)  # diffID -> why it was not recorded
    report: LaunchReport = field(default_factory=LaunchReport)
    finished: bool = False

    def layers(self) -> dict[str, Layer]:
        """The located layers, for the load to send."""
        return {
            diff_id: _LaunchLayer(self, diff_id, entry.size)
            for diff_id, (_reader, entry) in self.located.items()
        }

    def close(self) -> None:
        """Let go of the caches, reading nothing more: for a load that will not be made."""
        if not self.finished:
            self.finished = True
            self.stack.close()

    def finish(self, lease: Lease | None) -> LaunchReport:
        """Record the layers that verified on their way into the load, ingest those the load
        did not read, note the bad ones; the caches are closed either way. Once only."""
        if self.finished:
            return LaunchReport()
        self.finished = True
        try:
            staged, self.staged = self.staged, []
            try:
                written = self.store.commit_staged_many(staged, lease=lease) if staged else []
            finally:
                for blob in staged:
                    self.store.discard(blob)
            done = {blob.diff_id for blob in staged}
            for blob, new in zip(staged, written, strict=True):
                (self.report.recorded if new else self.report.known).append(blob.diff_id)
                self.report.bytes_read += blob.size
            for diff_id, (reader, entry) in self.located.items():
                if diff_id not in done and diff_id not in self.bad:
                    self._ingest(reader, entry, lease)
            for diff_id, why in self.bad.items():
                reader, _entry = self.located[diff_id]
                reader.problem(f"{diff_id}.tar", why)
            for reader in {id(r): r for r, _e in self.located.values()}.values():
                self.report.problems += reader.listing.problems
                if reader.listing.in_use:
                    self.report.in_use.append(reader.cache.name)
        finally:
            self.stack.close()
        return self.report

    def _ingest(self, reader: Reader, entry: Entry, lease: Lease | None) -> None:
        try:
            with reader.open_layer(entry) as stream:
                result = self.store.ingest_layer(
                    stream, expected_digest=entry.diff_id, expected_diff_id=entry.diff_id,
                    lease=lease,
                )  # fmt: skip
        except CorruptBlobError as exc:
            self.bad[entry.diff_id] = f"does not match its name ({exc})"
            return
        except (LaunchCacheError, DaemonError) as exc:
            self.bad[entry.diff_id] = f"unreadable ({exc})"
            return
        (self.report.recorded if result.written else self.report.known).append(entry.diff_id)
        self.report.bytes_read += max(result.size, 0)


def locate_launch_layers(
    store: Store,
    daemon: Daemon,
    caches: list[LaunchCache],
    wanted: set[str],
    image_refs: Iterable[str],
) -> DeferredLaunch:
    """Find `wanted` layers in these launch caches without reading them, keeping the caches
    open (an idle container for a volume read through the engine) until `finish`."""
    deferred = DeferredLaunch(store, ExitStack())
    refs = list(image_refs)
    remaining = set(wanted)
    try:
        for cache in _for_image_first(caches, refs):
            if not remaining:
                break
            image = _reader_image(daemon, refs) if cache.volume else None
            try:
                launch = deferred.stack.enter_context(reader(daemon, cache, image))
                found = launch.locate(remaining)
            except (LaunchCacheError, DaemonError) as exc:  # that cache only
                deferred.report.problems.append(f"{cache.name}: cannot be read: {exc}")
                continue
            deferred.report.caches.append(cache.name)
            for diff_id, entry in found.items():
                deferred.located[diff_id] = (launch, entry)
            remaining -= set(found)
    except BaseException:
        deferred.stack.close()
        raise
    return deferred
