"""`packcache create-builder NAME --config builder.toml`: a builder image, as pack builds it,
with buildpack layers taken from the cache.

`_create` runs the phases in order: check the images (build image, run images); collect the
buildpacks (buildpackage images in the daemon by their io.buildpacks.buildpack.layers label,
directories and archives by a content key) and check them; materialize their layers (importing
only buildpackages whose layers the cache lacks, in one `docker save`); write the builder's own
layers as deterministic tars into the store; assemble the image config (labels, working dir,
history as pack writes them); record it and load it, sending only the layers the daemon lacks.

With --no-cache it does what pack does instead (a `docker save` per buildpackage, every
directory re-tarred, every layer but the build image's sent) in a throwaway store, leaving the
cache as it was; the load is the same code with pack's send policy.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from packcache import __version__
from packcache.builder import labels as L
from packcache.builder.config import BuilderConfig, ModuleRef
from packcache.builder.descriptors import (
    BUILDPACK,
    EXTENSION,
    LifecycleDescriptor,
    descriptor_from_layers_label,
)
from packcache.builder.flags import BuilderOptions
from packcache.builder.inputs import InputCache
from packcache.builder.layers import (
    BUILD_CONFIG_DIR,
    ORDER_PATH,
    PLATFORM_DIR,
    RUN_PATH,
    STACK_PATH,
    SYSTEM_PATH,
    buildpack_layer,
    default_dirs,
    env_layer,
    lifecycle_layer,
    single_file_layer,
)
from packcache.builder.rules import (
    BuilderError,
    image_config,
    resolve_order,
    resolve_order_extensions,
    resolve_system,
    validate_buildpacks,
    validate_extensions,
)
from packcache.builder.sources import (
    SourceError,
    archive_descriptor,
    archive_members,
    directory_descriptor,
    directory_fingerprint,
    directory_members,
    file_digest,
    open_oci_buildpackage,
    read_lifecycle,
)
from packcache.builder.targets import check_build_image, daemon_target
from packcache.builder.tarwriter import TarEntry
from packcache.builder.uris import (
    ARCHIVE,
    BUILDPACKAGE_FILE,
    DIRECTORY,
    IMAGE,
    LOCAL_KINDS,
    BuildpackSource,
    classify_buildpack,
    daemon_ref,
    local_path,
)
from packcache.digest import sha256_digest
from packcache.errors import NotFoundError, PackcacheError, UsageError
from packcache.image import cnb
from packcache.image.inspected import InspectedImage
from packcache.operations.builder_modules import LayerWriter as _Layers
from packcache.operations.builder_modules import Module as _Module
from packcache.operations.builder_modules import (
    add_exploded,
    add_flattened,
    flatten_group,
    split_flattened_packages,
)
from packcache.operations.importing import import_images
from packcache.operations.load_planners import REUSE, SendPolicy, pack_method
from packcache.operations.loading import LoadReport, base_image_needed, load_config
from packcache.progress import NO_PROGRESS, Progress, Task
from packcache.store.store import ImageRecord, Lease, Store
from packcache.transports.daemon import Daemon

PULL_POLICIES = ("never", "if-not-present")
SYSTEM_LABEL = "io.buildpacks.buildpack.system"  # pack's builder.SystemLabel
CREATOR = "packcache"


@dataclass
class BuildpackReport:
    id: str
    version: str
    source: str  # the uri as builder.toml wrote it
    kind: str  # image, directory, archive, buildpackage-file
    diff_id: str
    reused: bool  # taken from the cache without reading the source
    module: str = BUILDPACK  # or extension


@dataclass
class CreateBuilderReport:
    name: str
    dry_run: bool
    no_cache: bool
    image_id: str | None  # the daemon's ID for the builder (None in a dry run)
    config_digest: str | None
    diff_ids: list[str]
    buildpacks: list[BuildpackReport]
    imported: list[str]  # buildpackage images read with `docker save`
    layers_written: int  # new builder layers written to the store
    load: LoadReport | None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tags: list[str] = field(default_factory=list)  # the other names the builder was given


# -- small helpers ---------------------------------------------------------------------------


def _ensure_image(daemon: Daemon, ref: str, pull_policy: str, what: str) -> InspectedImage:
    """`docker inspect` of an image, pulled first if allowed and missing."""
    try:
        return daemon.inspect_image(ref)
    except NotFoundError:
        if pull_policy == "never":
            raise NotFoundError(
                f"{what} {ref} is not in the Docker daemon (--pull-policy never)",
                hint=f"`docker pull {ref}` puts it there, or --pull-policy if-not-present "
                "lets create-builder pull it",
            ) from None
    try:
        daemon.pull(ref)
    except PackcacheError as exc:
        raise NotFoundError(
            f"{what} {ref} is not in the Docker daemon and pulling it failed: {exc}"
        ) from exc
    return daemon.inspect_image(ref)


def _json_label(labels: Mapping[str, str], name: str, image: str) -> Any:
    if not labels.get(name):
        return None
    try:
        return json.loads(labels[name])
    except ValueError as exc:
        raise BuilderError(f"image {image}: label {name} is not valid JSON: {exc}") from exc


def _user_and_group(build: InspectedImage, ref: str) -> tuple[int, int]:
    """CNB_USER_ID / CNB_GROUP_ID of the build image, required as pack requires them."""
    env = build.config.env_map()
    ids = []
    for name in ("CNB_USER_ID", "CNB_GROUP_ID"):
        if not env.get(name):
            raise BuilderError(f"build image {ref} is missing required env var {name}")
        try:
            ids.append(int(env[name]))
        except ValueError:
            raise BuilderError(
                f"build image {ref}: {name}={env[name]} should be an integer"
            ) from None
    return ids[0], ids[1]


# -- the operation ---------------------------------------------------------------------------


def check_pull_policy(pull_policy: str) -> None:
    if pull_policy not in PULL_POLICIES:
        raise UsageError(f"--pull-policy must be one of {', '.join(PULL_POLICIES)}")


def create_builder(
    store: Store,
    daemon: Daemon,
    name: str,
    config: BuilderConfig,
    *,
    pull_policy: str = "if-not-present",
    extra_labels: dict[str, str] | None = None,
    options: BuilderOptions | None = None,
    no_cache: bool = False,
    dry_run: bool = False,
    lease: Lease | None = None,
    progress: Progress = NO_PROGRESS,
) -> CreateBuilderReport:
    """Build the builder `config` (builder.toml, as `read_config` checked it) describes."""
    start = time.perf_counter()
    check_pull_policy(pull_policy)
    with ExitStack() as cleanup:
        steps = cleanup.enter_context(progress.task(name, total=len(STEPS), unit="steps"))
        if no_cache:
            # pack's method, in a throwaway store: the real cache is neither read nor changed.
            scratch = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="packcache-")))
            store = Store.open(scratch / "cache")
            lease = cleanup.enter_context(store.lease("create-builder --no-cache"))
        report = _create(
            store, daemon, name, config, pull_policy, extra_labels or {}, no_cache, dry_run, lease,
            steps, options or BuilderOptions(),
        )  # fmt: skip
    report.seconds = time.perf_counter() - start
    return report


def _create(
    store: Store,
    daemon: Daemon,
    name: str,
    config: BuilderConfig,
    pull_policy: str,
    extra_labels: dict[str, str],
    no_cache: bool,
    dry_run: bool,
    lease: Lease | None,
    steps: Task,
    options: BuilderOptions,
) -> CreateBuilderReport:
    inputs = InputCache(store)
    layers = _Layers(store, lease, dry_run)
    steps.describe(STEPS[0])
    target = daemon_target(
        options.targets, config.targets, daemon.info.os, daemon.info.architecture
    )
    base = _check_images(daemon, config, pull_policy)
    check_build_image(target, config.build_image, base.image.os or "linux", base.image.architecture)
    if options.append_image_name_suffix:
        base.warnings.append(
            "--append-image-name-suffix will be ignored, use combined with --publish"
        )
    _next(steps, STEPS[1])
    lifecycle, lifecycle_layer_id = _lifecycle(config, inputs, layers, base.image.platform)
    _next(steps, STEPS[2])
    modules = _collect_buildpacks(config, daemon, pull_policy, layers)
    extensions = _collect_buildpacks(config, daemon, pull_policy, layers, EXTENSION)
    resolved = _check_buildpacks(config, modules, extensions, lifecycle, base)
    _next(steps, STEPS[3])
    imported = _materialize_layers(
        store, daemon, config, [*modules, *extensions], inputs, layers, no_cache
    )
    split_flattened_packages([*modules, *extensions], store, inputs, layers)
    lifecycle_diff_id = lifecycle_layer_id()
    _next(steps, STEPS[4])
    diff_ids, module_layers = _builder_layers(
        config, base, layers, modules, extensions, lifecycle_diff_id, resolved, options, inputs
    )
    labels = _builder_labels(
        config, base, {**base.image.labels, **extra_labels}, module_layers, resolved, lifecycle
    )
    builder_config = image_config(base.image, diff_ids, labels)
    report = CreateBuilderReport(
        name=name,
        dry_run=dry_run,
        no_cache=no_cache,
        image_id=None,
        config_digest=sha256_digest(builder_config),
        diff_ids=diff_ids,
        buildpacks=[
            BuildpackReport(
                m.descriptor.id,
                m.descriptor.version,
                m.source,
                m.kind,
                m.diff_id,
                m.reused,
                m.descriptor.kind,
            )
            for m in [*modules, *extensions]
        ],
        imported=imported,
        layers_written=layers.written,
        load=None,
        warnings=[*base.warnings, *layers.warnings],
        tags=[tag for tag in options.tags if tag != name],
    )
    if not dry_run:
        _next(steps, STEPS[5])
        policy = pack_method(len(base.image.diff_ids)) if no_cache else REUSE
        report.load = _record_and_load(
            store, daemon, config, name, builder_config, base, policy, lease, options.tags
        )
        report.image_id = report.load.image_id
    return report


# What the progress display names while each phase of _create runs.
STEPS = (
    "checking the build and run images",
    "getting the lifecycle",
    "reading the buildpacks",
    "putting every buildpack layer in the cache",
    "writing the builder's config",
    "loading the builder into the daemon",
)


def _next(steps: Task, name: str) -> None:
    steps.advance()
    steps.describe(name)


# -- the phases, in the order _create runs them --------------------------------------------


@dataclass
class _BuildImage:
    """The build image as the builder starts from it, and what was found about it."""

    image: InspectedImage
    uid: int
    gid: int
    stack_id: str
    mixins: list[str] | None
    warnings: list[str] = field(default_factory=list)


def _check_images(daemon: Daemon, config: BuilderConfig, pull_policy: str) -> _BuildImage:
    """The build image: in the daemon, linux, with the CNB user and (when builder.toml names
    one) the same stack. Run images: checked when present (pack only warns when it cannot
    see one)."""
    daemon.prefetch(
        [
            config.build_image,
            *(ref for run in config.run_images for ref in [run.image, *(run.mirrors or [])]),
            *filter(None, (daemon_ref(bp.uri, config.base_dir) for bp in config.buildpacks)),
        ]
    )
    build = _ensure_image(daemon, config.build_image, pull_policy, "build image")
    if (build.os or "linux") != "linux":
        raise BuilderError(f"build image {config.build_image}: only linux builders are supported")
    uid, gid = _user_and_group(build, config.build_image)
    stack_id = build.labels.get(cnb.STACK_ID, "")
    if config.stack_id and stack_id != config.stack_id:
        raise BuilderError(
            f"stack '{config.stack_id}' from builder config is incompatible with stack "
            f"'{stack_id}' from build image {config.build_image}"
        )
    mixins = _json_label(build.labels, cnb.STACK_MIXINS, config.build_image)
    base = _BuildImage(build, uid, gid, stack_id, mixins)
    for run_image in config.run_images:
        for ref in [run_image.image, *(run_image.mirrors or [])]:
            try:
                run_labels = daemon.inspect_image(ref).labels
            except NotFoundError:
                base.warnings.append(f"run image {ref} is not in the Docker daemon")
                continue
            if config.stack_id and run_labels.get(cnb.STACK_ID) != config.stack_id:
                raise BuilderError(
                    f"stack '{config.stack_id}' from builder config is incompatible with stack "
                    f"'{run_labels.get(cnb.STACK_ID, '')}' from run image {ref}"
                )
    return base


def _collect_buildpacks(
    config: BuilderConfig, daemon: Daemon, pull_policy: str, layers: _Layers, kind=BUILDPACK
) -> list[_Module]:
    """Every buildpack the [[buildpacks]] entries provide (or extension the [[extensions]]
    entries do), with what each source says about it (labels, buildpack.toml or
    extension.toml); an entry's id and version must match its main module."""
    modules: list[_Module] = []
    for entry in config.extensions if kind == EXTENSION else config.buildpacks:
        source = classify_buildpack(entry.uri, config.base_dir)
        found = _buildpacks_from(source, daemon, pull_policy, layers, kind)
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


