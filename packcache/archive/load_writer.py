"""Writing `docker load` archives as a stream of chunks, straight from the cache.

Only what the daemon lacks is included: on a graphdriver, layers whose chain the daemon holds
become zero-byte placeholders (its loader skips reading a layer whose chain exists); on a
containerd image store, the manifest names those layers by the compressed digests its content
store holds and the blobs are left out (placeholders there produce broken images). Nothing is
buffered whole: headers are written by hand and layer bytes flow from the blob files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple, Protocol

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


class SizedArchive(NamedTuple):
    """An archive being written, and its exact length in bytes, known before its first byte:
    it is sent with a Content-Length, so no chunked framing copies every chunk on its way."""

    size: int
    chunks: Iterator[bytes]


# A member of an archive: its name, its size, and its bytes (small files) or how to open them.
_Member = tuple[str, int, bytes | Callable[[], BinaryIO]]


def _header(name: str, size: int) -> bytes:
    import tarfile  # imported here: a load through containerd writes no archive

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


def _in_arrival_order(count: int, layers: dict[int, Layer]) -> Iterator[int]:
    """The indexes of `count` members in the order to write them: those at hand first, then
    the layers still arriving (those in `layers` that have `arriving_from`), each once it has
    arrived. The loaders read the whole archive before its manifest, so the order is free."""
    sources: dict[int, Arrivals] = {}
    waiting: dict[int, dict[str, list[int]]] = {}
    for index in range(count):
        source = getattr(layers.get(index), "arriving_from", None)
        if source is None:
            yield index
            continue
        sources[id(source)] = source
        waiting.setdefault(id(source), {}).setdefault(layers[index].diff_id, []).append(index)
    for key, indexes in waiting.items():
        for diff_id in sources[key].arrivals(indexes):
            yield from indexes[diff_id]


def _sized(members: list[_Member], layers: dict[int, Layer] | None = None) -> SizedArchive:
    """The tar of these members; each stream is opened only when the writing reaches it, the
    layers (by member index) still arriving written as they arrive, before the last member."""
    size = sum(BLOCK + n + (-n % BLOCK) for _name, n, _source in members) + 2 * BLOCK

    def chunks() -> Iterator[bytes]:
        for index in _in_arrival_order(len(members) - 1, layers or {}):
            name, n, source = members[index]
            if isinstance(source, bytes):
                yield from _file(name, source)
            else:
                yield from _stream(name, n, source())
        name, n, source = members[-1]  # the manifest or index: last, once every layer is in
        assert isinstance(source, bytes)
        yield from _file(name, source)
        yield b"\0" * (2 * BLOCK)

    return SizedArchive(size, chunks())


def layer_member(path: str, layer: Layer) -> Iterator[bytes]:
    """A layer as a graphdriver's docker-archive carries it (a zstd layer as its tar: older
    loaders may not read zstd)."""
    if layer.media_type.endswith("+zstd"):
        return _stream(path, layer.uncompressed_size, layer.uncompressed())
    return _stream(path, layer.size, layer.compressed())


def legacy_archive(
    config: bytes,
    layers: list[LoadLayer],
    tags: list[str],
    written: Mapping[str, str] | None = None,
) -> SizedArchive:
    """A docker-archive (manifest.json layout) for graphdriver engines. `written`: the layers
    (by diffID) an earlier part of the same archive carries already, by member name: named by
    the manifest, not written again."""
    config_name = sha256_digest(config)[7:] + ".json"
    members: list[_Member] = [(config_name, len(config), config)]
    sent: dict[int, Layer] = {}
    paths = []
    for index, item in enumerate(layers):
        if written and item.diff_id in written:
            paths.append(written[item.diff_id])
            continue
        path = f"{index:03d}{item.diff_id[7:19]}/layer.tar"
        paths.append(path)
        layer = item.layer
        if layer is not None:
            sent[len(members)] = layer
        if layer is None:
            members.append((path, 0, b""))  # placeholder: the daemon holds this chain
        elif item.media_type.endswith("+zstd"):
            # Older graphdriver loaders may not read zstd: send the tar itself.
            members.append((path, layer.uncompressed_size, layer.uncompressed))
        else:
            members.append((path, layer.size, layer.compressed))
    manifest = json.dumps([{"Config": config_name, "RepoTags": tags, "Layers": paths}]).encode()
    members.append(("manifest.json", len(manifest), manifest))
    return _sized(members, sent)


def oci_archive(
    config: bytes, manifest: bytes, layers: list[LoadLayer], tags: list[str]
) -> SizedArchive:
    """An OCI layout for the containerd store (`manifest` names `config` and the layers);
    held blobs are referenced, not included."""
    layout = b'{"imageLayoutVersion":"1.0.0"}'
    members: list[_Member] = [
        ("oci-layout", len(layout), layout),
        (f"blobs/sha256/{sha256_digest(config)[7:]}", len(config), config),
        (f"blobs/sha256/{sha256_digest(manifest)[7:]}", len(manifest), manifest),
    ]
    written: set[str] = set()
    sent: dict[int, Layer] = {}
    for item in layers:
        if item.layer is None or item.digest in written:
            continue
        written.add(item.digest)
        sent[len(members)] = item.layer
        members.append((f"blobs/sha256/{item.digest[7:]}", item.size, item.layer.compressed))
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
    index = image_index(descriptors)
    members.append(("index.json", len(index), index))
    return _sized(members, sent)
