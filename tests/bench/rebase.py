"""`packcache rebase` against pack's method and the floor, per engine, in one run.

Images built once from real files on this machine: a run image v1 and v2 of ~800 MiB in three
layers each (from /usr/lib, different files) and an app of ~270 MiB in four layers (from
/usr/share) on v1, as one gzip docker-load archive. Per engine (PACKCACHE_BENCH_REBASE_ENGINES,
default 20.10-graphdriver, 26.1-containerd and 28-containerd: API 1.48+, where a cold rebase
needs no save at all), interleaved, REPEAT times, each from the app on v1 and with the previous
result removed from the daemon:

- pack's method: `packcache rebase --no-cache` (save the app image, and on the containerd
  store the run image, into a throw-away store; load all pack would send);
- cold: `packcache rebase --no-launch-cache` with an empty cache;
- cold+launch-cache: `packcache rebase` with an empty cache and a pack launch cache volume
  holding the app layers (as `pack build` leaves it);
- warm: `packcache rebase` with the cache filled by an earlier rebase (on a containerd store,
  written into the daemon's containerd, whose socket and namespace are given);
- warm, docker load path (containerd store only): the same with containerd's address `off`;
- floor: a bare `docker load` of an archive holding only the app layers and the config (run
  image layers as placeholders / references to the content store's blobs);
- start-up floor (containerd store): a python process that imports typer and grpc and does
  nothing else, what any process of this stack costs before its work; shown in the verdicts
  beside the warm rebase less its config/manifest work (the report's config and load phases).

After each, the first `docker create` of the result (where a containerd store unpacks an
image it was never asked to unpack) is timed too. Before every timed run of every method, on a
containerd store, the bench waits until the daemon's containerd holds again the snapshots and
blobs it held before the runs (`ctr snapshots ls`, `ctr content ls`, the snapshotter's
directories): the previous result's removal is finished, so no run pays for another's
clean-up. For packcache's runs, the time spent in the command itself (its report's total) is
shown beside the process's: the rest is start-up (Python, imports, parsing) and exit. "docker
save of" names the images the report says were saved (whole, or "head": read only up to their
config), and how many image saves the daemon's events logged during the run, so a save the
report missed would show.

Every packcache run is a fresh process, start-up included. Printed, never asserted.
PACKCACHE_BENCH_SIZE=quick: a quarter of the sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import PIPE, run

from tests.bench.common import (
    PACKCACHE,
    Runs,
    containerd_env,
    engine_kinds,
    note,
    packcache_env,
    print_table,
    scaled,
    start_engine,
    timed_process,
    work_dir,
)
from tests.bench.images import MIB, BuiltLayer, file_chunks, write_gzip_layer, write_load_archive
from tests.engines import images
from tests.engines.harness import DOCKER_CLI, Engine
from tests.launch_caches import fill_volume

RUN_LAYERS_MIB = [scaled(270, 68)] * 3
APP_LAYERS_MIB = [scaled(n, n // 4) for n in (110, 80, 50, 30)]
REPEAT = int(os.environ.get("PACKCACHE_BENCH_REPEAT", "3"))
METHODS = ("pack", "cold", "cold+launch-cache", "warm", "warm-docker-load", "floor")
# PACKCACHE_BENCH_REBASE_METHODS=warm,warm-docker-load,floor: a subset, for a quick look at one
# path (pack's method and the floor are the baselines the verdicts need).
CHOSEN = engine_kinds("PACKCACHE_BENCH_REBASE_METHODS", list(METHODS))
ENGINES = engine_kinds(
    "PACKCACHE_BENCH_REBASE_ENGINES", ["20.10-graphdriver", "26.1-containerd", "28-containerd"]
)
RUN_REPO = "bench/run"
APP, APP_ORIGINAL = "bench/app:latest", "bench/app:original"
STACK = "io.packcache.bench"
TARGETS = {
    "warm vs pack": {"graphdriver": 6.0, "containerd": 5.0},
    "warm vs floor": 1.15,
    "cold vs pack": 1.10,
    "cold+launch-cache vs floor": 1.2,
    "warm+first create vs docker load path": 1.0,
    "warm under the floor": 20.0,
    "warm less its config/manifest work": 0.3,
}
# How long the daemon's containerd may take to remove a previous result before a run starts
# anyway (the verdicts then say so), and how long what it holds must stay the same, though not
# what it held at first, to count as done (something else stayed: that is the new baseline).
SETTLE_TIMEOUT_S = 120.0
SETTLE_STABLE_S = 2.0
SETTLE_POLL_S = 0.05


# What any process of this stack costs before it does anything: the interpreter importing the
# CLI framework and the containerd client (the lower bound of a warm rebase's process).
STARTUP_FLOOR = "import typer, grpc"


@dataclass
class Built:
    archive: Path
    run1: list[BuiltLayer]
    run2: list[BuiltLayer]
    app: list[BuiltLayer]  # app layers only


def _run_config(layers: list[BuiltLayer], version: str) -> bytes:
    labels = {
        "io.buildpacks.stack.id": STACK,
        "io.buildpacks.stack.mixins": "[]",
        "io.buildpacks.base.distro.name": "bench",
        "io.buildpacks.base.distro.version": version,
    }
    config = images.image_config(
        [layer.diff_id for layer in layers], {"config": {"Labels": labels}}
    )
    return images.canonical_json(config)


def _app_config(run1: list[BuiltLayer], app: list[BuiltLayer]) -> bytes:
    metadata = {
        "runImage": {"topLayer": run1[-1].diff_id, "reference": "", "image": RUN_REPO},
        "stack": {"runImage": {"image": RUN_REPO}},
    }
    labels = {
        "io.buildpacks.stack.id": STACK,
        "io.buildpacks.stack.mixins": "[]",
        "io.buildpacks.lifecycle.metadata": json.dumps(metadata),
    }
    env = ["PATH=/cnb/process:/bin", "CNB_PLATFORM_API=0.12"]
    config = images.image_config(
        [layer.diff_id for layer in run1 + app], {"config": {"Labels": labels, "Env": env}}
    )
    return images.canonical_json(config)


def build_images(work: Path) -> Built:
    run_chunks = file_chunks("/usr/lib", RUN_LAYERS_MIB * 2)
    app_chunks = file_chunks("/usr/share", APP_LAYERS_MIB)
    jobs = [(work / f"layer{i}.tar.gz", chunk) for i, chunk in enumerate(run_chunks + app_chunks)]
    with ThreadPoolExecutor(2) as pool:  # zlib and hashlib release the GIL
        layers = list(pool.map(lambda job: write_gzip_layer(*job), jobs))
    run1, run2, app = layers[:3], layers[3:6], layers[6:]
    archive = work / "images.tar"
    write_load_archive(
        archive,
        layers,
        [
            (f"{RUN_REPO}:v1", _run_config(run1, "1"), run1),
            (f"{RUN_REPO}:v2", _run_config(run2, "2"), run2),
            (APP_ORIGINAL, _app_config(run1, app), run1 + app),
        ],
    )
    return Built(archive, run1, run2, app)


@dataclass
class EngineRuns:
    kind: str
    containerd: bool
    api: tuple[int, int]
    methods: dict[str, Runs] = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)
    first_runs: dict[str, list[float]] = field(default_factory=dict)
    in_command: dict[str, list[float]] = field(default_factory=dict)  # the report's total
    save_events: dict[str, int] = field(default_factory=dict)  # the daemon's, in the last run
    # The report's config and load phases: the config/manifest work of a warm rebase.
    image_work: dict[str, list[float]] = field(default_factory=dict)
    startup_floor: list[float] = field(default_factory=list)  # the stack's imports, no work
    # How long each run waited for containerd to finish removing the previous result.
    settle_waits: list[float] = field(default_factory=list)
    settle_elsewhere: int = 0


def _write_floor(engine: Engine, cache: Path, built: Built, path: Path) -> None:
    """The archive a warm rebase sends, but with every app layer in it: the floor."""
    from packcache.archive.load_writer import LoadLayer
    from packcache.operations.load_planners import planner_for
    from packcache.store.store import Store
    from packcache.transports.daemon import Daemon

    store = Store.open(cache)
    daemon = Daemon(engine.host)
    new_id = json.loads(engine.docker("image", "inspect", APP).stdout)[0]["Id"]
    config = store.image_config(store.resolve_image(new_id))
    planner = planner_for(store, daemon)
    run_ids = [layer.diff_id for layer in built.run2]
    held = planner.held(run_ids)
    plan = [
        LoadLayer(d, None, h.digest or d, h.size, h.media_type)
        for d, h in zip(run_ids, held, strict=True)
    ]
    for layer in built.app:
        cached = store.layer(layer.diff_id)
        plan.append(LoadLayer(layer.diff_id, cached, cached.digest, cached.size, cached.media_type))
    with open(path, "wb") as out:
        for chunk in planner.archive(config, plan, ["bench/floor:latest"]).chunks:
            out.write(chunk)


def _containerd_holds(engine: Engine) -> tuple[int, int, int]:
    """How many snapshots and content blobs the daemon's containerd lists in its namespace,
    and how many snapshot directories its snapshotter still has on disk (containerd may remove
    those after it has dropped them from its lists)."""
    ctr = engine.bundle_root / "usr" / "bin" / "ctr"
    base = [str(ctr), "--address", str(engine.root / "c.sock")]
    base += ["--namespace", f"pc-{engine.root.name}"]
    snapshots = run(
        [*base, "snapshots", "--snapshotter", engine.storage_driver, "ls"],
        capture_output=True, check=True,
    ).stdout.splitlines()[1:]  # fmt: skip
    blobs = run([*base, "content", "ls", "-q"], capture_output=True, check=True).stdout.split()
    snapshotter = f"io.containerd.snapshotter.v1.{engine.storage_driver}"
    on_disk = engine.root / "data" / "containerd" / snapshotter / "snapshots"
    return len(snapshots), len(blobs), len(os.listdir(on_disk))


class Settled:
    """Waits, on a containerd store, until the daemon's containerd holds what it held when
    the runs began: a removed result's snapshots and blobs are gone (containerd removes them
    after `docker rmi` returns). A graphdriver removes an image within `docker rmi`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.baseline: tuple[int, int, int] | None = None
        self.waits: list[float] = []
        self.elsewhere = 0  # waits that ended on a new baseline

    def start(self) -> None:
        """The baseline: what containerd holds once two readings in a row agree."""
        if not self.engine.containerd_store:
            return
        last, now = None, _containerd_holds(self.engine)
        while now != last:
            time.sleep(SETTLE_POLL_S * 4)
            last, now = now, _containerd_holds(self.engine)
        self.baseline = now

    def wait(self) -> None:
        if self.baseline is None:
            return
        start = last_change = time.perf_counter()
        held = _containerd_holds(self.engine)
        while held != self.baseline:
            time.sleep(SETTLE_POLL_S)
            now, before, held = time.perf_counter(), held, _containerd_holds(self.engine)
            if held != before:
                last_change = now
            elif now - last_change > SETTLE_STABLE_S or now - start > SETTLE_TIMEOUT_S:
                self.elsewhere += 1
                self.baseline = held
        self.waits.append(time.perf_counter() - start)


