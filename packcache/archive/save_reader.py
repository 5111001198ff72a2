"""Import a `docker save` stream into the store, reading it once, start to end.

Handles the three layouts engines write: legacy (`<id>/layer.tar`, 20.10), OCI layout with
uncompressed blobs named by diffID (graphdriver 25+) and OCI layout holding the containerd
content store's (typically gzip) blobs. manifest.json comes last in the legacy stream, so layers
are staged (hashed and written to ingest/) as they pass and committed only once every config,
manifest and digest has checked out: a bad archive leaves the cache as it was.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from isal import igzip

from packcache.digest import CHUNK, DECOMPRESSION_ERRORS, GZIP_MAGIC, is_digest, sha256_digest
from packcache.errors import CorruptBlobError, PackcacheError
from packcache.refs import familiar, normalize
from packcache.store.blobs import StagedBlob
from packcache.store.store import ImageRecord, Lease, Store, recorded_config_fields

SMALL_BLOB = 1 << 20  # blobs up to this size are held in memory until we know what they are
MAX_METADATA = 16 << 20  # manifests, configs, index.json: anything larger is not metadata
_BLOB_PATH = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_LEGACY_CONFIG = re.compile(r"^([0-9a-f]{64})\.json$")
INDEX_MEDIA_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
# The full image name; "org.opencontainers.image.ref.name" often holds only the tag.
REF_ANNOTATION = "io.containerd.image.name"


class ArchiveError(PackcacheError):
    """The archive is not a well-formed `docker save` archive; nothing was imported."""


@dataclass(frozen=True)
class ArchiveImage:
    config_digest: str
    diff_ids: list[str]
    refs: list[str]
    manifest_digest: str | None  # from index.json (the image ID on a containerd store)
    blob_digests: list[str]  # each layer's blob digest as the archive holds it
    config: bytes = field(repr=False, default=b"")
    manifest: bytes | None = field(repr=False, default=None)


@dataclass
class ImportReport:
    images: list[ArchiveImage] = field(default_factory=list)
    layers_written: int = 0  # new to the cache
    layers_known: int = 0  # already cached: hashed or skipped, not written
    bytes_read: int = 0  # layer bytes read from the stream
    bytes_written: int = 0  # layer bytes written to the cache


@dataclass
class _Known:
    """A layer blob the cache already holds, named by digest: skipped unread."""

    digest: str
    diff_id: str


def _clean_name(member: tarfile.TarInfo) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    if name.startswith("/") or ".." in name.split("/"):
        raise ArchiveError(f"archive entry {member.name!r} points outside the archive")
    return name


def _link_target(name: str, member: tarfile.TarInfo) -> str:
    if member.islnk():
        raise ArchiveError(f"archive entry {name!r} is a hard link, which docker save never writes")
    target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
    if member.linkname.startswith("/") or target.startswith("../") or target == "..":
        raise ArchiveError(f"archive entry {name!r} links outside the archive ({member.linkname})")
    return target


class _Entries:
    """What the stream held, by path: small files in memory, big blobs staged, links."""

    def __init__(self) -> None:
        self.small: dict[str, bytes] = {}
        self.staged: dict[str, StagedBlob] = {}
        self.known: dict[str, _Known] = {}
        self.links: dict[str, str] = {}

    def __contains__(self, path: str) -> bool:
        return any(path in kind for kind in (self.small, self.staged, self.known, self.links))

    def resolve(self, path: str) -> str:
        for _ in range(16):
            if path not in self.links:
                return path
            path = self.links[path]
        raise ArchiveError(f"archive entry {path!r} is a symlink loop")

    def metadata(self, path: str, what: str) -> bytes:
        data = self.small.get(self.resolve(path))
        if data is None:
            raise ArchiveError(f"the archive's {what} {path!r} is missing")
        return data

    def json(self, path: str, what: str) -> object:
        try:
            return json.loads(self.metadata(path, what))
        except (ValueError, RecursionError) as exc:
            raise ArchiveError(f"the archive's {what} {path!r} is not valid JSON: {exc}") from exc


def _read_stream(
    store: Store,
    stream: BinaryIO,
    entries: _Entries,
    report: ImportReport,
    lease: Lease | None,
    on_bytes,
) -> None:
    try:
        # tarfile parses the headers; member bytes are read straight from the stream (see
        # ForwardReader), not through tarfile's stream-mode buffer or its file objects.
        forward = ForwardReader(stream)
        with tarfile.open(fileobj=forward, mode="r:") as tar:
            for member in tar:
                name = _clean_name(member)
                if member.isdir():
                    continue
                if name in entries:
                    raise ArchiveError(f"archive entry {name!r} appears twice")
                if member.issym() or member.islnk():
                    entries.links[name] = _link_target(name, member)
                    continue
                if not member.isfile():
                    raise ArchiveError(f"archive entry {name!r} is not a regular file")
                blob = _BLOB_PATH.match(name)
                digest = f"sha256:{blob.group(1)}" if blob else None
                if digest is not None:
                    known = store.layer_by_digest(digest, lease)
                    if known is not None:  # cached already (and leased): not even read
                        entries.known[name] = _Known(digest, known.diff_id)
                        continue
                source = _member(tar, forward, member)
                if name.endswith("/layer.tar") or member.size > SMALL_BLOB:
                    if digest is None and not name.endswith("/layer.tar"):
                        if member.size > MAX_METADATA:
                            raise ArchiveError(f"unexpected large file {name!r} in the archive")
                        entries.small[name] = source.read()
                        continue
                    staged = store.stage(_Counting(source, on_bytes), expected_digest=digest)
                    entries.staged[name] = staged
                    report.bytes_read += staged.size
                else:
                    data = source.read()
                    if digest is not None and sha256_digest(data) != digest:
                        raise ArchiveError(f"archive blob {name} does not match its digest")
                    entries.small[name] = data
    except tarfile.TarError as exc:
        if "unexpected end" in str(exc):
            raise ArchiveError("the archive ends early (truncated stream)") from exc
        raise ArchiveError(f"not a readable docker save archive: {exc}") from exc
    except EOFError as exc:
        raise ArchiveError("the archive ends early (truncated stream)") from exc
    except DECOMPRESSION_ERRORS as exc:  # of a gzip-compressed archive (see _gunzipped)
        raise ArchiveError(f"the archive's gzip compression is damaged: {exc}") from exc
    except CorruptBlobError as exc:
        raise ArchiveError(f"a layer in the archive is damaged: {exc}") from exc


def _gunzipped(stream: BinaryIO) -> BinaryIO:
    """`docker load` takes a gzip-compressed archive (`docker save IMAGE | gzip`): so does
    import, decompressing as it reads. Only a stream that can peek is checked (files, stdin);
    the daemon's own save stream is never compressed."""
    peek = getattr(stream, "peek", None)
    if peek is not None and peek(len(GZIP_MAGIC)).startswith(GZIP_MAGIC):
        return igzip.IGzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    return stream


