"""Upload OCI images to a plain test registry with bare distribution API calls.

The engines' `docker push` writes Docker schema 2 manifests; OCI manifests and indexes (with
zstd layers, and an attestation entry as buildx adds) are uploaded here with the API's
monolithic blob upload (POST, then PUT ?digest=) and a manifest PUT.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import requests

from tests.engines import images
from tests.layers import compress, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


@dataclass
class UploadedImage:
    manifest_digest: str
    config_digest: str
    diff_ids: list[str]
    layer_digests: list[str]


def upload_blob(base: str, repository: str, data: bytes) -> dict[str, object]:
    digest = sha256(data)
    start = requests.post(f"{base}/v2/{repository}/blobs/uploads/", timeout=30)
    assert start.status_code == 202, start.text
    location = start.headers["Location"]
    sep = "&" if "?" in location else "?"
    done = requests.put(f"{location}{sep}digest={digest}", data=data, timeout=30)
    assert done.status_code == 201, done.text
    return {"digest": digest, "size": len(data)}


def put_manifest(base: str, repository: str, tag: str, media_type: str, document: dict) -> str:
    body = json.dumps(document).encode()
    response = requests.put(
        f"{base}/v2/{repository}/manifests/{tag}",
        data=body,
        headers={"Content-Type": media_type},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return sha256(body)


def upload_oci_image(
    base: str,
    repository: str,
    tag: str,
    layers: list[bytes],
    compressions: list[str],
    config_media_type: str = OCI_CONFIG,
    claimed_diff_ids: list[str] | None = None,
) -> UploadedImage:
    """An OCI image of these layer tars, each compressed as asked (an artifact, not an image,
    with another config media type; a lying config with `claimed_diff_ids`)."""
    diff_ids = claimed_diff_ids or [sha256(tar) for tar in layers]
    config = json.dumps(images.image_config(diff_ids, None)).encode()
    config_descriptor = {"mediaType": config_media_type, **upload_blob(base, repository, config)}
    layer_descriptors = [
        {"mediaType": LAYER_TYPES[kind], **upload_blob(base, repository, compress(tar, kind))}
        for tar, kind in zip(layers, compressions, strict=True)
    ]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor,
        "layers": layer_descriptors,
    }
    digest = put_manifest(base, repository, tag, OCI_MANIFEST, manifest)
    return UploadedImage(
        digest, sha256(config), diff_ids, [str(d["digest"]) for d in layer_descriptors]
    )


def upload_oci_index(
    base: str, repository: str, tag: str, entries: list[tuple[UploadedImage, dict[str, str]]]
) -> str:
    """An OCI index of uploaded images, each with its platform; the first one's attestation
    (platform unknown/unknown, as buildx writes) listed before them all."""
    manifests = []
    first = entries[0][0]
    manifests.append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": first.manifest_digest,
            "size": 1,
            "platform": {"os": "unknown", "architecture": "unknown"},
            "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
        }
    )
    for image, platform in entries:
        response = requests.head(
            f"{base}/v2/{repository}/manifests/{image.manifest_digest}",
            headers={"Accept": OCI_MANIFEST},
            timeout=30,
        )
        size = int(response.headers["Content-Length"])
        manifests.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": size,
                "platform": platform,
            }
        )
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return put_manifest(base, repository, tag, OCI_INDEX, index)
