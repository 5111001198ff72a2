"""Image references, normalized the way docker does (foo -> docker.io/library/foo:latest)."""

from __future__ import annotations

import re

from packcache.errors import UsageError

DEFAULT_DOMAIN = "docker.io"
_REF_RE = re.compile(r"^[a-z0-9][a-z0-9._\-/:@]*$", re.IGNORECASE)
_HEX_RE = re.compile(r"^(sha256:)?[0-9a-f]{4,64}$")


def looks_like_id(text: str) -> bool:
    """True for a full or short image/layer ID (hex, at least 4 digits, optional sha256:)."""
    return bool(_HEX_RE.match(text))


def short_id(digest: str) -> str:
    """The 12 hex digits docker shows for an ID."""
    return digest.removeprefix("sha256:")[:12]


def normalize(ref: str) -> str:
    """docker.io/library/foo:latest for foo; registry/name:tag otherwise; digests kept."""
    if not ref or not _REF_RE.match(ref) or ref.endswith((":", "/", "@")):
        raise UsageError(f"invalid image reference {ref!r}")
    name, at, digest = ref.partition("@")
    repository = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    if repository.lower() != repository:
        raise UsageError(f"invalid image reference {ref!r}: repository names are lowercase")
    first, slash, rest = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        name = f"{DEFAULT_DOMAIN}/{name}"
        first, _, rest = name.partition("/")
    if first == DEFAULT_DOMAIN and "/" not in rest:
        name = f"{DEFAULT_DOMAIN}/library/{rest}"
    if not at and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return f"{name}@{digest}" if at else name


def familiar(ref: str) -> str:
    """The short form docker prints: foo:latest for docker.io/library/foo:latest."""
    for prefix in (f"{DEFAULT_DOMAIN}/library/", f"{DEFAULT_DOMAIN}/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref
