"""The Docker engines packcache's test suite runs against, for `packcache --version`.

tests/test_cli_version.py holds this list to the test engines' definitions
(tests/engines/harness.py's ENGINE_KINDS) and to the API version each running engine reports.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TestedEngine:
    version: str  # Docker Engine release line: "26.1" is every 26.1.x
    api_version: str  # the API version the engine reports (its newest)
    image_stores: tuple[str, ...]  # "graphdriver" (overlay2) and/or "containerd"


TESTED_ENGINES = (
    TestedEngine("20.10", "1.41", ("graphdriver",)),
    TestedEngine("26.1", "1.45", ("graphdriver", "containerd")),
    TestedEngine("28", "1.51", ("containerd",)),
)
