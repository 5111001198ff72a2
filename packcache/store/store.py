"""The store: blob files plus their SQLite index, behind one small API.

Every write follows one order: bytes to ingest/, fsync, verify, rename into blobs/, then index
(under the shared cache lock). Every removal holds the exclusive cache lock, checks each file can
be removed, updates the rows, commits, then unlinks the files. So the index never names a blob
that is not on disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from packcache.digest import VerifyingReader, sha256_digest
from packcache.errors import CorruptBlobError, NotFoundError, PackcacheError
from packcache.refs import familiar, normalize
from packcache.store import queries
from packcache.store.blobs import BlobFiles, Partial, StagedBlob
from packcache.store.database import Database
from packcache.store.layer import MEDIA_TYPES, CachedLayer
from packcache.store.layout import CacheLayout
from packcache.store.locking import CacheLock
from packcache.store.opening import prepare

if TYPE_CHECKING:
    from sqlalchemy import Connection

# SQLAlchemy owns the schema (schema.py, Alembic) and the maintenance writes (evictions, image
# removal); it is imported inside the methods that use it. The writes every import, load, rebase
# and create-builder makes (leases, last access, committing blobs, recording images and builder
# inputs) are plain SQL on the sqlite3 driver, because importing SQLAlchemy would cost those
# commands a noticeable share of their time. It is imported on the main thread only: importing
# it in the background races the main thread's imports.

LEASE_TTL_S = 6 * 3600.0  # longer than any operation; a lease of a killed process dies sooner


@dataclass(frozen=True)
class ImageRecord:
    """What the store keeps about an image: its config and where it was seen."""

    config: bytes  # the config JSON, verbatim (its sha256 is the config digest)
    engine: str = ""  # the daemon's ID; "" when the image came from an archive
    image_id: str | None = None  # the ID the engine gives it (config or manifest digest)
    manifest_digest: str | None = None
    manifest: bytes | None = None  # the manifest JSON, when the engine's blobs matter
    refs: list[str] = field(default_factory=list)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)


class IngestResult(NamedTuple):
    diff_id: str
    digest: str  # the digest of the bytes that were read
    size: int  # bytes read; -1 when nothing was read (the digest was already known)
    written: bool  # False when the cache already held the layer and only hashed (or skipped)


@dataclass(frozen=True)
class EvictedLayer:
    diff_id: str
    blob_digest: str
    blob_size: int


class Lease:
    """Protects layers from prune while an operation reads or writes them."""

    def __init__(self, store: Store, lease_id: int) -> None:
        self.store = store
        self.id = lease_id

    def add(self, diff_ids: Iterable[str]) -> None:
        ids = set(diff_ids)
        if ids:
            with self.store.db.write_plain(durable=False) as conn:
                _insert_lease_rows(conn, self.id, ids)

    def hold(self, diff_ids: Iterable[str]) -> set[str]:
        """Lease these layers and return the ones cached. Both in one write transaction: a
        prune either evicted a layer before (it is not returned) or skips it while the lease
        lasts. Checking first and leasing after would let a prune slip in between."""
        ids = set(diff_ids)
        if not ids:
            return set()
        with self.store.db.write_plain(durable=False) as conn:
            _insert_lease_rows(conn, self.id, ids)
            return queries.cached_diff_ids(conn, ids)

    def hold_by_digest(self, digest: str) -> CachedLayer | None:
        """The cached layer with this blob digest, leased (as `hold`), or None. A digest the
        cache does not know costs a read, not a write transaction: archives name many."""
        with self.store.db.read() as conn:
            if queries.cached_layer_by_digest(conn, digest) is None:
                return None
        with self.store.db.write_plain(durable=False) as conn:
            row = queries.cached_layer_by_digest(conn, digest)
            if row is not None:
                _insert_lease_rows(conn, self.id, [row[0]])
        return self.store._layer(row)


RECORDED_CONFIG_FIELDS = ("os", "architecture", "variant", "created")


def recorded_config_fields(config: dict) -> list[str | None]:
    """The config fields the index keeps in columns; raises if one is not a string."""
    values = [config.get(name) for name in RECORDED_CONFIG_FIELDS]
    for name, value in zip(RECORDED_CONFIG_FIELDS, values, strict=True):
        if value is not None and not isinstance(value, str):
            raise CorruptBlobError(f"image config field {name!r} is not a string: {value!r:.40}")
    return values


def _insert_lease_rows(conn: sqlite3.Connection, lease_id: int, diff_ids: Iterable[str]) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO lease_layers (lease_id, diff_id) VALUES (?, ?)",
        [(lease_id, diff_id) for diff_id in diff_ids],
    )


def _driver(conn: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under a SQLAlchemy one, for the shared plain-SQL queries."""
    return conn.connection.driver_connection  # type: ignore[return-value]