@dataclass
class _Resolved:
    """What the builder.toml refs resolve to, with the info of every module added."""

    infos: list[dict[str, Any]]  # every buildpack added (pack lists each)
    extension_infos: list[dict[str, Any]]
    order: list[list[dict[str, Any]]]
    order_extensions: list[list[dict[str, Any]]]
    system_pre: list[dict[str, Any]]
    system_post: list[dict[str, Any]]


def _check_buildpacks(
    config: BuilderConfig,
    modules: list[_Module],
    extensions: list[_Module],
    lifecycle: LifecycleDescriptor,
    base: _BuildImage,
) -> _Resolved:
    """Checks that need no layer (APIs, stacks, targets, orders, system buildpacks), before
    anything is written."""
    first_by_name: dict[str, _Module] = {}
    for module in modules:
        first_by_name.setdefault(module.descriptor.full_name, module)
    infos = [module.descriptor.info for module in modules]
    validate_buildpacks(
        {name: module.descriptor for name, module in first_by_name.items()},
        lifecycle,
        base.stack_id,
        base.mixins,
        base.image,
    )
    validate_extensions([m.descriptor for m in extensions], lifecycle, config)
    extension_infos = [module.descriptor.info for module in extensions]
    return _Resolved(
        infos,
        extension_infos,
        resolve_order(config, infos),
        resolve_order_extensions(config, extension_infos),
        *resolve_system(config, infos),
    )


