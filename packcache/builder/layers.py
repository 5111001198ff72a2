"""The entries of each layer pack adds to a builder, in pack's order (internal/builder/builder.go).

Each function yields TarEntry values for tarwriter; nothing here touches the store or a daemon.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import replace

from packcache.builder.descriptors import EXTENSION, BuildpackDescriptor
from packcache.builder.tarwriter import (
    DIRECTORY,
    HARDLINK,
    NORMALIZED_MTIME,
    REGULAR,
    SYMLINK,
    TarEntry,
)

CNB_DIR = "/cnb"
BUILDPACKS_DIR = "/cnb/buildpacks"
EXTENSIONS_DIR = "/cnb/extensions"
BUILD_CONFIG_DIR = "/cnb/build-config"
LIFECYCLE_DIR = "/cnb/lifecycle"
COMPAT_LIFECYCLE_DIR = "/lifecycle"
PLATFORM_DIR = "/platform"
WORKSPACE_DIR = "/workspace"
LAYERS_DIR = "/layers"
ORDER_PATH = "/cnb/order.toml"
STACK_PATH = "/cnb/stack.toml"
RUN_PATH = "/cnb/run.toml"
SYSTEM_PATH = "/cnb/system.toml"
LIFECYCLE_BINARIES = (
    "detector",
    "restorer",
    "analyzer",
    "builder",
    "exporter",
    "launcher",
    "creator",
)
_LIFECYCLE_MEMBER = re.compile(r"^[^/]+/([^/]+)$")  # lifecycle/<binary> in a release archive


def _directory(name: str, uid: int = 0, gid: int = 0) -> TarEntry:
    return TarEntry(name, DIRECTORY, 0o755, uid, gid)


def default_dirs(uid: int, gid: int) -> list[TarEntry]:
    """/workspace and /layers owned by the build user (CNB_USER_ID/CNB_GROUP_ID), then the
    root-owned CNB directories, in pack's order."""
    return [
        _directory(WORKSPACE_DIR, uid, gid),
        _directory(LAYERS_DIR, uid, gid),
        *(
            _directory(path)
            for path in (
                CNB_DIR,
                BUILDPACKS_DIR,
                EXTENSIONS_DIR,
                PLATFORM_DIR,
                f"{PLATFORM_DIR}/env",
                BUILD_CONFIG_DIR,
                f"{BUILD_CONFIG_DIR}/env",
            )
        ),
    ]


def lifecycle_binary_name(member_name: str) -> str | None:
    """The binary a release-archive member installs (lifecycle/detector -> detector)."""
    match = _LIFECYCLE_MEMBER.match(posixpath.normpath(member_name))
    return match.group(1) if match else None


def lifecycle_layer(members: Iterable[TarEntry]) -> Iterator[TarEntry]:
    """/cnb/lifecycle/<binary> for each lifecycle/<binary> of the release archive, headers kept
    as they are (pack copies them), and the compatibility symlink /lifecycle."""
    yield _directory(LIFECYCLE_DIR)
    for member in members:
        binary = lifecycle_binary_name(member.name)
        if binary is not None:
            yield _replace_name(member, f"{LIFECYCLE_DIR}/{binary}")
    yield TarEntry(COMPAT_LIFECYCLE_DIR, SYMLINK, 0o644, linkname=LIFECYCLE_DIR)


def _replace_name(entry: TarEntry, name: str, **changes) -> TarEntry:
    return replace(entry, name=name, **changes)


def module_parent(descriptor: BuildpackDescriptor) -> str:
    """/cnb/extensions for an image extension, /cnb/buildpacks for a buildpack (toDistTar)."""
    return EXTENSIONS_DIR if descriptor.kind == EXTENSION else BUILDPACKS_DIR


def buildpack_dir(descriptor: BuildpackDescriptor) -> str:
    return f"{module_parent(descriptor)}/{descriptor.escaped_id}/{descriptor.version}"


def _buildpack_mode(relative: str, entry: TarEntry) -> int:
    """pack's calcFileMode: 0755 for directories, the phase binaries and anything executable."""
    if entry.kind == DIRECTORY:
        return 0o755
    if relative in ("bin/build", "bin/detect", "bin/generate"):
        return 0o755
    if entry.mode & 0o111:
        return 0o755
    return 0o644


def buildpack_layer(
    descriptor: BuildpackDescriptor, members: Iterable[TarEntry]
) -> Iterator[TarEntry]:
    """A buildpack's files at /cnb/buildpacks/<id, / as _>/<version>/ (an extension's under
    /cnb/extensions), normalized as pack's toDistTar does: mtime 1980-01-01T00:00:01Z,
    root-owned, modes 0755/0644."""
    yield _directory(f"{module_parent(descriptor)}/{descriptor.escaped_id}")
    base = buildpack_dir(descriptor)
    yield _directory(base)
    for member in members:
        relative = posixpath.normpath(member.name)
        if relative in (".", "/"):
            continue
        relative = relative.lstrip("/")
        linkname = member.linkname
        if member.kind == HARDLINK:
            linkname = posixpath.join(base, posixpath.normpath(linkname))
        yield _replace_name(
            member,
            posixpath.join(base, relative),
            mode=_buildpack_mode(relative, member),
            uid=0,
            gid=0,
            uname="",
            gname="",
            mtime=NORMALIZED_MTIME,
            linkname=linkname,
        )


def whiteout_layer(descriptor: BuildpackDescriptor) -> list[TarEntry]:
    """Hides a buildpack version the build image already has with other contents (pack writes
    this header with no time: Go's zero time is written as 0). pack's whiteoutLayer names
    /cnb/buildpacks for extensions too, so this does the same."""
    name = f"{BUILDPACKS_DIR}/{descriptor.escaped_id}/.wh.{descriptor.version}"
    return [TarEntry(name, REGULAR, 0o644, mtime=0, data=b"")]


def single_file_layer(path: str, contents: str) -> list[TarEntry]:
    data = contents.encode()
    return [TarEntry(path, REGULAR, 0o644, size=len(data), data=data)]


def env_layer(directory: str, files: dict[str, str]) -> list[TarEntry]:
    """<directory>/<name> per variable. pack iterates a Go map (random order); sorted here."""
    entries = []
    for name in sorted(files):
        data = files[name].encode()
        entries.append(
            TarEntry(posixpath.join(directory, name), REGULAR, 0o644, size=len(data), data=data)
        )
    return entries
