"""Daemon error messages that the real engines of the suite cannot produce for root."""

import pytest

from packcache.transports.daemon import DaemonError, check_api_version, explain

HOST = "unix:///var/run/docker.sock"


def test_permission_denied_names_the_socket_and_the_fix() -> None:
    # As root the tests never see EACCES on a socket; this is the exception the SDK raises.
    error = explain(HOST, PermissionError(13, "Permission denied"))
    assert str(error) == (
        f"permission denied on the Docker socket {HOST}: run as root or join the docker group"
    )


def test_engine_too_old() -> None:
    with pytest.raises(DaemonError, match=r"speaks API 1\.40; packcache needs 1\.41"):
        check_api_version("1.40", HOST)
    check_api_version("1.41", HOST)
    check_api_version("1.51", HOST)


def test_a_malformed_host_is_named_not_a_traceback() -> None:
    from packcache.transports.daemon import Daemon

    with pytest.raises(DaemonError, match=r"invalid Docker host 'http://\[::1'"):
        Daemon("http://[::1")


def test_a_daemon_that_never_answers_is_reported_after_the_handshake_timeout(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import threading
    import time

    import packcache.transports.daemon as daemon_module

    path = tmp_path / "silent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)
    accepted = []  # held open, never answered
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    monkeypatch.setattr(daemon_module, "HANDSHAKE_TIMEOUT_S", 1)
    started = time.monotonic()
    with pytest.raises(DaemonError, match="does not answer"):
        daemon_module.Daemon(f"unix://{path}")
    assert time.monotonic() - started < 10
    server.close()


def _serve_once(path, answer) -> None:
    """A socket at `path` whose one connection is answered by `answer(conn)` after the request
    line and headers arrive: what a hostile or broken daemon sends, which no real engine does."""
    import contextlib
    import socket
    import threading

    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            # The client hanging up is what it should do with an endless answer.
            with contextlib.suppress(OSError):
                answer(conn)
        server.close()

    threading.Thread(target=serve, daemon=True).start()


def test_an_endless_daemon_answer_is_refused_with_memory_bounded(tmp_path, monkeypatch) -> None:
    import packcache.transports.engine_api as engine_api
    from packcache.transports.daemon import Daemon

    monkeypatch.setattr(engine_api, "MAX_JSON", 1 << 20)
    sent = []

    def endless(conn) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nApi-Version: 1.45\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b" " * (256 << 10)
        while sum(sent) < 64 << 20:  # far past the bound: a client reading it all would hang
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent.append(len(chunk))

    path = tmp_path / "endless.sock"
    _serve_once(path, endless)
    with pytest.raises(DaemonError, match="sent too much for its info"):
        Daemon(f"unix://{path}")
    assert sum(sent) < 64 << 20  # it stopped reading, and the server could not go on


def test_a_daemon_answer_that_is_not_json_is_one_clear_error(tmp_path) -> None:
    from packcache.transports.daemon import Daemon

    def garbage(conn) -> None:
        body = b"<html>not a daemon</html>"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    path = tmp_path / "garbage.sock"
    _serve_once(path, garbage)
    with pytest.raises(DaemonError, match="unreadable answer to its info"):
        Daemon(f"unix://{path}")


def test_docker_hosts_are_read_as_the_docker_cli_reads_them() -> None:
    from packcache.transports.engine_api import Address, parse_host

    assert parse_host("unix:///var/run/docker.sock") == Address("unix", path="/var/run/docker.sock")
    assert parse_host("unix://run/d.sock") == Address("unix", path="run/d.sock")  # relative
    assert parse_host("tcp://127.0.0.1:2376") == Address("http", host="127.0.0.1", port=2376)
    assert parse_host("tcp://docker") == Address("http", host="docker", port=2375)
    assert parse_host("https://docker") == Address("https", host="docker", port=443)
    for host in ("ssh://docker", "unix://", "tcp://", "docker.sock"):
        with pytest.raises(ValueError):
            parse_host(host)