class Store:
    """The cache: blob files, their index and the lock, reached only through these methods."""

    def __init__(self, blobs: BlobFiles, *, writable: bool = True) -> None:
        self.layout = blobs.layout
        self.root = blobs.layout.root
        self.writable = writable
        self.blobs = blobs
        self.lock = CacheLock(self.layout.lock, writable=writable)
        self.db = Database(self.layout.index, self.lock, writable=writable)
        if writable:
            self.db.tighten_side_files()
            self.blobs.reclaim_partials()  # space of killed ingests comes back at the next write

    @classmethod
    def open(cls, root: Path, *, writable: bool = True) -> Store:
        """Open (writable: create or upgrade) the cache at `root`. Read-only (`writable=False`)
        needs no write access to it: for `ls`, `du`, `info` and `verify`; a cache with no
        index yet is created as a writable open would."""
        blobs = BlobFiles(CacheLayout(Path(root)))
        return cls(blobs, writable=prepare(blobs.layout, blobs, writable=writable))

    # -- files ------------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read connection to the index (plain sqlite3: see database.py)."""
        with self.db.read() as conn:
            yield conn

    def stage(
        self,
        source: BinaryIO,
        *,
        expected_digest: str | None = None,
        expected_diff_id: str | None = None,
        write: bool = True,
    ) -> StagedBlob:
        """Hash (and write to ingest/) a layer blob, to be committed with commit_staged(_many)
        and then discarded: see BlobFiles.stage."""
        return self.blobs.stage(
            source, expected_digest=expected_digest, expected_diff_id=expected_diff_id, write=write
        )

    def open_staged(self, staged: StagedBlob) -> VerifyingReader:
        """A staged (verified, not yet committed) blob read back: see BlobFiles.open_staged."""
        return self.blobs.open_staged(staged)

    def discard(self, staged: StagedBlob) -> None:
        """Remove a staged blob's temp file (a no-op once it is committed)."""
        self.blobs.discard(staged)

    def prefetch(self, digests: Iterable[str]) -> None:
        """Have the kernel start reading these blobs (a load streams them next)."""
        self.blobs.prefetch(digests)

    def partials(self) -> list[Partial]:
        """Temp files in ingest/: blobs being written, or left by killed processes."""
        return self.blobs.partials()

    def open_layer_blob(self, diff_id: str, digest: str, size: int) -> VerifyingReader:
        """For CachedLayer: open its blob, count the use, evict it if its bytes are wrong."""
        if self.writable:
            self.touch([diff_id])
        return self.blobs.open(digest, size, on_mismatch=lambda: self.evict_corrupt(diff_id))

    # -- layers ----------------------------------------------------------------------------

    def _layer(self, row: tuple | None) -> CachedLayer | None:
        if row is None:
            return None
        diff_id, digest, size, uncompressed_size, compression, last_access, count = row
        return CachedLayer(
            self, diff_id, digest, size, uncompressed_size, compression, last_access, count
        )

    def layer(self, diff_id: str) -> CachedLayer | None:
        with self.db.read() as conn:
            return self._layer(queries.cached_layer(conn, diff_id))

    def layer_by_digest(self, digest: str, lease: Lease | None = None) -> CachedLayer | None:
        """The cached layer whose stored or any other known blob form has this digest (held
        by `lease`, if given: see Lease.hold)."""
        if lease is not None:
            return lease.hold_by_digest(digest)
        with self.db.read() as conn:
            return self._layer(queries.cached_layer_by_digest(conn, digest))

    def digests_of(self, diff_id: str) -> list[tuple[str, str | None, int]]:
        """Every known (digest, media type, size) of a layer's blob forms."""
        with self.db.read() as conn:
            return conn.execute(
                "SELECT d.digest, d.media_type, d.size FROM layer_digests d"
                " JOIN layers l ON l.id = d.layer_key WHERE l.diff_id = ? ORDER BY d.digest",
                (diff_id,),
            ).fetchall()

    def cached_diff_ids(self, diff_ids: Iterable[str], lease: Lease | None = None) -> set[str]:
        """Which of these layers are cached (held by `lease`, if given: see Lease.hold)."""
        if lease is not None:
            return lease.hold(diff_ids)
        with self.db.read() as conn:
            return queries.cached_diff_ids(conn, diff_ids)

    def touch(self, diff_ids: Iterable[str]) -> None:
        """Mark layers as used now: one small UPDATE, which is all LRU needs."""
        ids = list(set(diff_ids))
        now = time.time()
        if ids:
            with self.db.write_plain(durable=False) as conn:  # worth no sync
                conn.executemany(
                    "UPDATE layers SET last_access = ?, access_count = access_count + 1"
                    " WHERE diff_id = ? AND blob_digest IS NOT NULL",
                    [(now, diff_id) for diff_id in ids],
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
        form's digest), never written again; with a known `expected_digest` it is not read at
        all (the caller drains `source` if it must).
        """
        if expected_digest is not None:
            known = self.layer_by_digest(expected_digest, lease)
            if known is not None:
                return IngestResult(known.diff_id, expected_digest, -1, written=False)
        # Leased, so a cached layer cannot be evicted while we only hash.
        cached = expected_diff_id is not None and bool(
            self.cached_diff_ids([expected_diff_id], lease)
        )
        staged = self.stage(
            source,
            expected_digest=expected_digest,
            expected_diff_id=expected_diff_id,
            write=not cached,
        )
        try:
            written = self.commit_staged(staged, media_type, lease)
        finally:
            self.discard(staged)  # no-op once renamed into place
        return IngestResult(staged.diff_id, staged.digest, staged.size, written=written)

    def commit_staged(
        self, staged: StagedBlob, media_type: str | None = None, lease: Lease | None = None
    ) -> bool:
        """Move a blob staged by `blobs.stage` into place and index it (or, if the layer is
        cached already, only record this blob form's digest). Returns whether it was written.
        The staged file is consumed either way: discard it afterwards (a no-op if renamed)."""
        return self.commit_staged_many([staged], media_type, lease)[0]

    def commit_staged_many(
        self,
        staged_blobs: list[StagedBlob],
        media_type: str | None = None,
        lease: Lease | None = None,
    ) -> list[bool]:
        """commit_staged for several blobs in one index transaction and one round of
        directory fsyncs (not one per layer). Files first: every blob is renamed into place
        and its directory synced before the rows naming it commit, so a crash leaves an
        orphan, never a row without its file. If one fails, none is committed: the blobs this
        call already moved into place are removed again while the write lock is still held
        (every rename into blobs/ happens under it, so no other process has named them)."""
        now = time.time()
        renamed: list[str] = []  # digests of the blobs moved into place so far
        with self.lock.shared(), self.db.write_plain() as conn:
            try:
                keys, writes = self._plan_commit(conn, staged_blobs, now)
                self.blobs.commit_many([staged for staged, _key in writes], renamed)
                conn.executemany(
                    "UPDATE layers SET size = ?, blob_digest = ?, blob_size = ?,"
                    " compression = ?, last_access = ? WHERE id = ?",
                    [
                        (s.uncompressed_size, s.digest, s.size, s.compression, now, key)
                        for s, key in writes
                    ],
                )
                conn.executemany(
                    "INSERT INTO layer_digests (digest, layer_key, media_type, size)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [
                        (s.digest, key, media_type or MEDIA_TYPES[s.compression], s.size)
                        for s, key in zip(staged_blobs, keys, strict=True)
                    ],
                )
                if lease is not None:
                    _insert_lease_rows(conn, lease.id, {s.diff_id for s in staged_blobs})
            except BaseException:
                for digest in renamed:
                    self.blobs.remove(digest)
                raise
        written = {id(staged) for staged, _key in writes}
        return [id(staged) in written for staged in staged_blobs]

    @staticmethod
    def _plan_commit(
        conn: sqlite3.Connection, staged_blobs: list[StagedBlob], now: float
    ) -> tuple[list[int], list[tuple[StagedBlob, int]]]:
        """Each staged blob's layer row key, and which blobs to move into place: those of
        layers not cached yet (once per layer, if a batch holds two forms of one)."""
        keys: list[int] = []
        writes: list[tuple[StagedBlob, int]] = []
        chosen: set[str] = set()
        for staged in staged_blobs:
            conn.execute(
                "INSERT INTO layers (diff_id, first_seen) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (staged.diff_id, now),
            )
            key, blob_digest = conn.execute(
                "SELECT id, blob_digest FROM layers WHERE diff_id = ?", (staged.diff_id,)
            ).fetchone()
            keys.append(key)
            if blob_digest is None and staged.diff_id not in chosen:
                if staged.path is None:
                    raise PackcacheError(
                        f"layer {staged.diff_id} was evicted while it was being hashed; retry"
                    )
                chosen.add(staged.diff_id)
                writes.append((staged, key))
        return keys, writes

    def evict(self, diff_ids: Iterable[str]) -> list[EvictedLayer]:
        """Remove these layers (rows, then files) unless leased. Returns what was removed."""
        ids = list(set(diff_ids))
        return self.evict_selected(lambda _conn, _leased: ids)

    def evict_selected(
        self, choose: Callable[[sqlite3.Connection, set[str]], Iterable[str]]
    ) -> list[EvictedLayer]:
        """Remove the layers `choose(conn, leased)` picks, holding the cache lock throughout.

        Choosing inside the lock and the write transaction makes the choice (LRU order, the
        total size) exact: nothing is added, leased or evicted between choosing and removing.
        Leased layers are skipped even if chosen.
        """
        with self.lock.exclusive():
            with self.db.write() as conn:
                raw = _driver(conn)
                self._drop_dead_leases(conn)
                leased = queries.leased_diff_ids(raw)
                ids = [d for d in dict.fromkeys(choose(raw, leased)) if d not in leased]
                removed = []
                for diff_id in ids:
                    row = queries.cached_layer(raw, diff_id)
                    if row is not None:
                        removed.append(EvictedLayer(row[0], row[1], row[2]))
                self._check_removable([layer.blob_digest for layer in removed])
                self.uncache_rows(conn, [layer.diff_id for layer in removed])
            for layer in removed:  # after commit: a crash now leaves orphans, never dangling rows
                self._remove_blob(layer.blob_digest)
            self.blobs.reclaim_partials()
        return removed

    def _check_removable(self, digests: list[str]) -> None:
        """Refuse (before any row changes) an eviction whose files this user cannot unlink:
        it happens whole or not at all."""
        problems = [p for d in digests if (p := self.blobs.removal_problem(d)) is not None]
        if problems:
            more = f" (and {len(problems) - 1} more blobs)" if len(problems) > 1 else ""
            raise PackcacheError(f"{problems[0]}{more}; nothing was removed")

    def _remove_blob(self, digest: str) -> None:
        try:
            self.blobs.remove(digest)
        except OSError as exc:  # checked before the commit: only a race or a new flag gets here
            raise PackcacheError(
                f"cannot remove {self.blobs.path(digest)}: {exc.strerror}; its layer is "
                "evicted and `packcache verify --repair` removes the file"
            ) from exc

    def uncache_rows(self, conn: Connection, diff_ids: list[str]) -> None:
        """Mark layers as no longer cached; forget what nothing needs any more."""
        from sqlalchemy import update

        from packcache.store import schema

        layers = schema.layers
        for start in range(0, len(diff_ids), 500):
            conn.execute(
                update(layers)
                .where(layers.c.diff_id.in_(diff_ids[start : start + 500]))
                .values(blob_digest=None, blob_size=None, compression=None, last_access=None)
            )
        # Images none of whose layers are cached any more, then layers no image names.
        conn.exec_driver_sql(
            "DELETE FROM images WHERE id IN (SELECT il.image_key FROM image_layers il"
            " JOIN layers l ON l.id = il.layer_key"
            " GROUP BY il.image_key HAVING COUNT(l.blob_digest) = 0)"
        )
        self._forget_unused_layers(conn)

    @staticmethod
    def _forget_unused_layers(conn: Connection) -> None:
        """Drop rows of layers neither cached nor named by any image (and their digests)."""
        conn.exec_driver_sql(
            "DELETE FROM layers WHERE blob_digest IS NULL"
            " AND id NOT IN (SELECT layer_key FROM image_layers)"
        )

    def evict_corrupt(self, diff_id: str) -> None:
        """Drop a layer whose blob failed its digest check, lease or not: it is not that layer.
        Left as it is (verify reports it) when this user could not remove its file."""
        if not self.writable:
            return
        with self.lock.exclusive():
            with self.db.write() as conn:
                row = queries.cached_layer(_driver(conn), diff_id)
                if row is not None and self.blobs.removal_problem(row[1]) is not None:
                    return
                self.uncache_rows(conn, [diff_id])
            if row is not None:
                self._remove_blob(row[1])

    # -- leases -----------------------------------------------------------------------------

    @contextmanager
    def lease(self, purpose: str) -> Iterator[Lease]:
        # An operation's writes share one connection.
        with self.db.keeping_writer(), self._lease(purpose) as lease:
            yield lease

    @contextmanager
    def _lease(self, purpose: str) -> Iterator[Lease]:
        now = time.time()
        with self.db.write_plain(durable=False) as conn:
            lease_id = conn.execute(
                "INSERT INTO leases (host, pid, purpose, created, expires) VALUES (?, ?, ?, ?, ?)",
                (queries.HOST, os.getpid(), purpose, now, now + LEASE_TTL_S),
            ).lastrowid
        assert lease_id is not None
        try:
            yield Lease(self, lease_id)
        finally:
            try:
                # Its lease_layers go with it (ON DELETE CASCADE).
                with self.db.write_plain(durable=False) as conn:
                    conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
            finally:
                self.close()

    def close(self) -> None:
        """Close the index connection kept for reads (the store stays usable: the next read
        opens one again)."""
        self.db.close_reader()

    def _drop_dead_leases(self, conn: Connection) -> None:
        raw = _driver(conn)
        raw.executemany("DELETE FROM leases WHERE id = ?", [(i,) for i in queries.dead_leases(raw)])

    # -- images -----------------------------------------------------------------------------

    def record_image(self, image: ImageRecord) -> str:
        """Record an image's config, layers, source and refs. Returns the config digest."""
        return self.record_images([image])[0]

    def record_images(self, images: list[ImageRecord]) -> list[str]:
        """record_image for several images in one transaction (one sync of the index)."""
        with self.db.write_plain() as conn:
            return [self._record_image(conn, image) for image in images]

    def _record_image(self, conn: sqlite3.Connection, image: ImageRecord) -> str:
        try:
            config = json.loads(image.config)
            diff_ids = list(config.get("rootfs", {}).get("diff_ids") or [])
        except (ValueError, AttributeError) as exc:
            raise CorruptBlobError(f"image config is not a valid config JSON: {exc}") from exc
        platform_and_created = recorded_config_fields(config)
        digest = image.config_digest
        now = time.time()
        conn.execute(
            "INSERT INTO images (config_digest, config, os, architecture, variant, created,"
            " first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (config_digest) DO UPDATE SET last_seen = excluded.last_seen",
            (
                digest,
                image.config.decode(),
                *platform_and_created,
                now,
                now,
            ),
        )
        (key,) = conn.execute("SELECT id FROM images WHERE config_digest = ?", (digest,)).fetchone()
        unique = list(dict.fromkeys(diff_ids))  # a repeated layer is listed once, first
        conn.executemany(
            "INSERT INTO layers (diff_id, first_seen) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(diff_id, now) for diff_id in unique],
        )
        layer_keys = queries.layer_keys(conn, unique)
        first_positions = {d: i for i, d in reversed(list(enumerate(diff_ids)))}
        conn.execute("DELETE FROM image_layers WHERE image_key = ?", (key,))
        conn.executemany(
            "INSERT INTO image_layers (image_key, position, layer_key) VALUES (?, ?, ?)",
            [(key, first_positions[d], layer_keys[d]) for d in unique],
        )
        manifest_digest = image.manifest_digest or (
            sha256_digest(image.manifest) if image.manifest else None
        )
        # A record without a manifest (e.g. a re-import of a wholly cached image) keeps
        # the one known for the same image ID: it still names that engine's blobs.
        conn.execute(
            "INSERT INTO image_sources (image_key, engine, image_id, manifest_digest,"
            " manifest, last_seen) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (image_key, engine) DO UPDATE SET"
            " image_id = excluded.image_id,"
            " manifest_digest = CASE WHEN excluded.manifest_digest IS NOT NULL"
            "  THEN excluded.manifest_digest WHEN image_sources.image_id = excluded.image_id"
            "  THEN image_sources.manifest_digest END,"
            " manifest = CASE WHEN excluded.manifest IS NOT NULL THEN excluded.manifest"
            "  WHEN image_sources.image_id = excluded.image_id THEN image_sources.manifest END,"
            " last_seen = excluded.last_seen",
            (
                key,
                image.engine,
                image.image_id or digest,
                manifest_digest,
                image.manifest.decode() if image.manifest else None,
                now,
            ),
        )
        conn.executemany(  # a tag names one image per engine: it moves
            "INSERT INTO image_refs (engine, ref, image_key) VALUES (?, ?, ?)"
            " ON CONFLICT (engine, ref) DO UPDATE SET image_key = excluded.image_key",
            [(image.engine, normalize(ref), key) for ref in image.refs],
        )
        return digest

    def resolve_image(self, ref: str) -> str:
        """The config digest of the image a tag, short or full image ID names."""
        with self.db.read() as conn:
            return queries.resolve_image(conn, ref)[1]

    def resolve_layer(self, text: str) -> str:
        with self.db.read() as conn:
            return queries.resolve_layer(conn, text)

    def image_config(self, config_digest: str) -> bytes:
        """The config JSON of a recorded image, verbatim (its full, ordered diffID list)."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT config FROM images WHERE config_digest = ?", (config_digest,)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no image {config_digest} in the cache")
        return row[0].encode()

    def config_diff_ids(self, config_digests: Iterable[str]) -> dict[str, list[str]]:
        """config digest -> its diffIDs, for the configs the index holds among these."""
        sql = "SELECT config_digest, config FROM images WHERE config_digest IN ({})"
        with self.db.read() as conn:
            return {
                digest: (json.loads(config).get("rootfs") or {}).get("diff_ids") or []
                for digest, config in queries.select_in(conn, sql, config_digests)
            }

    def manifests_with_layers(self, diff_ids: Iterable[str]) -> list[str]:
        """Digests of the manifests recorded (from any engine) for images that have any of
        these layers: the images a containerd store may hold those layers' blobs for."""
        sql = (
            "SELECT DISTINCT s.manifest_digest FROM image_sources s"
            " JOIN image_layers il ON il.image_key = s.image_key"
            " JOIN layers l ON l.id = il.layer_key"
            " WHERE s.manifest IS NOT NULL AND l.diff_id IN ({})"
        )
        with self.db.read() as conn:
            return sorted({row[0] for row in queries.select_in(conn, sql, set(diff_ids))})

    def held_descriptors(self, image_ids: Iterable[str]) -> dict[str, tuple[str, int, str]]:
        """diffID -> (digest, size, media type) of the layer blobs a containerd store holds,
        given the IDs of the images it holds. Such an ID is the image's manifest digest, so a
        manifest recorded with that digest (from any engine) names exactly those blobs."""
        present = set(image_ids)
        found: dict[str, tuple[str, int, str]] = {}
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT s.manifest_digest, s.manifest, i.config FROM image_sources s"
                " JOIN images i ON i.id = s.image_key WHERE s.manifest IS NOT NULL"
            ).fetchall()
        for manifest_digest, manifest, config in rows:
            if manifest_digest not in present:
                continue  # not in that store (any more): its blobs may be gone
            descriptors = json.loads(manifest).get("layers") or []
            diff_ids = json.loads(config).get("rootfs", {}).get("diff_ids") or []
            for descriptor, diff_id in zip(descriptors, diff_ids, strict=False):
                found[diff_id] = (descriptor["digest"], descriptor["size"], descriptor["mediaType"])
        return found

    def input_layer(self, key: str) -> dict | None:
        """What a builder input with this content key became, while its layer is cached."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT i.value FROM input_layers i JOIN layers l ON l.diff_id = i.diff_id"
                " WHERE i.key = ? AND l.blob_digest IS NOT NULL",
                (key,),
            ).fetchone()
        return json.loads(row[0]) if row else None

    def record_input_layer(self, key: str, value: dict) -> None:
        """Remember that the input `key` became the layer value["diff_id"] (and `value`)."""
        with self.db.write_plain() as conn:
            conn.execute(
                'INSERT INTO input_layers ("key", diff_id, value, recorded) VALUES (?, ?, ?, ?)'
                ' ON CONFLICT ("key") DO UPDATE SET diff_id = excluded.diff_id,'
                " value = excluded.value, recorded = excluded.recorded",
                (key, value["diff_id"], json.dumps(value), time.time()),
            )

    def manifest(self, manifest_digest: str) -> bytes | None:
        """A manifest recorded from any engine (content-addressed: the same everywhere)."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT manifest FROM image_sources WHERE manifest_digest = ?"
                " AND manifest IS NOT NULL LIMIT 1",
                (manifest_digest,),
            ).fetchone()
        return row[0].encode() if row else None

    def image_manifests(self, config_digest: str) -> list[bytes]:
        """The manifests recorded for an image (by any engine or pull), newest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT s.manifest FROM image_sources s JOIN images i ON i.id = s.image_key"
                " WHERE i.config_digest = ? AND s.manifest IS NOT NULL ORDER BY s.last_seen DESC",
                (config_digest,),
            ).fetchall()
        return [manifest.encode() for (manifest,) in rows]

    def image_refs(self, config_digest: str) -> list[str]:
        """The tags recorded for an image, in any engine, in docker's short form."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT r.ref FROM image_refs r JOIN images i ON i.id = r.image_key"
                " WHERE i.config_digest = ? ORDER BY r.ref",
                (config_digest,),
            ).fetchall()
        return [familiar(ref) for (ref,) in rows]

    def forget_image(self, config_digest: str) -> None:
        """Drop an image's record (refs, sources, layer list); cached layers stay."""
        from sqlalchemy import delete

        from packcache.store import schema

        with self.db.write() as conn:
            conn.execute(
                delete(schema.images).where(schema.images.c.config_digest == config_digest)
            )
            self._forget_unused_layers(conn)
