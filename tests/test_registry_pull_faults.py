"""`packcache pull` against registries that fail: each fault is one clear error line, exit 1
(2 for a reference that is not one: the command line is wrong), and nothing half-cached."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from packcache.store.store import Store
from packcache.transports.registry import RegistryClient, RegistryOptions
from tests.layers import random_tar
from tests.registries import uploading
from tests.registries.faults import CuttingProxy
from tests.registries.harness import free_port

if TYPE_CHECKING:
    from tests.registries.harness import RegistrySet
    from tests.registries.pytest_plugin import Pushed

pytestmark = pytest.mark.engine


def assert_nothing_cached(cache_dir: Path, registry_images: Pushed) -> None:
    store = Store.open(cache_dir)
    assert store.cached_diff_ids(registry_images.amd64.diff_ids) == set()
    assert store.partials() == []


def assert_one_error(result, code: int, message: str) -> None:
    assert result.exit_code == code, result.stdout
    assert result.stderr.startswith("packcache: error: ")
    assert message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


def biggest_layer(registries: RegistrySet, tag: str = "1") -> dict:
    host = registries.plain.host
    with RegistryClient(host, RegistryOptions(insecure=frozenset({host}))) as client:
        return max(client.manifest("t/app", tag).layers, key=lambda layer: layer["size"])


def test_wrong_password(
    cli, cache_dir: Path, tmp_path: Path, registries: RegistrySet, registry_images: Pushed,
    monkeypatch,
) -> None:  # fmt: skip
    token = registries.token
    config = tmp_path / "docker"
    config.mkdir()
    auth = base64.b64encode(f"{registries.user}:wrong".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {token.host: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    result = cli("pull", "--insecure-registry", token.host, f"{token.host}/t/app:1")
    assert_one_error(result, 1, f"the token service of {token.host} refused the credentials")
    assert_nothing_cached(cache_dir, registry_images)


def test_bytes_not_matching_the_digest(
    cli, cache_dir: Path, registries: RegistrySet, registry_images: Pushed
) -> None:
    # t/app:cd's layers are uncompressed: the flipped bit reaches the digest check.
    big = biggest_layer(registries, "cd")
    proxy = CuttingProxy(
        registries.plain.port, cut_after=200_000, cuts=1, flip_only=True, blob=big["digest"]
    )
    try:
        result = cli("pull", "--insecure-registry", proxy.host, f"{proxy.host}/t/app:cd")
    finally:
        proxy.close()
    assert proxy.cuts_done == 1
    assert_one_error(result, 1, "do not match their digest")
    assert_nothing_cached(cache_dir, registry_images)


def test_a_connection_dropped_mid_blob_is_resumed(
    cli, cache_dir: Path, registries: RegistrySet, tmp_path: Path
) -> None:
    # An image of its own: the other tests count the Range requests on t/app's blobs.
    registry = registries.plain
    tar = random_tar(1_500_000, seed=b"resume" + tmp_path.name.encode())
    image = uploading.upload_oci_image(registry.url, "t/resume", "1", [tar], ["none"])
    proxy = CuttingProxy(registry.port, cut_after=300_000, cuts=2, blob=image.layer_digests[0])
    try:
        ref = f"{proxy.host}/t/resume:1"
        result = cli("pull", "--insecure-registry", proxy.host, ref, "--format", "json")
    finally:
        proxy.close()
    assert result.exit_code == 0, result.stderr
    assert proxy.cuts_done == 2
    store = Store.open(cache_dir)
    assert store.cached_diff_ids(image.diff_ids) == set(image.diff_ids)
    assert store.resolve_image(ref) == image.config_digest


def test_a_connection_that_keeps_dropping_records_nothing(
    cli, cache_dir: Path, registries: RegistrySet, tmp_path: Path
) -> None:
    registry = registries.plain
    tar = random_tar(1_500_000, seed=b"drops" + tmp_path.name.encode())
    image = uploading.upload_oci_image(registry.url, "t/drops", "1", [tar], ["none"])
    digest = image.layer_digests[0]
    proxy = CuttingProxy(registry.port, cut_after=100_000, cuts=1000, blob=digest)
    try:
        result = cli("pull", "--insecure-registry", proxy.host, f"{proxy.host}/t/drops:1")
    finally:
        proxy.close()
    assert_one_error(result, 1, f"blob {digest} from {proxy.host} kept breaking off")
    store = Store.open(cache_dir)
    assert store.cached_diff_ids(image.diff_ids) == set() and store.partials() == []


def test_a_registry_that_is_down(cli, cache_dir: Path, registry_images: Pushed) -> None:
    down = f"127.0.0.1:{free_port()}"
    result = cli("pull", "--insecure-registry", down, f"{down}/t/app:1")
    assert_one_error(result, 1, f"registry {down} is not reachable")
    assert_nothing_cached(cache_dir, registry_images)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("{plain}/t/nothing:1", "manifest t/nothing:1 not found on {plain}"),
        ("{plain}/t/app:nope", "manifest t/app:nope not found on {plain}"),
        ("{plain}/t/app:", "invalid image reference"),
        ("{plain}/t/app@sha256:1234", "not a sha256 digest"),
    ],
)
def test_unknown_and_invalid_references(
    cli, cache_dir: Path, registries: RegistrySet, registry_images: Pushed, ref: str, message: str
) -> None:
    """Unknown is a failure (1); not a reference at all is a usage error (2), as for every
    command that takes an image name (rebase --tag Bad/Name is 2 too)."""
    plain = registries.plain.host
    result = cli("pull", "--insecure-registry", plain, ref.format(plain=plain))
    assert_one_error(result, 2 if "invalid" in message or "sha256" in message else 1,
                     message.format(plain=plain))  # fmt: skip
    assert_nothing_cached(cache_dir, registry_images)


def test_a_list_without_the_wanted_platform(
    cli, cache_dir: Path, registries: RegistrySet, registry_images: Pushed
) -> None:
    plain = registries.plain.host
    result = cli("pull", "--insecure-registry", plain, "--platform", "linux/ppc64le",
                 f"{plain}/t/app:multi")  # fmt: skip
    assert_one_error(result, 1, "is a list without an image for linux/ppc64le (it has: ")
    assert_nothing_cached(cache_dir, registry_images)
