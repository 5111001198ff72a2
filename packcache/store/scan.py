"""What the cache holds, as plain data (after huggingface_hub's cache scan): `ls` and `du`.

Rendering is the CLI's business; rebase and create-builder use the same queries.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import Connection

from packcache.digest import short_id
from packcache.refs import familiar
from packcache.store.store import Store

SORT_KEYS = ("size", "last-used", "created")


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class ImageUsage:
    config_digest: str
    image_ids: list[str]
    refs: list[str]
    layers: int  # layers in the image
    cached_layers: int
    size: int  # bytes on disk of its cached layers
    shared_size: int  # of those, bytes in layers other cached images use too
    unique_size: int

    @property
    def name(self) -> str:
        return self.refs[0] if self.refs else short_id(self.image_ids[0])


@dataclass(frozen=True)
class DiskUsage:
    layers: int
    size: int  # bytes of blob files
    uncompressed_size: int
    images: list[ImageUsage] = field(default_factory=list)


def _image_names(conn: Connection) -> dict[str, str]:
    """config digest -> the name to show: its first ref, else its short image ID."""
    names: dict[str, str] = {}
    for config_digest, ref in conn.exec_driver_sql(
        "SELECT config_digest, MIN(ref) FROM image_refs GROUP BY config_digest"
    ):
        names[config_digest] = familiar(ref)
    for config_digest, image_id in conn.exec_driver_sql(
        "SELECT config_digest, MIN(image_id) FROM image_sources GROUP BY config_digest"
    ):
        names.setdefault(config_digest, short_id(image_id))
    return names


def list_layers(store: Store, image: str | None = None, sort: str = "last-used") -> list[LayerInfo]:
    """One entry per cached layer (of `image` only, in image order, when given)."""
    config_digest = store.resolve_image(image) if image else None
    with store.engine.connect() as conn:
        names = _image_names(conn)
        if config_digest is None:
            where, params = "", ()
        else:
            where = " WHERE l.diff_id IN (SELECT diff_id FROM image_layers WHERE config_digest = ?)"
            params = (config_digest,)
        rows = conn.exec_driver_sql(
            "SELECT l.diff_id, l.size, l.blob_size, l.compression, l.first_seen,"
            " l.last_access, l.access_count FROM layers l" + where,
            params,
        ).all()
        digests: dict[str, list[str]] = defaultdict(list)
        for diff_id, digest in conn.exec_driver_sql(
            "SELECT d.diff_id, d.digest FROM layer_digests d"
            + where.replace("l.diff_id", "d.diff_id")
            + (" AND" if where else " WHERE")
            + " d.digest != d.diff_id ORDER BY d.digest",
            params,
        ):
            digests[diff_id].append(digest)
        users: dict[str, list[str]] = defaultdict(list)
        for diff_id, user in conn.exec_driver_sql(
            "SELECT DISTINCT diff_id, config_digest FROM image_layers"
        ):
            users[diff_id].append(names.get(user, short_id(user)))
        order: dict[str, int] = {}
        if config_digest is not None:
            for position, diff_id in enumerate(store.image_diff_ids(config_digest)):
                order.setdefault(diff_id, position)
    layers = [
        LayerInfo(
            diff_id=r[0],
            digests=digests.get(r[0], []),
            size=r[2],
            uncompressed_size=r[1],
            compression=r[3],
            images=sorted(users.get(r[0], [])),
            first_seen=r[4],
            last_used=r[5],
            access_count=r[6],
        )
        for r in rows
    ]
    if config_digest is not None:
        layers.sort(key=lambda layer: order[layer.diff_id])
    elif sort == "size":
        layers.sort(key=lambda layer: layer.size, reverse=True)
    elif sort == "created":
        layers.sort(key=lambda layer: layer.first_seen, reverse=True)
    else:
        layers.sort(key=lambda layer: layer.last_used, reverse=True)
    return layers


def disk_usage(store: Store) -> DiskUsage:
    """Totals, and per image its size, shared size and unique size (like `docker system df -v`)."""
    with store.engine.connect() as conn:
        count, size, uncompressed = conn.exec_driver_sql(
            "SELECT COUNT(*), COALESCE(SUM(blob_size), 0), COALESCE(SUM(size), 0) FROM layers"
        ).one()
        per_image = conn.exec_driver_sql(
            "WITH uses AS (SELECT DISTINCT config_digest, diff_id FROM image_layers),"
            " users AS (SELECT diff_id, COUNT(*) AS n FROM uses GROUP BY diff_id)"
            " SELECT u.config_digest, COUNT(l.diff_id), COALESCE(SUM(l.blob_size), 0),"
            " COALESCE(SUM(CASE WHEN n.n > 1 THEN l.blob_size ELSE 0 END), 0)"
            " FROM uses u LEFT JOIN layers l ON l.diff_id = u.diff_id"
            " JOIN users n ON n.diff_id = u.diff_id GROUP BY u.config_digest"
        ).all()
        total_layers = dict(
            conn.exec_driver_sql(
                "SELECT config_digest, COUNT(*) FROM image_layers GROUP BY config_digest"
            ).all()
        )
        refs: dict[str, list[str]] = defaultdict(list)
        for config_digest, ref in conn.exec_driver_sql(
            "SELECT DISTINCT config_digest, ref FROM image_refs ORDER BY ref"
        ):
            refs[config_digest].append(familiar(ref))
        ids: dict[str, list[str]] = defaultdict(list)
        for config_digest, image_id in conn.exec_driver_sql(
            "SELECT DISTINCT config_digest, image_id FROM image_sources ORDER BY image_id"
        ):
            ids[config_digest].append(image_id)
        all_images = [row[0] for row in conn.exec_driver_sql("SELECT config_digest FROM images")]
    usage = {row[0]: row[1:] for row in per_image}
    images = []
    for config_digest in all_images:
        cached, image_size, shared = usage.get(config_digest, (0, 0, 0))
        images.append(
            ImageUsage(
                config_digest=config_digest,
                image_ids=ids.get(config_digest) or [config_digest],
                refs=refs.get(config_digest, []),
                layers=total_layers.get(config_digest, 0),
                cached_layers=cached,
                size=image_size,
                shared_size=shared,
                unique_size=image_size - shared,
            )
        )
    images.sort(key=lambda image: (-image.size, image.name))
    return DiskUsage(layers=count, size=size, uncompressed_size=uncompressed, images=images)
