"""On real engines: a derived builder (`create-builder --from-builder`) against pack's
ephemeral-builder method and the floor.

For each engine kind benched (started with tests/engines/harness.py, stopped afterwards): the
builder of the create-builder bench (ten buildpackage images of ~40 MiB each on a busybox build
image, made once with `create-builder`), and what `pack build --buildpack ./bp --env K=V` adds
to it: one directory buildpack (~4 MiB) and one env var. With --pull-policy never: the
builder is the daemon's, no registry is asked.

(a) The derived builder made while the daemon does not hold it (removed before each run),
    interleaved: pack's method (`--no-cache`: `docker save` of the builder into a throwaway
    store, the new layers added, `docker load` as pack's imgutil sends it), packcache (the
    builder's config and labels from `docker inspect`, on a containerd store its manifest from
    the daemon's containerd: the builder is never saved), and the floor: a bare `docker load -i`
    of an archive holding only the new layers and config. The first packcache run has an empty
    cache (shown apart as cold).
(b) Re-creating it unchanged while it is in the daemon: packcache vs pack's method.

Every command is a fresh process (start-up included); medians of PACKCACHE_BENCH_REPEAT runs
(default 3). Printed, never asserted. Env: PACKCACHE_BENCH_ENGINES (default 20.10-graphdriver,
26.1-graphdriver, 26.1-containerd, 28-containerd); PACKCACHE_BENCH_SIZE=quick: buildpackages of
10 MiB and a 1 MiB buildpack.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests import builder_fixtures as fx
from tests.bench.builder import create as create_base
from tests.bench.builder import make_inputs as make_base_inputs
from tests.bench.common import (
    DEFAULT_KINDS,
    PACKCACHE,
    containerd_env,
    engine_kinds,
    floor_archive,
    interleaved,
    note,
    print_table,
    scaled,
    start_engine,
    timed_docker_load,
)
from tests.engines.harness import DOCKER_CLI, Engine

BASE = "bench/builder:1"
DERIVED = "bench/derived-builder:1"
BUILDPACK_MIB = scaled(4, 1)
REPEAT = int(os.environ.get("PACKCACHE_BENCH_REPEAT", "3"))
TARGET_PACK = 5.0  # pack's method / packcache, at least
TARGET_OVER_FLOOR = 0.35  # packcache - floor, seconds, at most
TARGET_CONTAINERD = 0.5  # packcache on a containerd store, seconds, at most (issue 16)


def _remove(engine: Engine, ref: str) -> None:
    subprocess.run([DOCKER_CLI, "rmi", ref], env=engine.cli_env(), capture_output=True)


def _buildpack(work: Path) -> Path:
    buildpack = fx.make_buildpack("bench/added", "1.0.0")
    buildpack.files["lib/payload.bin"] = os.urandom(BUILDPACK_MIB << 20)
    return fx.write_directory(buildpack, work / "added-buildpack")


def derive(engine: Engine, cache: Path, buildpack: Path, *args: str) -> tuple[float, dict]:
    start = time.perf_counter()
    result = subprocess.run(
        [*PACKCACHE, "--cache-dir", str(cache), "--host", engine.host, "create-builder", DERIVED,
         "--from-builder", BASE, "--buildpack", str(buildpack), "--env", "BP_BENCH=yes",
         "--format", "json", "--pull-policy", "never", *args],
        capture_output=True, text=True, check=False, env={**os.environ, **containerd_env(engine)},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"create-builder --from-builder failed: {result.stderr}")
    return seconds, json.loads(result.stdout)


def _row(label: str, seconds: float, report: dict, base: float, floor_bytes: int) -> list[str]:
    load = report.get("load")
    return [
        label,
        f"{seconds:.2f}",
        f"{seconds / base:.2f}x",
        f"{(load['bytes_sent'] if load else floor_bytes) / 2**20:.1f}",
        str(load["layers_sent"]) if load else "-",
        ("yes" if report["saved_builder"] else "no") if load else "-",
        load["load_method"] if load else "docker load",
    ]


def bench_engine(kind: str) -> None:
    engine = start_engine(kind)
    work = Path(tempfile.mkdtemp(prefix="packcache-bench-derived-", dir=Path.home()))
    try:
        toml, _refs = make_base_inputs(engine, work)
        base_cache, cache, pack_cache = work / "base-cache", work / "cache", work / "pack-cache"
        create_base(engine, base_cache, toml)  # the builder users have: made once, elsewhere
        shutil.rmtree(base_cache)
        buildpack = _buildpack(work)

        _remove(engine, DERIVED)
        cold, cold_report = derive(engine, cache, buildpack)
        _remove(engine, DERIVED)
        archive = work / "floor.tar"
        # The derived builder's new layers and config only (the base builder's as
        # placeholders or references), written while the daemon holds the base builder but
        # not the derived.
        floor_bytes = floor_archive(
            engine, cache, DERIVED, archive, {**os.environ, **containerd_env(engine)}
        )
        runs = interleaved(
            {
                "pack": lambda: derive(engine, pack_cache, buildpack, "--no-cache"),
                "warm": lambda: derive(engine, cache, buildpack),
                "floor": lambda: timed_docker_load(engine, archive),
            },
            lambda: _remove(engine, DERIVED),
            REPEAT,
        )
        archive.unlink()
        (pack, pack_report), (warm, warm_report), (floor, _) = runs.values()

        derive(engine, cache, buildpack)
        again, again_report = (
            statistics.median(derive(engine, cache, buildpack)[0] for _ in range(REPEAT)),
            derive(engine, cache, buildpack)[1],
        )
        pack_again, pack_again_report = derive(engine, pack_cache, buildpack, "--no-cache")

        headers = ["method", "seconds", "vs floor", "MiB sent", "layers sent", "builder saved"]
        headers.append("loaded by")
        print_table(
            f"derived builder on {kind} ({engine.version}): (a) one buildpack ({BUILDPACK_MIB} "
            f"MiB) and one env var on a builder of {len(cold_report['diff_ids'])} layers",
            headers,
            [
                _row("pack's method (--no-cache)", pack, pack_report, floor, floor_bytes),
                _row("cold (empty cache)", cold, cold_report, floor, floor_bytes),
                _row("packcache (cache filled)", warm, warm_report, floor, floor_bytes),
                ["floor (bare docker load of new layers)", f"{floor:.2f}", "1.00x",
                 f"{floor_bytes / 2**20:.1f}", "-", "-", "docker load"],
            ],
        )  # fmt: skip
        verdict = (
            f"pack's method / packcache = {pack / warm:.1f} (target >= {TARGET_PACK}); "
            f"packcache - floor = {warm - floor:+.2f} s (target <= {TARGET_OVER_FLOOR})"
        )
        if engine.containerd_store:
            verdict += f"; packcache {warm:.2f} s (target <= {TARGET_CONTAINERD})"
        note(verdict)
        headers = ["method", "seconds", "vs packcache", "MiB sent", "layers sent"]
        headers += ["builder saved", "loaded by"]
        print_table(
            f"derived builder on {kind}: (b) re-create unchanged, the previous one in the daemon",
            headers,
            [
                _row("pack's method (--no-cache)", pack_again, pack_again_report, again, 0),
                _row("packcache, inputs unchanged", again, again_report, again, 0),
            ],
        )
        verdict = f"pack's method / packcache = {pack_again / again:.1f} (target >= {TARGET_PACK})"
        if engine.containerd_store:
            verdict += f"; packcache {again:.2f} s (target <= {TARGET_CONTAINERD})"
        note(verdict)
    finally:
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    for kind in engine_kinds("PACKCACHE_BENCH_ENGINES", [*DEFAULT_KINDS, "28-containerd"]):
        bench_engine(kind)


if __name__ == "__main__":
    main()
