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


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


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


def packcache_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "PACKCACHE_"))}


def work_dir() -> Path:
    """A temp dir on the roomiest of $HOME and /tmp (the images take several GB)."""
    home, tmp = Path.home(), Path(tempfile.gettempdir())
    return home if shutil.disk_usage(home).free >= shutil.disk_usage(tmp).free else tmp
