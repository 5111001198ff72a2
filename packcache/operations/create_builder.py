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

import tempfile
import time
from collections.abc import Callable
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
    default_dirs,
    env_layer,
    lifecycle_layer,
    single_file_layer,
)
from packcache.builder.rules import (
    BuilderError,
    build_user_and_group,
    image_config,
    json_label,
    resolve_order,
    resolve_order_extensions,
    resolve_system,
    validate_buildpacks,
    validate_extensions,
)
from packcache.builder.sources import (
    archive_members,
    file_digest,
    read_lifecycle,
)
from packcache.builder.targets import check_build_image, daemon_target, parse_target
from packcache.builder.uris import (
    BUILDPACKAGE_FILE,
    IMAGE,
    daemon_ref,
    local_path,
)
from packcache.digest import sha256_digest
from packcache.errors import NotFoundError, UsageError
from packcache.image import cnb
from packcache.image.inspected import InspectedImage
from packcache.operations.builder_buildpacks import collect_buildpacks, materialize_layers
from packcache.operations.builder_fetch import DAEMON, BuilderFetcher
from packcache.operations.builder_lifecycle import (
    DEFAULT_LIFECYCLE_VERSION,
    lifecycle_images,
    write_release_archive,
)
from packcache.operations.builder_modules import (
    LayerWriter,
    Module,
    add_exploded,
    add_flattened,
    flatten_group,
    layer_from_archive,
    split_flattened_packages,
)
from packcache.operations.builder_present import tag_if_present
from packcache.operations.builder_publish import (
    check_publish_name,
    publish_builder,
    publish_index,
    reach_destinations,
)
from packcache.operations.builder_report import (
    CREATOR,
    BuildpackReport,
    CreateBuilderReport,
    Registry,
    check_pull_policy,
)
from packcache.operations.importing import import_images
from packcache.operations.load_planners import (
    REUSE,
    SendPolicy,
    content_mirror,
    pack_method,
    prepare,
)
from packcache.operations.loading import LoadReport, base_image_needed, load_config
from packcache.operations.run_image_fetch import (
    PullPolicy,
    daemon_platform,
)
from packcache.progress import NO_PROGRESS, Progress, Task
from packcache.store.store import ImageRecord, Lease, Store
from packcache.transports.daemon import Daemon
from packcache.transports.registry import (
    DEFAULT_PLATFORM,
    Platform,
    RegistryClients,
)

SYSTEM_LABEL = "io.buildpacks.buildpack.system"  # pack's builder.SystemLabel

# -- the operation ---------------------------------------------------------------------------


def create_builder(
    store: Store,
    daemon: Daemon | None,
    name: str,
    config: BuilderConfig,
    *,
    pull_policy: str | PullPolicy = PullPolicy.IF_NOT_PRESENT,
    registry: Registry | None = None,
    extra_labels: dict[str, str] | None = None,
    options: BuilderOptions | None = None,
    no_cache: bool = False,
    dry_run: bool = False,
    lease: Lease | None = None,
    progress: Progress = NO_PROGRESS,
) -> CreateBuilderReport:
    """Build the builder `config` (builder.toml, as `read_config` checked it) describes."""
    start = time.perf_counter()
    registry = registry or Registry()
    policy = check_pull_policy(pull_policy)
    if registry.publish:
        check_publish_name(name)
        for tag in (options or BuilderOptions()).tags:
            check_publish_name(tag, "--tag")
        if no_cache:
            raise UsageError("--publish and --no-cache cannot be used together")
    with ExitStack() as cleanup:
        steps = cleanup.enter_context(progress.task(name, total=len(STEPS), unit="steps"))
        if no_cache:
            # pack's method, in a throwaway store: the real cache is neither read nor changed.
            scratch = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="packcache-")))
            store = Store.open(scratch / "cache")
            lease = cleanup.enter_context(store.lease("create-builder --no-cache"))
        if lease is None:
            lease = cleanup.enter_context(store.lease("create-builder"))
        registries = RegistryClients(registry.options)
        cleanup.callback(registries.close)
        if registry.publish and not dry_run:
            reach_destinations(name, (options or BuilderOptions()).tags, registries)
        if registry.publish or daemon is None:
            daemon = None
            platforms = list(registry.platforms) or _publish_platforms(
                options or BuilderOptions(), config
            )
            if policy is PullPolicy.NEVER:  # pack's config: a publish reads registries anyway
                policy = PullPolicy.IF_NOT_PRESENT
        else:
            platforms = [daemon_platform(daemon.info)]
        mirror = None
        if daemon is not None and not (no_cache or dry_run) and policy is not PullPolicy.NEVER:
            mirror = cleanup.enter_context(content_mirror(daemon))  # held until it is loaded
        reports = []
        for platform in platforms:
            fetcher = BuilderFetcher(
                store,
                daemon,
                policy,
                platform,
                registries,
                lease,
                remote_only=registry.publish or dry_run,
                pack_method=no_cache,
                mirror=mirror,
                stream=not dry_run,
            )
            cleanup.callback(fetcher.close)
            report = _create(
                store, fetcher, registry, name, config, extra_labels or {}, no_cache, dry_run,
                lease, steps, options or BuilderOptions(), by_digest=len(platforms) > 1,
            )  # fmt: skip
            reports.append(report)
        report = reports[0]
        if len(reports) > 1 and not dry_run:
            builders = [r.published for r in reports if r.published is not None]
            report.published = publish_index(
                name, builders, registries=registries, tags=(options or BuilderOptions()).tags
            )
            report.pulled = [pulled for r in reports for pulled in r.pulled]
    report.seconds = time.perf_counter() - start
    return report


