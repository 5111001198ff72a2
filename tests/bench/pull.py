"""`packcache pull` and a daemon rebase with `--pull-policy always`, against the daemon's way.

The rebase bench's images (run v1 and v2 in three layers each, an app of four layers on v1)
are pushed to a local plain registry (tests/registries) by the engine. Then, per engine
(PACKCACHE_BENCH_PULL_ENGINES, default 26.1-graphdriver and 26.1-containerd), interleaved,
REPEAT times:

- pull: `packcache pull` of the app and run v1 into an empty cache;
- docker pull + save: `docker pull` of both into an engine that lacks them, then `docker save`
  of both to a file (the way a daemon-only cache fills);
- floors (tests/bench/pull_floor.py): the same blobs downloaded in parallel (4 at once) and
  hashed, nothing written; the same with each gzip layer inflated and its uncompressed stream
  hashed (the diffID a pull computes); and that again as a fresh process (a CLI's start-up);
- rebase, only the registry has the new run image (the daemon holds the app and run v1):
  `packcache rebase --pull-policy always` with an empty cache (cold) and with the cache of the
  previous run (warm), against `docker pull` of the app and v2 (pack pulls both under
  `always`) followed by pack's method (`packcache rebase --no-cache --pull-policy never`).
  Both name v2 with `--run-image ... --force` (the app's metadata names a repository that is
  not the registry's).

Every packcache run is a fresh process, start-up included. Printed, never asserted.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import requests

from tests.bench.common import (
    PACKCACHE,
    Runs,
    engine_kinds,
    note,
    packcache_env,
    print_table,
    start_engine,
    timed_process,
    work_dir,
)
from tests.bench.images import MIB
from tests.bench.pull_floor import Blob, floor, script_args
from tests.bench.rebase import APP_ORIGINAL, RUN_REPO, Built, build_images
from tests.engines.harness import DOCKER_CLI, Engine
from tests.registries.harness import RegistrySet

REPEAT = int(os.environ.get("PACKCACHE_BENCH_REPEAT", "3"))
ENGINES = engine_kinds("PACKCACHE_BENCH_PULL_ENGINES", ["26.1-graphdriver", "26.1-containerd"])


def _blobs(host: str, refs: list[str]) -> list[Blob]:
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    found: dict[str, Blob] = {}
    for ref in refs:
        repository, tag = ref.removeprefix(f"{host}/").rsplit(":", 1)
        manifest = requests.get(
            f"http://{host}/v2/{repository}/manifests/{tag}", headers={"Accept": accept}
        ).json()
        for blob in [manifest["config"], *manifest["layers"]]:
            gzip = blob["mediaType"].endswith("gzip")
            found.setdefault(blob["digest"], (repository, blob["digest"], gzip))
    return list(found.values())


def bench_engine(kind: str, built: Built, work: Path, host: str) -> dict[str, Runs]:
    engine: Engine = start_engine(kind)
    methods: dict[str, Runs] = {}
    run1, run2, app = f"{host}/{RUN_REPO}:v1", f"{host}/{RUN_REPO}:latest", f"{host}/bench/app:1"
    try:
        env, pc_env = engine.cli_env(), packcache_env()

        def docker(*args: str, check: bool = True) -> float:
            if not check:
                engine.docker(*args, check=False)
                return 0.0
            return timed_process([DOCKER_CLI, *args], env=env)[0]

        def packcache(cache: Path, *args: str) -> float:
            command = [*PACKCACHE, "--host", engine.host, "--cache-dir", str(cache), *args]
            return timed_process(command, env=pc_env)[0]

        docker("load", "-i", str(built.archive))
        for local, remote in ((f"{RUN_REPO}:v1", run1), (f"{RUN_REPO}:v2", run2),
                              (APP_ORIGINAL, app)):  # fmt: skip
            docker("tag", local, remote)
            docker("push", remote)
            docker("rmi", remote)
        docker("rmi", f"{RUN_REPO}:v2")  # the daemon keeps the app on v1 and v1 only
        blobs = _blobs(host, [run1, app])
        warm = work / f"{kind}-warm"
        # The app named as in its registry: pack fetches it with the pull policy too, and a
        # local-only name would send `always` to a public registry.
        rebase_args = ["rebase", app, "--tag", "bench/app:rebased", "--run-image", run2,
                       "--force", "--insecure-registry", host]  # fmt: skip
        for _ in range(REPEAT):
            cache = work / f"{kind}-pull"
            shutil.rmtree(cache, ignore_errors=True)
            pulled = packcache(cache, "pull", "--insecure-registry", host, run1, app)
            methods.setdefault("pull", Runs([], [])).seconds.append(pulled)
            saved = work / "saved.tar"
            docker("rmi", run1, app, check=False)
            seconds = docker("pull", run1) + docker("pull", app)
            seconds += docker("save", "-o", str(saved), run1, app)
            methods.setdefault("docker", Runs([], [])).seconds.append(seconds)
            docker("rmi", run1, app)
            saved.unlink()
            for name, gunzip in (("floor", False), ("floor-gunzip", True)):
                methods.setdefault(name, Runs([], [])).seconds.append(floor(host, blobs, gunzip))
            fresh = timed_process(script_args(host, blobs, gunzip=True))[0]
            methods.setdefault("floor-process", Runs([], [])).seconds.append(fresh)
            docker("tag", APP_ORIGINAL, app)
            for method in ("pack", "cold", "warm"):
                docker("rmi", run2, "bench/app:rebased", check=False)
                if method == "pack":
                    seconds = docker("pull", app) + docker("pull", run2)
                    seconds += packcache(work / "unused", *rebase_args, "--no-cache",
                                         "--pull-policy", "never")  # fmt: skip
                else:
                    cache = warm if method == "warm" else work / f"{kind}-cold"
                    if method == "cold":
                        shutil.rmtree(cache, ignore_errors=True)
                    seconds = packcache(cache, *rebase_args, "--pull-policy", "always")
                methods.setdefault(method, Runs([], [])).seconds.append(seconds)
            docker("rmi", run2, app, "bench/app:rebased", check=False)
    finally:
        engine.stop()
    return methods


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="packcache-bench-pull-", dir=work_dir()) as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        built = build_images(work)
        pulled_mib = sum(layer.size for layer in built.run1 + built.app) / MIB
        note(
            f"built the rebase bench's images ({pulled_mib:.0f} MiB of gzip layers in the app "
            f"and run v1) in {time.perf_counter() - start:.0f} s"
        )
        registries = RegistrySet(work / "registries")
        try:
            host = registries.plain.host
            results = {kind: bench_engine(kind, built, work, host) for kind in ENGINES}
        finally:
            registries.stop_all()
    for kind, methods in results.items():
        median = {name: statistics.median(runs.seconds) for name, runs in methods.items()}
        print_table(
            f"pull into an empty cache on {kind} (median of {REPEAT}, s (min-max))",
            ["method", "seconds", "pull is faster by", "vs floor"],
            [
                [label, f"{median[name]:.2f} ({methods[name].spread()})",
                 f"{median[name] / median['pull']:.2f}x", f"{median[name] / median['floor']:.2f}x"]
                for name, label in (("pull", "packcache pull"),
                                    ("docker", "docker pull + docker save"),
                                    ("floor", "floor: parallel download + hash"),
                                    ("floor-gunzip", "floor + gunzip + diffID hash"),
                                    ("floor-process", "floor + gunzip, a fresh process"))
            ],
        )  # fmt: skip
        print_table(
            f"rebase --pull-policy always, new run image only in the registry, on {kind} "
            f"(median of {REPEAT}, s (min-max))",
            ["method", "seconds", "speed-up vs docker pull + pack's method"],
            [
                [label, f"{median[name]:.2f} ({methods[name].spread()})",
                 f"{median['pack'] / median[name]:.2f}x"]
                for name, label in (("pack", "docker pull + pack's method (--no-cache)"),
                                    ("cold", "packcache, empty cache"),
                                    ("warm", "packcache, cache of the previous run"))
            ],
        )  # fmt: skip
        note(
            f"{kind}: pull {median['docker'] / median['pull']:.2f}x faster than docker pull + "
            f"save (target >= 2x), {median['floor'] / median['pull']:.2f}x of the floor "
            f"(target >= 0.85x), {median['floor-process'] / median['pull']:.2f}x of the floor "
            "that also gunzips and hashes the diffIDs in a fresh process; rebase with the pull "
            f"{median['pack'] / median['cold']:.2f}x (cold) and "
            f"{median['pack'] / median['warm']:.2f}x (warm) faster than docker pull + pack's method"
        )
