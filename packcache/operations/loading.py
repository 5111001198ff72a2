"""`packcache load REF`: put a cached image into the daemon, sending only what it lacks.

The daemon is asked what it holds (its images' layer chains; on a containerd store, the blobs
of images whose manifests we recorded), the archive is streamed from the cache straight into
`docker load`, and the result is checked. An incomplete result is loaded again with every
layer included.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from packcache.archive.load_writer import (
    LoadLayer,
    legacy_archive,
    oci_archive,
    oci_manifest,
)
from packcache.digest import sha256_digest
from packcache.engine.daemon import Daemon, DaemonError, chain_ids
from packcache.errors import PackcacheError, UsageError
from packcache.store.layer import MEDIA_TYPES
from packcache.store.store import ImageRecord, Lease, Store


@dataclass
class LoadReport:
    image_id: str
    tags: list[str]
    layers_sent: int
    layers_reused: int
    bytes_sent: int
    full_reload: bool
    seconds: float


class _Counter:
    def __init__(self) -> None:
        self.bytes = 0

    def count(self, chunks):
        for chunk in chunks:
            self.bytes += len(chunk)
            yield chunk


def plan_layers(
    store: Store, daemon: Daemon, diff_ids: list[str], *, reuse: bool = True
) -> list[LoadLayer]:
    """What to send for each layer: nothing where the daemon holds it, else the cached blob."""
    held = daemon.image_layers() if reuse else {}
    if daemon.info.containerd_store:
        descriptors = store.engine_descriptors(daemon.info.id, held) if reuse else {}
        reusable = [diff_id in descriptors for diff_id in diff_ids]
    else:
        present = {chain for layers in held.values() for chain in chain_ids(layers)}
        reusable = [chain in present for chain in chain_ids(diff_ids)]
        descriptors = {}
    plan = []
    for diff_id, reused in zip(diff_ids, reusable, strict=True):
        if reused:
            digest, size, media_type = descriptors.get(diff_id, (diff_id, 0, MEDIA_TYPES["none"]))
            plan.append(LoadLayer(diff_id, None, digest, size, media_type))
            continue
        layer = store.layer(diff_id)
        if layer is None:
            raise PackcacheError(
                f"layer {diff_id} is neither in the Docker daemon nor in the cache; "
                "import an image that has it first"
            )
        plan.append(LoadLayer(diff_id, layer, layer.digest, layer.size, layer.media_type))
    return plan


def _verify(daemon: Daemon, tag: str, image_id: str, diff_ids: list[str], content: int) -> bool:
    """Does the daemon now hold the complete image we built?"""
    try:
        info = daemon.inspect_image(tag)
    except PackcacheError:
        return False
    if info.get("Id") != image_id or (info.get("RootFS") or {}).get("Layers") != diff_ids:
        return False
    if daemon.info.containerd_store:
        return daemon.content_available(tag, image_id, content)
    return True


def load_image(
    store: Store,
    daemon: Daemon,
    ref: str,
    tags: list[str] | None = None,
    *,
    lease: Lease | None = None,
) -> LoadReport:
    start = time.perf_counter()
    config_digest = store.resolve_image(ref)
    config = store.image_config(config_digest)
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    tags = tags or store.image_refs(config_digest)
    if not tags:
        raise UsageError(f"image {ref} has no tag in the cache: name one with --tag")
    if lease is not None:
        lease.add(diff_ids)
    for full in (False, True):
        plan = plan_layers(store, daemon, diff_ids, reuse=not full)
        counter = _Counter()
        if daemon.info.containerd_store:
            manifest = oci_manifest(config, plan)
            image_id = sha256_digest(manifest)
            chunks = oci_archive(config, manifest, plan, tags)
        else:
            manifest, image_id = None, config_digest
            chunks = legacy_archive(config, plan, tags)
        daemon.load(counter.count(chunks))
        content = len(config) + (len(manifest) if manifest else 0) + sum(i.size for i in plan)
        if all(_verify(daemon, tag, image_id, diff_ids, content) for tag in tags):
            break
        if full:
            raise DaemonError(f"the Docker daemon did not keep {tags[0]} complete after a load")
    store.record_image(
        ImageRecord(
            config=config,
            engine=daemon.info.id,
            image_id=image_id,
            manifest_digest=sha256_digest(manifest) if manifest else None,
            manifest=manifest,
            refs=tags,
        )
    )
    sent = [item for item in plan if item.layer is not None]
    return LoadReport(
        image_id=image_id,
        tags=tags,
        layers_sent=len(sent),
        layers_reused=len(plan) - len(sent),
        bytes_sent=counter.bytes,
        full_reload=full,
        seconds=time.perf_counter() - start,
    )
