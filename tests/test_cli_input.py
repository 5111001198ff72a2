"""Hostile or odd input at the command line: sizes in other scripts' digits, a cache dir with
~ or that is a file, and errors of any kind as one line, never a traceback."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from packcache import cli as cli_module
from packcache.store.store import Store
from tests.test_cli import snapshot

NON_ASCII_SIZES = ["\uff11\uff12", "\u0661\u0662M", "\u0967\u0968G", "2\uff10G"]
NON_ASCII_DURATIONS = ["\uff17d", "1d\u0661\u0662h", "\u0967w"]


def packcache(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """The installed command in a process of its own: its real exit code and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "packcache", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def one_error_line(stderr: str) -> str:
    [line] = stderr.splitlines()
    assert line.startswith("packcache: error: "), line
    assert "Traceback" not in stderr
    return line


# -- sizes and durations are ASCII digits --------------------------------------------------------


@pytest.mark.parametrize("text", NON_ASCII_SIZES)
def test_a_size_in_other_digits_is_a_usage_error(cli, cache_dir, two_images, text) -> None:
    before = snapshot(cache_dir)
    result = cli("prune", "--max-size", text)
    assert result.exit_code == 2
    assert f"invalid size {text!r}" in one_error_line(result.stderr)
    assert snapshot(cache_dir) == before


@pytest.mark.parametrize("text", NON_ASCII_DURATIONS)
def test_a_duration_in_other_digits_is_a_usage_error(cli, cache_dir, two_images, text) -> None:
    before = snapshot(cache_dir)
    result = cli("prune", "--older-than", text)
    assert result.exit_code == 2
    assert f"invalid duration {text!r}" in one_error_line(result.stderr)
    assert snapshot(cache_dir) == before


def test_other_digits_as_the_command_sees_them(cache_dir, two_images) -> None:
    before = snapshot(cache_dir)
    done = packcache("--cache-dir", str(cache_dir), "prune", "--max-size", "\u0661\u0662M")
    assert done.returncode == 2
    assert "invalid size" in one_error_line(done.stderr)
    done = packcache("--cache-dir", str(cache_dir), "prune", "--older-than", "\uff17d")
    assert done.returncode == 2
    assert "invalid duration" in one_error_line(done.stderr)
    assert snapshot(cache_dir) == before


@pytest.mark.parametrize("setting", ["env", "config"])
def test_a_size_cap_in_other_digits_is_a_usage_error(cli, cache_dir, store, setting) -> None:
    if setting == "env":
        env = {"PACKCACHE_MAX_SIZE": "\uff11\uff12G"}
    else:
        env = {}
        (cache_dir / "config.toml").write_text('max-size = "\uff11\uff12G"\n', encoding="utf-8")
    done = packcache("--cache-dir", str(cache_dir), "info", env=env)
    assert done.returncode == 2
    assert "invalid size" in one_error_line(done.stderr)


# -- the cache dir: ~ and a file -----------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The current directory of the command: nothing may appear in it."""
    work = tmp_path / "work"
    work.mkdir()
    return work


def cache_dir_of(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["cache_dir"]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {"PACKCACHE_DIR": "~/pc"}, "pc"),
        (["--cache-dir", "~/pc"], {}, "pc"),
        (["--cache-dir=~/pc"], {}, "pc"),
        ([], {"XDG_CACHE_HOME": "~/xdg"}, "xdg/packcache"),
        ([], {"XDG_CACHE_HOME": "relative/xdg"}, ".cache/packcache"),  # the XDG spec ignores it
    ],
)
def test_a_tilde_is_the_home_directory(home, workdir, args, env, expected) -> None:
    base = {"HOME": str(home), "PACKCACHE_DIR": "", "XDG_CACHE_HOME": ""}
    done = packcache(*args, "info", "--format", "json", env={**base, **env}, cwd=workdir)
    assert cache_dir_of(done) == str(home / expected)
    assert (home / expected / "index.db").is_file()
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("how", ["option", "env"])
def test_a_tilde_of_no_known_user_is_a_usage_error(home, workdir, how) -> None:
    value = "~packcache-no-such-user/pc"
    args, env = (["--cache-dir", value], {}) if how == "option" else ([], {"PACKCACHE_DIR": value})
    done = packcache(*args, "ls", env={"HOME": str(home), **env}, cwd=workdir)
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "cannot expand ~packcache-no-such-user" in line
    assert ("--cache-dir" if how == "option" else "PACKCACHE_DIR") in line
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("command", ["ls", "du", "info", "prune", "verify"])
def test_a_cache_dir_that_is_a_file_is_a_usage_error(cli, tmp_path, command) -> None:
    not_a_dir = tmp_path / "notes.txt"
    not_a_dir.write_text("mine\n")
    args = ["--all"] if command == "prune" else []
    result = cli(command, *args, cache=not_a_dir)
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    expected = f"the cache dir {not_a_dir} (--cache-dir) is not a directory: it is a file"
    assert line == f"packcache: error: {expected}"
    assert not_a_dir.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_cache_dir_from_the_environment_that_is_a_file(tmp_path) -> None:
    not_a_dir = tmp_path / "notes.txt"
    not_a_dir.write_text("mine\n")
    done = packcache("ls", env={"PACKCACHE_DIR": str(not_a_dir)})
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    expected = f"the cache dir {not_a_dir} (PACKCACHE_DIR) is not a directory: it is a file"
    assert line == f"packcache: error: {expected}"
    assert not_a_dir.read_text() == "mine\n"


