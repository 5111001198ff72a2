"""`packcache create-builder --publish`: the builder pushed to the registry NAME names, as
`pack builder create --publish` does, with no layer downloaded for the purpose.

Reads top to bottom: each of the builder's layers gets a blob descriptor: a layer of the build
image or of a buildpackage read from a registry keeps the blob that registry has (mounted from
its repository when it is on the target registry, else uploaded from the cache, which pulled
it); the builder's own layers (lifecycle, order, stack, env...) are uploaded from the cache.
Blobs the target has are skipped by HEAD (registry_push.BlobPusher). Then the config, then the
manifest under NAME's tag: Docker schema 2 unless a source blob is OCI-typed or zstd. The
result is recorded in the cache under NAME with its manifest, so `packcache load NAME` works.

--tag names more destinations (pack's additional tags, "each will contain contents identical
to Image"): the same push is made to each, in turn, blobs mounted from the repositories already
pushed to on the same registry. For several platforms (pack's multi-arch builder) each
platform's builder is pushed by its digest (with --append-image-name-suffix under NAME's tag
with the platform appended, as pack's name.AppendSuffix makes it), then an OCI image index
naming them with their platforms under NAME's tag and each --tag, as pack's CreateManifest
does.
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
from packcache.store.layer import CachedLayer
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
from packcache.transports.registry_push import BlobPusher, BlobToPush, PushCounts

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
    tags: dict[str, str] = field(default_factory=dict)  # each --tag pushed -> its digest
    suffixed: str = ""  # with --append-image-name-suffix: the platform's own tag
    # Per destination repository (host/repository): the manifest pushed there, for an index.
    manifests: dict[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Blob:
    digest: str
    size: int
    compression: str
    oci: bool  # named by an OCI media type where it came from
    push: BlobToPush


def check_publish_name(name: str, what: str = "--publish") -> ImageName:
    target = ImageName.parse(name)
    if target.reference.startswith("sha256:"):
        raise UsageError(f"{what} needs a tag to push to, not a digest: {name}")
    return target


def reach_destinations(name: str, tags: list[str], registries: RegistryClients) -> None:
    """Ask each registry pushed to for its API before anything is read or written: one that
    cannot be reached fails the publish first, with the cache as it was."""
    for host in dict.fromkeys(d.api_host for d in _destinations(check_publish_name(name), tags)):
        registries.for_host(host).ping()


def append_suffix(name: ImageName, platform: Platform) -> ImageName:
    """pack's name.AppendSuffix: `latest` becomes the platform's values joined by '-',
    another tag gets them appended after a '-'."""
    suffix = "-".join(filter(None, (platform.os, platform.architecture, platform.variant)))
    tag = suffix if name.reference == "latest" else f"{name.reference}-{suffix}"
    return ImageName(name.host, name.repository, tag)


def _repository(name: ImageName) -> str:
    return f"{name.host}/{name.repository}"


def _ensure_cached(
    store: Store,
    sources: list[FetchedImage],
    wanted: set[str],
    hosts: set[str],
    registries: RegistryClients,
    platform: Platform,
    lease: Lease,
) -> list[str]:
    """Pull the sources on registries other than a destination's whose wanted layers the
    cache lacks: nothing mounts across registries, so those bytes must be uploaded from here."""
    pulled = []
    for source in sources:
        if source.name is None or hosts <= {source.name.host}:
            continue
        needed = wanted & set(source.image.diff_ids)
        if needed and lease.hold(needed) != needed:
            pull_image(store, registries.for_name(source.name), source.name, lease=lease,
                       platform=platform)  # fmt: skip
            pulled.append(source.ref)
    return pulled


def _blobs(
    store: Store,
    diff_ids: list[str],
    sources: list[FetchedImage],
    target: ImageName,
    pushed: tuple[str, ...] = (),
) -> list[_Blob]:
    """Per builder layer, the blob pushed for it (see the module doc); `pushed`: repositories
    of target's registry this builder was pushed to already, which hold every blob."""
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
            if not same_host and cached is not None and cached.digest != digest:
                # not mountable from its source: the cache's own blob of the layer goes up
                # (the same on every destination of this registry, so mountable between them)
                blobs.append(_cached_blob(cached, pushed))
                continue
            mount = (*pushed, source.name.repository) if same_host else pushed
            opener = cached.compressed if cached is not None and cached.digest == digest else None
            compression = _COMPRESSION.get(media_type)
            if compression is None:
                raise PackcacheError(f"{source.ref}: layer type {media_type!r} cannot be pushed")
            oci = media_type.startswith("application/vnd.oci.")
        elif cached is not None:
            blobs.append(_cached_blob(cached, pushed))
            continue
        else:
            raise PackcacheError(f"layer {diff_id} of the builder is not in the cache")
        blobs.append(_Blob(digest, size, compression, oci, BlobToPush(digest, size, opener, mount)))
    return blobs