def _materialize_layers(
    store: Store,
    daemon: Daemon,
    config: BuilderConfig,
    modules: list[_Module],
    inputs: InputCache,
    layers: _Layers,
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


def _builder_layers(
    config: BuilderConfig,
    base: _BuildImage,
    layers: _Layers,
    modules: list[_Module],
    extensions: list[_Module],
    lifecycle_diff_id: str,
    resolved: _Resolved,
    options: BuilderOptions,
    inputs: InputCache,
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The builder's layers in pack's order (Builder.Save), each written into the store, and
    the io.buildpacks.buildpack.layers and io.buildpacks.extension.layers maps (the build
    image's, with the modules added)."""
    diff_ids = list(base.image.diff_ids)
    diff_ids.append(layers.add(default_dirs(base.uid, base.gid)))
    diff_ids.append(lifecycle_diff_id)
    module_layers = {}
    for kind, label, added in (
        (BUILDPACK, cnb.BUILDPACK_LAYERS, modules),
        (EXTENSION, cnb.EXTENSION_LAYERS, extensions),
    ):
        label_map = _json_label(base.image.labels, label, config.build_image) or {}
        groups = options.flatten
        flat = [m for m in added if flatten_group(m, groups) is not None]
        diff_ids += add_flattened(flat, groups, label_map, layers, inputs, kind == BUILDPACK)
        exploded = [m for m in added if flatten_group(m, groups) is None]
        diff_ids += add_exploded(exploded, label_map, layers)
        module_layers[kind] = label_map
    order = L.order_toml(resolved.order, resolved.order_extensions)
    diff_ids.append(layers.add(single_file_layer(ORDER_PATH, order)))
    if config.system_pre or config.system_post:
        system = L.system_toml(resolved.system_pre, resolved.system_post)
        diff_ids.append(layers.add(single_file_layer(SYSTEM_PATH, system)))
    stack = L.stack_toml(config.stack_run_image, config.stack_run_image_mirrors)
    diff_ids.append(layers.add(single_file_layer(STACK_PATH, stack)))
    diff_ids.append(layers.add(single_file_layer(RUN_PATH, L.run_toml(_run_images(config)))))
    build_config_env = config.build_config_env()
    if build_config_env:
        diff_ids.append(layers.add(env_layer(f"{BUILD_CONFIG_DIR}/env", build_config_env)))
    diff_ids.append(layers.add(env_layer(f"{PLATFORM_DIR}/env", {})))  # pack always adds it
    return diff_ids, module_layers


def _run_images(config: BuilderConfig) -> list[dict[str, Any]]:
    return [L.run_image_json(r.image, r.mirrors) for r in config.run_images]


def _builder_labels(
    config: BuilderConfig,
    base: _BuildImage,
    labels: dict[str, str],
    module_layers: dict[str, dict[str, Any]],
    resolved: _Resolved,
    lifecycle: LifecycleDescriptor,
) -> dict[str, str]:
    """`labels` (the build image's and the user's) with pack's builder labels set."""
    base_metadata = _json_label(base.image.labels, cnb.BUILDER_METADATA, config.build_image) or {}
    labels[cnb.BUILDPACK_LAYERS] = L.buildpack_layers_label(module_layers[BUILDPACK])
    labels[cnb.EXTENSION_LAYERS] = L.buildpack_layers_label(module_layers[EXTENSION])
    labels[cnb.BUILDPACK_ORDER] = L.order_json(
        None if config.order is None else [[_ref_json(r) for r in g] for g in config.order]
    )
    labels[cnb.ORDER_EXTENSIONS] = L.order_json(
        None
        if config.order_extensions is None
        else [[_ref_json(replace(r, optional=False)) for r in g] for g in config.order_extensions]
    )
    if config.system_pre or config.system_post:
        labels[SYSTEM_LABEL] = L.system_json(
            [_ref_json(r) for r in config.system_pre], [_ref_json(r) for r in config.system_post]
        )
    labels[cnb.BUILDER_METADATA] = L.builder_metadata(
        description=config.description,
        extensions=[*(base_metadata.get("extensions") or []), *resolved.extension_infos],
        buildpacks=[*(base_metadata.get("buildpacks") or []), *resolved.infos],
        stack_run_image=L.run_image_json(
            config.stack_run_image if config.stack_id else "",
            config.stack_run_image_mirrors if config.stack_id else None,
        ),
        lifecycle=lifecycle,
        created_by={"name": CREATOR, "version": __version__},
        run_images=_run_images(config),
    )
    labels[cnb.STACK_MIXINS] = L.go_json(base.mixins)
    return labels


def _record_and_load(
    store: Store,
    daemon: Daemon,
    config: BuilderConfig,
    name: str,
    builder_config: bytes,
    base: _BuildImage,
    policy: SendPolicy,
    lease: Lease | None,
    tags: list[str] = (),
) -> LoadReport:
    """Record the builder and load it: the build image's layers are never sent (where the
    daemon's store allows, with pack's policy), nor anything else the daemon has. `tags`
    name the same image too (pack's additional tags)."""
    refs = [name, *(tag for tag in tags if tag != name)]
    store.record_image(ImageRecord(config=builder_config, refs=refs))
    if base_image_needed(store, daemon, list(base.image.diff_ids), policy):
        import_images(store, daemon, [config.build_image], lease=lease)
    return load_config(store, daemon, builder_config, refs, lease=lease, policy=policy)


def _lifecycle(
    config: BuilderConfig, inputs: InputCache, layers: _Layers, platform: str
) -> tuple[LifecycleDescriptor, Callable[[], str]]:
    """The lifecycle's descriptor, and what gives the diffID of its layer (written only when
    called; cached by archive digest, and by version for builder.toml files naming only it)."""
    where = f"{config.path}:{config.lifecycle_line}" if config.lifecycle_line else str(config.path)
    if not config.lifecycle_uri:
        version = config.lifecycle_version
        known = inputs.get(f"lifecycle-version:{version}:{platform}") if version else None
        if known and layers.cached(known["diff_id"]):
            return LifecycleDescriptor.from_json(known["descriptor"]), lambda: known["diff_id"]
        if version:
            raise BuilderError(
                f"{where}: lifecycle.version = {version!r}: packcache cannot download a "
                f"lifecycle and has none of version {version} for {platform} cached; set "
                "lifecycle.uri to a local lifecycle .tgz (one create-builder with it caches it "
                "by version)"
            )
        raise BuilderError(
            f"{where}: no lifecycle: packcache cannot download pack's default lifecycle; "
            "set [lifecycle] uri to a local lifecycle .tgz"
        )
    path = local_path(config.lifecycle_uri, config.base_dir)
    if path is None or not path.is_file():
        raise BuilderError(
            f"{where}: lifecycle.uri {config.lifecycle_uri!r} is not a local file "
            "(packcache does not download)"
        )
    key = f"lifecycle-file:{file_digest(path)}"
    known = inputs.get(key)
    if known and layers.cached(known["diff_id"]):
        descriptor = LifecycleDescriptor.from_json(known["descriptor"])
    else:
        descriptor = read_lifecycle(path).descriptor
        known = None

    def layer() -> str:
        if known is not None:
            diff_id = known["diff_id"]
        else:
            diff_id = _from_archive(path, lambda: lifecycle_layer(archive_members(path)), layers)
        if not layers.dry_run:
            value = {"diff_id": diff_id, "descriptor": descriptor.to_json()}
            inputs.put(key, value)
            inputs.put(f"lifecycle-version:{descriptor.version}:{platform}", value)
        return diff_id

    return descriptor, layer


def _from_archive(path: Path, entries: Callable[[], Iterable[TarEntry]], layers: _Layers) -> str:
    """Write a layer made from an archive's members; a damaged archive is a clear error (the
    tar reader raises while member bytes stream, outside the member generator)."""
    try:
        return layers.add(entries())
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise SourceError(f"cannot read archive {path}: {exc}") from exc


def _buildpacks_from(
    source: BuildpackSource, daemon: Daemon, pull_policy: str, layers: _Layers, module: str
) -> list[_Module]:
    """The buildpacks one [[buildpacks]] entry provides, the main one first (for an
    [[extensions]] entry, its one extension: pack's extensions are never composite)."""
    uri = source.uri
    if source.kind == DIRECTORY:
        descriptor = directory_descriptor(source.path, module)
        return [_Module(descriptor, uri, DIRECTORY, path=source.path)]
    if source.kind == BUILDPACKAGE_FILE:
        package = open_oci_buildpackage(source.path)
        try:
            found = _package_modules(
                package.labels, str(source.path), uri, source.kind, layers, module
            )
        finally:
            package.close()
    elif source.kind == ARCHIVE:
        return [_Module(archive_descriptor(source.path, module), uri, ARCHIVE, path=source.path)]
    else:
        what = "extension package" if module == EXTENSION else "buildpackage"
        inspected = _ensure_image(daemon, source.ref, pull_policy, what)
        found = _package_modules(inspected.labels, source.ref, uri, IMAGE, layers, module)
    return found[:1] if module == EXTENSION else found


def _package_modules(
    labels: Mapping[str, str], where: str, uri: str, kind: str, layers: _Layers, module: str
) -> list[_Module]:
    """A package's modules from its labels: main first, then the rest by id, version."""
    layers_label = cnb.EXTENSION_LAYERS if module == EXTENSION else cnb.BUILDPACK_LAYERS
    metadata = _json_label(labels, cnb.BUILDPACKAGE_METADATA, where)
    layer_map = _json_label(labels, layers_label, where)
    if not metadata or not layer_map:
        missing = cnb.BUILDPACKAGE_METADATA if not metadata else layers_label
        raise BuilderError(f"{where} is not a {module} package: it has no label {missing}")
    modules = []
    for buildpack_id, versions in layer_map.items():
        for version, entry in versions.items():
            descriptor = descriptor_from_layers_label(buildpack_id, version, entry, module)
            diff_id = entry.get("layerDiffID", "")
            modules.append(
                _Module(
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


def _materialize(
    module: _Module, base_dir: Path, inputs: InputCache, store: Store, layers: _Layers
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
        module.diff_id = _from_archive(
            path, lambda: buildpack_layer(descriptor, archive_members(path)), layers
        )
    if not layers.dry_run:
        inputs.put(key, {"diff_id": module.diff_id})


def _ref_json(ref: ModuleRef) -> dict[str, Any]:
    item = dict(ref.info)
    if ref.optional:
        item["optional"] = True
    return item
