"""The Layer interface every layer source implements (after go-containerregistry's v1.Layer),
and the chain IDs a stack of layers is named by.

A layer has two names: its diffID (sha256 of the uncompressed tar, what image configs list) and
its digest (sha256 of the blob as stored or shipped, compressed or not).
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Protocol

from packcache.image.mediatypes import LAYER_MEDIA_TYPES as MEDIA_TYPES

__all__ = ["MEDIA_TYPES", "Layer", "chain_ids"]


class Layer(Protocol):
    @property
    def digest(self) -> str: ...
    @property
    def diff_id(self) -> str: ...
    @property
    def size(self) -> int: ...  # bytes of the blob named by `digest`
    @property
    def uncompressed_size(self) -> int: ...  # bytes of the tar named by `diff_id`
    @property
    def media_type(self) -> str: ...
    def compressed(self) -> BinaryIO: ...  # the blob named by `digest`
    def uncompressed(self) -> BinaryIO: ...  # the tar named by `diff_id`


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain ID of each layer prefix: what a graphdriver names a stack of layers by."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            text = f"{chains[-1]} {diff_id}".encode()
            chains.append("sha256:" + hashlib.sha256(text).hexdigest())
    return chains
