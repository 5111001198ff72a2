"""Pulling images from the real test registries straight into the store (no daemon)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from packcache.errors import CorruptBlobError, NotFoundError, PackcacheError
from packcache.operations.pulling import pull_image
from packcache.store.store import Store
from packcache.transports.registry import (
    ImageName,
    Platform,
    RegistryClient,
    RegistryOptions,
)
from packcache.transports.registry_credentials import Credentials
from tests.layers import random_tar
from tests.registries import uploading
from tests.registries.faults import CuttingProxy

if TYPE_CHECKING:
    from tests.engines.harness import Engine
    from tests.registries.harness import Registry, RegistrySet
    from tests.registries.pytest_plugin import Pushed

pytestmark = pytest.mark.engine


def insecure(host: str, **options: object) -> RegistryClient:
    return RegistryClient(host, RegistryOptions(insecure=frozenset({host}), **options))  # type: ignore[arg-type]


def pull(store: Store, client: RegistryClient, ref: str, **kwargs: object):
    with store.lease("test pull") as lease:
        return pull_image(store, client, ImageName.parse(ref), lease=lease, **kwargs)  # type: ignore[arg-type]


def layer_gets(registry: Registry, digests: list[str]) -> int:
    return sum(len(registry.requests_logged("GET", f"/blobs/{d}")) for d in digests)


def test_pull_fills_an_empty_cache_and_records_the_image(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.plain
    store = Store.open(tmp_path / "cache")
    ref = f"{registry.host}/t/app:1"
    report = pull(store, insecure(registry.host), ref)
    built = registry_images.amd64
    assert report.manifest_digest == registry_images.digests["plain"]
    assert report.config_digest == built.config_digest
    assert len(report.downloaded) == len(built.diff_ids) and report.already_cached == []
    assert store.cached_diff_ids(built.diff_ids) == set(built.diff_ids)
    assert store.resolve_image(ref) == built.config_digest
    manifest = store.manifest(report.manifest_digest)
    assert manifest is not None
    for digest in report.downloaded:
        assert store.layer_by_digest(digest) is not None
        assert f'"{digest}"' in manifest.decode()


def test_second_pull_downloads_nothing(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.plain
    store = Store.open(tmp_path / "cache")
    first = pull(store, insecure(registry.host), f"{registry.host}/t/app:1")
    gets = layer_gets(registry, first.downloaded)
    again = pull(store, insecure(registry.host), f"{registry.host}/t/app:1")
    assert again.downloaded == [] and again.bytes_downloaded == 0
    assert sorted(again.already_cached) == sorted(registry_images.amd64.diff_ids)
    assert layer_gets(registry, first.downloaded) == gets


def test_same_layers_in_another_compression_are_not_downloaded(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    """t/app:cd (pushed by the containerd-store engine, uncompressed) has t/app:1's diffIDs."""
    registry = registries.plain
    store = Store.open(tmp_path / "cache")
    pull(store, insecure(registry.host), f"{registry.host}/t/app:1")
    report = pull(store, insecure(registry.host), f"{registry.host}/t/app:cd")
    assert report.manifest_digest == registry_images.digests["plain-containerd"]
    assert report.downloaded == []
    assert store.resolve_image(f"{registry.host}/t/app:cd") == registry_images.amd64.config_digest


