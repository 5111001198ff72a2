"""`packcache create-builder NAME --from-builder BUILDER [--buildpack URI ...] [--extension URI
...] [--env K=V ...] [--order GROUP ...] [--run-image IMAGE]`: the builder `pack build` makes
ephemerally for these options (pack's createEphemeralBuilder, internal/builder/builder.go
Save), made once and named, so `pack build --builder NAME` needs no ephemeral builder.

The existing builder is never saved: its config and labels come from `docker inspect`, its
layers stay where the daemon has them (on a containerd store its manifest is read from the
daemon's containerd to name them). Only the layers pack adds are written (the default
directories, the new buildpacks and extensions, order, stack, run and env) and sent with the
new config, on the one load path (a partial `docker load`, or blobs and an image record in
containerd).

With --no-cache it does what pack does instead: the builder is read with `docker save` into a
throwaway store and loaded back with pack's send policy. With --publish the result goes to the
registry NAME names instead (derived_publish: the base builder's blobs skipped or mounted).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packcache import __version__
from packcache.builder import labels as L
from packcache.builder.config import MODULE_INFO_KEYS, BuilderConfig, BuildpackSource, ModuleRef
from packcache.builder.descriptors import (
    BUILDPACK,
    EXTENSION,
    BuildpackDescriptor,
    LifecycleDescriptor,
    descriptor_from_layers_label,
)
from packcache.builder.inputs import InputCache
from packcache.builder.layers import (
    ORDER_PATH,
    PLATFORM_DIR,
    RUN_PATH,
    STACK_PATH,
    default_dirs,
    env_layer,
    single_file_layer,
)
from packcache.builder.rules import (
    BuilderError,
    build_user_and_group,
    image_config,
    json_label,
    resolve_order,
    resolve_order_extensions,
    validate_buildpacks,
    validate_extensions,
)
from packcache.builder.uris import daemon_ref, local_path
from packcache.digest import sha256_digest
from packcache.errors import UsageError
from packcache.image import cnb
from packcache.image.inspected import InspectedImage
from packcache.operations.builder_buildpacks import collect_buildpacks, materialize_layers
from packcache.operations.builder_fetch import BuilderFetcher, FetchedImage
from packcache.operations.builder_modules import LayerWriter, Module, add_exploded
from packcache.operations.builder_present import connect_unless_recreated, tag_if_present
from packcache.operations.builder_report import (
    CREATOR,
    BuildpackReport,
    CreateBuilderReport,
    Registry,
    check_pull_policy,
)
from packcache.operations.load_planners import (
    REUSE,
    SendPolicy,
    content_mirror,
    pack_method,
    planner_for,
)
from packcache.operations.loading import LoadReport, load_config
from packcache.operations.run_image_fetch import PullPolicy, daemon_platform
from packcache.progress import NO_PROGRESS, Progress
from packcache.store.store import Lease, Store
from packcache.transports.daemon import Daemon
from packcache.transports.registry import DEFAULT_PLATFORM, RegistryClients

FROM_BUILDER = "from=builder"  # pack's locator for the builder's own order
_BUILDER_PREFIXES = ("urn:cnb:builder:", "from=builder:")  # a buildpack already on the builder
ORDER_OPTION = Path("--order")  # where order errors point: the option, group by group
EXTENSION_OPTION = Path("--extension")


@dataclass
class DerivedBuilderRequest:
    """What `pack build` would change on the builder: its options, as given."""

    from_builder: str
    buildpacks: list[str] = field(default_factory=list)  # pack build --buildpack locators
    extensions: list[str] = field(default_factory=list)  # pack build --extension locators
    env: dict[str, str] = field(default_factory=dict)  # pack build --env: /platform/env files
    order: list[str] | None = None  # groups of "ID[@VERSION][?]" (? optional), comma-separated
    run_image: str | None = None
    base_dir: Path = Path(".")  # what relative buildpack paths are relative to


@dataclass
class DerivedBuilderReport(CreateBuilderReport):
    from_builder: str = ""
    from_builder_id: str = ""
    order_replaced: bool = False
    saved_builder: bool = False  # the builder was read with `docker save`


def parse_env(values: list[str]) -> dict[str, str]:
    """--env K=V (or K alone: its value from packcache's environment, as pack build does)."""
    env: dict[str, str] = {}
    for value in values:
        key, equals, rest = value.partition("=")
        if not key or "/" in key or key in (".", ".."):
            raise UsageError(f"--env {value!r}: expected NAME=VALUE")
        env[key] = rest if equals else os.environ.get(key, "")
    return env


def parse_order(groups: list[str]) -> list[list[ModuleRef]]:
    """--order GROUP per group: comma-separated ID[@VERSION], a trailing ? for optional."""
    order = []
    for line, group in enumerate(groups, start=1):
        refs = []
        for item in (part.strip() for part in group.split(",")):
            optional = item.endswith("?")
            item = item.removesuffix("?")
            bp_id, _, version = item.partition("@")
            if not bp_id:
                raise UsageError(f"--order {group!r}: expected ID[@VERSION][?],...")
            info = {"id": bp_id, **({"version": version} if version else {})}
            refs.append(ModuleRef(info, optional, line))
        order.append(refs)
    return order


# -- the builder derived from -----------------------------------------------------------------


@dataclass
class _Base:
    """The existing builder, as its labels describe it."""

    ref: str
    image: InspectedImage
    uid: int
    gid: int
    stack_id: str
    mixins: list[str] | None
    metadata: dict[str, Any]
    lifecycle: LifecycleDescriptor
    layers: dict[str, dict[str, dict[str, Any]]]  # io.buildpacks.buildpack.layers
    order: list[list[ModuleRef]]  # io.buildpacks.buildpack.order

    @property
    def infos(self) -> list[dict[str, Any]]:
        return [_module_info(info) for info in self.metadata.get("buildpacks") or []]

    @property
    def extension_infos(self) -> list[dict[str, Any]]:
        return [_module_info(info) for info in self.metadata.get("extensions") or []]

    def label_map(self, label: str) -> dict[str, Any]:
        return json_label(self.image.labels, label, self.ref) or {}

    def order_label(self, label: str) -> list[list[ModuleRef]]:
        """An order label as pack's builder reads it back (its refs, `optional` apart)."""
        return [
            [ModuleRef(_module_info(r), bool(r.get("optional"))) for r in entry.get("group") or []]
            for entry in json_label(self.image.labels, label, self.ref) or []
        ]


def _module_info(raw: dict[str, Any]) -> dict[str, Any]:
    """A ModuleInfo as Go marshals it: its fields in order, empty ones left out."""
    return {key: raw[key] for key in MODULE_INFO_KEYS if raw.get(key)}


def _builder_in_daemon(fetcher: BuilderFetcher, request: DerivedBuilderRequest) -> InspectedImage:
    """The existing builder, in the daemon: a derived builder keeps its layers there and sends
    only what pack adds. Fetched as the policy says; one pulled into the cache is loaded (only
    the layers the daemon lacks) and then read back from the daemon. The images named as
    buildpacks are asked of the daemon with it, at once."""
    ref = request.from_builder
    assert fetcher.daemon is not None
    locators = [*request.buildpacks, *request.extensions]
    images = (daemon_ref(uri, request.base_dir) for uri in locators)
    fetcher.daemon.prefetch([ref, *filter(None, images)])
    fetched: FetchedImage = fetcher.image(ref, "builder")
    if fetched.source == "daemon" or fetcher.remote_only:
        return fetched.image
    daemon = fetcher.daemon
    assert daemon is not None
    load_config(
        fetcher.store, daemon, fetcher.store.image_config(fetched.image.id), [ref],
        lease=fetcher.lease,
    )  # fmt: skip
    return daemon.inspect_image(ref)


def _read_base(image: InspectedImage, ref: str) -> _Base:
    """The builder's labels, checked as pack's builder.FromImage checks them."""
    metadata = json_label(image.labels, cnb.BUILDER_METADATA, ref)
    if not isinstance(metadata, dict):
        raise BuilderError(
            f"builder {ref} missing label {cnb.BUILDER_METADATA} -- try recreating builder"
        )
    try:
        lifecycle = LifecycleDescriptor.from_json(metadata["lifecycle"])
    except (KeyError, TypeError) as exc:
        raise BuilderError(f"builder {ref}: {cnb.BUILDER_METADATA} has no lifecycle") from exc
    uid, gid = build_user_and_group(image, ref)
    base = _Base(
        ref=ref,
        image=image,
        uid=uid,
        gid=gid,
        stack_id=image.labels.get(cnb.STACK_ID, ""),
        mixins=json_label(image.labels, cnb.STACK_MIXINS, ref),
        metadata=metadata,
        lifecycle=lifecycle,
        layers=json_label(image.labels, cnb.BUILDPACK_LAYERS, ref) or {},
        order=[],
    )
    base.order = base.order_label(cnb.BUILDPACK_ORDER)
    return base


# -- pack build's buildpack locators ----------------------------------------------------------


def _on_builder(
    locator: str, base: _Base, base_dir: Path, kind: str = "buildpack"
) -> dict[str, Any] | None:
    """The ref a locator names when it is a buildpack (or extension) already on the builder
    (pack's IDLocator: urn:cnb:builder:ID[@VERSION], or a bare ID[@VERSION] the builder has)."""
    infos = base.extension_infos if kind == EXTENSION else base.infos
    prefixed = locator.startswith(_BUILDER_PREFIXES)
    bare = locator
    for prefix in _BUILDER_PREFIXES:
        bare = bare.removeprefix(prefix)
    bp_id, _, version = bare.partition("@")
    found = any(info["id"] == bp_id and version in ("", info.get("version")) for info in infos)
    if prefixed and not found:
        raise BuilderError(f"--{kind} {locator}: no {kind} {bare} is on builder {base.ref}")
    if not found or (not prefixed and local_path(locator, base_dir) is not None):
        return None
    return {"id": bp_id, **({"version": version} if version else {})}


@dataclass
class _Plan:
    """The buildpacks to add, and the order pack would set (None: the builder's stays)."""

    sources: list[BuildpackSource]
    order: list[list[Any]] | None  # ModuleRef, or a BuildpackSource for its main buildpack


def _plan_buildpacks(request: DerivedBuilderRequest, base: _Base) -> _Plan:
    """pack's processBuildpacks: each --buildpack joins every group of the new order, in the
    order given; from=builder makes the builder's groups the order (after what came before);
    --order replaces the order whatever --buildpack says."""
    sources: list[BuildpackSource] = []
    order: list[list[Any]] = [[]]
    spliced = False
    for index, locator in enumerate(request.buildpacks):
        if locator == FROM_BUILDER:
            if spliced:
                raise UsageError("--buildpack from=builder can only be given once")
            spliced = True
            order = [[*order[0], *group] for group in base.order]
            continue
        if locator.startswith("urn:cnb:registry:"):
            raise BuilderError(
                f"--buildpack {locator}: packcache does not use buildpack registries"
            )
        ref: Any = _on_builder(locator, base, request.base_dir)
        if ref is not None:
            ref = ModuleRef(ref)
        else:
            ref = BuildpackSource(locator, "", "", 0, f"--buildpack[{index}]")
            sources.append(ref)
        order = [[*group, ref] for group in order]
    if request.order is not None:
        return _Plan(sources, parse_order(request.order))
    return _Plan(sources, order if order and order[0] else None)


def _plan_extensions(request: DerivedBuilderRequest, base: _Base) -> _Plan:
    """pack's processExtensions: each --extension is put FIRST in the one group of the new
    extension order (so the last given comes first); from=builder and registry locators are
    refused as pack refuses them."""
    sources: list[BuildpackSource] = []
    group: list[Any] = []
    for index, locator in enumerate(request.extensions):
        if locator == FROM_BUILDER:
            raise UsageError(
                "--extension from=builder: from builder is not supported for extensions"
            )
        if locator.startswith("urn:cnb:registry:"):
            raise BuilderError(
                f"--extension {locator}: a registry locator is not valid for extensions"
            )
        ref: Any = _on_builder(locator, base, request.base_dir, EXTENSION)
        if ref is not None:
            ref = ModuleRef(ref)
        else:
            ref = BuildpackSource(locator, "", "", 0, f"--extension[{index}]")
            sources.append(ref)
        group = [ref, *group]
    return _Plan(sources, [group] if group else None)


def _resolve_group_refs(order: list[list[Any]], modules: list[Module]) -> list[list[ModuleRef]]:
    """Each --buildpack source in the order becomes its main buildpack's full info, as pack
    appends it (ModuleRef{ModuleInfo: the descriptor's info})."""
    main_of = {}
    for module in modules:
        main_of.setdefault(module.source, module.descriptor.info)
    return [
        [r if isinstance(r, ModuleRef) else ModuleRef(dict(main_of[r.uri])) for r in group]
        for group in order
    ]


# -- the operation ----------------------------------------------------------------------------


def derive_builder(
    store: Store,
    daemon: Daemon,
    name: str,
    request: DerivedBuilderRequest,
    *,
    pull_policy: str | PullPolicy = PullPolicy.IF_NOT_PRESENT,
    extra_labels: dict[str, str] | None = None,
    no_cache: bool = False,
    dry_run: bool = False,
    lease: Lease | None = None,
    registry: Registry | None = None,
    tags: list[str] = (),  # type: ignore[assignment]
    progress: Progress = NO_PROGRESS,
) -> DerivedBuilderReport:
    """Make the builder `request` describes on top of its existing builder, and load it (or,
    with `registry.publish`, push it to the registry `name` names)."""
    start = time.perf_counter()
    registry = registry or Registry()
    policy = check_pull_policy(pull_policy)
    if registry.publish:
        policy = _check_publish(name, tags, no_cache, policy)
    with ExitStack() as cleanup:
        cleanup.enter_context(progress.task(f"{name} from {request.from_builder}", unit="steps"))
        if no_cache:
            # pack's method, in a throwaway store: the real cache is neither read nor changed.
            scratch = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="packcache-")))
            store = Store.open(scratch / "cache")
            lease = cleanup.enter_context(store.lease("create-builder --no-cache"))
        if lease is None:
            lease = cleanup.enter_context(store.lease("create-builder"))
        layers = LayerWriter(store, lease, dry_run)
        registries = cleanup.enter_context(RegistryClients(registry.options))
        mirror = None
        if not (registry.publish or no_cache or dry_run) and policy is not PullPolicy.NEVER:
            # The base builder and buildpackages a pull downloads go into a containerd store
            # as they arrive (create-builder's way), held until the derived builder is loaded.
            mirror = cleanup.enter_context(content_mirror(daemon))
        fetcher = BuilderFetcher(
            store, None if registry.publish else daemon, policy,
            DEFAULT_PLATFORM if registry.publish else daemon_platform(daemon.info), registries,
            lease, remote_only=dry_run or registry.publish, pack_method=no_cache, mirror=mirror,
        )  # fmt: skip
        if registry.publish:
            # Imported here: a builder loaded into the daemon takes none of the publish path.
            from packcache.operations.builder_publish import publish_builder, reach_destinations
            from packcache.operations.derived_publish import (
                builder_to_publish,
                cache_builder_layers,
            )

            if not dry_run:
                reach_destinations(name, tags, registries)
            source = builder_to_publish(fetcher, daemon, request.from_builder)
            base = _read_base(source.image, request.from_builder)
        else:
            # containerd is connected to while the builder is read, unless this is a re-create
            connect = None if no_cache or dry_run else connect_unless_recreated(daemon, name)
            base_image = _builder_in_daemon(fetcher, request)
            if connect is not None:
                connect(base_image)
            base = _read_base(base_image, request.from_builder)
        derived = _derive(store, fetcher, base, request, extra_labels or {}, layers, no_cache)
        report = DerivedBuilderReport(
            name=name,
            dry_run=dry_run,
            no_cache=no_cache,
            image_id=None,
            config_digest=sha256_digest(derived.config),
            diff_ids=derived.diff_ids,
            buildpacks=[BuildpackReport.of(m) for m in derived.modules],
            imported=derived.imported,
            layers_written=0,
            load=None,
            from_builder=request.from_builder,
            from_builder_id=base.image.id,
            order_replaced=derived.order_replaced,
            pull_policy=policy.value,
            pulled=fetcher.pulled,
            tags=[tag for tag in tags if tag != name],
        )
        if registry.publish and not dry_run:
            layers.write_small()
            report.saved_builder = cache_builder_layers(fetcher, daemon, source)
            report.published = publish_builder(
                store, name, derived.config, fetcher.fetched, registries=registries,
                platform=fetcher.platform, lease=lease, tags=list(tags),
            )  # fmt: skip
        elif not dry_run:
            policy = pack_method(len(base.image.diff_ids)) if no_cache else REUSE
            report.load, report.saved_builder = _record_and_load(
                store, daemon, base, name, derived.config, policy, layers
            )
            report.image_id = report.load.image_id
        report.layers_written = layers.written
    report.seconds = time.perf_counter() - start
    return report


