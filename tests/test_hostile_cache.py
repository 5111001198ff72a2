"""A cache that holds against hostile files: links planted in every directory of the layout,
foreign databases and settings, odd entries, other users, any umask.

The CLI runs in a real process, as root and as an unprivileged user made for these tests (the
system python with the project and its venv on PYTHONPATH: the venv's interpreter lives where
only root may enter), under the umask each test names.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.archives import build_oci_archive

ROOT = Path(__file__).resolve().parents[1]
USER = "packcache-hostile"
SYSTEM_PYTHON = Path("/usr/bin/python3")
SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
HOST = socket.gethostname()

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates a user and runs as it")


def _ensure_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
        )
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture(scope="session")
def other_user() -> tuple[int, int]:
    if not SYSTEM_PYTHON.exists() or shutil.which("runuser") is None:
        pytest.skip("needs /usr/bin/python3 and runuser")
    return _ensure_user()


@pytest.fixture
def base(other_user) -> Iterator[Path]:
    """A directory both root and the test user can enter (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="packcache-hostile-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def run(
    cache: Path, *args: str, user: bool = False, umask: int = 0o022, stdin: bytes | None = None
) -> subprocess.CompletedProcess:
    """The packcache CLI in its own process, as the test user if `user`, under `umask`."""
    site_packages = next(SITE.glob("site-packages"), None) or SITE
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": f"{ROOT}:{site_packages}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/nonexistent",
    }
    command = [str(SYSTEM_PYTHON), "-m", "packcache", "--cache-dir", str(cache), *args]
    shell = ["sh", "-c", f'umask {umask:03o}; exec "$@"', "sh", *command]
    prefix = ["runuser", "-u", USER, "--"] if user else []
    return subprocess.run(
        [*prefix, *shell], env=env, input=stdin, capture_output=True, cwd="/", timeout=300
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `packcache: error:` line a failure prints (no traceback)."""
    lines = result.stderr.decode().strip().splitlines()
    errors = [line for line in lines if line.startswith("packcache: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr.decode(), lines
    return errors[0]


def tree(path: Path) -> dict[str, tuple]:
    """Every entry under `path` (links not followed): kind, mode, owner, and a file's bytes."""
    found: dict[str, tuple] = {}
    for directory, dirs, files in os.walk(path):
        for name in dirs + files:
            entry = Path(directory, name)
            st = entry.lstat()
            data = entry.read_bytes() if stat.S_ISREG(st.st_mode) else None
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(entry).encode()
            found[str(entry.relative_to(path))] = (
                stat.S_IFMT(st.st_mode),
                st.st_mode,
                st.st_uid,
                data,
            )
    return found


def index_rows(cache: Path) -> list[str]:
    with closing(sqlite3.connect(f"file:{cache / 'index.db'}?mode=ro", uri=True)) as conn:
        return [line for line in conn.iterdump() if "alembic" not in line]


def archive(base: Path, name: str, seed: str, layers: int = 2) -> Path:
    path = base / f"{name}.tar"
    build_oci_archive(
        path,
        [{f"{seed}/f{i}": f"{seed} {i}".encode() * 300} for i in range(layers)],
        repo_tag=f"{name}:1",
    )
    path.chmod(0o644)
    return path


def chown_tree(path: Path, uid: int, gid: int) -> None:
    subprocess.run(["chown", "-R", "--no-dereference", f"{uid}:{gid}", str(path)], check=True)


def blob_files(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "blobs" / "sha256").glob("*/*") if p.is_file())


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(params=["root", "user"])
def who(request, other_user) -> bool:
    """Run as root (False) or as the unprivileged test user (True)."""
    return request.param == "user"


def new_cache(base: Path, user: bool, *archives: Path) -> Path:
    """A cache at base/cache with these archives imported, by the test user if `user`."""
    cache = base / "cache"
    if user:  # the user may not create it in root's base directory
        cache.mkdir(mode=0o700)
        os.chown(cache, *_ensure_user())
    for path in archives:
        result = run(cache, "import", "--quiet", "--archive", str(path), user=user)
        assert result.returncode == 0, result.stderr
    return cache


# -- never follow a link inside the cache --------------------------------------------------


