"""builder.toml, read the way pack reads it (builder/config_reader.go), with errors that name
the key and its line.

Accepted: every key pack's builder.Config decodes (buildpacks, extensions, their orders, system
buildpacks, targets, stack/build/run images, lifecycle); anything else is refused, as pack's
undecoded-keys check refuses it, with the key's line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from packcache.builder.tomlkeys import KeyPath, dotted, key_lines
from packcache.errors import UsageError

# pack's dist.ModuleInfo fields, in the order Go writes them into labels.
MODULE_INFO_KEYS = (
    "id",
    "name",
    "version",
    "description",
    "homepage",
    "keywords",
    "exec-env",
    "licenses",
    "clear-env",
)
ENV_SUFFIXES = ("", "default", "override", "append", "prepend")
# Masterminds/semver's NewVersion (pack parses lifecycle.version with it): lenient, v1 and 1.2 too.
SEMVER = re.compile(
    r"v?[0-9]+(\.[0-9]+)?(\.[0-9]+)?"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
)
TOP_KEYS = (
    "description",
    "buildpacks",
    "extensions",
    "order",
    "order-extensions",
    "stack",
    "lifecycle",
    "run",
    "build",
    "targets",
    "system",
)


class ConfigError(UsageError):
    """builder.toml is not one packcache can build from; the message names file, line and key."""


@dataclass(frozen=True)
class ModuleRef:
    """An order entry: a buildpack id, optionally a version, and whether it may fail detection."""

    info: dict[str, Any]  # ModuleInfo keys present, id first
    optional: bool = False
    line: int = 0

    @property
    def id(self) -> str:
        return self.info["id"]

    @property
    def version(self) -> str:
        return self.info.get("version", "")


class BuildpackSource(NamedTuple):
    """One [[buildpacks]] entry: where the buildpack comes from and what it must be."""

    uri: str  # as written (or the deprecated `image`, as docker://IMAGE)
    id: str
    version: str
    line: int
    key: str  # "buildpacks[0].uri", for messages


class Target(NamedTuple):
    """pack's dist.Target: a platform the builder is for ([[targets]] or --target)."""

    os: str
    arch: str = ""
    variant: str = ""
    distros: tuple[tuple[str, str], ...] = ()  # (name, version)

    @property
    def platform(self) -> str:
        return "/".join(part for part in (self.os, self.arch, self.variant) if part)


class RunImage(NamedTuple):
    image: str
    mirrors: list[str] | None  # None when not written: pack keeps that distinction in labels


class BuildEnv(NamedTuple):
    name: str
    value: str
    suffix: str
    delim: str


@dataclass
class BuilderConfig:
    path: Path
    description: str = ""
    buildpacks: list[BuildpackSource] = field(default_factory=list)
    order: list[list[ModuleRef]] | None = None  # None when no [[order]] is written
    stack_id: str = ""
    stack_run_image: str = ""
    stack_run_image_mirrors: list[str] | None = None
    build_image: str = ""
    build_env: list[BuildEnv] = field(default_factory=list)
    run_images: list[RunImage] = field(default_factory=list)
    lifecycle_uri: str = ""
    lifecycle_version: str = ""
    lifecycle_line: int = 0
    extensions: list[BuildpackSource] = field(default_factory=list)
    order_extensions: list[list[ModuleRef]] | None = None  # None when not written
    system_pre: list[ModuleRef] = field(default_factory=list)
    system_post: list[ModuleRef] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def build_config_env(self) -> dict[str, str]:
        """File name -> contents under /cnb/build-config/env, as pack's ParseBuildConfigEnv."""
        files: dict[str, str] = {}
        for env in self.build_env:
            files[env.name + (f".{env.suffix}" if env.suffix else "")] = env.value
            if env.delim:
                files[f"{env.name}.delim"] = env.delim
        return files


class _Reader:
    """Typed access to the parsed document, every complaint located."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = key_lines(text)

    def line(self, key: KeyPath) -> int:
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return 0

    def fail(self, key: KeyPath, message: str) -> ConfigError:
        line = self.line(key)
        where = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{where}: {message}")

    def table(self, value: Any, key: KeyPath, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"'{dotted(key)}' must be a table")
        for name in value:
            if name not in allowed:
                sub = (*key, name)
                raise self.fail(sub, f"unknown key '{dotted(sub)}'")
        return value

    def tables(self, value: Any, key: KeyPath, allowed: tuple[str, ...]) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise self.fail(key, f"'{dotted(key)}' must be an array of tables ([[{key[-1]}]])")
        return [self.table(item, (*key, i), allowed) for i, item in enumerate(value)]

    def string(self, table: dict[str, Any], key: KeyPath) -> str:
        value = table.get(key[-1], "")
        if not isinstance(value, str):
            raise self.fail(key, f"'{dotted(key)}' must be a string")
        return value

    def strings(self, table: dict[str, Any], key: KeyPath) -> list[str] | None:
        if key[-1] not in table:
            return None
        value = table[key[-1]]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"'{dotted(key)}' must be an array of strings")
        return list(value)

    def boolean(self, table: dict[str, Any], key: KeyPath) -> bool:
        value = table.get(key[-1], False)
        if not isinstance(value, bool):
            raise self.fail(key, f"'{dotted(key)}' must be true or false")
        return value

    def module_info(self, table: dict[str, Any], key: KeyPath) -> dict[str, Any]:
        """The ModuleInfo keys present, checked and in pack's order (omitted when empty)."""
        info: dict[str, Any] = {}
        for name in MODULE_INFO_KEYS:
            sub = (*key, name)
            if name not in table:
                continue
            if name in ("keywords", "exec-env"):
                value: Any = self.strings(table, sub)
            elif name == "clear-env":
                value = self.boolean(table, sub)
            elif name == "licenses":
                value = [
                    {k: self.string(t, (*sub, i, k)) for k in ("type", "uri")}
                    for i, t in enumerate(self.tables(table[name], sub, ("type", "uri")))
                ]
            else:
                value = self.string(table, sub)
            if value:
                info[name] = value
        return info


