"""Which cached layer a builder input became: content key -> diffID (and what was read with it).

A buildpack directory or archive whose key is unchanged, and whose layer is still cached, is
neither read nor re-tarred. The entries live in the index (table input_layers); an entry is
used only while the store still holds its layer, so an eviction never yields a wrong layer.
"""

from __future__ import annotations

from typing import Any

from packcache.store.store import Store

RECIPE = "1"  # bump when the layer recipes change: old entries then no longer match


class InputCache:
    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, key: str) -> dict[str, Any] | None:
        return self.store.input_layer(f"{RECIPE}:{key}")

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.store.record_input_layer(f"{RECIPE}:{key}", value)
