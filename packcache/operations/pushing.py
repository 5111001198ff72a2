"""`packcache push IMAGE REF`: a cached (or daemon) image to a registry.

Reads top to bottom: find the image in the cache (a daemon image the cache lacks is imported
first, through the import path), choose the manifest to push, push every blob the registry
lacks (HEAD first, a mount from a repository of the same registry that holds it, else an
upload from the cache), then the manifest under REF's tag.

The manifest: the one the cache recorded for the image (from a pull, or from a containerd
store's save) when every blob it names can be had (the cache holds that very blob, or the
registry already has it), so the registry digest is the one docker push gives; otherwise one
built from the blobs the cache holds (a graphdriver's save holds uncompressed layers, which a
Docker schema 2 manifest names as such: docker push would gzip them, with no digest to match).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from packcache.errors import NotFoundError, PackcacheError, UsageError
from packcache.image.config import parse_config
from packcache.image.manifest import digest_of
from packcache.operations.importing import import_images
from packcache.progress import NO_PROGRESS, Progress
from packcache.store.layer import CachedLayer
from packcache.store.store import Lease, Store
from packcache.transports.daemon import Daemon
from packcache.transports.registry import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    PUSH_ACTIONS,
    ImageName,
    RegistryClient,
    RegistryOptions,
)
from packcache.transports.registry_push import (
    CHUNK_BYTES,
    PARALLEL_BLOBS,
    BlobPusher,
    BlobToPush,
)

DOCKER_CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
DOCKER_LAYER_TYPES = {
    "none": "application/vnd.docker.image.rootfs.diff.tar",
    "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
}
OCI_LAYER_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


@dataclass
class PushReport:
    image: str
    ref: str
    digest: str  # the manifest digest the registry confirmed
    config_digest: str
    manifest: str  # "recorded" (the image's own) or "built" (from the cache's blobs)
    media_type: str
    imported: bool  # read from the daemon first
    present: list[str] = field(default_factory=list)  # blobs the registry had
    mounted: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    chunked: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0


def _find_image(
    store: Store, image: str, daemon: Callable[[], Daemon] | None, lease: Lease
) -> tuple[str, bool]:
    """(config digest, imported?): the cache's image, else the daemon's imported now."""
    try:
        config_digest = store.resolve_image(image)
    except NotFoundError:
        if daemon is None:
            raise
        config_digest = None
    if config_digest is not None:
        diff_ids = parse_config(store.image_config(config_digest))["rootfs"]["diff_ids"]
        if lease.hold(diff_ids) == set(diff_ids) or daemon is None:
            return config_digest, False
    assert daemon is not None
    engine = daemon()
    if config_digest is not None and not engine.has_image(image):
        return config_digest, False  # the registry may hold what the cache lost
    try:
        inspected = engine.inspect_image(image)
    except NotFoundError as exc:
        raise NotFoundError(
            f"image {image} is neither in the cache nor in the daemon: "
            f"`docker pull {image}` or `packcache pull {image}` first"
        ) from exc
    import_images(store, engine, [image], lease=lease)
    return store.resolve_image(inspected.id), True


def _same_host_repositories(store: Store, config_digest: str, host: str) -> tuple[str, ...]:
    """Repositories of `host` the image was pulled from: where a mount may find its blobs."""
    found = []
    for ref in store.image_refs(config_digest):
        name = ImageName.parse(ref)
        if name.host == host:
            found.append(name.repository)
    return tuple(dict.fromkeys(found))


def _layer_blob(layer: CachedLayer | None, digest: str) -> Callable[[], Any] | None:
    """How to read the blob `digest` from the cache, if the cache holds that very form."""
    if layer is None or layer.digest != digest:
        return None
    return layer.compressed


def _recorded_blobs(
    manifest: dict[str, Any],
    layers: list[CachedLayer | None],
    pusher: BlobPusher,
    mount_from: tuple[str, ...],
) -> list[BlobToPush] | None:
    """The layer blobs of a recorded manifest, or None if one of them cannot be had: not in
    the cache in that form, and neither on the target nor in a repository to mount from."""
    blobs = []
    for descriptor, layer in zip(manifest["layers"], layers, strict=True):
        digest, size = descriptor["digest"], descriptor["size"]
        opener = _layer_blob(layer, digest)
        if opener is None and not _reachable(pusher, digest, mount_from):
            return None
        blobs.append(BlobToPush(digest, size, opener, mount_from))
    return blobs


def _reachable(pusher: BlobPusher, digest: str, repositories: tuple[str, ...]) -> bool:
    client = pusher.client
    return any(
        client.blob_size(repository, digest) is not None
        for repository in (pusher.repository, *repositories)
    )


def _built_manifest(
    config: bytes, layers: list[CachedLayer | None], diff_ids: list[str], mount_from: tuple
) -> tuple[bytes, str, list[BlobToPush]]:
    """A manifest naming the blobs the cache holds: Docker schema 2 unless a layer is zstd,
    which only OCI can name."""
    missing = [diff_id for diff_id, layer in zip(diff_ids, layers, strict=True) if layer is None]
    if missing:
        raise PackcacheError(
            f"the cache lacks {len(missing)} layer(s) of this image (e.g. {missing[0]}) and "
            "knows no manifest the registry could complete: import or pull it again"
        )
    held = [layer for layer in layers if layer is not None]
    docker = all(layer.compression in DOCKER_LAYER_TYPES for layer in held)
    layer_types = DOCKER_LAYER_TYPES if docker else OCI_LAYER_TYPES
    config_type = DOCKER_CONFIG_TYPE if docker else OCI_CONFIG_TYPE
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, len(config), digest_of(config)),
        "layers": [
            descriptor(layer_types[layer.compression], layer.size, layer.digest) for layer in held
        ],
    }
    blobs = [BlobToPush(layer.digest, layer.size, layer.compressed, mount_from) for layer in held]
    # Indented as docker writes a schema 2 manifest.
    return json.dumps(document, indent=3).encode(), media_type, blobs


def descriptor(media_type: str, size: int, digest: str) -> dict[str, Any]:
    """A content descriptor, its fields in the order docker and go-containerregistry write."""
    return {"mediaType": media_type, "size": size, "digest": digest}


def push_image(
    store: Store,
    image: str,
    ref: str,
    *,
    lease: Lease,
    options: RegistryOptions,
    daemon: Callable[[], Daemon] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    parallel: int = PARALLEL_BLOBS,
    progress: Progress = NO_PROGRESS,
) -> PushReport:
    """Push `image` (cache tag or ID, else a daemon image) to `ref`; see the module doc."""
    target = ImageName.parse(ref)
    if target.reference.startswith("sha256:"):
        raise UsageError(f"push to a tag, not a digest: {ref}")
    config_digest, imported = _find_image(store, image, daemon, lease)
    config = store.image_config(config_digest)
    diff_ids = parse_config(config)["rootfs"]["diff_ids"]
    lease.hold(diff_ids)
    layers = [store.layer(diff_id) for diff_id in diff_ids]
    mount_from = _same_host_repositories(store, config_digest, target.host)
    mount_from = tuple(r for r in mount_from if r != target.repository)
    with RegistryClient(
        target.api_host, options, actions=PUSH_ACTIONS, progress=progress
    ) as client:
        pusher = BlobPusher(client, target.repository, chunk_bytes=chunk_bytes, parallel=parallel)
        chosen = None
        for body in store.image_manifests(config_digest):
            document = json.loads(body)
            if len(document.get("layers") or []) != len(diff_ids):
                continue
            blobs = _recorded_blobs(document, layers, pusher, mount_from)
            if blobs is not None:
                media_type = document.get("mediaType") or DOCKER_MANIFEST
                chosen = (body, media_type, blobs, "recorded")
                break
        if chosen is None:
            chosen = (*_built_manifest(config, layers, diff_ids, mount_from), "built")
        body, media_type, blobs, how = chosen
        config_blob = BlobToPush(config_digest, len(config), lambda: io.BytesIO(config), mount_from)
        counts = pusher.push_blobs([config_blob, *blobs])
        digest = pusher.put_manifest(target.reference, body, media_type)
    return PushReport(
        image=image,
        ref=str(target),
        digest=digest,
        config_digest=config_digest,
        manifest=how,
        media_type=media_type,
        imported=imported,
        present=counts.present,
        mounted=counts.mounted,
        uploaded=counts.uploaded,
        chunked=counts.chunked,
        bytes_uploaded=counts.bytes_uploaded,
    )
