"""Reading what a builder is made from: buildpack directories and archives, lifecycle release
archives and `.cnb` buildpackages (OCI layout). Members come out as TarEntry values whose bytes
are read only when the layer is written, so nothing is held whole.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from packcache.builder.descriptors import (
    BUILDPACK,
    EXTENSION,
    BuildpackDescriptor,
    DescriptorError,
    LifecycleDescriptor,
    parse_buildpack_toml,
    parse_extension_toml,
    parse_lifecycle_toml,
)
from packcache.builder.layers import LIFECYCLE_BINARIES, lifecycle_binary_name
from packcache.builder.tarwriter import DIRECTORY, HARDLINK, REGULAR, SYMLINK, TarEntry
from packcache.digest import CHUNK
from packcache.errors import PackcacheError
from packcache.image.inspected import ContainerConfig

_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, UnicodeDecodeError)


class SourceError(PackcacheError):
    """A buildpack or lifecycle source cannot be read."""


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


# -- directories ---------------------------------------------------------------------------


def _open_file(path: Path):
    return lambda: open(path, "rb")  # closed by the tar writer


def directory_members(root: Path) -> Iterator[TarEntry]:
    """Go's filepath.Walk order (names sorted per directory, depth first, symlinks not
    followed); sockets, devices and fifos are skipped; a file seen again through another hard
    link becomes a link to the first path, as pack writes it."""
    first_paths: dict[tuple[int, int], str] = {}

    def walk(directory: Path, prefix: str) -> Iterator[TarEntry]:
        for name in sorted(os.listdir(directory), key=os.fsencode):
            path = directory / name
            relative = f"{prefix}{name}"
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISDIR(info.st_mode):
                yield TarEntry(relative, DIRECTORY, mode)
                yield from walk(path, relative + "/")
            elif stat.S_ISLNK(info.st_mode):
                yield TarEntry(relative, SYMLINK, mode, linkname=os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                inode = (info.st_dev, info.st_ino)
                if info.st_nlink > 1 and inode in first_paths:
                    yield TarEntry(relative, HARDLINK, mode, linkname=first_paths[inode])
                    continue
                first_paths[inode] = relative
                yield TarEntry(relative, REGULAR, mode, size=info.st_size, source=_open_file(path))

    yield from walk(root, "")


def directory_fingerprint(root: Path) -> str:
    """A key that changes whenever any file of the tree changes (path, type, mode, size, mtime,
    ctime, inode, link target: from lstat alone, like git's index), so an unchanged buildpack
    directory is neither read nor re-tarred."""
    digest = hashlib.sha256()
    for directory, names, files in os.walk(root):
        names.sort()
        for name in sorted(names + files):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""
            digest.update(
                f"{os.path.relpath(path, root)}\0{info.st_mode}\0{info.st_size}\0"
                f"{info.st_mtime_ns}\0{info.st_ctime_ns}\0{info.st_ino}\0{link}\n".encode(
                    errors="surrogateescape"
                )
            )
    return "sha256:" + digest.hexdigest()


def _parse_descriptor(text: bytes, where: str, kind: str) -> BuildpackDescriptor:
    parse = parse_extension_toml if kind == EXTENSION else parse_buildpack_toml
    return parse(text, where)


def directory_descriptor(root: Path, kind: str = BUILDPACK) -> BuildpackDescriptor:
    """The buildpack.toml (or extension.toml) at the root of a module directory."""
    try:
        text = (root / f"{kind}.toml").read_bytes()
    except OSError as exc:
        raise SourceError(f"{kind} {root}: cannot read {kind}.toml: {exc.strerror}") from exc
    return _parse_descriptor(text, str(root / f"{kind}.toml"), kind)


# -- archives ------------------------------------------------------------------------------

_KINDS = {
    tarfile.REGTYPE: REGULAR,
    tarfile.AREGTYPE: REGULAR,
    tarfile.DIRTYPE: DIRECTORY,
    tarfile.SYMTYPE: SYMLINK,
    tarfile.LNKTYPE: HARDLINK,
}


class _Counting:
    """Counts the bytes tarfile reads, to tell a whole archive from a cut one."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


class _MemberReader:
    """A member's bytes; a damaged archive found while they stream is a SourceError too."""

    def __init__(self, path: Path | str, member: BinaryIO | None) -> None:
        self.path = path
        self.member = member

    def read(self, size: int = -1) -> bytes:
        try:
            return self.member.read(size) if self.member is not None else b""
        except _ARCHIVE_ERRORS as exc:
            raise SourceError(f"cannot read archive {self.path}: {exc}") from exc

    def __enter__(self) -> _MemberReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.member is not None:
            self.member.close()


def archive_members(path: Path) -> Iterator[TarEntry]:
    """The members of a tar or .tgz (gzip, as pack reads them), read as a stream in order.

    tarfile stops quietly at a cut header, so the archive is also read to its end: a gzip
    stream must end with its trailer (and CRC), and the tar must reach its end-of-archive
    blocks; anything else is an unreadable archive, never a shorter buildpack.
    """
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            plain = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
            yield from tar_members(plain, path)  # type: ignore[arg-type]
    except _ARCHIVE_ERRORS as exc:
        raise SourceError(f"cannot read archive {path}: {exc}") from exc


def tar_members(plain: BinaryIO, where: Path | str) -> Iterator[TarEntry]:
    """The members of an uncompressed tar stream, in order, each member's bytes readable
    (once) until the next member is asked for; the stream must reach its end blocks."""
    try:
        counter = _Counting(plain)
        with tarfile.open(fileobj=counter, mode="r|") as archive:  # type: ignore[call-overload]
            for member in archive:
                kind = _KINDS.get(member.type)
                if kind is None:
                    continue  # devices, fifos: nothing a buildpack or lifecycle ships
                yield TarEntry(
                    name=member.name,
                    kind=kind,
                    mode=member.mode,
                    uid=member.uid,
                    gid=member.gid,
                    size=member.size if kind == REGULAR else 0,
                    mtime=int(member.mtime),
                    linkname=member.linkname,
                    uname=member.uname,
                    gname=member.gname,
                    source=(lambda m=member: _MemberReader(where, archive.extractfile(m))),
                )
            end = archive.offset
        while counter.read(CHUNK):
            pass
        if counter.count < end + 2 * 512:
            raise SourceError(f"cannot read archive {where}: it ends early (cut short?)")
    except _ARCHIVE_ERRORS as exc:
        raise SourceError(f"cannot read archive {where}: {exc}") from exc


def _archive_file(path: Path, wanted: str) -> bytes | None:
    """The contents of one member (compared like pack's CanonicalTarPath), or None."""
    for entry in archive_members(path):
        if posixpath.normpath("/" + entry.name) == "/" + wanted and entry.kind == REGULAR:
            assert entry.source is not None
            with entry.source() as member:
                return member.read()
    return None


def archive_descriptor(path: Path, kind: str = BUILDPACK) -> BuildpackDescriptor:
    text = _archive_file(path, f"{kind}.toml")
    if text is None:
        raise SourceError(f"{kind} archive {path} has no {kind}.toml at its root")
    return _parse_descriptor(text, f"{path}!{kind}.toml", kind)


class LifecycleArchive(NamedTuple):
    path: Path
    descriptor: LifecycleDescriptor


def read_lifecycle(path: Path) -> LifecycleArchive:
    """Check a lifecycle release archive as pack does: lifecycle.toml and every phase binary."""
    descriptor_text: bytes | None = None
    binaries: set[str] = set()
    for entry in archive_members(path):
        if posixpath.normpath("/" + entry.name) == "/lifecycle.toml" and entry.source:
            with entry.source() as member:
                descriptor_text = member.read()
        binary = lifecycle_binary_name(entry.name)
        if binary is not None:
            binaries.add(binary.removesuffix(".exe"))
    if descriptor_text is None:
        raise SourceError(f"lifecycle archive {path} has no lifecycle.toml")
    missing = [b for b in LIFECYCLE_BINARIES if b not in binaries]
    if missing:
        raise SourceError(f"lifecycle archive {path}: did not find '{missing[0]}' in it")
    try:
        descriptor = parse_lifecycle_toml(descriptor_text, f"{path}!lifecycle.toml")
    except DescriptorError as exc:
        raise SourceError(str(exc)) from exc
    return LifecycleArchive(path, descriptor)


# -- .cnb buildpackages (an OCI image layout in an uncompressed tar) ------------------------


def is_oci_layout(path: Path) -> bool:
    try:
        with tarfile.open(path, mode="r:") as archive:
            names = {posixpath.normpath(n) for n in archive.getnames()}
    except _ARCHIVE_ERRORS:
        return False
    return "oci-layout" in names and "index.json" in names


class LayoutLayer(NamedTuple):
    diff_id: str
    digest: str
    media_type: str


@dataclass
class OciBuildpackage:
    """A `.cnb` file opened for reading its labels and layer blobs."""

    path: Path
    labels: dict[str, str]
    layers: list[LayoutLayer]
    _archive: tarfile.TarFile

    def open_blob(self, digest: str) -> BinaryIO:
        name = f"blobs/sha256/{digest.removeprefix('sha256:')}"
        try:
            member = self._archive.getmember(name)
        except KeyError:
            member = self._archive.getmember("./" + name)
        blob = self._archive.extractfile(member)
        if blob is None:
            raise SourceError(f"{self.path}: blob {digest} is not a file")
        return blob  # type: ignore[return-value]

    def close(self) -> None:
        self._archive.close()


def open_oci_buildpackage(path: Path) -> OciBuildpackage:
    try:
        archive = tarfile.open(path, mode="r:")  # noqa: SIM115 - OciBuildpackage.close()
    except _ARCHIVE_ERRORS as exc:
        raise SourceError(f"cannot read buildpackage {path}: {exc}") from exc

    def document(name: str) -> Any:
        for candidate in (name, "./" + name):
            try:
                member = archive.getmember(candidate)
            except KeyError:
                continue
            blob = archive.extractfile(member)
            if blob is not None:
                return json.loads(blob.read())
        raise SourceError(f"buildpackage {path} has no {name}")

    def blob_json(digest: str) -> Any:
        return document(f"blobs/sha256/{digest.removeprefix('sha256:')}")

    try:
        index = document("index.json")
        manifest = blob_json(index["manifests"][0]["digest"])
        while "manifests" in manifest:  # an index inside the index: take its first image
            manifest = blob_json(manifest["manifests"][0]["digest"])
        config = blob_json(manifest["config"]["digest"])
        diff_ids = config["rootfs"]["diff_ids"]
        layers = [
            LayoutLayer(diff_id, descriptor["digest"], descriptor.get("mediaType", ""))
            for diff_id, descriptor in zip(diff_ids, manifest["layers"], strict=True)
        ]
        labels = dict(ContainerConfig.from_json(config.get("config")).labels)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        archive.close()
        raise SourceError(f"buildpackage {path} is not a valid OCI layout: {exc}") from exc
    except SourceError:
        archive.close()
        raise
    return OciBuildpackage(path, labels, layers, archive)
