"""pack's launch caches: where the lifecycle's exporter keeps the layers of the last image it
exported to the daemon, one uncompressed tar per layer, `committed/sha256:<64 hex>.tar`.

A launch cache is a Docker volume named `pack-cache-<repository_tag>-<12 hex>.launch` (pack's
`pkg/cache/volume_cache.go`) or a bind directory (`DIR/launch-cache`). A volume is read through
the Engine API, so a daemon on another host works too: a container created (never started) from
an image the daemon holds, with the volume mounted read-only, read through the archive endpoint
and removed afterwards. When the daemon is local and the volume's mount point is readable, its
files are read in place instead. Every file is untrusted: names are checked, only regular files
are read, each at most the size it had when listed; the caller hashes the bytes and keeps only
those that match the diffID their name claims.
"""

from __future__ import annotations

import http.client
import os
import re
import stat
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from packcache.archive.save_reader import (
    ArchiveError,
    CheckedTarInfo,
    ForwardReader,
    MemberBytes,
    next_member,
)
from packcache.digest import CHUNK
from packcache.errors import PackcacheError
from packcache.refs import normalize
from packcache.transports.daemon import Daemon

VOLUME_NAME = re.compile(r"^pack-cache-(?P<image>.+)-(?P<key>[0-9a-f]{12})\.launch$")
ENTRY_NAME = re.compile(r"^(?P<diff_id>sha256:[0-9a-f]{64})\.tar$")
COMMITTED = "committed"
TRANSIENT = ("staging", "committed-backup")  # written while a build exports
BIND_SUBDIR = (
    "launch-cache"  # pack's bind launch cache: --cache 'type=launch;format=bind;source=DIR'
)
MAX_ENTRIES = 10_000  # files in committed/: a build has tens of layers
MAX_LAYER = 1 << 40  # bytes one layer file may claim
# Where the reading container mounts the volume: a path no image has, so nothing is copied up.
MOUNT_TARGET = "/packcache-launch-cache"
# Go's os.ModeType (dir, symlink, device, named pipe, socket, char device, irregular): the
# archive endpoint's stat reports a file's mode as Go's os.FileMode.
_GO_TYPE_BITS = (1 << 31) | (1 << 27) | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)


class LaunchCacheError(PackcacheError):
    """A launch cache cannot be read at all."""


@dataclass(frozen=True)
class LaunchCache:
    """One launch cache: a volume (by name) or a directory (by path)."""

    name: str
    volume: bool
    image_part: str = ""  # pack's name for the image it was built for: repository_tag
    mountpoint: str = ""  # where a local daemon keeps a volume's files

    @property
    def kind(self) -> str:
        return "volume" if self.volume else "bind"


@dataclass(frozen=True)
class Entry:
    """A committed layer file: the diffID its name claims, its size when listed."""

    diff_id: str
    size: int


@dataclass
class Listing:
    """What reading a launch cache met besides the layers it gave: one line per problem."""

    problems: list[str] = field(default_factory=list)
    in_use: bool = False  # files in staging/ or committed-backup/: a build is exporting


def pack_image_part(ref: str) -> str:
    """The part of pack's volume name that names the image: the repository without its
    registry, '/' as '_', then '_' and the tag (pack's sanitizedRef)."""
    name = normalize(ref)
    repository, _, tag = name.rpartition(":")
    if "/" in tag or not repository:  # a digest reference or no tag
        repository, _, tag = name.partition("@")
    _registry, _, path = repository.partition("/")
    return f"{path.replace('/', '_')}_{tag}" if path else repository


def find_volumes(daemon: Daemon) -> list[LaunchCache]:
    """The daemon's volumes named as pack names launch caches."""
    caches = []
    for volume in daemon.volumes():
        name = volume.get("Name") or ""
        match = VOLUME_NAME.match(name)
        if match is None:
            continue
        local = volume.get("Driver") == "local" and daemon.is_local()
        mountpoint = (volume.get("Mountpoint") or "") if local else ""
        caches.append(LaunchCache(name, True, match.group("image"), mountpoint))
    return sorted(caches, key=lambda cache: cache.name)


