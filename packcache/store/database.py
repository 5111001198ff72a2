"""Opening the SQLite index: pragmas, transaction mode, and automatic schema upgrades.

SQLAlchemy (with Alembic) owns the schema, the migrations and the maintenance writes
(evictions, image removal, repairs). Reads and the writes every import, load, rebase and
create-builder makes use the sqlite3 driver directly, because importing SQLAlchemy costs more
than many of those commands do otherwise. Both go through `connect`, so every connection gets
the same pragmas.

A file at index.db is identified read-only before anything writes to it: a foreign database is
refused untouched.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from packcache.errors import IndexError_
from packcache.store.layout import FILE_MODE, INDEX_SIDE_FILES, describe
from packcache.store.locking import CacheLock

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

# The newest migration. Opening a cache compares it with the database's revision, so the common
# case (already current) needs neither Alembic nor SQLAlchemy; a test keeps it equal to
# Alembic's head.
HEAD_REVISION = "0002_input_layers"
SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 60.0
_INHERITED: list[sqlite3.Connection] = []


def migrations_dir() -> Path:
    installed = Path(__file__).resolve().parents[1] / "_migrations"  # inside a built wheel
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "migrations"  # a source checkout


def _uri(db_path: Path, options: str) -> str:
    return f"file:{quote(str(db_path.absolute()))}?{options}"


def connect(db_path: Path, uri_options: str | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN ourselves) with the index's pragmas;
    read-only when `uri_options` (mode=ro, immutable=1) say so."""
    if uri_options is None:
        conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    else:
        conn = sqlite3.connect(
            _uri(db_path, uri_options), timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=True
        )
    try:
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys=ON")
        # FULL: a committed eviction must survive power loss, or rows would outlive their files.
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()  # not left to a traceback that may keep it (and the file) open
        raise
    return conn


