"""An image as a daemon describes it (`docker image inspect`), read once into typed fields.

Nothing above the transports reads the inspect JSON itself: a missing section is an empty
value here, so callers never guard against absent keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(item) for item in value) if isinstance(value, list | tuple) else ()


@dataclass(frozen=True)
class ContainerConfig:
    """The runtime part of an image config ("config" in OCI, "Config" in an inspect)."""

    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # KEY=value, as the image lists them
    labels: Mapping[str, str] = field(default_factory=dict)
    user: str = ""
    working_dir: str = ""
    healthcheck: Mapping[str, Any] = field(default_factory=dict)
    on_build: tuple[str, ...] = ()
    volumes: Mapping[str, Any] = field(default_factory=dict)
    exposed_ports: Mapping[str, Any] = field(default_factory=dict)
    stop_signal: str = ""
    shell: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, raw: Any) -> ContainerConfig:
        """From an image config's "config" or an inspect's "Config" (the same fields)."""
        section = _dict(raw)
        return cls(
            cmd=_strings(section.get("Cmd")),
            entrypoint=_strings(section.get("Entrypoint")),
            env=_strings(section.get("Env")),
            labels={str(k): str(v) for k, v in _dict(section.get("Labels")).items()},
            user=section.get("User") or "",
            working_dir=section.get("WorkingDir") or "",
            healthcheck=_dict(section.get("Healthcheck")),
            on_build=_strings(section.get("OnBuild")),
            volumes=_dict(section.get("Volumes")),
            exposed_ports=_dict(section.get("ExposedPorts")),
            stop_signal=section.get("StopSignal") or "",
            shell=_strings(section.get("Shell")),
        )

    def env_map(self) -> dict[str, str]:
        """The environment as a mapping (entries without "=" are left out)."""
        return dict(entry.split("=", 1) for entry in self.env if "=" in entry)

    def env_value(self, key: str) -> str:
        """The value of one variable, "" when unset (the first entry wins, as in a runtime)."""
        for entry in self.env:
            name, _, value = entry.partition("=")
            if name == key:
                return value
        return ""


@dataclass(frozen=True)
class InspectedImage:
    """What a daemon says about one image it holds."""

    id: str  # the daemon's image ID: the config digest, or the manifest's on a containerd store
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    diff_ids: tuple[str, ...] = ()
    os: str = ""
    architecture: str = ""
    variant: str = ""
    os_version: str = ""
    author: str = ""
    config: ContainerConfig = field(default_factory=ContainerConfig)

    @classmethod
    def from_inspect(cls, raw: Mapping[str, Any]) -> InspectedImage:
        return cls(
            id=raw.get("Id") or "",
            repo_tags=_strings(raw.get("RepoTags")),
            repo_digests=_strings(raw.get("RepoDigests")),
            diff_ids=_strings(_dict(raw.get("RootFS")).get("Layers")),
            os=raw.get("Os") or "",
            architecture=raw.get("Architecture") or "",
            variant=raw.get("Variant") or "",
            os_version=raw.get("OsVersion") or "",
            author=raw.get("Author") or "",
            config=ContainerConfig.from_json(raw.get("Config")),
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any], image_id: str) -> InspectedImage:
        """The same fields from an image config (a registry's or the cache's), as checked by
        jsondoc.check_image_config."""
        return cls(
            id=image_id,
            diff_ids=tuple(config["rootfs"]["diff_ids"]),
            os=config.get("os") or "",
            architecture=config.get("architecture") or "",
            variant=config.get("variant") or "",
            os_version=config.get("os.version") or "",
            author=config.get("author") or "",
            config=ContainerConfig.from_json(config.get("config")),
        )

    @property
    def labels(self) -> Mapping[str, str]:
        return self.config.labels

    @property
    def platform(self) -> str:
        """os/architecture, with linux for an image that names no OS."""
        return f"{self.os or 'linux'}/{self.architecture}"