class ForwardReader:
    """A stream that tarfile may treat as seekable, as long as it only ever moves forward.

    tarfile's random-access mode reads headers in order and skips what was not read (a member
    left unread, the padding after one) by reading and dropping it. A backward seek means a
    bug, and fails loudly. Unlike its stream mode ("r|"), which reads 10 KiB records and
    copies every byte several times, member bytes can then be read straight from here.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if n is not None and 0 < len(data) < n:
            # tarfile takes a short read for the end of the archive: fill it (pipes, sockets).
            parts, got = [data], len(data)
            while got < n and (more := self._raw.read(n - got)):
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset + (self._pos if whence == io.SEEK_CUR else 0)
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._pos:
            raise io.UnsupportedOperation("the archive stream only reads forward")
        while self._pos < target and self.read(min(CHUNK, target - self._pos)):
            pass
        return self._pos


class _MemberBytes:
    """The bytes of the tar member just parsed, read straight from the forward stream."""

    def __init__(self, forward: ForwardReader, size: int) -> None:
        self._forward = forward
        self._left = size

    def read(self, n: int = -1) -> bytes:
        want = self._left if n is None or n < 0 else min(n, self._left)
        data = self._forward.read(want) if want else b""
        if len(data) < want:
            raise tarfile.ReadError("unexpected end of data")
        self._left -= len(data)
        return data


def _member(tar: tarfile.TarFile, forward: ForwardReader, member: tarfile.TarInfo):
    """A reader of a regular member's bytes: direct from the stream unless it is sparse."""
    if member.issparse() or forward.tell() != member.offset_data:
        source = tar.extractfile(member)  # tarfile's own reader: slower, but knows sparse maps
        assert source is not None
        return source
    return _MemberBytes(forward, member.size)


