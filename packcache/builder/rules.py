"""pack's rules for what goes on a builder: order resolution, buildpack checks, the config.

Pure functions of the inputs (no daemon, no store), so create_builder reads as the steps it
takes and these read as the rules pack applies (internal/builder, pkg/client/create_builder.go).
"""

from __future__ import annotations

from typing import Any

from packcache.builder import labels as L
from packcache.builder.config import MODULE_INFO_KEYS, BuilderConfig
from packcache.builder.descriptors import (
    BuildpackDescriptor,
    DescriptorError,
    LifecycleDescriptor,
    api_key,
)
from packcache.errors import PackcacheError

CREATED = "1980-01-01T00:00:01Z"  # imgutil's NormalizedDateTime, as pack leaves it
WORKING_DIR = "/layers"


class BuilderError(PackcacheError):
    """The builder cannot be made from these inputs; nothing was loaded."""


def resolve_order(config: BuilderConfig, infos: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """pack's processOrder: each ref names a buildpack on the builder; a missing version is
    filled in when only one version is there."""
    resolved = []
    for group in config.order or []:
        out = []
        for ref in group:
            versions = list(dict.fromkeys(i["version"] for i in infos if i["id"] == ref.id))
            where = f"{config.path}:{ref.line}"
            if not versions:
                raise BuilderError(
                    f"{where}: order references buildpack '{ref.id}', which no [[buildpacks]] "
                    "entry provides"
                )
            if ref.version and ref.version not in versions:
                raise BuilderError(
                    f"{where}: order references buildpack '{ref.id}' version {ref.version}, "
                    f"which is not provided (found {', '.join(versions)})"
                )
            if not ref.version and len(versions) > 1:
                raise BuilderError(
                    f"{where}: order references '{ref.id}' without a version, and the "
                    f"builder has several ({', '.join(versions)}): name one"
                )
            info = {**ref.info, "version": ref.version or versions[0]}
            item = {k: info[k] for k in MODULE_INFO_KEYS if k in info}
            if ref.optional:
                item["optional"] = True
            out.append(item)
        resolved.append(out)
    return resolved


def validate_buildpacks(
    by_name: dict[str, BuildpackDescriptor],
    lifecycle: LifecycleDescriptor,
    stack_id: str,
    mixins: list[str] | None,
    build: dict[str, Any],
    build_labels: dict[str, str],
) -> None:
    """pack's validateBuildpacks: API compatible with the lifecycle; an order buildpack's group
    on the builder; a buildpack's stacks or targets satisfied by the build image."""
    supported = lifecycle.buildpack_apis()
    for descriptor in by_name.values():
        try:
            compatible = not supported or any(
                api_key(v) == api_key(descriptor.api) for v in supported
            )
        except ValueError:
            raise DescriptorError(
                f"buildpack {descriptor.full_name}: bad API {descriptor.api!r}"
            ) from None
        if not compatible:
            raise BuilderError(
                f"buildpack {descriptor.full_name} (Buildpack API {descriptor.api}) is "
                f"incompatible with lifecycle {lifecycle.version} (Buildpack API(s) "
                f"{', '.join(lifecycle.apis['buildpack']['supported'] or [])})"
            )
        if descriptor.order:
            for group in descriptor.order:
                for ref in group.get("group", []):
                    name = (
                        f"{ref.get('id')}@{ref.get('version')}"
                        if ref.get("version")
                        else ref.get("id")
                    )
                    if name not in by_name:
                        raise BuilderError(
                            f"buildpack {name} not found on the builder "
                            f"(needed by {descriptor.full_name})"
                        )
            continue
        if descriptor.stacks:
            stack = next((s for s in descriptor.stacks if s.get("id") in (stack_id, "*")), None)
            if stack is None:
                raise BuilderError(
                    f"buildpack {descriptor.full_name} does not support stack '{stack_id}'"
                )
            provided = set(mixins or [])
            missing = sorted(
                m
                for m in stack.get("mixins") or []
                if not m.startswith("run:") and m not in provided
            )
            if missing:
                raise BuilderError(
                    f"buildpack {descriptor.full_name} requires missing mixin(s): "
                    + ", ".join(missing)
                )
        if descriptor.targets:
            os_name, arch = build.get("Os") or "linux", build.get("Architecture") or ""
            distro = (build_labels.get(L.DISTRO_NAME, ""), build_labels.get(L.DISTRO_VERSION, ""))
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


def image_config(build: dict[str, Any], diff_ids: list[str], labels: dict[str, str]) -> bytes:
    """The builder's config as pack's imgutil writes it: the build image's inspected config
    (only the fields imgutil keeps), new labels and working dir, created and every history
    entry at 1980-01-01T00:00:01Z; Go's JSON field order."""
    source = build.get("Config") or {}
    container: dict[str, Any] = {}
    for key in ("Cmd", "Healthcheck", "Entrypoint", "Env"):
        if source.get(key):
            container[key] = (
                {
                    k: source[key][k]
                    for k in ("Test", "Interval", "Timeout", "StartPeriod", "Retries")
                    if source[key].get(k)
                }
                if key == "Healthcheck"
                else source[key]
            )
    container["Labels"] = L.sorted_map(labels)
    for key in ("OnBuild", "User"):
        if source.get(key):
            container[key] = source[key]
    if source.get("Volumes"):
        container["Volumes"] = L.sorted_map(source["Volumes"])
    container["WorkingDir"] = WORKING_DIR
    if source.get("ExposedPorts"):
        container["ExposedPorts"] = L.sorted_map(source["ExposedPorts"])
    for key in ("StopSignal", "Shell"):
        if source.get(key):
            container[key] = source[key]
    config: dict[str, Any] = {"architecture": build.get("Architecture") or ""}
    if build.get("Author"):
        config["author"] = build["Author"]
    config["created"] = CREATED
    config["history"] = [{"created": CREATED} for _ in diff_ids]
    config["os"] = build.get("Os") or "linux"
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    config["config"] = container
    if build.get("OsVersion"):
        config["os.version"] = build["OsVersion"]
    if build.get("Variant"):
        config["variant"] = build["Variant"]
    return L.go_json(config).encode()
