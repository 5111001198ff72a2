"""The index schema comes from migrations/ and matches the tables the code describes."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from packcache.store.database import HEAD_REVISION, migrations_dir
from packcache.store.schema import metadata
from packcache.store.store import Store


def test_head_revision_constant_matches_the_migrations() -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


def test_migrated_schema_matches_the_code(cache_dir) -> None:
    store = Store.open(cache_dir)
    with store.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_opening_a_new_cache_creates_it_private(cache_dir) -> None:
    Store.open(cache_dir)
    assert cache_dir.stat().st_mode & 0o777 == 0o700
    assert (cache_dir / "blobs" / "sha256").is_dir()
    assert (cache_dir / "ingest").is_dir()
    store = Store.open(cache_dir)  # a second open finds it current
    with store.db.read() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
            HEAD_REVISION,
        )