def _launch_volume(engine: Engine, built: Built, work: Path) -> None:
    """A launch cache volume named as pack names the app's, in the lifecycle's layout: the app
    layers uncompressed, taken from the load archive."""
    import gzip
    import tarfile

    source = work / f"{engine.kind}-launch"
    (source / "committed").mkdir(parents=True, exist_ok=True)
    with tarfile.open(built.archive) as archive:
        for layer in built.app:
            member = archive.extractfile(f"{layer.blob_digest[7:]}/layer.tar")
            target = source / "committed" / f"{layer.diff_id}.tar"
            with gzip.open(member) as blob, open(target, "wb") as out:
                shutil.copyfileobj(blob, out, MIB)
    volume = "pack-cache-bench_app_latest-000000000000.launch"
    fill_volume(engine, volume, source, f"{RUN_REPO}:v1")
    shutil.rmtree(source)


def bench_engine(kind: str, built: Built, work: Path) -> EngineRuns:
    engine = start_engine(kind)
    api = tuple(int(part) for part in engine.api_version.split(".")[:2])
    result = EngineRuns(kind, engine.containerd_store, (api[0], api[1]))
    try:
        env, pc_env = engine.cli_env(), {**packcache_env(), **containerd_env(engine)}

        def docker(*args: str) -> float:
            return timed_process([DOCKER_CLI, *args], env=env)[0]

        def daemon_time() -> str:
            info = engine.docker("info", "--format", "{{.SystemTime}}")
            return info.stdout.decode().strip()

        def saves_since(since: str) -> int:
            """Image saves the daemon's events logged since then."""
            events = engine.docker(
                "events", "--since", since, "--until", daemon_time(), "--filter", "type=image",
                "--filter", "event=save", "--format", "{{.Actor.ID}}",
            )  # fmt: skip
            return len(events.stdout.split())

        def first_run(method: str, image: str) -> None:
            create = ["create", "--pull", "never", "--network", "none", image, "/none"]
            seconds, _, out = timed_process([DOCKER_CLI, *create], env=env, stdout=PIPE)
            result.first_runs.setdefault(method, []).append(seconds)
            docker("rm", out.decode().strip())

        def packcache(cache: Path, *args: str, method: str = "") -> tuple[float, dict]:
            report = work / "report.json"
            run_env = dict(pc_env)
            if method == "warm-docker-load":
                run_env["PACKCACHE_CONTAINERD_ADDRESS"] = "off"
            seconds, _, _ = timed_process(
                [
                    *PACKCACHE,
                    "--host",
                    engine.host,
                    "--cache-dir",
                    str(cache),
                    "rebase",
                    *args,
                    "--pull-policy",
                    "never",  # the images are in the daemon: nothing to pull
                    "--report",
                    str(report),
                ],
                env=run_env,
            )
            return seconds, json.loads(report.read_text())

        docker("load", "-i", str(built.archive))
        warm_cache = work / f"{kind}-warm"
        docker("tag", APP_ORIGINAL, APP)
        packcache(warm_cache, APP, "--run-image", f"{RUN_REPO}:v2")  # fills the cache
        floor = work / f"{kind}-floor.tar"
        _write_floor(engine, warm_cache, built, floor)
        docker("rmi", APP)
        _launch_volume(engine, built, work)
        settled = Settled(engine)
        settled.start()
        for _ in range(REPEAT):
            for method in METHODS:
                if method not in CHOSEN:
                    continue
                if method == "warm-docker-load" and not engine.containerd_store:
                    continue
                runs = result.methods.setdefault(method, Runs([], []))
                if method == "floor":
                    settled.wait()
                    if engine.containerd_store:
                        seconds = timed_process([sys.executable, "-c", STARTUP_FLOOR])[0]
                        result.startup_floor.append(seconds)
                    runs.seconds.append(docker("load", "-i", str(floor)))
                    first_run(method, "bench/floor:latest")
                    docker("rmi", "bench/floor:latest")
                    continue
                docker("tag", APP_ORIGINAL, APP)
                warm = method.startswith("warm")
                cache = warm_cache if warm else work / f"{kind}-{method}"
                if not warm:
                    shutil.rmtree(cache, ignore_errors=True)  # cold starts empty
                extra = {"pack": ["--no-cache"], "cold": ["--no-launch-cache"]}.get(method, [])
                settled.wait()
                since = daemon_time()
                seconds, report = packcache(
                    cache, APP, "--run-image", f"{RUN_REPO}:v2", *extra, method=method
                )
                result.save_events[method] = saves_since(since)
                runs.seconds.append(seconds)
                result.reports[method] = report
                result.in_command.setdefault(method, []).append(report["timings"]["total"])
                phases = report["timings"]
                work_seconds = phases.get("config", 0.0) + phases.get("load", 0.0)
                result.image_work.setdefault(method, []).append(work_seconds)
                first_run(method, APP)
                docker("rmi", APP)  # the next run must deliver the app layers again
        result.settle_waits, result.settle_elsewhere = settled.waits, settled.elsewhere
    finally:
        engine.stop()
    return result


