"""Crashes and concurrency on the real filesystem, with real processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from errno import ENOSPC
from pathlib import Path

import pytest

from packcache.archive.save_reader import import_archive
from packcache.store.store import Store
from packcache.store.verify import verify
from tests.archives import build_oci_archive
from tests.engines.images import build_legacy_archive
from tests.test_archive_import import LAYERS
from tests.test_cli import snapshot

ROOT = Path(__file__).resolve().parents[1]


def worker(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store_worker", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_during_ingest_never_leaves_a_bad_blob_or_dangling_row(cache_dir: Path) -> None:
    Store.open(cache_dir)
    rng = random.Random(1234)
    killed_mid_run = 0
    for round_ in range(25):
        # Each round re-ingests some layers of the previous one and adds new ones.
        proc = worker("ingest", str(cache_dir), str(round_ * 3), "10", "2000000")
        # Counted from the worker's own progress, so the kill lands inside the ingest loop on
        # a fast machine as on a slow one: after some layers, somewhere in the next one.
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for _ in range(rng.randrange(10)):
            assert proc.stdout.readline().startswith("ingested "), proc.communicate()
        time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is None:
            killed_mid_run += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert killed_mid_run >= 10, "most kills should land while the worker is ingesting"

    store = Store.open(cache_dir)
    report = verify(store)
    assert report.checked > 0
    assert report.corrupt == [] and report.missing == []
    # Orphans (renamed, not yet indexed) and temp files of killed processes may remain;
    # verify --repair cleans them, and every indexed layer reads back whole.
    verify(store, repair=True)
    assert verify(store).ok
    with store.db.read() as conn:
        diff_ids = [r[0] for r in conn.execute("SELECT diff_id FROM layers")]
    for diff_id in diff_ids:
        with store.layer(diff_id).uncompressed() as reader:
            while reader.read(1 << 20):
                pass


def test_concurrent_ingest_and_prune_lose_nothing_and_respect_leases(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    Store.open(cache)
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    holder = worker("hold", str(cache), str(ready), str(stop), "900", "901", "902")
    deadline = time.time() + 60
    while not ready.exists():
        assert holder.poll() is None, holder.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    ingesters = [worker("ingest", str(cache), str(i * 4), "12", "150000") for i in range(3)]
    pruner = worker("prune", str(cache), "40")
    outputs = {}
    for proc in [*ingesters, pruner]:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outputs[proc] = out
    stop.write_text("stop")
    out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err
    assert "held 3 layers" in out

    store = Store.open(cache)
    report = verify(store)
    assert report.ok, report
    # The pruner really ran against live data: it removed layers and skipped the leased ones.
    rounds = [line.split() for line in outputs[pruner].splitlines()]
    assert sum(int(r[1]) for r in rounds) > 0
    assert all(int(r[3]) == 3 for r in rounds)
    assert os.listdir(cache / "ingest") == []


class _PruneNearTheEnd:
    """A stream that runs `packcache prune --all` in another process when it reaches the
    archive's last member: after an import has skipped the blobs the cache holds already,
    before it records the image."""

    def __init__(self, path: Path, cache: Path) -> None:
        with tarfile.open(path) as tar:
            self._trigger_at = tar.getmembers()[-1].offset
        self._file = open(path, "rb")  # noqa: SIM115 - closed by the test
        self._cache = cache
        self.prune: subprocess.CompletedProcess[str] | None = None

    def read(self, n: int = -1) -> bytes:
        if self.prune is None and self._file.tell() >= self._trigger_at:
            prune = ["prune", "--all", "--format", "json"]
            self.prune = subprocess.run(
                [sys.executable, "-m", "packcache", "--cache-dir", str(self._cache), *prune],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
        return self._file.read(n)


def test_a_prune_during_an_import_cannot_take_the_layers_it_skipped(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    store = Store.open(cache)
    image, _ = build_oci_archive(tmp_path / "a.tar", LAYERS, gzip_layers=True)
    with open(image.path, "rb") as stream:
        import_archive(store, stream)
    stream = _PruneNearTheEnd(image.path, cache)
    with stream._file, store.lease("import") as lease:
        report = import_archive(store, stream, lease=lease)  # type: ignore[arg-type]
    assert stream.prune is not None and stream.prune.returncode == 0, stream.prune
    # The prune ran while the import held the layers it had skipped as cached: kept, all.
    assert sorted(json.loads(stream.prune.stdout)["in_use"]) == sorted(image.diff_ids)
    assert report.layers_known == len(image.diff_ids)
    assert store.cached_diff_ids(image.diff_ids) == set(image.diff_ids)
    assert verify(store).ok


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, for a real "No space left on device"."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_during_an_import_is_one_error_and_the_cache_as_it_was(
    cli, small_filesystem: Path, tmp_path: Path
) -> None:
    cache = small_filesystem / "cache"
    small = build_legacy_archive(tmp_path / "small.tar", LAYERS[:1], repo_tag="small:1")
    assert cli("import", "--archive", str(small.path), cache=cache).exit_code == 0
    # 3 MiB of random bytes do not compress: more than the filesystem has left.
    big, _ = build_oci_archive(tmp_path / "big.tar", [{"big.bin": os.urandom(3 << 20)}], "big:1")
    before = snapshot(cache)
    result = cli("import", "--archive", str(big.path), cache=cache)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line == f"packcache: error: cannot write to the cache at {cache}: {os.strerror(ENOSPC)}"
    assert snapshot(cache) == before
    assert list((cache / "ingest").iterdir()) == []
