"""Blobs on disk plus their SQLite index."""

from packcache.store.layer import CachedLayer, Layer
from packcache.store.store import ImageRecord, IngestResult, Lease, Store

__all__ = ["CachedLayer", "ImageRecord", "IngestResult", "Layer", "Lease", "Store"]