def _publish_platforms(options: BuilderOptions, config: BuilderConfig) -> list[Platform]:
    """The platforms a publish builds for: --target, else [[targets]] (pack's order), else
    linux/amd64."""
    targets = [parse_target(text) for text in options.targets] or config.targets
    return [Platform(t.os or "linux", t.arch or "amd64", t.variant or None) for t in targets] or [
        DEFAULT_PLATFORM
    ]


def _create(
    store: Store,
    fetcher: BuilderFetcher,
    registry: Registry,
    name: str,
    config: BuilderConfig,
    extra_labels: dict[str, str],
    no_cache: bool,
    dry_run: bool,
    lease: Lease | None,
    steps: Task,
    options: BuilderOptions,
    by_digest: bool = False,
) -> CreateBuilderReport:
    inputs = InputCache(store)
    layers = LayerWriter(store, lease, dry_run)
    steps.describe(STEPS[0])
    if fetcher.daemon is not None:
        daemon = fetcher.daemon
        target = daemon_target(
            options.targets, config.targets, daemon.info.os, daemon.info.architecture
        )
        if not (no_cache or dry_run):
            prepare(daemon)  # containerd is connected to while the images are inspected
    base = _check_images(fetcher, config)
    if fetcher.daemon is not None:
        check_build_image(
            target, config.build_image, base.image.os or "linux", base.image.architecture
        )
        if not no_cache:
            fetcher.start_load(list(base.image.diff_ids))  # the builder starts with its layers
        if options.append_image_name_suffix:
            base.warnings.append(
                "--append-image-name-suffix will be ignored, use combined with --publish"
            )
    _next(steps, STEPS[1])
    lifecycle, lifecycle_layer_id = _lifecycle(
        config, inputs, layers, base.image.platform, fetcher, registry.lifecycle_image
    )
    _next(steps, STEPS[2])
    modules = collect_buildpacks(config, fetcher, layers)
    extensions = collect_buildpacks(config, fetcher, layers, EXTENSION)
    resolved = _check_buildpacks(config, modules, extensions, lifecycle, base)
    _next(steps, STEPS[3])
    imported = materialize_layers(
        store, fetcher.daemon, config, [*modules, *extensions], inputs, layers, no_cache
    )
    flattened = any(flatten_group(m, options.flatten) is not None for m in [*modules, *extensions])
    if flattened or _shares_a_layer([*modules, *extensions]):
        fetcher.settle()  # their layers are read: to be split, or joined in one
    split_flattened_packages([*modules, *extensions], store, inputs, layers)
    with layers.deferred():  # the builder's own layers, committed together
        lifecycle_diff_id = lifecycle_layer_id()
        _next(steps, STEPS[4])
        diff_ids, module_layers = _builder_layers(
            config, base, layers, modules, extensions, lifecycle_diff_id, resolved, options, inputs
        )
        layers.write_small()
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
        buildpacks=[BuildpackReport.of(m) for m in [*modules, *extensions]],
        imported=imported,
        layers_written=layers.written,
        load=None,
        warnings=[*base.warnings, *layers.warnings],
        tags=[tag for tag in options.tags if tag != name],
        pull_policy=fetcher.policy.value,
        pulled=fetcher.pulled,
    )
    if dry_run:
        return report
    _next(steps, STEPS[5])
    if registry.publish:
        report.published = publish_builder(
            store, name, builder_config, fetcher.fetched, registries=fetcher.registries,
            platform=fetcher.platform, lease=fetcher.lease, tags=options.tags,
            by_digest=by_digest, suffixed=options.append_image_name_suffix,
        )  # fmt: skip
        return report
    assert fetcher.daemon is not None
    policy = pack_method(len(base.image.diff_ids)) if no_cache else REUSE
    report.load, report.layers_streamed = _record_and_load(
        store, fetcher, config, name, builder_config, base, policy, lease, options.tags
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
    source: str = DAEMON  # where it was read: daemon, cache or registry


def _check_images(fetcher: BuilderFetcher, config: BuilderConfig) -> _BuildImage:
    """The build image: fetched as the pull policy says (builder_fetch), linux, with the CNB
    user and (when builder.toml names one) the same stack. Run images: checked when they can
    be read (pack only warns when it cannot see one)."""
    packages = [ref for bp in config.buildpacks if (ref := daemon_ref(bp.uri, config.base_dir))]
    run_refs = [ref for run in config.run_images for ref in [run.image, *(run.mirrors or [])]]
    if fetcher.daemon is not None:
        fetcher.daemon.prefetch([config.build_image, *run_refs, *packages])
    fetcher.prefetch([config.build_image, *packages], "buildpackage", run_refs)
    fetched = fetcher.image(config.build_image, "build image")
    build = fetched.image
    if (build.os or "linux") != "linux":
        raise BuilderError(f"build image {config.build_image}: only linux builders are supported")
    uid, gid = build_user_and_group(build, config.build_image)
    stack_id = build.labels.get(cnb.STACK_ID, "")
    if config.stack_id and stack_id != config.stack_id:
        raise BuilderError(
            f"stack '{config.stack_id}' from builder config is incompatible with stack "
            f"'{stack_id}' from build image {config.build_image}"
        )
    mixins = json_label(build.labels, cnb.STACK_MIXINS, config.build_image)
    base = _BuildImage(build, uid, gid, stack_id, mixins, source=fetched.source)
    for run_image in config.run_images:
        for ref in [run_image.image, *(run_image.mirrors or [])]:
            run_labels = fetcher.run_image_labels(ref)
            if run_labels is None:
                where = "registry" if fetcher.daemon is None else "Docker daemon"
                if fetcher.policy is not PullPolicy.NEVER and fetcher.daemon is not None:
                    where += " or its registry"
                base.warnings.append(f"run image {ref} is not in the {where}")
                continue
            if config.stack_id and run_labels.get(cnb.STACK_ID) != config.stack_id:
                raise BuilderError(
                    f"stack '{config.stack_id}' from builder config is incompatible with stack "
                    f"'{run_labels.get(cnb.STACK_ID, '')}' from run image {ref}"
                )
    return base


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
    modules: list[Module],
    extensions: list[Module],
    lifecycle: LifecycleDescriptor,
    base: _BuildImage,
) -> _Resolved:
    """Checks that need no layer (APIs, stacks, targets, orders, system buildpacks), before
    anything is written."""
    first_by_name: dict[str, Module] = {}
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


