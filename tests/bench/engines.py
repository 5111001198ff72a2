"""On real engines: `packcache import` vs `docker save`, `packcache load` vs `docker load`.

For each engine kind benched (started with tests/engines/harness.py, stopped afterwards):

1. A base image of ~1 GiB uncompressed in 5 layers (busybox + 4 tars of real files from /usr/lib)
   and an app image on top of it (+ ~270 MiB in 4 layers from /usr/share) are built once as one
   `docker load` archive with gzip layers (the containerd store keeps blobs as loaded, so its
   save holds gzip blobs; graphdrivers store and save them uncompressed) and loaded.
2. `docker save BASE > file` (the baseline) vs `packcache import BASE` into an empty cache
   (cold), interleaved, median of 3; throughput is the save archive's size over the time.
   Warm import: the cache already holds the image (no save at all). In the same rounds, two
   floors (tests/bench/save_floor.py): reading the save stream only, and reading it while
   computing every layer's digests as import does, without writing anything.
3. Both images imported into a cache and the app removed from the daemon: `packcache load APP`
   (only the app layers go to the daemon) vs `docker load -i app.tar` of the app's own
   `docker save` archive, the app removed between runs, median of 3.

Every command is a fresh process (start-up included), run after an `os.sync()` so writeback of
an earlier run's GBs does not land in its time. CPU seconds of the command and of the engine's
dockerd + containerd are printed too: on a small machine import competes with the daemon for
cores. Temp files (several GB) go under $HOME unless /tmp has more room. Printed by
`make bench`, never asserted. Env: PACKCACHE_BENCH_ENGINES (comma-separated kinds, default
20.10-graphdriver, 26.1-graphdriver, 26.1-containerd), PACKCACHE_BENCH_REPEAT (default 3),
PACKCACHE_BENCH_SIZE=quick (a quarter of the sizes).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.bench.common import (
    DEFAULT_KINDS,
    PACKCACHE,
    Runs,
    engine_kinds,
    note,
    packcache_env,
    print_table,
    scaled,
    start_engine,
    timed_process,
    work_dir,
)
from tests.bench.images import (
    GZIP_LEVEL,
    MIB,
    BuiltLayer,
    file_chunks,
    write_gzip_layer,
    write_load_archive,
)
from tests.engines import images
from tests.engines.harness import DOCKER_CLI

# + busybox: ~1 GiB of tar in 5 layers (tar overhead +8%); quick: a quarter
BASE_LAYERS_MIB = [scaled(236, 59)] * 4
APP_LAYERS_MIB = [scaled(n, n // 4) for n in (102, 75, 46, 28)]  # ~270 MiB of tar in 4 layers
BASE_SOURCE = "/usr/lib"
APP_SOURCE = "/usr/share"
BASE_TAG = "bench/base:1"
APP_TAG = "bench/app:1"
REPEAT = int(os.environ.get("PACKCACHE_BENCH_REPEAT", "3"))
TARGET_IMPORT_RATIO = 0.9


# --------------------------------------------------------------------------- building the images


def _busybox_layer(path: Path) -> BuiltLayer:
    tar = images.layer_tar(images.busybox_layer())
    blob = images.gzip_bytes(tar)
    path.write_bytes(blob)
    return BuiltLayer(
        path, images.sha256_digest(tar), images.sha256_digest(blob), len(tar), len(blob)
    )


def _config(layers: list[BuiltLayer]) -> bytes:
    extra = {"config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}}
    return images.canonical_json(images.image_config([layer.diff_id for layer in layers], extra))


@dataclass(frozen=True)
class BenchImages:
    archive: Path  # one docker-load archive holding both images
    base: list[BuiltLayer]
    app: list[BuiltLayer]

    @property
    def base_mib(self) -> float:
        return sum(layer.size for layer in self.base) / MIB

    @property
    def app_only_mib(self) -> float:
        return sum(layer.size for layer in self.app[len(self.base) :]) / MIB


def build_images(work: Path) -> BenchImages:
    base_chunks = file_chunks(BASE_SOURCE, BASE_LAYERS_MIB)
    app_chunks = file_chunks(APP_SOURCE, APP_LAYERS_MIB)
    jobs = [(work / f"base{i}.tar.gz", c) for i, c in enumerate(base_chunks)]
    jobs += [(work / f"app{i}.tar.gz", c) for i, c in enumerate(app_chunks)]
    with ThreadPoolExecutor(2) as pool:  # zlib and hashlib release the GIL: 2 cores
        built = list(pool.map(lambda job: write_gzip_layer(*job), jobs))
    busybox = _busybox_layer(work / "busybox.tar.gz")
    base = [busybox, *built[: len(base_chunks)]]
    app = [*base, *built[len(base_chunks) :]]
    archive = work / "images.tar"
    write_load_archive(
        archive, app, [(BASE_TAG, _config(base), base), (APP_TAG, _config(app), app)]
    )
    return BenchImages(archive, base, app)


# --------------------------------------------------------------------------- measuring


def _process_cpu(pids: list[int | None]) -> float:
    """user + sys seconds of running processes (the engine's dockerd and containerd)."""
    total = 0.0
    for pid in pids:
        if pid is not None:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def describe_archive(path: Path) -> str:
    """'legacy' or 'OCI' layout, and the compression of its layer blobs."""
    names, compressions = set(), set()
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            names.add(member.name)
            if member.isfile() and member.size > MIB:
                source = tar.extractfile(member)
                assert source is not None
                head = source.read(2)
                compressions.add("gzip" if head == b"\x1f\x8b" else "tar")
    layout = "OCI" if "oci-layout" in names else "legacy"
    return f"{layout}, {'+'.join(sorted(compressions))} layers"


@dataclass
class EngineResult:
    kind: str
    version: str
    driver: str
    setup_seconds: float
    save_format: str
    save_mib: float
    save: Runs
    cold: Runs
    read_floor: Runs  # the save stream read and dropped
    digest_floor: Runs  # ... and every layer's blob digest and diffID computed
    warm: Runs
    app_tar_mib: float
    pc_load: Runs
    docker_load: Runs
    bytes_sent: list[int]
    loaded_ok: bool


def bench_engine(kind: str, built: BenchImages, work: Path) -> EngineResult:
    engine = start_engine(kind)
    try:
        env = engine.cli_env()
        pc_env = packcache_env()

        def docker(*args: str, stdout=subprocess.DEVNULL) -> tuple[float, float, bytes]:
            return timed_process([DOCKER_CLI, *args], env=env, stdout=stdout)

        def packcache(cache: Path, *args: str) -> tuple[float, float, bytes]:
            cmd = [*PACKCACHE, "--host", engine.host, "--cache-dir", str(cache), *args]
            return timed_process(cmd, env=pc_env, stdout=subprocess.PIPE)

        start = time.perf_counter()
        docker("load", "-i", str(built.archive))
        setup = time.perf_counter() - start

        # 2. docker save vs cold import, interleaved so drifting noise hits both alike.
        saved = work / "save.tar"
        save, cold = Runs([], []), Runs([], [])
        read_floor, digest_floor = Runs([], []), Runs([], [])
        save_format, save_bytes = "", 0
        cache = work / "cache"
        daemon_pids = [engine.pid, engine.containerd_pid]
        for _ in range(REPEAT):
            before = _process_cpu(daemon_pids)
            with open(saved, "wb") as out:
                seconds, cpu, _ = docker("save", BASE_TAG, stdout=out)
            save.seconds.append(seconds)
            save.cpu.append(cpu)
            save.daemon_cpu.append(_process_cpu(daemon_pids) - before)
            save_bytes = saved.stat().st_size
            if not save_format:
                save_format = describe_archive(saved)
            saved.unlink()
            shutil.rmtree(cache, ignore_errors=True)
            before = _process_cpu(daemon_pids)
            seconds, cpu, _ = packcache(cache, "import", BASE_TAG)
            cold.seconds.append(seconds)
            cold.cpu.append(cpu)
            cold.daemon_cpu.append(_process_cpu(daemon_pids) - before)
            for floor, mode in ((read_floor, "read"), (digest_floor, "digests")):
                before = _process_cpu(daemon_pids)
                seconds, cpu, _ = timed_process(
                    [sys.executable, "-m", "tests.bench.save_floor", engine.host, BASE_TAG, mode],
                    env=pc_env,
                )
                floor.seconds.append(seconds)
                floor.cpu.append(cpu)
                floor.daemon_cpu.append(_process_cpu(daemon_pids) - before)
        warm = Runs([], [])
        for _ in range(REPEAT):
            seconds, cpu, _ = packcache(cache, "import", BASE_TAG)
            warm.seconds.append(seconds)
            warm.cpu.append(cpu)

        # 3. packcache load of the app onto the base vs docker load of the app's whole archive.
        app_tar = work / "app.tar"
        with open(app_tar, "wb") as out:
            docker("save", APP_TAG, stdout=out)
        packcache(cache, "import", APP_TAG)
        docker("rmi", APP_TAG)
        expected = [layer.diff_id for layer in built.app]
        pc_load, docker_load = Runs([], []), Runs([], [])
        bytes_sent: list[int] = []
        loaded_ok = True
        for _ in range(REPEAT):
            seconds, cpu, out = packcache(cache, "load", APP_TAG, "--format", "json")
            pc_load.seconds.append(seconds)
            pc_load.cpu.append(cpu)
            bytes_sent.append(json.loads(out)["bytes_sent"])
            inspect = json.loads(engine.docker("image", "inspect", APP_TAG).stdout)[0]
            loaded_ok &= inspect["RootFS"]["Layers"] == expected
            docker("rmi", APP_TAG)
            seconds, cpu, _ = docker("load", "-i", str(app_tar))
            docker_load.seconds.append(seconds)
            docker_load.cpu.append(cpu)
            docker("rmi", APP_TAG)
        app_tar_mib = app_tar.stat().st_size / MIB
        app_tar.unlink()
        shutil.rmtree(cache, ignore_errors=True)
        return EngineResult(
            kind=kind,
            version=engine.version,
            driver=engine.storage_driver,
            setup_seconds=setup,
            save_format=save_format,
            save_mib=save_bytes / MIB,
            save=save,
            cold=cold,
            read_floor=read_floor,
            digest_floor=digest_floor,
            warm=warm,
            app_tar_mib=app_tar_mib,
            pc_load=pc_load,
            docker_load=docker_load,
            bytes_sent=bytes_sent,
            loaded_ok=loaded_ok,
        )
    finally:
        engine.stop()


def main() -> None:
    kinds = engine_kinds("PACKCACHE_BENCH_ENGINES", DEFAULT_KINDS)
    started = time.perf_counter()
    print(f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="packcache-bench-", dir=work_dir()) as tmp:
        work = Path(tmp)
        built = build_images(work)
        note(
            f"built base {BASE_TAG} ({built.base_mib:.0f} MiB in {len(built.base)} layers, "
            f"from {BASE_SOURCE}) and app {APP_TAG} (+{built.app_only_mib:.0f} MiB in "
            f"{len(built.app) - len(built.base)} layers, from {APP_SOURCE}), gzip level "
            f"{GZIP_LEVEL}: {built.archive.stat().st_size / MIB:.0f} MiB archive in "
            f"{time.perf_counter() - started:.0f} s"
        )
        for kind in kinds:
            t0 = time.perf_counter()
            results.append(bench_engine(kind, built, work))
            print(f"{kind}: measured in {time.perf_counter() - t0:.0f} s", flush=True)

    rows, cpu_rows = [], []
    for r in results:
        save_rate, cold_rate = r.save_mib / r.save.median, r.save_mib / r.cold.median
        ratio = cold_rate / save_rate
        rows.append(
            [
                f"{r.kind} ({r.version}, {r.driver})",
                r.save_format,
                f"{r.save_mib:.0f}",
                f"{r.save.median:.2f} ({r.save.spread()})",
                f"{save_rate:.0f}",
                f"{r.cold.median:.2f} ({r.cold.spread()})",
                f"{cold_rate:.0f}",
                f"{ratio:.2f}x",
                "meets" if ratio >= TARGET_IMPORT_RATIO else "MISSES",
                f"{r.warm.median:.2f} ({r.warm.spread()})",
            ]
        )
        med = statistics.median
        cpu_rows.append(
            [
                r.kind,
                f"{med(r.save.cpu):.1f}",
                f"{med(r.save.daemon_cpu):.1f}",
                f"{med(r.cold.cpu):.1f}",
                f"{med(r.cold.daemon_cpu):.1f}",
                f"{(med(r.cold.cpu) + med(r.cold.daemon_cpu)) / os.cpu_count():.1f}",
            ]
        )
    print_table(
        f"docker save BASE > file vs packcache import BASE into an empty cache "
        f"(median of {REPEAT}, interleaved; s (min-max); MiB/s = save archive MiB / s; "
        f"target import >= {TARGET_IMPORT_RATIO}x save)",
        [
            "engine",
            "save format",
            "MiB",
            "save s",
            "save MiB/s",
            "import s",
            "import MiB/s",
            "import/save",
            "",
            "warm import s",
        ],
        rows,
    )
    print_table(
        f"CPU seconds (user + sys, median) of the runs above, on {os.cpu_count()} CPUs",
        [
            "engine",
            "docker save (CLI)",
            "daemon during save",
            "packcache import",
            "daemon during import",
            "import CPU / CPUs (s)",
        ],
        cpu_rows,
    )
    floor_rows = []
    for r in results:
        floor_rows.append(
            [
                r.kind,
                f"{r.save.median:.2f}",
                f"{r.read_floor.median:.2f} ({r.read_floor.spread()})",
                f"{r.digest_floor.median:.2f} ({r.digest_floor.spread()})",
                f"{statistics.median(r.digest_floor.cpu):.1f}",
                f"{r.cold.median:.2f}",
                f"{r.save.median / r.read_floor.median:.2f}x",
                f"{r.save.median / r.digest_floor.median:.2f}x",
                f"{r.cold.median / r.digest_floor.median:.2f}",
            ]
        )
    print_table(
        f"Floors of an import, same rounds (median of {REPEAT}, s (min-max)): the save stream "
        "read by packcache's client, then also every layer's digests computed as import does "
        "(gunzip + sha256 of a containerd store's blobs), nothing written",
        [
            "engine",
            "save s",
            "read s",
            "read + digests s",
            "its CPU s",
            "import s",
            "save/read",
            "save/digests",
            "import/digests",
        ],
        floor_rows,
    )
    rows = []
    for r in results:
        sent = statistics.median(r.bytes_sent) / MIB
        rows.append(
            [
                r.kind,
                f"{r.pc_load.median:.2f} ({r.pc_load.spread()})",
                f"{sent:.0f}",
                f"{r.docker_load.median:.2f} ({r.docker_load.spread()})",
                f"{r.app_tar_mib:.0f}",
                f"{r.docker_load.median / r.pc_load.median:.2f}x",
                "yes" if r.loaded_ok else "NO",
            ]
        )
    print_table(
        f"packcache load APP (base in the daemon) vs docker load -i app.tar "
        f"(median of {REPEAT}, s (min-max); speed-up = docker load s / packcache load s)",
        [
            "engine",
            "packcache load s",
            "MiB sent",
            "docker load s",
            "app.tar MiB",
            "speed-up",
            "layers as built",
        ],
        rows,
    )
    note(
        "setup (docker load of both images, gzip layers): "
        + ", ".join(f"{r.kind} {r.setup_seconds:.0f} s" for r in results)
        + f"; total {time.perf_counter() - started:.0f} s; load average at end "
        + f"{os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
