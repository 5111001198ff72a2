"""Credentials from the Docker CLI's config.json, read the way docker reads them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from packcache.errors import PackcacheError
from packcache.transports.registry_credentials import (
    Credentials,
    docker_config_dir,
    find_credentials,
)


def write_config(directory: Path, document: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(document))
    return directory


def auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_auths_entry_by_host_with_or_without_scheme(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "auths": {
                "registry.example:5000": {"auth": auth("alice", "pw:with:colons")},
                "https://other.example/v1/": {"auth": auth("bob", "secret")},
                "plain.example": {"username": "carol", "password": "p"},
            }
        },
    )
    assert find_credentials("registry.example:5000", config) == Credentials(
        "alice", "pw:with:colons"
    )
    assert find_credentials("other.example", config) == Credentials("bob", "secret")
    assert find_credentials("plain.example", config) == Credentials("carol", "p")
    assert find_credentials("unknown.example", config) is None


def test_docker_hub_uses_the_index_key(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"auths": {"https://index.docker.io/v1/": {"auth": auth("hubuser", "x")}}}
    )
    assert find_credentials("docker.io", config) == Credentials("hubuser", "x")
    assert find_credentials("registry-1.docker.io", config) == Credentials("hubuser", "x")


def test_no_config_means_no_credentials(tmp_path: Path) -> None:
    assert find_credentials("registry.example", tmp_path / "absent") is None


def test_docker_config_env_names_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert docker_config_dir() == tmp_path
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert docker_config_dir() == tmp_path / "home" / ".docker"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"auths": {"r.example": {"auth": "***"}}}, "not base64"),
        (
            {"auths": {"r.example": {"auth": base64.b64encode(b"nocolon").decode()}}},
            "user:password",
        ),
        ({"credHelpers": {"r.example": "absent-helper"}}, "not on PATH"),
    ],
)
def test_bad_entries_are_one_clear_error(tmp_path: Path, document: dict, message: str) -> None:
    with pytest.raises(PackcacheError, match=message):
        find_credentials("r.example", write_config(tmp_path, document))


def test_a_config_that_is_not_json_is_one_clear_error(tmp_path: Path) -> None:
    tmp_path.joinpath("config.json").write_bytes(b'{"auths": {}, "auths": {}}')
    with pytest.raises(PackcacheError, match="key 'auths' twice"):
        find_credentials("r.example", tmp_path)


def test_credentials_never_show_the_password() -> None:
    assert "hunter2" not in repr(Credentials("u", "hunter2"))
