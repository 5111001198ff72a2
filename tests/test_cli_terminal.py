"""The progress display as a person sees it: packcache in a real terminal (tmux), saving an
image from a real engine whose `docker save` answer is held mid-stream by a forwarding proxy,
so the screen can be read while the save runs."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engines import images
from tests.engines.harness import Engine

KIND = "28-containerd"
HELD_AFTER = 256 * 1024  # bytes of the save's answer let through before it is held
COLOR = re.compile(r"\x1b\[[0-9;]*3[0-9;]*m")  # an SGR sequence that sets a colour


class HeldSave:
    """A unix-socket proxy in front of an engine that forwards everything, except that the
    answer to `docker save` (GET /images/get) stops after HELD_AFTER bytes until `release`."""

    def __init__(self, upstream: str, path: Path) -> None:
        self.upstream = upstream
        self.path = path
        self.release = threading.Event()
        self.held = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def close(self) -> None:
        self.release.set()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.upstream)
            saving = threading.Event()
            threading.Thread(target=self._requests, args=(client, upstream, saving), daemon=True)\
                .start()  # fmt: skip
            threading.Thread(target=self._answers, args=(upstream, client, saving), daemon=True)\
                .start()  # fmt: skip

    def _requests(self, client: socket.socket, upstream: socket.socket, saving) -> None:
        while data := _recv(client):
            if b"/images/get" in data:
                saving.set()
            upstream.sendall(data)
        _shut(upstream)

    def _answers(self, upstream: socket.socket, client: socket.socket, saving) -> None:
        sent = 0
        # A client gone (the test ended early) ends the forwarding, not with a thread error.
        with contextlib.suppress(OSError):
            while data := _recv(upstream):
                if saving.is_set() and not self.release.is_set():
                    if sent + len(data) > HELD_AFTER:
                        client.sendall(data[: HELD_AFTER - sent])
                        data, sent = data[HELD_AFTER - sent :], HELD_AFTER
                        self.held.set()
                        self.release.wait(300)
                    sent += len(data)
                client.sendall(data)
        _shut(client)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


class Terminal:
    """A tmux session of its own (own server socket), 120x40, running bash."""

    def __init__(self, env: dict[str, str]) -> None:
        self.server = f"packcache-test-{uuid.uuid4().hex[:8]}"
        flags = [f"{key}={value}" for key, value in env.items()]
        self._tmux(
            "-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40",
            *[arg for flag in flags for arg in ("-e", flag)],
            "bash --norc --noprofile",
        )  # fmt: skip
        self.type("PS1='$ '; clear")

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.server, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def type(self, line: str) -> None:
        self._tmux("send-keys", "-t", "0", line, "Enter")

    def screen(self, escapes: bool = False) -> str:
        return self._tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "0")

    def wait_for(self, pattern: str, escapes: bool = False) -> str:
        """The screen once `pattern` shows on it (the test fails after a minute without)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            screen = self.screen(escapes)
            if re.search(pattern, screen):
                return screen
            time.sleep(0.1)
        pytest.fail(f"{pattern!r} never showed on the terminal:\n{self.screen()}")

    def record(self, path: Path) -> None:
        """Append every byte written to the terminal from now on to `path`."""
        self._tmux("pipe-pane", "-t", "0", f"cat >> {shlex.quote(str(path))}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True)


@pytest.fixture
def terminal_env(tmp_path: Path) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "TERM": "xterm-256color",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    env.pop("NO_COLOR", None)
    return env


@pytest.fixture
def saved_image(engine_pool, tmp_path: Path) -> tuple[Engine, str]:
    engine = engine_pool.get(KIND)
    tag = f"packcache-test/terminal-{uuid.uuid4().hex[:8]}:1"
    built = images.build_busybox_archive(
        tmp_path / "image.tar", tag, [{"big.bin": os.urandom(4_000_000)}, {"small": b"x"}]
    )
    engine.docker("load", "-i", str(built.path))
    return engine, tag


@pytest.fixture
def held_save(saved_image, tmp_path: Path) -> Iterator[HeldSave]:
    engine, _ = saved_image
    # A short path: unix socket paths are limited to 108 bytes.
    path = Path("/tmp") / f"pc-held-{uuid.uuid4().hex[:8]}.sock"
    proxy = HeldSave(engine.host.removeprefix("unix://"), path)
    yield proxy
    proxy.close()
    path.unlink(missing_ok=True)


def packcache_line(cache: Path, host: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "packcache", "--cache-dir", str(cache), "--host", host, *args]


@pytest.mark.parametrize("no_color", [False, True], ids=["color", "NO_COLOR"])
def test_a_save_shows_a_bar_that_is_gone_at_the_end(
    saved_image, held_save: HeldSave, terminal_env, tmp_path: Path, no_color: bool
) -> None:
    engine, tag = saved_image
    # What a run off a terminal prints: the summary, and nothing on stderr.
    plain = subprocess.run(
        packcache_line(tmp_path / "plain", engine.host, "import", tag),
        capture_output=True,
        text=True,
        env=terminal_env,
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr == ""
    if no_color:
        terminal_env["NO_COLOR"] = "1"
    terminal = Terminal(terminal_env)
    written = tmp_path / "written"
    try:
        terminal.record(written)
        script = tmp_path / "run.sh"  # one short line to type, which does not wrap
        script.write_text(
            shlex.join(packcache_line(tmp_path / "tty", held_save.host, "import", tag))
        )
        terminal.type(f"sh {script}; echo exit=$?")
        # While the save is held: the display names the save, with bytes, speed and a bar.
        screen = terminal.wait_for(rf"Saving {re.escape(tag)} from the daemon .*━.* kB")
        # The proxy passes the bytes before the hold on before it marks the hold.
        assert held_save.held.wait(60), terminal.screen()
        bar = next(line for line in screen.splitlines() if "Saving" in line)
        assert re.search(r"\d+\.\d kB +\d", bar), bar  # bytes so far, then the speed
        colored = terminal.screen(escapes=True)
        assert (COLOR.search(colored) is None) == no_color
        held_save.release.set()
        screen = terminal.wait_for(r"exit=\d+")
    finally:
        held_save.release.set()
        terminal.close()
    lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
    end = next(i for i, line in enumerate(lines) if line.startswith("exit="))
    assert lines[end] == "exit=0", screen
    lines = lines[: end + 1]
    start = next(i for i, line in enumerate(lines) if line.startswith("$ sh "))
    shown = lines[start + 1 : -1]
    assert "Saving" not in screen and "━" not in screen
    assert shown == plain.stdout.splitlines()
    assert "Saving" in written.read_text(errors="replace")  # the recording would show it


@pytest.mark.parametrize("flags", [["--quiet"], ["--format", "json"]], ids=["quiet", "json"])
def test_quiet_and_json_runs_write_no_display(
    saved_image, held_save: HeldSave, terminal_env, tmp_path: Path, flags: list[str]
) -> None:
    _, tag = saved_image
    terminal = Terminal(terminal_env)
    written = tmp_path / "written"
    try:
        terminal.record(written)
        line = shlex.join(packcache_line(tmp_path / "tty", held_save.host, "import", tag, *flags))
        terminal.type(f"{line}; echo exit=$?")
        assert held_save.held.wait(60), terminal.screen()
        time.sleep(0.5)  # a display, were there one, draws ten times a second
        held_save.release.set()
        screen = terminal.wait_for(r"exit=\d+")
    finally:
        held_save.release.set()
        terminal.close()
    assert "exit=0" in screen
    # Every byte written to the terminal, even what a transient display erases again.
    assert "Saving" not in written.read_text(errors="replace")