def read_config(path: Path) -> BuilderConfig:
    """Parse and check builder.toml; raise ConfigError naming the key and line of any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (TOML is UTF-8): {exc.reason}") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    reader = _Reader(path, text)
    top = reader.table(document, (), TOP_KEYS)
    config = BuilderConfig(path=path.resolve())
    config.description = reader.string(top, ("description",))
    config.buildpacks = _read_modules(reader, top, "buildpacks")
    config.extensions = _read_modules(reader, top, "extensions")
    config.order = _read_order(reader, top, "order")
    config.order_extensions = _read_order(reader, top, "order-extensions")
    _read_system(reader, top, config)
    config.targets = _read_targets(reader, top)
    _read_images(reader, top, config)
    _read_lifecycle(reader, top, config)
    return config


def _read_modules(reader: _Reader, top: dict[str, Any], name: str) -> list[BuildpackSource]:
    """[[buildpacks]] or [[extensions]]: pack's ModuleConfig (ModuleInfo and uri or image)."""
    allowed = (*MODULE_INFO_KEYS, "uri", "image")
    sources = []
    for i, entry in enumerate(reader.tables(top.get(name, []), (name,), allowed)):
        key: KeyPath = (name, i)
        reader.module_info(entry, key)  # type-checks the descriptive keys pack also accepts
        uri = reader.string(entry, (*key, "uri"))
        image = reader.string(entry, (*key, "image"))
        if uri and image:
            raise reader.fail((*key, "image"), f"'{dotted(key)}': set uri or image, not both")
        if not uri and not image:
            raise reader.fail(key, f"'{dotted(key)}' needs a uri (or the deprecated image)")
        sources.append(
            BuildpackSource(
                uri=uri or f"docker://{image}",
                id=reader.string(entry, (*key, "id")),
                version=reader.string(entry, (*key, "version")),
                line=reader.line((*key, "uri" if uri else "image")),
                key=dotted((*key, "uri" if uri else "image")),
            )
        )
    return sources


def _read_refs(reader: _Reader, value: Any, key: KeyPath) -> list[ModuleRef]:
    """An array of pack's dist.ModuleRef (ModuleInfo and optional), each needing an id."""
    refs = []
    for j, ref in enumerate(reader.tables(value, key, (*MODULE_INFO_KEYS, "optional"))):
        sub: KeyPath = (*key, j)
        info = reader.module_info(ref, sub)
        if not info.get("id"):
            raise reader.fail(sub, f"'{dotted(sub)}' needs an id")
        refs.append(ModuleRef(info, reader.boolean(ref, (*sub, "optional")), reader.line(sub)))
    return refs


def _read_order(reader: _Reader, top: dict[str, Any], name: str) -> list[list[ModuleRef]] | None:
    """[[order]] or [[order-extensions]]: groups of refs (None when the key is not written)."""
    if name not in top:
        return None
    return [
        _read_refs(reader, entry.get("group", []), (name, i, "group"))
        for i, entry in enumerate(reader.tables(top[name], (name,), ("group",)))
    ]


def _read_system(reader: _Reader, top: dict[str, Any], config: BuilderConfig) -> None:
    """[system.pre] / [system.post]: buildpacks the lifecycle runs before / after the order."""
    system = reader.table(top.get("system", {}), ("system",), ("pre", "post"))
    for part in ("pre", "post"):
        table = reader.table(system.get(part, {}), ("system", part), ("buildpacks",))
        refs = _read_refs(reader, table.get("buildpacks", []), ("system", part, "buildpacks"))
        setattr(config, f"system_{part}", refs)


def _read_targets(reader: _Reader, top: dict[str, Any]) -> list[Target]:
    """[[targets]]: pack's dist.Target (os, arch, variant, [[targets.distros]])."""
    targets = []
    allowed = ("os", "arch", "variant", "distros")
    for i, entry in enumerate(reader.tables(top.get("targets", []), ("targets",), allowed)):
        key: KeyPath = ("targets", i)
        distros = tuple(
            (reader.string(d, (*key, "distros", j, "name")),
             reader.string(d, (*key, "distros", j, "version")))
            for j, d in enumerate(
                reader.tables(entry.get("distros", []), (*key, "distros"), ("name", "version"))
            )
        )  # fmt: skip
        targets.append(
            Target(
                reader.string(entry, (*key, "os")),
                reader.string(entry, (*key, "arch")),
                reader.string(entry, (*key, "variant")),
                distros,
            )
        )
    return targets


