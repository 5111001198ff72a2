"""Loads through the daemon's containerd on the containerd-store engines (26.1 with
containerd 1.7, 28 with containerd 2.x): rebase, load and create-builder results written into
the content store, never unpacked, are images like any the daemon loaded itself: listed,
inspected, run, saved whole, pushed and pulled back, removed with their content released.
Where containerd cannot be used, the `docker load` path is taken and said so, and nothing is
left in the content store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from packcache.operations.containerd_load import DANGLING_PREFIX
from packcache.refs import normalize
from packcache.transports.containerd import Containerd
from tests.cnb_images import build_app_image, build_run_image, unique
from tests.engines import images
from tests.engines.harness import Engine
from tests.engines.pytest_plugin import EnginePool
from tests.test_containerd_transport import CONTAINERD_KINDS, collect_garbage, endpoint_of
from tests.test_rebase import check_result

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=CONTAINERD_KINDS)
def engine(request: pytest.FixtureRequest, engine_pool: EnginePool) -> Engine:
    return engine_pool.get(request.param)


def settings(engine: Engine) -> dict[str, str]:
    """The containerd settings packcache needs where the daemon's API does not say (26.1)."""
    return {
        "PACKCACHE_CONTAINERD_ADDRESS": str(engine.root / "c.sock"),
        "PACKCACHE_CONTAINERD_NAMESPACE": f"pc-{engine.root.name}",
    }


@pytest.fixture
def via_containerd(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    for key, value in settings(engine).items():
        monkeypatch.setenv(key, value)
    return engine


@pytest.fixture
def stack(via_containerd: Engine, tmp_path: Path):
    engine = via_containerd
    repo = unique("run").rsplit(":", 1)[0]
    run1 = build_run_image(engine, tmp_path, "v1", f"{repo}:v1")
    run2 = build_run_image(engine, tmp_path, "v2", f"{repo}:v2")
    app = build_app_image(engine, tmp_path, run1, unique("app"), run_name=repo)
    return run1, run2, app


def packcache(
    engine: Engine, cache: Path, *args: str, env: dict[str, str] | None = None, user: bool = False
) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process (its -v lines on stderr, as a user sees them)."""
    command = [sys.executable, "-m", "packcache", "--cache-dir", str(cache), "--host", engine.host]
    if user:  # nobody, able to read the code under /root but to write nothing of root's
        drop = "--reuid=65534 --regid=65534 --clear-groups --inh-caps=+dac_read_search"
        command = ["setpriv", *drop.split(), "--ambient-caps=+dac_read_search", *command]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PACKCACHE_CONTAINERD")}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, cwd=REPO, env={**clean, **(env or {})}
    )


def docker_json(engine: Engine, *args: str) -> dict:
    return json.loads(engine.docker(*args).stdout)[0]


def our_leases_and_ingests(engine: Engine) -> tuple[list[str], list[str]]:
    with Containerd(endpoint_of(engine)) as ctd:
        leases = [lease for lease in ctd.lease_ids() if lease.startswith("packcache-")]
        return leases, [ref for ref in ctd.ingest_refs() if ref.startswith("packcache-")]


def saved_blobs_complete(engine: Engine, ref: str, tmp_path: Path) -> str:
    """`docker save` of `ref`: every blob its manifest names is in the archive, byte for byte.
    Returns the config digest."""
    path = tmp_path / "complete.tar"
    engine.docker("save", "-o", str(path), ref)
    with tarfile.open(path) as tar:
        blobs = {m.name: m for m in tar if m.name.startswith("blobs/sha256/")}

        def read(digest: str) -> bytes:
            data = tar.extractfile(blobs[f"blobs/sha256/{digest[7:]}"]).read()  # type: ignore[union-attr]
            assert images.sha256_digest(data) == digest
            return data

        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = json.loads(read(index["manifests"][0]["digest"]))
        for layer in manifest["layers"]:
            read(layer["digest"])
        read(manifest["config"]["digest"])
        return manifest["config"]["digest"]


def run_cat(engine: Engine, ref: str, path: str) -> bytes:
    command = ["run", "--pull", "never", "--rm", "--network", "none", "--entrypoint", "cat"]
    return engine.docker(*command, ref, path).stdout


def rebase_json(cli, engine: Engine, *args: str) -> dict:
    result = cli("--host", engine.host, "rebase", *args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    return result.json()


def test_rebase_result_is_a_whole_image(
    cli, via_containerd: Engine, stack, tmp_path: Path, engine_pool: EnginePool, registries
) -> None:
    engine, (_, run2, app) = via_containerd, stack
    report = rebase_json(cli, engine, app.tag, "--run-image", run2.tag)
    assert report["load_method"] == "containerd"
    new_id, name = report["new_image_id"], normalize(app.tag)
    # The record the daemon reads, pointing at the manifest written; never unpacked until run.
    with Containerd(endpoint_of(engine)) as ctd:
        record = ctd.get_image(name)
        assert record is not None and record.target.digest == new_id
        assert ctd.image_names(new_id) == [name]
        # The app image replaced lost its only name: kept as the daemon keeps it, dangling.
        old_id = report["old_image_id"]
        assert ctd.image_names(old_id) == [DANGLING_PREFIX + old_id]
    listed = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
    assert f"{app.tag} {new_id[7:19]}" in listed.decode().splitlines()
    dangling = engine.docker("images", "--filter", "dangling=true", "--format", "{{.ID}}").stdout
    assert old_id[7:19] in dangling.decode().split()
    assert docker_json(engine, "image", "inspect", app.tag)["Id"] == new_id
    check_result(engine, tmp_path, app.tag, app, run2)  # config, layers, first run, saved layers
    config_digest = saved_blobs_complete(engine, app.tag, tmp_path)

    # Pushed to the test registry, pulled back on another engine, run there.
    remote = f"{registries.plain.host}/{app.tag.split('/')[-1]}"
    engine.docker("tag", app.tag, remote)
    engine.docker("push", remote)
    engine.docker("rmi", remote)
    other = engine_pool.get("26.1-graphdriver")
    other.docker("pull", remote)
    assert run_cat(other, remote, "/workspace/app.txt") == app.marker
    assert run_cat(other, remote, "/etc/run-version") == b"v2\n"
    other.docker("rmi", remote)

    # Removed: what only it held (manifest, config) goes with containerd's next collection.
    engine.docker("rmi", app.tag)
    with Containerd(endpoint_of(engine)) as ctd:
        assert ctd.get_image(name) is None
        collect_garbage(ctd)
        assert ctd.blob_size(new_id) is None
        assert ctd.blob_size(config_digest) is None
    assert our_leases_and_ingests(engine) == ([], [])
