"""`packcache rebase --publish`: rebase an app image registry to registry, as `pack rebase
--publish` does (the lifecycle's rebaser on remote images), without downloading a layer.

Reads top to bottom: read the app image's manifest and config from its registry; choose the
run image as pack does (--run-image, else the recorded run image or a mirror, preferring one
in the registry the result goes to, among those that can be read); read its manifest and
config; validate as the daemon rebase does; build the new config with the daemon rebase's
own `rebased_config` (runImage.reference = the run image's manifest digest reference, as
the lifecycle records it for a registry image); push the blobs the target repository lacks
(mounted from the app's and the run image's repositories on the same registry, else copied
through, streamed), then the config and the manifest; the manifest digest is the result.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from packcache.errors import NotFoundError, PackcacheError, UsageError
from packcache.image.cnb import LifecycleMetadata
from packcache.image.inspected import InspectedImage
from packcache.image.manifest import digest_of
from packcache.jsondoc import check_image_config, strict_loads
from packcache.operations.pushing import descriptor
from packcache.operations.rebase import RebaseError, rebased_config, validate
from packcache.transports.registry import (
    DEFAULT_PLATFORM,
    DOCKER_HUB,
    ImageName,
    Manifest,
    Platform,
    RegistryClient,
    RegistryOptions,
)
from packcache.transports.registry_push import (
    PARALLEL_BLOBS,
    PUSH_ACTIONS,
    BlobPusher,
    BlobToPush,
)

DOCKER_CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"


@dataclass
class PublishReport:
    image: str  # the name the result is pushed as
    previous_image: str  # the app image rebased
    run_image: str  # the run image chosen, as named
    run_image_reference: str  # its manifest digest reference (runImage.reference)
    old_digest: str  # the previous app image's manifest digest
    digest: str  # the rebased image's manifest digest
    manifest_size: int  # bytes of the manifest pushed (report.toml's manifest-size)
    config_digest: str
    app_layers: int
    present: list[str] = field(default_factory=list)
    mounted: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0  # of layer blobs; mounts make it 0 on one registry


@dataclass(frozen=True)
class _RemoteImage:
    name: ImageName
    manifest: Manifest
    config: bytes
    described: InspectedImage

    @property
    def digest_reference(self) -> str:
        """repository@digest, as go-containerregistry names it (lifecycle's Identifier)."""
        host = "index.docker.io" if self.name.host == DOCKER_HUB else self.name.host
        return f"{host}/{self.name.repository}@{self.manifest.digest}"


class _Clients:
    """One read client per registry host; the target's host gets a push client."""

    def __init__(self, options: RegistryOptions, target_host: str) -> None:
        self.options = options
        self.target_host = target_host
        self._clients: dict[str, RegistryClient] = {}

    def get(self, host: str) -> RegistryClient:
        if host not in self._clients:
            actions = PUSH_ACTIONS if host == self.target_host else ("pull",)
            self._clients[host] = RegistryClient(host, self.options, actions=actions)
        return self._clients[host]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _read_image(clients: _Clients, ref: str, platform: Platform) -> _RemoteImage:
    """An image's manifest and config (never its layers), checked."""
    name = ImageName.parse(ref)
    client = clients.get(name.api_host)
    manifest = client.manifest(name.repository, name.reference, platform)
    what = f"{name.host}/{name.repository}@{manifest.digest}"
    config = client.read_document_blob(name.repository, manifest.config)
    document = check_image_config(strict_loads(config, f"the config of {what}"), what)
    if len(document["rootfs"]["diff_ids"]) != len(manifest.layers):
        raise PackcacheError(f"{what}: the manifest and the config list different layer counts")
    described = InspectedImage.from_config(document, manifest.config["digest"])
    return _RemoteImage(name, manifest, config, described)


def _readable(clients: _Clients, ref: str, platform: Platform) -> bool:
    """Can the run image `ref` be read (pack's CheckReadAccess)?"""
    try:
        name = ImageName.parse(ref)
        clients.get(name.api_host).manifest(name.repository, name.reference, platform)
    except PackcacheError:
        return False
    return True


def choose_run_image(
    clients: _Clients,
    metadata: LifecycleMetadata,
    image: str,
    target: ImageName,
    platform: Platform,
    config_mirrors: Mapping[str, list[str]],
) -> str:
    """pack's getBestRunMirror for a publish: the readable names (config mirrors first, then
    the recorded image, then its mirrors), the first in the target's registry, else the first."""
    recorded = metadata.run_image
    if recorded.image is None:
        raise RebaseError(f"{image} names no run image in its metadata: pass --run-image")
    candidates = [*config_mirrors.get(recorded.image, ()), recorded.image, *recorded.mirrors]
    readable = [ref for ref in candidates if _readable(clients, ref, platform)]
    for ref in readable:
        if ImageName.parse(ref).host == target.host:
            return ref
    return readable[0] if readable else recorded.image


def _app_layers(app: _RemoteImage, metadata: LifecycleMetadata, image: str) -> int:
    """How many of the app's top layers are its own (above the run image's top layer)."""
    diff_ids = list(app.described.diff_ids)
    top = metadata.top_layer
    if not top or top not in diff_ids:
        raise RebaseError(
            f"{image}: the run image top layer {top or '(none)'} named in its metadata is not "
            "one of its layers"
        )
    return len(diff_ids) - (len(diff_ids) - diff_ids[::-1].index(top))


def _blob(client: RegistryClient, source: ImageName, entry: dict[str, Any], same: bool):
    """A layer for the target: mounted from its repository on the same registry, else read
    from there as it is sent (streamed through, never held)."""
    digest, size = entry["digest"], entry["size"]
    if same:
        return BlobToPush(digest, size, None, (source.repository,))
    return BlobToPush(digest, size, lambda: client.open_blob(source.repository, digest, size))


def rebase_publish(
    image: str,
    *,
    options: RegistryOptions,
    previous_image: str | None = None,
    run_image: str | None = None,
    force: bool = False,
    config_mirrors: Mapping[str, list[str]] | None = None,
    parallel: int = PARALLEL_BLOBS,
) -> PublishReport:
    """Rebase the registry image `previous_image` (default `image`) and push it as `image`."""
    target = ImageName.parse(image)
    if target.reference.startswith("sha256:"):
        raise UsageError(f"--publish needs a tag to push to, not a digest: {image}")
    clients = _Clients(options, target.api_host)
    try:
        app = _read_image(clients, previous_image or image, DEFAULT_PLATFORM)
        described = app.described
        platform = Platform(
            described.os or "linux", described.architecture, described.variant or None
        )
        metadata = LifecycleMetadata.from_labels(image, described.labels)
        run_ref = run_image or choose_run_image(
            clients, metadata, image, target, platform, config_mirrors or {}
        )
        try:
            run = _read_image(clients, run_ref, platform)
        except NotFoundError as exc:
            raise RebaseError(f"run image {run_ref} cannot be read: {exc}") from exc
        if not force:
            validate(described, run.described, image, run_ref, metadata)
        own = _app_layers(app, metadata, image)
        if not run.described.diff_ids:
            raise RebaseError(f"run image {run_ref} has no layers")
        app_diff_ids = list(described.diff_ids)[len(described.diff_ids) - own :]
        config = rebased_config(
            app.config, run.described, run_ref, metadata, app_diff_ids, force,
            reference=run.digest_reference,
        )  # fmt: skip
        return _push(clients, target, app, run, config, own, image, run_ref, parallel)
    finally:
        clients.close()


def _push(
    clients: _Clients,
    target: ImageName,
    app: _RemoteImage,
    run: _RemoteImage,
    config: bytes,
    own: int,
    image: str,
    run_ref: str,
    parallel: int,
) -> PublishReport:
    """Push the rebased image's blobs and manifest to `target`."""
    client = clients.get(target.api_host)
    app_entries = app.manifest.layers[len(app.manifest.layers) - own :]
    blobs = [
        _blob(clients.get(source.name.api_host), source.name, entry,
              source.name.api_host == target.api_host)
        for source, entries in ((run, run.manifest.layers), (app, app_entries))
        for entry in entries
    ]  # fmt: skip
    media_type = app.manifest.media_type
    config_type = app.manifest.config.get("mediaType") or DOCKER_CONFIG_TYPE
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, len(config), digest_of(config)),
        "layers": [
            descriptor(entry["mediaType"], entry["size"], entry["digest"])
            for entry in (*run.manifest.layers, *app_entries)
        ],
    }
    body = json.dumps(manifest, separators=(",", ":")).encode()
    pusher = BlobPusher(client, target.repository, parallel=parallel)
    config_blob = BlobToPush(digest_of(config), len(config), lambda: io.BytesIO(config))
    counts = pusher.push_blobs([config_blob, *blobs])
    digest = pusher.put_manifest(target.reference, body, media_type)
    downloaded = sum(
        blob.size for blob in blobs if blob.open is not None and blob.digest in counts.uploaded
    )
    return PublishReport(
        image=str(target),
        previous_image=str(app.name),
        run_image=run_ref,
        run_image_reference=run.digest_reference,
        old_digest=app.manifest.digest,
        digest=digest,
        manifest_size=len(body),
        config_digest=digest_of(config),
        app_layers=own,
        present=counts.present,
        mounted=counts.mounted,
        uploaded=counts.uploaded,
        bytes_uploaded=counts.bytes_uploaded,
        bytes_downloaded=downloaded,
    )
