"""Which cached layer a builder input became: content key -> diffID (and what was read with it).

A buildpack directory or archive whose key is unchanged, and whose layer is still in the store,
is neither read nor re-tarred. The store has no table for this, so the map is one small JSON
file beside it, replaced atomically; losing it (or a race between two runs) costs only a
re-tar, never a wrong layer: an entry is used only while the store still holds its diffID.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

RECIPE = "1"  # bump when the layer recipes change: old entries then no longer match


class InputCache:
    def __init__(self, store_root: Path) -> None:
        self.path = Path(store_root) / "builder-inputs.json"
        self._entries: dict[str, Any] | None = None
        self._dirty = False

    def _load(self) -> dict[str, Any]:
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._entries = {}
            if not isinstance(self._entries, dict):
                self._entries = {}
        return self._entries

    def get(self, key: str) -> dict[str, Any] | None:
        return self._load().get(f"{RECIPE}:{key}")

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._load()[f"{RECIPE}:{key}"] = value
        self._dirty = True

    def forget(self, key: str) -> None:
        if self._load().pop(f"{RECIPE}:{key}", None) is not None:
            self._dirty = True

    def save(self) -> None:
        """Merge with what another run may have written meanwhile, then replace the file."""
        if not self._dirty:
            return
        try:
            on_disk = json.loads(self.path.read_text())
        except (OSError, ValueError):
            on_disk = {}
        merged = {**(on_disk if isinstance(on_disk, dict) else {}), **(self._entries or {})}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".builder-inputs-")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(merged, out, sort_keys=True)
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        self._dirty = False
