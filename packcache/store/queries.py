"""Read queries over the index, in plain SQL on a sqlite3 connection (see database.py for why).

Shared by the store, `ls`/`du`, prune's planning and the operations, so each question about
the index is answered in one place.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator

from packcache.errors import NotFoundError, PackcacheError, not_in_cache
from packcache.refs import looks_like_id, normalize

HOST = socket.gethostname()
CACHED_LAYER_COLUMNS = (
    "l.diff_id, l.blob_digest, l.blob_size, l.size, l.compression, l.last_access, l.access_count"
)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cached_layer(conn: sqlite3.Connection, diff_id: str) -> tuple | None:
    return conn.execute(
        f"SELECT {CACHED_LAYER_COLUMNS} FROM layers l"
        " WHERE l.diff_id = ? AND l.blob_digest IS NOT NULL",
        (diff_id,),
    ).fetchone()


def cached_layer_by_digest(conn: sqlite3.Connection, digest: str) -> tuple | None:
    """The cached layer whose stored or any other known blob form has this digest."""
    return conn.execute(
        f"SELECT {CACHED_LAYER_COLUMNS} FROM layer_digests d JOIN layers l ON l.id = d.layer_key"
        " WHERE d.digest = ? AND l.blob_digest IS NOT NULL",
        (digest,),
    ).fetchone()


def select_in(conn: sqlite3.Connection, sql: str, values: Iterable[str]) -> Iterator[tuple]:
    """The rows of `sql`, whose one `{}` is the list of an IN, for all `values`: in batches,
    to stay under SQLite's limit on variables."""
    values = list(values)
    for start in range(0, len(values), 500):
        batch = values[start : start + 500]
        yield from conn.execute(sql.format(",".join("?" * len(batch))), batch)


def layer_keys(conn: sqlite3.Connection, diff_ids: list[str]) -> dict[str, int]:
    """diffID -> layer row id, for the diffIDs that have a row."""
    return dict(select_in(conn, "SELECT diff_id, id FROM layers WHERE diff_id IN ({})", diff_ids))


def cached_diff_ids(conn: sqlite3.Connection, diff_ids: Iterable[str]) -> set[str]:
    sql = "SELECT diff_id FROM layers WHERE blob_digest IS NOT NULL AND diff_id IN ({})"
    return {row[0] for row in select_in(conn, sql, set(diff_ids))}


def dead_leases(conn: sqlite3.Connection) -> list[int]:
    """Leases past their expiry, or held by a process of this host that no longer runs."""
    now = time.time()
    return [
        lease_id
        for lease_id, host, pid, expires in conn.execute(
            "SELECT id, host, pid, expires FROM leases"
        )
        if expires <= now or (host == HOST and not pid_alive(pid))
    ]


def leased_diff_ids(conn: sqlite3.Connection) -> set[str]:
    """Layers under a live lease."""
    dead = dead_leases(conn)
    return {
        diff_id
        for diff_id, lease_id in conn.execute("SELECT diff_id, lease_id FROM lease_layers")
        if lease_id not in dead
    }


def resolve_image(conn: sqlite3.Connection, ref: str) -> tuple[int, str]:
    """(image key, config digest) of the image a tag, a short or full image ID names."""
    if looks_like_id(ref):
        prefix = ref if ref.startswith("sha256:") else "sha256:" + ref
        pattern = prefix + "%"
        found = set(
            conn.execute(
                "SELECT i.id, i.config_digest FROM image_sources s JOIN images i"
                " ON i.id = s.image_key WHERE s.image_id LIKE ?"
                " UNION SELECT id, config_digest FROM images WHERE config_digest LIKE ?",
                (pattern, pattern),
            )
        )
        if len(found) > 1:
            raise NotFoundError(f"image ID {ref!r} is ambiguous: it matches {len(found)} images")
        if found:
            return found.pop()
    try:
        name = normalize(ref)
    except PackcacheError:
        name = None
    if name is not None:
        # A ref can name different images in different engines: take the one seen last.
        row = conn.execute(
            "SELECT i.id, i.config_digest FROM image_refs r JOIN images i ON i.id = r.image_key"
            " WHERE r.ref = ? ORDER BY i.last_seen DESC LIMIT 1",
            (name,),
        ).fetchone()
        if row is not None:
            return row
    raise not_in_cache(ref)


def resolve_layer(conn: sqlite3.Connection, text: str) -> str:
    """The diffID of the cached layer a full or short diffID or blob digest names."""
    if not looks_like_id(text):
        raise NotFoundError(f"{text!r} is not a layer ID (a diffID or digest, 4+ hex digits)")
    prefix = (text if text.startswith("sha256:") else "sha256:" + text) + "%"
    found = {
        row[0]
        for row in conn.execute(
            "SELECT l.diff_id FROM layers l WHERE l.blob_digest IS NOT NULL AND (l.diff_id LIKE ?"
            " OR l.id IN (SELECT layer_key FROM layer_digests WHERE digest LIKE ?))",
            (prefix, prefix),
        )
    }
    if len(found) > 1:
        raise NotFoundError(f"layer ID {text!r} is ambiguous: it matches {len(found)} layers")
    if not found:
        raise NotFoundError(f"no layer {text!r} in the cache")
    return found.pop()


def total_size(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COALESCE(SUM(blob_size), 0) FROM layers").fetchone()[0]
