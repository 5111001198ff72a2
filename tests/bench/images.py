"""Bench images built from real files on this machine: gzip layers and `docker load` archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.engines import images

MIB = 1 << 20
GZIP_LEVEL = 6  # what Go's gzip (docker, containerd, pack) writes by default


class HashingWriter:
    """A write-only file that hashes and counts the bytes passing to `raw`."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.hasher.update(data)
        self.size += len(data)
        self.raw.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()


def walk_files(root: str) -> Iterator[tuple[str, int]]:
    """(path, bytes it adds to a tar) of every dir, regular file and symlink, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        yield dirpath, 512
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                if not os.access(path, os.R_OK):
                    continue
                yield path, 512 + -(-st.st_size // 512) * 512  # header + padded data
            elif stat.S_ISLNK(st.st_mode):
                yield path, 512


def file_chunks(root: str, budgets_mib: list[int]) -> list[list[str]]:
    """Consecutive runs of real files under root, each about one budget in size."""
    walker = walk_files(root)
    chunks = []
    for budget in budgets_mib:
        paths, total = [], 0
        for path, size in walker:
            paths.append(path)
            total += size
            if total >= budget * MIB:
                break
        else:
            raise RuntimeError(f"{root} holds less than {sum(budgets_mib)} MiB of files")
        chunks.append(paths)
    return chunks


@dataclass(frozen=True)
class BuiltLayer:
    path: Path  # gzip blob
    diff_id: str
    blob_digest: str
    size: int  # uncompressed tar bytes
    blob_size: int


def write_gzip_layer(path: Path, members: list[str]) -> BuiltLayer:
    with open(path, "wb") as out:
        blob = HashingWriter(out)
        with gzip.GzipFile(
            filename="", fileobj=blob, mode="wb", compresslevel=GZIP_LEVEL, mtime=0
        ) as gz:
            plain = HashingWriter(gz)
            with tarfile.open(
                fileobj=plain, mode="w", format=tarfile.PAX_FORMAT, copybufsize=MIB
            ) as tar:
                for member in members:
                    tar.add(member, arcname=member.lstrip("/"), recursive=False)
    return BuiltLayer(path, plain.digest, blob.digest, plain.size, blob.size)


def write_load_archive(
    archive: Path, layers: list[BuiltLayer], tagged: list[tuple[str, bytes, list[BuiltLayer]]]
) -> None:
    """A legacy `docker load` archive of `layers` (their files are moved in: deleted after)
    and one image per (tag, config, layer chain)."""
    manifest = []
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT, copybufsize=MIB) as tar:
        for layer in layers:
            tar.add(layer.path, arcname=f"{layer.blob_digest[7:]}/layer.tar")
            layer.path.unlink()
        for tag, config, chain in tagged:
            name = images.sha256_digest(config)[7:] + ".json"
            info = tarfile.TarInfo(name)
            info.size = len(config)
            tar.addfile(info, io.BytesIO(config))
            manifest.append(
                {
                    "Config": name,
                    "RepoTags": [tag],
                    "Layers": [f"{layer.blob_digest[7:]}/layer.tar" for layer in chain],
                }
            )
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
