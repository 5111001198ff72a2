"""`packcache push` against the real test registries: skip by HEAD, mounts, monolithic and
chunked uploads, daemon images pulled back and run by an engine, and faults."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from packcache.errors import PackcacheError
from packcache.operations.pushing import push_image
from packcache.store.store import Store
from packcache.transports.registry import ImageName, RegistryClient, RegistryOptions
from packcache.transports.registry_credentials import Credentials
from packcache.transports.registry_pull import pull_image
from tests.registries import pushing
from tests.registries.faults import CuttingProxy
from tests.registries.harness import LOCALHOST, free_port

if TYPE_CHECKING:
    from tests.engines.pytest_plugin import EnginePool
    from tests.registries.harness import Registry, RegistrySet
    from tests.registries.pytest_plugin import Pushed

pytestmark = pytest.mark.engine


def insecure(*hosts: str, **kwargs: object) -> RegistryOptions:
    return RegistryOptions(insecure=frozenset(hosts), **kwargs)  # type: ignore[arg-type]


def pulled(store: Store, registry: Registry, ref: str = "t/app:1") -> str:
    with (
        RegistryClient(registry.host, insecure(registry.host)) as client,
        store.lease("t") as lease,
    ):
        report = pull_image(store, client, ImageName.parse(f"{registry.host}/{ref}"), lease=lease)
    return report.config_digest


def push(store: Store, image: str, ref: str, options: RegistryOptions, **kwargs: object):
    with store.lease("test push") as lease:
        return push_image(store, image, ref, lease=lease, options=options, **kwargs)  # type: ignore[arg-type]


def manifest_status(registry: Registry, repository: str, tag: str) -> int:
    return registry.status(f"/v2/{repository}/manifests/{tag}")


def repo() -> str:
    return f"t/push-{uuid.uuid4().hex[:8]}"


def test_push_of_a_pulled_image_mounts_then_skips_and_keeps_the_digest(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.plain
    store = Store.open(tmp_path / "cache")
    config_digest = pulled(store, registry)
    target = f"{registry.host}/{repo()}:1"
    report = push(store, config_digest, target, insecure(registry.host))
    # The manifest the pull recorded, so the digest is docker push's.
    assert report.manifest == "recorded"
    assert report.digest == registry_images.digests["plain"]
    layer_count = len(registry_images.amd64.diff_ids)
    # Every blob (config and layers) is mounted from t/app, where the image was pulled from.
    assert len(report.mounted) == layer_count + 1 and report.uploaded == []
    repository = ImageName.parse(target).repository
    mounts = registry.requests_logged("POST", f"/v2/{repository}/blobs/uploads/?mount=")
    assert len(mounts) == layer_count + 1
    again = push(store, config_digest, target, insecure(registry.host))
    assert (again.digest, again.mounted, again.uploaded) == (report.digest, [], [])
    assert len(again.present) == layer_count + 1
    assert len(registry.requests_logged("POST", f"/v2/{repository}/blobs/uploads/")) == len(mounts)


def test_push_to_a_token_registry_uploads_in_chunks_and_docker_pulls_it(
    registries: RegistrySet,
    registry_images: Pushed,
    engine_pool: EnginePool,
    tmp_path: Path,
) -> None:
    source, token = registries.plain, registries.token
    store = Store.open(tmp_path / "cache")
    config_digest = pulled(store, source)
    target = f"{token.host}/{repo()}:1"
    options = insecure(token.host)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path, token.host, registries)))
        report = push(store, f"{source.host}/t/app:1", target, options, chunk_bytes=1 << 20)
    assert report.digest == registry_images.digests["plain"]
    assert len(report.uploaded) == len(registry_images.amd64.diff_ids) + 1
    (big,) = report.chunked  # the one layer over 1 MiB, in 1 MiB PATCHes
    size = store.layer_by_digest(big).size  # type: ignore[union-attr]
    repository = ImageName.parse(target).repository
    patches = token.requests_logged("PATCH", f"/v2/{repository}/blobs/uploads/")
    assert len(patches) == -(-size // (1 << 20)) > 1
    assert any("push" in scope for _, scope in registries.realm.requests)
    engine = engine_pool.get("26.1-graphdriver")
    pushing.docker_login(engine, registries, token)
    engine.docker("pull", target)
    try:
        out = engine.docker("run", "--rm", "--pull", "never", target, "cat", "/app/seed")
        assert out.stdout == b"amd64"
        image_id = json.loads(engine.docker("image", "inspect", target).stdout)[0]["Id"]
        assert image_id == config_digest
    finally:
        engine.docker("rmi", target)


def docker_config(tmp_path: Path, host: str, registries: RegistrySet, password: str = "") -> Path:
    directory = tmp_path / f"docker-config-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    import base64

    pair = f"{registries.user}:{password or registries.password}".encode()
    auths = {"auths": {host: {"auth": base64.b64encode(pair).decode()}}}
    (directory / "config.json").write_text(json.dumps(auths))
    return directory


@pytest.mark.parametrize("kind", ["20.10-graphdriver", "26.1-graphdriver", "26.1-containerd"])
def test_push_command_of_a_daemon_image(
    kind: str, cli, registries: RegistrySet, engine_pool: EnginePool, tmp_path: Path
) -> None:
    """The image is imported first; pulled back by the engine it runs, with its image ID."""
    engine = engine_pool.get(kind)
    registry = registries.plain
    tag = f"packcache-test/push-{uuid.uuid4().hex[:8]}:1"
    built = pushing.build_app(tmp_path, tag, f"daemon-{kind}")
    engine.docker("load", "-i", str(built.path))
    target = f"{registry.host}/{repo()}:1"
    result = cli(
        "--host", engine.host, "push", tag, target, "--insecure-registry", registry.host,
        "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["imported"] is True
    assert len(report["uploaded"]) == len(built.diff_ids) + 1
    # A legacy save (20.10) has no manifest: one is built from the cached blobs.
    assert report["manifest"] == ("built" if kind == "20.10-graphdriver" else "recorded")
    if engine.containerd_store:
        # The manifest the containerd store holds is pushed as it is: docker push's digest.
        assert report["manifest"] == "recorded"
        assert report["digest"] == pushing.push(engine, registries, registry, built, "t/x:1")
    table = cli("--host", engine.host, "push", tag, target, "--insecure-registry", registry.host)
    assert table.exit_code == 0, table.stderr
    assert table.stdout.splitlines()[-1] == report["digest"]
    assert "0 blobs uploaded" in table.stdout
    engine.docker("rmi", tag)
    engine.docker("pull", target)
    try:
        out = engine.docker("run", "--rm", "--pull", "never", target, "cat", "/app/seed")
        assert out.stdout == f"daemon-{kind}".encode()
        digests = json.loads(engine.docker("image", "inspect", target).stdout)[0]["RepoDigests"]
        assert any(d.endswith(report["digest"]) for d in digests)
    finally:
        engine.docker("rmi", target)


def test_wrong_password_and_registry_down_are_clear_errors(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    store = Store.open(tmp_path / "cache")
    config_digest = pulled(store, registries.plain)
    tls = registries.tls_basic
    options = RegistryOptions(
        insecure=frozenset({tls.host}),
        docker_config_dir=docker_config(tmp_path, tls.host, registries, "wrong"),
    )
    name = repo()
    with pytest.raises(PackcacheError, match="refused access"):
        push(store, config_digest, f"{tls.host}/{name}:1", options)
    right = Credentials(registries.user, registries.password)
    with RegistryClient(tls.host, insecure(tls.host), credentials=right) as client:
        assert client.request("HEAD", name, "manifests/1").status_code == 404
    down = f"{LOCALHOST}:{free_port()}"
    with pytest.raises(PackcacheError, match="is not reachable"):
        push(store, config_digest, f"{down}/{name}:1", insecure(down, attempts=1))


def test_a_connection_dropped_mid_upload_restarts_the_blob_or_fails_without_a_tag(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.plain
    store = Store.open(tmp_path / "cache")
    config_digest = pulled(store, registry)
    proxy = CuttingProxy(registry.port, cut_after=200_000, cuts=100, uploads=True)
    name = repo()
    try:
        with pytest.raises(PackcacheError, match="kept failing"):
            push(
                store, config_digest, f"{proxy.host}/{name}:1",
                insecure(proxy.host, attempts=2, backoff_seconds=0.01), parallel=1,
            )  # fmt: skip
        assert proxy.cuts_done >= 2
        assert manifest_status(registry, name, "1") == 404  # no tag names a partial image
        proxy.cuts_left = 1
        report = push(
            store, config_digest, f"{proxy.host}/{name}:1",
            insecure(proxy.host, attempts=3, backoff_seconds=0.01), parallel=1,
        )  # fmt: skip
    finally:
        proxy.close()
    assert report.digest == registry_images.digests["plain"]
    assert manifest_status(registry, name, "1") == 200
