"""A separate process that works on a cache, for the kill -9 and concurrency tests.

python -m tests.store_worker ingest CACHE FIRST_SEED COUNT SIZE
python -m tests.store_worker prune CACHE ROUNDS
python -m tests.store_worker hold CACHE READY_FILE STOP_FILE SEED...
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

from packcache.store.prune import prune
from packcache.store.store import Store
from tests.layers import compress, random_tar, sha256

COMPRESSIONS = ("gzip", "none", "zstd")


def layer_blob(seed: int, size: int) -> tuple[bytes, str]:
    tar = random_tar(size, seed=f"layer-{seed}".encode())
    return compress(tar, COMPRESSIONS[seed % 3]), sha256(tar)


def ingest(cache: Path, first: int, count: int, size: int) -> None:
    store = Store.open(cache)
    print("ready", flush=True)  # the kill tests time their kill from here, not from start-up
    for seed in range(first, first + count):
        blob, diff_id = layer_blob(seed, size)
        result = store.ingest_layer(io.BytesIO(blob))
        assert result.diff_id == diff_id, (result, diff_id)
        print(f"ingested {diff_id}", flush=True)


def prune_loop(cache: Path, rounds: int) -> None:
    store = Store.open(cache)
    for _ in range(rounds):
        result = prune(store, max_size=0)
        print(f"pruned {len(result.removed)} kept {len(result.in_use)}", flush=True)
        time.sleep(0.01)


def hold(cache: Path, ready: Path, stop: Path, seeds: list[int]) -> None:
    """Ingest layers under a lease, then keep checking they stay readable until told to stop."""
    store = Store.open(cache)
    with store.lease("test-hold") as lease:
        diff_ids = []
        for seed in seeds:
            blob, diff_id = layer_blob(seed, 100_000)
            store.ingest_layer(io.BytesIO(blob), lease=lease)
            diff_ids.append(diff_id)
        ready.write_text("ready")
        checks = 0
        while not stop.exists() or checks == 0:
            for diff_id in diff_ids:
                layer = store.layer(diff_id)
                assert layer is not None, f"leased layer {diff_id} was removed"
                with layer.uncompressed() as reader:
                    while reader.read(1 << 20):
                        pass
            checks += 1
            time.sleep(0.02)
        print(f"held {len(diff_ids)} layers through {checks} checks", flush=True)


if __name__ == "__main__":
    command, cache, *rest = sys.argv[1:]
    if command == "ingest":
        ingest(Path(cache), int(rest[0]), int(rest[1]), int(rest[2]))
    elif command == "prune":
        prune_loop(Path(cache), int(rest[0]))
    elif command == "hold":
        hold(Path(cache), Path(rest[0]), Path(rest[1]), [int(s) for s in rest[2:]])
    else:
        raise SystemExit(f"unknown command {command}")
