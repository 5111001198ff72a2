"""Inputs for builder tests: CNB build and run images, buildpackage images (distribution.md,
with the io.buildpacks.buildpack.layers label; one composite holding several buildpacks),
directory and .tgz buildpacks, and a lifecycle .tgz with the release layout.

Everything is unique per call (a salt in every buildpack), so tests sharing an engine never
share an image or a layer by accident. Each fixture also says what the builder must contain,
so tests compare the builder with these expectations, not with packcache's own output.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.engines import images
from tests.engines.harness import Engine

CNB_UID = 1234
CNB_GID = 2345
STACK = "io.packcache.test.stack"
LIFECYCLE_VERSION = "0.20.1"
LIFECYCLE_TOML = """[apis]
[apis.buildpack]
  deprecated = []
  supported = ["0.7", "0.8", "0.9", "0.10"]
[apis.platform]
  deprecated = []
  supported = ["0.7", "0.8", "0.9", "0.10", "0.11", "0.12"]

# For backwards compatibility the minimum supported APIs are provided in RFC-0011 format
[api]
  platform = "0.7"
  buildpack = "0.7"

[lifecycle]
  version = "{version}"
  sbom-formats = ["application/vnd.cyclonedx+json", "application/spdx+json"]
"""
# The release archive's lifecycle/ folder: one binary, phase symlinks to it, the launcher.
LIFECYCLE_LINKS = ("analyzer", "builder", "creator", "detector", "exporter", "extender")
LIFECYCLE_LINKS += ("rebaser", "restorer")


def unique(name: str) -> str:
    return f"packcache-test/{name}-{uuid.uuid4().hex[:8]}:1"


@dataclass
class ExpectedFile:
    """A file the builder must hold: path, mode, owner and contents (None for dirs/links)."""

    path: str
    mode: int
    data: bytes | None = None
    link: str | None = None


@dataclass
class Buildpack:
    id: str
    version: str
    files: dict[str, bytes]  # relative path -> contents (root of the buildpack)
    executable: set[str] = field(default_factory=set)
    api: str = "0.8"
    order: list[list[tuple[str, str]]] = field(default_factory=list)

    @property
    def escaped_id(self) -> str:
        return self.id.replace("/", "_")

    @property
    def root(self) -> str:
        return f"/cnb/buildpacks/{self.escaped_id}/{self.version}"

    def expected(self) -> list[ExpectedFile]:
        """What pack's toDistTar makes of these files: 0755 for bin/* and executables."""
        out = [
            ExpectedFile(f"/cnb/buildpacks/{self.escaped_id}", 0o755),
            ExpectedFile(self.root, 0o755),
        ]
        dirs = set()
        for rel in self.files:
            parts = rel.split("/")
            for i in range(1, len(parts)):
                dirs.add("/".join(parts[:i]))
        out += [ExpectedFile(f"{self.root}/{d}", 0o755) for d in sorted(dirs)]
        for rel, data in self.files.items():
            mode = 0o755 if rel in self.executable or rel in ("bin/build", "bin/detect") else 0o644
            out.append(ExpectedFile(f"{self.root}/{rel}", mode, data))
        return out


