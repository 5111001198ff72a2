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
