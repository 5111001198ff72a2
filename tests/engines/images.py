"""Build test images without a registry: docker-save-style archives for `docker load`.

Everything is deterministic (sorted tar entries, mtime 0, uid/gid 0, gzip mtime 0,
canonical JSON) so the same inputs always give the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.engines import provision

EPOCH = "1970-01-01T00:00:00Z"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class File:
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Symlink:
    target: str


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755


Entry = bytes | File | Symlink | Dir
Layer = Mapping[str, Entry]


@dataclass
class BuiltImage:
    """What build_legacy_archive wrote; digests are 'sha256:<hex>'."""

    path: Path
    repo_tag: str
    config_digest: str  # == image ID on graphdriver engines
    diff_ids: list[str]  # digests of the uncompressed layer tars
    blob_digests: list[str]  # digests of the layer files as stored (gzip or not)
    compressed: list[bool]
    config: dict[str, Any] = field(repr=False)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def docker_arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(m, m)


def _tarinfo(name: str, kind: bytes) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def layer_tar(files: Layer) -> bytes:
    """An uncompressed layer tar; parent directories are added automatically."""
    entries: dict[str, Entry] = {}
    for raw, entry in files.items():
        name = raw.strip("/")
        if not name:
            raise ValueError(f"bad path {raw!r}")
        parts = name.split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), Dir())
        entries[name] = entry
    buf = io.BytesIO()
    # PAX would add per-file headers with varying content; USTAR keeps it plain.
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(entries):
            entry = entries[name]
            if isinstance(entry, bytes):
                entry = File(entry)
            if isinstance(entry, Dir):
                ti = _tarinfo(name + "/", tarfile.DIRTYPE)
                ti.mode = entry.mode
                tar.addfile(ti)
            elif isinstance(entry, Symlink):
                ti = _tarinfo(name, tarfile.SYMTYPE)
                ti.linkname = entry.target
                ti.mode = 0o777
                tar.addfile(ti)
            else:
                ti = _tarinfo(name, tarfile.REGTYPE)
                ti.mode = entry.mode
                ti.size = len(entry.data)
                tar.addfile(ti, io.BytesIO(entry.data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    # mtime=0 and no file name: same input, same bytes, same digest.
    return gzip.compress(data, compresslevel=6, mtime=0)


def _merge_config(base: dict[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(base)
    for k, v in (extra or {}).items():
        if k == "config" and isinstance(v, Mapping):
            out["config"] = {**out.get("config", {}), **v}
        else:
            out[k] = v
    return out


def image_config(diff_ids: Sequence[str], config_extra: Mapping[str, Any] | None) -> dict[str, Any]:
    base: dict[str, Any] = {
        "architecture": docker_arch(),
        "os": "linux",
        "created": EPOCH,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [
            {"created": EPOCH, "created_by": f"packcache test layer {i}"}
            for i in range(len(diff_ids))
        ],
    }
    return _merge_config(base, config_extra)


def build_legacy_archive(
    path: Path,
    layers: Sequence[Layer],
    config_extra: Mapping[str, Any] | None = None,
    repo_tag: str = "packcache-test:latest",
    *,
    gzip_layers: bool | Sequence[bool] = False,
) -> BuiltImage:
    """Write a `docker save` (legacy, pre-OCI) archive that `docker load` accepts.

    layers: bottom-up, each {path: bytes | File | Symlink | Dir}.
    config_extra: merged into the image config; a "config" key merges into the
    container config (Env, Cmd, Labels, ...).
    gzip_layers: True / False for all layers, or one flag per layer; gzipped layer
    files keep the name <id>/layer.tar (docker load sniffs the compression).
    """
    flags = [gzip_layers] * len(layers) if isinstance(gzip_layers, bool) else list(gzip_layers)
    if len(flags) != len(layers):
        raise ValueError("gzip_layers needs one flag per layer")
    tars = [layer_tar(layer) for layer in layers]
    blobs = [gzip_bytes(t) if z else t for t, z in zip(tars, flags, strict=True)]
    diff_ids = [sha256_digest(t) for t in tars]
    blob_digests = [sha256_digest(b) for b in blobs]
    config = image_config(diff_ids, config_extra)
    config_bytes = canonical_json(config)
    config_digest = sha256_digest(config_bytes)
    config_name = config_digest.removeprefix("sha256:") + ".json"
    members: dict[str, bytes] = {config_name: config_bytes}
    layer_paths = []
    for blob, digest in zip(blobs, blob_digests, strict=True):
        # Directory named by the stored blob digest: unique per layer content.
        name = digest.removeprefix("sha256:") + "/layer.tar"
        members[name] = blob
        layer_paths.append(name)
    tags = [repo_tag] if repo_tag else []  # "": an untagged image
    manifest = [{"Config": config_name, "RepoTags": tags, "Layers": layer_paths}]
    members["manifest.json"] = canonical_json(manifest)
    write_tar(path, members)
    return BuiltImage(
        path=Path(path),
        repo_tag=repo_tag,
        config_digest=config_digest,
        diff_ids=diff_ids,
        blob_digests=blob_digests,
        compressed=flags,
        config=config,
    )


def write_tar(path: Path, members: Mapping[str, bytes]) -> None:
    """A deterministic outer archive (sorted members, directories implied by paths)."""
    files: dict[str, Entry] = dict(members)
    Path(path).write_bytes(layer_tar(files))


# --------------------------------------------------------------------------- busybox


BUSYBOX_APPLETS = ("sh", "cat", "ls", "echo", "sleep", "sha256sum", "true", "false", "env")


def busybox_binary(engines_dir: Path | None = None) -> Path:
    """The static busybox unpacked by provision.py (never the machine's own)."""
    d = (engines_dir or provision.default_dir()).resolve()
    path = provision.bundle_root(d, "busybox") / "bin/busybox"
    if not provision.is_provisioned(d, "busybox") or not path.exists():
        raise FileNotFoundError(
            f"{path} missing: run `python -m tests.engines.provision` (busybox bundle)"
        )
    return path


def busybox_layer(engines_dir: Path | None = None) -> dict[str, Entry]:
    """A rootfs layer with /bin/busybox and a few applet symlinks (sh, cat, ...)."""
    layer: dict[str, Entry] = {
        "bin/busybox": File(busybox_binary(engines_dir).read_bytes(), 0o755),
        "tmp": Dir(0o1777),
    }
    for applet in BUSYBOX_APPLETS:
        layer[f"bin/{applet}"] = Symlink("busybox")
    return layer


def build_busybox_archive(
    path: Path,
    repo_tag: str,
    extra_layers: Sequence[Layer] = (),
    *,
    gzip_layers: bool | Sequence[bool] = False,
    config_extra: Mapping[str, Any] | None = None,
    engines_dir: Path | None = None,
) -> BuiltImage:
    """busybox base layer + extra layers, runnable with `docker run IMAGE cat /file`."""
    extra = {"config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}}
    return build_legacy_archive(
        path,
        [busybox_layer(engines_dir), *extra_layers],
        _merge_config(extra, config_extra),
        repo_tag,
        gzip_layers=gzip_layers,
    )
