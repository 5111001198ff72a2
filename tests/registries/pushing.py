"""Put test images into the test registries with an engine's own `docker push`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tests.engines import images
from tests.engines.harness import Engine
from tests.engines.images import BuiltImage

if TYPE_CHECKING:
    from tests.registries.harness import Registry, RegistrySet


def docker_login(engine: Engine, registries: RegistrySet, registry: Registry) -> None:
    if registry.kind == "plain":
        return
    engine.docker(
        "login", "--username", registries.user, "--password-stdin", registry.host,
        input=registries.password.encode(),
    )  # fmt: skip


def push(
    engine: Engine, registries: RegistrySet, registry: Registry, built: BuiltImage, ref: str
) -> str:
    """Load `built` into the engine, push it as `ref` (repo:tag on the registry); its digest."""
    engine.docker("load", "-i", str(built.path))
    target = f"{registry.host}/{ref}"
    engine.docker("tag", built.repo_tag, target)
    docker_login(engine, registries, registry)
    try:
        out = engine.docker("push", target).stdout.decode()
    finally:
        engine.docker("rmi", target)
    digest = out.rsplit("digest: ", 1)[1].split()[0]
    assert digest.startswith("sha256:"), out
    return digest


def build_app(tmp: Path, tag: str, seed: str, architecture: str | None = None) -> BuiltImage:
    """busybox + two small layers (one a few MiB, so blobs take several chunks)."""
    big = bytes((i * 7 + len(seed)) % 251 for i in range(3 << 20))
    layers = [{"app/seed": seed.encode()}, {"app/big.bin": big}]
    extra = {"architecture": architecture} if architecture else None
    return images.build_busybox_archive(tmp / f"{seed}.tar", tag, layers, config_extra=extra)


def push_index(engine: Engine, registry: Registry, list_ref: str, refs: list[str]) -> None:
    """A manifest list of already pushed images, made with `docker manifest` (plain HTTP)."""
    target = f"{registry.host}/{list_ref}"
    members = [f"{registry.host}/{r}" for r in refs]
    engine.docker("manifest", "create", "--insecure", target, *members)
    engine.docker("manifest", "push", "--insecure", "--purge", target)
