"""Which HTTP client streams a registry blob fastest: `python -m tests.registries.client_bench`.

Starts the plain test registry, uploads a 256 MiB random blob, then downloads and hashes it
with the standard library's http.client (the floor), requests, and httpx if installed
(`pip install httpx`), several rounds each, 1 MiB reads. Prints MiB/s per client.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

from tests.registries.harness import RegistrySet

CHUNK = 1 << 20
SIZE = 256 << 20
ROUNDS = 5


def upload(base: str, blob: Path) -> str:
    digest = hashlib.sha256()
    with open(blob, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    name = "sha256:" + digest.hexdigest()
    location = requests.post(f"{base}/v2/bench/blob/blobs/uploads/").headers["Location"]
    with open(blob, "rb") as fh:
        sep = "&" if "?" in location else "?"
        response = requests.put(f"{location}{sep}digest={name}", data=fh)
    response.raise_for_status()
    return name


def readers(port: int, path: str) -> dict[str, Callable[[], str]]:
    url = f"http://127.0.0.1:{port}{path}"

    def with_http_client() -> str:
        digest = hashlib.sha256()
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", path)
        response = conn.getresponse()
        while chunk := response.read(CHUNK):
            digest.update(chunk)
        conn.close()
        return "sha256:" + digest.hexdigest()

    def with_requests() -> str:
        digest = hashlib.sha256()
        with requests.get(url, stream=True) as response:
            while chunk := response.raw.read(CHUNK, decode_content=False):
                digest.update(chunk)
        return "sha256:" + digest.hexdigest()

    found = {"http.client": with_http_client, "requests": with_requests}
    try:
        import httpx
    except ImportError:
        return found

    def with_httpx() -> str:
        digest = hashlib.sha256()
        with httpx.stream("GET", url) as response:
            for chunk in response.iter_raw(CHUNK):
                digest.update(chunk)
        return "sha256:" + digest.hexdigest()

    found["httpx"] = with_httpx
    return found


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="pcbench-"))
    registries = RegistrySet(work / "registries")
    try:
        registry = registries.plain
        blob = work / "blob"
        with open(blob, "wb") as fh:
            for _ in range(SIZE // CHUNK):
                fh.write(os.urandom(CHUNK))
        digest = upload(registry.url, blob)
        speeds: dict[str, list[float]] = {}
        for _ in range(ROUNDS):
            for name, read in readers(registry.port, f"/v2/bench/blob/blobs/{digest}").items():
                start = time.perf_counter()
                assert read() == digest
                speeds.setdefault(name, []).append(SIZE / (time.perf_counter() - start) / CHUNK)
        for name, values in speeds.items():
            runs = ", ".join(f"{v:.0f}" for v in values)
            print(f"{name:12} median {statistics.median(values):4.0f} MiB/s  ({runs})")
    finally:
        registries.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
