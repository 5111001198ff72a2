"""Import a `docker save` stream into the store, reading it once, start to end.

Handles the three layouts engines write: legacy (`<id>/layer.tar`, 20.10), OCI layout with
uncompressed blobs named by diffID (graphdriver 25+) and OCI layout holding the containerd
content store's (typically gzip) blobs. manifest.json comes last in the legacy stream, so layers
are staged (hashed and written to ingest/) as they pass and committed only once every config,
manifest and digest has checked out: a bad archive leaves the cache as it was.
"""

from __future__ import annotations

import io
import posixpath
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from packcache.digest import CHUNK, GZIP_MAGIC, decompression_errors, sha256_digest
from packcache.errors import CorruptBlobError, PackcacheError
from packcache.jsondoc import (
    DocumentError,
    check_image_config,
    check_index,
    check_manifest,
    config_diff_ids,
    strict_loads,
)
from packcache.refs import familiar, normalize
from packcache.store.blobs import StagedBlob
from packcache.store.store import ImageRecord, Lease, Store, recorded_config_fields
from packcache.streams import GunzipReader

SMALL_BLOB = 1 << 20  # blobs up to this size are held in memory until we know what they are
MAX_METADATA = 16 << 20  # manifests, configs, index.json: anything larger is not metadata
# What an archive may make the reader keep in memory until manifest.json (last in a legacy
# save) says what is what: docker save writes a few small files per layer and image.
MAX_HELD = 64 << 20  # bytes of small files, names and link targets held
MAX_ENTRIES = 100_000  # entries of any kind
ENTRY_COST = 256  # bytes of bookkeeping one held entry costs besides its name and data
# A long name or PAX header is read whole by tarfile: real ones are a few hundred bytes.
MAX_EXTENDED_HEADER = 1 << 20  # bytes of extended headers before one entry (and global ones)
MAX_HEADER_CHAIN = 8  # extended headers before one entry: tarfile recurses once per header
_EXTENDED_HEADERS = {
    b"L": "GNU long name",
    b"K": "GNU long link name",
    b"x": "PAX",
    b"X": "Solaris extended",
    b"g": "PAX global",
}
LARGE_READ = 64 << 10  # a short read at least this large is passed on as it is
_SPARSE_TYPE = b"S"
_LONG_DIGITS = re.compile(rb"\d{65}")
_SPARSE_REFUSED = "the archive holds a sparse file, which docker save never writes"
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
        self.entries = 0
        self.held = 0  # bytes held for the entries above: see MAX_HELD

    def count_entry(self) -> None:
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise ArchiveError(
                f"the archive has more than {MAX_ENTRIES:,} entries; a docker save archive "
                "has a few per layer, so packcache refuses it"
            )

    def hold(self, name: str, size: int) -> None:
        """Account for keeping an entry (and `size` bytes of it) until the archive's end."""
        self.held += len(name) + size + ENTRY_COST
        if self.held > MAX_HELD:
            raise ArchiveError(
                f"the archive's files other than layers take more than {MAX_HELD >> 20} MiB "
                "of memory; a docker save archive has far less metadata, so packcache refuses it"
            )

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
            return strict_loads(self.metadata(path, what), f"the archive's {what} {path!r}")
        except DocumentError as exc:
            raise ArchiveError(str(exc)) from exc


def _read_stream(
    store: Store,
    stream: BinaryIO,
    entries: _Entries,
    report: ImportReport,
    lease: Lease | None,
) -> None:
    try:
        # tarfile parses the headers; member bytes are read straight from the stream (see
        # ForwardReader), not through tarfile's stream-mode buffer or its file objects.
        forward = ForwardReader(stream)
        with tarfile.open(fileobj=forward, mode="r:", tarinfo=CheckedTarInfo) as tar:
            while (member := next_member(tar)) is not None:
                _read_member(store, forward, member, entries, report, lease)
        if isinstance(stream, GunzipReader):
            stream.drain()  # the gzip stream must end cleanly too, after the tar's last block
    except tarfile.TarError as exc:
        if "unexpected end" in str(exc):
            raise ArchiveError("the archive ends early (truncated stream)") from exc
        raise ArchiveError(f"not a readable docker save archive: {exc}") from exc
    except EOFError as exc:
        raise ArchiveError("the archive ends early (truncated stream)") from exc
    except decompression_errors() as exc:  # of a gzip-compressed archive (see _gunzipped)
        raise ArchiveError(f"the archive's gzip compression is damaged: {exc}") from exc
    except CorruptBlobError as exc:
        raise ArchiveError(f"a layer in the archive is damaged: {exc}") from exc