def _check_publish(name: str, tags: list[str], no_cache: bool, policy: PullPolicy) -> PullPolicy:
    """A publish's names and options checked before anything is read; the policy it uses."""
    from packcache.operations.builder_publish import check_publish_name

    check_publish_name(name)
    for tag in tags:
        check_publish_name(tag, "--tag")
    if no_cache:
        raise UsageError("--publish and --no-cache cannot be used together")
    # pack's config `never`: a publish reads registries anyway
    return PullPolicy.IF_NOT_PRESENT if policy is PullPolicy.NEVER else policy


@dataclass
class _Derived:
    """The derived builder's config, and what went into it."""

    config: bytes
    diff_ids: list[str]
    modules: list[Module]  # the buildpacks then the extensions added
    imported: list[str]
    order_replaced: bool


def _derive(
    store: Store,
    fetcher: BuilderFetcher,
    base: _Base,
    request: DerivedBuilderRequest,
    extra_labels: dict[str, str],
    layers: LayerWriter,
    no_cache: bool,
) -> _Derived:
    """The modules fetched and checked, their layers and pack's small layers in the store,
    and the new config."""
    plan = _plan_buildpacks(request, base)
    extension_plan = _plan_extensions(request, base)
    config = BuilderConfig(
        path=request.base_dir.resolve() / "--buildpack",
        buildpacks=plan.sources,
        extensions=extension_plan.sources,
        build_image=request.from_builder,
    )
    modules = collect_buildpacks(config, fetcher, layers)
    extensions = collect_buildpacks(config, fetcher, layers, EXTENSION)
    infos = [*base.infos, *(m.descriptor.info for m in modules)]
    extension_infos = [*base.extension_infos, *(m.descriptor.info for m in extensions)]
    orders = _orders(base, plan, extension_plan, modules, extensions, infos, extension_infos)
    _validate(base, modules, extensions)
    imported = materialize_layers(
        store, fetcher.daemon, config, [*modules, *extensions], InputCache(store), layers,
        no_cache,
    )  # fmt: skip
    diff_ids, module_layers = _derived_layers(
        base, layers, modules, extensions, orders, request.env, request.run_image
    )
    labels = _derived_labels(
        base, {**base.image.labels, **extra_labels}, module_layers, infos,
        extension_infos if extensions else base.metadata.get("extensions"), orders,
        request.run_image,
    )  # fmt: skip
    return _Derived(
        image_config(base.image, diff_ids, labels),
        diff_ids,
        [*modules, *extensions],
        imported,
        orders is not None and plan.order is not None,
    )