# -- one line, never a traceback -----------------------------------------------------------------


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """cli.run() (what main() runs before it ends the process) in this process, so a test can
    plant a failure in the library."""
    monkeypatch.setattr(sys, "argv", ["packcache", *args])
    with pytest.raises(SystemExit) as exited:
        cli_module.run()
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (RuntimeError("boom"), 1, "unexpected RuntimeError: boom (a bug; -vv shows where)"),
        (OSError(5, "Input/output error", "/some/blob"), 1, "Input/output error: /some/blob"),
        (sqlite3.DatabaseError("database disk image is malformed"), 1, "the cache index failed"),
    ],
)
def test_an_error_while_printing_is_one_line(
    monkeypatch, capsys, cache_dir, two_images, error, code, message
) -> None:
    """Failures outside a command's library call (here: while its result is printed)."""
    from packcache import render

    def failing(*_args):
        raise error

    monkeypatch.setattr(render, "layers_json", failing)
    exit_code, stderr = run_main(
        monkeypatch, capsys, "--cache-dir", str(cache_dir), "ls", "--format", "json"
    )
    assert exit_code == code
    assert message in one_error_line(stderr)


@pytest.mark.parametrize("where", ["store", "render"])
def test_a_usage_error_from_anywhere_exits_2(monkeypatch, capsys, cli, cache_dir, store, where):
    from packcache import render
    from packcache.errors import UsageError
    from packcache.store import scan

    def failing(*_args, **_kwargs):
        raise UsageError("bad setting x")

    target = scan if where == "store" else render
    monkeypatch.setattr(target, "disk_usage" if where == "store" else "disk_usage_json", failing)
    exit_code, stderr = run_main(
        monkeypatch, capsys, "--cache-dir", str(cache_dir), "du", "--format", "json"
    )
    assert exit_code == 2
    assert one_error_line(stderr) == "packcache: error: bad setting x"
    if where == "store":
        result = cli("du")
        assert result.exit_code == 2 and result.stderr == "packcache: error: bad setting x\n"


PLANTED_BUG = """
import sys
from packcache.store import scan
def disk_usage(*args, **kwargs):
    raise KeyError("config")
scan.disk_usage = disk_usage
from packcache.cli import main
sys.argv = ["packcache", *sys.argv[1:]]
main()
"""


# main() ends the process itself once the command is done: what a normal exit does must still
# happen. The thread writes only once the interpreter has begun to end (the main thread is then
# marked stopped), so a process that ended without waiting for it leaves no file.
ENDING = """
import atexit, sys, threading
from pathlib import Path
from packcache.cli import main
atexit.register(lambda: sys.stderr.write("exit handler ran\\n"))
def late_writer(path):
    threading.main_thread().join()
    path.write_text("written")
if sys.argv[1]:  # else no thread: the process ends at once
    threading.Thread(target=late_writer, args=(Path(sys.argv[1]),)).start()
sys.argv = ["packcache", *sys.argv[2:]]
main()
"""


def test_the_process_ends_as_an_interpreter_would(tmp_path, cache_dir, two_images) -> None:
    written = tmp_path / "written"
    args = [str(written), "--cache-dir", str(cache_dir), "ls", "--format", "json"]
    done = subprocess.run(
        [sys.executable, "-c", ENDING, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 4  # the output whole
    assert done.stderr == "exit handler ran\n"
    assert written.read_text() == "written"  # the thread still running was waited for
    for args, code in ((["ls", "--format", "json"], 0), (["ls", "--sort", "nonsense"], 2)):
        done = subprocess.run(
            [sys.executable, "-c", ENDING, "", "--cache-dir", str(cache_dir), *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == code
        assert done.stderr.endswith("exit handler ran\n")
        if code == 0:
            assert len(json.loads(done.stdout)) == 4
        else:
            assert done.stderr.startswith("packcache: error:")


def test_a_bug_shows_its_traceback_only_when_asked(cache_dir, store) -> None:
    run = [sys.executable, "-c", PLANTED_BUG]
    done = subprocess.run(
        [*run, "--cache-dir", str(cache_dir), "du"], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert one_error_line(done.stderr) == (
        "packcache: error: unexpected KeyError: 'config' (a bug; -vv shows where)"
    )
    done = subprocess.run(
        [*run, "-vv", "--cache-dir", str(cache_dir), "du"], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "KeyError: 'config'" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("packcache: error: unexpected KeyError")


@pytest.mark.parametrize("command", [["ls"], ["ls", "--format", "json"], ["du"], ["info"]])
def test_a_closed_stdout_is_no_traceback(cache_dir, two_images, command) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a byte
    try:
        done = subprocess.run(
            [sys.executable, "-m", "packcache", "--cache-dir", str(cache_dir), *command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert done.stderr == ""


def test_a_report_file_that_cannot_be_written_is_one_line(capsys, tmp_path) -> None:
    """--report FILE is written after the operation, outside its error handling."""
    import typer

    from packcache.operations.loading import LoadReport

    report = LoadReport("sha256:x", ["a:1"], 1, 0, 3, False, 0.1)
    target = tmp_path / "no-such-dir" / "r.json"
    with pytest.raises(typer.Exit) as exited:
        cli_module._write_report(report, target, cli_module.Format.table)
    assert exited.value.exit_code == 1
    assert one_error_line(capsys.readouterr().err) == (
        f"packcache: error: No such file or directory: {target}"
    )


def test_a_cache_dir_that_is_a_directory_or_a_link_to_one_is_used(cli, cache_dir, tmp_path) -> None:
    Store.open(cache_dir)
    assert cli("ls", "--format", "json").json() == []
    link = tmp_path / "link"
    link.symlink_to(cache_dir, target_is_directory=True)
    assert cli("du", "--format", "json", cache=link).json()["layers"] == 0
