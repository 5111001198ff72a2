"""buildpack.toml and lifecycle.toml: what pack reads from them, as plain data.

API versions are kept as pack prints them ("0.10"; lifecycle's api.Version is major.minor).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from packcache.builder.config import MODULE_INFO_KEYS
from packcache.errors import PackcacheError

ASSUMED_BUILDPACK_API = "0.1"  # pack's dist.AssumedBuildpackAPIVersion
BUILDPACK = "buildpack"  # pack's buildpack.KindBuildpack
EXTENSION = "extension"  # pack's buildpack.KindExtension
_API = re.compile(r"^v?(\d+)\.?(\d*)$")


class DescriptorError(PackcacheError):
    """A buildpack.toml or lifecycle.toml is missing or malformed."""


def api_version(text: str, where: str) -> str:
    match = _API.match(text)
    if not match:
        raise DescriptorError(f"{where}: could not parse API version {text!r}")
    return f"{int(match.group(1))}.{int(match.group(2) or 0)}"


def api_key(version: str) -> tuple[int, int]:
    major, minor = version.split(".")
    return int(major), int(minor)


@dataclass(frozen=True)
class BuildpackDescriptor:
    """What a builder's labels say about one buildpack (pack's ModuleLayerInfo + ModuleInfo)."""

    info: dict[str, Any]  # ModuleInfo keys present, in pack's order
    api: str
    stacks: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    order: list[dict[str, Any]] = field(default_factory=list)  # [{"group": [refs]}]
    kind: str = BUILDPACK  # or EXTENSION: an image extension (extension.toml)

    @property
    def id(self) -> str:
        return self.info["id"]

    @property
    def version(self) -> str:
        return self.info["version"]

    @property
    def full_name(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def escaped_id(self) -> str:
        return self.id.replace("/", "_")


def _info(table: dict[str, Any]) -> dict[str, Any]:
    return {k: table[k] for k in MODULE_INFO_KEYS if table.get(k)}


def _order(raw: Any) -> list[dict[str, Any]]:
    order = []
    for entry in raw or []:
        group = []
        for ref in entry.get("group") or []:
            item = _info(ref)
            if ref.get("optional"):
                item["optional"] = True
            group.append(item)
        order.append({"group": group})
    return order


def _stacks(raw: Any) -> list[dict[str, Any]]:
    return [
        {"id": s.get("id", ""), **({"mixins": s["mixins"]} if s.get("mixins") else {})}
        for s in raw or []
    ]


def _targets(raw: Any) -> list[dict[str, Any]]:
    targets = []
    for t in raw or []:
        target: dict[str, Any] = {"os": t.get("os", ""), "arch": t.get("arch", "")}
        if t.get("variant"):
            target["variant"] = t["variant"]
        distros = [
            {k: d[k] for k in ("name", "version") if d.get(k)} for d in t.get("distros") or []
        ]
        if distros:
            target["distros"] = distros
        targets.append(target)
    return targets


def parse_buildpack_toml(text: bytes, where: str) -> BuildpackDescriptor:
    """A buildpack's descriptor, checked as pack's validateBuildpackDescriptor checks it."""
    try:
        document = tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DescriptorError(f"{where}: buildpack.toml is not valid TOML: {exc}") from exc
    table = document.get("buildpack") or {}
    info = _info(table)
    if not info.get("id"):
        raise DescriptorError(f"{where}: buildpack.toml needs buildpack.id")
    if not info.get("version"):
        raise DescriptorError(f"{where}: buildpack.toml needs buildpack.version")
    descriptor = BuildpackDescriptor(
        info=info,
        api=api_version(str(document.get("api", ASSUMED_BUILDPACK_API)), where),
        stacks=_stacks(document.get("stacks")),
        targets=_targets(document.get("targets")),
        order=_order(document.get("order")),
    )
    if descriptor.order and (descriptor.stacks or descriptor.targets):
        raise DescriptorError(
            f"{where}: buildpack {descriptor.full_name} cannot have both targets/stacks "
            "and an order defined"
        )
    return descriptor


def parse_extension_toml(text: bytes, where: str) -> BuildpackDescriptor:
    """An image extension's descriptor (pack's ExtensionDescriptor: api, [extension],
    [[targets]]), checked as validateExtensionDescriptor checks it."""
    try:
        document = tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DescriptorError(f"{where}: extension.toml is not valid TOML: {exc}") from exc
    info = _info(document.get("extension") or {})
    for key in ("id", "version"):
        if not info.get(key):
            raise DescriptorError(f"{where}: extension.toml needs extension.{key}")
    return BuildpackDescriptor(
        info=info,
        api=api_version(str(document.get("api", ASSUMED_BUILDPACK_API)), where),
        targets=_targets(document.get("targets")),
        kind=EXTENSION,
    )


def descriptor_from_layers_label(
    buildpack_id: str, version: str, entry: dict[str, Any], kind: str = BUILDPACK
) -> BuildpackDescriptor:
    """A module as a package's io.buildpacks.buildpack.layers (or, for an extension package,
    io.buildpacks.extension.layers) label describes it. pack's extractExtensions keeps only
    the api, name and homepage of an extension."""
    info: dict[str, Any] = {"id": buildpack_id}
    if entry.get("name"):
        info["name"] = entry["name"]
    info["version"] = version
    if entry.get("homepage"):
        info["homepage"] = entry["homepage"]
    if kind == EXTENSION:
        return BuildpackDescriptor(
            info=info, api=str(entry.get("api") or ASSUMED_BUILDPACK_API), kind=EXTENSION
        )
    return BuildpackDescriptor(
        info=info,
        api=str(entry.get("api") or ASSUMED_BUILDPACK_API),
        stacks=list(entry.get("stacks") or []),
        targets=list(entry.get("targets") or []),
        order=list(entry.get("order") or []),
    )


class LifecycleDescriptor(NamedTuple):
    """lifecycle.toml: its version and the APIs it supports (pack's CompatDescriptor applied)."""

    version: str
    buildpack_api: str | None  # the deprecated single-value fields
    platform_api: str | None
    apis: dict[str, dict[str, list[str] | None]]  # {"buildpack": {"deprecated", "supported"}}

    def buildpack_apis(self) -> list[str]:
        both = self.apis["buildpack"]
        return [*(both["supported"] or []), *(both["deprecated"] or [])]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "api": {"buildpack": self.buildpack_api, "platform": self.platform_api},
            "apis": self.apis,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LifecycleDescriptor:
        return cls(data["version"], data["api"]["buildpack"], data["api"]["platform"], data["apis"])


def parse_lifecycle_toml(text: bytes, where: str) -> LifecycleDescriptor:
    try:
        document = tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DescriptorError(f"{where}: lifecycle.toml is not valid TOML: {exc}") from exc
    version = str((document.get("lifecycle") or {}).get("version") or "")
    if not version:
        raise DescriptorError(f"{where}: lifecycle.toml has no lifecycle.version")

    def api_list(kind: str, which: str) -> list[str] | None:
        raw = ((document.get("apis") or {}).get(kind) or {}).get(which)
        return None if raw is None else [api_version(str(v), where) for v in raw]

    apis = {
        kind: {"deprecated": api_list(kind, "deprecated"), "supported": api_list(kind, "supported")}
        for kind in ("buildpack", "platform")
    }
    old = document.get("api") or {}
    buildpack_api = api_version(str(old["buildpack"]), where) if old.get("buildpack") else None
    platform_api = api_version(str(old["platform"]), where) if old.get("platform") else None
    # pack's CompatDescriptor: the old fields become the earliest of the new lists, or the new
    # lists are filled from the old fields.
    if apis["buildpack"]["supported"] or apis["platform"]["supported"]:
        for kind in ("buildpack", "platform"):
            if apis[kind]["supported"]:
                earliest = min(
                    [*(apis[kind]["deprecated"] or []), *(apis[kind]["supported"] or [])],
                    key=api_key,
                )
                if kind == "buildpack":
                    buildpack_api = earliest
                else:
                    platform_api = earliest
    elif buildpack_api and platform_api:
        apis = {
            "buildpack": {"deprecated": None, "supported": [buildpack_api]},
            "platform": {"deprecated": None, "supported": [platform_api]},
        }
    return LifecycleDescriptor(version, buildpack_api, platform_api, apis)
