"""What the cache holds, as plain data (after huggingface_hub's cache scan): `ls` and `du`.

Rendering is the CLI's business; rebase and create-builder use the same queries. Plain SQL on
the sqlite3 driver: see database.py for why these paths avoid SQLAlchemy.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from packcache.refs import familiar, short_id
from packcache.store import queries

SORT_KEYS = ("size", "last-used", "created")


class Index(Protocol):
    """What these queries read from: a Store (or its Database)."""

    def read(self) -> AbstractContextManager[sqlite3.Connection]: ...


@dataclass(slots=True)
class LayerInfo:
    diff_id: str
    digests: list[str]  # blob digests known for this layer other than the diffID itself
    size: int  # bytes on disk
    uncompressed_size: int
    compression: str
    images: list[str]  # names of the cached images that use the layer
    first_seen: float
    last_used: float
    access_count: int


@dataclass(slots=True)
class ImageUsage:
    config_digest: str
    image_ids: list[str]
    refs: list[str]
    layers: int  # distinct layers in the image
    cached_layers: int
    size: int  # bytes on disk of its cached layers
    shared_size: int  # of those, bytes in layers other cached images use too
    unique_size: int

    @property
    def name(self) -> str:
        return self.refs[0] if self.refs else short_id(self.image_ids[0])


@dataclass(slots=True)
class DiskUsage:
    layers: int
    size: int  # bytes of blob files
    uncompressed_size: int
    images: list[ImageUsage] = field(default_factory=list)
    partial_files: int = 0  # temp files in ingest/: ingests running, or left by killed ones
    partial_size: int = 0


def _image_names(conn: sqlite3.Connection) -> dict[int, str]:
    """image key -> the name to show: its first ref, else its short image ID."""
    names = {
        key: familiar(ref)
        for key, ref in conn.execute("SELECT image_key, MIN(ref) FROM image_refs GROUP BY 1")
    }
    for key, image_id in conn.execute(
        "SELECT image_key, MIN(image_id) FROM image_sources GROUP BY 1"
    ):
        names.setdefault(key, short_id(image_id))
    return names


def image_names(db: Index) -> list[str]:
    """Every name of a cached image, as people type it (for the shell's completion)."""
    with db.read() as conn:
        refs = [ref for (ref,) in conn.execute("SELECT DISTINCT ref FROM image_refs ORDER BY ref")]
    return list(dict.fromkeys(map(familiar, refs)))


_LAYER_ORDER = {
    "size": "l.blob_size DESC, l.id",
    "created": "l.first_seen DESC, l.id",
    # Unary + keeps SQLite off the last_access index: walking it costs a random row read per
    # layer, slower on a large index than reading the rows in order and sorting them.
    "last-used": "+l.last_access DESC, l.id",
}


def list_layers(db: Index, image: str | None = None, sort: str = "last-used") -> list[LayerInfo]:
    """One entry per cached layer (of `image` only, in image order, when given).

    SQLite sorts and gathers each layer's other digests and users in one query; Python only
    names the users, since per-row work in Python dominates `ls` on a large index.
    """
    with db.read() as conn:
        if image is None:
            source, order, params = "layers l", _LAYER_ORDER[sort], ()
        else:
            image_key, _ = queries.resolve_image(conn, image)
            # A layer repeated in an image is listed once, where it first appears.
            source = (
                "(SELECT layer_key, MIN(position) AS position FROM image_layers"
                " WHERE image_key = ? GROUP BY layer_key) p JOIN layers l ON l.id = p.layer_key"
            )
            order, params = "p.position", (image_key,)
        rows = conn.execute(
            "SELECT l.diff_id, l.blob_size, l.size, l.compression, l.first_seen, l.last_access,"
            " l.access_count,"
            " (SELECT group_concat(d.digest) FROM layer_digests d"
            "  WHERE d.layer_key = l.id AND d.digest != l.diff_id),"
            " (SELECT group_concat(DISTINCT u.image_key) FROM image_layers u"
            "  WHERE u.layer_key = l.id)"
            f" FROM {source} WHERE l.blob_digest IS NOT NULL ORDER BY {order}",
            params,
        ).fetchall()
        names = {str(key): name for key, name in _image_names(conn).items()}
    layers = []
    for (
        diff_id,
        size,
        uncompressed,
        compression,
        first_seen,
        last_used,
        count,
        digests,
        users,
    ) in rows:
        if users is None:
            images = []
        elif "," in users:
            images = sorted({names.get(key, "?") for key in users.split(",")})
        else:
            images = [names.get(users, "?")]
        layers.append(
            LayerInfo(
                diff_id,
                sorted(digests.split(",")) if digests else [],
                size,
                uncompressed,
                compression,
                images,
                first_seen,
                last_used,
                count,
            )
        )
    return layers


def disk_usage(db: Index) -> DiskUsage:
    """Totals, and per image its size, shared size and unique size (like `docker system df -v`)."""
    with db.read() as conn:
        count, size, uncompressed = conn.execute(
            "SELECT COUNT(blob_digest), COALESCE(SUM(blob_size), 0), COALESCE(SUM(size), 0)"
            " FROM layers WHERE blob_digest IS NOT NULL"
        ).fetchone()
        conn.execute("BEGIN")  # one snapshot for the temp table and the query that uses it
        # Layers two or more images use: small, and answered from the (layer, image) index.
        conn.execute("CREATE TEMP TABLE shared (layer_key INTEGER PRIMARY KEY)")
        conn.execute(
            "INSERT INTO shared SELECT layer_key FROM image_layers GROUP BY layer_key"
            " HAVING COUNT(*) > 1"
        )
        # Per image (image_layers holds each layer once per image).
        per_image = conn.execute(
            "SELECT u.image_key, COUNT(*), COUNT(l.blob_size), COALESCE(SUM(l.blob_size), 0),"
            " COALESCE(SUM(CASE WHEN s.layer_key IS NOT NULL THEN l.blob_size END), 0)"
            " FROM image_layers u JOIN layers l ON l.id = u.layer_key"
            " LEFT JOIN shared s ON s.layer_key = u.layer_key GROUP BY u.image_key"
        ).fetchall()
        conn.execute("ROLLBACK")
        refs: dict[int, list[str]] = defaultdict(list)
        for key, ref in conn.execute("SELECT image_key, ref FROM image_refs ORDER BY ref"):
            refs[key].append(familiar(ref))
        ids: dict[int, list[str]] = defaultdict(list)
        for key, image_id in conn.execute(
            "SELECT image_key, image_id FROM image_sources ORDER BY image_id"
        ):
            ids[key].append(image_id)
        digests = conn.execute("SELECT id, config_digest FROM images").fetchall()
    usage = {row[0]: row[1:] for row in per_image}
    nothing = (0, 0, 0, 0)
    images = []
    for key, config_digest in digests:
        layers, cached, image_size, shared = usage.get(key, nothing)
        images.append(
            ImageUsage(
                config_digest,
                sorted(set(ids[key])) if key in ids else [config_digest],
                list(dict.fromkeys(refs[key])) if key in refs else [],
                layers,
                cached,
                image_size,
                shared,
                image_size - shared,
            )
        )
    images.sort(key=lambda image: (-image.size, image.name))
    partials = db.partials() if hasattr(db, "partials") else []
    return DiskUsage(
        layers=count,
        size=size,
        uncompressed_size=uncompressed,
        images=images,
        partial_files=len(partials),
        partial_size=sum(partial.size for partial in partials),
    )
