"""docker-save archives built by the tests, in each layout engines write (see engines/images.py
for the legacy layout)."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

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
    members, config, manifest_digest = oci_members(
        blobs, diff_ids, repo_tag, gzip_layers=gzip_layers, config_extra=config_extra
    )
    members.update(extra_members or {})
    write_tar(path, members)
    image = BuiltImage(
        path=path,
        repo_tag=repo_tag,
        config_digest=sha256_digest(canonical_json(config)),
        diff_ids=diff_ids,
        blob_digests=[sha256_digest(b) for b in blobs],
        compressed=[gzip_layers] * len(blobs),
        config=config,
    )
    return image, manifest_digest


def oci_members(
    blobs: Sequence[bytes],
    diff_ids: Sequence[str],
    repo_tag: str,
    *,
    gzip_layers: bool = True,
    config_extra: dict | None = None,
) -> tuple[dict[str, bytes], dict, str]:
    """The members of an OCI-layout save of one image made of these layer blobs: returns
    them, the image config and the manifest digest."""
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
    return members, config, manifest_digest


class GzipTarWriter:
    """Writes a .tar.gz that expands to any size in little time and space.

    A gzip file may hold many members, read back as one stream: each header is compressed on
    its own, and a block of data repeated many times is compressed once and its member written
    again and again. `expanded` counts the bytes the file decompresses to.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._members: dict[bytes, bytes] = {}
        self.expanded = 0

    def raw(self, data: bytes) -> None:
        self._out.write(gzip.compress(data, compresslevel=1, mtime=0))
        self.expanded += len(data)

    def repeat(self, block: bytes, times: int) -> None:
        member = self._members.get(block)
        if member is None:
            member = self._members[block] = gzip.compress(block, compresslevel=9, mtime=0)
        for _ in range(times):
            self._out.write(member)
        self.expanded += len(block) * times

    def entry_header(self, name: str, size: int, kind: bytes = tarfile.REGTYPE) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.type = size, kind
        self.raw(info.tobuf(tarfile.USTAR_FORMAT))

    def filled(self, size: int, byte: bytes = b"\0", last: bytes = b"") -> None:
        """`size` bytes of data (`byte` repeated, then `last`), padded to the tar block."""
        body = size - len(last)
        whole, rest = divmod(body, FILL_BLOCK)
        self.repeat(byte * FILL_BLOCK, whole)
        tail = byte * rest + last
        self.raw(tail + bytes(-size % tarfile.BLOCKSIZE))

    def file(self, name: str, data: bytes) -> None:
        self.entry_header(name, len(data))
        self.raw(data + bytes(-len(data) % tarfile.BLOCKSIZE))

    def end(self) -> None:
        self.raw(bytes(2 * tarfile.BLOCKSIZE))


FILL_BLOCK = 1 << 20


def zero_layer_header(size: int) -> bytes:
    info = tarfile.TarInfo("zeros")
    info.size = size
    return info.tobuf(tarfile.USTAR_FORMAT)


def zero_layer_tar_digest(size: int) -> tuple[bytes, str]:
    """The header of a layer tar holding one file of `size` zero bytes, and the tar's digest
    (its diffID), hashed without ever holding the tar."""
    header = zero_layer_header(size)
    hasher = hashlib.sha256(header)
    block = bytes(FILL_BLOCK)
    whole, rest = divmod(size, FILL_BLOCK)
    for _ in range(whole):
        hasher.update(block)
    hasher.update(bytes(rest + (-size % tarfile.BLOCKSIZE) + 2 * tarfile.BLOCKSIZE))
    return header, "sha256:" + hasher.hexdigest()


def write_zero_layer(writer: GzipTarWriter, header: bytes, size: int) -> None:
    """The layer tar of zero_layer_tar_digest, through `writer` (as a gzip layer or as part of
    a compressed archive)."""
    writer.raw(header)
    writer.filled(size)
    writer.end()
