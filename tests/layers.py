"""Layer tars and blobs the tests make (deterministic, so digests are stable)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile

import zstandard


def make_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed layer tar holding `files` (sorted, mtime 0, root-owned)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


def random_tar(size: int, name: str = "data.bin", seed: bytes | None = None) -> bytes:
    """A tar of one file of `size` incompressible bytes (random, or derived from `seed`)."""
    if seed is None:
        payload = os.urandom(size)
    else:
        payload = b"".join(
            hashlib.sha256(seed + i.to_bytes(8, "big")).digest() for i in range(size // 32 + 1)
        )[:size]
    return make_tar({name: payload})


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
