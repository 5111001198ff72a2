"""The buildpack and extension layers of a builder: where each module's layer comes from, and
how pack adds them (internal/builder/builder.go addExplodedModules, addFlattenedModules,
explodeModules): a layer per module, --flatten groups in one layer, a flattened package's
layer split per module. Layers are written into the store (hashed only in a dry run).
"""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packcache.builder import labels as L
from packcache.builder.descriptors import BuildpackDescriptor
from packcache.builder.flatten import ModuleSplitter, SplitError, flattened_entries
from packcache.builder.inputs import InputCache
from packcache.builder.layers import buildpack_layer, module_parent, whiteout_layer
from packcache.builder.rules import BuilderError
from packcache.builder.sources import (
    SourceError,
    archive_members,
    directory_members,
    tar_members,
)
from packcache.builder.tarwriter import TarEntry, tar_chunks, tar_reader
from packcache.builder.uris import ARCHIVE, BUILDPACKAGE_FILE, DIRECTORY, IMAGE
from packcache.store.blobs import StagedBlob
from packcache.store.store import Lease, Store


def _hash_chunks(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return "sha256:" + digest.hexdigest()


class LayerWriter:
    """Writes builder layers into the store (or, in a dry run, only hashes them)."""

    def __init__(self, store: Store, lease: Lease | None, dry_run: bool) -> None:
        self.store = store
        self.lease = lease
        self.dry_run = dry_run
        self.written = 0
        self.warnings: list[str] = []
        self._pending: list[StagedBlob] | None = None  # staged, committed together (`deferred`)
        self._small: dict[str, list[TarEntry]] = {}  # small layers to write: diffID -> entries

    def cached(self, diff_id: str) -> bool:
        if any(staged.diff_id == diff_id for staged in self._pending or ()):
            return True
        return bool(self.store.cached_diff_ids([diff_id], self.lease))

    def add_small(self, entries: list[TarEntry]) -> str:
        """One of the small layers pack adds (directories, a toml file, env files): the same
        bytes on every run with the same inputs, so its tar is hashed now and written by
        `write_small`, only where the cache lacks it (not at all where the daemon holds the
        builder already)."""
        diff_id = _hash_chunks(tar_chunks(entries))
        if not self.dry_run:
            self._small.setdefault(diff_id, entries)
        return diff_id

    def write_small(self) -> None:
        """Write the small layers added that the cache lacks: which, learnt (and the rest
        leased) in one transaction; they are committed together (`deferred`), or with the
        layers of the `deferred` this runs in."""
        small, self._small = self._small, {}
        cached = self.store.cached_diff_ids(small, self.lease) if small else set()
        cached.update(staged.diff_id for staged in self._pending or ())
        missing = [entries for diff_id, entries in small.items() if diff_id not in cached]
        with nullcontext() if self._pending is not None or not missing else self.deferred():
            for entries in missing:
                self.add(entries)

    def add(self, entries: Iterable[TarEntry]) -> str:
        if self.dry_run:
            return _hash_chunks(tar_chunks(entries))
        if self._pending is not None:
            staged = self.store.stage(tar_reader(entries))
            self._pending.append(staged)
            return staged.diff_id
        result = self.store.ingest_layer(tar_reader(entries), lease=self.lease)
        self.written += result.written
        return result.diff_id

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """The layers added meanwhile are committed together when it ends (one round of syncs,
        one index transaction, instead of one per layer), or dropped on an error: none of
        them may be read from the store before."""
        self._pending = []
        try:
            yield
            if self._pending:
                self.written += sum(self.store.commit_staged_many(self._pending, lease=self.lease))
        finally:
            for staged in self._pending:
                self.store.discard(staged)  # a no-op once committed
            self._pending = None


@dataclass
class Module:
    """One buildpack to put on the builder and where its layer comes from."""

    descriptor: BuildpackDescriptor
    source: str
    kind: str
    diff_id: str = ""
    reused: bool = False
    image_ref: str | None = None  # for buildpackage images: which image holds the layer
    path: Path | None = None  # for directories and archives


def unique_modules(modules: list[Module]) -> dict[str, Module]:
    """Every id@version once; the same id@version with other contents is an error."""
    by_name: dict[str, Module] = {}
    for module in modules:
        other = by_name.get(module.descriptor.full_name)
        if other is not None and other.diff_id != module.diff_id:
            raise BuilderError(
                f"buildpack {module.descriptor.full_name} is provided twice with different "
                f"contents: by {other.source} (layer {other.diff_id}) and by {module.source} "
                f"(layer {module.diff_id})"
            )
        by_name.setdefault(module.descriptor.full_name, module)
    return by_name


def add_exploded(
    modules: list[Module], label_map: dict[str, Any], layers: LayerWriter
) -> list[str]:
    """pack's addExplodedModules: a layer per id@version, sorted by it; one the build image
    already has with the same contents is skipped, with other contents whited out first."""
    by_name = unique_modules(modules)
    diff_ids: list[str] = []
    added: set[str] = set()
    for full_name in sorted(by_name):
        module = by_name[full_name]
        descriptor = module.descriptor
        existing = label_map.get(descriptor.id, {}).get(descriptor.version)
        if existing and existing.get("layerDiffID") == module.diff_id:
            continue  # the build image already has this module, same contents
        if existing:
            diff_ids.append(layers.add(whiteout_layer(descriptor)))
        if module.diff_id not in added:  # modules that still share a layer: added once
            diff_ids.append(module.diff_id)
            added.add(module.diff_id)
        label_map.setdefault(descriptor.id, {})[descriptor.version] = L.layer_info(
            descriptor, module.diff_id
        )
    return diff_ids


def flatten_group(module: Module, groups: list[list[str]]) -> int | None:
    """Which --flatten group names this module (pack's flattenedLayerFor), if any."""
    for index, group in enumerate(groups):
        if module.descriptor.full_name in group:
            return index
    return None


def add_flattened(
    modules: list[Module],
    groups: list[list[str]],
    label_map: dict[str, Any],
    layers: LayerWriter,
    inputs: InputCache,
    squash: bool,
) -> list[str]:
    """pack's addFlattenedModules: one layer per --flatten group holding its modules in the
    order they were added; layers go in sorted by id@version, each once when `squash`.
    pack asks only its buildpack collection whether a module is flattened (ShouldFlatten), so
    extensions in a --flatten group add the group's layer once per extension."""
    group_diff_ids: dict[int, str] = {}
    for index in range(len(groups)):
        members = [m for m in modules if flatten_group(m, groups) == index]
        if members:
            group_diff_ids[index] = _flattened_layer(members, layers, inputs)
    by_name = {m.descriptor.full_name: m for m in modules}  # pack's map: the last one wins
    diff_ids: list[str] = []
    for full_name in sorted(by_name):
        module = by_name[full_name]
        diff_id = group_diff_ids[flatten_group(module, groups)]  # type: ignore[index]
        if diff_id not in diff_ids or not squash:
            diff_ids.append(diff_id)
        label_map.setdefault(module.descriptor.id, {})[module.descriptor.version] = L.layer_info(
            module.descriptor, diff_id
        )
    return diff_ids


def _flattened_layer(members: list[Module], layers: LayerWriter, inputs: InputCache) -> str:
    """The layer of one --flatten group, cached by the layers it is made from."""
    key = "flatten:" + ",".join(m.diff_id for m in members)
    known = inputs.get(key)
    if known and layers.cached(known["diff_id"]):
        return known["diff_id"]
    diff_id = layers.add(
        flattened_entries((m.descriptor, _module_entries(m, layers)) for m in members)
    )
    if not layers.dry_run:
        inputs.put(key, {"diff_id": diff_id})
    return diff_id


def _module_entries(module: Module, layers: LayerWriter) -> Iterator[TarEntry]:
    """The entries of a module's own layer: read from the store, or, in a dry run where a
    local module's layer was only hashed, made again from its source."""
    stored = layers.store.layer(module.diff_id)
    if stored is not None:
        with stored.uncompressed() as plain:
            yield from tar_members(plain, f"layer {module.diff_id}")
        return
    if module.kind == DIRECTORY and module.path is not None:
        yield from buildpack_layer(module.descriptor, directory_members(module.path))
    elif module.kind == ARCHIVE and module.path is not None:
        yield from buildpack_layer(module.descriptor, archive_members(module.path))
    else:
        raise BuilderError(
            f"--flatten: the layer of {module.descriptor.full_name} ({module.diff_id}) is not "
            "cached, so a dry run cannot make the flattened layer; run without --dry-run"
        )


def split_flattened_packages(
    modules: list[Module], store: Store, inputs: InputCache, layers: LayerWriter
) -> None:
    """A package layer holding several modules (pack's flattened buildpackage) becomes a
    layer per module, as pack's explodeModules splits it (ToNLayerTar): one pass over the
    stored layer, each module's entries written as its own layer."""
    sharing: dict[tuple[str, str], list[Module]] = {}
    for module in modules:
        if module.kind in (IMAGE, BUILDPACKAGE_FILE):
            sharing.setdefault((module.source, module.diff_id), []).append(module)
    for (_, diff_id), group in sharing.items():
        if len(group) < 2:
            continue
        key = f"split:{diff_id}"
        known = (inputs.get(key) or {}).get("split")
        if not (known and all(layers.cached(d) for d in known.values())):
            if layers.dry_run and not layers.cached(diff_id):
                layers.warnings.append(
                    f"{group[0].source}: its buildpacks share layer {diff_id}, which is not "
                    "cached: the dry run cannot tell the layers they are split into"
                )
                continue
            known = _split_layer(store, diff_id, group[0].descriptor, layers)
            if not layers.dry_run:
                inputs.put(key, {"diff_id": diff_id, "split": known})
        for module in group:
            escaped = f"{module.descriptor.escaped_id}@{module.descriptor.version}"
            module.diff_id = known.get(escaped, "")
            if not module.diff_id:
                raise BuilderError(
                    f"{module.source}: its layer {diff_id} holds no files of "
                    f"{module.descriptor.full_name}"
                )


def _split_layer(
    store: Store, diff_id: str, descriptor: BuildpackDescriptor, layers: LayerWriter
) -> dict[str, str]:
    """escaped id@version -> the diffID of its own layer, cut from the stored layer."""
    stored = store.layer(diff_id)
    if stored is None:
        raise BuilderError(f"layer {diff_id} is not cached")
    split: dict[str, str] = {}
    with stored.uncompressed() as plain:
        entries = tar_members(plain, f"layer {diff_id}")
        splitter = ModuleSplitter(entries, module_parent(descriptor))
        try:
            for module_id, version, group in splitter.groups():
                split[f"{module_id}@{version}"] = layers.add(group)
        except SplitError as exc:
            raise BuilderError(f"flattened package layer {diff_id}: {exc}") from exc
        for _ in entries:
            pass  # read to the end: the tar's end blocks are checked there
    return split


def layer_from_archive(
    path: Path, entries: Callable[[], Iterable[TarEntry]], layers: LayerWriter
) -> str:
    """Write a layer made from an archive's members; a damaged archive is a clear error (the
    tar reader raises while member bytes stream, outside the member generator)."""
    try:
        return layers.add(entries())
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise SourceError(f"cannot read archive {path}: {exc}") from exc