def _builder_layers(
    config: BuilderConfig,
    base: _BuildImage,
    layers: LayerWriter,
    modules: list[Module],
    extensions: list[Module],
    lifecycle_diff_id: str,
    resolved: _Resolved,
    options: BuilderOptions,
    inputs: InputCache,
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The builder's layers in pack's order (Builder.Save), each written into the store, and
    the io.buildpacks.buildpack.layers and io.buildpacks.extension.layers maps (the build
    image's, with the modules added)."""
    diff_ids = list(base.image.diff_ids)
    diff_ids.append(layers.add_small(default_dirs(base.uid, base.gid)))
    diff_ids.append(lifecycle_diff_id)
    module_layers = {}
    for kind, label, added in (
        (BUILDPACK, cnb.BUILDPACK_LAYERS, modules),
        (EXTENSION, cnb.EXTENSION_LAYERS, extensions),
    ):
        label_map = json_label(base.image.labels, label, config.build_image) or {}
        groups = options.flatten
        flat = [m for m in added if flatten_group(m, groups) is not None]
        diff_ids += add_flattened(flat, groups, label_map, layers, inputs, kind == BUILDPACK)
        exploded = [m for m in added if flatten_group(m, groups) is None]
        diff_ids += add_exploded(exploded, label_map, layers)
        module_layers[kind] = label_map
    order = L.order_toml(resolved.order, resolved.order_extensions)
    diff_ids.append(layers.add_small(single_file_layer(ORDER_PATH, order)))
    if config.system_pre or config.system_post:
        system = L.system_toml(resolved.system_pre, resolved.system_post)
        diff_ids.append(layers.add_small(single_file_layer(SYSTEM_PATH, system)))
    stack = L.stack_toml(config.stack_run_image, config.stack_run_image_mirrors)
    diff_ids.append(layers.add_small(single_file_layer(STACK_PATH, stack)))
    diff_ids.append(layers.add_small(single_file_layer(RUN_PATH, L.run_toml(_run_images(config)))))
    build_config_env = config.build_config_env()
    if build_config_env:
        diff_ids.append(layers.add_small(env_layer(f"{BUILD_CONFIG_DIR}/env", build_config_env)))
    diff_ids.append(layers.add_small(env_layer(f"{PLATFORM_DIR}/env", {})))  # pack always adds it
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
    base_metadata = json_label(base.image.labels, cnb.BUILDER_METADATA, config.build_image) or {}
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


def _shares_a_layer(modules: list[Module]) -> bool:
    """Do two modules of one package share a layer (which is then split)?"""
    sources = [(m.source, m.diff_id) for m in modules if m.kind in (IMAGE, BUILDPACKAGE_FILE)]
    return len(set(sources)) < len(sources)


def _record_and_load(
    store: Store,
    fetcher: BuilderFetcher,
    config: BuilderConfig,
    name: str,
    builder_config: bytes,
    base: _BuildImage,
    policy: SendPolicy,
    lease: Lease | None,
    tags: list[str] = (),
) -> tuple[LoadReport, int]:
    """Record the builder and load it: the build image's layers are never sent (where the
    daemon's store allows, with pack's policy), nor anything else the daemon has. `tags`
    name the same image too (pack's additional tags). A build image the daemon holds is read
    into the cache first where the load needs it. Layers still downloading are sent as they
    arrive (builder_fetch `supplied`: how many, returned); the builder is recorded once they
    are in the cache."""
    daemon = fetcher.daemon
    assert daemon is not None
    refs = [name, *(tag for tag in tags if tag != name)]
    supplied = fetcher.supplied()
    if not supplied and policy is REUSE:
        present = tag_if_present(store, daemon, builder_config, refs)
        if present is not None:
            fetcher.settle()
            return present, 0
    if not supplied:
        store.record_image(ImageRecord(config=builder_config, refs=refs))
    if base.source == DAEMON and base_image_needed(
        store, daemon, list(base.image.diff_ids), policy
    ):
        import_images(store, daemon, [config.build_image], lease=lease)
    loaded = load_config(
        store, daemon, builder_config, refs, lease=lease, policy=policy, supplied=supplied,
        planner=fetcher.started_load,
    )  # fmt: skip
    fetcher.settle()  # what prefetch pulled is committed and recorded
    if supplied:
        store.record_image(ImageRecord(config=builder_config, refs=refs))
    return loaded, len(supplied)


def _lifecycle(
    config: BuilderConfig,
    inputs: InputCache,
    layers: LayerWriter,
    platform: str,
    fetcher: BuilderFetcher,
    lifecycle_image: str | None,
) -> tuple[LifecycleDescriptor, Callable[[], str]]:
    """The lifecycle's descriptor, and what gives the diffID of its layer (written only when
    called; cached by archive digest or image layer, and by version). A `docker://` uri or a
    version is a lifecycle image (builder_lifecycle); anything else a local archive."""
    where = f"{config.path}:{config.lifecycle_line}" if config.lifecycle_line else str(config.path)
    uri = config.lifecycle_uri
    if uri.startswith("docker:"):
        return _lifecycle_from_image(daemon_ref(uri, config.base_dir) or uri, inputs, layers,
                                     platform, fetcher)  # fmt: skip
    if not uri:
        version = config.lifecycle_version or DEFAULT_LIFECYCLE_VERSION
        known = inputs.get(f"lifecycle-version:{version}:{platform}")
        if known and layers.cached(known["diff_id"]):
            return LifecycleDescriptor.from_json(known["descriptor"]), lambda: known["diff_id"]
        tried = []
        for ref in lifecycle_images(version, lifecycle_image):
            try:
                return _lifecycle_from_image(ref, inputs, layers, platform, fetcher)
            except NotFoundError:
                tried.append(ref)
        what = f"lifecycle.version = {version!r}" if config.lifecycle_version else (
            f"no lifecycle named, and pack's default version {version}"
        )  # fmt: skip
        raise BuilderError(
            f"{where}: {what} is neither cached nor reachable as a lifecycle image with "
            f"--pull-policy {fetcher.policy.value} (tried {', '.join(tried)}); set lifecycle.uri "
            "to a local lifecycle .tgz or a docker:// lifecycle image, or pack's config "
            "lifecycle-image to a repository that has one"
        )
    path = local_path(uri, config.base_dir)
    if path is None or not path.is_file():
        raise BuilderError(
            f"{where}: lifecycle.uri {uri!r} is not a local file nor a docker:// image "
            "(packcache does not download archives)"
        )
    return _lifecycle_from_archive(path, f"lifecycle-file:{file_digest(path)}", inputs, layers,
                                   platform)  # fmt: skip


def _lifecycle_from_image(
    ref: str, inputs: InputCache, layers: LayerWriter, platform: str, fetcher: BuilderFetcher
) -> tuple[LifecycleDescriptor, Callable[[], str]]:
    """A lifecycle image's last layer, made back into a release archive as pack does, then
    taken as a local archive (cached by that layer's diffID: rewritten once)."""
    diff_ids = fetcher.layers(ref, "lifecycle image")
    if not diff_ids:
        raise BuilderError(f"lifecycle image {ref} has no layers")
    key = f"lifecycle-image-layer:{diff_ids[-1]}"
    known = inputs.get(key)
    if known and layers.cached(known["diff_id"]):
        return _lifecycle_from_archive(None, key, inputs, layers, platform)
    with tempfile.TemporaryDirectory(prefix="packcache-lifecycle-") as scratch:
        archive = Path(scratch) / "lifecycle.tar"
        write_release_archive(layers.store, diff_ids[-1], archive, f"lifecycle image {ref}")
        descriptor, layer = _lifecycle_from_archive(archive, key, inputs, layers, platform)
        diff_id = layer()  # now: the archive is gone once this returns
    return descriptor, lambda: diff_id


def _lifecycle_from_archive(
    path: Path | None, key: str, inputs: InputCache, layers: LayerWriter, platform: str
) -> tuple[LifecycleDescriptor, Callable[[], str]]:
    """A lifecycle release archive at `path` (None: known under `key`, cached)."""
    known = inputs.get(key)
    if known and layers.cached(known["diff_id"]):
        descriptor = LifecycleDescriptor.from_json(known["descriptor"])
    else:
        assert path is not None
        descriptor = read_lifecycle(path).descriptor
        known = None

    def layer() -> str:
        if known is not None:
            diff_id = known["diff_id"]
        else:
            assert path is not None
            diff_id = layer_from_archive(
                path, lambda: lifecycle_layer(archive_members(path)), layers
            )
        if not layers.dry_run:
            value = {"diff_id": diff_id, "descriptor": descriptor.to_json()}
            inputs.put(key, value)
            inputs.put(f"lifecycle-version:{descriptor.version}:{platform}", value)
        return diff_id

    return descriptor, layer


def _ref_json(ref: ModuleRef) -> dict[str, Any]:
    item = dict(ref.info)
    if ref.optional:
        item["optional"] = True
    return item
