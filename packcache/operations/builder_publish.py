"""`packcache create-builder --publish`: the builder pushed to the registry NAME names, as
`pack builder create --publish` does, with no layer downloaded for the purpose.

Reads top to bottom: each of the builder's layers gets a blob descriptor: a layer of the build
image or of a buildpackage read from a registry keeps the blob that registry has (mounted from
its repository when it is on the target registry, else uploaded from the cache, which pulled
it); the builder's own layers (lifecycle, order, stack, env...) are uploaded from the cache.
Blobs the target has are skipped by HEAD (registry_push.BlobPusher). Then the config, then the
manifest under NAME's tag: Docker schema 2 unless a source blob is OCI-typed or zstd. The
result is recorded in the cache under NAME with its manifest, so `packcache load NAME` works.

For several platforms (pack's multi-arch builder) each platform's builder is pushed by its
digest, then an OCI image index naming them with their platforms under NAME's tag, as pack's
CreateManifest does.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

from packcache.errors import PackcacheError, UsageError
from packcache.image.manifest import digest_of
from packcache.jsondoc import config_diff_ids
from packcache.operations.builder_fetch import FetchedImage
from packcache.operations.pulling import pull_image
from packcache.operations.pushing import (
    DOCKER_CONFIG_TYPE,
    DOCKER_LAYER_TYPES,
    OCI_CONFIG_TYPE,
    OCI_LAYER_TYPES,
    descriptor,
)
from packcache.progress import NO_PROGRESS, Progress
from packcache.store.store import ImageRecord, Lease, Store
from packcache.transports.registry import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    PUSH_ACTIONS,
    ImageName,
    Platform,
    RegistryClient,
    RegistryClients,
)
from packcache.transports.registry_push import BlobPusher, BlobToPush

_COMPRESSION = {
    **{media_type: kind for kind, media_type in DOCKER_LAYER_TYPES.items()},
    **{media_type: kind for kind, media_type in OCI_LAYER_TYPES.items()},
}


@dataclass
class BuilderPublishReport:
    ref: str
    digest: str  # the manifest digest the registry confirmed
    media_type: str
    manifest_size: int
    present: list[str] = field(default_factory=list)  # blobs the registry had
    mounted: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    pulled_for_upload: list[str] = field(default_factory=list)  # sources on other registries
    platform: str = ""  # os/arch[/variant] of the builder pushed
    platforms: dict[str, str] = field(default_factory=dict)  # of an index: platform -> digest


@dataclass(frozen=True)
class _Blob:
    digest: str
    size: int
    compression: str
    oci: bool  # named by an OCI media type where it came from
    push: BlobToPush


def check_publish_name(name: str) -> ImageName:
    target = ImageName.parse(name)
    if target.reference.startswith("sha256:"):
        raise UsageError(f"--publish needs a tag to push to, not a digest: {name}")
    return target


def _ensure_cached(
    store: Store,
    sources: list[FetchedImage],
    wanted: set[str],
    target: ImageName,
    registries: RegistryClients,
    platform: Platform,
    lease: Lease,
) -> list[str]:
    """Pull the sources on other registries whose wanted layers the cache lacks: the target
    cannot mount across registries, so those bytes must be uploaded from here."""
    pulled = []
    for source in sources:
        if source.name is None or source.name.host == target.host:
            continue
        needed = wanted & set(source.image.diff_ids)
        if needed and lease.hold(needed) != needed:
            pull_image(store, registries.for_name(source.name), source.name, lease=lease,
                       platform=platform)  # fmt: skip
            pulled.append(source.ref)
    return pulled


def _blobs(
    store: Store, diff_ids: list[str], sources: list[FetchedImage], target: ImageName
) -> list[_Blob]:
    """Per builder layer, the blob pushed for it (see the module doc)."""
    from_registry: dict[str, tuple[dict[str, Any], FetchedImage]] = {}
    for source in sources:
        if source.manifest is None:
            continue
        for layer, diff_id in zip(source.manifest.layers, source.image.diff_ids, strict=True):
            from_registry.setdefault(diff_id, (layer, source))
    blobs = []
    for diff_id in diff_ids:
        cached = store.layer(diff_id)
        if diff_id in from_registry:
            layer, source = from_registry[diff_id]
            digest, size, media_type = layer["digest"], int(layer["size"]), layer["mediaType"]
            assert source.name is not None
            same_host = source.name.host == target.host
            mount = (source.name.repository,) if same_host else ()
            opener = cached.compressed if cached is not None and cached.digest == digest else None
            compression = _COMPRESSION.get(media_type)
            if compression is None:
                raise PackcacheError(f"{source.ref}: layer type {media_type!r} cannot be pushed")
            oci = media_type.startswith("application/vnd.oci.")
        elif cached is not None:
            digest, size, compression, oci = cached.digest, cached.size, cached.compression, False
            opener, mount = cached.compressed, ()
        else:
            raise PackcacheError(f"layer {diff_id} of the builder is not in the cache")
        blobs.append(_Blob(digest, size, compression, oci, BlobToPush(digest, size, opener, mount)))
    return blobs


def _manifest(config: bytes, blobs: list[_Blob]) -> tuple[bytes, str]:
    oci = any(blob.oci or blob.compression not in DOCKER_LAYER_TYPES for blob in blobs)
    layer_types = OCI_LAYER_TYPES if oci else DOCKER_LAYER_TYPES
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": descriptor(
            OCI_CONFIG_TYPE if oci else DOCKER_CONFIG_TYPE, len(config), digest_of(config)
        ),
        "layers": [descriptor(layer_types[b.compression], b.size, b.digest) for b in blobs],
    }
    return json.dumps(document, indent=3).encode(), document["mediaType"]


def publish_builder(
    store: Store,
    name: str,
    config: bytes,
    sources: list[FetchedImage],
    *,
    registries: RegistryClients,
    platform: Platform,
    lease: Lease,
    by_digest: bool = False,
    progress: Progress = NO_PROGRESS,
) -> BuilderPublishReport:
    """Push the builder `config` describes to `name` (to its repository under its digest
    only, `by_digest`, for an index); see the module doc."""
    target = check_publish_name(name)
    document = json.loads(config)
    diff_ids = config_diff_ids(document)
    pulled = _ensure_cached(store, sources, set(diff_ids), target, registries, platform, lease)
    lease.hold(diff_ids)
    blobs = _blobs(store, diff_ids, sources, target)
    body, media_type = _manifest(config, blobs)
    with RegistryClient(
        target.api_host, registries.options, actions=PUSH_ACTIONS, progress=progress
    ) as client:
        pusher = BlobPusher(client, target.repository)
        config_digest = digest_of(config)
        config_blob = BlobToPush(config_digest, len(config), lambda: io.BytesIO(config))
        counts = pusher.push_blobs([config_blob, *(blob.push for blob in blobs)])
        reference = digest_of(body) if by_digest else target.reference
        digest = pusher.put_manifest(reference, body, media_type)
    store.record_image(
        ImageRecord(
            config=config,
            image_id=config_digest,
            manifest_digest=digest,
            manifest=body,
            refs=[] if by_digest else [str(target)],
        )
    )
    return BuilderPublishReport(
        ref=str(target),
        digest=digest,
        media_type=media_type,
        manifest_size=len(body),
        present=counts.present,
        mounted=counts.mounted,
        uploaded=counts.uploaded,
        bytes_uploaded=counts.bytes_uploaded,
        pulled_for_upload=pulled,
        platform="/".join(
            filter(None, (document.get(key) for key in ("os", "architecture", "variant")))
        ),
    )


def publish_index(
    name: str,
    builders: list[BuilderPublishReport],
    *,
    registries: RegistryClients,
    progress: Progress = NO_PROGRESS,
) -> BuilderPublishReport:
    """Push an OCI image index naming each platform's builder under `name`'s tag."""
    target = check_publish_name(name)
    manifests = []
    for builder in builders:
        os_name, architecture, *variant = builder.platform.split("/")
        platform = {"architecture": architecture, "os": os_name}
        if variant:
            platform["variant"] = variant[0]
        entry = descriptor(builder.media_type, builder.manifest_size, builder.digest)
        manifests.append({**entry, "platform": platform})
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, indent=3
    ).encode()
    with RegistryClient(
        target.api_host, registries.options, actions=PUSH_ACTIONS, progress=progress
    ) as client:
        digest = BlobPusher(client, target.repository).put_manifest(
            target.reference, body, OCI_INDEX
        )
    report = BuilderPublishReport(str(target), digest, OCI_INDEX, len(body))
    for builder in builders:
        report.present += builder.present
        report.mounted += builder.mounted
        report.uploaded += builder.uploaded
        report.bytes_uploaded += builder.bytes_uploaded
        report.pulled_for_upload += builder.pulled_for_upload
        report.platforms[builder.platform] = builder.digest
    return report
