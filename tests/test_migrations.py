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


def test_an_older_index_is_upgraded_when_opened_and_keeps_its_data(cache_dir) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    cache_dir.mkdir(parents=True)
    engine = create_engine(f"sqlite:///{cache_dir / 'index.db'}")
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001_initial")
        conn.exec_driver_sql(
            "INSERT INTO layers (diff_id, first_seen, access_count) VALUES ('sha256:x', 0, 0)"
        )
    engine.dispose()
    store = Store.open(cache_dir)
    with store.db.read() as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
            HEAD_REVISION,
        )
        assert conn.execute("SELECT diff_id FROM layers").fetchall() == [("sha256:x",)]
        assert conn.execute("SELECT COUNT(*) FROM input_layers").fetchone() == (0,)
