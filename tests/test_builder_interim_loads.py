"""create-builder from a registry into a graphdriver: the layers still downloading once the
builder's config is known are registered by interim loads (untagged images labelled
io.packcache.interim, each removed once the load after it holds its layers), so the daemon
registers them while the rest download. Seen here by holding one buildpackage blob in a proxy
until the daemon shows an interim image. A download that then fails leaves none behind; those
a killed command left are removed by a later run once an hour old. And a pull aborted while
downloads still wait their turn returns."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from packcache.operations.early_load import INTERIM_LABEL
from packcache.operations.streamed_pull import StreamedPull
from packcache.store.store import Store
from packcache.transports.registry import ImageName, RegistryClient, RegistryOptions
from packcache.transports.registry_pull import read_image
from tests import builder_fixtures as fx
from tests.engines import images
from tests.engines.harness import Engine
from tests.engines.pytest_plugin import EnginePool
from tests.layers import random_tar
from tests.registries import uploading
from tests.registries.faults import CuttingProxy
from tests.registries.harness import RegistrySet
from tests.test_builder_fetch import buildpack_layers, image_ids
from tests.test_builder_registry import Remote, absent, create, ok, to_registry
from tests.test_containerd_load import layer_sizes

pytestmark = pytest.mark.engine

GRAPHDRIVERS = ["20.10-graphdriver", "26.1-graphdriver"]


@pytest.fixture(params=GRAPHDRIVERS, ids=GRAPHDRIVERS)
def graphdriver(request: pytest.FixtureRequest, engine_pool: EnginePool) -> Engine:
    return engine_pool.get(request.param)


def interim_images(engine: Engine) -> list[str]:
    listed = engine.docker(
        "images", "--all", "--quiet", "--no-trunc", "--filter", f"label={INTERIM_LABEL}"
    ).stdout.decode()
    return sorted(set(listed.split()))


def wait_for(found: Callable[[], list[str]], seconds: float = 60.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if seen := found():
            return seen
        time.sleep(0.05)
    return []


def unique_inputs(engine: Engine, registries: RegistrySet, tmp_path: Path) -> Remote:
    """The builder inputs in the registry on a build image of this test's own: no builder
    another test left in the daemon holds a chain of this one's (its layers would be sent as
    placeholders, never waited for)."""
    return to_registry(engine, registries, tmp_path, f"build image {tmp_path.name}\n".encode())


def create_holding_a_layer(
    cli, engine: Engine, proxy: CuttingProxy, remote: Remote, tmp_path: Path
) -> tuple[dict, list[str]]:
    """create-builder through `proxy`, which holds the blob it matches until the daemon shows
    an interim image (or a minute passed): its result and name, the interim images seen."""
    toml = tmp_path / "proxied.toml"
    toml.write_text(remote.toml.read_text().replace(remote.host, proxy.host))
    ended: dict = {}
    name = fx.unique("builder")
    command = threading.Thread(
        target=lambda: ended.update(
            result=create(cli, engine, name, toml, proxy.host, "--pull-policy", "always",
                          cache=tmp_path / "cache"),
            name=name,
        )
    )  # fmt: skip
    command.start()
    try:
        seen = wait_for(lambda: interim_images(engine))
    finally:
        assert proxy.hold is not None
        proxy.hold.set()
        command.join(300)
    assert not command.is_alive()
    ended["toml"] = toml
    return ended, seen


def holding_proxy(registries: RegistrySet, remote: Remote, **faults) -> CuttingProxy:
    """A proxy holding the last buildpackage's largest blob (see create_holding_a_layer)."""
    held = max(layer_sizes(remote.packages[-1]).items(), key=lambda item: item[1])[0]
    return CuttingProxy(registries.plain.port, blob=held, hold=threading.Event(), **faults)


def test_layers_still_downloading_are_registered_by_interim_loads(
    cli, graphdriver: Engine, registries: RegistrySet, tmp_path: Path
) -> None:
    engine = graphdriver
    remote = unique_inputs(engine, registries, tmp_path)
    before = image_ids(engine)
    proxy = holding_proxy(registries, remote, cut_after=0, cuts=0)
    try:
        ended, seen = create_holding_a_layer(cli, engine, proxy, remote, tmp_path)
        report = ok(ended["result"])
        assert proxy.held >= 1 and seen, f"no interim image while a layer was held: {ended}"
        assert report["image_id"] not in seen
        # Each interim image is gone; the builder alone is new.
        assert interim_images(engine) == []
        assert image_ids(engine) == sorted({*before, report["image_id"]})
        # The builder is the one a cache holding every layer makes in one load.
        direct = fx.unique("direct")
        again = ok(
            create(cli, engine, direct, ended["toml"], proxy.host, "--pull-policy", "always",
                   cache=tmp_path / "cache")
        )  # fmt: skip
    finally:
        proxy.close()
    assert again["layers_streamed"] == 0
    assert again["config_digest"] == report["config_digest"]
    assert buildpack_layers(engine, direct) == buildpack_layers(engine, ended["name"])
    run = engine.docker("run", "--rm", "--pull", "never", "--network", "none", "--entrypoint",
                        "ls", ended["name"], "/cnb/buildpacks")  # fmt: skip
    assert run.stdout.strip()
    engine.docker("rmi", ended["name"], direct)


