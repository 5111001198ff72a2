"""Opening the SQLite index: pragmas, transaction mode, and automatic schema upgrades.

SQLAlchemy (with Alembic) owns the schema, the migrations and the maintenance writes
(evictions, image removal, repairs). Reads and the writes every import, load, rebase and
create-builder makes use the sqlite3 driver directly: importing SQLAlchemy alone takes 0.16 s on
this machine, half of the 0.3 s `ls`/`du` may take on a 100,000-layer index and 4-8% of a warm
rebase or builder. Both go through `connect`, so every connection gets the same pragmas.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from packcache.errors import IndexError_, PackcacheError
from packcache.store.locking import CacheLock

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

# The newest migration. Opening a cache compares it with the database's revision, so the common
# case (already current) needs neither Alembic nor SQLAlchemy; a test keeps it equal to
# Alembic's head.
HEAD_REVISION = "0002_input_layers"
SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 60.0


def migrations_dir() -> Path:
    installed = Path(__file__).resolve().parents[1] / "_migrations"  # inside a built wheel
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "migrations"  # a source checkout


def connect(db_path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN ourselves) with the index's pragmas."""
    conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA foreign_keys=ON")
    # FULL: a committed eviction must survive power loss, or rows would outlive their files.
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _check_is_sqlite(db_path: Path) -> None:
    try:
        with open(db_path, "rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise IndexError_(f"cannot read the index {db_path}: {exc.strerror}") from exc
    if head and head != SQLITE_MAGIC:
        raise IndexError_(f"{db_path} is not a packcache index (not an SQLite database)")


def _revision(conn: sqlite3.Connection, db_path: Path) -> str | None:
    """The database's Alembic revision; None for a new, empty database."""
    try:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if not tables:
            return None
        if "alembic_version" not in tables:
            raise IndexError_(
                f"{db_path} is not a packcache index (it has tables "
                f"{', '.join(sorted(tables))} but no packcache schema revision)"
            )
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
    except sqlite3.Error as exc:
        raise IndexError_(f"cannot read the index {db_path}: {exc}") from exc


# The schema at HEAD_REVISION as SQL, for new caches: running the migrations through Alembic
# costs 0.32 s (mostly importing it and SQLAlchemy), a twentieth of a cold import. A test
# checks this file creates exactly the schema the migrations create.
HEAD_SCHEMA_SQL = Path(__file__).with_name("schema_head.sql")


def _create_at_head(db_path: Path) -> None:
    """Create the schema of a new, empty index in one transaction: all of it, or nothing."""
    conn = connect(db_path)
    try:
        conn.executescript(
            f"BEGIN IMMEDIATE;\n{HEAD_SCHEMA_SQL.read_text()}\n"
            f"INSERT INTO alembic_version (version_num) VALUES ('{HEAD_REVISION}');\nCOMMIT;"
        )
    finally:
        conn.close()


def _upgrade(db_path: Path) -> None:
    # Imported only when a migration is due: Alembic and SQLAlchemy are slow to import.
    from alembic import command
    from alembic.config import Config

    engine = make_engine(db_path)
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        conn.commit()
    engine.dispose()


class Database:
    """The index file: sqlite3 connections for reads and fast writes (`read`, `write_plain`),
    a SQLAlchemy engine, made on first use, for the others (`write`). Opening it creates or
    upgrades the schema to HEAD_REVISION."""

    def __init__(self, db_path: Path, lock: CacheLock) -> None:
        self.path = db_path
        self._engine: Engine | None = None
        if db_path.exists():
            _check_is_sqlite(db_path)
        try:
            conn = connect(db_path)
        except sqlite3.Error as exc:
            raise IndexError_(f"cannot open the index {db_path}: {exc}") from exc
        try:
            if _revision(conn, db_path) == HEAD_REVISION:
                return
        finally:
            conn.close()
        with lock.exclusive():  # one process migrates; the others wait, then find it current
            conn = connect(db_path)
            try:
                revision = _revision(conn, db_path)
            finally:
                conn.close()
            if revision == HEAD_REVISION:
                return
            try:
                if revision is None:
                    _create_at_head(db_path)
                else:
                    _upgrade(db_path)
            except Exception as exc:
                if revision is None:
                    raise IndexError_(f"cannot create the index {db_path}: {exc}") from exc
                raise IndexError_(
                    f"cannot upgrade the index {db_path} from revision {revision}: {exc} "
                    "(was it written by a newer packcache?)"
                ) from exc

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads (WAL: never blocks, never blocked by writers)."""
        conn = connect(self.path)
        try:
            yield conn
        finally:
            conn.close()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.path)
        return self._engine

    @contextmanager
    def write_plain(self) -> Iterator[sqlite3.Connection]:
        """A sqlite3 connection in an IMMEDIATE transaction, committed on success: for the
        writes on the paths that must be fast (see store.py), without SQLAlchemy's import."""
        conn = connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite ends it itself on some errors (disk full)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A SQLAlchemy connection in a transaction that took SQLite's write lock at BEGIN, so
        two writers never deadlock upgrading from a read lock. Commits on success."""
        with self.engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn


def open_cache(root: Path) -> Database:
    """Create the cache directory if needed, check it is writable, open (or create) its index."""
    from packcache.store.blobs import BlobFiles

    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        BlobFiles(root).create_dirs()
        probe = root / "ingest" / f".probe-{os.getpid()}-{secrets.token_hex(4)}"
        probe.touch()  # root ignores permission bits: only a real write tells
        probe.unlink()
    except OSError as exc:
        raise PackcacheError(
            f"cache directory {root} is not writable: {exc.strerror or exc}"
        ) from exc
    return Database(root / "index.db", CacheLock(root / "lock"))


def make_engine(db_path: Path) -> Engine:
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool

    engine = create_engine(
        "sqlite://",
        creator=lambda: connect(db_path),
        poolclass=NullPool,  # one connection per use: safe across fork and cheap for SQLite
    )

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # The driver is in autocommit mode, so transactions start here: DEFERRED for reads,
        # IMMEDIATE for `Database.write`.
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', '')}")

    return engine
