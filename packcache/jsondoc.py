"""Strict reading of the JSON documents images are made of, and checks of their shape.

Configs, manifests and indexes come from archives, registries and daemons, all untrusted, and
what is accepted here is stored and later served: so only clean UTF-8 JSON is read (no BOM, no
UTF-16, no lone surrogates, no NaN, no key twice: each is a way for two readers to disagree on
what a document says), and fields are checked for the types packcache and engines rely on.
Standard library only, so that any layer of packcache may import it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from packcache.errors import PackcacheError

_STRING_FIELDS = ("os", "architecture", "variant", "created", "author", "os.version")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


class DocumentError(PackcacheError, ValueError):
    """A JSON document is not clean UTF-8 JSON or not of the shape its kind requires."""


def _refuse_constant(name: str) -> Any:
    raise DocumentError(f"holds {name}, which JSON does not allow")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DocumentError(f"has the key {key!r} twice")
            seen.add(key)
    return document


def strict_loads(data: bytes, what: str) -> Any:
    """Parse `data` as UTF-8 JSON, refusing whatever lenient readers would let through.

    `what` names the document in the error (e.g. "the archive's manifest.json").
    """
    if data.startswith(_BOMS):
        raise DocumentError(f"{what} is not UTF-8 JSON: it starts with a byte-order mark")
    if b"\x00" in data:  # never in UTF-8 JSON; in every UTF-16 or UTF-32 text
        raise DocumentError(f"{what} is not UTF-8 JSON: it holds NUL bytes (UTF-16 or UTF-32?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{what} is not UTF-8: {exc}") from exc
    try:
        document = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except DocumentError as exc:
        raise DocumentError(f"{what} is not valid JSON: it {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise DocumentError(f"{what} is not valid JSON: {exc}") from exc
    try:
        # "\ud800" escapes decode to lone surrogates, which no UTF-8 writer can give back.
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DocumentError(f"{what} holds a lone UTF-16 surrogate escape") from exc
    return document


# -- shapes ------------------------------------------------------------------------------------


def _fail(what: str, problem: str) -> DocumentError:
    return DocumentError(f"{what} is malformed: {problem}")


def _object(value: object, what: str, name: str, *, required: bool = False) -> dict[str, Any]:
    """A JSON object, or {} for null (Go writes a nil map as null)."""
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise _fail(what, f"{name!r} is not an object")
    return value


def _list(value: object, what: str, name: str) -> list[Any]:
    """A JSON array, or [] for null (Go writes a nil slice as null)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(what, f"{name!r} is not a list")
    return value


def _strings(value: object, what: str, name: str) -> list[str]:
    items = _list(value, what, name)
    if not all(isinstance(item, str) for item in items):
        raise _fail(what, f"{name!r} is not a list of strings")
    return items


def _string_map(value: object, what: str, name: str) -> dict[str, str]:
    mapping = _object(value, what, name)
    if not all(isinstance(item, str) for item in mapping.values()):
        raise _fail(what, f"{name!r} is not an object of strings")
    return mapping


def _string_fields(
    document: dict[str, Any], names: tuple[str, ...], what: str, prefix: str = ""
) -> None:
    for name in names:
        if document.get(name) is not None and not isinstance(document[name], str):
            raise _fail(what, f"{prefix + name!r} is not a string")


def is_sha256_digest(value: object) -> bool:
    return isinstance(value, str) and bool(_DIGEST.match(value))


def _check_container_config(value: object, what: str) -> None:
    container = _object(value, what, "config")
    _string_map(container.get("Labels"), what, "config.Labels")
    for name in ("Env", "Cmd", "Entrypoint", "Shell", "OnBuild"):
        _strings(container.get(name), what, f"config.{name}")
    for name in ("ExposedPorts", "Volumes"):
        _object(container.get(name), what, f"config.{name}")
    _string_fields(container, ("User", "WorkingDir", "StopSignal"), what, "config.")


def check_image_config(document: object, what: str = "the image config") -> dict[str, Any]:
    """Check an image config's fields have the types the OCI image spec gives them; return it.

    Fields packcache and engines read are checked (rootfs, platform, created, config's Labels,
    Env, Cmd...); fields nothing reads are left alone, as engines leave them.
    """
    config = _object(document, what, "config", required=True)
    _string_fields(config, _STRING_FIELDS, what)
    _strings(config.get("os.features"), what, "os.features")
    rootfs = _object(config.get("rootfs"), what, "rootfs", required=True)
    _string_fields(rootfs, ("type",), what, "rootfs.")
    diff_ids = _list(rootfs.get("diff_ids"), what, "rootfs.diff_ids")
    if not all(is_sha256_digest(d) for d in diff_ids):
        raise _fail(what, "'rootfs.diff_ids' is not a list of sha256 digests")
    _check_container_config(config.get("config"), what)
    for entry in _list(config.get("history"), what, "history"):
        step = _object(entry, what, "history[]", required=True)
        _string_fields(step, ("created", "created_by", "author", "comment"), what, "history[].")
        if step.get("empty_layer") is not None and not isinstance(step["empty_layer"], bool):
            raise _fail(what, "'history[].empty_layer' is not a boolean")
    return config


def config_diff_ids(config: dict[str, Any]) -> list[str]:
    """The diffIDs of a config that passed check_image_config."""
    return list(config["rootfs"].get("diff_ids") or [])


def check_descriptor(document: object, what: str) -> dict[str, Any]:
    """An OCI content descriptor: a sha256 digest, a size, optional media type and annotations."""
    descriptor = _object(document, what, "descriptor", required=True)
    if not is_sha256_digest(descriptor.get("digest")):
        raise _fail(what, "a descriptor's 'digest' is not a sha256 digest")
    size = descriptor.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise _fail(what, "a descriptor's 'size' is not a byte count")
    _string_fields(descriptor, ("mediaType", "artifactType"), what)
    _string_map(descriptor.get("annotations"), what, "annotations")
    _strings(descriptor.get("urls"), what, "urls")
    _object(descriptor.get("platform"), what, "platform")
    return descriptor


def check_index(document: object, what: str) -> list[dict[str, Any]]:
    """An OCI image index (or Docker manifest list); returns its manifests' descriptors."""
    index = _object(document, what, "index", required=True)
    _string_fields(index, ("mediaType",), what)
    _string_map(index.get("annotations"), what, "annotations")
    return [check_descriptor(d, what) for d in _list(index.get("manifests"), what, "manifests")]


def check_manifest(document: object, what: str) -> dict[str, Any]:
    """An OCI image manifest (or Docker schema 2 manifest): config and layer descriptors."""
    manifest = _object(document, what, "manifest", required=True)
    _string_fields(manifest, ("mediaType",), what)
    _string_map(manifest.get("annotations"), what, "annotations")
    check_descriptor(manifest.get("config"), what)
    for layer in _list(manifest.get("layers"), what, "layers"):
        check_descriptor(layer, what)
    return manifest