def _verdicts(result: EngineRuns, median: dict[str, float], first: dict[str, float]) -> list[str]:
    """Each target whose methods ran, against what was measured."""
    store_kind = "containerd" if result.containerd else "graphdriver"
    pack, floor, warm = median.get("pack"), median.get("floor"), median.get("warm")
    out = []
    if pack and warm:
        target = TARGETS["warm vs pack"][store_kind]
        out.append(f"warm {pack / warm:.1f}x faster than pack (target >= {target}x)")
    if floor and warm:
        out.append(f"warm {warm / floor:.2f}x the floor (target <= {TARGETS['warm vs floor']}x)")
    if pack and "cold" in median:
        cold = median["cold"]
        out.append(f"cold {cold / pack:.2f}x pack (target <= {TARGETS['cold vs pack']}x)")
    if floor and "cold+launch-cache" in median:
        launch = median["cold+launch-cache"]
        target = TARGETS["cold+launch-cache vs floor"]
        out.append(
            f"cold with a launch cache {launch / floor:.2f}x the floor (target <= {target}x)"
        )
    if "cold+launch-cache" in result.save_events and result.containerd and result.api >= (1, 48):
        saves = result.save_events["cold+launch-cache"]
        out.append(f"cold with a launch cache: {saves} docker save(s) (target: none on API 1.48+)")
    if warm and "warm-docker-load" in median:
        # What a user waits for until the result runs: the containerd path unpacks then.
        ours = warm + first["warm"]
        theirs = median["warm-docker-load"] + first["warm-docker-load"]
        target = TARGETS["warm+first create vs docker load path"]
        out.append(
            f"warm + first create {ours / theirs:.2f}x the docker load path's (target <= {target}x)"
        )
    if result.containerd and floor and warm:
        target = TARGETS["warm under the floor"]
        out.append(f"warm {floor / warm:.1f}x under the floor (target >= {target}x)")
        rest = warm - statistics.median(result.image_work["warm"])
        target = TARGETS["warm less its config/manifest work"]
        out.append(f"warm less its config/manifest work {rest:.2f} s (target <= {target} s)")
    if result.settle_waits:
        waits = result.settle_waits
        elsewhere = result.settle_elsewhere
        moved = f", {elsewhere} settled on other counts" if elsewhere else ""
        out.append(
            f"each run started once containerd had removed the previous result (waited "
            f"{statistics.median(waits):.2f} s median, {max(waits):.2f} s at most{moved})"
        )
    if result.startup_floor:
        start_up = statistics.median(result.startup_floor)
        out.append(f"start-up floor (python importing typer and grpc, no work) {start_up:.2f} s")
    return out