@dataclass
class _Orders:
    """What pack's Save writes when the order is replaced (SetOrder or SetOrderExtensions):
    the order and extension order labels, and both resolved for /cnb/order.toml."""

    order: list[list[dict[str, Any]]]
    order_extensions_label: str
    resolved: list[list[dict[str, Any]]]
    resolved_extensions: list[list[dict[str, Any]]]


def _orders(
    base: _Base,
    plan: _Plan,
    extension_plan: _Plan,
    modules: list[Module],
    extensions: list[Module],
    infos: list[dict[str, Any]],
    extension_infos: list[dict[str, Any]],
) -> _Orders | None:
    """The orders as pack's SetOrder/SetOrderExtensions and processOrder make them (None:
    neither is replaced, the builder's order.toml stays); what is not replaced is the
    builder's, as its labels say."""
    if plan.order is None and extension_plan.order is None:
        return None
    refs = base.order if plan.order is None else _resolve_group_refs(plan.order, modules)
    resolved = resolve_order(BuilderConfig(path=ORDER_OPTION, order=refs), infos)
    order = [[{**r.info, **({"optional": True} if r.optional else {})} for r in g] for g in refs]
    if extension_plan.order is None:
        extension_refs = base.order_label(cnb.ORDER_EXTENSIONS)
        extensions_label = base.image.labels.get(cnb.ORDER_EXTENSIONS) or "null"
    else:
        extension_refs = _resolve_group_refs(extension_plan.order, extensions)
        extensions_label = L.order_json([[dict(r.info) for r in g] for g in extension_refs])
    resolved_extensions = resolve_order_extensions(
        BuilderConfig(path=EXTENSION_OPTION, order_extensions=extension_refs), extension_infos
    )
    return _Orders(order, extensions_label, resolved, resolved_extensions)


