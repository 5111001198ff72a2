"""`packcache create-builder NAME --from-builder BUILDER [--buildpack URI ...] [--env K=V ...]
[--order GROUP ...] [--run-image IMAGE]`: the builder `pack build` makes ephemerally for these
options (pack's createEphemeralBuilder, internal/builder/builder.go Save), made once and named,
so `pack build --builder NAME` needs no ephemeral builder.

The existing builder is never saved: its config and labels come from `docker inspect`, its
layers stay where the daemon has them (on a containerd store its manifest is read from the
daemon's containerd to name them). Only the layers pack adds are written (the default
directories, the new buildpacks, order, stack, run and env) and sent with the new config, on
the one load path (a partial `docker load`, or blobs and an image record in containerd).

With --no-cache it does what pack does instead: the builder is read with `docker save` into a
throwaway store and loaded back with pack's send policy.
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
    validate_buildpacks,
)
from packcache.builder.tarwriter import TarEntry, tar_chunks
from packcache.builder.uris import daemon_ref, local_path
from packcache.digest import sha256_digest
from packcache.errors import UsageError
from packcache.image import cnb
from packcache.image.inspected import InspectedImage
from packcache.operations.builder_buildpacks import collect_buildpacks, materialize_layers
from packcache.operations.builder_fetch import BuilderFetcher, FetchedImage
from packcache.operations.builder_modules import LayerWriter, Module, _hash_chunks, add_exploded
from packcache.operations.create_builder import (
    CREATOR,
    BuildpackReport,
    CreateBuilderReport,
    check_pull_policy,
)
from packcache.operations.engine_configs import record_from_engine
from packcache.operations.importing import import_images
from packcache.operations.load_planners import REUSE, SendPolicy, pack_method
from packcache.operations.loading import LoadReport, base_image_needed, load_config
from packcache.operations.run_image_fetch import PullPolicy, daemon_platform
from packcache.progress import NO_PROGRESS, Progress
from packcache.store.store import ImageRecord, Lease, Store
from packcache.transports.daemon import Daemon
from packcache.transports.registry import RegistryClients, RegistryOptions

FROM_BUILDER = "from=builder"  # pack's locator for the builder's own order
_BUILDER_PREFIXES = ("urn:cnb:builder:", "from=builder:")  # a buildpack already on the builder
ORDER_OPTION = Path("--order")  # where order errors point: the option, group by group


@dataclass
class DerivedBuilderRequest:
    """What `pack build` would change on the builder: its options, as given."""

    from_builder: str
    buildpacks: list[str] = field(default_factory=list)  # pack build --buildpack locators
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


def _add_small(layers: LayerWriter, entries: list[TarEntry]) -> str:
    """One of the small layers pack adds (directories, a toml file, env files): the same bytes
    on every run with the same inputs, so hashed first and written only when the cache lacks
    it."""
    diff_id = _hash_chunks(tar_chunks(entries))
    if layers.dry_run or layers.cached(diff_id):
        return diff_id
    return layers.add(entries)


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


def _module_info(raw: dict[str, Any]) -> dict[str, Any]:
    """A ModuleInfo as Go marshals it: its fields in order, empty ones left out."""
    return {key: raw[key] for key in MODULE_INFO_KEYS if raw.get(key)}


def _builder_in_daemon(fetcher: BuilderFetcher, ref: str) -> InspectedImage:
    """The existing builder, in the daemon: a derived builder keeps its layers there and sends
    only what pack adds. Fetched as the policy says; one pulled into the cache is loaded (only
    the layers the daemon lacks) and then read back from the daemon."""
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


def _read_base(fetcher: BuilderFetcher, ref: str) -> _Base:
    """The builder's labels, checked as pack's builder.FromImage checks them."""
    image = _builder_in_daemon(fetcher, ref)
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
    order = [
        [ModuleRef(_module_info(r), bool(r.get("optional"))) for r in entry.get("group") or []]
        for entry in json_label(image.labels, cnb.BUILDPACK_ORDER, ref) or []
    ]
    return _Base(
        ref=ref,
        image=image,
        uid=uid,
        gid=gid,
        stack_id=image.labels.get(cnb.STACK_ID, ""),
        mixins=json_label(image.labels, cnb.STACK_MIXINS, ref),
        metadata=metadata,
        lifecycle=lifecycle,
        layers=json_label(image.labels, cnb.BUILDPACK_LAYERS, ref) or {},
        order=order,
    )


# -- pack build's buildpack locators ----------------------------------------------------------


def _on_builder(locator: str, base: _Base, base_dir: Path) -> dict[str, Any] | None:
    """The ref a locator names when it is a buildpack already on the builder (pack's
    IDLocator: urn:cnb:builder:ID[@VERSION], or a bare ID[@VERSION] the builder has)."""
    prefixed = locator.startswith(_BUILDER_PREFIXES)
    bare = locator
    for prefix in _BUILDER_PREFIXES:
        bare = bare.removeprefix(prefix)
    bp_id, _, version = bare.partition("@")
    found = any(info["id"] == bp_id and version in ("", info.get("version")) for info in base.infos)
    if prefixed and not found:
        raise BuilderError(f"--buildpack {locator}: no buildpack {bare} is on builder {base.ref}")
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
    progress: Progress = NO_PROGRESS,
) -> DerivedBuilderReport:
    """Make the builder `request` describes on top of its existing builder, and load it."""
    start = time.perf_counter()
    policy = check_pull_policy(pull_policy)
    with ExitStack() as cleanup:
        cleanup.enter_context(progress.task(f"{name} from {request.from_builder}", unit="steps"))
        if no_cache:
            # pack's method, in a throwaway store: the real cache is neither read nor changed.
            scratch = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="packcache-")))
            store = Store.open(scratch / "cache")
            lease = cleanup.enter_context(store.lease("create-builder --no-cache"))
        layers = LayerWriter(store, lease, dry_run)
        registries = cleanup.enter_context(RegistryClients(RegistryOptions()))
        fetcher = BuilderFetcher(
            store, daemon, policy, daemon_platform(daemon.info), registries, lease,
            remote_only=dry_run, pack_method=no_cache,
        )  # fmt: skip
        images = (daemon_ref(uri, request.base_dir) for uri in request.buildpacks)
        daemon.prefetch([request.from_builder, *filter(None, images)])
        base = _read_base(fetcher, request.from_builder)
        plan = _plan_buildpacks(request, base)
        config = BuilderConfig(
            path=request.base_dir.resolve() / "--buildpack",
            buildpacks=plan.sources,
            build_image=request.from_builder,
        )
        modules = collect_buildpacks(config, fetcher, layers)
        infos = [*base.infos, *(m.descriptor.info for m in modules)]
        order, resolved = _order(plan, modules, infos)
        _validate(base, modules)
        imported = materialize_layers(
            store, daemon, config, modules, InputCache(store), layers, no_cache
        )
        diff_ids, buildpack_layers = _derived_layers(
            base, layers, modules, resolved, request.env, request.run_image
        )
        labels = _derived_labels(
            base, {**base.image.labels, **(extra_labels or {})}, buildpack_layers, infos, order,
            request.run_image,
        )  # fmt: skip
        builder_config = image_config(base.image, diff_ids, labels)
        report = DerivedBuilderReport(
            name=name,
            dry_run=dry_run,
            no_cache=no_cache,
            image_id=None,
            config_digest=sha256_digest(builder_config),
            diff_ids=diff_ids,
            buildpacks=[BuildpackReport.of(m) for m in modules],
            imported=imported,
            layers_written=layers.written,
            load=None,
            from_builder=request.from_builder,
            from_builder_id=base.image.id,
            order_replaced=order is not None,
        )
        if not dry_run:
            policy = pack_method(len(base.image.diff_ids)) if no_cache else REUSE
            report.load, report.saved_builder = _record_and_load(
                store, daemon, base, name, builder_config, policy, lease
            )
            report.image_id = report.load.image_id
    report.seconds = time.perf_counter() - start
    return report


def _order(
    plan: _Plan, modules: list[Module], infos: list[dict[str, Any]]
) -> tuple[list[list[dict[str, Any]]] | None, list[list[dict[str, Any]]]]:
    """The new order as the label keeps it (None: unchanged) and resolved for order.toml, as
    pack's SetOrder and processOrder make them."""
    if plan.order is None:
        return None, []
    refs = _resolve_group_refs(plan.order, modules)
    config = BuilderConfig(path=ORDER_OPTION, order=refs)
    resolved = resolve_order(config, infos)
    label = [[{**r.info, **({"optional": True} if r.optional else {})} for r in g] for g in refs]
    return label, resolved


