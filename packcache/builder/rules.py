"""pack's rules for what goes on a builder: order resolution, buildpack checks, the config.

Pure functions of the inputs (no daemon, no store), so create_builder reads as the steps it
takes and these read as the rules pack applies (internal/builder, pkg/client/create_builder.go).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from packcache.builder import labels as L
from packcache.builder.config import MODULE_INFO_KEYS, BuilderConfig, ModuleRef
from packcache.builder.descriptors import (
    BUILDPACK,
    EXTENSION,
    BuildpackDescriptor,
    DescriptorError,
    LifecycleDescriptor,
    api_key,
)
from packcache.errors import PackcacheError
from packcache.image import cnb
from packcache.image.cnb import NORMALIZED_TIME
from packcache.image.inspected import InspectedImage

WORKING_DIR = "/layers"


class BuilderError(PackcacheError):
    """The builder cannot be made from these inputs; nothing was loaded."""


def resolve_order(config: BuilderConfig, infos: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """pack's processOrder: each ref names a buildpack on the builder; a missing version is
    filled in when only one version is there."""
    return [
        [resolve_ref(config, ref, infos, BUILDPACK, "order") for ref in group]
        for group in config.order or []
    ]


def resolve_order_extensions(
    config: BuilderConfig, infos: list[dict[str, Any]]
) -> list[list[dict[str, Any]]]:
    """processOrder for [[order-extensions]], whose refs pack writes without `optional`
    (SetOrderExtensions: extensions are always optional)."""
    return [
        [
            resolve_ref(config, replace(ref, optional=False), infos, EXTENSION, "order-extensions")
            for ref in group
        ]
        for group in config.order_extensions or []
    ]


def resolve_system(
    config: BuilderConfig, infos: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """pack's processSystem: [system.pre] and [system.post] refs resolved like the order's."""
    return (
        [resolve_ref(config, ref, infos, BUILDPACK, "system.pre") for ref in config.system_pre],
        [resolve_ref(config, ref, infos, BUILDPACK, "system.post") for ref in config.system_post],
    )


def resolve_ref(
    config: BuilderConfig, ref: ModuleRef, infos: list[dict[str, Any]], kind: str, table: str
) -> dict[str, Any]:
    """pack's resolveRef: the ref names a module on the builder; a missing version is filled
    in when only one version is there."""
    versions = list(dict.fromkeys(i["version"] for i in infos if i["id"] == ref.id))
    where = f"{config.path}:{ref.line}"
    if not versions:
        raise BuilderError(
            f"{where}: {table} references {kind} '{ref.id}', which no [[{kind}s]] entry provides"
        )
    if ref.version and ref.version not in versions:
        raise BuilderError(
            f"{where}: {table} references {kind} '{ref.id}' version {ref.version}, "
            f"which is not provided (found {', '.join(versions)})"
        )
    if not ref.version and len(versions) > 1:
        raise BuilderError(
            f"{where}: {table} references '{ref.id}' without a version, and the "
            f"builder has several ({', '.join(versions)}): name one"
        )
    info = {**ref.info, "version": ref.version or versions[0]}
    item = {k: info[k] for k in MODULE_INFO_KEYS if k in info}
    if ref.optional:
        item["optional"] = True
    return item


def validate_buildpacks(
    by_name: dict[str, BuildpackDescriptor],
    lifecycle: LifecycleDescriptor,
    stack_id: str,
    mixins: list[str] | None,
    build: InspectedImage,
) -> None:
    """pack's validateBuildpacks: API compatible with the lifecycle; an order buildpack's group
    on the builder; a buildpack's stacks or targets satisfied by the build image."""
    for descriptor in by_name.values():
        _check_api(descriptor, lifecycle)
        if descriptor.order:
            _check_groups(descriptor, by_name)
            continue
        if descriptor.stacks:
            _check_stack(descriptor, stack_id, mixins)
        if descriptor.targets:
            _check_targets(descriptor, build)


def validate_extensions(
    extensions: list[BuildpackDescriptor], lifecycle: LifecycleDescriptor, config: BuilderConfig
) -> None:
    """pack's validateExtensions (Buildpack API compatible with the lifecycle) and
    validateLifecycleVersion: a builder with extensions needs a lifecycle whose latest Platform
    API is 0.13 or later (earlier ones support extensions only experimentally, which pack
    refuses unless experimental features are on; packcache has no such switch)."""
    for descriptor in extensions:
        _check_api(descriptor, lifecycle)
    if not extensions and not config.order_extensions:
        return
    supported = lifecycle.apis["platform"]["supported"] or []
    latest = max(supported, key=api_key, default=None)
    if latest is not None and api_key(latest) < (0, 13):
        raise BuilderError(
            "builder config contains image extensions, but the lifecycle Platform API version "
            f"({latest}) is older than 0.13; support for image extensions "
            "with Platform API < 0.13 is experimental in pack, and packcache does not build it"
        )


