"""An image's config (and, on a containerd store, its manifest) learnt from the daemon's own
storage instead of a `docker save`: the graphdriver's image store when the daemon is local, the
containerd content store over its API. Every blob read is checked against its digest before it
is recorded; where nothing can be read, the caller saves as before.
"""

from __future__ import annotations

import logging

from packcache.archive.save_head import read_config, read_manifest_and_config
from packcache.digest import sha256_digest
from packcache.errors import PackcacheError
from packcache.image.inspected import InspectedImage
from packcache.jsondoc import (
    DocumentError,
    check_image_config,
    check_index,
    check_manifest,
    config_diff_ids,
    strict_loads,
)
from packcache.operations.containerd_load import daemon_containerd
from packcache.operations.load_planners import keeps_manifests
from packcache.store.store import ImageRecord, Store
from packcache.transports.containerd import Containerd
from packcache.transports.daemon import Daemon

log = logging.getLogger(__name__)

MAX_METADATA = 16 << 20  # a manifest or config larger than this is not one
_MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}


def _platform_manifest(daemon: Daemon, info: InspectedImage, index: bytes) -> str | None:
    """The digest of the manifest for the image's own platform in its index: the one the
    daemon lists as available (API 1.48+, `manifests=1`), else the index's entry that names
    that platform."""
    listed = daemon.image_manifests(info.id)
    if listed is not None:
        for entry in listed:
            platform = (entry.get("ImageData") or {}).get("Platform") or {}
            if (
                entry.get("Kind") == "image"
                and entry.get("Available")
                and _same_platform(platform, info)
            ):
                return str((entry.get("Descriptor") or {}).get("digest") or "") or None
        return None
    for descriptor in check_index(strict_loads(index, "an image index"), "an image index"):
        if _same_platform(descriptor.get("platform") or {}, info):
            return str(descriptor["digest"])
    return None


def _is_manifest(document: object) -> bool:
    """An image manifest, not an index (an OCI manifest may leave out its media type)."""
    if not isinstance(document, dict):
        return False
    media_type = document.get("mediaType")
    return media_type in _MANIFEST_TYPES or (media_type is None and "manifests" not in document)


def _same_platform(platform: dict, info: InspectedImage) -> bool:
    return (
        platform.get("os") == info.os
        and platform.get("architecture") == info.architecture
        and (platform.get("variant") or "") == (info.variant or "")
    )


def _containerd_blobs(daemon: Daemon, info: InspectedImage) -> tuple[bytes, bytes] | None:
    """The manifest (of the image's platform) and config of a daemon image in the daemon's
    containerd, each checked against its digest; None where they cannot be read."""
    if not daemon.is_local():
        return None
    # The same connection, settings and fallback as the containerd load path.
    containerd = daemon_containerd(daemon)
    if containerd is None:
        return None
    try:
        manifest = _manifest_blob(containerd, daemon, info)
        if manifest is None:
            return None
        config_digest = check_manifest(strict_loads(manifest, "a manifest"), "a manifest")[
            "config"
        ]["digest"]
        config = containerd.read_small_blob(config_digest, MAX_METADATA)
    except PackcacheError as exc:
        log.info("the daemon's containerd could not give %s: %s", info.id, exc)
        return None
    if config is None or sha256_digest(config) != config_digest:
        return None
    return manifest, config


def _manifest_blob(containerd: Containerd, daemon: Daemon, info: InspectedImage) -> bytes | None:
    """The image's target, or (an index) its platform manifest, checked against its digest."""
    digest: str | None = info.id
    for _hop in range(2):
        blob = containerd.read_small_blob(digest or "", MAX_METADATA)
        if blob is None or sha256_digest(blob) != digest:
            return None
        if _is_manifest(strict_loads(blob, "a manifest")):
            return blob
        digest = _platform_manifest(daemon, info, blob)
        if digest is None:
            return None
    return None


def record_from_engine(store: Store, daemon: Daemon, info: InspectedImage) -> str | None:
    """Record the daemon image `info` (config, and its manifest on a containerd store) read
    from the daemon's storage, without a save. Returns its config digest, or None."""
    manifest = None
    if keeps_manifests(daemon):
        blobs = _containerd_blobs(daemon, info)
        if blobs is None:
            return None
        manifest, config = blobs
    else:
        config = daemon.local_image_config(info.id)
        if config is None:
            return None
    return _record_checked(store, daemon, info, config, manifest)


def _record_checked(
    store: Store, daemon: Daemon, info: InspectedImage, config: bytes, manifest: bytes | None
) -> str | None:
    """Record a config (and manifest) read from the engine, if it is the config of `info`."""
    try:
        document = check_image_config(strict_loads(config, "an image config"))
    except DocumentError:
        return None
    if config_diff_ids(document) != list(info.diff_ids):
        return None
    return store.record_image(
        ImageRecord(
            config=config,
            engine=daemon.info.id,
            image_id=info.id,
            manifest_digest=info.id if manifest else None,
            manifest=manifest,
            refs=list(info.repo_tags),
        )
    )


def record_from_save_head(
    store: Store, daemon: Daemon, info: InspectedImage
) -> tuple[str | None, int]:
    """Record the daemon image `info` from the head of its `docker save` stream, closed once its
    config (and manifest) has passed: for a daemon whose storage cannot be read in place. The
    layers after it in the stream are never received. Returns its config digest (None: not
    found) and the bytes of the stream read."""
    try:
        with daemon.save([info.id]) as stream:
            if keeps_manifests(daemon):
                head = read_manifest_and_config(
                    stream, info.id, lambda index: _platform_manifest(daemon, info, index)
                )
            else:
                head = read_config(stream, info.id)
    except PackcacheError as exc:
        log.info("the head of the save of %s gave no config: %s", info.id, exc)
        return None, 0
    if head.config is None:
        return None, head.bytes_read
    return _record_checked(store, daemon, info, head.config, head.manifest), head.bytes_read