def _check_is_sqlite(db_path: Path) -> None:
    """Refuse a link, a non-file or a file that is not SQLite, opening nothing for writing."""
    try:
        st = db_path.lstat()
    except OSError as exc:
        raise IndexError_(f"cannot read the index {db_path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise IndexError_(
            f"{db_path} is {describe(st.st_mode)}, not a packcache index: packcache does not "
            "follow links in its cache"
        )
    try:
        fd = os.open(db_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        owner = f" (mode {stat.S_IMODE(st.st_mode):04o}, owned by uid {st.st_uid})"
        raise IndexError_(f"cannot read the index {db_path}: {exc.strerror}{owner}") from exc
    if head and head != SQLITE_MAGIC:
        raise IndexError_(f"{db_path} is not a packcache index (not an SQLite database)")


def identify(db_path: Path) -> str | None:
    """The revision of the index at `db_path`, read without writing anything to it; None when
    there is none yet (or it is empty). Raises IndexError_ for anything but a packcache index."""
    if not os.path.lexists(db_path):
        return None
    _check_is_sqlite(db_path)
    if db_path.stat().st_size == 0:
        return None
    for options in ("mode=ro", "immutable=1"):
        try:
            conn = connect(db_path, options)
        except sqlite3.Error:
            continue
        try:
            return _revision(conn, db_path)
        except IndexError_ as exc:
            if isinstance(exc.__cause__, sqlite3.OperationalError) and options == "mode=ro":
                continue  # a WAL index whose -shm this user cannot create: read it as a file
            raise
        finally:
            conn.close()
    raise IndexError_(f"cannot open the index {db_path} to read it")


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
        if "layers" not in tables:  # every packcache revision has it
            raise IndexError_(
                f"{db_path} is not a packcache index (it has tables "
                f"{', '.join(sorted(tables))} but no layers)"
            )
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
    except sqlite3.Error as exc:
        raise IndexError_(f"cannot read the index {db_path}: {exc}") from exc


# The schema at HEAD_REVISION as SQL, generated from the migrations (`python -m
# tests.test_migrations`), for new caches: creating them needs neither Alembic nor SQLAlchemy
# imported. A test checks it creates exactly the schema the migrations create.
HEAD_SCHEMA_SQL = Path(__file__).with_name("schema_head.sql")


def _set_wal(db_path: Path) -> None:
    """WAL (kept in the file once set): readers never block writers nor wait for them."""
    conn = connect(db_path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


def _create_at_head(db_path: Path) -> None:
    """Create the schema of a new, empty index in one transaction: all of it, or nothing."""
    _set_wal(db_path)
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

    _set_wal(db_path)
    engine = make_engine(db_path)
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        conn.commit()
    engine.dispose()


def _create_private(db_path: Path) -> None:
    """An empty index file, 0600 whatever the umask, before SQLite opens it: SQLite gives its
    -wal and -shm files the mode of the database file."""
    try:
        fd = os.open(db_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


class Database:
    """The index file: sqlite3 connections for reads and fast writes (`read`, `write_plain`),
    a SQLAlchemy engine, made on first use, for the others (`write`). Opening it writable
    creates or upgrades the schema to HEAD_REVISION; read-only, it must be at that revision."""

    def __init__(self, db_path: Path, lock: CacheLock, *, writable: bool = True) -> None:
        self.path = db_path
        self.writable = writable
        self._engine: Engine | None = None
        self._read_options: str | None = None
        self._readers = threading.local()
        self._writers = threading.local()
        revision = identify(db_path)
        if not writable:
            self._open_read_only(revision)
            return
        if revision == HEAD_REVISION:
            return
        _create_private(db_path)
        with lock.exclusive():  # one process migrates; the others wait, then find it current
            revision = identify(db_path)
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

    def _open_read_only(self, revision: str | None) -> None:
        if revision != HEAD_REVISION:
            raise IndexError_(
                f"the index {self.path} is at revision {revision or 'none'}, not "
                f"{HEAD_REVISION}, and this command may not upgrade it: run one that writes"
            )
        # mode=ro shares the WAL with writers; with no -shm this user may create (a cache
        # owned by someone else), immutable=1 reads the file as it is.
        for options in ("mode=ro", "immutable=1"):
            try:
                conn = connect(self.path, options)
                try:
                    conn.execute("SELECT COUNT(*) FROM alembic_version").fetchone()
                finally:
                    conn.close()
            except sqlite3.Error:
                continue
            self._read_options = options
            return
        raise IndexError_(f"cannot open the index {self.path} to read it")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads (WAL: never blocks, never blocked by writers). One per thread,
        kept open: opening one costs far more than the point queries an import makes per
        archive entry. Each statement outside BEGIN sees the latest commit."""
        held = self._readers.__dict__
        conn = held.get("conn")
        if conn is None or held.get("pid") != os.getpid():
            if conn is not None:  # a fork's copy of the parent's connection: never used, never
                _INHERITED.append(conn)  # closed here (closing could disturb the parent's)
            conn = connect(self.path, self._read_options)
            held.update(conn=conn, pid=os.getpid())
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def close_reader(self) -> None:
        """Close this thread's read connection (the next read opens another): at the end of an
        operation, so no file of the cache stays open after it."""
        conn = self._readers.__dict__.pop("conn", None)
        if conn is not None and self._readers.__dict__.pop("pid", None) == os.getpid():
            conn.close()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.path)
        return self._engine

    def _check_writable(self) -> None:
        if not self.writable:
            raise IndexError_(f"the cache at {self.path.parent} is open read-only")

    def _write_error(self, exc: Exception) -> IndexError_:
        """Writing an index this user may read but not write: one line, naming it."""
        try:
            st = self.path.stat()
            who = f" (mode {stat.S_IMODE(st.st_mode):04o}, owned by uid {st.st_uid})"
        except OSError:
            who = ""
        return IndexError_(f"cannot write the index {self.path}: {exc}{who}")

    @contextmanager
    def write_plain(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A sqlite3 connection in an IMMEDIATE transaction, committed on success: for the
        writes on the paths that must be fast (see store.py), without SQLAlchemy's import.
        Not `durable`: the commit is atomic but not synced to disk, for rows worth nothing
        after a power loss (leases: their processes are gone with it); the next durable
        commit syncs it too. Inside `keeping_writer` one connection serves every such
        transaction of the thread; elsewhere each has its own."""
        self._check_writable()
        conn = self._writer(durable)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            self.close_writer()
            raise self._write_error(exc) from exc
        try:
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite ends it itself on some errors (disk full)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if not self._writers.__dict__.get("keep"):
                self.close_writer()
        except BaseException as exc:
            # A connection that saw a failure is not used again, nor left open on the file.
            self.close_writer()
            if isinstance(exc, sqlite3.OperationalError) and (
                "readonly" in str(exc) or "read-only" in str(exc)
            ):
                raise self._write_error(exc) from exc
            raise

    def _writer(self, durable: bool) -> sqlite3.Connection:
        """This thread's write connection, synced on commit or not as asked."""
        held = self._writers.__dict__
        conn = held.get("conn")
        if conn is None or held.get("pid") != os.getpid():
            if conn is not None:  # a fork's copy of the parent's: never used here (see read)
                _INHERITED.append(conn)
            try:
                conn = connect(self.path)
            except sqlite3.OperationalError as exc:
                raise self._write_error(exc) from exc
            held.update(conn=conn, pid=os.getpid(), durable=True)
        if held["durable"] != durable:
            # In WAL mode NORMAL syncs at checkpoints only, not on commit.
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            held["durable"] = durable
        return conn

    @contextmanager
    def keeping_writer(self) -> Iterator[None]:
        """Keep this thread's write connection open for the transactions made meanwhile (an
        operation's: opening one costs more than most of its small writes), closed after.
        Only meanwhile: an open connection keeps SQLite from closing any other file
        descriptor of the index in this process (POSIX locks are per process)."""
        held = self._writers.__dict__
        held["keep"] = held.get("keep", 0) + 1
        try:
            yield
        finally:
            held["keep"] -= 1
            if not held["keep"]:
                self.close_writer()

    def close_writer(self) -> None:
        """Close this thread's write connection (the next write opens another)."""
        held = self._writers.__dict__
        conn = held.pop("conn", None)
        if conn is not None and held.pop("pid", None) == os.getpid():
            conn.close()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A SQLAlchemy connection in a transaction that took SQLite's write lock at BEGIN, so
        two writers never deadlock upgrading from a read lock. Commits on success."""
        from sqlalchemy.exc import OperationalError

        self._check_writable()
        try:
            with self.engine.connect() as conn:
                conn.execution_options(sqlite_begin="IMMEDIATE")
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            if "readonly" in str(exc.orig) or "unable to open" in str(exc.orig):
                raise self._write_error(exc.orig) from exc
            raise

    def tighten_side_files(self) -> None:
        """SQLite gives -wal/-shm the database's mode; make sure of it for the ones we own, so
        they never allow more than index.db does."""
        try:
            allowed = stat.S_IMODE(self.path.lstat().st_mode)
        except OSError:
            return
        for name in INDEX_SIDE_FILES:
            path = self.path.with_name(name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and mode & ~allowed:
                    os.fchmod(fd, mode & allowed)
            finally:
                os.close(fd)


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