class _Counting:
    """Passes reads through, reporting how many bytes went by (for a progress bar)."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], None] | None) -> None:
        self._raw = raw
        self._on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if self._on_bytes is not None and data:
            self._on_bytes(len(data))
        return data


def _manifest_digests(entries: _Entries) -> dict[str, tuple[str, list[str]]]:
    """config digest -> (manifest digest, refs) from index.json, when the archive has one."""
    if "index.json" not in entries.small:
        return {}
    found: dict[str, tuple[str, list[str]]] = {}

    def walk(descriptors: object, refs: list[str], depth: int) -> None:
        if not isinstance(descriptors, list) or depth > 2:
            raise ArchiveError("the archive's index.json is malformed")
        for descriptor in descriptors:
            if not isinstance(descriptor, dict) or not is_digest(str(descriptor.get("digest"))):
                raise ArchiveError("the archive's index.json has a malformed descriptor")
            digest = descriptor["digest"]
            annotations = descriptor.get("annotations") or {}
            name = annotations.get(REF_ANNOTATION) if isinstance(annotations, dict) else None
            if not isinstance(name, str | None):
                raise ArchiveError("the archive's index.json has a malformed image name")
            names = refs + ([name] if name else [])
            path = f"blobs/sha256/{digest[7:]}"
            if path not in entries.small:
                continue  # a platform the save left out
            document = entries.json(path, "manifest")
            if not isinstance(document, dict):
                raise ArchiveError(f"the archive's manifest {path} is malformed")
            if descriptor.get("mediaType") in INDEX_MEDIA_TYPES or "manifests" in document:
                walk(document.get("manifests"), names, depth + 1)
                continue
            config = document.get("config") or {}
            if isinstance(config, dict) and is_digest(str(config.get("digest"))):
                found[config["digest"]] = (digest, names)

    index = entries.json("index.json", "index")
    if not isinstance(index, dict):
        raise ArchiveError("the archive's index.json is not a JSON object")
    walk(index.get("manifests"), [], 0)
    return found


def _plan_images(
    store: Store, entries: _Entries
) -> tuple[list[ArchiveImage], dict[str, StagedBlob]]:
    """Check every image the archive names; return them and the staged blobs they use."""
    manifest = entries.json("manifest.json", "manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise ArchiveError("the archive's manifest.json lists no images")
    by_config = _manifest_digests(entries)
    images: list[ArchiveImage] = []
    used: dict[str, StagedBlob] = {}
    for item in manifest:
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
            raise ArchiveError("the archive's manifest.json has an entry without a Config")
        layer_paths = item.get("Layers") or []
        if not isinstance(layer_paths, list) or not all(isinstance(p, str) for p in layer_paths):
            raise ArchiveError("the archive's manifest.json has malformed Layers")
        config_path = entries.resolve(posixpath.normpath(item["Config"]))
        config_bytes = entries.metadata(config_path, "image config")
        config_digest = sha256_digest(config_bytes)
        named = _BLOB_PATH.match(config_path) or _LEGACY_CONFIG.match(config_path)
        if named and f"sha256:{named.group(1)}" != config_digest:
            raise ArchiveError(f"image config {config_path} does not match its digest")
        try:
            config = json.loads(config_bytes)
            diff_ids = config["rootfs"]["diff_ids"] or []
            recorded_config_fields(config)  # checked before any blob is committed
        except (ValueError, KeyError, TypeError, RecursionError, CorruptBlobError) as exc:
            raise ArchiveError(f"image config {config_path} is malformed: {exc}") from exc
        if not isinstance(diff_ids, list) or not all(is_digest(str(d)) for d in diff_ids):
            raise ArchiveError(f"image config {config_path} has malformed diff_ids")
        if len(layer_paths) != len(diff_ids):
            raise ArchiveError(
                f"the archive lists {len(layer_paths)} layers for {config_digest} "
                f"but its config names {len(diff_ids)}"
            )
        blob_digests = []
        for path, diff_id in zip(layer_paths, diff_ids, strict=True):
            resolved = entries.resolve(posixpath.normpath(path))
            if resolved in entries.small:  # a small layer: stage it now, from memory
                entries.staged[resolved] = store.stage(
                    io.BytesIO(entries.small.pop(resolved))
                )
            if resolved in entries.staged:
                staged = entries.staged[resolved]
                actual, digest = staged.diff_id, staged.digest
                used[resolved] = staged
            elif resolved in entries.known:
                actual, digest = entries.known[resolved].diff_id, entries.known[resolved].digest
            else:
                raise ArchiveError(f"layer {path} of {config_digest} is missing from the archive")
            if actual != diff_id:
                raise ArchiveError(
                    f"layer {path} does not match its diffID: the config says {diff_id}, "
                    f"its bytes hash to {actual}"
                )
            blob_digests.append(digest)
        manifest_digest, index_refs = by_config.get(config_digest, (None, []))
        repo_tags = item.get("RepoTags") or []
        if not isinstance(repo_tags, list) or not all(isinstance(t, str) for t in repo_tags):
            raise ArchiveError("the archive's manifest.json has malformed RepoTags")
        try:
            refs = list(dict.fromkeys(familiar(normalize(r)) for r in [*repo_tags, *index_refs]))
        except PackcacheError as exc:
            raise ArchiveError(f"the archive names an invalid image reference: {exc}") from exc
        manifest_bytes = (
            entries.small.get(f"blobs/sha256/{manifest_digest[7:]}") if manifest_digest else None
        )
        images.append(
            ArchiveImage(
                config_digest,
                diff_ids,
                refs,
                manifest_digest,
                blob_digests,
                config_bytes,
                manifest_bytes,
            )
        )
    return images, used


def import_archive(
    store: Store,
    stream: BinaryIO,
    *,
    engine: str = "",
    image_ids: Iterable[str] = (),
    lease: Lease | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> ImportReport:
    """Read a `docker save` stream once and add its layers and images to the store.

    `image_ids` are the IDs the source engine reported: an image's ID is its manifest digest
    when that is among them (containerd store), else its config digest (graphdriver).
    """
    engine_ids = set(image_ids)
    report = ImportReport()
    entries = _Entries()
    try:
        _read_stream(store, _gunzipped(stream), entries, report, lease, on_bytes)
        images, used = _plan_images(store, entries)
        staged_blobs = list(used.values())
        for staged, written in zip(
            staged_blobs, store.commit_staged_many(staged_blobs, lease=lease), strict=True
        ):
            if written:
                report.layers_written += 1
                report.bytes_written += staged.size
            else:
                report.layers_known += 1
        report.layers_known += len(entries.known)
    finally:
        for staged in entries.staged.values():
            store.discard(staged)
    for image in images:
        store.record_image(
            ImageRecord(
                config=image.config,
                engine=engine,
                image_id=(
                    image.manifest_digest
                    if image.manifest_digest in engine_ids
                    else image.config_digest
                ),
                manifest_digest=image.manifest_digest,
                manifest=image.manifest,
                refs=image.refs,
            )
        )
    report.images = images
    return report
