"""`packcache load REF`: put a cached image into the daemon, sending only what it lacks.

The daemon is asked what it holds (its images' layer chains; on a containerd store, the blobs
of images whose manifests we recorded), the archive is streamed from the cache straight into
`docker load`, and the result is checked. An incomplete result is loaded again with every
layer included.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from packcache.archive.load_writer import (
    LoadLayer,
    legacy_archive,
    oci_archive,
    oci_manifest,
)
from packcache.digest import sha256_digest
from packcache.errors import NotFoundError, PackcacheError, UsageError
from packcache.image.layer import MEDIA_TYPES, chain_ids
from packcache.refs import familiar, normalize
from packcache.store.store import ImageRecord, Lease, Store
from packcache.streams import read_ahead
from packcache.transports.daemon import Daemon, DaemonError

log = logging.getLogger(__name__)


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


def held_by_daemon(
    store: Store, daemon: Daemon, diff_ids: list[str]
) -> list[tuple[str, int, str] | None]:
    """Per layer, how the daemon holds it: (digest, size, media type) to reference it by, or
    None when it must be sent. A containerd store holds the blobs of its images, known where we
    recorded their manifests: only those images are looked up (a containerd store's image list
    costs 0.14 s with a few builders in it, and grows with every image). A graphdriver holds a
    layer when it holds its whole chain; an image's chain is read from the index when its ID (a
    config digest there) is a config we hold, so only images new to the cache cost an inspect."""
    if daemon.info.containerd_store:
        candidates = store.manifests_with_layers(diff_ids)
        descriptors = store.held_descriptors(d for d in candidates if daemon.has_image(d))
        return [descriptors.get(diff_id) for diff_id in diff_ids]
    image_ids = daemon.image_ids()
    known = store.config_diff_ids(image_ids)
    present = set()
    for image_id in image_ids:
        layers = known.get(image_id)
        if layers is None:
            layers = daemon.image_diff_ids(image_id) or []
        present.update(chain_ids(layers))
    placeholder = (None, 0, MEDIA_TYPES["none"])  # a graphdriver needs no digest
    return [placeholder if chain in present else None for chain in chain_ids(diff_ids)]


def plan_layers(
    store: Store, daemon: Daemon, diff_ids: list[str], *, reuse: bool = True
) -> list[LoadLayer]:
    """What to send for each layer: nothing where the daemon holds it, else the cached blob."""
    held = held_by_daemon(store, daemon, diff_ids) if reuse else [None] * len(diff_ids)
    plan = []
    for diff_id, reference in zip(diff_ids, held, strict=True):
        if reference is not None:
            digest, size, media_type = reference
            plan.append(LoadLayer(diff_id, None, digest or diff_id, size, media_type))
            continue
        layer = store.layer(diff_id)
        if layer is None:
            raise PackcacheError(
                f"layer {diff_id} is neither in the Docker daemon nor in the cache; "
                "import an image that has it first"
            )
        plan.append(LoadLayer(diff_id, layer, layer.digest, layer.size, layer.media_type))
    store.blobs.prefetch(item.layer.digest for item in plan if item.layer is not None)
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
    """Load the cached image `ref` (tag or ID), named `tags` or else its recorded tags."""
    config_digest = store.resolve_image(ref)
    tags = tags or store.image_refs(config_digest)
    if not tags:
        raise UsageError(f"image {ref} has no tag in the cache: name one with --tag")
    return load_config(store, daemon, store.image_config(config_digest), tags, lease=lease)


def load_config(
    store: Store,
    daemon: Daemon,
    config: bytes,
    tags: list[str],
    *,
    lease: Lease | None = None,
    reuse: bool = True,
) -> LoadReport:
    """Load the image `config` describes: its layers come from the daemon itself where it
    holds them and from the cache otherwise (all from the cache when not `reuse`). Recorded
    in the cache once the daemon holds it complete."""
    start = time.perf_counter()
    tags = [familiar(normalize(tag)) for tag in tags]  # docker load wants name:tag
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    if lease is not None:
        lease.add(diff_ids)
    with _replaced_images_kept(daemon, tags):
        image_id, manifest, plan, counter, full = _load_until_complete(
            store, daemon, config, diff_ids, tags, reuse
        )
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
        full_reload=full and reuse,
        seconds=time.perf_counter() - start,
    )


def _load_until_complete(
    store: Store, daemon: Daemon, config: bytes, diff_ids: list[str], tags: list[str], reuse: bool
) -> tuple[str, bytes | None, list[LoadLayer], _Counter, bool]:
    """Load, reusing what the daemon holds (unless not `reuse`); if the daemon then does not
    hold the image complete, load again with every blob included. Returns the image ID, the
    manifest (containerd store), the plan sent, its byte counter and whether it was full."""
    for full in (not reuse, True):
        plan = plan_layers(store, daemon, diff_ids, reuse=not full)
        counter = _Counter()
        if daemon.info.containerd_store:
            manifest = oci_manifest(config, plan)
            image_id = sha256_digest(manifest)
            chunks = oci_archive(config, manifest, plan, tags)
        else:
            manifest, image_id = None, sha256_digest(config)
            chunks = legacy_archive(config, plan, tags)
        daemon.load(counter.count(read_ahead(chunks)))
        content = len(config) + (len(manifest) if manifest else 0) + sum(i.size for i in plan)
        if all(_verify(daemon, tag, image_id, diff_ids, content) for tag in tags):
            return image_id, manifest, plan, counter, full
    raise DaemonError(f"the Docker daemon did not keep {tags[0]} complete after a load")


@contextmanager
def _replaced_images_kept(daemon: Daemon, tags: list[str]) -> Iterator[None]:
    """Hold the images these tags name under a temporary name until the load is done.

    A containerd store moves the tags when it imports and unpacks afterwards: the image a
    tag used to name can be garbage-collected meanwhile, with the snapshots of layers the new
    image is unpacked on top of ("parent snapshot ... does not exist", seen on 26.1 when a
    builder is re-created under its name). A graphdriver keeps layers by chain: no need.
    """
    kept: list[str] = []
    try:
        for tag in tags if daemon.info.containerd_store else []:
            try:
                old = daemon.inspect_image(tag)["Id"]
            except NotFoundError:
                continue
            name = f"packcache-keep/{os.getpid()}-{len(kept)}:{secrets.token_hex(4)}"
            daemon.tag(old, name)
            kept.append(name)
        yield
    finally:  # every name made is removed, whether the load (or a later tagging) failed
        for name in kept:
            try:
                daemon.untag(name)
            except PackcacheError as exc:
                log.warning("could not remove the temporary tag %s: %s", name, exc)
