"""The registry transport against the real test registries: auth, TLS, manifests, blobs."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from packcache.errors import NotFoundError, PackcacheError
from packcache.jsondoc import strict_loads
from packcache.store.store import Store
from packcache.transports.registry import (
    DOCKER_MANIFEST,
    ImageName,
    Platform,
    RegistryClient,
    RegistryOptions,
)
from packcache.transports.registry_credentials import Credentials, find_credentials
from tests.registries.faults import CuttingProxy

if TYPE_CHECKING:
    from tests.registries.harness import Registry, RegistrySet
    from tests.registries.pytest_plugin import Pushed

pytestmark = pytest.mark.engine


def docker_config(tmp_path: Path, host: str, user: str, password: str) -> Path:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config_dir = tmp_path / "docker-config"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return config_dir


def trusting_certs_dir(tmp_path: Path, registries: RegistrySet, registry: Registry) -> Path:
    assert registries.ca is not None
    certs = tmp_path / "certs.d"
    (certs / registry.host).mkdir(parents=True)
    shutil.copy(registries.ca.cert_path, certs / registry.host / "ca.crt")
    return certs


def plain_client(registry: Registry, **options: object) -> RegistryClient:
    return RegistryClient(
        registry.host,
        RegistryOptions(insecure=frozenset({registry.host}), **options),  # type: ignore[arg-type]
    )


def assert_is_app(client: RegistryClient, registry_images: Pushed, digest: str) -> None:
    manifest = client.manifest("t/app", "1")
    assert manifest.digest == digest
    assert manifest.media_type == DOCKER_MANIFEST
    config = client.read_document_blob("t/app", manifest.config)
    assert strict_loads(config, "config")["rootfs"]["diff_ids"] == registry_images.amd64.diff_ids


def test_plain_registry_named_insecure_serves_manifest_and_config(
    registries: RegistrySet, registry_images: Pushed
) -> None:
    with plain_client(registries.plain) as client:
        assert_is_app(client, registry_images, registry_images.digests["plain"])
        by_digest = client.manifest("t/app", registry_images.digests["plain"])
        assert by_digest.digest == registry_images.digests["plain"]


def test_plain_registry_not_named_insecure_is_refused_clearly(
    registries: RegistrySet, registry_images: Pushed
) -> None:
    client = RegistryClient(registries.plain.host, RegistryOptions(attempts=1))
    with pytest.raises(PackcacheError, match=r"TLS to registry .* failed .*or name it insecure"):
        client.manifest("t/app", "1")


def test_tls_basic_registry_with_ca_in_certs_dir_and_docker_config_auths(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.tls_basic
    options = RegistryOptions(
        certs_dir=trusting_certs_dir(tmp_path, registries, registry),
        docker_config_dir=docker_config(
            tmp_path, registry.host, registries.user, registries.password
        ),
    )
    with RegistryClient(registry.host, options) as client:
        assert_is_app(client, registry_images, registry_images.digests["tls-basic"])


def test_tls_registry_without_its_ca_is_refused_unless_insecure(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.tls_basic
    credentials = Credentials(registries.user, registries.password)
    strict = RegistryClient(
        registry.host, RegistryOptions(certs_dir=tmp_path, attempts=1), credentials=credentials
    )
    with pytest.raises(PackcacheError, match="certificate verify failed"):
        strict.manifest("t/app", "1")
    unverified = RegistryClient(
        registry.host,
        RegistryOptions(certs_dir=tmp_path, insecure=frozenset({registry.host})),
        credentials=credentials,
    )
    assert_is_app(unverified, registry_images, registry_images.digests["tls-basic"])


def test_wrong_password_is_one_clear_error(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.tls_basic
    options = RegistryOptions(certs_dir=trusting_certs_dir(tmp_path, registries, registry))
    client = RegistryClient(registry.host, options, credentials=Credentials(registries.user, "no"))
    with pytest.raises(PackcacheError, match=r"refused access to manifest t/app:1 \(HTTP 401"):
        client.manifest("t/app", "1")
    anonymous = RegistryClient(
        registry.host, RegistryOptions(certs_dir=options.certs_dir, docker_config_dir=tmp_path)
    )
    with pytest.raises(PackcacheError, match="asks for a user and password"):
        anonymous.manifest("t/app", "1")


def test_token_registry_fetches_a_pull_token_for_the_repository(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.token
    assert registries.realm is not None
    before = len(registries.realm.requests)
    config = docker_config(tmp_path, registry.host, registries.user, registries.password)
    options = RegistryOptions(insecure=frozenset({registry.host}), docker_config_dir=config)
    with RegistryClient(registry.host, options) as client:
        assert_is_app(client, registry_images, registry_images.digests["token"])
    # One token for the repository scope, reused for the manifest and the config.
    assert registries.realm.requests[before:] == [(registries.user, "repository:t/app:pull")]
    wrong = RegistryClient(
        registry.host,
        RegistryOptions(insecure=frozenset({registry.host})),
        credentials=Credentials(registries.user, "wrong"),
    )
    with pytest.raises(PackcacheError, match=r"token service .* refused the credentials"):
        wrong.manifest("t/app", "1")


def test_credential_helper_from_the_docker_config(
    registries: RegistrySet,
    registry_images: Pushed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = registries.token
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-pctest"
    answer = json.dumps({"ServerURL": registry.host, "Username": registries.user,
                         "Secret": registries.password})  # fmt: skip
    helper.write_text(
        "#!/bin/sh\n"
        f'read host; [ "$1" = get ] && [ "$host" = "{registry.host}" ] || '
        "{ echo 'credentials not found in native keychain'; exit 1; }\n"
        f"echo '{answer}'\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps({"credHelpers": {registry.host: "pctest"}}))
    assert find_credentials(registry.host, config_dir) == Credentials(
        registries.user, registries.password
    )
    (config_dir / "config.json").write_text(json.dumps({"credsStore": "pctest"}))
    assert find_credentials("other.example", config_dir) is None
    options = RegistryOptions(insecure=frozenset({registry.host}), docker_config_dir=config_dir)
    assert_is_app(
        RegistryClient(registry.host, options), registry_images, registry_images.digests["token"]
    )


def test_unknown_repository_tag_and_blob(registries: RegistrySet, registry_images: Pushed) -> None:
    client = plain_client(registries.plain)
    with pytest.raises(NotFoundError, match="manifest t/nothing:1 not found"):
        client.manifest("t/nothing", "1")
    with pytest.raises(NotFoundError, match="manifest t/app:2 not found"):
        client.manifest("t/app", "2")
    absent = "sha256:" + "0" * 64
    assert client.blob_size("t/app", absent) is None
    with pytest.raises(NotFoundError, match="not found"):
        client.open_blob("t/app", absent).read()


def test_registry_that_is_down(registries: RegistrySet) -> None:
    from tests.registries.harness import free_port

    host = f"127.0.0.1:{free_port()}"
    client = RegistryClient(
        host, RegistryOptions(insecure=frozenset({host}), attempts=2, backoff_seconds=0.01)
    )
    with pytest.raises(PackcacheError, match=r"is not reachable \(Connection refused"):
        client.manifest("t/app", "1")


def test_manifest_list_platform_choice(registries: RegistrySet, registry_images: Pushed) -> None:
    client = plain_client(registries.plain)
    amd64 = client.manifest("t/app", "multi")
    assert amd64.digest == registry_images.digests["plain"]
    arm64 = client.manifest("t/app", "multi", Platform.parse("linux/arm64"))
    config = strict_loads(client.read_document_blob("t/app", arm64.config), "config")
    assert config["architecture"] == "arm64"
    assert config["rootfs"]["diff_ids"] == registry_images.arm64.diff_ids
    with pytest.raises(
        NotFoundError,
        match=r"without an image for linux/s390x \(it has: linux/amd64, linux/arm64\)",
    ):
        client.manifest("t/app", "multi", Platform.parse("linux/s390x"))


def test_blobs_stream_into_the_store_with_their_diff_ids(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    client = plain_client(registries.plain)
    manifest = client.manifest("t/app", "1")
    store = Store.open(tmp_path / "cache")
    for layer, diff_id in zip(manifest.layers, registry_images.amd64.diff_ids, strict=True):
        assert client.blob_size("t/app", layer["digest"]) == layer["size"]
        with client.open_blob("t/app", layer["digest"], layer["size"]) as blob:
            staged = store.stage(blob, expected_digest=layer["digest"])
        assert (staged.digest, staged.diff_id, staged.size) == (
            layer["digest"],
            diff_id,
            layer["size"],
        )
        store.discard(staged)


def test_image_name_parsing() -> None:
    assert ImageName.parse("127.0.0.1:5000/t/app:1") == ImageName("127.0.0.1:5000", "t/app", "1")
    assert ImageName.parse("busybox").api_host == "registry-1.docker.io"
    assert ImageName.parse("busybox") == ImageName("docker.io", "library/busybox", "latest")
    digest = "sha256:" + "a" * 64
    assert ImageName.parse(f"localhost:5000/x@{digest}").reference == digest
    with pytest.raises(PackcacheError, match="not a sha256 digest"):
        ImageName.parse("localhost:5000/x@md5:abcd")


def test_blob_download_dropped_mid_way_resumes_with_range(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    manifest = plain_client(registries.plain).manifest("t/app", "1")
    big = max(manifest.layers, key=lambda layer: layer["size"])
    proxy = CuttingProxy(registries.plain.port, cut_after=300_000, cuts=2, blob=big["digest"])
    try:
        client = plain_client_at(proxy.host, backoff_seconds=0.01)
        store = Store.open(tmp_path / "cache")
        with client.open_blob("t/app", big["digest"], big["size"]) as blob:
            staged = store.stage(blob, expected_digest=big["digest"])
            assert blob.drops == 2
        assert staged.size == big["size"]
        store.discard(staged)
    finally:
        proxy.close()
    assert proxy.cuts_done == 2
    ranges = [
        line for line in registries.plain.requests_logged("GET", big["digest"]) if " 206 " in line
    ]
    assert len(ranges) == 2, registries.plain.log_text()[-3000:]


def test_blob_download_that_keeps_dropping_is_one_clear_error(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    manifest = plain_client(registries.plain).manifest("t/app", "1")
    big = max(manifest.layers, key=lambda layer: layer["size"])
    proxy = CuttingProxy(registries.plain.port, cut_after=100_000, cuts=100, blob=big["digest"])
    try:
        client = plain_client_at(proxy.host, attempts=3, backoff_seconds=0.01)
        store = Store.open(tmp_path / "cache")
        with (
            pytest.raises(PackcacheError, match=r"kept breaking off \(3 times"),
            client.open_blob("t/app", big["digest"], big["size"]) as blob,
        ):
            store.stage(blob, expected_digest=big["digest"])
        assert store.partials() == []
    finally:
        proxy.close()


def plain_client_at(host: str, **options: object) -> RegistryClient:
    return RegistryClient(host, RegistryOptions(insecure=frozenset({host}), **options))  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [503, 429, 502])
def test_overloaded_registry_is_retried_with_backoff(
    registries: RegistrySet, registry_images: Pushed, status: int
) -> None:
    proxy = CuttingProxy(
        registries.plain.port, cut_after=0, cuts=2, answer_status=status, match="/manifests/1 "
    )
    try:
        client = plain_client_at(proxy.host, attempts=3, backoff_seconds=0.01)
        assert client.manifest("t/app", "1").digest == registry_images.digests["plain"]
        assert proxy.cuts_done == 2
        proxy.cuts_left = 5
        with pytest.raises(PackcacheError, match=f"answered HTTP {status} for manifest t/app:1"):
            client.manifest("t/app", "1")
    finally:
        proxy.close()


def test_manifest_bytes_not_matching_their_digest_are_refused(
    registries: RegistrySet, registry_images: Pushed
) -> None:
    body = plain_client(registries.plain).manifest("t/app", "1").body
    # The answer's headers are a few hundred bytes: this offset lands in the body's tail.
    proxy = CuttingProxy(
        registries.plain.port, cut_after=len(body) + 100, cuts=1, flip_only=True,
        match="/manifests/1 ",
    )  # fmt: skip
    try:
        client = plain_client_at(proxy.host)
        with pytest.raises(PackcacheError, match=r"served manifest t/app:1 with digest sha256:"):
            client.manifest("t/app", "1")
        assert proxy.cuts_done == 1
    finally:
        proxy.close()


def test_anonymous_token_for_a_public_repository(
    registries: RegistrySet, registry_images: Pushed, tmp_path: Path
) -> None:
    registry = registries.token
    realm = registries.realm
    assert realm is not None
    options = RegistryOptions(insecure=frozenset({registry.host}), docker_config_dir=tmp_path)
    with pytest.raises(PackcacheError, match=r"refused the credentials \(none given\)"):
        RegistryClient(registry.host, options).manifest("t/app", "1")
    realm.anonymous_pull = True
    try:
        before = len(realm.requests)
        client = RegistryClient(registry.host, options)
        assert_is_app(client, registry_images, registry_images.digests["token"])
        assert realm.requests[before:] == [("", "repository:t/app:pull")]
    finally:
        realm.anonymous_pull = False
