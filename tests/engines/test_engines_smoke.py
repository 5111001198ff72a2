"""Smoke tests: every engine of the matrix starts, loads, runs and saves images."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.engines import images
from tests.engines.harness import (
    ENGINE_KINDS,
    REQUIRED_KINDS,
    Engine,
    _alive,
    cgroup_dirs,
    cgroup_parent_name,
    cleanup_stale,
    is_containerd_store,
    mounts_under,
    processes_referencing,
    shim_sockets,
)
from tests.engines.images import GZIP_MAGIC, BuiltImage

if TYPE_CHECKING:  # importing the plugin module here would defeat assert rewriting
    from tests.engines.pytest_plugin import EnginePool

# Harmless when tests/conftest.py already lists the plugin (registered once by name);
# lets this folder run on its own too.
pytest_plugins = ["tests.engines.pytest_plugin"]
# No module-level pytest.mark.engine: the plugin marks every test in this folder.

TAG = "packcache-smoke/three-layers:1"
HELLO = b"hello from layer 2\n"
GZIP_MEDIA_TYPES = {
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
}


@pytest.fixture(scope="session")
def smoke_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """busybox layer, a gzip layer with a file, an uncompressed layer with another file."""
    path = tmp_path_factory.mktemp("smoke") / "three-layers.tar"
    return images.build_busybox_archive(
        path,
        TAG,
        [
            {"etc/packcache/hello.txt": HELLO},
            {"etc/packcache/third.txt": b"third\n", "var/empty": images.Dir()},
        ],
        gzip_layers=[False, True, False],
    )


def loaded(engine: Engine, image: BuiltImage) -> BuiltImage:
    if engine.docker("image", "inspect", image.repo_tag, check=False).returncode != 0:
        engine.docker("load", "-i", str(image.path))
    return image


def save_members(engine: Engine, ref: str, dest: Path) -> dict[str, bytes]:
    engine.docker("save", "-o", str(dest), ref)
    with tarfile.open(dest) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- per engine


def test_info_reports_version_and_storage(engine: Engine) -> None:
    spec = ENGINE_KINDS[engine.kind]
    info = engine.info()
    assert info["ServerVersion"].startswith(spec.version_prefix)
    assert is_containerd_store(info) is spec.containerd_store
    assert info["Driver"] == engine.storage_driver
    assert info["DockerRootDir"].startswith(str(engine.root))
    # The CLI (client 28.x) talks to every engine, 20.10's API 1.41 included.
    out = engine.docker("version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}")
    assert out.stdout.decode().split() == [engine.version, engine.api_version]
    status = engine.docker("info", "--format", "{{json .DriverStatus}}").stdout
    driver_types = [v for k, v in json.loads(status) if k == "driver-type"]
    assert (driver_types == ["io.containerd.snapshotter.v1"]) is spec.containerd_store


def test_load_three_layer_archive(engine: Engine, smoke_image: BuiltImage) -> None:
    out = engine.docker("load", "-i", str(smoke_image.path)).stdout.decode()
    assert f"Loaded image: {TAG}" in out
    inspect = json.loads(engine.docker("image", "inspect", TAG).stdout)[0]
    assert inspect["RootFS"]["Layers"] == smoke_image.diff_ids
    if not engine.containerd_store:
        # Graphdriver image ID is the config digest; the containerd store uses the
        # manifest digest instead (checked in the save test).
        assert inspect["Id"] == smoke_image.config_digest


def test_run_prints_file_from_gzip_layer(engine: Engine, smoke_image: BuiltImage) -> None:
    loaded(engine, smoke_image)
    run = engine.docker("run", "--rm", "--network", "none", TAG, "cat", "/etc/packcache/hello.txt")
    assert run.stdout == HELLO
    run = engine.docker("run", "--rm", "--network", "none", TAG, "cat", "/etc/packcache/third.txt")
    assert run.stdout == b"third\n"


def test_run_with_docker_init(engine: Engine, smoke_image: BuiltImage) -> None:
    # --init needs docker-init (bookworm's static tini, see provision.py) on the PATH.
    loaded(engine, smoke_image)
    run = engine.docker("run", "--rm", "--init", "--network", "none", TAG, "cat", "/proc/1/cmdline")
    assert run.stdout.split(b"\0")[0].endswith(b"docker-init")


def test_save_format(engine: Engine, smoke_image: BuiltImage, tmp_path: Path) -> None:
    loaded(engine, smoke_image)
    members = save_members(engine, TAG, tmp_path / "saved.tar")
    manifest = json.loads(members["manifest.json"])
    assert manifest[0]["RepoTags"] == [TAG]
    layer_files = manifest[0]["Layers"]
    assert len(layer_files) == 3

    if engine.version.startswith("20.10."):
        # Legacy layout: <id>/layer.tar (uncompressed) + <id>/json + repositories.
        assert "index.json" not in members and "oci-layout" not in members
        assert "repositories" in members
        assert all(p.endswith("/layer.tar") for p in layer_files)
        assert [sha(members[p]) for p in layer_files] == smoke_image.diff_ids
        assert all(p.rsplit("/", 1)[0] + "/json" in members for p in layer_files)
        assert members[manifest[0]["Config"]] == images.canonical_json(smoke_image.config)
        return

    # 25+: OCI layout (plus the legacy manifest.json).
    assert "oci-layout" in members and "index.json" in members
    index = json.loads(members["index.json"])
    assert len(index["manifests"]) == 1
    desc = index["manifests"][0]
    assert desc["annotations"]["io.containerd.image.name"] == f"docker.io/{TAG}"
    image_manifest = json.loads(members["blobs/sha256/" + desc["digest"].split(":")[1]])
    media_types = [layer["mediaType"] for layer in image_manifest["layers"]]
    blob_digests = [layer["digest"] for layer in image_manifest["layers"]]
    assert layer_files == ["blobs/sha256/" + d.split(":")[1] for d in blob_digests]
    for path, digest in zip(layer_files, blob_digests, strict=True):
        assert sha(members[path]) == digest

    if not engine.containerd_store:
        # Graphdriver: every layer blob is the uncompressed tar, named by its diffID.
        assert blob_digests == smoke_image.diff_ids
        assert not any(members[p].startswith(GZIP_MAGIC) for p in layer_files)
        assert not set(media_types) & GZIP_MEDIA_TYPES
    else:
        # containerd store: blobs as the content store holds them; the layer we
        # loaded gzipped stays gzip, so its blob digest differs from its diffID.
        inspect = json.loads(engine.docker("image", "inspect", TAG).stdout)[0]
        assert inspect["Id"] == desc["digest"]
        assert blob_digests == smoke_image.blob_digests
        assert members[layer_files[1]].startswith(GZIP_MAGIC)
        assert blob_digests[1] != smoke_image.diff_ids[1]
        assert media_types[1] in GZIP_MEDIA_TYPES
        assert image_manifest["config"]["digest"] == smoke_image.config_digest


# --------------------------------------------------------------------------- harness


def test_two_engines_side_by_side(engine_pool: EnginePool, tmp_path: Path) -> None:
    a = engine_pool.get("20.10-graphdriver")
    b = engine_pool.get("26.1-containerd")
    assert a.pid and b.pid and _alive(a.pid) and _alive(b.pid)
    assert a.host != b.host and a.root != b.root
    tag = "packcache-smoke/only-in-a:1"
    img = images.build_busybox_archive(tmp_path / "a.tar", tag, [{"a.txt": b"a\n"}])
    a.docker("load", "-i", str(img.path))
    assert a.docker("run", "--rm", "--network", "none", tag, "cat", "/a.txt").stdout == b"a\n"
    assert b.docker("image", "inspect", tag, check=False).returncode != 0
    assert (
        b.docker("version", "--format", "{{.Server.Version}}").stdout.decode().startswith("26.1.")
    )


@pytest.mark.parametrize("kind", REQUIRED_KINDS)
def test_stop_leaves_nothing_behind(kind: str, tmp_path: Path) -> None:
    img = images.build_busybox_archive(tmp_path / "s.tar", "packcache-smoke/stop:1")
    eng = Engine(kind)
    with eng:
        root, pid, cpid = eng.root, eng.pid, eng.containerd_pid
        eng.docker("load", "-i", str(img.path))
        # A running container: stop() must not leave its shim or mounts around.
        eng.docker(
            "run", "-d", "--network", "none", "--stop-timeout", "1", img.repo_tag, "sleep", "300"
        )
        assert mounts_under(root)
        assert cgroup_dirs(cgroup_parent_name(root))  # containers live in our own cgroup
    assert pid and cpid and not _alive(pid) and not _alive(cpid)
    assert processes_referencing(root) == []
    assert mounts_under(root) == []
    assert cgroup_dirs(cgroup_parent_name(root)) == []
    assert not root.exists()


@pytest.mark.parametrize("kind", REQUIRED_KINDS)
def test_crashed_engine_is_cleaned_up_by_next_start(kind: str, tmp_path: Path) -> None:
    """A test process killed hard leaves daemons/shims/containers; the next start reaps them."""
    img = images.build_busybox_archive(tmp_path / "s.tar", "packcache-smoke/crash:1")
    eng = Engine(kind).start()
    root = eng.root
    try:
        eng.docker("load", "-i", str(img.path))
        eng.docker("run", "-d", "--network", "none", img.repo_tag, "sleep", "300")
        in_container = [
            int(pid)
            for d in cgroup_dirs(cgroup_parent_name(root))
            for procs in d.rglob("cgroup.procs")
            for pid in procs.read_text().split()
        ]
        assert in_container
        sockets = shim_sockets(root)
        assert sockets and all(p.is_socket() for p in sockets)
        # Simulate the owner dying with SIGKILL: daemons gone without any cleanup.
        for pid in (eng.pid, eng.containerd_pid):
            assert pid
            os.kill(pid, signal.SIGKILL)
        dead = subprocess.Popen(["true"])
        dead.wait()
        (root / "owner.pid").write_text(str(dead.pid))
        cleanup_stale(root.parent)
        assert not root.exists()
        assert processes_referencing(root) == []
        assert mounts_under(root) == []
        assert cgroup_dirs(cgroup_parent_name(root)) == []
        assert not any(_alive(p) for p in in_container)
        assert not any(p.exists() for p in sockets)  # SIGKILLed shims leave theirs
    finally:
        eng.stop()
