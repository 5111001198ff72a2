"""A layer held in the cache: the store's implementation of the image vocabulary's Layer."""

from __future__ import annotations

from typing import BinaryIO, NamedTuple, Protocol

from packcache.digest import VerifyingReader
from packcache.image.layer import MEDIA_TYPES, Layer

__all__ = ["MEDIA_TYPES", "CachedLayer", "Layer", "LayerBlobs"]


class LayerBlobs(Protocol):
    """What a cached layer needs of the store that holds it (the store implements it)."""

    def open_layer_blob(self, diff_id: str, digest: str, size: int) -> VerifyingReader:
        """Open the blob, count the use, evict the layer if its bytes turn out wrong."""
        ...

    def evict_corrupt(self, diff_id: str) -> None: ...


class CachedLayer(NamedTuple):
    """A layer held in the cache. Every open counts as a use for LRU eviction."""

    blobs: LayerBlobs
    diff_id: str
    digest: str
    size: int
    uncompressed_size: int
    compression: str
    last_access: float
    access_count: int

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.compression]

    def _open_blob(self) -> VerifyingReader:
        return self.blobs.open_layer_blob(self.diff_id, self.digest, self.size)

    def compressed(self) -> BinaryIO:
        return self._open_blob()  # type: ignore[return-value]

    def uncompressed(self) -> BinaryIO:
        blob = self._open_blob()
        if self.compression == "none":
            return blob  # type: ignore[return-value]
        import zstandard  # imported here: a warm rebase reads no compressed layer
        from isal import igzip

        if self.compression == "gzip":
            plain: BinaryIO = igzip.GzipFile(fileobj=blob, mode="rb")  # type: ignore[arg-type]
        else:
            plain = zstandard.ZstdDecompressor().stream_reader(
                blob, read_across_frames=True, closefd=True
            )  # type: ignore[assignment]
        # The blob digest is checked as it is read; the diffID check covers the decompression.
        return VerifyingReader(
            plain,
            self.diff_id,
            self.uncompressed_size,
            on_mismatch=lambda: self.blobs.evict_corrupt(self.diff_id),
        )  # type: ignore[return-value]
