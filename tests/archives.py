"""docker-save archives built by the tests, in each layout engines write (see engines/images.py
for the legacy layout)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tests.engines.images import (
    BuiltImage,
    canonical_json,
    gzip_bytes,
    image_config,
    layer_tar,
    sha256_digest,
    write_tar,
)
from tests.engines.images import Layer as LayerFiles

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def build_oci_archive(
    path: Path,
    layers: Sequence[LayerFiles],
    repo_tag: str = "packcache-test:latest",
    *,
    gzip_layers: bool = True,
    config_extra: dict | None = None,
    extra_members: dict[str, bytes] | None = None,
) -> tuple[BuiltImage, str]:
    """An OCI-layout save (containerd store when gzip_layers, else graphdriver 25+ style).
    Returns the image and its manifest digest."""
    tars = [layer_tar(layer) for layer in layers]
    blobs = [gzip_bytes(t) if gzip_layers else t for t in tars]
    diff_ids = [sha256_digest(t) for t in tars]
    config = image_config(diff_ids, config_extra)
    config_bytes = canonical_json(config)
    config_digest = sha256_digest(config_bytes)
    media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": media, "digest": sha256_digest(b), "size": len(b)} for b in blobs],
    }
    manifest_bytes = canonical_json(manifest)
    manifest_digest = sha256_digest(manifest_bytes)
    members = {f"blobs/sha256/{sha256_digest(b)[7:]}": b for b in blobs}
    members[f"blobs/sha256/{config_digest[7:]}"] = config_bytes
    members[f"blobs/sha256/{manifest_digest[7:]}"] = manifest_bytes
    members["oci-layout"] = b'{"imageLayoutVersion":"1.0.0"}'
    members["index.json"] = canonical_json(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest_bytes),
                    "annotations": {"io.containerd.image.name": f"docker.io/library/{repo_tag}"},
                }
            ],
        }
    )
    members["manifest.json"] = json.dumps(
        [
            {
                "Config": f"blobs/sha256/{config_digest[7:]}",
                "RepoTags": [repo_tag],
                "Layers": [f"blobs/sha256/{sha256_digest(b)[7:]}" for b in blobs],
            }
        ]
    ).encode()
    members.update(extra_members or {})
    write_tar(path, members)
    image = BuiltImage(
        path=path,
        repo_tag=repo_tag,
        config_digest=config_digest,
        diff_ids=diff_ids,
        blob_digests=[sha256_digest(b) for b in blobs],
        compressed=[gzip_layers] * len(blobs),
        config=config,
    )
    return image, manifest_digest
