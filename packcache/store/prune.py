"""Evicting layers: `prune` (LRU, age, size cap), `rm`, and the automatic size cap."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from packcache.errors import UsageError
from packcache.store import queries
from packcache.store.store import EvictedLayer, Store
from packcache.units import parse_size

MAX_SIZE_ENV = "PACKCACHE_MAX_SIZE"


@dataclass(frozen=True)
class PruneResult:
    removed: list[EvictedLayer]
    size_before: int
    dry_run: bool
    in_use: list[str] = field(default_factory=list)  # chosen but leased, so kept

    @property
    def reclaimed(self) -> int:
        return sum(layer.blob_size for layer in self.removed)

    @property
    def size_after(self) -> int:
        return self.size_before - self.reclaimed


def _choose(
    conn: sqlite3.Connection,
    leased: set[str],
    *,
    max_size: int | None,
    older_than: float | None,
    image_key: int | None,
    everything: bool,
) -> tuple[list[tuple[str, str, int]], list[str]]:
    """Pick layers to evict, least recently used first. Returns (chosen rows, leased skipped)."""
    scope, params = "", ()
    if image_key is not None:
        scope = " AND id IN (SELECT layer_key FROM image_layers WHERE image_key = ?)"
        params = (image_key,)
    rows = conn.execute(
        "SELECT diff_id, blob_digest, blob_size, last_access FROM layers"
        " WHERE blob_digest IS NOT NULL" + scope + " ORDER BY last_access, id",
        params,
    ).fetchall()
    cutoff = time.time() - older_than if older_than is not None else None
    over = queries.total_size(conn) - max_size if max_size is not None else 0
    chosen: list[tuple[str, str, int]] = []
    skipped: list[str] = []
    for diff_id, blob_digest, blob_size, last_access in rows:
        wanted = (
            everything
            or (cutoff is not None and last_access < cutoff)
            or (max_size is not None and over > 0)
        )
        if not wanted:
            continue
        if diff_id in leased:
            skipped.append(diff_id)
            continue
        chosen.append((diff_id, blob_digest, blob_size))
        over -= blob_size
    return chosen, skipped


def prune(
    store: Store,
    *,
    max_size: int | None = None,
    older_than: float | None = None,
    image: str | None = None,
    everything: bool = False,
    dry_run: bool = False,
) -> PruneResult:
    """Evict layers: all of them, those unused for `older_than` seconds, and LRU ones until the
    cache is at or under `max_size` bytes; limited to `image`'s layers when given."""
    if max_size is None and older_than is None and not everything and image is None:
        raise UsageError("say what to prune: --max-size, --older-than, --image or --all")
    with store.read() as conn:
        image_key = queries.resolve_image(conn, image)[0] if image else None
    # --image alone evicts that image's layers.
    everything = everything or (image is not None and max_size is None and older_than is None)
    options = dict(
        max_size=max_size, older_than=older_than, image_key=image_key, everything=everything
    )
    if dry_run:
        with store.read() as conn:
            chosen, skipped = _choose(conn, queries.leased_diff_ids(conn), **options)
            size_before = queries.total_size(conn)
        removed = [EvictedLayer(*row) for row in chosen]
        return PruneResult(removed, size_before, dry_run=True, in_use=skipped)

    state: dict[str, object] = {}

    def choose(conn: sqlite3.Connection, leased: set[str]) -> list[str]:
        chosen, skipped = _choose(conn, leased, **options)
        state["size_before"] = queries.total_size(conn)
        state["skipped"] = skipped
        return [row[0] for row in chosen]

    removed = store.evict_selected(choose)
    return PruneResult(
        removed, int(state["size_before"]), dry_run=False, in_use=list(state["skipped"])
    )


def remove_image(store: Store, ref: str) -> list[EvictedLayer]:
    """`rm IMAGE`: forget the image and evict the layers no other cached image uses."""
    with store.read() as conn:
        image_key, config_digest = queries.resolve_image(conn, ref)

    def choose(conn: sqlite3.Connection, _leased: set[str]) -> list[str]:
        return [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT l.diff_id FROM image_layers il"
                " JOIN layers l ON l.id = il.layer_key"
                " WHERE il.image_key = ? AND il.layer_key NOT IN"
                " (SELECT layer_key FROM image_layers WHERE image_key != ?)",
                (image_key, image_key),
            )
        ]

    removed = store.evict_selected(choose)
    store.forget_image(config_digest)
    return removed


def remove_layer(store: Store, layer_id: str) -> list[EvictedLayer]:
    """`rm --layer ID`: evict one layer (unless an operation holds it)."""
    return store.evict([store.resolve_layer(layer_id)])


MAX_CONFIG_BYTES = 1 << 20  # a settings file, not data: anything larger is a mistake


def _read_config(path: Path) -> str | None:
    """config.toml's text, read without following a link; None if there is none."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise UsageError(f"cannot read {path}: {reason}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"cannot read {path}: it is not a regular file")
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"cannot read {path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read {path}: not UTF-8 text (byte {exc.start})") from None


def configured_max_size(store: Store) -> int | None:
    """The automatic size cap: $PACKCACHE_MAX_SIZE, else `max-size` in <cache>/config.toml."""
    text = os.environ.get(MAX_SIZE_ENV)
    source = MAX_SIZE_ENV
    if text is None:
        path = store.layout.config
        content = _read_config(path)
        if content is None:
            return None
        import tomllib  # imported here: most caches have no config.toml

        try:
            config = tomllib.loads(content)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        unknown = set(config) - {"max-size"}
        if unknown:
            raise UsageError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
        if "max-size" not in config:
            return None
        text, source = str(config["max-size"]), str(path)
    try:
        return parse_size(text)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from exc


def enforce_size_cap(store: Store, cap: int | None) -> PruneResult | None:
    """Prune to `cap`, if any: called after every command that adds data, with the cap it
    read before (configured_max_size), so a bad setting stops it before it changes anything."""
    if cap is None:
        return None
    return prune(store, max_size=cap)
