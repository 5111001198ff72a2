"""The `docker load` archives packcache writes: their length is known before the first byte
(they are sent with a Content-Length), and a layer that gives other than its size stops the
stream before that length is reached."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from typing import BinaryIO

import pytest

from packcache.archive.load_writer import LoadLayer, legacy_archive, oci_archive
from packcache.errors import CorruptBlobError
from packcache.image.layer import MEDIA_TYPES
from tests.layers import random_tar, sha256


@dataclass(frozen=True)
class BytesLayer:
    """A layer whose blob is these bytes (it may claim another size)."""

    data: bytes
    claimed: int

    @property
    def diff_id(self) -> str:
        return sha256(self.data)

    @property
    def digest(self) -> str:
        return sha256(self.data)

    @property
    def size(self) -> int:
        return self.claimed

    @property
    def uncompressed_size(self) -> int:
        return self.claimed

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES["none"]

    def compressed(self) -> BinaryIO:
        return io.BytesIO(self.data)

    def uncompressed(self) -> BinaryIO:
        return io.BytesIO(self.data)


def plan(sizes: list[int | None]) -> list[LoadLayer]:
    """A sent layer per size (None: one the daemon holds, a placeholder or a reference)."""
    items = []
    for n, size in enumerate(sizes):
        if size is None:
            held = "sha256:" + f"{n:064x}"
            items.append(LoadLayer(held, None, held, 1234, MEDIA_TYPES["gzip"]))
            continue
        data = random_tar(size, seed=bytes([n]))
        layer = BytesLayer(data, len(data))
        items.append(LoadLayer(layer.diff_id, layer, layer.digest, layer.size, layer.media_type))
    return items


CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'


@pytest.mark.parametrize("sizes", [[], [None], [None, 1, 5000], [70_001, None, 3, 123_457]])
def test_the_length_is_known_before_the_first_byte(sizes: list[int | None]) -> None:
    layers = plan(sizes)
    for archive in (
        legacy_archive(CONFIG, layers, ["app:1"]),
        oci_archive(CONFIG, b'{"schemaVersion":2}', layers, ["app:1", "registry.local/app:2"]),
    ):
        data = b"".join(archive.chunks)
        assert len(data) == archive.size
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # a whole tar, as docker reads it
            names = tar.getnames()
        assert ("manifest.json" in names) or ("index.json" in names)


@pytest.mark.parametrize("claimed_delta", [-1, 1])
def test_a_layer_of_another_size_stops_the_stream_short(claimed_delta: int) -> None:
    data = random_tar(10_000, seed=b"short")
    layer = BytesLayer(data, len(data) + claimed_delta)
    item = LoadLayer(layer.diff_id, layer, layer.digest, layer.size, layer.media_type)
    archive = legacy_archive(CONFIG, [item], ["app:1"])
    sent = 0
    with pytest.raises(CorruptBlobError, match="expected"):
        for chunk in archive.chunks:
            sent += len(chunk)
    assert sent < archive.size  # the daemon never sees a complete archive
