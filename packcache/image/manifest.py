"""OCI manifests and indexes: the documents that name an image's config and layer blobs."""

from __future__ import annotations

import hashlib
import json
from typing import Any, NamedTuple

from packcache.image.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST


def digest_of(document: bytes) -> str:
    """The sha256 digest that names a blob or document."""
    return "sha256:" + hashlib.sha256(document).hexdigest()


class Descriptor(NamedTuple):
    """What a manifest or index says about one blob (OCI content descriptor)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            entry["annotations"] = self.annotations
        return entry

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Descriptor:
        return cls(
            media_type=str(entry.get("mediaType") or ""),
            digest=str(entry.get("digest") or ""),
            size=int(entry.get("size") or 0),
            annotations=entry.get("annotations") or None,
        )


def image_manifest(config: bytes, layers: list[Descriptor]) -> bytes:
    """An OCI image manifest for this config and these layer blobs, compact."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": Descriptor(OCI_CONFIG, digest_of(config), len(config)).to_json(),
            "layers": [layer.to_json() for layer in layers],
        },
        separators=(",", ":"),
    ).encode()


def manifest_layers(document: bytes) -> list[Descriptor]:
    """The layer descriptors of a manifest, bottom first."""
    return [Descriptor.from_json(entry) for entry in json.loads(document).get("layers") or []]


def image_index(manifests: list[Descriptor]) -> bytes:
    """An OCI image index naming these manifests, as `docker load` reads index.json."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor.to_json() for descriptor in manifests],
        }
    ).encode()