def named_volume(daemon: Daemon, name: str) -> LaunchCache | None:
    """A volume by its name, whatever it is called (pack lets a build name its cache)."""
    for volume in daemon.volumes():
        if volume.get("Name") == name:
            match = VOLUME_NAME.match(name)
            local = volume.get("Driver") == "local" and daemon.is_local()
            mountpoint = (volume.get("Mountpoint") or "") if local else ""
            return LaunchCache(name, True, match.group("image") if match else "", mountpoint)
    return None


def bind_cache(path: Path) -> LaunchCache | None:
    """A bind launch cache: DIR/launch-cache (what pack mounts) or DIR itself."""
    for candidate in (path / BIND_SUBDIR, path):
        if (candidate / COMMITTED).is_dir() and not (candidate / COMMITTED).is_symlink():
            return LaunchCache(str(candidate), False)
    return None


# What reading a layer's bytes can raise, from a file or the daemon's tar stream.
READ_ERRORS = (OSError, tarfile.TarError, ArchiveError, http.client.HTTPException)


class _Bounded:
    """At most `size` bytes of a layer file (one that grows while it is read gives no more);
    a failed read is a LaunchCacheError, which ends the reading of that cache only."""

    def __init__(self, raw: BinaryIO, size: int, name: str) -> None:
        self._raw = raw
        self._left = size
        self._name = name

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        if n is None or n < 0:  # the rest, as a file's read() gives it
            parts = []
            while chunk := self.read(CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        try:
            data = self._raw.read(min(n, self._left))
        except READ_ERRORS as exc:
            raise LaunchCacheError(f"reading {self._name} failed: {exc}") from exc
        if not data:
            self._left = 0  # shorter than listed: its hash says so
        self._left -= len(data)
        return data


class Reader(ABC):
    """Reads the committed layer files of one launch cache."""

    def __init__(self, cache: LaunchCache) -> None:
        self.cache = cache
        self.listing = Listing()

    def problem(self, what: str, reason: str) -> None:
        self.listing.problems.append(f"{self.cache.name}: {what}: {reason}")

    @abstractmethod
    def layers(self, wanted: set[str] | None = None) -> Iterator[tuple[Entry, BinaryIO]]:
        """Each committed layer (of those `wanted`, if given) with a stream of its bytes,
        readable until the next one is asked for. Bad files are noted in `listing`."""

    @abstractmethod
    def locate(self, wanted: set[str]) -> dict[str, Entry]:
        """The committed layers of those `wanted` that this cache has, found without reading
        them (bad files noted in `listing`)."""

    @abstractmethod
    def open_layer(self, entry: Entry) -> AbstractContextManager[BinaryIO]:
        """The bytes of one located layer (at most the size it had when located); raises
        LaunchCacheError when it is gone or no longer a regular file."""

    def _entry(self, name: str, size: int, regular: bool) -> Entry | None:
        """The entry a committed file's name and kind make, or None (noted) if it is not one."""
        match = ENTRY_NAME.match(name)
        if match is None:
            self.problem(f"{COMMITTED}/{name!r}", "not a layer file (stray file), skipped")
            return None
        if not regular:
            self.problem(f"{COMMITTED}/{name}", "not a regular file, skipped")
            return None
        if size > MAX_LAYER:
            self.problem(f"{COMMITTED}/{name}", f"claims {size:,} bytes, skipped")
            return None
        return Entry(match.group("diff_id"), size)


class DirectoryReader(Reader):
    """A bind directory, or a local volume's mount point: read in place, never through a link."""

    def __init__(self, cache: LaunchCache, path: str) -> None:
        super().__init__(cache)
        self.path = path

    def layers(self, wanted: set[str] | None = None) -> Iterator[tuple[Entry, BinaryIO]]:
        try:
            root = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise LaunchCacheError(f"cannot read launch cache {self.cache.name}: {exc}") from exc
        try:
            self._note_in_use(root)
            try:
                committed = os.open(
                    COMMITTED, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root
                )
            except OSError:
                self.problem(COMMITTED, "missing or not a directory")
                return
            try:
                yield from self._files(committed, wanted)
            finally:
                os.close(committed)
        finally:
            os.close(root)

    def _note_in_use(self, root: int) -> None:
        for name in TRANSIENT:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root)
            except OSError:
                continue
            try:
                with os.scandir(fd) as listed:
                    if next(listed, None) is not None:
                        self.listing.in_use = True
            finally:
                os.close(fd)

    def _names(self, committed: int) -> list[str]:
        names = []
        with os.scandir(committed) as listed:
            for item in listed:
                if len(names) >= MAX_ENTRIES:
                    self.problem(COMMITTED, f"more than {MAX_ENTRIES} files, the rest skipped")
                    break
                names.append(item.name)
        return sorted(names)

    def locate(self, wanted: set[str]) -> dict[str, Entry]:
        with self._committed(note_in_use=True) as committed:
            return {entry.diff_id: entry for entry in self._entries(committed, wanted)}

    @contextmanager
    def open_layer(self, entry: Entry) -> Iterator[BinaryIO]:
        with self._committed() as committed:
            name = f"{entry.diff_id}.tar"
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=committed)
            except OSError as exc:
                raise LaunchCacheError(f"{COMMITTED}/{name} cannot be opened: {exc}") from exc
            with os.fdopen(fd, "rb", buffering=0) as file:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise LaunchCacheError(f"{COMMITTED}/{name} is no longer a regular file")
                yield _Bounded(file, entry.size, name)  # type: ignore[misc]

    @contextmanager
    def _committed(self, *, note_in_use: bool = False) -> Iterator[int]:
        """committed/ as a descriptor, reached without following a link."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        try:
            root = os.open(self.path, flags)
        except OSError as exc:
            raise LaunchCacheError(f"cannot read launch cache {self.cache.name}: {exc}") from exc
        try:
            if note_in_use:
                self._note_in_use(root)
            try:
                committed = os.open(COMMITTED, flags, dir_fd=root)
            except OSError as exc:
                raise LaunchCacheError(f"{self.cache.name}: no {COMMITTED} directory") from exc
            try:
                yield committed
            finally:
                os.close(committed)
        finally:
            os.close(root)

    def _entries(self, committed: int, wanted: set[str] | None) -> Iterator[Entry]:
        """Every name is looked at (a stray file is reported), only the wanted are given."""
        for name in self._names(committed):
            try:
                info = os.stat(name, dir_fd=committed, follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone meanwhile
            entry = self._entry(name, info.st_size, stat.S_ISREG(info.st_mode))
            if entry is not None and (wanted is None or entry.diff_id in wanted):
                yield entry

    def _files(self, committed: int, wanted: set[str] | None) -> Iterator[tuple[Entry, BinaryIO]]:
        for entry in self._entries(committed, wanted):
            name = f"{entry.diff_id}.tar"
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=committed)
            except OSError as exc:
                self.problem(f"{COMMITTED}/{name}", f"cannot be opened ({exc.strerror}), skipped")
                continue
            with os.fdopen(fd, "rb", buffering=0) as file:
                if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the stat
                    self.problem(f"{COMMITTED}/{name}", "not a regular file, skipped")
                    continue
                yield entry, _Bounded(file, entry.size, name)  # type: ignore[misc]


class VolumeReader(Reader):
    """A volume read through the Engine API, from an idle container that mounts it read-only.
    Use as a context manager: the container is removed on the way out, also after an error."""

    def __init__(self, cache: LaunchCache, daemon: Daemon, image: str) -> None:
        super().__init__(cache)
        self.daemon = daemon
        self.image = image
        self.container: str | None = None

    def __enter__(self) -> VolumeReader:
        self.container = self.daemon.create_idle_container(
            self.image, self.cache.name, MOUNT_TARGET
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.container is not None:
            container, self.container = self.container, None
            self.daemon.remove_container(container)

    def layers(self, wanted: set[str] | None = None) -> Iterator[tuple[Entry, BinaryIO]]:
        root = MOUNT_TARGET
        self._note_in_use(root)
        if wanted is None:
            yield from self._stream(f"{root}/{COMMITTED}", whole_dir=True)
            return
        for diff_id in sorted(wanted):
            found = self.daemon.path_stat(self.container or "", f"{root}/{COMMITTED}/{diff_id}.tar")
            if found is None:
                continue
            yield from self._stream(f"{root}/{COMMITTED}/{diff_id}.tar", whole_dir=False)

    def locate(self, wanted: set[str]) -> dict[str, Entry]:
        self._note_in_use(MOUNT_TARGET)
        found = {}
        for diff_id in sorted(wanted):
            name = f"{diff_id}.tar"
            path = f"{MOUNT_TARGET}/{COMMITTED}/{name}"
            stat_ = self.daemon.path_stat(self.container or "", path)
            if stat_ is None:
                continue
            mode, size = stat_.get("mode"), stat_.get("size")
            # Go's os.FileMode: any of the type bits set means not a regular file.
            regular = isinstance(mode, int) and mode & _GO_TYPE_BITS == 0
            entry = self._entry(name, size if isinstance(size, int) else -1, regular)
            if entry is not None and entry.size >= 0:
                found[diff_id] = entry
        return found

    @contextmanager
    def open_layer(self, entry: Entry) -> Iterator[BinaryIO]:
        path = f"{MOUNT_TARGET}/{COMMITTED}/{entry.diff_id}.tar"
        layers = self._stream(path, whole_dir=False)
        try:
            found = next(layers, None)
            if found is None or found[0] != entry:
                raise LaunchCacheError(f"{path} changed since it was located")
            yield found[1]
        finally:
            layers.close()

    def _note_in_use(self, root: str) -> None:
        """Is anything in staging/ or committed-backup/? Only the first headers are read."""
        for name in TRANSIENT:
            if self.daemon.path_stat(self.container or "", f"{root}/{name}") is None:
                continue
            try:
                with self.daemon.archive(self.container or "", f"{root}/{name}") as stream:
                    forward = ForwardReader(stream)
                    with tarfile.open(fileobj=forward, mode="r:", tarinfo=CheckedTarInfo) as tar:
                        next_member(tar)  # the directory itself
                        if next_member(tar) is not None:
                            self.listing.in_use = True
            except (EOFError, *READ_ERRORS) as exc:
                self.problem(name, f"the daemon's archive of it is unreadable ({exc})")

    def _stream(self, path: str, *, whole_dir: bool) -> Iterator[tuple[Entry, BinaryIO]]:
        """The layer files in the archive of `path` (a directory, or one file)."""
        count = 0
        with self.daemon.archive(self.container or "", path) as stream:
            forward = ForwardReader(stream)
            try:
                with tarfile.open(fileobj=forward, mode="r:", tarinfo=CheckedTarInfo) as tar:
                    while (member := next_member(tar)) is not None:
                        parts = member.name.split("/")
                        if whole_dir and len(parts) == 1 and member.isdir():
                            continue  # committed/ itself
                        count += 1
                        if count > MAX_ENTRIES:
                            self.problem(COMMITTED, f"more than {MAX_ENTRIES} files, skipped")
                            return
                        name = parts[-1] if len(parts) == 1 + whole_dir else member.name
                        entry = self._entry(name, member.size, member.isfile())
                        if entry is not None:
                            member_bytes = MemberBytes(forward, member)
                            yield entry, _Bounded(member_bytes, member.size, name)  # type: ignore[arg-type]
            except (EOFError, *READ_ERRORS) as exc:
                self.problem(path, f"the daemon's archive of it is unreadable ({exc})")


@contextmanager
def reader(daemon: Daemon | None, cache: LaunchCache, image: str | None) -> Iterator[Reader]:
    """The reader of a launch cache: in place where its files are local and readable, else
    (a volume) through an idle container made from `image`, a daemon image, removed after."""
    if not cache.volume:
        yield DirectoryReader(cache, cache.name)
        return
    if cache.mountpoint and os.access(cache.mountpoint, os.R_OK | os.X_OK):
        yield DirectoryReader(cache, cache.mountpoint)
        return
    if daemon is None or image is None:
        raise LaunchCacheError(f"launch cache volume {cache.name} needs an image to read it with")
    with VolumeReader(cache, daemon, image) as volume_reader:
        yield volume_reader
