"""Writing `docker load` archives as a stream of chunks, straight from the cache.

Only what the daemon lacks is included: on a graphdriver, layers whose chain the daemon holds
become zero-byte placeholders (its loader skips reading a layer whose chain exists); on a
containerd image store, the manifest names those layers by the compressed digests its content
store holds and the blobs are left out (placeholders there produce broken images). Nothing is
buffered whole: headers are written by hand and layer bytes flow from the blob files.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from packcache.digest import CHUNK, sha256_digest
from packcache.errors import CorruptBlobError
from packcache.image.layer import Layer
from packcache.image.manifest import Descriptor, digest_of, image_index
from packcache.image.mediatypes import OCI_MANIFEST
from packcache.refs import normalize

BLOCK = 512


@dataclass(frozen=True)
class LoadLayer:
    """One layer of the image to load: sent, or already held by the daemon."""

    diff_id: str
    layer: Layer | None  # the bytes to send; None when the daemon holds the layer
    digest: str  # the blob digest the manifest names (containerd store)
    size: int
    media_type: str


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _file(name: str, data: bytes) -> Iterator[bytes]:
    yield _header(name, len(data))
    yield data
    yield b"\0" * (-len(data) % BLOCK)


def _stream(name: str, size: int, reader) -> Iterator[bytes]:
    """A member whose bytes come from `reader`, checked to be exactly `size` long."""
    yield _header(name, size)
    sent = 0
    with reader:
        while chunk := reader.read(CHUNK):
            sent += len(chunk)
            if sent > size:
                break
            yield chunk
    if sent != size:
        raise CorruptBlobError(f"{name}: expected {size} bytes, the cache gave {sent}")
    yield b"\0" * (-size % BLOCK)


class Arrivals(Protocol):
    """Where layers still on their way come from (a pull downloading them)."""

    def arrivals(self, diff_ids: Iterable[str]) -> Iterator[str]:
        """These diffIDs, each once its bytes can be read, in the order they become so."""
        ...


def _in_arrival_order(layers: list[LoadLayer]) -> Iterator[int]:
    """The indexes of `layers` in the order to write them: those at hand first, then those
    still arriving (whose layer has `arriving_from`), each once it has arrived. The loaders
    read the whole archive before its manifest, so the order is free."""
    sources: dict[int, Arrivals] = {}
    waiting: dict[int, dict[str, list[int]]] = {}
    for index, item in enumerate(layers):
        source = getattr(item.layer, "arriving_from", None)
        if source is None:
            yield index
            continue
        sources[id(source)] = source
        waiting.setdefault(id(source), {}).setdefault(item.diff_id, []).append(index)
    for key, indexes in waiting.items():
        for diff_id in sources[key].arrivals(indexes):
            yield from indexes[diff_id]


def legacy_archive(config: bytes, layers: list[LoadLayer], tags: list[str]) -> Iterator[bytes]:
    """A docker-archive (manifest.json layout) for graphdriver engines."""
    config_name = sha256_digest(config)[7:] + ".json"
    paths = [f"{index:03d}{item.diff_id[7:19]}/layer.tar" for index, item in enumerate(layers)]
    yield from _file(config_name, config)
    for index in _in_arrival_order(layers):
        item, path = layers[index], paths[index]
        if item.layer is None:
            yield from _file(path, b"")  # placeholder: the daemon holds this chain
        elif item.media_type.endswith("+zstd"):
            # Older graphdriver loaders may not read zstd: send the tar itself.
            yield from _stream(path, item.layer.uncompressed_size, item.layer.uncompressed())
        else:
            yield from _stream(path, item.layer.size, item.layer.compressed())
    manifest = [{"Config": config_name, "RepoTags": tags, "Layers": paths}]
    yield from _file("manifest.json", json.dumps(manifest).encode())
    yield b"\0" * (2 * BLOCK)


def oci_archive(
    config: bytes, manifest: bytes, layers: list[LoadLayer], tags: list[str]
) -> Iterator[bytes]:
    """An OCI layout for the containerd store (`manifest` names `config` and the layers);
    held blobs are referenced, not included."""
    yield from _file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    yield from _file(f"blobs/sha256/{sha256_digest(config)[7:]}", config)
    yield from _file(f"blobs/sha256/{sha256_digest(manifest)[7:]}", manifest)
    written: set[str] = set()
    for index in _in_arrival_order(layers):
        item = layers[index]
        if item.layer is None or item.digest in written:
            continue
        written.add(item.digest)
        yield from _stream(f"blobs/sha256/{item.digest[7:]}", item.size, item.layer.compressed())
    descriptors = [
        Descriptor(
            OCI_MANIFEST,
            digest_of(manifest),
            len(manifest),
            annotations={
                "io.containerd.image.name": normalize(tag),
                "org.opencontainers.image.ref.name": normalize(tag).rsplit(":", 1)[-1],
            },
        )
        for tag in tags
    ]
    yield from _file("index.json", image_index(descriptors))
    yield b"\0" * (2 * BLOCK)
