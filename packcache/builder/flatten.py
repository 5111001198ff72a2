"""Buildpacks sharing one layer: pack's --flatten groups (several buildpacks written into one
builder layer) and flattened buildpackages (one package layer holding several buildpacks,
which pack's explodeModules splits into a layer per buildpack).

Entry streams only: nothing here touches the store or a daemon.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import replace

from packcache.builder.descriptors import BuildpackDescriptor
from packcache.builder.tarwriter import DIRECTORY, TarEntry
from packcache.errors import UsageError


def parse_flatten(values: Iterable[str]) -> list[list[str]]:
    """--flatten 'id@version,id@version' (repeatable): pack's ParseFlattenBuildModules."""
    groups = []
    for value in values:
        group = []
        for item in value.split(","):
            if item.count("@") != 1:
                raise UsageError(
                    f"--flatten: invalid format {item}; please use "
                    "'<buildpack-id>@<buildpack-version>' to add buildpacks to be flattened"
                )
            bp_id, version = (part.strip() for part in item.split("@"))
            if not bp_id or not version:
                raise UsageError(
                    f"--flatten: invalid format {item}; '<buildpack-id>' and "
                    "'<buildpack-version>' must be specified"
                )
            group.append(f"{bp_id}@{version}")
        groups.append(group)
    return groups


def flattened_entries(
    modules: Iterable[tuple[BuildpackDescriptor, Iterable[TarEntry]]],
) -> Iterator[TarEntry]:
    """One layer holding every module's entries (pack's NToLayerTar): each id@version once,
    and a directory header an earlier module already wrote (its /cnb/buildpacks/<id>, or the
    /cnb and /cnb/buildpacks a buildpackage's layer carries) left out: a graphdriver refuses a
    layer naming one path twice."""
    directories: set[str] = set()
    seen: set[str] = set()
    for descriptor, entries in modules:
        if descriptor.full_name in seen:
            continue
        seen.add(descriptor.full_name)
        for entry in entries:
            if entry.kind == DIRECTORY:
                path = posixpath.normpath("/" + entry.name.lstrip("/"))
                if path in directories:
                    continue
                directories.add(path)
            yield entry


def _id_and_version(name: str, parent: str) -> tuple[str, str]:
    """(id, version) of /cnb/buildpacks/<id>/<version>/... (pack's parseBpIDAndVersion)."""
    parts = posixpath.normpath("/" + name.lstrip("/")).split("/")
    prefix = parent.split("/")
    if parts[: len(prefix)] != prefix or len(parts) <= len(prefix):
        return "", ""
    rest = parts[len(prefix) :]
    return rest[0], rest[1] if len(rest) > 1 else ""


class SplitError(ValueError):
    """A package layer that is not laid out as pack lays out a flattened buildpackage."""


class ModuleSplitter:
    """Cuts a flattened package layer into one entry stream per buildpack, in one pass:
    `groups()` yields (id, version, entries); each group's entries must be consumed before
    the next group is asked for. Entries before the first module directory are skipped, as
    pack's ToNLayerTar skips them."""

    def __init__(self, entries: Iterable[TarEntry], parent: str) -> None:
        self._entries = iter(entries)
        self._parent = parent
        self._pending: TarEntry | None = None
        self._done: set[tuple[str, str]] = set()

    def _next(self) -> TarEntry | None:
        if self._pending is not None:
            entry, self._pending = self._pending, None
            return entry
        return self._read()

    def _read(self) -> TarEntry | None:
        """The next entry; a name with '..' is refused, as pack's sanitizePath refuses it."""
        entry = next(self._entries, None)
        if entry is not None and ".." in entry.name:
            raise SplitError(f"path {entry.name} contains unexpected special elements")
        return entry

    def groups(self) -> Iterator[tuple[str, str, Iterator[TarEntry]]]:
        first = self._next()
        while first is not None and not _id_and_version(first.name, self._parent)[0]:
            first = self._next()
        while first is not None:
            head = [first]
            module_id, version = _id_and_version(first.name, self._parent)
            if not version:
                second = self._next()
                second_id, version = (
                    ("", "") if second is None else _id_and_version(second.name, self._parent)
                )
                if second is None or second_id != module_id or not version:
                    raise SplitError(f"entry after {first.name} is not a version of {module_id}")
                head.append(second)
            else:
                # pack writes the missing /cnb/buildpacks/<id> header from the version's own
                head.insert(0, replace(first, name=posixpath.dirname(first.name), kind=DIRECTORY))
            if (module_id, version) in self._done:
                raise SplitError(f"the files of {module_id}@{version} are not together")
            self._done.add((module_id, version))
            yield module_id, version, self._group(head, module_id, version)
            first = self._pending
            self._pending = None

    def _group(self, head: list[TarEntry], module_id: str, version: str) -> Iterator[TarEntry]:
        yield from head
        while (entry := self._read()) is not None:
            if _id_and_version(entry.name, self._parent) != (module_id, version):
                self._pending = entry
                return
            yield entry
