"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.engines.harness import DOCKER_CLI, Engine

ROOT = Path(__file__).resolve().parents[2]
PACKCACHE = [str(Path(sys.executable).with_name("packcache"))]


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    """Median wall time of `repeat` runs of fn, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, stdout=subprocess.DEVNULL, **kwargs)


# What the bench running now printed for docs/benchmarks.md (see tests/bench/docs.py): its
# tables and verdict lines, in order, and the engines it started.
RECORDED: list[str] = []
ENGINES_USED: dict[str, str] = {}


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """Print a markdown table and record it for docs/benchmarks.md."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        lines.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        )
    table = "\n".join(lines)
    print(f"\n## {title}\n\n{table}", flush=True)
    RECORDED.append(f"### {title}\n\n{table}")


def note(text: str) -> None:
    """Print a line of results (a verdict, a total) and record it for docs/benchmarks.md."""
    print(f"\n{text}", flush=True)
    RECORDED.append(text)


def start_engine(kind: str) -> Engine:
    """Start a private engine of `kind`, remembering what it is for the docs."""
    engine = Engine(kind).start()
    ENGINES_USED[kind] = (
        f"{kind} (Engine {engine.version}, API {engine.api_version}, {engine.storage_driver})"
    )
    return engine


def size_mode() -> str:
    """ "full" (the default) or "quick": smaller images and layers, same method and repeats."""
    mode = os.environ.get("PACKCACHE_BENCH_SIZE", "full")
    if mode not in ("full", "quick"):
        raise SystemExit(f"PACKCACHE_BENCH_SIZE must be full or quick, not {mode!r}")
    return mode


def scaled(full: int, quick: int) -> int:
    return full if size_mode() == "full" else quick


# The engines the engine benches start unless told otherwise.
DEFAULT_KINDS = ["20.10-graphdriver", "26.1-graphdriver", "26.1-containerd"]


def engine_kinds(variable: str, default: list[str]) -> list[str]:
    """Engine kinds from a comma-separated environment variable, else the default."""
    kinds = [k.strip() for k in os.environ.get(variable, "").split(",") if k.strip()]
    return kinds or default


@dataclass
class Runs:
    seconds: list[float]
    cpu: list[float]  # user + sys of the measured process (and its children)
    daemon_cpu: list[float] = field(default_factory=list)  # dockerd + containerd meanwhile

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def spread(self) -> str:
        return f"{min(self.seconds):.2f}-{max(self.seconds):.2f}"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_process(
    args: list[str], *, env=None, stdout=subprocess.DEVNULL
) -> tuple[float, float, bytes]:
    # Flush what earlier runs left dirty (GBs of layers), so its writeback does not land in
    # this run's time: every measured command starts from the same clean page cache state.
    os.sync()
    cpu, start = children_cpu(), time.perf_counter()
    proc = subprocess.run(args, env=env, stdout=stdout, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()}")
    out = proc.stdout if isinstance(proc.stdout, bytes) else b""
    return seconds, children_cpu() - cpu, out


def containerd_env(engine: Engine) -> dict[str, str]:
    """Where a test engine's containerd is (the harness's layout), for packcache to load
    through it: 26.1's API does not say."""
    if not engine.containerd_store:
        return {}
    return {
        "PACKCACHE_CONTAINERD_ADDRESS": str(engine.root / "c.sock"),
        "PACKCACHE_CONTAINERD_NAMESPACE": f"pc-{engine.root.name}",
    }


def packcache_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "PACKCACHE_"))}


def work_dir() -> Path:
    """A temp dir on the roomiest of $HOME and /tmp (the images take several GB)."""
    home, tmp = Path.home(), Path(tempfile.gettempdir())
    return home if shutil.disk_usage(home).free >= shutil.disk_usage(tmp).free else tmp


def interleaved(
    methods: dict[str, Callable[[], tuple[float, dict]]],
    before: Callable[[], None],
    repeat: int,
) -> dict[str, tuple[float, dict]]:
    """Run each method `repeat` times, the methods taking turns in the order given, each run
    after `before` and a sync (so one run's disk writeback does not land in another's time,
    and a slow spell of the machine falls on every method): per method, the median seconds
    and the last run's report."""
    runs: dict[str, list[tuple[float, dict]]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, method in methods.items():
            before()
            os.sync()
            runs[name].append(method())
    return {
        name: (statistics.median(r[0] for r in results), results[-1][1])
        for name, results in runs.items()
    }


def timed_docker_load(engine: Engine, path: Path) -> tuple[float, dict]:
    """A bare `docker load -i path`: the floor of the builder benches."""
    start = time.perf_counter()
    subprocess.run(
        [DOCKER_CLI, "load", "-i", str(path)],
        env=engine.cli_env(), check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - start, {}


# Writes the archive a bare `docker load` of IMAGE would need at least: the layers the daemon
# lacks and the config, as the load planner makes it (argv: cache dir, host, image, output).
FLOOR_ARCHIVE = """
import sys
from pathlib import Path
from packcache.image.config import config_diff_ids
from packcache.operations.load_planners import planner_for
from packcache.store.store import Store
from packcache.transports.daemon import Daemon
store = Store.open(Path(sys.argv[1]))
daemon = Daemon(sys.argv[2])
config = store.image_config(store.resolve_image(sys.argv[3]))
planner = planner_for(store, daemon)
plan = planner.plan(config_diff_ids(config))
with open(sys.argv[4], "wb") as out:
    for chunk in planner.archive(config, plan, [sys.argv[3]]).chunks:
        out.write(chunk)
"""


def floor_archive(
    engine: Engine, cache: Path, image: str, path: Path, env: dict[str, str] | None = None
) -> int:
    """Write FLOOR_ARCHIVE's archive of `image` (recorded in `cache`) to `path`; its size."""
    python = str(Path(PACKCACHE[0]).with_name("python"))
    subprocess.run(
        [python, "-c", FLOOR_ARCHIVE, str(cache), engine.host, image, str(path)],
        check=True, env=env,
    )  # fmt: skip
    return path.stat().st_size