def test_pull_of_uncompressed_layers_from_a_containerd_store_push(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.plain
    store = Store.open(tmp_path / "cache")
    report = pull(store, insecure(registry.host), f"{registry.host}/t/app:cd")
    assert len(report.downloaded) == len(registry_images.amd64.diff_ids)
    diff_ids = registry_images.amd64.diff_ids
    assert store.cached_diff_ids(diff_ids) == set(diff_ids)
    assert {store.layer(d).compression for d in diff_ids} == {"none"}  # type: ignore[union-attr]


def test_pull_through_token_auth_and_from_a_list(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    store = Store.open(tmp_path / "cache")
    token = registries.token
    client = RegistryClient(
        token.host,
        RegistryOptions(insecure=frozenset({token.host})),
        credentials=Credentials(registries.user, registries.password),
    )
    report = pull(store, client, f"{token.host}/t/app:1")
    assert report.config_digest == registry_images.amd64.config_digest
    plain = registries.plain
    arm = pull(
        store,
        insecure(plain.host),
        f"{plain.host}/t/app:multi",
        platform=Platform.parse("linux/arm64"),
    )
    assert arm.config_digest == registry_images.arm64.config_digest


def test_bytes_not_matching_the_digest_are_refused_and_nothing_recorded(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.plain
    store = Store.open(tmp_path / "cache")
    # The cd image: its busybox layer is uncompressed, so a flipped bit still decompresses.
    manifest = insecure(registry.host).manifest("t/app", "cd")
    big = max(manifest.layers, key=lambda layer: layer["size"])
    proxy = CuttingProxy(
        registry.port, cut_after=500_000, cuts=1, flip_only=True, blob=big["digest"]
    )
    try:
        with pytest.raises(CorruptBlobError, match="do not match their digest"):
            pull(store, insecure(proxy.host, backoff_seconds=0.01), f"{proxy.host}/t/app:cd")
    finally:
        proxy.close()
    assert proxy.cuts_done == 1
    with pytest.raises(NotFoundError):
        store.resolve_image(f"{proxy.host}/t/app:cd")
    assert store.cached_diff_ids(registry_images.amd64.diff_ids) == set()
    assert store.partials() == []


def test_unknown_tag_and_registry_down_leave_the_cache_empty(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.plain
    store = Store.open(tmp_path / "cache")
    with pytest.raises(NotFoundError, match="manifest t/app:nope not found"):
        pull(store, insecure(registry.host), f"{registry.host}/t/app:nope")
    from tests.registries.harness import free_port

    down = f"127.0.0.1:{free_port()}"
    with pytest.raises(PackcacheError, match="is not reachable"):
        pull(store, insecure(down, attempts=1), f"{down}/t/app:1")
    assert store.cached_diff_ids(registry_images.amd64.diff_ids) == set()


def test_pull_of_an_oci_index_with_zstd_and_gzip_layers(
    registries: RegistrySet, tmp_path: Path
) -> None:
    registry = registries.plain
    amd64 = uploading.upload_oci_image(
        registry.url, "t/oci", "amd64",
        [random_tar(300_000, seed=b"oci0"), random_tar(200_000, seed=b"oci1")], ["zstd", "gzip"],
    )  # fmt: skip
    arm64 = uploading.upload_oci_image(
        registry.url, "t/oci", "arm64v8", [random_tar(100_000, seed=b"oci2")], ["none"]
    )
    index = uploading.upload_oci_index(
        registry.url, "t/oci", "multi",
        [(amd64, {"os": "linux", "architecture": "amd64"}),
         (arm64, {"os": "linux", "architecture": "arm64", "variant": "v8"})],
    )  # fmt: skip
    client = insecure(registry.host)
    assert client.manifest("t/oci", index).digest == amd64.manifest_digest
    assert client.manifest("t/oci", "multi", Platform.parse("linux/arm64/v8")).digest == (
        arm64.manifest_digest
    )
    store = Store.open(tmp_path / "cache")
    report = pull(store, client, f"{registry.host}/t/oci:multi")
    assert (report.manifest_digest, report.config_digest) == (
        amd64.manifest_digest,
        amd64.config_digest,
    )
    assert sorted(report.downloaded) == sorted(amd64.layer_digests)
    compressions = [store.layer(d).compression for d in amd64.diff_ids]  # type: ignore[union-attr]
    assert compressions == ["zstd", "gzip"]
    arm = pull(
        store, client, f"{registry.host}/t/oci:multi", platform=Platform.parse("linux/arm64")
    )
    assert arm.config_digest == arm64.config_digest


def test_an_artifact_that_is_not_an_image_is_refused(
    registries: RegistrySet, tmp_path: Path
) -> None:
    registry = registries.plain
    uploading.upload_oci_image(
        registry.url, "t/chart", "1", [random_tar(10_000, seed=b"chart")], ["gzip"],
        config_media_type="application/vnd.cncf.helm.config.v1+json",
    )  # fmt: skip
    store = Store.open(tmp_path / "cache")
    with pytest.raises(PackcacheError, match="is not a container image"):
        pull(store, insecure(registry.host), f"{registry.host}/t/chart:1")
    assert store.partials() == []


def test_pulled_image_loads_into_every_engine_and_runs(
    cli, cache_dir: Path, engine: Engine, registries: RegistrySet, registry_images: Pushed
) -> None:
    registry = registries.plain
    ref = f"{registry.host}/t/app:1"
    pull(Store.open(cache_dir), insecure(registry.host), ref)
    result = cli("--host", engine.host, "load", ref, "--format", "json")
    assert result.exit_code == 0, result.stderr
    try:
        run = engine.docker(
            "run", "--rm", "--network", "none", "--pull", "never", ref, "cat", "/app/seed"
        )
        assert run.stdout == b"amd64"
        layers = json.loads(engine.docker("image", "inspect", ref).stdout)[0]["RootFS"]["Layers"]
        assert layers == registry_images.amd64.diff_ids
    finally:
        engine.docker("rmi", ref)


def test_pull_command(
    cli, cache_dir: Path, registries: RegistrySet, registry_images: Pushed
) -> None:
    host = registries.plain.host
    ref = f"{host}/t/app:1"
    first = cli("pull", "--insecure-registry", host, ref)
    assert first.exit_code == 0, first.stderr
    short = registry_images.amd64.config_digest.removeprefix("sha256:")[:12]
    assert first.stdout.startswith(f"Pulled {ref} ({short}): 3 layers downloaded (")
    again = cli("pull", "--insecure-registry", host, ref, "--format", "json")
    assert again.exit_code == 0, again.stderr
    [report] = again.json()
    assert report["downloaded"] == [] and len(report["already_cached"]) == 3
    assert report["manifest_digest"] == registry_images.digests["plain"]
    assert Store.open(cache_dir).resolve_image(ref) == registry_images.amd64.config_digest


def test_pull_command_with_docker_config_credentials_and_platform(
    cli, tmp_path: Path, registries: RegistrySet, registry_images: Pushed, monkeypatch
) -> None:
    token = registries.token
    config = tmp_path / "docker"
    config.mkdir()
    auth = base64.b64encode(f"{registries.user}:{registries.password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {token.host: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    plain = registries.plain.host
    result = cli(
        "pull", "--insecure-registry", token.host, "--insecure-registry", plain,
        "--platform", "linux/arm64", f"{token.host}/t/app:1", f"{plain}/t/app:multi",
        "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    configs = [report["config_digest"] for report in result.json()]
    # t/app:1 is a single-platform image: --platform chooses only within lists.
    assert configs == [registry_images.amd64.config_digest, registry_images.arm64.config_digest]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["{plain}/t/app:nope"], 1, "manifest t/app:nope not found on {plain}"),
        (["{plain}/t/nothing:1"], 1, "manifest t/nothing:1 not found on {plain}"),
        (
            ["--platform", "linux/s390x", "{plain}/t/app:multi"],
            1,
            "without an image for linux/s390x",
        ),
        (["--platform", "linux", "{plain}/t/app:1"], 2, "invalid platform 'linux'"),
        (["{plain}/T/App:1"], 2, "invalid image reference"),
        (["{plain}/t/app@md5:0000"], 2, "invalid image reference"),
    ],
)
def test_pull_command_errors(
    cli, cache_dir: Path, registries: RegistrySet, registry_images: Pushed,
    args: list[str], code: int, message: str,
) -> None:  # fmt: skip
    plain = registries.plain.host
    result = cli("pull", "--insecure-registry", plain, *[a.format(plain=plain) for a in args])
    assert result.exit_code == code
    assert result.stderr.startswith("packcache: error: ")
    assert message.format(plain=plain) in result.stderr
    assert result.stderr.count("\n") == 1
    assert Store.open(cache_dir).cached_diff_ids(registry_images.amd64.diff_ids) == set()


def test_pull_command_without_insecure_registry_for_a_plain_one(
    cli, registries: RegistrySet, registry_images: Pushed
) -> None:
    result = cli("pull", f"{registries.plain.host}/t/app:1")
    assert result.exit_code == 1
    assert "TLS to registry" in result.stderr and "name it insecure" in result.stderr


def test_a_config_whose_diff_ids_lie_is_refused(registries: RegistrySet, tmp_path: Path) -> None:
    registry = registries.plain
    tar = random_tar(50_000, seed=b"liar")
    lie = ["sha256:" + "1" * 64]
    uploading.upload_oci_image(registry.url, "t/liar", "1", [tar], ["gzip"], claimed_diff_ids=lie)
    store = Store.open(tmp_path / "cache")
    client = insecure(registry.host)
    with pytest.raises(CorruptBlobError, match="do not match their diffID"):
        pull(store, client, f"{registry.host}/t/liar:1")
    assert store.cached_diff_ids(lie) == set() and store.partials() == []
    # Once the blob is cached under its true diffID, the lie is caught without a download.
    uploading.upload_oci_image(registry.url, "t/liar", "true", [tar], ["gzip"])
    pull(store, client, f"{registry.host}/t/liar:true")
    with pytest.raises(PackcacheError, match=r"layer sha256:\w+ is sha256:\w+, not the config's"):
        pull(store, client, f"{registry.host}/t/liar:1")
    with pytest.raises(NotFoundError):
        store.resolve_image(f"{registry.host}/t/liar:1")
