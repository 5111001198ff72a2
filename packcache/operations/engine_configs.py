"""An image's config (and, on a containerd store, its manifest) learnt from the daemon's own
storage instead of a `docker save`: the graphdriver's image store when the daemon is local, the
containerd content store over its API. Every blob read is checked against its digest before it
is recorded; where nothing can be read, the caller saves as before.
"""

from __future__ import annotations

import logging
import os

from packcache.digest import sha256_digest
from packcache.errors import PackcacheError
from packcache.image.inspected import InspectedImage
from packcache.jsondoc import (
    DocumentError,
    check_image_config,
    check_manifest,
    config_diff_ids,
    strict_loads,
)
from packcache.store.store import ImageRecord, Store
from packcache.transports.containerd import Containerd, find_endpoint
from packcache.transports.daemon import Daemon

log = logging.getLogger(__name__)

MAX_METADATA = 16 << 20  # a manifest or config larger than this is not one
_MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}


def _containerd_blobs(daemon: Daemon, manifest_digest: str) -> tuple[bytes, bytes] | None:
    """The manifest and config of a single-platform image in the daemon's containerd, each
    checked against its digest; None where containerd cannot be reached or lacks them."""
    if not daemon.is_local():
        return None
    try:
        with Containerd(find_endpoint(daemon.raw_info, os.environ)) as containerd:
            manifest = containerd.read_small_blob(manifest_digest, MAX_METADATA)
            if manifest is None or sha256_digest(manifest) != manifest_digest:
                return None
            document = check_manifest(strict_loads(manifest, "a manifest"), "a manifest")
            if document.get("mediaType") not in _MANIFEST_TYPES:
                return None  # an index: its platform manifest is left to a save
            config_digest = document["config"]["digest"]
            config = containerd.read_small_blob(config_digest, MAX_METADATA)
    except PackcacheError as exc:
        log.info("the daemon's containerd could not give %s: %s", manifest_digest, exc)
        return None
    if config is None or sha256_digest(config) != config_digest:
        return None
    return manifest, config


def record_from_engine(store: Store, daemon: Daemon, info: InspectedImage) -> str | None:
    """Record the daemon image `info` (config, and its manifest on a containerd store) read
    from the daemon's storage, without a save. Returns its config digest, or None."""
    manifest = None
    if daemon.info.containerd_store:
        blobs = _containerd_blobs(daemon, info.id)
        if blobs is None:
            return None
        manifest, config = blobs
    else:
        config = daemon.local_image_config(info.id)
        if config is None:
            return None
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
