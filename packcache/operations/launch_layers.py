"""Layers from pack's launch caches: `packcache import --launch-cache`, and the step a cold
rebase takes before any `docker save`: find the image's config in the daemon's storage and its
layers in the launch caches on the host, each verified, so that only what no cache holds is saved.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from packcache.errors import CorruptBlobError, PackcacheError, UsageError
from packcache.image.inspected import InspectedImage
from packcache.operations.engine_configs import record_from_engine, record_from_save_head
from packcache.store.store import Lease, Store
from packcache.transports.daemon import Daemon, DaemonError
from packcache.transports.launch_cache import (
    LaunchCache,
    LaunchCacheError,
    bind_cache,
    find_volumes,
    named_volume,
    pack_image_part,
    reader,
)

CACHE, LAUNCH_CACHE, SAVE = "cache", "launch-cache", "docker save"


@dataclass(frozen=True)
class LaunchChoice:
    """Which launch caches an operation may read: the daemon's (default), one named, none."""

    use: bool = True
    source: str | None = None  # a volume name or a directory


EVERY_LAUNCH_CACHE = LaunchChoice()


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


def fill_from_host(
    store: Store,
    daemon: Daemon,
    info: InspectedImage,
    layers: list[str],
    choice: LaunchChoice,
    *,
    lease: Lease | None = None,
) -> HostFill:
    """Before a `docker save` of image `info`: find its `layers` the cache lacks in the launch
    caches, and learn its config from the daemon's storage (or, where that cannot be read, from
    the head of a save, closed once the config has passed). The config digest is None where a
    whole save is still needed (no config, or a layer no cache holds)."""
    cached = store.cached_diff_ids(layers, lease)
    sources = {diff_id: CACHE for diff_id in layers if diff_id in cached}
    launch = LaunchReport()
    missing = set(layers) - cached
    if missing and choice.use:
        caches = launch_caches(daemon, choice.source)
        refs = [*info.repo_tags, info.id]
        launch = ingest_launch_caches(
            store, daemon, caches, wanted=missing, image_refs=refs, lease=lease
        )
        for diff_id in launch.recorded + launch.known:
            sources[diff_id] = LAUNCH_CACHE
    config_digest, head_bytes = None, None
    if len(sources) == len(set(layers)):
        config_digest = record_from_engine(store, daemon, info)
        if config_digest is None:  # the daemon's storage is not readable from here
            config_digest, head_bytes = record_from_save_head(store, daemon, info)
    return HostFill(config_digest, sources, launch, head_bytes)
