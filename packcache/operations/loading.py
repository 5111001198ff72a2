"""`packcache load REF`: put a cached image into the daemon, sending only what it lacks.

The one load path: the daemon's planner says what it holds, the rest is streamed from the
cache straight into `docker load` (or, on a containerd store whose containerd is reachable,
into its content store), and the result is checked. An incomplete result is loaded again with
every layer included. --no-cache runs the same path with pack's send policy.

A layer that neither the daemon nor the cache holds (pruned from the cache) is taken from pack's
launch caches, verified as it is sent: read once, into the daemon and the cache at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from packcache.archive.load_writer import LoadLayer
from packcache.errors import PackcacheError, UsageError
from packcache.image.config import config_diff_ids
from packcache.image.layer import Layer
from packcache.operations.launch_choice import CACHE, EVERY_LAUNCH_CACHE, LAUNCH_CACHE, LaunchChoice
from packcache.operations.load_planners import (
    EVERYTHING,
    REUSE,
    LoadArchive,
    LoadPlanner,
    SendPolicy,
    planner_for,
)
from packcache.refs import familiar, normalize
from packcache.store.store import ImageRecord, Lease, Store
from packcache.transports.daemon import Daemon, DaemonError

if TYPE_CHECKING:
    from packcache.operations.launch_layers import DeferredLaunch


@dataclass
class LoadReport:
    image_id: str
    tags: list[str]
    layers_sent: int
    layers_reused: int
    bytes_sent: int
    full_reload: bool
    seconds: float
    load_method: str = "docker load"  # or "containerd": written into its content store
    manifest_size: int = 0  # of the manifest the daemon holds it by (a containerd store's)
    # `packcache load`: where each layer was had from, cache or launch-cache, or daemon (the
    # daemon held it, the cache did not: left where it was).
    layer_sources: dict[str, str] = field(default_factory=dict)
    launch_cache_problems: list[str] = field(default_factory=list)  # entries skipped


DAEMON = "daemon"


@dataclass
class _Loaded:
    """One load the daemon kept whole: the archive sent, its plan and its size."""

    archive: LoadArchive
    plan: list[LoadLayer]
    bytes_sent: int
    full_reload: bool


def load_image(
    store: Store,
    daemon: Daemon,
    ref: str,
    tags: list[str] | None = None,
    *,
    lease: Lease | None = None,
    launch: LaunchChoice = EVERY_LAUNCH_CACHE,
) -> LoadReport:
    """Load the cached image `ref` (tag or ID), named `tags` or else its recorded tags. Layers
    the cache and the daemon lack are read from the launch caches `launch` allows."""
    config_digest = store.resolve_image(ref)
    tags = tags or store.image_refs(config_digest)
    if not tags:
        raise UsageError(f"image {ref} has no tag in the cache: name one with --tag")
    config = store.image_config(config_digest)
    diff_ids = config_diff_ids(config)
    cached = store.cached_diff_ids(diff_ids, lease)
    lacking = _lacking(store, daemon, diff_ids, cached)
    if not lacking:
        report = load_config(store, daemon, config, tags, lease=lease)
    else:
        report = _load_with_launch_layers(store, daemon, config, tags, lacking, launch, lease)
    report.layer_sources = {
        diff_id: CACHE if diff_id in cached else LAUNCH_CACHE if diff_id in lacking else DAEMON
        for diff_id in diff_ids
    }
    return report


def _lacking(store: Store, daemon: Daemon, diff_ids: list[str], cached: set[str]) -> list[str]:
    """The layers neither the cache nor the daemon holds, once each in image order."""
    if cached.issuperset(diff_ids):
        return []
    held = planner_for(store, daemon).held(diff_ids)  # a graphdriver's chains need them all
    lacking = (d for d, found in zip(diff_ids, held, strict=True) if found is None)
    return list(dict.fromkeys(d for d in lacking if d not in cached))


def _load_with_launch_layers(
    store: Store,
    daemon: Daemon,
    config: bytes,
    tags: list[str],
    lacking: list[str],
    launch: LaunchChoice,
    lease: Lease | None,
) -> LoadReport:
    """Load, sending the `lacking` layers from the launch caches as they are verified; fails
    before sending anything where a cache holds none of some of them, and with what the cache
    claimed where one of them is not what its name says (the load stops before it completes,
    the layers that verified are recorded)."""
    if not launch.use:
        raise _missing(tags[0], lacking, "launch caches not read: --no-launch-cache")
    # Imported here: a load the cache and the daemon can make (a warm rebase's) reads none.
    from packcache.operations.launch_layers import launch_caches, locate_launch_layers

    deferred = locate_launch_layers(
        store, daemon, launch_caches(daemon, launch.source), set(lacking), tags
    )
    absent = [diff_id for diff_id in lacking if diff_id not in deferred.located]
    if absent:
        deferred.close()
        looked = ", ".join(deferred.report.caches) or "none found"
        raise _missing(tags[0], absent, f"launch caches read: {looked}")
    failed = None
    try:
        report = load_config(store, daemon, config, tags, lease=lease, supplied=deferred.layers())
    except PackcacheError as exc:
        if not deferred.bad:
            raise
        failed = exc
    finally:
        problems = deferred.finish(lease).notes()
    if failed is not None:
        raise _damaged(tags[0], deferred) from failed
    report.launch_cache_problems = problems
    return report


def _missing(tag: str, diff_ids: list[str], where: str) -> PackcacheError:
    return PackcacheError(
        f"{len(diff_ids)} layer(s) of {tag} are neither in the Docker daemon nor in the cache "
        f"({where}): {', '.join(diff_ids)}; import an image that has them"
    )


def _damaged(tag: str, deferred: DeferredLaunch) -> PackcacheError:
    bad = "; ".join(f"{diff_id}.tar {why}" for diff_id, why in deferred.bad.items())
    return PackcacheError(
        f"{tag} was not loaded: the Docker daemon and the cache lack layers whose launch cache "
        f"copies are damaged (not recorded): {bad}"
    )


def base_image_needed(
    store: Store, daemon: Daemon, diff_ids: list[str], policy: SendPolicy = REUSE
) -> bool:
    """Must a base image the daemon holds (a build or run image) be read into `store` before a
    load on top of it: to learn the digests its layers are referenced by, or to send them?"""
    return None in planner_for(store, daemon, policy).held(diff_ids, policy)


def load_config(
    store: Store,
    daemon: Daemon,
    config: bytes,
    tags: list[str],
    *,
    lease: Lease | None = None,
    policy: SendPolicy = REUSE,
    supplied: Mapping[str, Layer] | None = None,
    planner: LoadPlanner | None = None,
) -> LoadReport:
    """Load the image `config` describes: layers the daemon holds are left out as `policy`
    allows, the rest come from the cache (or, those it lacks, from `supplied`: layers read as
    they are sent). Recorded in the cache once the daemon holds it complete. `planner`: a load
    already begun (early_load), or one the caller told what the daemon holds (`extends`), else
    the daemon's own."""
    start = time.perf_counter()
    tags = [familiar(normalize(tag)) for tag in tags]  # docker load wants name:tag
    diff_ids = config_diff_ids(config)
    if lease is not None:
        lease.add(diff_ids)
    planner = planner or planner_for(store, daemon, policy)
    with planner.replaced_images_kept(tags):
        loaded = _load_until_complete(planner, config, diff_ids, tags, policy, supplied)
    manifest = loaded.archive.manifest
    store.record_image(
        ImageRecord(
            config=config,
            engine=daemon.info.id,
            image_id=loaded.archive.image_id,
            manifest_digest=loaded.archive.image_id if manifest else None,
            manifest=manifest,
            refs=tags,
        )
    )
    sent = [item for item in loaded.plan if item.layer is not None]
    return LoadReport(
        image_id=loaded.archive.image_id,
        tags=tags,
        layers_sent=len(sent),
        layers_reused=len(loaded.plan) - len(sent),
        bytes_sent=loaded.bytes_sent,
        full_reload=loaded.full_reload,
        seconds=time.perf_counter() - start,
        load_method=planner.method,
        manifest_size=len(manifest) if manifest else 0,
    )


def _load_until_complete(
    planner: LoadPlanner,
    config: bytes,
    diff_ids: list[str],
    tags: list[str],
    policy: SendPolicy,
    supplied: Mapping[str, Layer] | None = None,
) -> _Loaded:
    """Load as `policy` says; if the daemon then does not hold the image complete and some
    layer was left out, load again with every layer included."""
    for attempt in (policy, EVERYTHING):
        plan = planner.plan(diff_ids, attempt, supplied)
        archive, sent = planner.load(config, plan, tags)
        if all(planner.verify(tag, archive, diff_ids) for tag in tags):
            return _Loaded(archive, plan, sent, full_reload=attempt is not policy)
        if all(item.layer is not None for item in plan):
            break  # everything was sent already: loading it again would not help
    raise DaemonError(f"the Docker daemon did not keep {tags[0]} complete after a load")
