"""The buildpacks (and extensions) a builder.toml names: found from their sources
(directories, archives, `.cnb` files, buildpackage images read through the fetcher),
checked against their entries, and their layers put in the store (buildpackages the cache
lacks imported with `docker save`, directories and archives tarred unless their content key
is known). create-builder and derived builders share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from packcache.builder.config import BuilderConfig
from packcache.builder.descriptors import BUILDPACK, EXTENSION, descriptor_from_layers_label
from packcache.builder.inputs import InputCache
from packcache.builder.layers import buildpack_layer
from packcache.builder.rules import BuilderError, json_label
from packcache.builder.sources import (
    archive_descriptor,
    archive_members,
    directory_descriptor,
    directory_fingerprint,
    directory_members,
    file_digest,
    open_oci_buildpackage,
)
from packcache.builder.uris import (
    ARCHIVE,
    BUILDPACKAGE_FILE,
    DIRECTORY,
    IMAGE,
    LOCAL_KINDS,
    BuildpackSource,
    classify_buildpack,
    local_path,
)
from packcache.image import cnb
from packcache.operations.builder_fetch import DAEMON, BuilderFetcher, FetchedImage
from packcache.operations.builder_modules import LayerWriter, Module, layer_from_archive
from packcache.store.store import Store
from packcache.transports.daemon import Daemon


def collect_buildpacks(
    config: BuilderConfig, fetcher: BuilderFetcher, layers: LayerWriter, kind=BUILDPACK
) -> list[Module]:
    """Every buildpack the [[buildpacks]] entries provide (or extension the [[extensions]]
    entries do), with what each source says about it (labels, buildpack.toml or
    extension.toml); an entry's id and version must match its main module."""
    modules: list[Module] = []
    for entry in config.extensions if kind == EXTENSION else config.buildpacks:
        source = classify_buildpack(entry.uri, config.base_dir)
        found = _buildpacks_from(source, fetcher, layers, kind)
        main = found[0]
        for expected, actual, what in (
            (entry.id, main.descriptor.id, "ID"),
            (entry.version, main.descriptor.version, "version"),
        ):
            if expected and expected != actual:
                raise BuilderError(
                    f"{config.path}:{entry.line}: {kind} from {entry.uri} has {what} "
                    f"{actual}, which does not match {what} {expected} in {entry.key}"
                )
        modules.extend(found)
    return modules


def _buildpacks_from(
    source: BuildpackSource, fetcher: BuilderFetcher, layers: LayerWriter, module: str
) -> list[Module]:
    """The buildpacks one [[buildpacks]] entry provides, the main one first (for an
    [[extensions]] entry, its one extension: pack's extensions are never composite)."""
    uri = source.uri
    if source.kind == DIRECTORY:
        descriptor = directory_descriptor(source.path, module)
        return [Module(descriptor, uri, DIRECTORY, path=source.path)]
    if source.kind == BUILDPACKAGE_FILE:
        package = open_oci_buildpackage(source.path)
        try:
            found = _package_modules(
                package.labels, str(source.path), uri, source.kind, layers, module
            )
        finally:
            package.close()
    elif source.kind == ARCHIVE:
        return [Module(archive_descriptor(source.path, module), uri, ARCHIVE, path=source.path)]
    else:
        what = "extension package" if module == EXTENSION else "buildpackage"
        fetched = fetcher.image(source.ref, what)
        found = _package_modules(fetched.image.labels, source.ref, uri, IMAGE, layers, module)
        if fetched.source != DAEMON:
            _check_package_layers(fetched, found)
    return found[:1] if module == EXTENSION else found


def _check_package_layers(fetched: FetchedImage, modules: list[Module]) -> None:
    """A package read from a registry or the cache holds the layers its label names; its
    layers are there already (pulled, cached) or are read at publish, never `docker save`d."""
    held = set(fetched.image.diff_ids)
    for module in modules:
        if module.diff_id not in held:
            raise BuilderError(
                f"buildpackage {fetched.ref}: its io.buildpacks.buildpack.layers label names "
                f"layer {module.diff_id}, which the image does not have"
            )
        module.image_ref = None


