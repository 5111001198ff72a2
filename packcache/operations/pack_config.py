"""pack's own config (`$PACK_HOME/config.toml`, default `~/.pack/config.toml`): the keys a
rebase reads from it, `pull-policy` and `[[run-images]] image / mirrors`, and the
`lifecycle-image` create-builder takes a lifecycle version from.

The file is the user's, but read as hostile input like every other: bounded, every value's
type checked, and anything wrong is one error naming the file. A missing file is an empty
config, as pack treats it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packcache.errors import UsageError

MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class PackConfig:
    path: Path
    pull_policy: str | None = None
    run_image_mirrors: dict[str, list[str]] = field(default_factory=dict)
    lifecycle_image: str | None = None


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
        lifecycle_image or None,
    )
