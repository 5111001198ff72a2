"""What a pull reads of an image before its layers: the manifest (for the platform asked)
and the config, bounded, strict and digest-checked, and each layer paired with the diffID
the config gives it. HTTP only: operations/pulling.py streams the layers into the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packcache.errors import PackcacheError
from packcache.jsondoc import check_image_config, config_diff_ids, strict_loads
from packcache.transports.registry import (
    DEFAULT_PLATFORM,
    ImageName,
    Manifest,
    Platform,
    RegistryClient,
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


@dataclass(frozen=True)
class RemoteImage:
    """An image's manifest and config as its registry serves them, checked."""

    name: ImageName
    client: RegistryClient  # the registry it is read from, for its layers
    manifest: Manifest
    config: bytes
    layers: list[tuple[dict[str, Any], str]]  # each layer's descriptor and diffID, in order

    @property
    def what(self) -> str:
        return f"{self.name.host}/{self.name.repository}@{self.manifest.digest}"


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


def _known(descriptor: dict[str, Any], known: Callable[[str], bytes | None]) -> bytes | None:
    """The blob `descriptor` names as `known` has it, if it has exactly those bytes."""
    data = known(str(descriptor["digest"]))
    if data is None or "sha256:" + hashlib.sha256(data).hexdigest() != descriptor["digest"]:
        return None
    return data if descriptor.get("size") in (None, len(data)) else None


def read_image(
    client: RegistryClient,
    name: ImageName,
    platform: Platform = DEFAULT_PLATFORM,
    known_configs: Callable[[str], bytes | None] | None = None,
) -> RemoteImage:
    """`name`'s manifest and config from `client`'s registry (never a layer). A config
    `known_configs` gives by its digest (the cache's) is not asked for again."""
    manifest = client.manifest(name.repository, name.reference, platform)
    what = f"{name.host}/{name.repository}@{manifest.digest}"
    if manifest.config.get("mediaType") not in CONFIG_MEDIA_TYPES:
        raise PackcacheError(
            f"{what} is not a container image (config type {manifest.config.get('mediaType')!r})"
        )
    config_bytes = None if known_configs is None else _known(manifest.config, known_configs)
    if config_bytes is None:
        config_bytes = client.read_document_blob(name.repository, manifest.config)
    config = check_image_config(strict_loads(config_bytes, f"the config of {what}"), what)
    return RemoteImage(name, client, manifest, config_bytes, _layer_pairs(manifest, config, what))
