"""Opening the SQLite index: pragmas, transaction mode, and automatic schema upgrades."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import NullPool

from packcache.errors import IndexError_
from packcache.store.locking import CacheLock
from packcache.store.schema import HEAD_REVISION

SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 60.0


def _migrations_dir() -> Path:
    installed = Path(__file__).resolve().parents[1] / "_migrations"  # inside a built wheel
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "migrations"  # a source checkout


def _make_engine(db_path: Path) -> Engine:
    engine = create_engine(
        f"sqlite:///{db_path}",
        poolclass=NullPool,  # one connection per use: safe across fork and cheap for SQLite
        connect_args={"timeout": BUSY_TIMEOUT_S},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit BEGIN is DEFERRED and too late).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a committed eviction must survive power loss, or rows would outlive their files.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front (IMMEDIATE) so two writers never deadlock on an
        # upgrade from a read lock; readers stay DEFERRED and never block anyone under WAL.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _check_is_sqlite(db_path: Path) -> None:
    try:
        with open(db_path, "rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise IndexError_(f"cannot read the index {db_path}: {exc.strerror}") from exc
    if head and head != SQLITE_MAGIC:
        raise IndexError_(f"{db_path} is not a packcache index (not an SQLite database)")


def _current_revision(engine: Engine, db_path: Path) -> str | None:
    """The database's Alembic revision; None for a new, empty database."""
    try:
        with engine.connect() as conn:
            tables = {
                row[0]
                for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if not tables:
                return None
            if "alembic_version" not in tables:
                raise IndexError_(
                    f"{db_path} is not a packcache index (it has tables "
                    f"{', '.join(sorted(tables))} but no packcache schema revision)"
                )
            row = conn.exec_driver_sql("SELECT version_num FROM alembic_version").first()
            return row[0] if row else None
    except IndexError_:
        raise
    except Exception as exc:  # sqlite3.DatabaseError and friends, wrapped by SQLAlchemy
        raise IndexError_(f"cannot read the index {db_path}: {exc}") from exc


def _upgrade(engine: Engine) -> None:
    from alembic import command  # imported only when a migration is due: it is slow to import
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_migrations_dir()))
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        conn.commit()


def open_database(db_path: Path, lock: CacheLock) -> Engine:
    """Return an engine for the index at `db_path`, created or upgraded to HEAD_REVISION."""
    if db_path.exists():
        _check_is_sqlite(db_path)
    engine = _make_engine(db_path)
    if _current_revision(engine, db_path) == HEAD_REVISION:
        return engine
    with lock.exclusive():  # one process migrates; the others wait and then find it current
        revision = _current_revision(engine, db_path)
        if revision == HEAD_REVISION:
            return engine
        if revision is not None and not (_migrations_dir() / "versions").exists():
            raise IndexError_(f"no migrations found to upgrade {db_path}")
        try:
            _upgrade(engine)
        except Exception as exc:
            raise IndexError_(
                f"cannot upgrade the index {db_path} from revision {revision}: {exc} "
                "(was it written by a newer packcache?)"
            ) from exc
    return engine


def writing(engine: Engine) -> Connection:
    """A connection whose transactions take SQLite's write lock at BEGIN."""
    return engine.connect().execution_options(sqlite_begin="IMMEDIATE")