def next_member(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    """The next member's header, which tarfile then forgets: it keeps every header it parsed
    (with its PAX headers) for the archive's lifetime, and an archive may have millions."""
    try:
        member = tar.next()
    except (ValueError, UnicodeError, OverflowError, RecursionError) as exc:
        raise ArchiveError(f"not a readable docker save archive: bad tar header: {exc}") from exc
    tar.members.clear()
    return member


def _read_member(
    store: Store,
    forward: ForwardReader,
    member: tarfile.TarInfo,
    entries: _Entries,
    report: ImportReport,
    lease: Lease | None,
) -> None:
    name = _clean_name(member)
    entries.count_entry()
    if member.isdir():
        return
    if name in entries:
        raise ArchiveError(f"archive entry {name!r} appears twice")
    if member.issym() or member.islnk():
        entries.hold(name, len(member.linkname))
        entries.links[name] = _link_target(name, member)
        return
    if not member.isfile() or member.issparse():
        raise ArchiveError(f"archive entry {name!r} is not a regular file")
    blob = _BLOB_PATH.match(name)
    digest = f"sha256:{blob.group(1)}" if blob else None
    if digest is not None:
        known = store.layer_by_digest(digest, lease)
        if known is not None:  # cached already (and leased): not even read
            entries.hold(name, 0)
            entries.known[name] = _Known(digest, known.diff_id)
            return
    source = MemberBytes(forward, member)
    if name.endswith("/layer.tar") or member.size > SMALL_BLOB:
        if digest is None and not name.endswith("/layer.tar"):
            if member.size > MAX_METADATA:
                raise ArchiveError(f"unexpected large file {name!r} in the archive")
            entries.hold(name, member.size)
            entries.small[name] = source.read()
            return
        entries.hold(name, 0)
        staged = store.stage(source, expected_digest=digest)
        entries.staged[name] = staged
        report.bytes_read += staged.size
    else:
        entries.hold(name, member.size)
        data = source.read()
        if digest is not None and sha256_digest(data) != digest:
            raise ArchiveError(f"archive blob {name} does not match its digest")
        entries.small[name] = data


def _gunzipped(stream: BinaryIO) -> BinaryIO:
    """`docker load` takes a gzip-compressed archive (`docker save IMAGE | gzip`): so does
    import, decompressing as it reads. Only a stream that can peek is checked (files, stdin);
    the daemon's own save stream is never compressed."""
    peek = getattr(stream, "peek", None)
    if peek is not None and peek(len(GZIP_MAGIC)).startswith(GZIP_MAGIC):
        return GunzipReader(stream)  # type: ignore[return-value]
    return stream


class ForwardReader:
    """A stream that tarfile may treat as seekable, as long as it only ever moves forward.

    tarfile's random-access mode reads headers in order and skips what was not read (a member
    left unread, the padding after one) by reading and dropping it. A backward seek means a
    bug, and fails loudly. Unlike its stream mode ("r|"), which reads 10 KiB records and
    copies every byte several times, member bytes can then be read straight from here.
    Before tarfile parses a header it is looked at here (see check_next_header), so that an
    extended header too big to hold is refused before tarfile reads it whole.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._pos = 0
        self._peeked = b""  # read from `raw` by peek, not yet by the caller
        self._chain_bytes = 0  # extended headers read since the last entry's own header
        self._chain_length = 0
        self._global_bytes = 0  # PAX global headers, which tarfile keeps to the end

    def _fill(self, n: int) -> bytes:
        data = self._raw.read(n)
        if 0 < len(data) < n:
            # tarfile takes a short read for the end of the archive: fill it (pipes, sockets).
            parts, got = [data], len(data)
            while got < n and (more := self._raw.read(n - got)):
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        return data

    def read(self, n: int) -> bytes:
        if n is None or n < 0:  # a whole archive is never read into memory
            raise ArchiveError("the archive has a tar header of negative size")
        if self._peeked:
            data, self._peeked = self._peeked[:n], self._peeked[n:]
            if len(data) < n:
                data += self._fill(n - len(data))
        else:
            data = self._fill(n)
        self._pos += len(data)
        return data

    def read_some(self, n: int) -> bytes:
        """Up to `n` bytes, fewer if the source hands over a large piece that is short of `n`
        (a gunzipped one): a member's bytes are not copied to join them. Small short reads
        (a socket's) are still filled, so a layer is never handled in many small chunks."""
        if self._peeked:
            return self.read(min(n, len(self._peeked)))
        data = self._raw.read(n)
        if 0 < len(data) < min(n, LARGE_READ):
            data += self._fill(n - len(data))
        self._pos += len(data)
        return data

    def peek(self, n: int) -> bytes:
        """The next `n` bytes (fewer at the end), left to be read."""
        if len(self._peeked) < n:
            self._peeked += self._fill(n - len(self._peeked))
        return self._peeked[:n]

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset + (self._pos if whence == io.SEEK_CUR else 0)
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._pos:
            raise io.UnsupportedOperation("the archive stream only reads forward")
        while self._pos < target and self.read(min(CHUNK, target - self._pos)):
            pass
        return self._pos

    def check_next_header(self) -> None:
        """Refuse the header about to be parsed if tarfile would read too much for it."""
        block = self.peek(tarfile.BLOCKSIZE)
        size = _header_size(block)
        if len(block) < tarfile.BLOCKSIZE or size is None:
            return  # tarfile reports it
        if size < 0:  # tarfile would read (or skip) to the end of the stream
            raise ArchiveError(f"the archive has a tar header of negative size at {self._pos:,}")
        kind = block[156:157]  # the type flag, in every tar format
        if kind == _SPARSE_TYPE:  # its map may run on for any number of blocks
            raise ArchiveError(_SPARSE_REFUSED)
        if kind not in _EXTENDED_HEADERS:
            self._chain_bytes = self._chain_length = 0
            return
        self._chain_length += 1
        self._chain_bytes += size
        if kind == b"g":
            self._global_bytes += size
        if max(self._chain_bytes, self._global_bytes) > MAX_EXTENDED_HEADER:
            raise ArchiveError(
                f"the archive has a {_EXTENDED_HEADERS[kind]} header of {size:,} bytes at byte "
                f"{self._pos:,}: packcache refuses extended tar headers over "
                f"{MAX_EXTENDED_HEADER >> 20} MiB"
            )
        if self._chain_length > MAX_HEADER_CHAIN:
            raise ArchiveError(f"the archive has {self._chain_length} extended headers in a row")
        if kind in (b"x", b"X", b"g"):  # tarfile parses all three as PAX records
            self._check_pax_records(self.peek(tarfile.BLOCKSIZE + size)[tarfile.BLOCKSIZE :])

    def _check_pax_records(self, records: bytes) -> None:
        if b"GNU.sparse." in records:
            # tarfile reads a sparse map of any length it declares (GNU sparse format 1.0).
            raise ArchiveError(_SPARSE_REFUSED)
        if _LONG_DIGITS.search(records):
            # tarfile before Python 3.11.10 searches a PAX header in time quadratic in its
            # longest run of digits (CVE-2024-6232): a 1 MiB one would take hours.
            raise ArchiveError(
                f"the archive has a PAX header at byte {self._pos:,} "
                "holding a run of over 64 digits"
            )


def _header_size(block: bytes) -> int | None:
    """A tar header's size field, read as tarfile reads it (nti): octal digits up to the first
    NUL, or base-256 (first byte 0x80, or 0xff for a negative number)."""
    field = block[124:136]
    if not field:
        return None
    if field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    try:
        return int(field.split(b"\0", 1)[0].decode("ascii").strip() or "0", 8)
    except ValueError:
        return None


class CheckedTarInfo(tarfile.TarInfo):
    """tarfile's header parser, with each header (also each of a chain of extended headers)
    checked by the ForwardReader before tarfile reads it."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:
        archive.fileobj.check_next_header()  # type: ignore[union-attr]
        return super().fromtarfile(archive)


class MemberBytes:
    """The bytes of the tar member just parsed, read straight from the forward stream."""

    def __init__(self, forward: ForwardReader, member: tarfile.TarInfo) -> None:
        forward.seek(member.offset_data)  # already there: tarfile has just read the header
        self._forward = forward
        self._left = member.size

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all that are left for n < 0); b"" only at the member's end."""
        whole = n is None or n < 0
        want = self._left if whole else min(n, self._left)
        if not want:
            return b""
        data = self._forward.read(want) if whole else self._forward.read_some(want)
        if not data or (whole and len(data) < want):
            raise tarfile.ReadError("unexpected end of data")
        self._left -= len(data)
        return data


def _manifest_digests(entries: _Entries) -> dict[str, tuple[str, list[str]]]:
    """config digest -> (manifest digest, refs) from index.json, when the archive has one."""
    if "index.json" not in entries.small:
        return {}
    found: dict[str, tuple[str, list[str]]] = {}
    # Each document is parsed once however often it is named, and the descriptors visited
    # are counted: an index may name one manifest, or one nested index, 100,000 times.
    checked: dict[tuple[str, bool], tuple[bool, Any]] = {}
    visits = 0

    def check(path: str, descriptor: dict) -> tuple[bool, Any]:
        """(True, its descriptors) for an index, (False, its config digest) for a manifest."""
        key = (path, descriptor.get("mediaType") in INDEX_MEDIA_TYPES)
        if key not in checked:
            document = entries.json(path, "manifest")
            try:
                if key[1] or (isinstance(document, dict) and "manifests" in document):
                    checked[key] = (True, check_index(document, f"the archive's index {path}"))
                else:
                    manifest = check_manifest(document, f"the archive's manifest {path}")
                    checked[key] = (False, manifest["config"]["digest"])
            except DocumentError as exc:
                raise ArchiveError(str(exc)) from exc
        return checked[key]

    def walk(descriptors: list[dict], refs: list[str], depth: int) -> None:
        nonlocal visits
        if depth > 2:
            raise ArchiveError("the archive's index.json nests indexes too deep")
        visits += len(descriptors)
        if visits > MAX_ENTRIES:
            raise ArchiveError(f"the archive's index.json names over {MAX_ENTRIES:,} manifests")
        for descriptor in descriptors:
            digest = descriptor["digest"]
            name = (descriptor.get("annotations") or {}).get(REF_ANNOTATION)
            names = refs + ([name] if name else [])
            path = f"blobs/sha256/{digest[7:]}"
            if path not in entries.small:
                continue  # a platform the save left out
            is_index, content = check(path, descriptor)
            if is_index:
                walk(content, names, depth + 1)
            else:
                found[content] = (digest, names)

    index = entries.json("index.json", "index")
    if not isinstance(index, dict):
        raise ArchiveError("the archive's index.json is not a JSON object")
    try:
        descriptors = check_index(index, "the archive's index.json")
    except DocumentError as exc:
        raise ArchiveError(str(exc)) from exc
    walk(descriptors, [], 0)
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
        what = f"image config {config_path}"
        try:  # every image is checked before any blob is committed
            config = check_image_config(strict_loads(config_bytes, what), what)
            recorded_config_fields(config)
        except (DocumentError, CorruptBlobError) as exc:
            raise ArchiveError(str(exc)) from exc
        diff_ids = config_diff_ids(config)
        if len(layer_paths) != len(diff_ids):
            raise ArchiveError(
                f"the archive lists {len(layer_paths)} layers for {config_digest} "
                f"but its config names {len(diff_ids)}"
            )
        blob_digests = []
        for path, diff_id in zip(layer_paths, diff_ids, strict=True):
            resolved = entries.resolve(posixpath.normpath(path))
            if resolved in entries.small:  # a small layer: stage it now, from memory
                entries.staged[resolved] = store.stage(io.BytesIO(entries.small.pop(resolved)))
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
) -> ImportReport:
    """Read a `docker save` stream once and add its layers and images to the store.

    `image_ids` are the IDs the source engine reported: an image's ID is its manifest digest
    when that is among them (containerd store), else its config digest (graphdriver).
    """
    engine_ids = set(image_ids)
    report = ImportReport()
    entries = _Entries()
    try:
        _read_stream(store, _gunzipped(stream), entries, report, lease)
        try:
            images, used = _plan_images(store, entries)
        except CorruptBlobError as exc:  # a small layer, staged from memory there
            raise ArchiveError(f"a layer in the archive is damaged: {exc}") from exc
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