def _validate(base: _Base, modules: list[Module], extensions: list[Module]) -> None:
    """pack's validateBuildpacks on the builder with the new buildpacks: the new ones against
    the lifecycle and build image; an order buildpack's groups against every buildpack there.
    New extensions: their API against the lifecycle's (validateExtensions)."""
    by_name: dict[str, BuildpackDescriptor] = {}
    for bp_id, versions in base.layers.items():
        for version, entry in versions.items():
            descriptor = descriptor_from_layers_label(bp_id, version, entry)
            by_name[descriptor.full_name] = descriptor
    added = {m.descriptor.full_name: m.descriptor for m in modules}
    validate_buildpacks(
        {**by_name, **added}, base.lifecycle, base.stack_id, base.mixins, base.image
    )
    if extensions:
        validate_extensions(
            [m.descriptor for m in extensions], base.lifecycle, BuilderConfig(EXTENSION_OPTION)
        )


def _derived_layers(
    base: _Base,
    layers: LayerWriter,
    modules: list[Module],
    extensions: list[Module],
    orders: _Orders | None,
    env: dict[str, str],
    run_image: str | None,
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The builder's layers then the ones pack's Save adds (no lifecycle: an ephemeral builder
    keeps the builder's), and the new buildpack and extension layers labels. The small layers
    are hashed only; `write_small` writes those the cache lacks, where the builder is sent."""
    diff_ids = list(base.image.diff_ids)
    diff_ids.append(layers.add_small(default_dirs(base.uid, base.gid)))
    module_layers = {}
    for kind, label, added in (
        (BUILDPACK, cnb.BUILDPACK_LAYERS, modules),
        (EXTENSION, cnb.EXTENSION_LAYERS, extensions),
    ):
        label_map = json.loads(json.dumps(base.label_map(label)))
        diff_ids += add_exploded(added, label_map, layers)
        module_layers[kind] = label_map
    if orders is not None:
        order_toml = L.order_toml(orders.resolved, orders.resolved_extensions)
        diff_ids.append(layers.add_small(single_file_layer(ORDER_PATH, order_toml)))
    stack, run_images = _run_images(base, run_image)
    first = stack if stack["image"] else (run_images[0] if run_images else None)
    stack_toml = L.stack_toml(first["image"], first["mirrors"]) if first else ""
    diff_ids.append(layers.add_small(single_file_layer(STACK_PATH, stack_toml)))
    diff_ids.append(layers.add_small(single_file_layer(RUN_PATH, L.run_toml(run_images))))
    diff_ids.append(layers.add_small(env_layer(f"{PLATFORM_DIR}/env", env)))
    return diff_ids, module_layers


def _run_images(base: _Base, run_image: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stack run image and run images: the builder's, or --run-image alone (pack drops
    the mirrors when the run image is overridden)."""
    if run_image:
        return L.run_image_json(run_image, None), [L.run_image_json(run_image, None)]
    stack = (base.metadata.get("stack") or {}).get("runImage") or {}
    return (
        L.run_image_json(stack.get("image", ""), stack.get("mirrors")),
        [
            L.run_image_json(r.get("image", ""), r.get("mirrors"))
            for r in base.metadata.get("images") or []
        ],
    )


def _derived_labels(
    base: _Base,
    labels: dict[str, str],
    module_layers: dict[str, dict[str, Any]],
    infos: list[dict[str, Any]],
    extension_infos: list[dict[str, Any]] | None,
    orders: _Orders | None,
    run_image: str | None,
) -> dict[str, str]:
    """The builder's labels with what pack's Save sets on them."""
    stack, run_images = _run_images(base, run_image)
    labels[cnb.BUILDPACK_LAYERS] = L.buildpack_layers_label(module_layers[BUILDPACK])
    labels[cnb.EXTENSION_LAYERS] = L.buildpack_layers_label(module_layers[EXTENSION])
    if orders is not None:
        labels[cnb.BUILDPACK_ORDER] = L.order_json(orders.order)
        labels[cnb.ORDER_EXTENSIONS] = orders.order_extensions_label
    labels[cnb.BUILDER_METADATA] = L.builder_metadata(
        description=base.metadata.get("description") or "",
        buildpacks=infos,
        stack_run_image=stack,
        lifecycle=base.lifecycle,
        created_by={"name": CREATOR, "version": __version__},
        run_images=run_images,
        extensions=extension_infos,
    )
    labels[cnb.STACK_MIXINS] = L.go_json(base.mixins)
    return labels


def _record_and_load(
    store: Store,
    daemon: Daemon,
    base: _Base,
    name: str,
    builder_config: bytes,
    policy: SendPolicy,
    layers: LayerWriter,
) -> tuple[LoadReport, bool]:
    """Load the builder, recorded in the cache once the daemon holds it (one durable write,
    after the load). The base builder's layers are never read: the daemon holds them (its
    manifest, on a containerd store, read from the daemon's containerd), and only where
    neither is possible (or with pack's method) is it saved. Returns the load and whether the
    builder was saved."""
    if policy is REUSE:
        present = tag_if_present(store, daemon, builder_config, [name])
        if present is not None:
            return present, False
    layers.write_small()
    lease = layers.lease
    planner = planner_for(store, daemon, policy)
    if policy is REUSE:
        planner.extends(base.image)  # inspected in this daemon: its layers are held there
    base_layers = list(base.image.diff_ids)
    needed = None in planner.held(base_layers, policy)
    if needed and policy is REUSE and store.cached_diff_ids(base_layers, lease) >= set(base_layers):
        # Pulled into the cache (and, on a containerd store, written there as it downloaded):
        # the load sends from the cache, or finds written, what the daemon does not name.
        needed = False
    if needed and policy is REUSE:
        # Imported here: what reads the builder's config out of the daemon's own storage.
        from packcache.operations.engine_configs import record_from_engine

        if record_from_engine(store, daemon, base.image) is not None:
            needed = None in planner.held(base_layers, policy)
    if needed or policy is not REUSE:
        # Imported here: a builder whose layers the daemon names is never saved.
        from packcache.operations.importing import import_images

        import_images(store, daemon, [base.ref], lease=lease)
    loaded = load_config(
        store, daemon, builder_config, [name], lease=lease, policy=policy, planner=planner
    )
    return loaded, needed or policy is not REUSE