def _package_modules(
    labels: Mapping[str, str], where: str, uri: str, kind: str, layers: LayerWriter, module: str
) -> list[Module]:
    """A package's modules from its labels: main first, then the rest by id, version."""
    layers_label = cnb.EXTENSION_LAYERS if module == EXTENSION else cnb.BUILDPACK_LAYERS
    metadata = json_label(labels, cnb.BUILDPACKAGE_METADATA, where)
    layer_map = json_label(labels, layers_label, where)
    if not metadata or not layer_map:
        missing = cnb.BUILDPACKAGE_METADATA if not metadata else layers_label
        raise BuilderError(f"{where} is not a {module} package: it has no label {missing}")
    modules = []
    for buildpack_id, versions in layer_map.items():
        for version, entry in versions.items():
            descriptor = descriptor_from_layers_label(buildpack_id, version, entry, module)
            diff_id = entry.get("layerDiffID", "")
            modules.append(
                Module(
                    descriptor,
                    uri,
                    kind,
                    diff_id=diff_id,
                    reused=layers.cached(diff_id),
                    image_ref=where if kind == IMAGE else None,
                )
            )
    main = [
        m
        for m in modules
        if (m.descriptor.id, m.descriptor.version) == (metadata.get("id"), metadata.get("version"))
    ]
    if not main:
        raise BuilderError(
            f"buildpackage {where}: its main buildpack {metadata.get('id')}@"
            f"{metadata.get('version')} is not in its {cnb.BUILDPACK_LAYERS} label"
        )
    rest = sorted(
        (m for m in modules if m is not main[0]),
        key=lambda m: (m.descriptor.id, m.descriptor.version),
    )
    return [main[0], *rest]


def materialize_layers(
    store: Store,
    daemon: Daemon,
    config: BuilderConfig,
    modules: list[Module],
    inputs: InputCache,
    layers: LayerWriter,
    no_cache: bool,
) -> list[str]:
    """Every buildpack's layer in the store: buildpackage images the cache lacks imported with
    one `docker save` (pack's method: one each); directories and archives tarred unless their
    content key is known. Returns the buildpackage images imported."""
    misses: dict[str, list[str]] = {}  # buildpackage image -> diffIDs the cache lacks
    for module in modules:
        if module.image_ref and not module.reused:
            misses.setdefault(module.image_ref, []).append(module.diff_id)
    if misses and not layers.dry_run:
        # Imported here: where every buildpackage layer is cached, nothing is saved.
        from packcache.operations.importing import import_images

        for refs in [[ref] for ref in misses] if no_cache else [list(misses)]:
            import_images(store, daemon, refs, lease=layers.lease)
        for ref, diff_ids in misses.items():
            for diff_id in diff_ids:
                if not layers.cached(diff_id):
                    raise BuilderError(
                        f"buildpackage {ref}: its io.buildpacks.buildpack.layers label names "
                        f"layer {diff_id}, which the image does not have"
                    )
    for module in modules:
        if module.kind in LOCAL_KINDS:
            _materialize(module, config.base_dir, inputs, store, layers)
    return list(misses) if not layers.dry_run else []


def _materialize(
    module: Module, base_dir: Path, inputs: InputCache, store: Store, layers: LayerWriter
) -> None:
    """The layer of a directory or archive buildpack: from the cache when its content key is
    unchanged, else tarred (as pack's toDistTar) and written into the store. A `.cnb` file's
    layers are ingested by digest unless the cache has them."""
    path = local_path(module.source, base_dir)
    assert path is not None
    descriptor = module.descriptor
    if module.kind == BUILDPACKAGE_FILE:
        if module.reused or layers.dry_run:
            return
        package = open_oci_buildpackage(path)
        try:
            for layer in package.layers:
                if layer.diff_id == module.diff_id and not layers.cached(layer.diff_id):
                    with package.open_blob(layer.digest) as blob:
                        store.ingest_layer(
                            blob,
                            expected_digest=layer.digest,
                            expected_diff_id=layer.diff_id,
                            lease=layers.lease,
                        )
        finally:
            package.close()
        if not layers.cached(module.diff_id):
            raise BuilderError(f"buildpackage {path} has no layer {module.diff_id}")
        return
    kind = descriptor.kind  # the same directory tarred as an extension is another layer
    if module.kind == DIRECTORY:
        key = f"{kind}-dir:{directory_fingerprint(path)}"
    else:
        key = f"{kind}-archive:{file_digest(path)}"
    known = inputs.get(key)
    if known and layers.cached(known["diff_id"]):
        module.diff_id, module.reused = known["diff_id"], True
        return
    if module.kind == DIRECTORY:
        module.diff_id = layers.add(buildpack_layer(descriptor, directory_members(path)))
    else:
        module.diff_id = layer_from_archive(
            path, lambda: buildpack_layer(descriptor, archive_members(path)), layers
        )
    if not layers.dry_run:
        inputs.put(key, {"diff_id": module.diff_id})