def _validate(base: _Base, modules: list[Module]) -> None:
    """pack's validateBuildpacks on the builder with the new buildpacks: the new ones against
    the lifecycle and build image; an order buildpack's groups against every buildpack there."""
    by_name: dict[str, BuildpackDescriptor] = {}
    for bp_id, versions in base.layers.items():
        for version, entry in versions.items():
            descriptor = descriptor_from_layers_label(bp_id, version, entry)
            by_name[descriptor.full_name] = descriptor
    added = {m.descriptor.full_name: m.descriptor for m in modules}
    validate_buildpacks(
        {**by_name, **added}, base.lifecycle, base.stack_id, base.mixins, base.image
    )


def _derived_layers(
    base: _Base,
    layers: LayerWriter,
    modules: list[Module],
    resolved_order: list[list[dict[str, Any]]],
    env: dict[str, str],
    run_image: str | None,
) -> tuple[list[str], dict[str, Any]]:
    """The builder's layers then the ones pack's Save adds (no lifecycle: an ephemeral builder
    keeps the builder's), each written into the store, and the new buildpack layers label."""
    diff_ids = list(base.image.diff_ids)
    diff_ids.append(_add_small(layers, default_dirs(base.uid, base.gid)))
    buildpack_layers = json.loads(json.dumps(base.layers))
    diff_ids += add_exploded(modules, buildpack_layers, layers)
    if resolved_order:
        # pack writes the builder's extension order back beside the new order
        extension_order = [
            [_module_info(ref) for ref in entry.get("group") or []]
            for entry in json_label(base.image.labels, cnb.ORDER_EXTENSIONS, base.ref) or []
        ]
        order_toml = L.order_toml(resolved_order, extension_order)
        diff_ids.append(_add_small(layers, single_file_layer(ORDER_PATH, order_toml)))
    stack, run_images = _run_images(base, run_image)
    first = stack if stack["image"] else (run_images[0] if run_images else None)
    stack_toml = L.stack_toml(first["image"], first["mirrors"]) if first else ""
    diff_ids.append(_add_small(layers, single_file_layer(STACK_PATH, stack_toml)))
    diff_ids.append(_add_small(layers, single_file_layer(RUN_PATH, L.run_toml(run_images))))
    diff_ids.append(_add_small(layers, env_layer(f"{PLATFORM_DIR}/env", env)))
    return diff_ids, buildpack_layers


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
    buildpack_layers: dict[str, Any],
    infos: list[dict[str, Any]],
    order: list[list[dict[str, Any]]] | None,
    run_image: str | None,
) -> dict[str, str]:
    """The builder's labels with what pack's Save sets on them."""
    stack, run_images = _run_images(base, run_image)
    labels[cnb.BUILDPACK_LAYERS] = L.buildpack_layers_label(buildpack_layers)
    extension_layers = json_label(base.image.labels, cnb.EXTENSION_LAYERS, base.ref) or {}
    labels[cnb.EXTENSION_LAYERS] = L.buildpack_layers_label(extension_layers)
    if order is not None:
        labels[cnb.BUILDPACK_ORDER] = L.order_json(order)
        labels[cnb.ORDER_EXTENSIONS] = base.image.labels.get(cnb.ORDER_EXTENSIONS) or "null"
    labels[cnb.BUILDER_METADATA] = L.builder_metadata(
        description=base.metadata.get("description") or "",
        buildpacks=infos,
        stack_run_image=stack,
        lifecycle=base.lifecycle,
        created_by={"name": CREATOR, "version": __version__},
        run_images=run_images,
        extensions=base.metadata.get("extensions"),
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
    lease: Lease | None,
) -> tuple[LoadReport, bool]:
    """Record the builder and load it. The base builder's layers are never read: the daemon
    holds them (its manifest, on a containerd store, read from the daemon's containerd), and
    only where neither is possible (or with pack's method) is it saved. Returns the load and
    whether the builder was saved."""
    store.record_image(ImageRecord(config=builder_config, refs=[name]))
    base_layers = list(base.image.diff_ids)
    needed = base_image_needed(store, daemon, base_layers, policy)
    if needed and policy is REUSE and record_from_engine(store, daemon, base.image) is not None:
        needed = base_image_needed(store, daemon, base_layers, policy)
    if needed or policy is not REUSE:
        import_images(store, daemon, [base.ref], lease=lease)
    loaded = load_config(store, daemon, builder_config, [name], lease=lease, policy=policy)
    return loaded, needed or policy is not REUSE
