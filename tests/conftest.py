from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from packcache.cli import app
from packcache.store.store import ImageRecord, Store
from tests.layers import compress, random_tar, sha256

pytest_plugins = ["tests.engines.pytest_plugin", "tests.registries.pytest_plugin"]


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def store(cache_dir: Path) -> Store:
    return Store.open(cache_dir)


@pytest.fixture
def cli(cache_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Run the real CLI in-process against the test's cache dir, like sqlite-utils' tests."""
    monkeypatch.delenv("PACKCACHE_MAX_SIZE", raising=False)
    # Nothing in the tests may reach a public registry: a rebase that names no pull policy
    # uses the daemon's images only (pack's config key; tests of pulls name their policy).
    pack_home = tmp_path_factory.mktemp("pack-home")
    (pack_home / "config.toml").write_text('pull-policy = "never"\n')
    monkeypatch.setenv("PACK_HOME", str(pack_home))
    runner = CliRunner()

    def run(*args: str, cache: Path | None = None) -> CliResult:
        result = runner.invoke(app, ["--cache-dir", str(cache or cache_dir), *args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return run


def add_image(
    store: Store,
    layer_tars: list[bytes],
    refs: list[str],
    compression: str = "gzip",
    engine: str = "",
) -> tuple[str, list[str]]:
    """Ingest layers and record an image made of them. Returns (config digest, diffIDs)."""
    diff_ids = []
    for tar in layer_tars:
        result = store.ingest_layer(io.BytesIO(compress(tar, compression)))
        diff_ids.append(result.diff_id)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {"Labels": {"test": "yes"}},
        }
    ).encode()
    digest = store.record_image(ImageRecord(config=config, engine=engine, refs=refs))
    assert digest == sha256(config)
    return digest, diff_ids


@pytest.fixture
def two_images(store: Store):
    """base:1 (2 layers) and app:1 (base's 2 layers + 2 of its own)."""
    base_layers = [random_tar(50_000, seed=b"base0"), random_tar(70_000, seed=b"base1")]
    app_layers = [random_tar(20_000, seed=b"app0"), random_tar(30_000, seed=b"app1")]
    base = add_image(store, base_layers, ["base:1"])
    app_image = add_image(store, base_layers + app_layers, ["app:1", "registry.local/app:1"])
    return base, app_image
