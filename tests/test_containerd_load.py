"""Loads through the daemon's containerd on the containerd-store engines (26.1 with
containerd 1.7, 28 with containerd 2.x): rebase, load and create-builder results written into
the content store, never unpacked, are images like any the daemon loaded itself: listed,
inspected, run, saved whole, pushed and pulled back, removed with their content released.
Where containerd cannot be used, the `docker load` path is taken and said so, and nothing is
left in the content store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from packcache.operations import containerd_load
from packcache.operations.containerd_load import (
    DANGLING_PREFIX,
    UNCOMPRESSED_LABEL,
    ContentMirror,
)
from packcache.progress import NO_PROGRESS
from packcache.refs import normalize
from packcache.transports.containerd import Containerd
from packcache.transports.registry import MANIFEST_TYPES, ImageName
from tests import builder_fixtures as fx
from tests.cnb_images import build_app_image, build_run_image, unique
from tests.engines import images
from tests.engines.harness import Engine
from tests.engines.pytest_plugin import EnginePool
from tests.test_builder_engine import inspect, listing, make_inputs
from tests.test_builder_registry import absent, create, ok, to_registry
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


def test_a_rebase_through_containerd_is_announced_in_docker_events(
    cli, via_containerd: Engine, stack
) -> None:
    engine, (_, run2, app) = via_containerd, stack
    second = f"{app.tag.rsplit(':', 1)[0]}:second"
    engine.docker("tag", app.tag, second)
    since = str(int(time.time()) - 1)  # whole seconds: the daemon's clock is this host's
    report = rebase_json(cli, engine, app.tag, "--run-image", run2.tag)
    assert report["load_method"] == "containerd"
    new_id = report["new_image_id"]
    inspected = docker_json(engine, "image", "inspect", app.tag)
    until = str(int(time.time()) + 1)
    listed = engine.docker(
        "events", "--since", since, "--until", until, "--filter", "type=image",
        "--format", "{{json .}}",
    ).stdout.decode()  # fmt: skip
    events = [json.loads(line) for line in listed.splitlines() if line.strip()]
    tagged = [(e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"]["name"]) for e in events]
    assert ("tag", new_id, app.tag) in tagged
    # The announcement changed nothing of the image written: its ID, created time, labels
    # and names are what the rebase made, and the old image keeps its other name.
    assert inspected["Id"] == new_id and inspected["RepoTags"] == [app.tag]
    assert inspected["Created"] == "1980-01-01T00:00:01Z"
    assert "io.buildpacks.lifecycle.metadata" in inspected["Config"]["Labels"]
    assert docker_json(engine, "image", "inspect", second)["Id"] == report["old_image_id"]


def test_load_writes_what_the_content_store_lacks(cli, via_containerd: Engine, tmp_path) -> None:
    engine = via_containerd
    tag = unique("loaded")
    payload = os.urandom(3 << 20)  # several write messages
    built = images.build_busybox_archive(
        tmp_path / "l.tar", tag, [{"payload.bin": payload}], gzip_layers=[False, True]
    )
    engine.docker("load", "-i", str(built.path))
    assert cli("--host", engine.host, "import", tag).exit_code == 0
    engine.docker("rmi", tag)
    with Containerd(endpoint_of(engine)) as ctd:
        collect_garbage(ctd)  # the payload layer's blob is gone from the content store
    result = cli("--host", engine.host, "load", tag, "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["load_method"] == "containerd"
    assert report["layers_sent"] >= 1 and report["bytes_sent"] >= 3 << 20
    assert docker_json(engine, "image", "inspect", tag)["RootFS"]["Layers"] == built.diff_ids
    saved_blobs_complete(engine, tag, tmp_path)
    command = ["run", "--pull", "never", "--rm", "--network", "none", tag, "sha256sum"]
    out = engine.docker(*command, "/payload.bin").stdout.decode()
    assert out.split()[0] == images.sha256_digest(payload)[7:]
    # Again with the image there: nothing to write, the same image.
    again = cli("--host", engine.host, "load", tag, "--format", "json").json()
    assert (again["layers_sent"], again["bytes_sent"]) == (0, 0)
    assert again["image_id"] == report["image_id"]
    engine.docker("rmi", tag)
    assert our_leases_and_ingests(engine) == ([], [])


def test_a_blob_collected_during_the_load_is_written_again_from_the_cache(
    cli, via_containerd: Engine, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob the plan found in the content store but containerd's GC took before the manifest
    held it (as it takes what a failed command left): written again from the cache, not a
    failure asking to run the command again."""
    engine = via_containerd
    tag, other = unique("found"), unique("again")
    payload = os.urandom(1 << 20)
    built = images.build_busybox_archive(tmp_path / "l.tar", tag, [{"payload.bin": payload}])
    engine.docker("load", "-i", str(built.path))
    assert cli("--host", engine.host, "import", tag).exit_code == 0
    lost = built.diff_ids[-1]  # the payload layer, held by the content store as its tar
    real_write = containerd_load.write_layers

    def write_then_lose(containerd, plan, lease, progress=NO_PROGRESS):
        written = real_write(containerd, plan, lease, progress)
        for item in plan:
            if item.diff_id == lost and item.digest not in written:
                assert containerd.delete_blob(item.digest)  # as the GC would, meanwhile
        return written

    monkeypatch.setattr(containerd_load, "write_layers", write_then_lose)
    result = cli("--host", engine.host, "load", tag, "--tag", other, "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["load_method"] == "containerd" and report["bytes_sent"] > 1 << 20
    with Containerd(endpoint_of(engine)) as ctd:
        assert ctd.blob_size(lost) is not None
    saved_blobs_complete(engine, other, tmp_path)
    command = ["run", "--pull", "never", "--rm", "--network", "none", other, "sha256sum"]
    out = engine.docker(*command, "/payload.bin").stdout.decode()
    assert out.split()[0] == images.sha256_digest(payload)[7:]
    engine.docker("rmi", tag, other)
    assert our_leases_and_ingests(engine) == ([], [])


def test_a_manifest_held_with_its_labels_spares_the_check_of_each_layer(
    cli, via_containerd: Engine, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaded again, the image's manifest is in the content store with labels naming every
    layer: its layers need no check after the load (GC takes them only with it). Once the
    manifest is gone, the load writes it and checks them again."""
    engine = via_containerd
    tag, other = unique("held"), unique("held-again")
    built = images.build_busybox_archive(
        tmp_path / "l.tar", tag, [{"a": os.urandom(1 << 16)}, {"b": b"b"}]
    )
    engine.docker("load", "-i", str(built.path))
    assert cli("--host", engine.host, "import", tag).exit_code == 0
    checked: list[str] = []  # the layer digests each check asked about
    real_restore = containerd_load.restore_missing

    def counted(containerd, plan, *args, **kwargs):
        checked.append(",".join(item.digest for item in plan))
        return real_restore(containerd, plan, *args, **kwargs)

    monkeypatch.setattr(containerd_load, "restore_missing", counted)
    first = cli("--host", engine.host, "load", tag, "--tag", other, "--format", "json").json()
    assert first["load_method"] == "containerd" and len(checked) == 1
    again = cli("--host", engine.host, "load", tag, "--tag", other, "--format", "json").json()
    assert again["image_id"] == first["image_id"] and len(checked) == 1
    engine.docker("rmi", other)
    with Containerd(endpoint_of(engine)) as ctd:
        collect_garbage(ctd)  # the manifest goes with the image
    third = cli("--host", engine.host, "load", tag, "--tag", other, "--format", "json").json()
    assert third["image_id"] == first["image_id"]
    assert len(checked) == 2 and checked[1] == checked[0]
    saved_blobs_complete(engine, other, tmp_path)
    engine.docker("rmi", tag, other)
    assert our_leases_and_ingests(engine) == ([], [])


def test_create_builder_through_containerd(cli, via_containerd: Engine, tmp_path) -> None:
    engine = via_containerd
    inputs = make_inputs(engine, tmp_path)
    name = fx.unique("builder")
    args = ["--host", engine.host, "create-builder", name, "--config", str(inputs.toml)]
    cold = cli(*args, "--format", "json")
    assert cold.exit_code == 0, cold.stderr
    report = cold.json()
    assert report["load"]["load_method"] == "containerd"
    assert docker_json(engine, "image", "inspect", name)["Id"] == report["image_id"]
    saved_blobs_complete(engine, name, tmp_path)
    command = ["run", "--pull", "never", "--rm", "--network", "none", "--entrypoint", "ls", name]
    assert b"lifecycle" in engine.docker(*command, "/cnb").stdout
    # Re-created with the builder there: every blob held, nothing written.
    again = cli(*args, "--format", "json").json()
    assert again["image_id"] == report["image_id"]
    assert (again["load"]["layers_sent"], again["load"]["bytes_sent"]) == (0, 0)
    engine.docker("rmi", name)
    assert our_leases_and_ingests(engine) == ([], [])


def test_a_builder_from_a_registry_is_written_into_containerd_as_it_downloads(
    cli, via_containerd: Engine, registries, tmp_path: Path, engine_pool: EnginePool
) -> None:
    """Build image and buildpackages only in a registry: their layers reach the content store
    while they download (the load writes only the builder's own layers), and the builder is
    the image the cache alone loads: listed, inspected, run, saved whole, pushed, removed."""
    engine = via_containerd
    remote = to_registry(engine, registries, tmp_path)
    name = fx.unique("builder")
    cold = ok(create(cli, engine, name, remote.toml, remote.host, "--pull-policy", "always"))
    assert cold["load"]["load_method"] == "containerd"
    pulled = {ref: layer_sizes(ref) for ref in [remote.build, *remote.packages]}
    assert all(absent(engine, ref) for ref in pulled)
    layers = json.loads(inspect(engine, name)["Config"]["Labels"]["io.buildpacks.buildpack.layers"])
    with Containerd(endpoint_of(engine)) as ctd:
        # Each downloaded blob is there, a compressed one labelled with its diffID as
        # containerd's unpacker labels it.
        for package in remote.inputs.packages:
            for buildpack in package.buildpacks:
                diff_id = layers[buildpack.id][buildpack.version]["layerDiffID"]
                digests = [d for d in ctd_layers(ctd, name) if d[1] == diff_id]
                assert digests, f"{buildpack.id}: no blob of {diff_id} in the builder's manifest"
                digest = digests[0][0]
                assert ctd.blob_size(digest) is not None
                if digest != diff_id:
                    assert ctd.blob_labels(digest).get(UNCOMPRESSED_LABEL) == diff_id
    listed = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
    assert f"{name} {cold['image_id'][7:19]}" in listed.decode().splitlines()
    assert docker_json(engine, "image", "inspect", name)["Id"] == cold["image_id"]
    files = listing(engine, name, "/cnb/buildpacks")
    assert any(path.endswith("/bin/build") for path in files)
    saved_blobs_complete(engine, name, tmp_path)

    # The same image as the cache alone loads, which writes every layer the store lacks: the
    # downloaded blobs other images do not hold, which cold's load found written already.
    engine.docker("rmi", name)
    with Containerd(endpoint_of(engine)) as ctd:
        collect_garbage(ctd)
        mirrored = sum(
            size
            for sizes in pulled.values()
            for digest, size in sizes.items()
            if ctd.blob_size(digest) is None
        )
    assert mirrored > 0
    warm = ok(
        create(cli, engine, name, remote.toml, remote.host, "--pull-policy", "if-not-present")
    )
    assert warm["pulled"] == [] or all(p["layers_downloaded"] == 0 for p in warm["pulled"])
    assert warm["image_id"] == cold["image_id"]
    assert warm["load"]["bytes_sent"] == cold["load"]["bytes_sent"] + mirrored

    # Pushed, pulled back on a graphdriver engine, run there; removed with its content.
    target = f"{registries.plain.host}/t/{fx.unique('pushed')}"
    engine.docker("tag", name, target)
    engine.docker("push", target)
    engine.docker("rmi", target)
    other = engine_pool.get("26.1-graphdriver")
    other.docker("pull", target)
    assert any(path.endswith("/bin/build") for path in listing(other, target, "/cnb/buildpacks"))
    other.docker("rmi", target)
    engine.docker("rmi", name)
    with Containerd(endpoint_of(engine)) as ctd:
        collect_garbage(ctd)
        assert ctd.blob_size(cold["image_id"]) is None
    assert our_leases_and_ingests(engine) == ([], [])


def layer_sizes(ref: str) -> dict[str, int]:
    """The layer blobs (digest -> size) the registry's manifest of `ref` names."""
    name = ImageName.parse(ref)
    got = requests.get(
        f"http://{name.host}/v2/{name.repository}/manifests/{name.reference}",
        headers={"Accept": ", ".join(MANIFEST_TYPES)},
        timeout=30,
    )
    got.raise_for_status()
    return {layer["digest"]: layer["size"] for layer in got.json()["layers"]}


def ctd_layers(ctd: Containerd, ref: str) -> list[tuple[str, str]]:
    """(blob digest, diffID) of each layer of the image the content store names `ref`."""
    record = ctd.get_image(normalize(ref))
    assert record is not None
    manifest = json.loads(ctd.read_small_blob(record.target.digest, 1 << 20) or b"{}")
    config = json.loads(ctd.read_small_blob(manifest["config"]["digest"], 1 << 20) or b"{}")
    return [
        (layer["digest"], diff_id)
        for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)
    ]


def test_a_mirrored_blob_refused_by_its_reader_leaves_nothing(via_containerd: Engine) -> None:
    """A blob streamed into containerd while it downloads is committed only once verified:
    one aborted (the reader found it wrong) leaves no blob and no ingest, one finished is
    there, labelled; the lease takes the rest with it."""
    payload = os.urandom(3 << 20)
    digest = images.sha256_digest(payload)
    with Containerd(endpoint_of(via_containerd)) as ctd, ctd.lease() as lease:
        mirror = ContentMirror(ctd, lease)
        copy = mirror.open(digest, len(payload), digest)
        assert copy is not None
        copy.write(payload[: 1 << 20])
        copy.abort()
        assert ctd.blob_size(digest) is None
        assert not [ref for ref in ctd.ingest_refs() if digest in ref]
        copy = mirror.open(digest, len(payload), digest)
        assert copy is not None
        for start in range(0, len(payload), 1 << 19):
            copy.write(payload[start : start + (1 << 19)])
        assert copy.finish() and digest in mirror.written
        assert ctd.blob_size(digest) == len(payload)
        assert mirror.open(digest, len(payload), digest) is None  # held: nothing to write
        mirror.close()
    with Containerd(endpoint_of(via_containerd)) as ctd:
        collect_garbage(ctd)
        assert ctd.blob_size(digest) is None
    assert our_leases_and_ingests(via_containerd) == ([], [])


def test_the_replaced_image_stays_while_a_container_runs(
    cli, via_containerd: Engine, stack, tmp_path
) -> None:
    engine, (_, run2, app) = via_containerd, stack
    container = engine.docker(
        "run", "-d", "--pull", "never", "--network", "none", "--entrypoint", "sleep",
        app.tag, "600",
    ).stdout.decode().strip()  # fmt: skip
    try:
        report = rebase_json(cli, engine, app.tag, "--run-image", run2.tag)
        old_id = report["old_image_id"]
        assert docker_json(engine, "image", "inspect", old_id)["Id"] == old_id
        state = docker_json(engine, "container", "inspect", container)["State"]
        assert state["Running"]
        exec_cat = ["exec", container, "cat", "/etc/run-version"]
        assert engine.docker(*exec_cat).stdout == b"v1\n"
        assert run_cat(engine, app.tag, "/etc/run-version") == b"v2\n"
    finally:
        engine.docker("rm", "-f", container)
    engine.docker("rmi", old_id)
    assert engine.docker("image", "inspect", old_id, check=False).returncode != 0
    assert run_cat(engine, app.tag, "/workspace/app.txt") == app.marker


def test_only_the_named_tag_moves(cli, via_containerd: Engine, stack) -> None:
    engine, (_, run2, app) = via_containerd, stack
    second = f"{app.tag.rsplit(':', 1)[0]}:second"
    engine.docker("tag", app.tag, second)
    report = rebase_json(cli, engine, app.tag, "--run-image", run2.tag)
    old_id, new_id = report["old_image_id"], report["new_image_id"]
    assert docker_json(engine, "image", "inspect", second)["Id"] == old_id
    assert docker_json(engine, "image", "inspect", app.tag)["Id"] == new_id
    with Containerd(endpoint_of(engine)) as ctd:
        assert ctd.image_names(old_id) == [normalize(second)]  # named still: not dangling
    # Rebased again onto the same run image: the same image, its record untouched.
    again = rebase_json(cli, engine, app.tag, "--run-image", run2.tag)
    assert again["new_image_id"] == new_id
    with Containerd(endpoint_of(engine)) as ctd:
        assert ctd.image_names(new_id) == [normalize(app.tag)]


def test_a_result_made_again_loses_its_dangling_name(cli, via_containerd: Engine, stack) -> None:
    engine, (run1, run2, app) = via_containerd, stack
    first = rebase_json(cli, engine, app.tag, "--run-image", run2.tag)["new_image_id"]
    # Onto run1 and back: the first result, replaced, is kept dangling, then made again.
    between = rebase_json(cli, engine, app.tag, "--run-image", run1.tag)["new_image_id"]
    with Containerd(endpoint_of(engine)) as ctd:
        assert ctd.image_names(first) == [DANGLING_PREFIX + first]
    assert rebase_json(cli, engine, app.tag, "--run-image", run2.tag)["new_image_id"] == first
    with Containerd(endpoint_of(engine)) as ctd:
        assert ctd.names_by_target([first, between]) == {
            first: [normalize(app.tag)],
            between: [DANGLING_PREFIX + between],
        }
    assert docker_json(engine, "image", "inspect", app.tag)["Id"] == first


def test_two_rebases_of_one_app_at_once(via_containerd: Engine, stack, tmp_path) -> None:
    engine, (_, run2, app) = via_containerd, stack
    command = [sys.executable, "-m", "packcache", "--cache-dir", str(tmp_path / "cache")]
    command += ["--host", engine.host, "rebase", app.tag, "--run-image", run2.tag]
    command += ["--pull-policy", "never"]  # the run image is local; never a public registry
    env = {**os.environ, **settings(engine)}
    procs = [
        subprocess.Popen(
            [*command, "--format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outputs]
    assert [err for _, err in outputs] == ["", ""]  # not a word from grpc either
    reports = [json.loads(out) for out, _ in outputs]
    assert {r["load_method"] for r in reports} == {"containerd"}
    new_id = reports[0]["new_image_id"]
    assert reports[1]["new_image_id"] == new_id
    with Containerd(endpoint_of(engine)) as ctd:
        assert ctd.image_names(new_id) == [normalize(app.tag)]  # no dangling twin
    check_result(engine, tmp_path, app.tag, app, run2)
    saved_blobs_complete(engine, app.tag, tmp_path)
    assert our_leases_and_ingests(engine) == ([], [])


def restart_dockerd(engine: Engine) -> None:
    """Stop the engine's dockerd and start it again on the same root and containerd."""
    assert engine._dockerd is not None
    engine._dockerd.send_signal(signal.SIGTERM)
    engine._dockerd.wait(60)
    root = engine.root
    env = {
        "PATH": engine._path_env(),
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "TMPDIR": str(root / "tmp"),
    }
    engine._start_dockerd(root / "d.sock", root / "c.sock", f"pc-{root.name}", env)
    engine._wait_ready(root / "d.sock", 60, time.monotonic())


@pytest.mark.parametrize("kind", CONTAINERD_KINDS)
def test_a_rebase_survives_a_daemon_restart(cli, kind: str, tmp_path, monkeypatch) -> None:
    # A private engine: the shared ones must not see their daemon go away.
    with Engine(kind) as engine:
        for key, value in settings(engine).items():
            monkeypatch.setenv(key, value)
        repo = unique("run").rsplit(":", 1)[0]
        run1 = build_run_image(engine, tmp_path, "v1", f"{repo}:v1")
        run2 = build_run_image(engine, tmp_path, "v2", f"{repo}:v2")
        app = build_app_image(engine, tmp_path, run1, unique("app"), run_name=repo)
        report = rebase_json(cli, engine, app.tag, "--run-image", run2.tag)
        assert report["load_method"] == "containerd"
        restart_dockerd(engine)
        assert docker_json(engine, "image", "inspect", app.tag)["Id"] == report["new_image_id"]
        check_result(engine, tmp_path, app.tag, app, run2)


@contextmanager
def docker_socket_open_to_all(engine: Engine) -> Iterator[None]:
    """Let any user reach this private engine's Docker socket (not its containerd's)."""
    sock = engine.root / "d.sock"
    mode = sock.stat().st_mode & 0o777
    sock.chmod(0o666)
    try:
        yield
    finally:
        sock.chmod(mode)


def small_image(engine: Engine, tmp_path: Path, *, gzip: bool = True) -> tuple[str, bytes]:
    tag = unique("small")
    payload = os.urandom(1 << 20)
    built = images.build_busybox_archive(
        tmp_path / f"{tag.replace('/', '-')}.tar", tag, [{"p.bin": payload}], gzip_layers=gzip
    )
    engine.docker("load", "-i", str(built.path))
    return tag, payload


def check_fallback(result: subprocess.CompletedProcess[str], reason: str) -> dict:
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "loading with docker load" in line]
    assert len(said) == 1 and reason in said[0], result.stderr
    report = json.loads(result.stdout)
    assert report["load_method"] == "docker load"
    return report


def test_an_unprivileged_user_falls_back_to_docker_load(via_containerd: Engine, tmp_path) -> None:
    engine = via_containerd
    tag, payload = small_image(engine, tmp_path)
    cache = Path(tempfile.mkdtemp(prefix="packcache-nobody-"))
    os.chown(cache, 65534, 65534)
    try:
        with docker_socket_open_to_all(engine):
            imported = packcache(engine, cache, "import", tag, env=settings(engine), user=True)
            assert imported.returncode == 0, imported.stderr
            copy = f"{tag.rsplit(':', 1)[0]}:copy"
            args = ["-v", "load", tag, "--tag", copy, "--format", "json"]
            result = packcache(engine, cache, *args, env=settings(engine), user=True)
    finally:
        shutil.rmtree(cache)
    check_fallback(result, "permission denied on containerd's socket")
    command = ["run", "--pull", "never", "--rm", "--network", "none", copy, "sha256sum"]
    assert (
        engine.docker(*command, "/p.bin").stdout.split()[0].decode()
        == (images.sha256_digest(payload)[7:])
    )
    assert our_leases_and_ingests(engine) == ([], [])


def dead_socket(folder: Path) -> str:
    """A socket file nobody listens on, as a stopped containerd leaves it."""
    path = folder / "dead.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()
    return str(path)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong namespace", "has no namespace 'not-the-daemons'"),
        ("containerd down", "cannot reach containerd"),
        ("no socket", "no containerd socket at"),
    ],
)
def test_settings_that_cannot_work_fall_back(
    engine_pool: EnginePool, tmp_path: Path, case: str, reason: str
) -> None:
    # 26.1's API does not say where its containerd is: the settings decide.
    engine = engine_pool.get(next(kind for kind in CONTAINERD_KINDS if kind.startswith("26.1")))
    tag, payload = small_image(engine, tmp_path)
    wanted = settings(engine)
    if case == "wrong namespace":
        wanted["PACKCACHE_CONTAINERD_NAMESPACE"] = "not-the-daemons"
    elif case == "containerd down":
        wanted["PACKCACHE_CONTAINERD_ADDRESS"] = dead_socket(tmp_path)
    else:
        wanted["PACKCACHE_CONTAINERD_ADDRESS"] = str(tmp_path / "missing.sock")
    cache = tmp_path / "cache"
    assert packcache(engine, cache, "import", tag).returncode == 0
    copy = f"{tag.rsplit(':', 1)[0]}:copy"
    args = ["-v", "load", tag, "--tag", copy, "--format", "json"]
    check_fallback(packcache(engine, cache, *args, env=wanted), reason)
    assert run_cat(engine, copy, "/p.bin") == payload
    assert our_leases_and_ingests(engine) == ([], [])


def test_a_rebase_whose_containerd_cannot_be_used_falls_back_once(
    engine_pool: EnginePool, tmp_path: Path
) -> None:
    # A rebase connects to containerd while it inspects the images: the fallback is the same.
    engine = engine_pool.get(next(kind for kind in CONTAINERD_KINDS if kind.startswith("26.1")))
    repo = unique("run").rsplit(":", 1)[0]
    run1 = build_run_image(engine, tmp_path, "v1", f"{repo}:v1")
    run2 = build_run_image(engine, tmp_path, "v2", f"{repo}:v2")
    app = build_app_image(engine, tmp_path, run1, unique("app"), run_name=repo)
    wanted = {**settings(engine), "PACKCACHE_CONTAINERD_NAMESPACE": "not-the-daemons"}
    args = ["-v", "rebase", app.tag, "--run-image", run2.tag, "--pull-policy", "never"]
    result = packcache(engine, tmp_path / "cache", *args, "--format", "json", env=wanted)
    check_fallback(result, "has no namespace 'not-the-daemons'")
    check_result(engine, tmp_path, app.tag, app, run2)
    assert our_leases_and_ingests(engine) == ([], [])


def test_a_connection_begun_early_is_the_one_used(via_containerd: Engine) -> None:
    from packcache.transports.daemon import Daemon

    daemon = Daemon(via_containerd.host)
    containerd_load.connect_soon(daemon)
    containerd_load.connect_soon(daemon)  # already under way: nothing more
    connection = containerd_load.daemon_containerd(daemon)
    assert connection is not None
    assert connection.endpoint.namespace == f"pc-{via_containerd.root.name}"
    assert containerd_load.daemon_containerd(daemon) is connection
    assert connection.blob_size("sha256:" + "0" * 64) is None  # it answers


def test_address_off_keeps_docker_load(via_containerd: Engine, tmp_path) -> None:
    engine = via_containerd
    tag, _ = small_image(engine, tmp_path)
    cache = tmp_path / "cache"
    assert packcache(engine, cache, "import", tag).returncode == 0
    args = ["--containerd-address", "off", "-v", "load", tag, "--tag", f"{tag}-off"]
    result = packcache(engine, cache, *args, "--format", "json", env=settings(engine))
    check_fallback(result, "containerd not used")


def test_a_corrupt_cached_blob_leaves_nothing_in_containerd(
    cli, via_containerd: Engine, tmp_path, cache_dir
) -> None:
    engine = via_containerd
    tag, _ = small_image(engine, tmp_path, gzip=False)
    assert cli("--host", engine.host, "import", tag).exit_code == 0
    diff_id = docker_json(engine, "image", "inspect", tag)["RootFS"]["Layers"][-1]
    engine.docker("rmi", tag)
    with Containerd(endpoint_of(engine)) as ctd:
        collect_garbage(ctd)
        assert ctd.blob_size(diff_id) is None
    blob = cache_dir / "blobs" / "sha256" / diff_id[7:9] / diff_id[7:]
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = cli("--host", engine.host, "load", tag)
    assert result.exit_code == 1
    assert result.stderr.startswith("packcache: error: ") and result.stderr.count("\n") == 1
    assert engine.docker("image", "inspect", tag, check=False).returncode != 0
    with Containerd(endpoint_of(engine)) as ctd:
        assert ctd.blob_size(diff_id) is None
    assert our_leases_and_ingests(engine) == ([], [])
