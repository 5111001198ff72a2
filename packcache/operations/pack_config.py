"""pack's own config (`$PACK_HOME/config.toml`, default `~/.pack/config.toml`): the keys a
rebase reads from it, `pull-policy`, `[[run-images]] image / mirrors` and
`[registry-mirrors]` (registry -> mirror host, "*" for every registry: pack's image fetcher
reads every image it fetches from the mirror instead, pkg/image/fetcher.go and
internal/name/name.go TranslateRegistry; the result keeps its own name), and the
`lifecycle-image` create-builder takes a lifecycle version from.

The file is the user's, but read as hostile input like every other: bounded, every value's
type checked, and anything wrong is one error naming the file. A missing file is an empty
config, as pack treats it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packcache.errors import UsageError
from packcache.refs import looks_like_id
from packcache.transports.registry import DOCKER_HUB, ImageName

MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class PackConfig:
    path: Path
    pull_policy: str | None = None
    run_image_mirrors: dict[str, list[str]] = field(default_factory=dict)
    registry_mirrors: dict[str, str] = field(default_factory=dict)
    lifecycle_image: str | None = None

    def translate(self, name: str) -> str:
        return translate_registry(name, self.registry_mirrors)


# go-containerregistry's name for Docker Hub, the key pack's config uses for it.
GCR_DOCKER_HUB = "index.docker.io"


def translate_registry(name: str, mirrors: Mapping[str, str]) -> str:
    """pack's TranslateRegistry: `name` on the mirror of its registry ("*" first), its
    repository path and tag or digest kept; `name` itself where no mirror applies."""
    if not mirrors or looks_like_id(name):
        return name
    parsed = ImageName.parse(name)
    registry = GCR_DOCKER_HUB if parsed.host == DOCKER_HUB else parsed.host
    mirror = mirrors["*"] if "*" in mirrors else mirrors.get(registry)
    if mirror is None:
        return name
    sep = "@" if parsed.reference.startswith("sha256:") else ":"
    translated = f"{mirror}/{parsed.repository}{sep}{parsed.reference}"
    try:
        ImageName.parse(translated)
    except UsageError as exc:
        raise UsageError(f"registry mirror {mirror!r} for {name}: {exc}") from None
    return translated


def config_path(environ: dict[str, str] | None = None) -> Path:
    """Where pack reads its config: $PACK_HOME/config.toml, else ~/.pack/config.toml."""
    env = os.environ if environ is None else environ
    home = env.get("PACK_HOME") or str(Path.home() / ".pack")
    return Path(home) / "config.toml"


def _strings(value: Any, path: Path, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UsageError(f"pack's config {path}: {key} must be a list of strings")
    return list(value)


def _run_images(value: Any, path: Path) -> dict[str, list[str]]:
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise UsageError(f"pack's config {path}: run-images must be [[run-images]] tables")
    mirrors: dict[str, list[str]] = {}
    for entry in value:
        image = entry.get("image")
        if not isinstance(image, str) or not image:
            raise UsageError(f"pack's config {path}: a [[run-images]] entry has no image")
        # As pack's map: a later entry for the same image replaces an earlier one.
        mirrors[image] = _strings(entry.get("mirrors", []), path, f"the mirrors of {image}")
    return mirrors


def _registry_mirrors(value: Any, path: Path) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(mirror, str) and mirror for key, mirror in value.items()
    ):
        raise UsageError(
            f'pack\'s config {path}: registry-mirrors must be a table of registry = "mirror"'
        )
    return dict(value)


def read_pack_config(path: Path | None = None) -> PackConfig:
    """The config at `path` (default: config_path()); see the module doc."""
    path = path or config_path()
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return PackConfig(path)
    except OSError as exc:
        raise UsageError(f"cannot read pack's config {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"pack's config {path} is more than {MAX_CONFIG_BYTES} bytes")
    import tomllib  # imported here: most hosts have no pack config

    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"pack's config {path} is not valid TOML: {exc}") from exc
    policy = document.get("pull-policy")
    if policy is not None and not isinstance(policy, str):
        raise UsageError(f"pack's config {path}: pull-policy must be a string")
    lifecycle_image = document.get("lifecycle-image")
    if lifecycle_image is not None and not isinstance(lifecycle_image, str):
        raise UsageError(f"pack's config {path}: lifecycle-image must be a string")
    return PackConfig(
        path,
        policy or None,
        _run_images(document.get("run-images", []), path),
        _registry_mirrors(document.get("registry-mirrors", {}), path),
        lifecycle_image or None,
    )