def plant_links(cache: Path, victim: Path) -> list[Path]:
    """A link in every directory of the layout, each pointing at the victim's files."""
    shards = sorted(p for p in (cache / "blobs" / "sha256").iterdir())
    indexed = sorted(shards[0].iterdir())[0]
    free = next(f"{i:02x}" for i in range(256) if f"{i:02x}" not in {p.name for p in shards})
    planted = [
        cache / "blobs" / "sha256" / shards[0].name / ("0" * 64),  # a blob-named link to a file
        cache / "blobs" / "sha256" / shards[0].name / "dirlink",  # in a shard, to a directory
        cache / "blobs" / "sha256" / free,  # a shard that is a link to a directory
        cache / "blobs" / "sha256" / ("e" * 64),  # directly in blobs/sha256
        cache / "blobs" / "link",  # directly in blobs/
        cache / "ingest" / f"{HOST}-{dead_pid()}-0123456789abcdef.partial",  # a dead "partial"
        cache / "ingest" / "dirlink",
    ]
    targets = [victim / "file", victim, victim, victim / "file", victim, victim / "file", victim]
    for link, target in zip(planted, targets, strict=True):
        link.symlink_to(target)
    # An indexed blob replaced by a link to a copy of itself: still not followed.
    shutil.copy(indexed, victim / "copy")
    indexed.unlink()
    indexed.symlink_to(victim / "copy")
    return [*planted, indexed]


def make_victim(base: Path, uid: int, gid: int) -> Path:
    victim = base / "victim"
    victim.mkdir()
    (victim / "file").write_bytes(b"precious")
    (victim / "file").chmod(0o400)
    (victim / "sub").mkdir()
    (victim / "sub" / "nested").write_bytes(b"also precious")
    chown_tree(victim, uid, gid)
    return victim


def test_links_planted_in_every_directory_are_reported_and_only_they_are_removed(
    base: Path, who: bool, other_user
) -> None:
    uid, gid = other_user if who else (0, 0)
    cache = new_cache(base, who, archive(base, "one", "a"), archive(base, "two", "b"))
    victim = make_victim(base, uid, gid)
    planted = plant_links(cache, victim)
    chown_tree(cache, uid, gid)
    before = tree(victim)

    report = run(cache, "verify", "--format", "json", user=who)
    assert report.returncode == 1, report.stderr
    found = json.loads(report.stdout)
    reported = set(found["orphans"] + found["stale_ingest"])
    for link in planted[:-1]:
        assert str(link) in reported, (link, found)
    assert len(found["corrupt"]) == 1  # the blob that is a link is not used
    assert tree(victim) == before

    for command in (["prune", "--older-than", "1000d"], ["ls"], ["du"], ["info"]):
        assert run(cache, *command, user=who).returncode == 0
    repaired = run(cache, "verify", "--repair", user=who)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert tree(victim) == before, "repair followed a link"
    for link in planted:
        assert not os.path.lexists(link)
    assert run(cache, "verify", user=who).returncode == 0
    assert run(cache, "prune", "--all", user=who).returncode == 0
    assert tree(victim) == before


@pytest.mark.parametrize("where", ["blobs", "ingest", "blobs/sha256"])
def test_a_layout_directory_that_is_a_link_is_refused(base: Path, who: bool, where, other_user):
    uid, gid = other_user if who else (0, 0)
    cache = new_cache(base, who, archive(base, "one", "a"))
    victim = make_victim(base, uid, gid)
    moved = base / "moved"
    os.rename(cache / where, moved)
    (cache / where).symlink_to(victim)
    chown_tree(cache, uid, gid)
    before = tree(victim)
    for command in (
        ["verify", "--repair"],
        ["prune", "--all"],
        ["import", "--quiet", "--archive", str(archive(base, "two", "b"))],
        ["verify"],
        ["ls"],
    ):
        result = run(cache, *command, user=who)
        assert result.returncode == 1, (command, result.stderr)
        assert "link" in error_line(result)
    assert tree(victim) == before


LINKED_FILE_COMMANDS = {  # the commands that use each file, so must refuse its link
    "lock": [["prune", "--all"], ["verify", "--repair"]],
    "config.toml": [["info"], ["import", "--quiet", "--archive", "{archive}"]],
    "index.db": [["prune", "--all"], ["info"], ["ls"], ["verify", "--repair"]],
}


@pytest.mark.parametrize("name", sorted(LINKED_FILE_COMMANDS))
def test_a_link_at_a_cache_file_is_refused(base: Path, who: bool, name: str, other_user) -> None:
    uid, gid = other_user if who else (0, 0)
    cache = new_cache(base, who, archive(base, "one", "a"))
    victim = make_victim(base, uid, gid)
    if name == "index.db":
        os.rename(cache / name, victim / "moved.db")
        (cache / name).symlink_to(victim / "moved.db")
    else:
        (cache / name).unlink(missing_ok=True)
        (cache / name).symlink_to(victim / "file")
    chown_tree(cache, uid, gid)
    before = tree(victim)
    two = str(archive(base, "two", "b"))
    for command in LINKED_FILE_COMMANDS[name]:
        result = run(cache, *[arg.format(archive=two) for arg in command], user=who)
        assert result.returncode == (2 if name == "config.toml" else 1), (command, result.stderr)
        assert "link" in error_line(result)
    assert tree(victim) == before


