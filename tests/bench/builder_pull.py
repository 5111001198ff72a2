"""On real engines: `create-builder --pull-policy always` when the build image and the
buildpackages are only in a registry, against pack's method.

The create-builder bench's inputs (ten buildpackage images of ~40 MiB each, ~10 MiB at quick
size, a busybox build image, a run image, a lifecycle .tgz) are pushed by the engine to a local
plain registry (tests/registries) and removed from the daemon; builder.toml names the
registry's images. Then,
per engine (PACKCACHE_BENCH_ENGINES, default 20.10-graphdriver, 26.1-graphdriver,
26.1-containerd), interleaved, REPEAT times, each with no builder, build image or buildpackage
in the daemon:

- pack's method: `docker pull` of the build image and each buildpackage, then
  `create-builder --no-cache --pull-policy never` (a `docker save` per buildpackage, the
  builder loaded with every layer but the build image's, as pack does);
- packcache, empty cache: `create-builder --pull-policy always` (blobs straight from the
  registry into the cache, all images' layers in one pull, the daemon sent only the layers it
  lacks; on a containerd store the blobs are written into its content store as they download,
  so the load writes only the builder's own layers);
- packcache, the cache of the previous run (manifests read again, no layer downloaded);
- floor: a bare `docker load -i` of the builder saved whole (what a graphdriver must be sent
  when it holds none of the layers, with no download at all).

Every command is a fresh process, start-up included. Printed, never asserted.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tests.bench.builder import BUILDER, PACKAGE_MIB, PACKAGES, make_inputs
from tests.bench.common import (
    DEFAULT_KINDS,
    PACKCACHE,
    containerd_env,
    engine_kinds,
    note,
    print_table,
    start_engine,
    timed_docker_load,
    timed_process,
    work_dir,
)
from tests.engines.harness import DOCKER_CLI, Engine
from tests.registries.harness import RegistrySet

REPEAT = int(os.environ.get("PACKCACHE_BENCH_REPEAT", "3"))
TARGET_GRAPHDRIVER = 3.0
TARGET_CONTAINERD = 8.0


def to_registry(engine: Engine, toml: Path, refs: list[str], host: str) -> list[str]:
    """Push the build image, run image and buildpackages; the daemon keeps none of them (the
    run image stays: a builder does not need it, and both methods see the same daemon)."""
    text = toml.read_text()
    remote_refs = []
    for ref in ["bench/build:1", "bench/run:1", *refs]:
        remote = f"{host}/{ref}"
        engine.docker("tag", ref, remote)
        engine.docker("push", remote)
        engine.docker("rmi", remote)
        if ref != "bench/run:1":
            engine.docker("rmi", ref)
            remote_refs.append(remote)
        text = text.replace(f'"{ref}"', f'"{remote}"').replace(
            f'"docker://{ref}"', f'"docker://{remote}"'
        )
    toml.write_text(text)
    return remote_refs


def bench_engine(kind: str, host: str) -> dict[str, list[float]]:
    engine = start_engine(kind)
    work = Path(tempfile.mkdtemp(prefix="packcache-bench-builder-pull-", dir=work_dir()))
    seconds: dict[str, list[float]] = {"pack": [], "cold": [], "warm": [], "floor": []}
    try:
        toml, refs = make_inputs(engine, work)
        images = to_registry(engine, toml, refs, host)
        env = {**os.environ, **containerd_env(engine)}

        def create(cache: Path, *args: str) -> float:
            command = [*PACKCACHE, "--cache-dir", str(cache), "--host", engine.host,
                       "create-builder", BUILDER, "--config", str(toml), "--quiet",
                       "--insecure-registry", host, *args]  # fmt: skip
            return timed_process(command, env=env)[0]

        def clean() -> None:
            engine.docker("rmi", BUILDER, *images, check=False)
            os.sync()

        warm = work / "warm-cache"
        create(warm, "--pull-policy", "always")  # fills the warm cache
        whole = work / "builder.tar"  # the floor's input: the builder, every layer
        engine.docker("save", "-o", str(whole), BUILDER)
        for _ in range(REPEAT):
            clean()
            pulls = sum(timed_process([DOCKER_CLI, "pull", ref], env=engine.cli_env())[0]
                        for ref in images)  # fmt: skip
            seconds["pack"].append(
                pulls + create(work / "unused", "--no-cache", "--pull-policy", "never")
            )
            clean()
            cold = work / "cold-cache"
            shutil.rmtree(cold, ignore_errors=True)
            seconds["cold"].append(create(cold, "--pull-policy", "always"))
            clean()
            seconds["warm"].append(create(warm, "--pull-policy", "always"))
            clean()
            seconds["floor"].append(timed_docker_load(engine, whole)[0])
    finally:
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)
    return seconds


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="packcache-bench-registry-", dir=work_dir()) as tmp:
        registries = RegistrySet(Path(tmp))
        try:
            host = registries.plain.host
            start = time.perf_counter()
            results = {
                kind: bench_engine(kind, host)
                for kind in engine_kinds("PACKCACHE_BENCH_ENGINES", DEFAULT_KINDS)
            }
        finally:
            registries.stop_all()
    note(f"all engines in {time.perf_counter() - start:.0f} s")
    for kind, runs in results.items():
        median = {name: statistics.median(values) for name, values in runs.items()}
        print_table(
            f"create-builder, build image and {PACKAGES} buildpackages x {PACKAGE_MIB} MiB only "
            f"in the registry, on {kind} (median of {REPEAT}, s (min-max))",
            ["method", "seconds", "speed-up vs pack's method"],
            [
                [label, f"{median[name]:.2f} ({min(runs[name]):.2f}-{max(runs[name]):.2f})",
                 f"{median['pack'] / median[name]:.2f}x"]
                for name, label in (
                    ("pack", "pack's method: docker pull each, save each, load all"),
                    ("cold", "create-builder --pull-policy always, empty cache"),
                    ("warm", "create-builder --pull-policy always, cache of a previous run"),
                    ("floor", "floor: docker load of the whole builder, nothing downloaded"),
                )
            ],
        )  # fmt: skip
        target = TARGET_CONTAINERD if "containerd" in kind else TARGET_GRAPHDRIVER
        note(
            f"{kind}: pack's method / cold = {median['pack'] / median['cold']:.2f} "
            f"(target >= {target}), / warm = {median['pack'] / median['warm']:.2f}, "
            f"/ floor = {median['pack'] / median['floor']:.2f}"
        )


if __name__ == "__main__":
    main()
