"""Reading an image config (the JSON a config digest names)."""

from __future__ import annotations

import json
from typing import Any

from packcache.errors import PackcacheError


def parse_config(config: bytes) -> dict[str, Any]:
    """The config as JSON; an image config is an object with rootfs.diff_ids."""
    try:
        document = json.loads(config)
    except ValueError as exc:
        raise PackcacheError(f"an image config is not valid JSON: {exc}") from exc
    rootfs = document.get("rootfs") if isinstance(document, dict) else None
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise PackcacheError("an image config has no rootfs.diff_ids")
    return document


def config_diff_ids(config: bytes) -> list[str]:
    """The diffIDs of an image's layers, bottom first."""
    return list(parse_config(config)["rootfs"]["diff_ids"])
