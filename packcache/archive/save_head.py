"""The metadata of one image read from the head of a `docker save` stream, which is then closed:
for a daemon not on this host, whose storage cannot be read in place, this is the way to learn an
image's config without receiving every layer.

Engines write their save archives in name order (a graphdriver tars its export directory, which
Go walks in lexical order; containerd's exporter sorts its records by name), and blobs are named
by digest, so the config comes after only some of the layers, on average half of them. A
graphdriver image's config is named by the image ID; on a containerd store the image ID names the
manifest (or an index), which names the config: small blobs are held until that is known. Every
blob kept is checked against its digest; anything unexpected ends the reading with nothing.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from packcache.archive.save_reader import (
    SMALL_BLOB,
    ArchiveError,
    CheckedTarInfo,
    ForwardReader,
    MemberBytes,
    next_member,
)
from packcache.digest import CHUNK, sha256_digest
from packcache.jsondoc import DocumentError, check_manifest, strict_loads

MAX_METADATA = 16 << 20  # a config or manifest larger than this is not one
MAX_HELD = 32 << 20  # bytes of small blobs held until the manifest says which is the config
_NAME = re.compile(r"^(?:blobs/sha256/([0-9a-f]{64})|([0-9a-f]{64})\.json)$")
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}


@dataclass
class SaveHead:
    """What was read: the config (and the manifest, on a containerd store), and how many bytes
    of the stream it took."""

    config: bytes | None = None
    manifest: bytes | None = None
    bytes_read: int = 0
    held: dict[str, bytes] = field(default_factory=dict, repr=False)


def _digest_of(name: str) -> str | None:
    match = _NAME.match(name.removeprefix("./"))
    if match is None:
        return None
    return "sha256:" + (match.group(1) or match.group(2))


def _skip(source: MemberBytes) -> None:
    while source.read(CHUNK):
        pass


def read_config(stream: BinaryIO, image_id: str) -> SaveHead:
    """A graphdriver image's config: the entry named by the image ID (`<hex>.json` in a legacy
    archive, `blobs/sha256/<hex>` in an OCI one), checked against it."""
    return _read(stream, lambda held: image_id in held, small_only=False, wanted={image_id})


def read_manifest_and_config(
    stream: BinaryIO, image_id: str, platform_manifest: Callable[[bytes], str | None]
) -> SaveHead:
    """A containerd store image's manifest and config: the image ID names the manifest, or an
    index whose entry for the image's platform (`platform_manifest`) names it."""

    def resolved(held: dict[str, bytes]) -> bool:
        return _resolve(held, image_id, platform_manifest) is not None

    head = _read(stream, resolved, small_only=True, wanted=set())
    found = _resolve(head.held, image_id, platform_manifest)
    if found is not None:
        head.manifest, head.config = found
    return head


def _resolve(
    held: dict[str, bytes], image_id: str, platform_manifest: Callable[[bytes], str | None]
) -> tuple[bytes, bytes] | None:
    """(manifest, config) once both are held, else None."""
    digest: str | None = image_id
    for _hop in range(2):
        blob = held.get(digest or "")
        if blob is None:
            return None
        try:
            document = strict_loads(blob, "a manifest")
        except DocumentError:
            return None
        if not isinstance(document, dict):
            return None
        if document.get("mediaType") in _INDEX_TYPES or "manifests" in document:
            digest = platform_manifest(blob)
            continue
        try:
            config_digest = check_manifest(document, "a manifest")["config"]["digest"]
        except DocumentError:
            return None
        config = held.get(config_digest)
        return None if config is None else (blob, config)
    return None


def _read(
    stream: BinaryIO,
    done: Callable[[dict[str, bytes]], bool],
    *,
    small_only: bool,
    wanted: set[str],
) -> SaveHead:
    """Read entries in order, keeping the blobs `wanted` (or, `small_only`, every small one)
    checked against their digests, until `done` says enough; the caller closes the stream."""
    head = SaveHead()
    forward = ForwardReader(stream)
    held_bytes = 0
    try:
        with tarfile.open(fileobj=forward, mode="r:", tarinfo=CheckedTarInfo) as tar:  # type: ignore[call-overload]
            while (member := next_member(tar)) is not None:
                if not member.isfile():
                    continue
                digest = _digest_of(member.name)
                source = MemberBytes(forward, member)
                keep = digest is not None and (
                    digest in wanted or (small_only and member.size <= SMALL_BLOB)
                )
                if not keep or member.size > MAX_METADATA or held_bytes + member.size > MAX_HELD:
                    _skip(source)
                    continue
                data = source.read()
                if sha256_digest(data) != digest:
                    raise ArchiveError(f"save entry {member.name} does not match its digest")
                head.held[digest] = data  # type: ignore[index]
                held_bytes += len(data)
                if done(head.held):
                    break
    except (EOFError, tarfile.TarError) as exc:
        raise ArchiveError(f"the save stream is unreadable: {exc}") from exc
    finally:
        head.bytes_read = forward.tell()
    if not small_only:
        head.config = next((head.held[d] for d in wanted if d in head.held), None)
    return head
