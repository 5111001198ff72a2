"""What long operations report to a Progress: real pulls, saves, loads and create-builder
steps, recorded instead of drawn. The drawing itself is tested in a terminal
(test_cli_terminal.py); here, that every byte and step gets there, and nothing off a terminal."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from packcache.operations.create_builder import STEPS
from packcache.operations.importing import import_images
from packcache.operations.loading import load_image
from packcache.operations.pulling import pull_images
from packcache.operations.pushing import push_image
from packcache.store.store import Store
from packcache.transports.daemon import Daemon
from packcache.transports.registry import RegistryOptions

if TYPE_CHECKING:
    from tests.registries.harness import RegistrySet
    from tests.registries.pytest_plugin import Pushed

pytestmark = pytest.mark.engine


class RecordedTask:
    def __init__(self, name: str, total: int | None, unit: str) -> None:
        self.name, self.total, self.unit = name, total, unit
        self.done_bytes = 0
        self.names = [name]
        self.ended = 0

    def advance(self, n: int = 1) -> None:
        self.done_bytes += n

    def describe(self, name: str) -> None:
        self.names.append(name)

    def done(self) -> None:
        self.ended += 1

    def __enter__(self) -> RecordedTask:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done()


class Recorder:
    def __init__(self) -> None:
        self.tasks: list[RecordedTask] = []
        self._lock = threading.Lock()

    def task(self, name: str, total: int | None = None, *, unit: str = "bytes") -> RecordedTask:
        task = RecordedTask(name, total, unit)
        with self._lock:
            self.tasks.append(task)
        return task


def test_a_pull_shows_each_layer_with_its_size(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.plain
    store = Store.open(tmp_path / "cache")
    shown = Recorder()
    options = RegistryOptions(insecure=frozenset({registry.host}))
    with store.lease("test") as lease:
        [report] = pull_images(
            store, [f"{registry.host}/t/app:1"], lease=lease, options=options, progress=shown
        )
    assert sorted(task.name for task in shown.tasks) == sorted(
        digest[7:19] for digest in report.downloaded
    )
    for task in shown.tasks:
        assert task.total == task.done_bytes > 0 and task.ended == 1
    assert sum(task.done_bytes for task in shown.tasks) == report.bytes_downloaded


def test_a_push_shows_each_uploaded_blob_with_its_size(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.plain
    store = Store.open(tmp_path / "cache")
    options = RegistryOptions(insecure=frozenset({registry.host}))
    with store.lease("test") as lease:
        pull_images(store, [f"{registry.host}/t/app:1"], lease=lease, options=options)
        shown = Recorder()
        # A repository on another registry name: nothing to mount, every blob is uploaded.
        target = f"localhost:{registry.host.rsplit(':', 1)[1]}/progress/app:1"
        report = push_image(
            store, f"{registry.host}/t/app:1", target, lease=lease,
            options=RegistryOptions(insecure=frozenset({registry.host, target.split("/")[0]})),
            progress=shown,
        )  # fmt: skip
    assert report.uploaded and not report.mounted
    assert sorted(task.name for task in shown.tasks) == sorted(
        digest[7:19] for digest in report.uploaded
    )
    for task in shown.tasks:
        assert task.total == task.done_bytes > 0 and task.ended >= 1
    assert sum(task.done_bytes for task in shown.tasks) == report.bytes_uploaded


def test_a_save_and_a_load_show_their_bytes(engine_pool, tmp_path: Path) -> None:
    from tests.test_engine_import import load_image as put_image
    from tests.test_engine_import import unique

    engine = engine_pool.get("26.1-graphdriver")
    tag = unique("progress")
    put_image(engine, tmp_path, tag)
    store = Store.open(tmp_path / "cache")
    shown = Recorder()
    daemon = Daemon(engine.host, progress=shown)
    with store.lease("test") as lease:
        import_images(store, daemon, [tag], lease=lease)
    [save] = shown.tasks
    assert save.name == f"Saving {tag} from the daemon" and save.ended == 1
    assert save.done_bytes > 300_000  # the whole stream, its 300 kB layer within it
    engine.docker("rmi", tag)
    with store.lease("test") as lease:
        report = load_image(store, daemon, tag, lease=lease)
    [_, load] = shown.tasks
    assert load.name == "Loading into the daemon" and load.ended == 1
    assert load.done_bytes == report.bytes_sent


def test_a_load_through_containerd_shows_each_layer_written(engine_pool, tmp_path: Path) -> None:
    from tests.test_engine_import import load_image as put_image
    from tests.test_engine_import import unique

    tag = unique("progress-ctrd")
    unique_layer = {"app/random.bin": os.urandom(200_000)}  # a blob no engine holds yet
    put_image(engine_pool.get("26.1-graphdriver"), tmp_path, tag, extra=[unique_layer])
    store = Store.open(tmp_path / "cache")
    with store.lease("test") as lease:
        import_images(store, Daemon(engine_pool.get("26.1-graphdriver").host), [tag], lease=lease)
    shown = Recorder()
    daemon = Daemon(engine_pool.get("28-containerd").host, progress=shown)  # info names it
    with store.lease("test") as lease:
        report = load_image(store, daemon, tag, lease=lease)
    assert report.load_method == "containerd"
    writes = [task for task in shown.tasks if task.name.endswith(" into containerd")]
    assert writes, [task.name for task in shown.tasks]
    for task in writes:
        assert task.total == task.done_bytes > 0 and task.ended == 1
    # What was sent is the layers shown plus the config and the manifest.
    assert 0 < report.bytes_sent - sum(task.done_bytes for task in writes) < 10_000


def test_create_builder_names_each_step(cli, engine_pool, tmp_path, monkeypatch) -> None:
    from packcache.builder.config import read_config
    from packcache.operations.create_builder import create_builder
    from tests.test_builder_engine import make_inputs

    engine = engine_pool.get("26.1-containerd")
    inputs = make_inputs(engine, tmp_path)
    store = Store.open(tmp_path / "cache")
    shown = Recorder()
    daemon = Daemon(engine.host, progress=shown)
    with store.lease("test") as lease:
        create_builder(
            store, daemon, "progress-builder:1", read_config(inputs.toml), lease=lease,
            progress=shown,
        )  # fmt: skip
    steps = next(task for task in shown.tasks if task.unit == "steps")
    assert steps.name == "progress-builder:1" and steps.total == len(STEPS)
    assert steps.names[1:] == list(STEPS) and steps.done_bytes == len(STEPS) - 1
    assert steps.ended == 1
    kinds = [task.name.split()[0] for task in shown.tasks if task.unit == "bytes"]
    assert "Saving" in kinds and kinds[-1] == "Loading"


def test_off_a_terminal_nothing_is_drawn(cli, engine_pool, tmp_path) -> None:
    from tests.test_engine_import import load_image as put_image
    from tests.test_engine_import import unique

    engine = engine_pool.get("26.1-graphdriver")
    tag = unique("quiet")
    put_image(engine, tmp_path, tag)
    for args in ([], ["--quiet"], ["--format", "json"]):
        done = cli("--host", engine.host, "import", tag, *args, cache=tmp_path / str(len(args)))
        assert done.exit_code == 0 and done.stderr == ""
    engine.docker("rmi", tag)
    done = cli("--host", engine.host, "load", tag, cache=tmp_path / "0")
    assert done.exit_code == 0 and done.stderr == "" and done.stdout.startswith("Loaded")