def test_a_cache_dir_that_is_a_file_says_so(base: Path) -> None:
    path = base / "a-file"
    path.write_bytes(b"not a cache")
    for command in (["ls"], ["prune", "--all"]):
        result = run(path, *command)
        assert result.returncode == 2  # a usage error: the command names a cache dir it cannot be
        assert "is not a directory" in error_line(result)
    assert path.read_bytes() == b"not a cache"


# -- permissions that do not depend on the umask ---------------------------------------------

MODES_SCRIPT = """
import io, json, os, stat, sys
from pathlib import Path
from packcache.store.store import Store
from tests.layers import random_tar
cache = Path(sys.argv[1])
store = Store.open(cache)
store.ingest_layer(io.BytesIO(random_tar(5000, seed=b"modes")))
with store.read() as conn:  # the index open, so its -wal and -shm exist
    conn.execute("SELECT COUNT(*) FROM layers").fetchone()
    print(json.dumps({
        str(p.relative_to(cache)): stat.S_IMODE(p.lstat().st_mode) for p in cache.rglob("*")
    }))
"""


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_modes_do_not_depend_on_the_umask(base: Path, who: bool, umask: int, other_user) -> None:
    cache = base / "parent" / "cache"
    if who:
        (base / "parent").mkdir()
        chown_tree(base / "parent", *other_user)
    site_packages = next(SITE.glob("site-packages"))
    command = [str(SYSTEM_PYTHON), "-c", MODES_SCRIPT, str(cache)]
    shell = ["sh", "-c", f'umask {umask:03o}; exec "$@"', "sh", *command]
    result = subprocess.run(
        [*(["runuser", "-u", USER, "--"] if who else []), *shell],
        env={
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH": f"{ROOT}:{site_packages}",
            "PYTHONDONTWRITEBYTECODE": "1",
        },
        capture_output=True,
        cwd="/",
        check=True,
    )
    modes = json.loads(result.stdout)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    for name, mode in modes.items():
        parts = Path(name).parts
        if parts[0] == "blobs" and len(parts) == 4:
            assert mode == 0o444, (name, oct(mode))
        elif (cache / name).is_dir():
            assert mode == 0o700, (name, oct(mode))
        else:
            assert mode == 0o600, (name, oct(mode))
    assert {"index.db", "index.db-wal", "index.db-shm", "lock", "ingest"} <= set(modes)
    assert run(cache, "verify", user=who, umask=umask).returncode == 0


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_a_cache_dir_open_to_others_is_reported_and_its_mode_kept(base: Path, mode: int) -> None:
    cache = new_cache(base, False, archive(base, "one", "a"))
    cache.chmod(mode)
    result = run(cache, "ls")
    assert result.returncode == 0
    assert f"{cache} is writable by other users (mode 0{mode:o})" in result.stderr.decode()
    write = run(cache, "import", "--quiet", "--archive", str(archive(base, "two", "b")))
    if mode & 0o002:  # any user could plant links in it: not written
        assert write.returncode == 1
        assert f"{cache} is writable by every user" in error_line(write)
    else:
        assert write.returncode == 0
    assert stat.S_IMODE(cache.stat().st_mode) == mode, "never silently changed"


def test_a_cache_dir_of_another_owner_is_reported(base: Path, other_user) -> None:
    cache = new_cache(base, True, archive(base, "one", "a"))
    result = run(cache, "ls")  # root, in the user's cache
    assert result.returncode == 0
    assert f"{cache} is owned by uid {other_user[0]}" in result.stderr.decode()


# -- never modify a file that is not ours ---------------------------------------------------


