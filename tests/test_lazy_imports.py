"""Start-up: each command imports the heavy packages only where it uses them.

Every command is a fresh process, so an import nobody needs is paid on every run: grpc only on
a containerd store (and never the protobuf runtime: containerd_wire writes the messages), the
docker SDK and requests only for a daemon pull and a registry (the daemon's Engine API is spoken
with the standard library), SQLAlchemy and Alembic only for maintenance writes and
upgrades, rich only to print help.
Checked from what a real run left in sys.modules, not from timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cnb_images import build_app_image, build_run_image, unique

# Run packcache's CLI as `python -m packcache` does, then write the names of every module
# imported by the time the process ends.
RUN_AND_LIST = (
    "import atexit, json, runpy, sys; out = sys.argv[1]; sys.argv = ['packcache', *sys.argv[2:]];"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules))));"
    "runpy.run_module('packcache', run_name='__main__')"
)
SDK = {"docker", "requests", "urllib3"}  # the docker SDK and its HTTP stack
CONTAINERD = {"grpc"}
GRPC_ASYNCIO = {"grpc.aio"}  # grpc's asyncio API: the containerd transport's calls block
PROTOBUF = {"google.protobuf", "packcache.transports.containerd_api"}
MAINTENANCE = {"sqlalchemy", "alembic"}
HELP = {"rich", "typer.rich_utils"}
# What only a cold rebase (or a pull) reads with: launch caches, the daemon's storage, saves.
COLD_REBASE = {
    "packcache.operations.launch_layers",
    "packcache.transports.launch_cache",
    "packcache.operations.engine_configs",
    "packcache.archive.save_reader",
    "packcache.operations.pulling",
}


def imported(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> set[str]:
    listed = tmp_path / "modules.json"
    listed.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST, str(listed), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(listed.read_text()))


def loaded(modules: set[str], packages: set[str]) -> set[str]:
    """Which of `packages` (or their submodules) are among `modules`."""
    return {p for p in packages if any(m == p or m.startswith(p + ".") for m in modules)}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["rebase", "--help"]])
def test_help_and_version_touch_no_daemon_store_or_index(tmp_path: Path, args) -> None:
    modules = imported(tmp_path, *args)
    assert "typer" in modules  # the listing works: the CLI ran
    heavy = SDK | CONTAINERD | PROTOBUF | MAINTENANCE | {"zstandard", "packcache.store"}
    assert loaded(modules, heavy) == set()
    if args[0] == "--version":
        assert loaded(modules, HELP) == set()


@pytest.mark.parametrize("command", ["ls", "du", "info"])
def test_index_reads_need_no_sqlalchemy_grpc_or_rich(tmp_path: Path, command: str) -> None:
    cache = tmp_path / "cache"
    modules = imported(tmp_path, "--cache-dir", str(cache), command)
    assert "packcache.store.store" in modules  # the index was read
    assert loaded(modules, CONTAINERD | PROTOBUF | MAINTENANCE | HELP) == set()
    assert loaded(modules, SDK) == set()


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_only_a_template_format_imports_the_template_parser(tmp_path: Path, fmt: str) -> None:
    cache = tmp_path / "cache"
    plain = imported(tmp_path, "--cache-dir", str(cache), "info", "--format", fmt)
    assert "packcache.store.store" in plain  # the command ran
    assert "packcache.template" not in plain
    template = imported(tmp_path, "--cache-dir", str(cache), "info", "--format", "{{.CacheDir}}")
    assert "packcache.template" in template


def test_operations_import_no_cli_grpc_or_sqlalchemy() -> None:
    code = (
        "import json, sys\n"
        "import packcache.operations.rebase, packcache.operations.loading\n"
        "import packcache.operations.importing, packcache.operations.create_builder\n"
        "import packcache.operations.launch_layers, packcache.operations.pushing\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = set(json.loads(out.stdout))
    assert "packcache.transports.daemon" in modules  # the operations were imported
    heavy = SDK | CONTAINERD | PROTOBUF | MAINTENANCE | HELP | {"typer"}
    assert loaded(modules, heavy) == set()


@pytest.mark.parametrize("kind", ["26.1-graphdriver", "28-containerd"])
def test_a_rebase_imports_only_what_its_engine_needs(engine_pool, tmp_path: Path, kind) -> None:
    engine = engine_pool.get(kind)
    repo = unique("run").rsplit(":", 1)[0]
    run1 = build_run_image(engine, tmp_path, "v1", f"{repo}:v1")
    run2 = build_run_image(engine, tmp_path, "v2", f"{repo}:v2")
    app = build_app_image(engine, tmp_path, run1, unique("app"), run_name=repo)
    cache = tmp_path / "cache"
    args = ["--host", engine.host, "--cache-dir", str(cache), "rebase", app.tag]
    args += ["--run-image", run2.tag, "--pull-policy", "never", "--no-launch-cache"]
    env = {"PACK_HOME": str(tmp_path / "pack-home")}
    cold = imported(tmp_path, *args, env=env)
    # Engine 28 names its containerd: the result is written there, so grpc is needed.
    assert loaded(cold, CONTAINERD) == (CONTAINERD if engine.containerd_store else set())
    assert loaded(cold, SDK | PROTOBUF | MAINTENANCE | HELP) == set()
    engine.docker("rmi", app.tag)
    engine.docker("load", "-i", str(app.built.path))
    warm = imported(tmp_path, *args, env=env)
    assert loaded(warm, CONTAINERD) == (CONTAINERD if engine.containerd_store else set())
    assert loaded(warm, SDK | PROTOBUF | MAINTENANCE | HELP | GRPC_ASYNCIO) == set()
    # The cache holds the app: no launch cache, daemon storage or save is read, nothing pulled.
    assert "packcache.operations.rebase" in warm
    assert loaded(warm, COLD_REBASE) == set()
    # What it prints needs no humanize ("0 Bytes" sent is written as it is).
    assert loaded(warm, {"humanize"}) == set()
    # No temporary file without --no-cache or a report.toml; an archive only for docker load.
    assert "tempfile" not in warm
    assert ("tarfile" in warm) == (not engine.containerd_store)
    # Nothing compressed is read: no zstd or python-isal decompressor.
    assert loaded(warm, {"zstandard", "isal"}) == set()
