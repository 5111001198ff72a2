"""What the cache holds, as plain data (after huggingface_hub's cache scan): `ls` and `du`.

Rendering is the CLI's business; rebase and create-builder use the same queries. Plain SQL on
the sqlite3 driver: see database.py for why these paths avoid SQLAlchemy.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field

from packcache.refs import familiar, short_id
from packcache.store import queries
from packcache.store.database import Database

SORT_KEYS = ("size", "last-used", "created")


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


def list_layers(db: Database, image: str | None = None, sort: str = "last-used") -> list[LayerInfo]:
    """One entry per cached layer (of `image` only, in image order, when given)."""
    with db.read() as conn:
        if image is None:
            scope, params = "", ()
        else:
            image_key, _ = queries.resolve_image(conn, image)
            scope = " AND l.id IN (SELECT layer_key FROM image_layers WHERE image_key = ?)"
            params = (image_key,)
        rows = conn.execute(
            "SELECT l.id, l.diff_id, l.blob_size, l.size, l.compression, l.first_seen,"
            " l.last_access, l.access_count FROM layers l WHERE l.blob_digest IS NOT NULL" + scope,
            params,
        ).fetchall()
        digests: dict[int, list[str]] = defaultdict(list)
        for key, digest in conn.execute(
            "SELECT d.layer_key, d.digest FROM layer_digests d JOIN layers l ON l.id = d.layer_key"
            " WHERE d.digest != l.diff_id AND l.blob_digest IS NOT NULL" + scope + " ORDER BY 2",
            params,
        ):
            digests[key].append(digest)
        names = _image_names(conn)
        users: dict[int, list[str]] = defaultdict(list)
        user_rows = conn.execute(
            "SELECT DISTINCT layer_key, image_key FROM image_layers"
            + (
                ""
                if image is None
                else " WHERE layer_key IN (SELECT layer_key FROM image_layers WHERE image_key = ?)"
            ),
            params,
        )
        for layer_key, image_key in user_rows:
            users[layer_key].append(names.get(image_key, "?"))
        order = (
            {}
            if image is None
            else {
                key: position
                for position, key in conn.execute(
                    "SELECT position, layer_key FROM image_layers WHERE image_key = ?"
                    " ORDER BY position DESC",
                    params,
                )
            }
        )
    if image is not None:
        rows.sort(key=lambda row: order[row[0]])
    layers = [
        LayerInfo(
            diff_id=diff_id,
            digests=digests.get(key, []),
            size=blob_size,
            uncompressed_size=size,
            compression=compression,
            images=sorted(users.get(key, [])),
            first_seen=first_seen,
            last_used=last_access,
            access_count=count,
        )
        for key, diff_id, blob_size, size, compression, first_seen, last_access, count in rows
    ]
    if image is not None:
        pass  # already in image order
    elif sort == "size":
        layers.sort(key=lambda layer: layer.size, reverse=True)
    elif sort == "created":
        layers.sort(key=lambda layer: layer.first_seen, reverse=True)
    else:
        layers.sort(key=lambda layer: layer.last_used, reverse=True)
    return layers


def disk_usage(db: Database) -> DiskUsage:
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
    return DiskUsage(layers=count, size=size, uncompressed_size=uncompressed, images=images)
