"""Ingest throughput of one large synthetic layer against plain copies of the same bytes.

Baselines: `cat layer > file` (a page-cache copy, no fsync) and `dd conv=fsync` (a durable copy,
which is what ingest does). Ingest also hashes (and for gzip, decompresses and hashes again).
Each run is a fresh process, start-up included; max RSS shows that layers stream.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

from isal import isal_zlib

from tests.bench.common import print_table, scaled, timed
from tests.layers import make_tar

LAYER_MIB = int(os.environ.get("PACKCACHE_BENCH_LAYER_MIB") or scaled(1024, 256))
REAL_FILES_MIB = scaled(200, 50)

INGEST = """
import sys
from pathlib import Path
from packcache.store.store import Store
store = Store.open(Path(sys.argv[1]))
with open(sys.argv[2], "rb") as source:
    store.ingest_layer(source)
"""


def make_layer(path: Path) -> None:
    """A layer tar of LAYER_MIB of incompressible bytes, written in pieces."""
    with open(path, "wb") as out:
        for piece in range(LAYER_MIB // 64):
            out.write(make_tar({f"part{piece:04d}.bin": os.urandom(64 << 20)}))


def make_real_gzip_layer(path: Path, mib: int = REAL_FILES_MIB) -> None:
    """A gzip layer of real files (/usr/share, level 6 as Go writes): compressible like an app's
    layers, unlike the random bytes above."""
    with gzip.open(path, "wb", compresslevel=6) as out, tarfile.open(fileobj=out, mode="w|") as tar:
        total = 0
        for file in sorted(Path("/usr/share").rglob("*")):
            if total > mib << 20:
                break
            if file.is_file() and not file.is_symlink():
                tar.add(file, recursive=False)
                total += file.stat().st_size


def gunzip_hash_mib_s(path: Path, decompressobj) -> float:
    """MiB/s of compressed input through gunzip + sha256 of the output, in 1 MiB steps."""
    data = path.read_bytes()

    def run() -> None:
        inflater, hasher = decompressobj(16 + zlib.MAX_WBITS), hashlib.sha256()
        for start in range(0, len(data), 1 << 20):
            chunk = data[start : start + (1 << 20)]
            while chunk:
                hasher.update(inflater.decompress(chunk, 1 << 20))
                chunk = inflater.unconsumed_tail

    return len(data) / (1 << 20) / timed(run)


def max_rss_mib(args: list[str]) -> float:
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *args], capture_output=True, text=True, check=True
    )
    return int(result.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        work = Path(tmp)
        layer, layer_gz = work / "layer.tar", work / "layer.tar.gz"
        make_layer(layer)
        real_gz = work / "real.tar.gz"
        make_real_gzip_layer(real_gz)
        with open(layer, "rb") as src, gzip.open(layer_gz, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        out = work / "copy"
        rows = []
        for name, path in (
            ("uncompressed", layer),
            ("gzip, random bytes", layer_gz),
            ("gzip -6, real files", real_gz),
        ):
            size_mib = path.stat().st_size / (1 << 20)

            def cat(path: Path = path) -> None:
                subprocess.run(f"cat {path} > {out}", shell=True, check=True)
                out.unlink()

            def dd_fsync(path: Path = path) -> None:
                subprocess.run(
                    ["dd", f"if={path}", f"of={out}", "bs=1M", "conv=fsync", "status=none"],
                    check=True,
                )
                out.unlink()

            def ingest(path: Path = path) -> None:
                cache = work / "cache"
                subprocess.run([sys.executable, "-c", INGEST, str(cache), str(path)], check=True)
                shutil.rmtree(cache)

            cat()  # warm the page cache
            t_cat, t_dd, t_ingest = timed(cat), timed(dd_fsync), timed(ingest)
            cache = work / "cache"
            rss = max_rss_mib([sys.executable, "-c", INGEST, str(cache), str(path)])
            shutil.rmtree(cache)
            rows.append(
                [
                    f"{name} ({size_mib:.0f} MiB)",
                    f"{size_mib / t_cat:.0f}",
                    f"{size_mib / t_dd:.0f}",
                    f"{size_mib / t_ingest:.0f}",
                    f"{t_cat / t_ingest:.2f}x",
                    f"{t_dd / t_ingest:.2f}x",
                    f"{rss:.0f}",
                ]
            )
        print_table(
            "Ingest of one layer (MiB/s, median of 3; ratio = ingest speed / copy speed)",
            ["layer", "cat", "dd fsync", "ingest", "vs cat", "vs dd fsync", "ingest max RSS MiB"],
            rows,
        )
        size_mib = real_gz.stat().st_size / (1 << 20)
        print_table(
            f"gunzip + sha256 of the real-files gzip layer ({size_mib:.0f} MiB), in process",
            ["decompressor", "MiB/s of gzip in"],
            [
                ["stdlib zlib", f"{gunzip_hash_mib_s(real_gz, zlib.decompressobj):.0f}"],
                ["python-isal", f"{gunzip_hash_mib_s(real_gz, isal_zlib.decompressobj):.0f}"],
            ],
        )


if __name__ == "__main__":
    main()