def _cached_blob(cached: CachedLayer, pushed: tuple[str, ...] = ()) -> _Blob:
    push = BlobToPush(cached.digest, cached.size, cached.compressed, pushed)
    return _Blob(cached.digest, cached.size, cached.compression, False, push)


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
    tags: list[str] = (),  # type: ignore[assignment]
    by_digest: bool = False,
    suffixed: bool = False,
    progress: Progress = NO_PROGRESS,
) -> BuilderPublishReport:
    """Push the builder `config` describes to `name` and each of `tags` (for an index: by its
    digest only, to `name`'s repository under the platform's suffixed tag when `suffixed`, and
    to each tag's repository); see the module doc."""
    target = check_publish_name(name)
    destinations = _destinations(target, tags)
    document = json.loads(config)
    diff_ids = config_diff_ids(document)
    hosts = {destination.host for destination in destinations}
    pulled = _ensure_cached(store, sources, set(diff_ids), hosts, registries, platform, lease)
    lease.hold(diff_ids)
    own_platform = _platform_of(document)
    report = BuilderPublishReport(str(target), "", "", 0, pulled_for_upload=pulled)
    report.platform = str(own_platform)
    pushed: dict[str, list[str]] = {}  # host -> repositories pushed to
    for index, destination in enumerate(destinations):
        reference = destination.reference
        if by_digest and suffixed and index == 0:
            reference = append_suffix(destination, own_platform).reference
            report.suffixed = str(ImageName(destination.host, destination.repository, reference))
        on_host = tuple(pushed.get(destination.host, ()))
        blobs = _blobs(store, diff_ids, sources, destination, on_host)
        body, media_type = _manifest(config, blobs)
        counts, digest = _push(destination, reference, config, blobs, body, media_type,
                               registries, by_digest and reference == destination.reference,
                               on_host, progress)  # fmt: skip
        pushed.setdefault(destination.host, []).append(destination.repository)
        report.present += counts.present
        report.mounted += counts.mounted
        report.uploaded += counts.uploaded
        report.bytes_uploaded += counts.bytes_uploaded
        report.manifests[_repository(destination)] = (digest, len(body))
        if index == 0:
            report.digest, report.media_type, report.manifest_size = digest, media_type, len(body)
            record_body = body
        elif not by_digest:
            report.tags[str(destination)] = digest
    refs = [] if by_digest else [
        str(d) for d in destinations if report.manifests[_repository(d)][0] == report.digest
    ]  # fmt: skip
    store.record_image(
        ImageRecord(
            config=config,
            image_id=digest_of(config),
            manifest_digest=report.digest,
            manifest=record_body,
            refs=refs,
        )
    )
    return report


def _destinations(target: ImageName, tags: list[str]) -> list[ImageName]:
    """NAME, then each --tag not naming it, once each."""
    destinations = [target]
    for tag in tags:
        name = check_publish_name(tag, "--tag")
        if name not in destinations:
            destinations.append(name)
    return destinations


def _platform_of(document: dict[str, Any]) -> Platform:
    return Platform(
        document.get("os") or "linux",
        document.get("architecture") or "amd64",
        document.get("variant") or None,
    )


def _push(
    destination: ImageName,
    reference: str,
    config: bytes,
    blobs: list[_Blob],
    body: bytes,
    media_type: str,
    registries: RegistryClients,
    by_digest: bool,
    pushed: tuple[str, ...],
    progress: Progress,
) -> tuple[PushCounts, str]:
    """The config and layer blobs, then the manifest under `reference` (its digest when
    `by_digest`): the counts and the manifest's digest. `pushed`: repositories of the
    registry that hold the config already."""
    with RegistryClient(
        destination.api_host, registries.options, actions=PUSH_ACTIONS, progress=progress
    ) as client:
        pusher = BlobPusher(client, destination.repository)
        config_blob = BlobToPush(digest_of(config), len(config), lambda: io.BytesIO(config), pushed)
        counts = pusher.push_blobs([config_blob, *(blob.push for blob in blobs)])
        digest = pusher.put_manifest(digest_of(body) if by_digest else reference, body, media_type)
    return counts, digest


def publish_index(
    name: str,
    builders: list[BuilderPublishReport],
    *,
    registries: RegistryClients,
    tags: list[str] = (),  # type: ignore[assignment]
    progress: Progress = NO_PROGRESS,
) -> BuilderPublishReport:
    """Push an OCI image index naming each platform's builder under `name`'s tag and under
    each of `tags` (each index naming the manifests pushed to its repository)."""
    target = check_publish_name(name)
    report = BuilderPublishReport(str(target), "", OCI_INDEX, 0)
    for builder in builders:
        report.present += builder.present
        report.mounted += builder.mounted
        report.uploaded += builder.uploaded
        report.bytes_uploaded += builder.bytes_uploaded
        report.pulled_for_upload += builder.pulled_for_upload
        report.platforms[builder.platform] = builder.digest
    for index, destination in enumerate(_destinations(target, tags)):
        body = _index(builders, _repository(destination))
        with RegistryClient(
            destination.api_host, registries.options, actions=PUSH_ACTIONS, progress=progress
        ) as client:
            digest = BlobPusher(client, destination.repository).put_manifest(
                destination.reference, body, OCI_INDEX
            )
        if index == 0:
            report.digest, report.manifest_size = digest, len(body)
        else:
            report.tags[str(destination)] = digest
    return report


def _index(builders: list[BuilderPublishReport], repository: str) -> bytes:
    manifests = []
    for builder in builders:
        os_name, architecture, *variant = builder.platform.split("/")
        platform = {"architecture": architecture, "os": os_name}
        if variant:
            platform["variant"] = variant[0]
        digest, size = builder.manifests[repository]
        entry = descriptor(builder.media_type, size, digest)
        manifests.append({**entry, "platform": platform})
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, indent=3
    ).encode()