def _read_images(reader: _Reader, top: dict[str, Any], config: BuilderConfig) -> None:
    stack = reader.table(
        top.get("stack", {}), ("stack",), ("id", "build-image", "run-image", "run-image-mirrors")
    )
    config.stack_id = reader.string(stack, ("stack", "id"))
    stack_build = reader.string(stack, ("stack", "build-image"))
    config.stack_run_image = reader.string(stack, ("stack", "run-image"))
    config.stack_run_image_mirrors = reader.strings(stack, ("stack", "run-image-mirrors"))

    build = reader.table(top.get("build", {}), ("build",), ("image", "env"))
    config.build_image = reader.string(build, ("build", "image"))
    _read_build_env(reader, build, config)

    run = reader.table(top.get("run", {}), ("run",), ("images",))
    for i, entry in enumerate(
        reader.tables(run.get("images", []), ("run", "images"), ("image", "mirrors"))
    ):
        key = ("run", "images", i)
        image = reader.string(entry, (*key, "image"))
        if not image:
            raise reader.fail(key, f"'{dotted(key)}' needs an image")
        config.run_images.append(RunImage(image, reader.strings(entry, (*key, "mirrors"))))

    _merge_stack(reader, config, stack_build)


def _read_build_env(reader: _Reader, build: dict[str, Any], config: BuilderConfig) -> None:
    """[[build.env]]: the environment the builder gives buildpacks, as pack's BuildConfigEnv."""
    for i, env in enumerate(
        reader.tables(
            build.get("env", []), ("build", "env"), ("name", "value", "suffix", "delim", "exec-env")
        )
    ):
        key: KeyPath = ("build", "env", i)
        name = reader.string(env, (*key, "name"))
        if not name:
            raise reader.fail(key, f"'{dotted(key)}' needs a name")
        suffix = reader.string(env, (*key, "suffix"))
        if suffix not in ENV_SUFFIXES:
            raise reader.fail(
                (*key, "suffix"),
                f"'{dotted((*key, 'suffix'))}' is {suffix!r}; "
                "use default, override, append or prepend",
            )
        delim = reader.string(env, (*key, "delim"))
        reader.strings(env, (*key, "exec-env"))
        if suffix in ("append", "prepend") and not delim:
            raise reader.fail(
                (*key, "suffix"),
                f"'{dotted(key)}' ({name}) with suffix {suffix} needs a delim",
            )
        config.build_env.append(BuildEnv(name, reader.string(env, (*key, "value")), suffix, delim))


def _merge_stack(reader: _Reader, config: BuilderConfig, stack_build: str) -> None:
    """pack's ValidateConfig, then mergeStackWithImages (RFC-0096: [build]/[run] over [stack])."""
    if not config.build_image and not stack_build:
        raise reader.fail(("build",), "build.image (or stack.build-image) is required")
    if config.build_image and stack_build and config.build_image != stack_build:
        raise reader.fail(
            ("stack", "build-image"),
            f"stack.build-image ({stack_build}) and build.image "
            f"(line {reader.line(('build', 'image'))}: {config.build_image}) do not match",
        )
    if not config.run_images and (not config.stack_run_image or not config.stack_id):
        raise reader.fail(("run",), "run.images (or stack.id with stack.run-image) is required")
    if (
        config.stack_run_image
        and config.run_images
        and config.run_images[0].image != config.stack_run_image
    ):
        raise reader.fail(
            ("stack", "run-image"),
            f"stack.run-image ({config.stack_run_image}) and run.images[0].image "
            f"({config.run_images[0].image}) do not match",
        )
    config.build_image = config.build_image or stack_build
    if config.run_images:
        config.stack_run_image = config.run_images[0].image
        config.stack_run_image_mirrors = config.run_images[0].mirrors
    else:
        config.run_images = [RunImage(config.stack_run_image, config.stack_run_image_mirrors)]


def _read_lifecycle(reader: _Reader, top: dict[str, Any], config: BuilderConfig) -> None:
    lifecycle = reader.table(top.get("lifecycle", {}), ("lifecycle",), ("uri", "version"))
    config.lifecycle_uri = reader.string(lifecycle, ("lifecycle", "uri"))
    config.lifecycle_version = reader.string(lifecycle, ("lifecycle", "version"))
    config.lifecycle_line = reader.line(("lifecycle",))
    if config.lifecycle_uri and config.lifecycle_version:
        raise reader.fail(
            ("lifecycle", "version"), "lifecycle can only declare version or uri, not both"
        )
    if config.lifecycle_version and not SEMVER.fullmatch(config.lifecycle_version):
        raise reader.fail(
            ("lifecycle", "version"),
            f"'lifecycle.version' must be a valid semver (is {config.lifecycle_version!r})",
        )