def make_buildpack(bp_id: str, version: str = "1.0.0", *, order=None, size: int = 0) -> Buildpack:
    salt = uuid.uuid4().hex
    order = order or []
    toml = f'api = "0.8"\n\n[buildpack]\n  id = "{bp_id}"\n  version = "{version}"\n'
    toml += f'  name = "Test {bp_id}"\n  homepage = "https://example.test/{bp_id}"\n'
    if order:
        for group in order:
            toml += "\n[[order]]\n"
            for gid, gversion in group:
                toml += f'  [[order.group]]\n    id = "{gid}"\n    version = "{gversion}"\n'
    else:
        toml += f'\n[[stacks]]\n  id = "{STACK}"\n'
    files = {"buildpack.toml": toml.encode()}
    if not order:
        files["bin/detect"] = b"#!/bin/sh\nexit 0\n"
        files["bin/build"] = f"#!/bin/sh\necho building {bp_id} {salt}\n".encode()
        files["lib/salt.txt"] = salt.encode()
        if size:
            # Incompressible-ish filler, different per buildpack (salt in every block).
            block = (salt * 64).encode()
            files["lib/payload.bin"] = (block * (size // len(block) + 1))[:size]
    return Buildpack(bp_id, version, files, {"bin/build", "bin/detect"}, order=order)


def write_directory(buildpack: Buildpack, folder: Path) -> Path:
    for rel, data in buildpack.files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if rel in buildpack.executable else 0o644)
    return folder


def write_tgz(buildpack: Buildpack, path: Path) -> Path:
    """A buildpack archive as `tar czf` of its root would make it (./ prefixed names, directory
    entries; odd owners, times and a 0700 directory mode that pack's normalization must undo)."""
    buffer = io.BytesIO()
    dirs = {
        "/".join(rel.split("/")[:i])
        for rel in buildpack.files
        for i in range(1, rel.count("/") + 1)
    }
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in ["", *sorted(dirs)]:
            info = tarfile.TarInfo(f"./{folder}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, 1_700_000_000
            tar.addfile(info)
        for rel in sorted(buildpack.files):
            info = tarfile.TarInfo("./" + rel)
            info.size = len(buildpack.files[rel])
            info.mode = 0o755 if rel in buildpack.executable else 0o644
            info.mtime = 1_700_000_000
            info.uid, info.gid, info.uname = 501, 20, "author"
            tar.addfile(info, io.BytesIO(buildpack.files[rel]))
    path.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    return path


def package_layer(buildpack: Buildpack) -> dict:
    """A buildpackage layer: one buildpack at /cnb/buildpacks/<id>/<version>/ (as pack lays it)."""
    layer: dict = {}
    for rel, data in buildpack.files.items():
        mode = 0o755 if rel in buildpack.executable else 0o644
        layer[f"cnb/buildpacks/{buildpack.escaped_id}/{buildpack.version}/{rel}"] = images.File(
            data, mode
        )
    return layer


def layers_label_entry(buildpack: Buildpack, diff_id: str) -> dict:
    entry: dict = {"api": buildpack.api}
    if buildpack.order:
        entry["order"] = [
            {"group": [{"id": i, "version": v} for i, v in group]} for group in buildpack.order
        ]
    else:
        entry["stacks"] = [{"id": STACK}]
    entry["layerDiffID"] = diff_id
    entry["homepage"] = f"https://example.test/{buildpack.id}"
    entry["name"] = f"Test {buildpack.id}"
    return entry


@dataclass
class Buildpackage:
    ref: str
    main: Buildpack
    buildpacks: list[Buildpack]
    diff_ids: dict[str, str]  # id@version -> layer diffID


def load_buildpackage(
    engine: Engine, tmp_path: Path, ref: str, main: Buildpack, deps: list[Buildpack] = ()
) -> Buildpackage:
    """A buildpackage image in the engine: one layer per buildpack, labels per distribution.md."""
    buildpacks = [main, *deps]
    tars = [images.layer_tar(package_layer(bp)) for bp in buildpacks]
    diff_ids = [images.sha256_digest(t) for t in tars]
    layers_label: dict = {}
    for bp, diff_id in zip(buildpacks, diff_ids, strict=True):
        layers_label.setdefault(bp.id, {})[bp.version] = layers_label_entry(bp, diff_id)
    labels = {
        "io.buildpacks.buildpackage.metadata": json.dumps(
            {"id": main.id, "version": main.version, "stacks": [{"id": STACK}]}
        ),
        "io.buildpacks.buildpack.layers": json.dumps(layers_label),
    }
    built = images.build_legacy_archive(
        tmp_path / f"{uuid.uuid4().hex}.tar",
        [package_layer(bp) for bp in buildpacks],
        {"config": {"Labels": labels}},
        ref,
    )
    assert built.diff_ids == diff_ids
    engine.docker("load", "-i", str(built.path))
    return Buildpackage(
        ref,
        main,
        buildpacks,
        {f"{b.id}@{b.version}": d for b, d in zip(buildpacks, diff_ids, strict=True)},
    )


def load_build_image(
    engine: Engine, tmp_path: Path, ref: str, extra_labels=None, text: bytes = b"build image\n"
) -> dict:
    """A build image; `text` (its own layer's one file) makes its layers, and so every chain of
    a builder on it, of its own."""
    labels = {"io.buildpacks.stack.id": STACK, **(extra_labels or {})}
    built = images.build_busybox_archive(
        tmp_path / f"{uuid.uuid4().hex}.tar",
        ref,
        [{"etc/build-image.txt": text}],
        config_extra={
            "config": {
                "Env": ["PATH=/bin", f"CNB_USER_ID={CNB_UID}", f"CNB_GROUP_ID={CNB_GID}"],
                "Labels": labels,
                "User": "",
            }
        },
    )
    engine.docker("load", "-i", str(built.path))
    return json.loads(engine.docker("image", "inspect", ref).stdout)[0]


def load_run_image(engine: Engine, tmp_path: Path, ref: str, stack: str = STACK) -> None:
    built = images.build_busybox_archive(
        tmp_path / f"{uuid.uuid4().hex}.tar",
        ref,
        [{"etc/run-image.txt": b"run image\n"}],
        config_extra={"config": {"Labels": {"io.buildpacks.stack.id": stack}}},
    )
    engine.docker("load", "-i", str(built.path))


def write_lifecycle(
    path: Path, version: str = LIFECYCLE_VERSION, toml: str = LIFECYCLE_TOML
) -> dict[str, ExpectedFile]:
    """A lifecycle release archive laid out as buildpacks/lifecycle's packager writes it:
    lifecycle.toml, then lifecycle/ with the binary, phase symlinks and the launcher."""
    binary = f"#!/bin/sh\necho lifecycle {version}\n".encode()
    launcher = b"#!/bin/sh\necho launcher\n"
    buffer = io.BytesIO()
    expected: dict[str, ExpectedFile] = {}

    def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
        info.mtime = 315532801
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if data else None)

    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        descriptor = tarfile.TarInfo("lifecycle.toml")
        descriptor.mode = 0o644
        add(descriptor, toml.format(version=version).encode())
        folder = tarfile.TarInfo("lifecycle")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        add(folder)
        for name in sorted((*LIFECYCLE_LINKS, "launcher", "lifecycle")):
            info = tarfile.TarInfo(f"lifecycle/{name}")
            if name in LIFECYCLE_LINKS:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, "lifecycle", 0o777
                add(info)
                expected[name] = ExpectedFile(f"/cnb/lifecycle/{name}", 0o777, link="lifecycle")
            else:
                info.mode = 0o755
                data = launcher if name == "launcher" else binary
                add(info, data)
                expected[name] = ExpectedFile(f"/cnb/lifecycle/{name}", 0o755, data)
    path.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    return expected