def _check_api(descriptor: BuildpackDescriptor, lifecycle: LifecycleDescriptor) -> None:
    supported = lifecycle.buildpack_apis()
    try:
        compatible = not supported or any(api_key(v) == api_key(descriptor.api) for v in supported)
    except ValueError:
        raise DescriptorError(
            f"buildpack {descriptor.full_name}: bad API {descriptor.api!r}"
        ) from None
    if not compatible:
        raise BuilderError(
            f"{descriptor.kind} {descriptor.full_name} (Buildpack API {descriptor.api}) is "
            f"incompatible with lifecycle {lifecycle.version} (Buildpack API(s) "
            f"{', '.join(lifecycle.apis['buildpack']['supported'] or [])})"
        )


def _check_groups(descriptor: BuildpackDescriptor, by_name: dict[str, BuildpackDescriptor]) -> None:
    """Every buildpack an order buildpack's groups name is on the builder."""
    for group in descriptor.order:
        for ref in group.get("group", []):
            name = f"{ref.get('id')}@{ref.get('version')}" if ref.get("version") else ref.get("id")
            if name not in by_name:
                raise BuilderError(
                    f"buildpack {name} not found on the builder (needed by {descriptor.full_name})"
                )


def _check_stack(descriptor: BuildpackDescriptor, stack_id: str, mixins: list[str] | None) -> None:
    """The buildpack supports the build image's stack, and the build image has its mixins."""
    stack = next((s for s in descriptor.stacks if s.get("id") in (stack_id, "*")), None)
    if stack is None:
        raise BuilderError(f"buildpack {descriptor.full_name} does not support stack '{stack_id}'")
    provided = set(mixins or [])
    missing = sorted(
        m for m in stack.get("mixins") or [] if not m.startswith("run:") and m not in provided
    )
    if missing:
        raise BuilderError(
            f"buildpack {descriptor.full_name} requires missing mixin(s): " + ", ".join(missing)
        )


def _check_targets(descriptor: BuildpackDescriptor, build: InspectedImage) -> None:
    """One of the buildpack's targets is the build image's platform (a field either side
    leaves out matches anything)."""
    os_name, arch = build.os or "linux", build.architecture
    distro = (build.labels.get(cnb.DISTRO_NAME, ""), build.labels.get(cnb.DISTRO_VERSION, ""))
    if not any(
        t.get("os") == os_name
        and (not t.get("arch") or not arch or t.get("arch") == arch)
        and (
            not t.get("distros")
            or not all(distro)
            or any((d.get("name"), d.get("version")) == distro for d in t["distros"])
        )
        for t in descriptor.targets
    ):
        raise BuilderError(
            f"buildpack {descriptor.full_name} supports none of the build image's "
            f"platform {os_name}/{arch}"
        )


def image_config(build: InspectedImage, diff_ids: list[str], labels: dict[str, str]) -> bytes:
    """The builder's config as pack's imgutil writes it: the build image's inspected config
    (only the fields imgutil keeps), new labels and working dir, created and every history
    entry at the normalized time; Go's JSON field order."""
    source = build.config
    container: dict[str, Any] = {}
    if source.cmd:
        container["Cmd"] = list(source.cmd)
    if source.healthcheck:
        container["Healthcheck"] = _healthcheck(source.healthcheck)
    if source.entrypoint:
        container["Entrypoint"] = list(source.entrypoint)
    if source.env:
        container["Env"] = list(source.env)
    container["Labels"] = L.sorted_map(labels)
    if source.on_build:
        container["OnBuild"] = list(source.on_build)
    if source.user:
        container["User"] = source.user
    if source.volumes:
        container["Volumes"] = L.sorted_map(dict(source.volumes))
    container["WorkingDir"] = WORKING_DIR
    if source.exposed_ports:
        container["ExposedPorts"] = L.sorted_map(dict(source.exposed_ports))
    if source.stop_signal:
        container["StopSignal"] = source.stop_signal
    if source.shell:
        container["Shell"] = list(source.shell)
    config: dict[str, Any] = {"architecture": build.architecture}
    if build.author:
        config["author"] = build.author
    config["created"] = NORMALIZED_TIME
    config["history"] = [{"created": NORMALIZED_TIME} for _ in diff_ids]
    config["os"] = build.os or "linux"
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    config["config"] = container
    if build.os_version:
        config["os.version"] = build.os_version
    if build.variant:
        config["variant"] = build.variant
    return L.go_json(config).encode()


def _healthcheck(healthcheck: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a healthcheck imgutil keeps, those set."""
    keys = ("Test", "Interval", "Timeout", "StartPeriod", "Retries")
    return {key: healthcheck[key] for key in keys if healthcheck.get(key)}


def json_label(labels: Mapping[str, str], name: str, image: str) -> Any:
    """A label holding JSON, decoded; None when absent or empty, a clear error when not JSON."""
    if not labels.get(name):
        return None
    try:
        return json.loads(labels[name])
    except ValueError as exc:
        raise BuilderError(f"image {image}: label {name} is not valid JSON: {exc}") from exc


def build_user_and_group(build: InspectedImage, ref: str) -> tuple[int, int]:
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
