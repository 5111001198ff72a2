"""pytest fixtures for real test registries (see tests/registries/harness.py).

Enable with ``pytest_plugins = ["tests.registries.pytest_plugin"]`` in tests/conftest.py.

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
from pathlib import Path

import pytest

from tests.registries.harness import RegistrySet

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
