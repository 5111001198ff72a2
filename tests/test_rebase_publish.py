"""`packcache rebase --publish`: registry to registry, no layer downloaded, the result pulled
into a daemon, run, and compared with the daemon rebase of the same inputs."""

from __future__ import annotations

import json
import tomllib
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from packcache.transports.registry import ImageName, RegistryClient, RegistryOptions
from tests.cnb_images import LIFECYCLE_METADATA, build_app_image, build_run_image
from tests.test_rebase import saved_config

if TYPE_CHECKING:
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


def test_publish_rebase_mounts_run_layers_and_matches_the_daemon_rebase(
    cli, registries: RegistrySet, engine_pool: EnginePool, tmp_path: Path
) -> None:
    engine = engine_pool.get("26.1-graphdriver")
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
