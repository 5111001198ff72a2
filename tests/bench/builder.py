"""On real engines: `packcache create-builder` against pack's method and the floor.

For each engine kind benched (started with tests/engines/harness.py, stopped afterwards):
ten buildpackage images of ~40 MiB each (one random 40 MiB file per buildpack), a CNB build
image (busybox), a run image and a lifecycle .tgz; builder.toml names the ten by docker://.
Every create-builder runs with --pull-policy never: the images are the daemon's, and no
registry is asked (pack's default, always, would ask Docker Hub for bench/ names).

(a) First builder on a daemon that holds no builder chain (the builder removed before each run):
    cold (empty cache: one `docker save` of all ten; once), then interleaved: pack's method
    (`--no-cache`: one `docker save` per buildpackage, re-tar, load every new layer), warm
    (cache filled: no save), and the floor: a bare `docker load -i` of an archive holding only
    the builder's new layers.
(b) Re-creating the builder while the previous one is still in the daemon: warm with unchanged
    inputs (no layer bytes sent) vs pack's method; then one buildpackage image changed.

Every command is a fresh process (start-up included); medians of PACKCACHE_BENCH_REPEAT runs
(default 3) for the fast ones. Printed, never asserted. Env: PACKCACHE_BENCH_ENGINES (default
20.10-graphdriver, 26.1-graphdriver, 26.1-containerd); PACKCACHE_BENCH_SIZE=quick: buildpackages
of 10 MiB.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests import builder_fixtures as fx
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

PACKAGES = 10
PACKAGE_MIB = scaled(40, 10)
REPEAT = int(os.environ.get("PACKCACHE_BENCH_REPEAT", "3"))
BUILDER = "bench/builder:1"
TARGET_FLOOR = 1.15
TARGET_FIRST = 2.0
TARGET_RECREATE = 5.0


def _remove_builder(engine: Engine) -> None:
    subprocess.run(
        [DOCKER_CLI, "rmi", BUILDER], env=engine.cli_env(), capture_output=True, check=False
    )


def _package(engine: Engine, work: Path, index: int, ref: str) -> fx.Buildpackage:
    buildpack = fx.make_buildpack(f"bench/bp-{index:02d}")
    buildpack.files["lib/payload.bin"] = os.urandom(PACKAGE_MIB << 20)
    return fx.load_buildpackage(engine, work, ref, buildpack)


def make_inputs(engine: Engine, work: Path) -> tuple[Path, list[str]]:
    build_ref, run_ref = "bench/build:1", "bench/run:1"
    fx.load_build_image(engine, work, build_ref)
    fx.load_run_image(engine, work, run_ref)
    fx.write_lifecycle(work / "lifecycle.tgz")
    refs = [f"bench/package-{i:02d}:1" for i in range(PACKAGES)]
    for index, ref in enumerate(refs):
        _package(engine, work, index, ref)
    toml = work / "builder.toml"
    text = "".join(f'[[buildpacks]]\n  uri = "docker://{ref}"\n\n' for ref in refs)
    text += "[[order]]\n" + "".join(
        f'  [[order.group]]\n    id = "bench/bp-{i:02d}"\n    optional = true\n'
        for i in range(PACKAGES)
    )
    text += f'\n[build]\n  image = "{build_ref}"\n\n[[run.images]]\n  image = "{run_ref}"\n'
    text += f'\n[stack]\n  id = "{fx.STACK}"\n\n[lifecycle]\n  uri = "lifecycle.tgz"\n'
    toml.write_text(text)
    for name in os.listdir(work):  # the image archives: loaded, no longer needed
        if name.endswith(".tar"):
            (work / name).unlink()
    return toml, refs


def create(engine: Engine, cache: Path, toml: Path, *args: str) -> tuple[float, dict]:
    start = time.perf_counter()
    result = subprocess.run(
        [*PACKCACHE, "--cache-dir", str(cache), "--host", engine.host, "create-builder",
         BUILDER, "--config", str(toml), "--format", "json", "--pull-policy", "never", *args],
        capture_output=True, text=True, check=False, env={**os.environ, **containerd_env(engine)},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"create-builder failed: {result.stderr}")
    return seconds, json.loads(result.stdout)


def median(run: Callable[[], tuple[float, dict]], before: Callable[[], None]) -> tuple[float, dict]:
    results = []
    for _ in range(REPEAT):
        before()
        results.append(run())
    seconds = statistics.median(r[0] for r in results)
    return seconds, results[-1][1]


def bench_engine(kind: str) -> None:
    engine = start_engine(kind)
    work = Path(tempfile.mkdtemp(prefix="packcache-bench-builder-", dir=Path.home()))
    try:
        toml, refs = make_inputs(engine, work)
        pack_cache, cache = work / "pack-cache", work / "cache"

        # (a) first builder, no builder chain in the daemon. Cold once (it fills the cache);
        # then pack's method, warm and the floor interleaved, each after a sync with no
        # builder in the daemon, so one run's disk writeback does not land in another's time.
        _remove_builder(engine)
        cold, cold_report = create(engine, cache, toml)
        _remove_builder(engine)
        archive = work / "floor.tar"
        # The builder's new layers only (the build image's as placeholders or references),
        # written while the daemon has no builder.
        floor_bytes = floor_archive(
            engine, cache, BUILDER, archive, {**os.environ, **containerd_env(engine)}
        )
        runs = interleaved(
            {
                "pack": lambda: create(engine, pack_cache, toml, "--no-cache"),
                "warm": lambda: create(engine, cache, toml),
                "floor": lambda: timed_docker_load(engine, archive),
            },
            lambda: _remove_builder(engine),
            REPEAT,
        )
        archive.unlink()
        (pack_a, pack_a_report), (warm, warm_report), (floor, _) = runs.values()

        # (b) re-create while the previous builder is in the daemon
        create(engine, cache, toml)
        again, again_report = median(lambda: create(engine, cache, toml), lambda: None)
        pack_b, pack_b_report = create(engine, pack_cache, toml, "--no-cache")
        create(engine, cache, toml)  # the daemon holds the cached builder's chain again
        _package(engine, work, 5, refs[5])  # a new version of one buildpackage, same tag
        changed, changed_report = create(engine, cache, toml)

        def row(label: str, seconds: float, report: dict | None, base: float, saves: str):
            sent = report["load"]["bytes_sent"] if report and report.get("load") else floor_bytes
            layers = report["load"]["layers_sent"] if report and report.get("load") else "-"
            loaded_by = report["load"]["load_method"] if report and report.get("load") else "-"
            return [
                label,
                f"{seconds:.2f}",
                f"{seconds / base:.2f}x",
                f"{sent / 2**20:.1f}",
                str(layers),
                saves,
                loaded_by,
            ]

        pack_saves = f"{len(pack_a_report['imported'])} saves (one per image)"
        cold_saves = f"1 save of {len(cold_report['imported'])} images"
        changed_saves = ", ".join(changed_report["imported"]) or "none"
        headers = ["method", "seconds", "vs floor", "MiB sent", "layers sent", "docker save"]
        headers.append("loaded by")
        print_table(
            f"create-builder on {kind} ({engine.version}): (a) first builder, "
            f"{PACKAGES} buildpackages x {PACKAGE_MIB} MiB",
            headers,
            [
                row("pack's method (--no-cache)", pack_a, pack_a_report, floor, pack_saves),
                row("cold (empty cache)", cold, cold_report, floor, cold_saves),
                row("warm (cache filled)", warm, warm_report, floor, "none"),
                row("floor (bare docker load of new layers)", floor, None, floor, "none"),
            ],
        )
        note(
            f"warm / floor = {warm / floor:.2f} (target <= {TARGET_FLOOR}); "
            f"pack's method / warm = {pack_a / warm:.2f} (target >= {TARGET_FIRST})"
        )
        headers = ["method", "seconds", "vs warm", "MiB sent", "layers sent", "docker save"]
        headers.append("loaded by")
        print_table(
            f"create-builder on {kind}: (b) re-create, previous builder in the daemon",
            headers,
            [
                row("pack's method (--no-cache)", pack_b, pack_b_report, again, pack_saves),
                row("warm, inputs unchanged", again, again_report, again, "none"),
                row(
                    "warm, one buildpackage changed", changed, changed_report, again, changed_saves
                ),
            ],
        )
        note(f"pack's method / warm unchanged = {pack_b / again:.2f} (target >= {TARGET_RECREATE})")
    finally:
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    for kind in engine_kinds("PACKCACHE_BENCH_ENGINES", DEFAULT_KINDS):
        bench_engine(kind)


if __name__ == "__main__":
    main()