def test_a_download_failing_after_an_interim_load_leaves_no_image(
    cli, graphdriver: Engine, registries: RegistrySet, tmp_path: Path
) -> None:
    engine = graphdriver
    remote = unique_inputs(engine, registries, tmp_path)
    before = image_ids(engine)
    # The held blob is then answered 500, every time it is asked for.
    proxy = holding_proxy(registries, remote, cut_after=0, cuts=1000, answer_status=500)
    try:
        ended, seen = create_holding_a_layer(cli, engine, proxy, remote, tmp_path)
    finally:
        proxy.close()
    result = ended["result"]
    assert seen, f"no interim image while a layer was held: {ended}"
    assert result.exit_code == 1, result
    assert result.stderr.startswith("packcache: error:") and result.stderr.count("\n") == 1, result
    assert proxy.cuts_done >= 2, result.stderr  # tried again before giving up
    assert absent(engine, ended["name"])
    assert interim_images(engine) == [], result
    assert image_ids(engine) == before, result
    cache = tmp_path / "cache"
    assert cli("verify", cache=cache).exit_code == 0
    assert [p.name for p in (cache / "ingest").iterdir()] == []


def load_interim(engine: Engine, tmp_path: Path, name: str, created: datetime) -> str:
    """An image as a killed create-builder leaves one: untagged, labelled, made `created`."""
    stamp = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    built = images.build_legacy_archive(
        tmp_path / f"{name}.tar", [{f"{name}.txt": name.encode()}],
        {"created": stamp, "config": {"Labels": {INTERIM_LABEL: name}}}, "",
    )  # fmt: skip
    engine.docker("load", "-i", str(built.path))
    assert not json.loads(engine.docker("image", "inspect", built.config_digest).stdout)[0][
        "RepoTags"
    ]
    return built.config_digest


def test_interim_images_an_hour_old_are_removed_by_a_later_run(
    cli, graphdriver: Engine, registries: RegistrySet, tmp_path: Path
) -> None:
    engine = graphdriver
    now = datetime.now(UTC)
    stale = load_interim(engine, tmp_path, "stale", now - timedelta(hours=2))
    recent = load_interim(engine, tmp_path, "recent", now - timedelta(minutes=5))
    assert interim_images(engine) == sorted([stale, recent])
    remote = unique_inputs(engine, registries, tmp_path)
    name = fx.unique("builder")
    ok(create(cli, engine, name, remote.toml, remote.host, "--pull-policy", "always"))
    assert interim_images(engine) == [recent]  # one a running command may still need stays
    engine.docker("rmi", name, recent)


def test_a_pull_aborted_while_downloads_wait_their_turn_returns(
    registries: RegistrySet, tmp_path: Path
) -> None:
    """One download at a time, the first held: the others have not begun when the pull is
    aborted (a pool's cancelled task is never done for concurrent.futures.wait)."""
    registry = registries.plain
    tars = [random_tar(50_000, seed=f"queued-{i}-{tmp_path.name}".encode()) for i in range(4)]
    image = uploading.upload_oci_image(registry.url, "t/queued", "1", tars, ["gzip"] * 4)
    release = threading.Event()
    first = image.layer_digests[0]  # the others wait behind it: one download at a time
    proxy = CuttingProxy(registry.port, cut_after=0, cuts=0, blob=first, hold=release)
    store = Store.open(tmp_path / "cache")
    try:
        host = proxy.host
        with (
            RegistryClient(host, RegistryOptions(insecure=frozenset({host}))) as client,
            store.lease("test") as lease,
        ):
            remote = read_image(client, ImageName.parse(f"{host}/t/queued:1"))
            pull = StreamedPull(store, [remote], lease, parallel=1)
            assert wait_for(lambda: ["held"] if proxy.held else [], 30)
            aborting = threading.Thread(target=pull.abort)
            aborting.start()
            time.sleep(0.5)
            release.set()  # the download begun ends at its next read
            aborting.join(60)
            assert not aborting.is_alive(), "abort waited for downloads that never began"
    finally:
        release.set()
        proxy.close()
    assert store.cached_diff_ids(image.diff_ids) == set()
    assert [p.name for p in (tmp_path / "cache" / "ingest").iterdir()] == []
