"""The index schema comes from migrations/ and matches the tables the code describes.

`python -m tests.test_migrations` rewrites packcache/store/schema_head.sql (the schema new
caches are created with) from the migrations, after a new one is added.
"""

from __future__ import annotations

import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from packcache.store.database import HEAD_REVISION, HEAD_SCHEMA_SQL, _upgrade, migrations_dir
from packcache.store.schema import metadata
from packcache.store.store import Store


def test_head_revision_constant_matches_the_migrations() -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


GENERATED_HEADER = (
    "-- Generated from migrations/ by `python -m tests.test_migrations`: do not edit. The schema\n"
    "-- a person edits is packcache/store/schema.py; a change to it is a new migration.\n\n"
)


def schema_sql_from_migrations() -> str:
    """The CREATE statements Alembic's upgrade to head leaves in a new database, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "index.db"
        _upgrade(db_path)
        with closing(sqlite3.connect(db_path)) as conn:
            statements = [
                sql
                for (sql,) in conn.execute(
                    "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
                )
            ]
    return GENERATED_HEADER + "".join(f"{sql};\n\n" for sql in statements)


def schema_of(db_path: Path) -> list[tuple]:
    with closing(sqlite3.connect(db_path)) as conn:
        return conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()


def test_new_caches_get_exactly_the_schema_the_migrations_make(cache_dir, tmp_path) -> None:
    assert HEAD_SCHEMA_SQL.read_text() == schema_sql_from_migrations(), (
        "packcache/store/schema_head.sql is stale: run `python -m tests.test_migrations`"
    )
    Store.open(cache_dir)  # a new cache: created from schema_head.sql
    _upgrade(tmp_path / "migrated.db")  # every migration, through Alembic
    assert schema_of(cache_dir / "index.db") == schema_of(tmp_path / "migrated.db")


def test_migrated_schema_matches_the_code(cache_dir) -> None:
    store = Store.open(cache_dir)
    with store.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_the_migrations_at_head_match_the_code(tmp_path) -> None:
    """schema.py is what a person edits: Alembic's own comparison finds nothing between it and
    a database every migration has run on (types and defaults included)."""
    from sqlalchemy import create_engine

    _upgrade(tmp_path / "migrated.db")
    engine = create_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, metadata) == []
    engine.dispose()


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


if __name__ == "__main__":
    HEAD_SCHEMA_SQL.write_text(schema_sql_from_migrations())
    print(f"wrote {HEAD_SCHEMA_SQL}")
