"""Finding the daemon's containerd: from `docker info`, else settings, else the usual sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from packcache.transports.containerd import (
    DEFAULT_SOCKETS,
    ENV_ADDRESS,
    ENV_NAMESPACE,
    Containerd,
    ContainerdError,
    Endpoint,
    find_endpoint,
    gc_ref_labels,
)

INFO_146 = {
    "Containerd": {
        "Address": "/run/docker/containerd/containerd.sock",
        "Namespaces": {"Containers": "moby", "Plugins": "plugins.moby"},
    }
}


def test_daemon_info_wins_over_settings() -> None:
    env = {ENV_ADDRESS: "/elsewhere.sock", ENV_NAMESPACE: "other"}
    assert find_endpoint(INFO_146, env) == Endpoint(
        "/run/docker/containerd/containerd.sock", "moby", "daemon info"
    )


def test_settings_where_the_daemon_does_not_say() -> None:
    env = {ENV_ADDRESS: "unix:///srv/c.sock", ENV_NAMESPACE: "ns1"}
    assert find_endpoint({"ServerVersion": "26.1.5"}, env) == Endpoint(
        "/srv/c.sock", "ns1", "environment"
    )


def test_defaults_take_the_socket_that_exists() -> None:
    present = {DEFAULT_SOCKETS[1]}
    found = find_endpoint({}, {}, exists=present.__contains__)
    assert found == Endpoint(DEFAULT_SOCKETS[1], "moby", "default")
    # None there: the first default is named, so the error says where it looked.
    assert find_endpoint({}, {}, exists=lambda _: False).address == DEFAULT_SOCKETS[0]


def test_namespace_setting_applies_to_a_default_socket() -> None:
    found = find_endpoint({"Containerd": None}, {ENV_NAMESPACE: "ci"}, exists=lambda _: True)
    assert (found.address, found.namespace) == (DEFAULT_SOCKETS[0], "ci")


def test_gc_labels_name_config_and_layers_in_order() -> None:
    assert gc_ref_labels("sha256:c", ["sha256:a", "sha256:b"]) == {
        "containerd.io/gc.ref.content.config": "sha256:c",
        "containerd.io/gc.ref.content.l.0": "sha256:a",
        "containerd.io/gc.ref.content.l.1": "sha256:b",
    }


def test_missing_socket_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ContainerdError, match=r"no containerd socket at .*gone\.sock"):
        Containerd(Endpoint(str(tmp_path / "gone.sock"), "moby", "environment"))


def test_a_plain_file_is_not_taken_for_a_socket(tmp_path: Path) -> None:
    (tmp_path / "file.sock").write_text("")
    with pytest.raises(ContainerdError, match="is not a socket"):
        Containerd(Endpoint(str(tmp_path / "file.sock"), "moby", "environment"))


def test_a_dead_socket_says_containerd_is_not_running(tmp_path: Path) -> None:
    # A socket file nobody listens on: what a crashed containerd leaves behind.
    path = tmp_path / "dead.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.close()
    with pytest.raises(ContainerdError, match=r"cannot reach containerd at .*is it running"):
        Containerd(Endpoint(str(path), "moby", "environment"))


def test_importing_the_transport_does_not_import_grpc() -> None:
    code = (
        "import sys, packcache.transports.containerd as c; "
        "c.find_endpoint({}, {}); print('grpc' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
