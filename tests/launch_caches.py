"""Launch cache volumes for tests and benches, filled as pack's builds leave them."""

from __future__ import annotations

from pathlib import Path

from tests.engines.harness import Engine


def fill_volume(engine: Engine, volume: str, source: Path, with_image: str) -> None:
    """Create `volume` holding the files under `source`, copied in through a container
    created (never started) from `with_image`, an image the daemon holds."""
    engine.docker("volume", "create", volume)
    filler = (
        engine.docker("create", "--pull", "never", "-v", f"{volume}:/launch", with_image, "true")
        .stdout.decode()
        .strip()
    )
    try:
        engine.docker("cp", f"{source}/.", f"{filler}:/launch/")
    finally:
        engine.docker("rm", "-f", filler)
