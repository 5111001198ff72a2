"""docs/benchmarks.md: each bench's section holds the tables of its latest run.

A section sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; a run replaces its
bench's section and leaves the others (and the text outside the markers) as they are.
"""

from __future__ import annotations

import inspect
import os
import platform
import re
import subprocess
import time
from pathlib import Path

from tests.bench.common import ROOT

DOC = ROOT / "docs" / "benchmarks.md"
# Bench module name -> section heading, in the order sections appear in the file.
TITLES = {
    "index_scale": "Index at scale",
    "ingest": "Ingest",
    "engines": "Import and load",
    "rebase": "Rebase",
    "builder": "create-builder",
    "builder_pull": "create-builder from a registry",
    "derived_builder": "Derived builder (create-builder --from-builder)",
    "publish": "rebase --publish",
    "pull": "Pull",
}


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def commit() -> str:
    """The checkout measured: its short commit, flagged when tracked files differ from it."""
    head = _git("rev-parse", "--short", "HEAD") or "unknown commit"
    # The file this writes does not count: one run of several benches rewrites it as it goes.
    dirty = _git(
        "status", "--porcelain", "--untracked-files=no", "--", ".", f":!{DOC.relative_to(ROOT)}"
    )
    return f"{head} (with uncommitted changes)" if dirty else head


def _first(path: str, pattern: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError:
        return ""
    found = re.search(pattern, text, re.MULTILINE)
    return found.group(1).strip() if found else ""


def machine() -> str:
    """CPUs, memory, kernel and OS of this machine, in one line."""
    cpu = _first("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.processor()
    mem_kib = _first("/proc/meminfo", r"^MemTotal:\s*(\d+)")
    mem = f"{int(mem_kib) / (1 << 20):.1f} GiB RAM" if mem_kib else "RAM unknown"
    system = _first("/etc/os-release", r'^PRETTY_NAME="?([^"\n]+)') or platform.system()
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem}, Linux {platform.release()}, {system}, "
        f"Python {platform.python_version()}"
    )


def section(name: str, body: str) -> str:
    return f"<!-- bench:{name} -->\n{body.strip()}\n<!-- /bench:{name} -->"


def render(
    name: str,
    blocks: list[str],
    engines: list[str],
    seconds: float,
    loads: tuple[float, float],
    size: str,
    method: str = "",
) -> str:
    """The section of one run: what, when and where, how it measures (`method`), its tables."""
    about = (
        f"Commit {commit()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, size {size}: "
        f"{seconds:.0f} s, load average {loads[0]:.1f} at the start and {loads[1]:.1f} at the end "
        f"(`make bench BENCH={name}{'' if size == 'full' else ' BENCH_SIZE=' + size}`)."
    )
    lines = [f"## {TITLES[name]} (`tests/bench/{name}.py`)", "", about, ""]
    lines.append(f"Machine: {machine()}.")
    if method:
        lines += ["", inspect.cleandoc(method)]
    if engines:
        lines += ["", "Engines: " + "; ".join(engines) + "."]
    return "\n".join([*lines, "", *(f"{block}\n" for block in blocks)])


def replace_section(name: str, body: str, doc: Path = DOC) -> None:
    """Put `body` in place of bench `name`'s section, or add the section in its place."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    new = section(name, body)
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.DOTALL
    )
    if pattern.search(text):
        text = pattern.sub(lambda _: new, text, count=1)
    else:
        # Before the first section of a bench that comes later in TITLES, else at the end.
        later = list(TITLES)[list(TITLES).index(name) + 1 :]
        positions = [text.find(f"<!-- bench:{other} -->") for other in later]
        at = min((p for p in positions if p >= 0), default=-1)
        text = (
            text.rstrip("\n") + "\n\n" + new + "\n"
            if at < 0
            else text[:at] + new + "\n\n" + text[at:]
        )
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(doc)
