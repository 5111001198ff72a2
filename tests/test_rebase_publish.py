"""`packcache rebase --publish`: registry to registry, no layer downloaded, the result pulled
into a daemon, run, and compared with the daemon rebase of the same inputs."""

from __future__ import annotations

import json
import tomllib
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from packcache.errors import PackcacheError
from packcache.operations.rebase_publish import rebase_publish
from packcache.transports.registry import ImageName, RegistryClient, RegistryOptions
from tests.cnb_images import (
    LIFECYCLE_METADATA,
    AppImage,
    RunImage,
    build_app_image,
    build_run_image,
)
from tests.test_rebase import saved_config

if TYPE_CHECKING:
    from tests.engines.harness import Engine
    from tests.engines.pytest_plugin import EnginePool
    from tests.registries.harness import RegistrySet

pytestmark = pytest.mark.engine


def registry_manifest_bytes(host: str, repository: str, digest: str) -> bytes:
    """A manifest's bytes as the plain (anonymous HTTP) test registry serves them."""
    request = urllib.request.Request(
        f"http://{host}/v2/{repository}/manifests/{digest}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


@pytest.mark.parametrize("kind", ["26.1-graphdriver", "28-containerd"])
def test_publish_rebase_mounts_run_layers_and_matches_the_daemon_rebase(
    kind: str, cli, registries: RegistrySet, engine_pool: EnginePool, tmp_path: Path
) -> None:
    """On a graphdriver engine (gzip layers pushed) and a containerd store (uncompressed)."""
    engine = engine_pool.get(kind)
    registry = registries.plain
    suffix = uuid.uuid4().hex[:8]
    run_repo = f"{registry.host}/t/run-{suffix}"
    run1 = build_run_image(engine, tmp_path, "v1", f"{run_repo}:v1")
    run2 = build_run_image(engine, tmp_path, "v2", f"{run_repo}:v2")
    app = build_app_image(
        engine, tmp_path, run1, f"{registry.host}/t/app-{suffix}:1", run_name=run_repo
    )
    for tag in (run1.tag, run2.tag, app.tag):
        engine.docker("push", tag)
    options = RegistryOptions(insecure=frozenset({registry.host}))
    with RegistryClient(registry.host, options) as client:
        before = {d["digest"] for d in client.manifest(f"t/app-{suffix}", "1").layers}
    published = cli(
        "rebase", app.tag, "--publish", "--run-image", run2.tag,
        "--insecure-registry", registry.host, "--format", "json",
        "--report-output-dir", str(tmp_path / "layers"),
    )  # fmt: skip
    assert published.exit_code == 0, published.stderr
    report = published.json()
    with RegistryClient(registry.host, options) as client:
        run2_manifest = client.manifest(f"t/run-{suffix}", "v2")
        app_manifest = client.manifest(f"t/app-{suffix}", "1")
    assert report["run_image_reference"] == f"{run_repo}@{run2_manifest.digest}"
    assert app_manifest.digest == report["digest"]  # the tag moved to the result
    # The lifecycle's report.toml for a registry export: tags, digest, manifest-size.
    assert tomllib.loads((tmp_path / "layers" / "report.toml").read_text()) == {
        "image": {
            "tags": [app.tag],
            "digest": report["digest"],
            "manifest-size": report["manifest_size"],
        }
    }
    assert report["manifest_size"] == len(
        registry_manifest_bytes(registry.host, f"t/app-{suffix}", report["digest"])
    )
    # Run image layers the app repository lacked mounted from the run repository; the rest
    # (the app's own layers, the shared busybox layer) were there; only the config was sent.
    run2_layers = {d["digest"] for d in run2_manifest.layers}
    assert sorted(report["mounted"]) == sorted(run2_layers - before)
    assert len(run2_layers - before) == 2
    assert sorted(report["present"]) == sorted(
        {d["digest"] for d in app_manifest.layers} - (run2_layers - before)
    )
    assert report["uploaded"] == [report["config_digest"]]
    assert report["bytes_downloaded"] == 0
    layer_digests = {d["digest"] for d in app_manifest.layers}
    blob_gets = registry.requests_logged("GET", f"/v2/t/app-{suffix}/blobs/")
    blob_gets += registry.requests_logged("GET", f"/v2/t/run-{suffix}/blobs/")
    assert blob_gets and not any(d in line for line in blob_gets for d in layer_digests)

    # The daemon rebase of the same inputs gives the same config but for runImage.reference.
    local = f"packcache-test/rebased-{suffix}:1"
    daemon = cli("--host", engine.host, "rebase", app.tag, "--run-image", run2.tag, "--tag", local)
    assert daemon.exit_code == 0, daemon.stderr
    expected = saved_config(engine, local, tmp_path)
    pulled = f"{registry.host}/t/app-{suffix}@{report['digest']}"
    engine.docker("pull", pulled)
    actual = saved_config(engine, pulled, tmp_path)
    reference = {}
    for config in (expected, actual):
        metadata = json.loads(config["config"]["Labels"][LIFECYCLE_METADATA])
        reference[id(config)] = metadata["runImage"].pop("reference")
        config["config"]["Labels"][LIFECYCLE_METADATA] = metadata
    assert actual == expected
    assert reference[id(actual)] == report["run_image_reference"]
    assert reference[id(expected)] == run2.image_id.removeprefix("sha256:")
    cat = ["run", "--rm", "--pull", "never", "--network", "none", "--entrypoint", "cat", pulled]
    assert engine.docker(*cat, "/etc/run-version").stdout == b"v2\n"
    assert engine.docker(*cat, "/workspace/app.txt").stdout == app.marker


def test_publish_refuses_daemon_only_options(cli) -> None:
    result = cli("rebase", "127.0.0.1:1/t/app:1", "--publish", "--dry-run")
    assert result.exit_code == 2
    assert "--publish does not go with" in result.stderr


def test_publish_from_a_registry_that_is_down(cli) -> None:
    from tests.registries.harness import LOCALHOST, free_port

    host = f"{LOCALHOST}:{free_port()}"
    result = cli("rebase", f"{host}/t/app:1", "--publish", "--insecure-registry", host)
    assert result.exit_code == 1
    assert result.stderr.startswith("packcache: error: registry")
    assert "is not reachable" in result.stderr
    assert ImageName.parse(f"{host}/t/app:1").host == host


@dataclass
class _Published:
    """Run v1 and v2 and an app on v1, pushed to a registry by an engine."""

    run1: RunImage
    run2: RunImage
    app: AppImage
    run_repo: str


def _pushed_stack(
    engine: Engine, tmp_path: Path, host: str, *, mirrors: list[str] | None = None
) -> _Published:
    suffix = uuid.uuid4().hex[:8]
    run_repo = f"{host}/t/run-{suffix}"
    run1 = build_run_image(engine, tmp_path, "v1", f"{run_repo}:v1")
    run2 = build_run_image(engine, tmp_path, "v2", f"{run_repo}:v2")
    app = build_app_image(
        engine, tmp_path, run1, f"{host}/t/app-{suffix}:1", run_name=run_repo, mirrors=mirrors
    )
    for tag in (run1.tag, run2.tag, app.tag):
        engine.docker("push", tag)
    return _Published(run1, run2, app, run_repo)


def test_publish_to_another_registry_copies_blobs_through_and_shows_each_upload(
    registries: RegistrySet, engine_pool: EnginePool, tmp_path: Path
) -> None:
    """The result named on another registry (localhost:PORT is another registry to a
    client): nothing to mount, every blob it lacks is read from the source as it is sent,
    each shown once with its size, as push shows them."""
    from tests.test_cli_progress import Recorder

    registry = registries.plain
    stack = _pushed_stack(engine_pool.get("26.1-graphdriver"), tmp_path, registry.host)
    other = f"localhost:{registry.port}"
    target = f"{other}/t/copied-{uuid.uuid4().hex[:8]}:1"
    shown = Recorder()
    report = rebase_publish(
        target, previous_image=stack.app.tag, run_image=stack.run2.tag,
        options=RegistryOptions(insecure=frozenset({registry.host, other})), progress=shown,
    )  # fmt: skip
    assert report.mounted == [] and report.present == []
    layers = len(stack.run2.layers) + len(stack.app.app_diff_ids)
    assert len(report.uploaded) == len(set(report.uploaded)) == layers + 1  # and the config
    assert sorted(task.name for task in shown.tasks) == sorted(
        digest[7:19] for digest in report.uploaded
    )
    for task in shown.tasks:
        assert task.total == task.done_bytes > 0 and task.ended >= 1
    assert sum(task.done_bytes for task in shown.tasks) == report.bytes_uploaded
    assert 0 < report.bytes_downloaded < report.bytes_uploaded  # all but the config read
    with RegistryClient(other, RegistryOptions(insecure=frozenset({other}))) as client:
        assert client.manifest(ImageName.parse(target).repository, "1").digest == report.digest


def test_publish_prefers_the_mirror_in_the_targets_registry_and_reads_registry_mirrors(
    cli, registries: RegistrySet, engine_pool: EnginePool, tmp_path: Path, monkeypatch
) -> None:
    """pack's choice for a publish: among the readable run image names (pack's config
    [[run-images]] mirrors, the recorded image, its mirrors), the first in the target's
    registry. And [registry-mirrors]: the app and run images are read from the mirror's
    name (here the same registry under its other name), the result pushed where asked."""
    registry = registries.plain
    port = registry.port
    ip, name = f"127.0.0.1:{port}", f"localhost:{port}"
    engine = engine_pool.get("26.1-graphdriver")
    suffix = uuid.uuid4().hex[:8]
    mirror = f"{name}/t/mirror-{suffix}"
    stack = _pushed_stack(engine, tmp_path, ip, mirrors=[mirror])
    engine.docker("tag", stack.run2.tag, f"{mirror}:latest")
    engine.docker("push", f"{mirror}:latest")
    engine.docker("tag", stack.run2.tag, f"{stack.run_repo}:latest")
    engine.docker("push", f"{stack.run_repo}:latest")
    pack_home = tmp_path / "pack"
    pack_home.mkdir()
    monkeypatch.setenv("PACK_HOME", str(pack_home))
    insecure = ("--insecure-registry", ip, "--insecure-registry", name)

    def publish(target: str, *args: str):
        return cli("rebase", target, "--publish", "--previous-image", stack.app.tag, *insecure,
                   "--format", "json", *args)  # fmt: skip

    in_name = publish(f"{name}/t/app-{suffix}:out")
    assert in_name.exit_code == 0, in_name.stderr
    assert in_name.json()["run_image"] == mirror  # the mirror in the target's registry
    in_ip = publish(f"{ip}/t/app-{suffix}:out")
    assert in_ip.exit_code == 0, in_ip.stderr
    assert in_ip.json()["run_image"] == stack.run_repo
    # A [[run-images]] mirror comes first: in the target's registry, it is chosen (and, not
    # named by the app's metadata, refused by the lifecycle's check unless forced).
    configured = f"{name}/t/configured-{suffix}"
    engine.docker("tag", stack.run2.tag, f"{configured}:latest")
    engine.docker("push", f"{configured}:latest")
    (pack_home / "config.toml").write_text(
        f'[[run-images]]\nimage = "{stack.run_repo}"\nmirrors = ["{configured}"]\n'
    )
    refused = publish(f"{name}/t/app-{suffix}:out")
    assert refused.exit_code == 1 and f"run image {configured}" in refused.stderr
    forced = publish(f"{name}/t/app-{suffix}:out", "--force")
    assert forced.exit_code == 0, forced.stderr
    assert forced.json()["run_image"] == configured
    # [registry-mirrors]: both images read from 127.0.0.1:PORT's mirror localhost:PORT.
    (pack_home / "config.toml").write_text(f'[registry-mirrors]\n"{ip}" = "{name}"\n')
    mirrored = publish(f"{ip}/t/app-{suffix}:mirrored", "--run-image", stack.run2.tag, "--force")
    assert mirrored.exit_code == 0, mirrored.stderr
    report = mirrored.json()
    assert report["previous_image"] == stack.app.tag.replace(ip, name)
    assert report["run_image"] == stack.run2.tag.replace(ip, name)
    assert report["run_image_reference"].startswith(stack.run_repo.replace(ip, name) + "@")
    assert report["image"] == f"{ip}/t/app-{suffix}:mirrored"
    (pack_home / "config.toml").write_text('[registry-mirrors]\n"x" = 1\n')
    bad = publish(f"{ip}/t/app-{suffix}:mirrored")
    assert bad.exit_code == 2 and "registry-mirrors must be a table" in bad.stderr
    for ref in (f"{mirror}:latest", f"{stack.run_repo}:latest", f"{configured}:latest"):
        engine.docker("rmi", ref, check=False)


def test_publish_to_the_tls_registry_with_its_ca_and_basic_auth(
    registries: RegistrySet, engine_pool: EnginePool, tmp_path: Path
) -> None:
    """TLS verified against the CA in certs.d, htpasswd credentials from the Docker config;
    the result pulled back by the engine and run."""
    from tests.registries import pushing
    from tests.test_registry_push import docker_config
    from tests.test_registry_transport import trusting_certs_dir

    tls = registries.tls_basic
    engine = engine_pool.get("26.1-graphdriver")
    pushing.docker_login(engine, registries, tls)
    stack = _pushed_stack(engine, tmp_path, tls.host)
    options = RegistryOptions(
        certs_dir=trusting_certs_dir(tmp_path, registries, tls),
        docker_config_dir=docker_config(tmp_path, tls.host, registries),
    )
    target = f"{tls.host}/t/tls-{uuid.uuid4().hex[:8]}:1"
    report = rebase_publish(
        target, previous_image=stack.app.tag, run_image=stack.run2.tag, options=options
    )
    assert report.bytes_downloaded == 0 and report.uploaded == [report.config_digest]
    assert len(report.mounted) == len(stack.run2.layers) + len(stack.app.app_diff_ids)
    wrong = RegistryOptions(
        certs_dir=options.certs_dir,
        docker_config_dir=docker_config(tmp_path, tls.host, registries, "wrong"),
    )
    with pytest.raises(PackcacheError, match="refused"):
        rebase_publish(target, previous_image=stack.app.tag, options=wrong)
    engine.docker("pull", target)
    try:
        cat = ["run", "--rm", "--pull", "never", "--network", "none", "--entrypoint", "cat"]
        assert engine.docker(*cat, target, "/etc/run-version").stdout == b"v2\n"
        assert engine.docker(*cat, target, "/workspace/app.txt").stdout == stack.app.marker
    finally:
        engine.docker("rmi", target)