def foreign_db(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
        conn.commit()


@pytest.mark.parametrize("kind", ["sqlite", "text", "alembic-only"])
def test_a_foreign_index_is_refused_untouched(base: Path, who: bool, kind: str, other_user):
    cache = base / "cache"
    cache.mkdir(mode=0o700)
    db = cache / "index.db"
    if kind == "sqlite":
        foreign_db(db)
    elif kind == "text":
        db.write_bytes(b"hello, not a database\n")
    else:
        with closing(sqlite3.connect(db)) as conn:
            conn.execute("CREATE TABLE alembic_version (version_num TEXT)")
            conn.execute("INSERT INTO alembic_version VALUES ('someone_elses')")
            conn.execute("CREATE TABLE accounts (id INTEGER)")
            conn.commit()
    if who:
        chown_tree(cache, *other_user)
    before = tree(cache)
    for command in (
        ["import", "--quiet", "--archive", str(archive(base, "one", "a"))],
        ["ls"],
        ["prune", "--all"],
        ["verify", "--repair"],
    ):
        result = run(cache, *command, user=who)
        assert result.returncode == 1, (command, result.stderr)
        assert str(db) in error_line(result)
        assert tree(cache) == before, "nothing written to it, nothing created beside it"


@pytest.mark.parametrize(
    "content",
    [b'max-size = "\xff\xfe1G"\n', "max-size = '1G'".encode("utf-16"), b"max-size = = 3\n"],
    ids=["latin1", "utf16", "not-toml"],
)
def test_a_bad_config_file_is_a_usage_error(base: Path, content: bytes) -> None:
    cache = new_cache(base, False, archive(base, "one", "a"))
    (cache / "config.toml").write_bytes(content)
    for command in (["info"], ["import", "--quiet", "--archive", str(archive(base, "two", "b"))]):
        result = run(cache, *command)
        assert result.returncode == 2, result.stderr
        assert "config.toml" in error_line(result)


def test_a_config_file_that_is_a_fifo_is_refused_without_hanging(base: Path) -> None:
    cache = new_cache(base, False, archive(base, "one", "a"))
    os.mkfifo(cache / "config.toml")
    result = run(cache, "info")
    assert result.returncode == 2
    assert "not a regular file" in error_line(result)


# -- repairs that always finish -------------------------------------------------------------


def plant_odd_entries(cache: Path) -> list[Path]:
    shard = next((cache / "blobs" / "sha256").iterdir())
    odd = {
        cache / "ingest" / "a-dir": "dir",
        cache / "ingest" / "a-fifo": "fifo",
        cache / "ingest" / "a-socket": "socket",
        cache / "ingest" / f"{HOST}-{dead_pid()}-00ff00ff00ff00ff.partial": "unreadable",
        cache / "blobs" / "a-dir": "dir",
        cache / "blobs" / "sha256" / "a-fifo": "fifo",
        cache / "blobs" / "sha256" / ("d" * 64): "file",
        cache / "blobs" / "sha256" / "0z": "dir",
        shard / "a-socket": "socket",
        shard / (shard.name + "1" * 62): "unreadable",  # an orphan no one may read
    }
    for path, kind in odd.items():
        if kind == "dir":
            path.mkdir()
            (path / "inside").write_bytes(b"x")
            (path / "link").symlink_to("/etc")
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "socket":
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(str(path))
        else:
            path.write_bytes(b"stray bytes")
            if kind == "unreadable":
                path.chmod(0o000)
    return list(odd)


def test_repair_finishes_whatever_it_finds(base: Path, who: bool, other_user) -> None:
    cache = new_cache(base, who, archive(base, "one", "a"))
    odd = plant_odd_entries(cache)
    if who:
        chown_tree(cache, *other_user)
    found = run(cache, "verify", "--format", "json", user=who)
    assert found.returncode == 1
    report = json.loads(found.stdout)
    assert set(report["orphans"] + report["stale_ingest"]) == {str(p) for p in odd}
    repaired = run(cache, "verify", "--repair", user=who)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    for path in odd:
        assert not os.path.lexists(path)
    assert run(cache, "verify", user=who).returncode == 0
    assert len(json.loads(run(cache, "ls", "--format", "json", user=who).stdout or "[]")) == 2


# -- space is never lost silently -----------------------------------------------------------


def test_partials_of_killed_ingests_are_counted_and_reclaimed(base: Path, who: bool, other_user):
    cache = new_cache(base, who, archive(base, "one", "a"))
    dead = [cache / "ingest" / f"{HOST}-{dead_pid()}-{i:016x}.partial" for i in range(2)]
    live = cache / "ingest" / f"{HOST}-{os.getpid()}-{0:016x}.partial"  # this test runs
    for path, size in zip([*dead, live], [100_000, 20_000, 3_000], strict=True):
        path.write_bytes(b"\0" * size)
    if who:
        chown_tree(cache, *other_user)
    for command in ("info", "du"):
        shown = json.loads(run(cache, command, "--format", "json", user=who).stdout)
        assert (shown["partial_files"], shown["partial_size"]) == (3, 123_000)
    assert "3 partial files" in run(cache, "du", user=who).stdout.decode()
    assert run(cache, "prune", "--older-than", "1000d", user=who).returncode == 0
    assert not any(p.exists() for p in dead)
    assert live.exists(), "a live writer's partial is never removed"
    dead.append(cache / "ingest" / f"{HOST}-{dead_pid()}-{9:016x}.partial")
    dead[-1].write_bytes(b"\0" * 10)
    if who:
        chown_tree(cache, *other_user)
    two = run(cache, "import", "--quiet", "--archive", str(archive(base, "two", "b")), user=who)
    assert two.returncode == 0
    assert not dead[-1].exists(), "the next write reclaims it too"


# -- consistent under mixed ownership -------------------------------------------------------


def test_an_eviction_the_user_cannot_finish_changes_nothing(base: Path, other_user) -> None:
    cache = new_cache(base, True, archive(base, "one", "a", layers=3))  # the user's cache
    # root adds an image: its new shard directories and blobs are root's, 0700.
    assert (
        run(cache, "import", "--quiet", "--archive", str(archive(base, "two", "b"))).returncode == 0
    )
    root_owned = [p for p in (cache / "blobs" / "sha256").iterdir() if p.stat().st_uid == 0]
    assert root_owned, "the test needs a shard only root may write"
    before_files, before_rows = tree(cache), index_rows(cache)
    result = run(cache, "prune", "--all", user=True)
    assert result.returncode == 1
    line = error_line(result)
    assert "permission denied" in line and str(cache / "blobs" / "sha256") in line
    assert index_rows(cache) == before_rows
    assert {k: v for k, v in tree(cache).items() if not k.startswith("index.db")} == {
        k: v for k, v in before_files.items() if not k.startswith("index.db")
    }
    # root may remove everything: the eviction happens whole.
    assert run(cache, "prune", "--all").returncode == 0
    assert blob_files(cache) == []
    assert run(cache, "verify").returncode == 0


def test_an_index_the_user_cannot_write_is_one_error_line(base: Path, other_user) -> None:
    cache = new_cache(base, False, archive(base, "one", "a"))
    chown_tree(cache, *other_user)  # the user's cache, but for root's index
    os.chown(cache / "index.db", 0, 0)
    (cache / "index.db").chmod(0o644)
    before = index_rows(cache)
    for command in (
        ["prune", "--all"],
        ["import", "--quiet", "--archive", str(archive(base, "two", "b"))],
    ):
        result = run(cache, *command, user=True)
        assert result.returncode == 1
        assert f"cannot write the index {cache / 'index.db'}" in error_line(result)
    assert index_rows(cache) == before
    assert len(blob_files(cache)) == 2


# -- a read-only cache still answers ------------------------------------------------------------


def test_a_cache_the_user_may_only_read_answers_reads(base: Path, other_user) -> None:
    cache = new_cache(base, False, archive(base, "one", "a"), archive(base, "two", "b"))
    for path in [cache, *cache.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        elif path.name in ("index.db", "lock"):
            path.chmod(0o644)
    assert not (cache / "index.db-shm").exists()  # so the user's reader cannot make one
    before = tree(cache)
    listed = run(cache, "ls", "--format", "json", user=True)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 4
    usage = json.loads(run(cache, "du", "--format", "json", user=True).stdout)
    assert usage["layers"] == 4
    info = json.loads(run(cache, "info", "--format", "json", user=True).stdout)
    assert info["layers"] == 4
    verified = run(cache, "verify", user=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for command in (
        ["prune", "--all"],
        ["verify", "--repair"],
        ["import", "--quiet", "--archive", str(archive(base, "three", "c"))],
    ):
        result = run(cache, *command, user=True)
        assert result.returncode == 1, (command, result.stderr)
        error_line(result)
    assert tree(cache) == before


def test_a_blob_the_user_cannot_read_is_reported_and_the_repair_goes_on(
    base: Path, other_user
) -> None:
    cache = new_cache(base, True, archive(base, "one", "a"))
    unreadable = blob_files(cache)[0]
    unreadable.chmod(0o000)
    stray = cache / "blobs" / "sha256" / "stray"
    stray.symlink_to(unreadable)
    os.lchown(stray, *other_user)
    before = unreadable.read_bytes()  # root may read it
    result = run(cache, "verify", "--repair", "--format", "json", user=True)
    assert result.returncode == 1, "a blob it could not check is not called repaired"
    report = json.loads(result.stdout)
    assert len(report["unreadable"]) == 1 and report["corrupt"] == []
    assert not os.path.lexists(stray), "the rest of the repair was done"
    assert unreadable.read_bytes() == before
    assert len(json.loads(run(cache, "ls", "--format", "json", user=True).stdout)) == 2
