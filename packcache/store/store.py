"""The store: blob files plus their SQLite index, behind one small API.

Every write follows one order: bytes to ingest/, fsync, verify, rename into blobs/, then index
(under the shared cache lock). Every removal holds the exclusive cache lock, deletes the rows,
commits, then unlinks the files. So the index never names a blob that is not on disk.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from packcache.digest import SHA256_PREFIX, sha256_digest
from packcache.errors import CorruptBlobError, NotFoundError, PackcacheError
from packcache.refs import looks_like_id, normalize
from packcache.store import schema
from packcache.store.blobs import BlobFiles, StagedBlob
from packcache.store.database import open_database, writing
from packcache.store.layer import MEDIA_TYPES, CachedLayer
from packcache.store.locking import CacheLock

LEASE_TTL_S = 6 * 3600.0  # longer than any operation; a lease of a killed process dies sooner
HOST = socket.gethostname()


@dataclass(frozen=True)
class ImageRecord:
    """What the store keeps about an image: its config and where it was seen."""

    config: bytes  # the config JSON, verbatim (its sha256 is the config digest)
    engine: str = ""  # the daemon's ID; "" when the image came from an archive
    image_id: str | None = None  # the ID the engine gives it (config or manifest digest)
    manifest_digest: str | None = None
    refs: list[str] = field(default_factory=list)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)

    @property
    def diff_ids(self) -> list[str]:
        return list(json.loads(self.config).get("rootfs", {}).get("diff_ids") or [])


@dataclass(frozen=True)
class IngestResult:
    diff_id: str
    digest: str  # the digest of the bytes that were read
    size: int
    written: bool  # False when the cache already held the layer and only hashed (or skipped)


@dataclass(frozen=True)
class EvictedLayer:
    diff_id: str
    blob_digest: str
    blob_size: int


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """Protects layers from prune while an operation reads or writes them."""

    def __init__(self, store: Store, lease_id: int) -> None:
        self.store = store
        self.id = lease_id

    def add(self, diff_ids: Iterable[str]) -> None:
        rows = [{"lease_id": self.id, "diff_id": d} for d in set(diff_ids)]
        if rows:
            with writing(self.store.engine) as conn, conn.begin():
                conn.execute(sqlite_insert(schema.lease_layers).on_conflict_do_nothing(), rows)


class Store:
    def __init__(self, root: Path, engine: Engine) -> None:
        self.root = root
        self.engine = engine
        self.blobs = BlobFiles(root)
        self.lock = CacheLock(root / "lock")

    @classmethod
    def open(cls, root: Path) -> Store:
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            blobs = BlobFiles(root)
            blobs.create_dirs()
            if not os.access(root, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            raise PackcacheError(
                f"cache directory {root} is not writable: {exc.strerror or exc}"
            ) from exc
        engine = open_database(root / "index.db", CacheLock(root / "lock"))
        return cls(root, engine)

    # -- layers ----------------------------------------------------------------------------

    def _layer_from_row(self, row) -> CachedLayer:
        return CachedLayer(
            store=self,
            diff_id=row.diff_id,
            digest=row.blob_digest,
            size=row.blob_size,
            uncompressed_size=row.size,
            compression=row.compression,
            last_access=row.last_access,
            access_count=row.access_count,
        )

    def layer(self, diff_id: str) -> CachedLayer | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.layers).where(schema.layers.c.diff_id == diff_id)
            ).first()
        return self._layer_from_row(row) if row else None

    def layer_by_digest(self, digest: str) -> CachedLayer | None:
        """The cached layer whose stored or any other known blob form has this digest."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.layers)
                .join(
                    schema.layer_digests,
                    schema.layer_digests.c.diff_id == schema.layers.c.diff_id,
                )
                .where(schema.layer_digests.c.digest == digest)
            ).first()
        return self._layer_from_row(row) if row else None

    def digests_of(self, diff_id: str) -> list[tuple[str, str | None, int]]:
        """Every known (digest, media type, size) of a layer's blob forms."""
        with self.engine.connect() as conn:
            return [
                (r.digest, r.media_type, r.size)
                for r in conn.execute(
                    select(schema.layer_digests).where(schema.layer_digests.c.diff_id == diff_id)
                )
            ]

    def cached_diff_ids(self, diff_ids: Iterable[str]) -> set[str]:
        wanted = list(set(diff_ids))
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):  # stay under SQLite's variable limit
                batch = wanted[start : start + 500]
                found.update(
                    conn.execute(
                        select(schema.layers.c.diff_id).where(schema.layers.c.diff_id.in_(batch))
                    ).scalars()
                )
        return found

    def touch(self, diff_ids: Iterable[str]) -> None:
        """Mark layers as used now: one small UPDATE, which is all LRU needs."""
        ids = list(set(diff_ids))
        if not ids:
            return
        with writing(self.engine) as conn, conn.begin():
            conn.execute(
                update(schema.layers)
                .where(schema.layers.c.diff_id.in_(ids))
                .values(
                    last_access=time.time(),
                    access_count=schema.layers.c.access_count + 1,
                )
            )

    def ingest_layer(
        self,
        source: BinaryIO,
        *,
        expected_digest: str | None = None,
        expected_diff_id: str | None = None,
        media_type: str | None = None,
        lease: Lease | None = None,
    ) -> IngestResult:
        """Store a layer blob read from `source` (gzip, zstd or plain tar), in one pass.

        A layer the cache already holds is only hashed (to verify and to learn this blob
        form's digest), never written again. The caller drains `source` if it needs to when
        the result says nothing was read (known digest: `size` is then the stored size).
        """
        if expected_digest is not None:
            known = self.layer_by_digest(expected_digest)
            if known is not None:
                if lease is not None:
                    lease.add([known.diff_id])
                return IngestResult(known.diff_id, expected_digest, -1, written=False)
        already = expected_diff_id is not None and self.layer(expected_diff_id) is not None
        if already and lease is not None:
            lease.add([expected_diff_id])  # so it cannot be evicted while we only hash
        staged = self.blobs.stage(
            source,
            expected_digest=expected_digest,
            expected_diff_id=expected_diff_id,
            write=not already,
        )
        try:
            written = self._commit(staged, media_type, lease)
        finally:
            self.blobs.discard(staged)  # no-op once renamed into place
        return IngestResult(staged.diff_id, staged.digest, staged.size, written=written)

    def _commit(self, staged: StagedBlob, media_type: str | None, lease: Lease | None) -> bool:
        now = time.time()
        media_type = media_type or MEDIA_TYPES[staged.compression]
        with self.lock.shared(), writing(self.engine) as conn, conn.begin():
            exists = conn.execute(
                select(schema.layers.c.diff_id).where(schema.layers.c.diff_id == staged.diff_id)
            ).first()
            written = False
            if exists is None:
                if staged.path is None:
                    raise PackcacheError(
                        f"layer {staged.diff_id} was evicted while it was being hashed; retry"
                    )
                self.blobs.commit(staged)  # file first: a crash here leaves an orphan, not a lie
                conn.execute(
                    insert(schema.layers).values(
                        diff_id=staged.diff_id,
                        size=staged.uncompressed_size,
                        blob_digest=staged.digest,
                        blob_size=staged.size,
                        compression=staged.compression,
                        first_seen=now,
                        last_access=now,
                        access_count=0,
                    )
                )
                written = True
            conn.execute(
                sqlite_insert(schema.layer_digests)
                .values(
                    digest=staged.digest,
                    diff_id=staged.diff_id,
                    media_type=media_type,
                    size=staged.size,
                )
                .on_conflict_do_nothing()
            )
            if lease is not None:
                conn.execute(
                    sqlite_insert(schema.lease_layers)
                    .values(lease_id=lease.id, diff_id=staged.diff_id)
                    .on_conflict_do_nothing()
                )
        return written

    def evict(self, diff_ids: Iterable[str]) -> list[EvictedLayer]:
        """Remove these layers (rows, then files) unless leased. Returns what was removed."""
        ids = list(set(diff_ids))
        return self.evict_selected(lambda _conn, _leased: ids)

    def evict_selected(
        self, choose: Callable[[Connection, set[str]], Iterable[str]]
    ) -> list[EvictedLayer]:
        """Remove the layers `choose(conn, leased)` picks, holding the cache lock throughout.

        Choosing inside the lock and the write transaction means the choice (LRU order, the
        total size) is exact: nothing is added, leased or evicted between choosing and removing.
        Leased layers are skipped even if chosen.
        """
        with self.lock.exclusive():
            with writing(self.engine) as conn, conn.begin():
                self._drop_dead_leases(conn)
                leased = self.leased(conn)
                ids = [d for d in dict.fromkeys(choose(conn, leased)) if d not in leased]
                rows = []
                for start in range(0, len(ids), 500):
                    rows += conn.execute(
                        select(
                            schema.layers.c.diff_id,
                            schema.layers.c.blob_digest,
                            schema.layers.c.blob_size,
                        ).where(schema.layers.c.diff_id.in_(ids[start : start + 500]))
                    ).all()
                order = {diff_id: i for i, diff_id in enumerate(ids)}
                rows.sort(key=lambda r: order[r.diff_id])  # report in the order chosen (LRU)
                removed = [EvictedLayer(r.diff_id, r.blob_digest, r.blob_size) for r in rows]
                self.delete_layer_rows(conn, [r.diff_id for r in removed])
            for layer in removed:  # after commit: a crash now leaves orphans, never dangling rows
                self.blobs.remove(layer.blob_digest)
        return removed

    def delete_layer_rows(self, conn: Connection, diff_ids: list[str]) -> None:
        for start in range(0, len(diff_ids), 500):
            batch = diff_ids[start : start + 500]
            conn.execute(delete(schema.layers).where(schema.layers.c.diff_id.in_(batch)))
        # Forget images none of whose layers are cached any more.
        conn.exec_driver_sql(
            "DELETE FROM images WHERE config_digest IN ("
            " SELECT il.config_digest FROM image_layers il"
            " LEFT JOIN layers l ON l.diff_id = il.diff_id"
            " GROUP BY il.config_digest HAVING COUNT(l.diff_id) = 0)"
        )

    def evict_corrupt(self, diff_id: str) -> None:
        """Drop a layer whose blob failed its digest check, lease or not: it is not that layer."""
        with self.lock.exclusive():
            with writing(self.engine) as conn, conn.begin():
                row = conn.execute(
                    select(schema.layers.c.blob_digest).where(schema.layers.c.diff_id == diff_id)
                ).first()
                self.delete_layer_rows(conn, [diff_id])
            if row is not None:
                self.blobs.remove(row.blob_digest)

    # -- leases -----------------------------------------------------------------------------

    @contextmanager
    def lease(self, purpose: str) -> Iterator[Lease]:
        now = time.time()
        with writing(self.engine) as conn, conn.begin():
            lease_id = conn.execute(
                insert(schema.leases).values(
                    host=HOST,
                    pid=os.getpid(),
                    purpose=purpose,
                    created=now,
                    expires=now + LEASE_TTL_S,
                )
            ).inserted_primary_key[0]
        try:
            yield Lease(self, lease_id)
        finally:
            with writing(self.engine) as conn, conn.begin():
                conn.execute(delete(schema.leases).where(schema.leases.c.id == lease_id))

    @staticmethod
    def _dead_leases(conn: Connection) -> list[int]:
        """Leases past their expiry, or held by a process of this host that no longer runs."""
        now = time.time()
        return [
            row.id
            for row in conn.execute(select(schema.leases))
            if row.expires <= now or (row.host == HOST and not pid_alive(row.pid))
        ]

    def _drop_dead_leases(self, conn: Connection) -> None:
        dead = self._dead_leases(conn)
        if dead:
            conn.execute(delete(schema.leases).where(schema.leases.c.id.in_(dead)))

    def leased(self, conn: Connection) -> set[str]:
        """Layers under a live lease."""
        dead = self._dead_leases(conn)
        query = select(schema.lease_layers.c.diff_id).distinct()
        if dead:
            query = query.where(schema.lease_layers.c.lease_id.not_in(dead))
        return set(conn.execute(query).scalars())

    # -- images -----------------------------------------------------------------------------

    def record_image(self, image: ImageRecord) -> str:
        """Record an image's config, layers, source and refs. Returns the config digest."""
        try:
            config = json.loads(image.config)
        except ValueError as exc:
            raise CorruptBlobError(f"image config is not valid JSON: {exc}") from exc
        digest = image.config_digest
        now = time.time()
        platform = {
            "os": config.get("os"),
            "architecture": config.get("architecture"),
            "variant": config.get("variant"),
            "created": config.get("created"),
        }
        with writing(self.engine) as conn, conn.begin():
            conn.execute(
                sqlite_insert(schema.images)
                .values(
                    config_digest=digest,
                    config=image.config.decode(),
                    first_seen=now,
                    last_seen=now,
                    **platform,
                )
                .on_conflict_do_update(index_elements=["config_digest"], set_={"last_seen": now})
            )
            conn.execute(
                delete(schema.image_layers).where(schema.image_layers.c.config_digest == digest)
            )
            layer_rows = [
                {"config_digest": digest, "position": i, "diff_id": d}
                for i, d in enumerate(image.diff_ids)
            ]
            if layer_rows:
                conn.execute(insert(schema.image_layers), layer_rows)
            conn.execute(
                sqlite_insert(schema.image_sources)
                .values(
                    config_digest=digest,
                    engine=image.engine,
                    image_id=image.image_id or digest,
                    manifest_digest=image.manifest_digest,
                    last_seen=now,
                )
                .on_conflict_do_update(
                    index_elements=["config_digest", "engine"],
                    set_={
                        "image_id": image.image_id or digest,
                        "manifest_digest": image.manifest_digest,
                        "last_seen": now,
                    },
                )
            )
            for ref in image.refs:  # a tag names one image per engine: it moves
                conn.execute(
                    sqlite_insert(schema.image_refs)
                    .values(engine=image.engine, ref=normalize(ref), config_digest=digest)
                    .on_conflict_do_update(
                        index_elements=["engine", "ref"], set_={"config_digest": digest}
                    )
                )
        return digest

    def resolve_image(self, ref: str) -> str:
        """The config digest of the image a tag, short or full image ID names."""
        with self.engine.connect() as conn:
            if looks_like_id(ref):
                prefix = ref if ref.startswith(SHA256_PREFIX) else SHA256_PREFIX + ref
                found = set(
                    conn.execute(
                        select(schema.image_sources.c.config_digest).where(
                            schema.image_sources.c.image_id.startswith(prefix)
                        )
                    ).scalars()
                ) | set(
                    conn.execute(
                        select(schema.images.c.config_digest).where(
                            schema.images.c.config_digest.startswith(prefix)
                        )
                    ).scalars()
                )
                if len(found) > 1:
                    raise NotFoundError(f"image ID {ref!r} is ambiguous: it matches {len(found)}")
                if found:
                    return found.pop()
            try:
                name = normalize(ref)
            except PackcacheError:
                name = None
            if name is not None:
                row = conn.execute(
                    select(schema.image_refs.c.config_digest)
                    .join(
                        schema.images,
                        schema.images.c.config_digest == schema.image_refs.c.config_digest,
                    )
                    .where(schema.image_refs.c.ref == name)
                    .order_by(schema.images.c.last_seen.desc())
                ).first()
                if row is not None:
                    return row.config_digest
        raise NotFoundError(f"no image {ref!r} in the cache")

    def resolve_layer(self, text: str) -> str:
        """The diffID of the cached layer a full or short diffID or blob digest names."""
        if not looks_like_id(text):
            raise NotFoundError(f"{text!r} is not a layer ID (a diffID or digest, 4+ hex digits)")
        prefix = text if text.startswith(SHA256_PREFIX) else SHA256_PREFIX + text
        with self.engine.connect() as conn:
            found = set(
                conn.execute(
                    select(schema.layer_digests.c.diff_id).where(
                        schema.layer_digests.c.digest.startswith(prefix)
                    )
                ).scalars()
            ) | set(
                conn.execute(
                    select(schema.layers.c.diff_id).where(
                        schema.layers.c.diff_id.startswith(prefix)
                    )
                ).scalars()
            )
        if len(found) > 1:
            raise NotFoundError(f"layer ID {text!r} is ambiguous: it matches {len(found)} layers")
        if not found:
            raise NotFoundError(f"no layer {text!r} in the cache")
        return found.pop()

    def forget_image(self, config_digest: str) -> None:
        """Drop an image's record (refs, sources, layer list); its layers are not touched."""
        with writing(self.engine) as conn, conn.begin():
            conn.execute(
                delete(schema.images).where(schema.images.c.config_digest == config_digest)
            )

    def image_diff_ids(self, config_digest: str) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(schema.image_layers.c.diff_id)
                    .where(schema.image_layers.c.config_digest == config_digest)
                    .order_by(schema.image_layers.c.position)
                ).scalars()
            )
