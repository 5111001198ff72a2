"""pytest fixtures for private Docker engines.

Enable with ``pytest_plugins = ["tests.engines.pytest_plugin"]`` in tests/conftest.py.

* ``engine``: session-scoped, parametrized over every engine kind (ids are the kind
  names).
* ``engine_pool``: the session's engines by kind, e.g. ``engine_pool.get("26.1-containerd")``
  for tests that need a specific engine or two engines at once.

Engines start lazily (first test that needs one) and are stopped at session end, and
also from atexit if the session is interrupted.  An engine that is not provisioned (or
does not start) FAILS the test: in CI a missing engine is an error, never a skip.
"""

from __future__ import annotations

import atexit
import threading
import time
from pathlib import Path

import pytest

from tests.engines import provision
from tests.engines.harness import (
    ENGINE_KINDS,
    REQUIRED_KINDS,
    Engine,
    EngineError,
)


class EnginePool:
    """Started engines by kind; each kind is started at most once per session."""

    def __init__(self) -> None:
        self._engines: dict[str, Engine] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self.start_seconds: dict[str, float] = {}

    def get(self, kind: str) -> Engine:
        with self._lock:
            if kind in self._engines:
                return self._engines[kind]
            if kind in self._errors:  # do not retry a 60 s start timeout for every test
                pytest.fail(self._errors[kind], pytrace=False)
            try:
                self._engines[kind] = self._start(kind)
                return self._engines[kind]
            except (EngineError, OSError) as exc:
                self._errors[kind] = f"engine {kind!r} did not start: {exc}"
            # Outside the except block: no "during handling of..." chain in the report.
            pytest.fail(self._errors[kind], pytrace=False)

    def _start(self, kind: str) -> Engine:
        if kind not in ENGINE_KINDS:
            raise EngineError(f"unknown engine kind {kind!r}")
        eng = Engine(kind)
        if not eng.is_provisioned():
            raise EngineError(
                f"not provisioned in {eng.engines_dir}. Run (as root, from the repo root): "
                "`python -m tests.engines.provision`"
            )
        t0 = time.monotonic()
        eng.start()
        self.start_seconds[kind] = time.monotonic() - t0
        return eng

    def running(self) -> list[Engine]:
        return list(self._engines.values())

    def stop_all(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for eng in engines:
            try:
                eng.stop()
            except Exception as exc:  # keep stopping the others
                print(f"warning: stopping engine {eng.kind} failed: {exc}")


_POOL = EnginePool()
# Runs on normal interpreter exit, including after Ctrl-C; a SIGKILLed pytest is
# covered by PR_SET_PDEATHSIG in the harness.
atexit.register(_POOL.stop_all)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "engine: the test runs against private Docker engines (tests/engines)"
    )


_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests using an engine fixture, and every test in this folder, get the marker,
    # so `-m engine` / `-m "not engine"` select them.
    for item in items:
        names = getattr(item, "fixturenames", ())
        in_here = _HERE in item.path.resolve().parents
        if in_here or "engine" in names or "engine_pool" in names:
            item.add_marker(pytest.mark.engine)


def pytest_report_header(config: pytest.Config) -> str:
    d = provision.default_dir()
    status = ", ".join(
        f"{k}={'ok' if Engine(k, engines_dir=d).is_provisioned() else 'MISSING'}"
        for k in REQUIRED_KINDS
    )
    return f"packcache engines ({d}): {status}"


@pytest.fixture(scope="session")
def engine_pool(request: pytest.FixtureRequest) -> EnginePool:
    request.addfinalizer(_POOL.stop_all)
    return _POOL


@pytest.fixture(scope="session", params=REQUIRED_KINDS, ids=REQUIRED_KINDS)
def engine(request: pytest.FixtureRequest, engine_pool: EnginePool) -> Engine:
    return engine_pool.get(request.param)
