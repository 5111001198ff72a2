"""The floors `packcache pull` is measured against: the same blobs downloaded 4 at once and
hashed, writing nothing; with `--gunzip`, each gzip layer also inflated (with python-isal,
the fastest inflater packcache has) and its uncompressed stream hashed (the diffID a pull
must compute). Run as a script it is the floor a CLI pays,
start-up included:

    python tests/bench/pull_floor.py [--gunzip] HOST REPOSITORY DIGEST GZIP(0|1) ...

Only the standard library, requests and isal, so its start-up is an interpreter's and two
imports.
"""

from __future__ import annotations

import hashlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from isal import isal_zlib

PARALLEL = 4
CHUNK = 1 << 20

Blob = tuple[str, str, bool]  # repository, digest, gzip-compressed


def fetch(session: requests.Session, host: str, blob: Blob, gunzip: bool) -> None:
    repository, digest, compressed = blob
    digester = hashlib.sha256()
    inflater = isal_zlib.decompressobj(31) if gunzip and compressed else None
    diff_id = hashlib.sha256()
    with session.get(f"http://{host}/v2/{repository}/blobs/{digest}", stream=True) as r:
        r.raise_for_status()
        for chunk in r.raw.stream(CHUNK, decode_content=False):
            digester.update(chunk)
            if inflater is not None:
                diff_id.update(inflater.decompress(chunk))
    if "sha256:" + digester.hexdigest() != digest:
        raise SystemExit(f"blob {digest} does not match its digest")


def floor(host: str, blobs: list[Blob], gunzip: bool = False) -> float:
    """Seconds to fetch every blob, PARALLEL at once (see the module doc)."""
    start = time.perf_counter()
    with requests.Session() as session:
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=PARALLEL)
        session.mount("http://", adapter)
        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(lambda blob: fetch(session, host, blob, gunzip), blobs))
    return time.perf_counter() - start


def script_args(host: str, blobs: list[Blob], gunzip: bool) -> list[str]:
    """The arguments that run this module as a script over `blobs`."""
    args = [sys.executable, __file__, *(["--gunzip"] if gunzip else []), host]
    for repository, digest, compressed in blobs:
        args += [repository, digest, "1" if compressed else "0"]
    return args


def main(argv: list[str]) -> None:
    gunzip = argv[:1] == ["--gunzip"]
    host, *rest = argv[1:] if gunzip else argv
    blobs = [(rest[i], rest[i + 1], rest[i + 2] == "1") for i in range(0, len(rest), 3)]
    floor(host, blobs, gunzip)


if __name__ == "__main__":
    main(sys.argv[1:])
