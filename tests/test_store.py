"""The store API: ingest, read back, verification on read, leases, images."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import threading

import pytest

from packcache.errors import CorruptBlobError, NotFoundError, PackcacheError
from packcache.store import blobs
from packcache.store.prune import prune
from packcache.store.store import ImageRecord, Store
from packcache.store.verify import verify
from tests.conftest import add_image
from tests.layers import compress, random_tar, sha256


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_ingest_records_digest_and_diff_id_from_one_pass(store: Store, compression: str) -> None:
    tar = random_tar(300_000)
    blob = compress(tar, compression)
    result = store.ingest_layer(io.BytesIO(blob))
    assert result.written
    assert result.diff_id == sha256(tar)
    assert result.digest == sha256(blob)
    layer = store.layer(sha256(tar))
    assert layer is not None
    assert (layer.compression, layer.size, layer.uncompressed_size) == (
        compression,
        len(blob),
        len(tar),
    )
    path = store.blobs.path(sha256(blob))
    assert path.read_bytes() == blob
    assert path.parent.name == sha256(blob)[7:9]
    assert not stat.S_IMODE(path.stat().st_mode) & 0o222, "committed blobs are read-only"
    with layer.uncompressed() as reader:
        assert reader.read() == tar
    with layer.compressed() as reader:
        assert reader.read() == blob
    assert store.layer_by_digest(sha256(blob)).diff_id == sha256(tar)
    assert list(store.blobs.ingest_dir.iterdir()) == []


def test_second_form_of_a_cached_layer_is_hashed_not_stored(store: Store) -> None:
    tar = random_tar(100_000)
    store.ingest_layer(io.BytesIO(compress(tar, "gzip")))
    again = store.ingest_layer(io.BytesIO(tar), expected_diff_id=sha256(tar))
    assert not again.written
    zstd_blob = compress(tar, "zstd")
    other = store.ingest_layer(io.BytesIO(zstd_blob))
    assert not other.written
    assert {d for d, _, _ in store.digests_of(sha256(tar))} == {
        sha256(compress(tar, "gzip")),
        sha256(tar),
        sha256(zstd_blob),
    }
    files = [p for p in store.blobs.blobs_dir.rglob("*") if p.is_file()]
    assert len(files) == 1


def test_known_digest_is_skipped_without_reading(store: Store) -> None:
    blob = compress(random_tar(10_000), "gzip")
    first = store.ingest_layer(io.BytesIO(blob))
    source = io.BytesIO(blob)
    again = store.ingest_layer(source, expected_digest=sha256(blob))
    assert (again.diff_id, again.written, source.tell()) == (first.diff_id, False, 0)


@pytest.mark.parametrize("which", ["expected_digest", "expected_diff_id"])
def test_digest_mismatch_leaves_nothing(store: Store, which: str) -> None:
    blob = compress(random_tar(10_000), "gzip")
    with pytest.raises(CorruptBlobError, match="do not match"):
        store.ingest_layer(io.BytesIO(blob), **{which: sha256(b"something else")})
    assert store.cached_diff_ids([sha256(gzip_tar) for gzip_tar in [blob]]) == set()
    assert list(store.blobs.ingest_dir.iterdir()) == []
    assert [p for p in store.blobs.blobs_dir.rglob("*") if p.is_file()] == []


def test_truncated_gzip_is_rejected(store: Store) -> None:
    blob = compress(random_tar(50_000), "gzip")
    with pytest.raises(CorruptBlobError):
        store.ingest_layer(io.BytesIO(blob[: len(blob) // 2]))
    assert list(store.blobs.ingest_dir.iterdir()) == []


def test_concurrent_ingest_of_one_blob_keeps_one_copy(store: Store, cache_dir) -> None:
    blob = compress(random_tar(2_000_000), "gzip")
    results, errors = [], []

    def ingest() -> None:
        try:
            results.append(Store.open(cache_dir).ingest_layer(io.BytesIO(blob)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ingest) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({r.diff_id for r in results}) == 1
    assert sum(r.written for r in results) == 1
    assert [p for p in store.blobs.blobs_dir.rglob("*") if p.is_file()] == [
        store.blobs.path(sha256(blob))
    ]
    assert list(store.blobs.ingest_dir.iterdir()) == []


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_corrupt_blob_is_never_served_as_good(store: Store, compression: str) -> None:
    tar = random_tar(200_000)
    blob = compress(tar, compression)
    store.ingest_layer(io.BytesIO(blob))
    path = store.blobs.path(sha256(blob))
    os.chmod(path, 0o644)
    damaged = bytearray(blob)
    damaged[-100] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(damaged))
    layer = store.layer(sha256(tar))
    with pytest.raises(CorruptBlobError, match="corrupt"), layer.uncompressed() as reader:
        while reader.read(65536):
            pass
    # The bad blob was evicted: the next user re-fetches instead of getting it again.
    assert store.layer(sha256(tar)) is None
    assert not path.exists()


def test_truncated_blob_on_disk_is_detected_at_open(store: Store) -> None:
    blob = compress(random_tar(50_000), "gzip")
    result = store.ingest_layer(io.BytesIO(blob))
    path = store.blobs.path(sha256(blob))
    os.chmod(path, 0o644)
    path.write_bytes(blob[:100])
    with pytest.raises(CorruptBlobError, match="wrong size"):
        store.layer(result.diff_id).compressed()
    assert store.layer(result.diff_id) is None


def test_a_new_shard_is_on_disk_before_a_blob_is_renamed_into_it(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None) -> None:
        events.append(("rename", os.path.join(os.readlink(f"/proc/self/fd/{dst_dir_fd}"), dst)))
        real_replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    store = Store.open(tmp_path / "cache")  # created before the patch: only blobs' syncs count
    monkeypatch.setattr(blobs.os, "fsync", fsync)
    monkeypatch.setattr(blobs.os, "replace", replace)
    sha256_dir = tmp_path / "cache" / "blobs" / "sha256"
    result = store.ingest_layer(io.BytesIO(random_tar(1000)))
    shard = store.blobs.path(result.digest).parent
    # The blob file's own fsync runs in the fsync thread, before the rename (awaited).
    ingest = str(store.blobs.ingest_dir)
    assert (
        [e for e in events if not e[1].startswith(ingest)]
        == [
            ("fsync", str(sha256_dir)),  # the new shard's name, before anything is put in it
            ("rename", str(shard / result.digest[7:])),
            ("fsync", str(shard)),
        ]
    )


def test_a_new_cache_syncs_its_directories_names(tmp_path, monkeypatch: pytest.MonkeyPatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(blobs.os, "fsync", fsync)
    Store.open(tmp_path / "cache")
    root = tmp_path / "cache"
    assert synced == [str(root / "blobs"), str(root), str(tmp_path)]


def test_a_batch_commit_syncs_each_shard_once(store: Store, monkeypatch: pytest.MonkeyPatch):
    tars = [random_tar(500, seed=f"batch{i}".encode()) for i in range(40)]
    staged = [store.stage(io.BytesIO(t)) for t in tars]
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(blobs.os, "fsync", fsync)
    assert store.commit_staged_many(staged) == [True] * 40
    shards = {str(store.blobs.path(s.digest).parent) for s in staged}
    ingest = str(store.blobs.ingest_dir)  # the blob files' own syncs, still in flight
    dirs = [path for path in synced if not path.startswith(ingest)]
    assert sorted(dirs) == sorted([*shards, str(store.blobs.blobs_dir)])
    assert store.cached_diff_ids(s.diff_id for s in staged) == {s.diff_id for s in staged}
    assert verify(store).ok


def test_a_failed_batch_commit_leaves_no_blob_behind(store: Store) -> None:
    tars = [random_tar(2000) for _ in range(3)]
    staged = [store.blobs.stage(io.BytesIO(t)) for t in tars[:2]]
    staged.append(store.blobs.stage(io.BytesIO(tars[2]), write=False))  # fails: no file
    with pytest.raises(PackcacheError, match="evicted while it was being hashed"):
        store.commit_staged_many(staged)
    for blob in staged:
        store.blobs.discard(blob)
    assert store.cached_diff_ids(blob.diff_id for blob in staged) == set()
    assert list(store.blobs.iter_blob_paths()) == []  # the first two were moved, then removed
    assert verify(store).ok


def test_reads_update_last_access(store: Store) -> None:
    result = store.ingest_layer(io.BytesIO(random_tar(1000)))
    before = store.layer(result.diff_id)
    with before.uncompressed() as reader:
        reader.read()
    after = store.layer(result.diff_id)
    assert after.access_count == before.access_count + 1
    assert after.last_access >= before.last_access


def test_leased_layers_survive_prune(store: Store) -> None:
    kept = store.ingest_layer(io.BytesIO(random_tar(10_000))).diff_id
    gone = store.ingest_layer(io.BytesIO(random_tar(10_000))).diff_id
    with store.lease("test") as lease:
        lease.add([kept])
        result = prune(store, everything=True)
        assert [layer.diff_id for layer in result.removed] == [gone]
        assert result.in_use == [kept]
    assert [layer.diff_id for layer in prune(store, everything=True).removed] == [kept]


def test_only_lease_rows_are_committed_without_a_sync(store: Store, cache_dir) -> None:
    full, normal = 2, 1  # PRAGMA synchronous: FULL syncs every commit, NORMAL (WAL) does not
    with store.db.write_plain() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == full
    with store.db.write_plain(durable=False) as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == normal
    kept = store.ingest_layer(io.BytesIO(random_tar(10_000))).diff_id
    with store.lease("test") as lease:
        lease.add([kept])
        # Committed all the same: another process's prune sees the lease.
        assert prune(Store.open(cache_dir), everything=True).in_use == [kept]
    with store.db.write_plain() as conn:  # a connection's own setting: the next one syncs
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == full


def test_hold_leases_and_reports_what_is_cached(store: Store) -> None:
    kept = store.ingest_layer(io.BytesIO(random_tar(10_000)))
    absent = "sha256:" + "0" * 64
    with store.lease("test") as lease:
        assert lease.hold([kept.diff_id, absent]) == {kept.diff_id}
        held = lease.hold_by_digest(kept.digest)
        assert held is not None and held.diff_id == kept.diff_id
        assert lease.hold_by_digest(absent) is None
        assert prune(store, everything=True).in_use == [kept.diff_id]
    assert store.layer(kept.diff_id) is not None


def test_lease_of_a_dead_process_expires(store: Store) -> None:
    diff_id = store.ingest_layer(io.BytesIO(random_tar(10_000))).diff_id
    with store.db.write() as conn:
        conn.exec_driver_sql(
            "INSERT INTO leases (id, host, pid, purpose, created, expires)"
            " VALUES (99, ?, 999999999, 'killed', 0, 9e18)",
            (socket.gethostname(),),
        )
        conn.exec_driver_sql("INSERT INTO lease_layers VALUES (99, ?)", (diff_id,))
    assert [layer.diff_id for layer in prune(store, everything=True).removed] == [diff_id]


def test_record_and_resolve_images(store: Store) -> None:
    config_digest, diff_ids = add_image(
        store, [random_tar(1000), random_tar(1000)], ["me/app:v1"], engine="E1"
    )
    assert store.resolve_image("me/app:v1") == config_digest
    assert store.resolve_image("docker.io/me/app:v1") == config_digest
    assert store.resolve_image(config_digest) == config_digest
    assert store.resolve_image(config_digest[7:19]) == config_digest
    assert json.loads(store.image_config(config_digest))["rootfs"]["diff_ids"] == diff_ids
    with pytest.raises(NotFoundError):
        store.resolve_image("me/app:v2")
    # A tag moves to the newest image in that engine.
    newer, _ = add_image(store, [random_tar(1000)], ["me/app:v1"], engine="E1")
    assert store.resolve_image("me/app:v1") == newer


def test_record_image_keeps_the_engine_image_id(store: Store) -> None:
    config = b'{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":[]}}'
    manifest_digest = sha256(b"manifest")
    store.record_image(
        ImageRecord(
            config=config,
            engine="E2",
            image_id=manifest_digest,
            manifest_digest=manifest_digest,
            refs=["x"],
        )
    )
    assert store.resolve_image(manifest_digest[7:20]) == sha256(config)


def test_a_record_without_manifest_keeps_the_known_one(store: Store) -> None:
    config = b'{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":[]}}'
    manifest = b'{"schemaVersion":2,"layers":[]}'
    image_id = sha256(manifest)
    record = ImageRecord(config=config, engine="E", image_id=image_id, manifest=manifest)
    store.record_image(record)
    store.record_image(ImageRecord(config=config, engine="E", image_id=image_id))
    assert store.manifest(image_id) == manifest
    # Another image ID for the same config (re-loaded with other blobs): the old one goes.
    store.record_image(ImageRecord(config=config, engine="E", image_id=sha256(b"other")))
    assert store.manifest(image_id) is None