def _saves(report: dict, events: int | None) -> str:
    """The images a run saved (whole, or only up to the config), and the daemon's count."""
    if not report:
        return "-"
    saved = list(report.get("saved", []))
    saved += [f"{image} (head)" for image in report.get("config_from_save", {})]
    if events is None:
        return ", ".join(saved) or "none"
    logged = f"{events} save event(s)" if events else "no save event"
    return f"{', '.join(saved) or 'none'}; {logged}"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="packcache-bench-rebase-", dir=work_dir()) as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        built = build_images(work)
        mib = sum(layer.size for layer in built.run1) / MIB
        app_mib = sum(layer.size for layer in built.app) / MIB
        note(
            f"built run images v1/v2 ({mib:.0f} MiB in 3 layers each) and an app "
            f"(+{app_mib:.0f} MiB in 4 layers) in {time.perf_counter() - start:.0f} s"
        )
        results = [bench_engine(kind, built, work) for kind in ENGINES]
    for result in results:
        median = {m: statistics.median(runs.seconds) for m, runs in result.methods.items()}
        first = {m: statistics.median(seconds) for m, seconds in result.first_runs.items()}
        inside = {m: statistics.median(seconds) for m, seconds in result.in_command.items()}
        pack, floor = median.get("pack"), median.get("floor")
        rows = []
        for method, label in (
            ("pack", "pack's method (--no-cache)"),
            ("cold", "cold"),
            ("cold+launch-cache", "cold, launch cache present"),
            ("warm", "warm"),
            ("warm-docker-load", "warm, docker load path"),
            ("floor", "floor: docker load of app layers"),
        ):
            if method not in result.methods:
                continue
            report = result.reports.get(method, {})
            rows.append(
                [
                    label,
                    f"{median[method]:.2f} ({result.methods[method].spread()})",
                    f"{inside[method]:.2f}" if method in inside else "-",
                    f"{pack / median[method]:.1f}x" if pack else "-",
                    f"{median[method] / floor:.2f}x" if floor else "-",
                    str(report.get("layers_sent", "-")),
                    f"{report['bytes_sent'] / MIB:.1f}" if report else "-",
                    _saves(report, result.save_events.get(method)),
                    report.get("load_method", "docker load"),
                    f"{first[method]:.2f}",
                ]
            )
        verdicts = _verdicts(result, median, first)
        print_table(
            f"rebase on {result.kind} (median of {REPEAT}, s (min-max))",
            [
                "method",
                "seconds",
                "of which in the command",
                "speed-up vs pack",
                "vs floor",
                "layers sent",
                "MiB sent",
                "docker save of",
                "loaded by",
                "first docker create",
            ],
            rows,
        )
        note("; ".join(verdicts))


if __name__ == "__main__":
    main()
