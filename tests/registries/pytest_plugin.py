"""pytest fixtures for real test registries (see tests/registries/harness.py).

Enable with ``pytest_plugins = ["tests.registries.pytest_plugin"]`` in tests/conftest.py.

* ``registry_images``: session-scoped :class:`Pushed`: test images pushed once with the
  engines' own `docker push` (see the fixture for what is where).
* ``registries``: session-scoped :class:`RegistrySet`; ``registries.plain``,
  ``registries.tls_basic`` and ``registries.token`` start on first use and stop (by pid) at
  session end, or from atexit if the session is interrupted. A registry that is not
  provisioned or does not start fails the test (never a skip).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.engines.images import BuiltImage
from tests.registries import pushing
from tests.registries.harness import RegistrySet

if TYPE_CHECKING:
    from tests.engines.pytest_plugin import EnginePool

_SETS: list[RegistrySet] = []


def _stop_all() -> None:
    for registry_set in _SETS:
        registry_set.stop_all()


atexit.register(_stop_all)


@pytest.fixture(scope="session")
def registries() -> Iterator[RegistrySet]:
    root = Path(tempfile.mkdtemp(prefix="pcreg-"))
    registry_set = RegistrySet(root)
    _SETS.append(registry_set)
    try:
        yield registry_set
    finally:
        registry_set.stop_all()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Pushed:
    amd64: BuiltImage
    arm64: BuiltImage
    # "plain", "tls-basic", "token": manifest digest of t/app:1 (pushed by 26.1-graphdriver,
    # gzip layers); "plain-containerd": of t/app:cd on the plain registry, the same image
    # pushed by 26.1-containerd (uncompressed layers).
    digests: dict[str, str]


@pytest.fixture(scope="session")
def registry_images(
    registries: RegistrySet, engine_pool: EnginePool, tmp_path_factory: pytest.TempPathFactory
) -> Pushed:
    """t/app:1 on every registry; t/app:arm64 and the list t/app:multi (amd64 + arm64) and
    t/app:cd on the plain one."""
    graphdriver = engine_pool.get("26.1-graphdriver")
    tmp = tmp_path_factory.mktemp("pushed")
    amd64 = pushing.build_app(tmp, "t/app:amd64", "amd64")
    arm64 = pushing.build_app(tmp, "t/app:arm64", "arm64", "arm64")
    digests = {}
    for kind in ("plain", "tls-basic", "token"):
        digests[kind] = pushing.push(
            graphdriver, registries, registries.get(kind), amd64, "t/app:1"
        )
    pushing.push(graphdriver, registries, registries.plain, arm64, "t/app:arm64")
    pushing.push_index(graphdriver, registries.plain, "t/app:multi", ["t/app:1", "t/app:arm64"])
    containerd = engine_pool.get("26.1-containerd")
    digests["plain-containerd"] = pushing.push(
        containerd, registries, registries.plain, amd64, "t/app:cd"
    )
    return Pushed(amd64, arm64, digests)
