"""Smoke tests: each test registry starts, answers as configured, and takes a `docker push`."""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.engines import images
from tests.registries.harness import LOCALHOST, Registry

if TYPE_CHECKING:
    from tests.engines.pytest_plugin import EnginePool
    from tests.registries.harness import RegistrySet

pytestmark = pytest.mark.engine
ENGINE = "26.1-graphdriver"


def push_tiny_image(engine_pool: EnginePool, tmp_path: Path, registry: Registry, repo: str) -> str:
    engine = engine_pool.get(ENGINE)
    built = images.build_busybox_archive(tmp_path / "tiny.tar", "smoke/tiny:1", [{"f": b"tiny"}])
    engine.docker("load", "-i", str(built.path))
    ref = f"{registry.host}/{repo}:1"
    engine.docker("tag", built.repo_tag, ref)
    try:
        out = engine.docker("push", ref).stdout.decode()
    finally:
        engine.docker("rmi", ref)
    assert "digest: sha256:" in out
    return ref


def docker_login(engine_pool: EnginePool, registries: RegistrySet, registry: Registry) -> None:
    engine_pool.get(ENGINE).docker(
        "login", "--username", registries.user, "--password-stdin", registry.host,
        input=registries.password.encode(),
    )  # fmt: skip


def test_plain_registry_takes_a_docker_push(
    registries: RegistrySet, engine_pool: EnginePool, tmp_path: Path
) -> None:
    registry = registries.plain
    assert registry.status("/v2/") == 200
    push_tiny_image(engine_pool, tmp_path, registry, "smoke/plain")
    assert registry.requests_logged("PUT", "/v2/smoke/plain/manifests/1")
    assert registry.requests_logged("PUT", "/v2/smoke/plain/blobs/uploads/")


def test_tls_registry_is_trusted_through_its_ca_only(registries: RegistrySet) -> None:
    registry = registries.tls_basic
    assert registries.ca is not None
    trusting = ssl.create_default_context(cafile=str(registries.ca.cert_path))
    conn = http.client.HTTPSConnection(LOCALHOST, registry.port, timeout=10, context=trusting)
    conn.request("GET", "/v2/")
    response = conn.getresponse()
    assert response.status == 401
    assert response.getheader("WWW-Authenticate", "").startswith("Basic ")
    conn.close()
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusting = ssl.create_default_context()
        conn = http.client.HTTPSConnection(LOCALHOST, registry.port, timeout=10, context=untrusting)
        conn.request("GET", "/v2/")


def test_tls_basic_registry_takes_a_docker_push_after_login(
    registries: RegistrySet, engine_pool: EnginePool, tmp_path: Path
) -> None:
    registry = registries.tls_basic
    assert registry.status("/v2/") == 401
    # dockerd treats 127.0.0.0/8 as insecure: HTTPS without verification, so no certs.d needed.
    docker_login(engine_pool, registries, registry)
    push_tiny_image(engine_pool, tmp_path, registry, "smoke/tls")
    assert registry.requests_logged("PUT", "/v2/smoke/tls/manifests/1")


def test_token_registry_takes_a_docker_push_with_realm_tokens(
    registries: RegistrySet, engine_pool: EnginePool, tmp_path: Path
) -> None:
    registry = registries.token
    assert registry.status("/v2/") == 401
    docker_login(engine_pool, registries, registry)
    push_tiny_image(engine_pool, tmp_path, registry, "smoke/token")
    assert registry.requests_logged("PUT", "/v2/smoke/token/manifests/1")
    assert registries.realm is not None
    scopes = [scope for _, scope in registries.realm.requests]
    assert any("repository:smoke/token:" in s and "push" in s for s in scopes), scopes


def test_token_registry_refuses_a_wrong_password(registries: RegistrySet, engine_pool) -> None:
    registry = registries.token
    result = engine_pool.get(ENGINE).docker(
        "login", "--username", registries.user, "--password-stdin", registry.host,
        input=b"wrong", check=False,
    )  # fmt: skip
    assert result.returncode != 0
