"""Registry credentials from the Docker CLI's config, looked up the way `docker` does.

`$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`): `credHelpers[host]` first, then
`credsStore`, both through the `docker-credential-<name> get` program on PATH; then `auths[host]`
(base64 `auth` = "user:password", or `username`/`password`).
"""

from __future__ import annotations

import base64
import binascii
import os
import subprocess
from pathlib import Path
from typing import NamedTuple

from packcache.errors import PackcacheError
from packcache.jsondoc import strict_loads

DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
MAX_CONFIG_BYTES = 4 << 20


class Credentials(NamedTuple):
    username: str
    password: str

    def __repr__(self) -> str:  # never print a password in a traceback or a log
        return f"Credentials(username={self.username!r}, password=<hidden>)"


def docker_config_dir() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    return Path(env) if env else Path.home() / ".docker"


def _config_key(host: str) -> str:
    return DOCKER_HUB_KEY if host in DOCKER_HUB_HOSTS else host


def _read_config(config_dir: Path) -> dict:
    path = config_dir / "config.json"
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise PackcacheError(f"cannot read the Docker config {path}: {exc.strerror}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise PackcacheError(f"the Docker config {path} is larger than 4 MiB")
    config = strict_loads(data, f"the Docker config {path}")
    if not isinstance(config, dict):
        raise PackcacheError(f"the Docker config {path} is not a JSON object")
    return config


def _from_auths(auths: object, key: str, host: str) -> Credentials | None:
    if not isinstance(auths, dict):
        return None
    # docker also matches entries written with a scheme or a path ("https://host/v1/").
    entry = auths.get(key)
    if entry is None:
        for name, value in auths.items():
            bare = name.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
            if bare == host:
                entry = value
                break
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            user, sep, password = (
                base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise PackcacheError(
                f"the Docker config's auth for {host} is not base64 user:password"
            ) from exc
        if not sep:
            raise PackcacheError(f"the Docker config's auth for {host} is not user:password")
        return Credentials(user, password)
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(entry["username"], entry["password"])
    return None


def _from_helper(helper: str, key: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run([program, "get"], input=key.encode(), capture_output=True, timeout=60)
    except FileNotFoundError as exc:
        raise PackcacheError(
            f"the Docker config names the credential helper {program}, which is not on PATH"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise PackcacheError(f"{program} get did not answer within 60 s") from exc
    if proc.returncode != 0:
        if b"credentials not found" in proc.stdout + proc.stderr:
            return None
        message = (proc.stderr or proc.stdout).decode(errors="replace").strip()[:200]
        raise PackcacheError(f"{program} get failed: {message}")
    answer = strict_loads(proc.stdout, f"the answer of {program} get")
    if not isinstance(answer, dict) or not isinstance(answer.get("Secret"), str):
        raise PackcacheError(f"{program} get answered without a Secret")
    username = answer.get("Username")
    if username == "<token>":
        raise PackcacheError(
            f"{program} holds an identity token for {key}, which packcache cannot use yet"
        )
    return Credentials(str(username or ""), answer["Secret"])


def find_credentials(host: str, config_dir: Path | None = None) -> Credentials | None:
    """The credentials docker would use for `host` (e.g. "registry.example:5000"), or None."""
    config = _read_config(config_dir or docker_config_dir())
    key = _config_key(host)
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict) and isinstance(helpers.get(key), str):
        return _from_helper(helpers[key], key)
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        found = _from_helper(store, key)
        if found is not None:
            return found
    return _from_auths(config.get("auths"), key, host)
