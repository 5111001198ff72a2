"""Pull an image from a registry straight into the store, never through a daemon.

The manifest and config are read first (bounded, strict, digest-checked); then every layer
the cache lacks is streamed into the store, its blob digest and its diffID (from the config)
both verified in the same pass, several blobs at once. Layers the cache already holds are not
downloaded. Nothing is recorded unless every layer arrived whole: a failure leaves the cache
as it was.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from packcache.errors import PackcacheError
from packcache.jsondoc import check_image_config, config_diff_ids, strict_loads
from packcache.progress import NO_PROGRESS, Progress
from packcache.store.blobs import StagedBlob
from packcache.store.store import ImageRecord, Lease, Store
from packcache.transports.registry import (
    DEFAULT_PLATFORM,
    ImageName,
    Manifest,
    Platform,
    RegistryClient,
    RegistryOptions,
)

LAYER_MEDIA_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        # What engines with the containerd image store push for uncompressed layers.
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
    }
)
CONFIG_MEDIA_TYPES = frozenset(
    {"application/vnd.docker.container.image.v1+json", "application/vnd.oci.image.config.v1+json"}
)
PARALLEL_BLOBS = 4


@dataclass
class PullReport:
    ref: str
    manifest_digest: str
    config_digest: str
    downloaded: list[str] = field(default_factory=list)  # blob digests fetched
    already_cached: list[str] = field(default_factory=list)  # diffIDs the cache held
    bytes_downloaded: int = 0


def _layer_pairs(manifest: Manifest, config: dict[str, Any], what: str) -> list[tuple[dict, str]]:
    diff_ids = config_diff_ids(config)
    if len(diff_ids) != len(manifest.layers):
        raise PackcacheError(
            f"{what}: the manifest lists {len(manifest.layers)} layers, the config "
            f"{len(diff_ids)} diffIDs"
        )
    for layer in manifest.layers:
        if layer.get("mediaType") not in LAYER_MEDIA_TYPES:
            raise PackcacheError(
                f"{what}: layer of type {layer.get('mediaType')!r} is not supported"
            )
    return list(zip(manifest.layers, diff_ids, strict=True))


def pull_image(
    store: Store,
    client: RegistryClient,
    name: ImageName,
    *,
    lease: Lease,
    platform: Platform = DEFAULT_PLATFORM,
    parallel: int = PARALLEL_BLOBS,
) -> PullReport:
    """Fetch `name` (on `client`'s registry) into `store` and record it; see the module doc."""
    manifest = client.manifest(name.repository, name.reference, platform)
    what = f"{name.host}/{name.repository}@{manifest.digest}"
    if manifest.config.get("mediaType") not in CONFIG_MEDIA_TYPES:
        raise PackcacheError(
            f"{what} is not a container image (config type {manifest.config.get('mediaType')!r})"
        )
    config_bytes = client.read_document_blob(name.repository, manifest.config)
    config = check_image_config(strict_loads(config_bytes, f"the config of {what}"), what)
    pairs = _layer_pairs(manifest, config, what)
    report = PullReport(str(name), manifest.digest, manifest.config["digest"])
    # Cached by diffID is enough: the image loads from it. Only a verified blob of this
    # digest records the digest -> diffID pairing, so nothing unverified is trusted.
    held = lease.hold(diff_id for _, diff_id in pairs)
    missing: dict[str, tuple[dict, str]] = {}
    for layer, diff_id in pairs:
        known = None if diff_id in held else lease.hold_by_digest(layer["digest"])
        if known is not None and known.diff_id != diff_id:
            # The cache verified what this blob holds: a config naming another diffID lies.
            raise PackcacheError(
                f"{what}: layer {layer['digest']} is {known.diff_id}, not the config's {diff_id}"
            )
        if diff_id in held or known is not None:
            report.already_cached.append(diff_id)
        else:
            missing.setdefault(diff_id, (layer, diff_id))

    def fetch(pair: tuple[dict, str]) -> StagedBlob:
        layer, diff_id = pair
        with client.open_blob(name.repository, layer["digest"], layer.get("size")) as blob:
            return store.stage(blob, expected_digest=layer["digest"], expected_diff_id=diff_id)

    staged: list[StagedBlob] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            futures = [pool.submit(fetch, pair) for pair in missing.values()]
            errors = []
            for future in futures:
                try:
                    staged.append(future.result())
                except BaseException as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
        if staged:
            store.commit_staged_many(staged, lease=lease)
        report.downloaded = [s.digest for s in staged]
        report.bytes_downloaded = sum(s.size for s in staged)
        # Refs are tags (what `load` names the image in a daemon); the repo digest is the
        # repository and the manifest digest recorded beside them.
        refs = [] if name.reference.startswith("sha256:") else [str(name)]
        store.record_image(
            ImageRecord(
                config=config_bytes,
                image_id=report.config_digest,
                manifest_digest=manifest.digest,
                manifest=manifest.body,
                refs=refs,
            )
        )
    finally:
        for blob in staged:
            store.discard(blob)
    return report


def pull_images(
    store: Store,
    refs: list[str],
    *,
    lease: Lease,
    options: RegistryOptions,
    platform: Platform = DEFAULT_PLATFORM,
    progress: Progress = NO_PROGRESS,
) -> list[PullReport]:
    """pull_image for each reference (all checked first), one client per registry."""
    names = [ImageName.parse(ref) for ref in refs]
    clients: dict[str, RegistryClient] = {}
    try:
        reports = []
        for name in names:
            if name.api_host not in clients:
                clients[name.api_host] = RegistryClient(name.api_host, options, progress=progress)
            client = clients[name.api_host]
            reports.append(pull_image(store, client, name, lease=lease, platform=platform))
        return reports
    finally:
        for client in clients.values():
            client.close()
