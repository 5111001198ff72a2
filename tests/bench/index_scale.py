"""Index at scale: 100,000 layers and 10,000 images; times of ls, du and prune --dry-run.

Rows are bulk-inserted (the index is what is measured, not ingest); blob files are not needed
by these commands. Every command runs as a fresh CLI process, start-up included.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from packcache.store.store import Store
from tests.bench.common import PACKCACHE, print_table, run, timed

LAYERS = 100_000
IMAGES = 10_000
BASES = 200  # images share base layers, as real fleets do


def fake_digest(kind: str, n: int) -> str:
    return "sha256:" + f"{kind}{n:x}".encode().hex().ljust(64, "0")[:64]


def build_index(cache: Path) -> None:
    store = Store.open(cache)
    rng = random.Random(7)
    now = time.time()
    layers = []
    digests = []
    for n in range(LAYERS):
        blob = fake_digest("b", n)
        size = rng.randint(1_000, 50_000_000)
        age = rng.random() * 1e6
        layers.append(
            (n + 1, fake_digest("l", n), size * 2, blob, size, "gzip", now - n, now - age, n % 9)
        )
        digests.append((blob, n + 1, "application/vnd.oci.image.layer.v1.tar+gzip", size))
    # Base images own the first layers; every image stacks its own layers on one base.
    # Layer keys are 1-based row ids, in the order inserted above.
    base_layers = [[b * 5 + i + 1 for i in range(5)] for b in range(BASES)]
    next_layer = BASES * 5
    images, image_layers, sources, refs = [], [], [], []
    for i in range(IMAGES):
        key, config_digest = i + 1, fake_digest("c", i)
        own = [next_layer + k + 1 for k in range(9)]
        next_layer = max((next_layer + 9) % (LAYERS - 9), BASES * 5)
        chain = base_layers[i % BASES] + own
        images.append((key, config_digest, "{}", "linux", "amd64", None, None, now, now))
        image_layers += [(key, p, layer_key) for p, layer_key in enumerate(chain)]
        sources.append((key, "engine", config_digest, None, None, now))
        refs.append(("engine", f"docker.io/library/app{i}:latest", key))
    with store.db.read() as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO layers VALUES (?,?,?,?,?,?,?,?,?)", layers)
        conn.executemany("INSERT INTO layer_digests VALUES (?,?,?,?)", digests)
        conn.executemany("INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?)", images)
        conn.executemany("INSERT INTO image_layers VALUES (?,?,?)", image_layers)
        conn.executemany("INSERT INTO image_sources VALUES (?,?,?,?,?,?)", sources)
        conn.executemany("INSERT INTO image_refs VALUES (?,?,?)", refs)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")


def main() -> None:
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        cache = Path(tmp) / "cache"
        start = time.perf_counter()
        build_index(cache)
        print(
            f"built an index of {LAYERS} layers, {IMAGES} images in "
            f"{time.perf_counter() - start:.1f} s"
        )
        base = [*PACKCACHE, "--cache-dir", str(cache)]
        cases = [
            ("packcache --help (start-up floor)", [*PACKCACHE, "--help"], None),
            ("ls --image app42 (table)", [*base, "ls", "--image", "app42"], 0.3),
            ("ls (all 100k rows, table)", [*base, "ls"], 0.3),
            ("ls --format json (all rows)", [*base, "ls", "--format", "json"], 0.3),
            ("du (table)", [*base, "du"], 0.3),
            ("du --format json", [*base, "du", "--format", "json"], 0.3),
            (
                "prune --max-size 20G --dry-run",
                [*base, "prune", "--max-size", "20G", "--dry-run"],
                3.0,
            ),
        ]
        rows = []
        for name, args, target in cases:
            run(args)  # warm the page cache once
            seconds = timed(lambda args=args: run(args), repeat=5)
            verdict = "-" if target is None else ("meets" if seconds <= target else "MISSES")
            rows.append(
                [name, f"{seconds:.3f}", "-" if target is None else f"<= {target}", verdict]
            )
        print_table(
            "Index scale (median of 5 CLI runs, seconds)", ["command", "s", "target", ""], rows
        )


if __name__ == "__main__":
    main()
