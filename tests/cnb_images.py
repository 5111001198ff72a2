"""CNB-shaped images the rebase tests build: run images v1/v2 and app images on them.

Built as docker-save archives (tests/engines/images.py) with the labels and metadata the
lifecycle writes (platform.md, lifecycle platform/files), loaded into a real engine.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.engines import images
from tests.engines.harness import Engine

STACK = "io.packcache.test.stack"
LIFECYCLE_METADATA = "io.buildpacks.lifecycle.metadata"


@dataclass
class RunImage:
    tag: str
    version: str  # what /etc/run-version holds
    built: images.BuiltImage
    layers: list[dict]
    labels: dict[str, str]
    image_id: str = ""


@dataclass
class AppImage:
    tag: str
    built: images.BuiltImage
    app_diff_ids: list[str]
    marker: bytes  # contents of /workspace/app.txt, unique per app


def payload(size: int, seed: str) -> bytes:
    """`size` incompressible bytes, the same for the same seed."""
    return b"".join(hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(size // 32 + 1))[
        :size
    ]


def run_image_layers(version: str, extra_bytes: int = 0, own_base: bool = False) -> list[dict]:
    """Three run image layers (busybox first, so the image runs; with `own_base`, a busybox
    layer of this version's own, which no other image shares)."""
    base = images.busybox_layer()
    if own_base:
        base["etc/base-version"] = f"{version}\n".encode()
    return [
        base,
        {"etc/run-version": f"{version}\n".encode(), "usr/share/run/base.txt": b"base\n"},
        {
            "usr/share/run/extra.bin": version.encode() * 20_000,
            "usr/share/run/payload.bin": payload(extra_bytes, f"run-{version}"),
        },
    ]


def run_labels(version: str, *, stack: str = STACK, mixins=("curl", "run:tzdata")) -> dict:
    return {
        "io.buildpacks.stack.id": stack,
        "io.buildpacks.stack.mixins": json.dumps(list(mixins)),
        "io.buildpacks.stack.maintainer": f"run {version} maintainers",
        "io.buildpacks.base.distro.name": "busybox",
        "io.buildpacks.base.distro.version": "1.35",
        "org.opencontainers.image.title": f"run image {version}",
    }


def build_run_image(
    engine: Engine,
    tmp: Path,
    version: str,
    tag: str,
    *,
    labels: dict | None = None,
    config_extra: dict | None = None,
    extra_bytes: int = 0,
    own_base: bool = False,
) -> RunImage:
    layers = run_image_layers(version, extra_bytes, own_base)
    all_labels = labels if labels is not None else run_labels(version)
    extra = {
        "config": {
            "Env": ["PATH=/bin", "CNB_USER_ID=1000", "CNB_GROUP_ID=1000"],
            "Labels": all_labels,
        }
    }
    extra.update(config_extra or {})
    built = images.build_legacy_archive(
        tmp / f"run-{uuid.uuid4().hex}.tar", layers, extra, tag, gzip_layers=[False, True, False]
    )
    engine.docker("load", "-i", str(built.path))
    run = RunImage(tag, version, built, layers, all_labels)
    run.image_id = json.loads(engine.docker("image", "inspect", tag).stdout)[0]["Id"]
    return run


def lifecycle_metadata(run: RunImage, *, image: str, mirrors: list[str], new_style: bool) -> dict:
    metadata = {
        "app": [{"sha": "sha256:" + "1" * 64}],
        "buildpacks": [{"key": "test/bp", "version": "1.0.0", "layers": {}}],
        "runImage": {"topLayer": run.built.diff_ids[-1], "reference": run.image_id[7:]},
        "stack": {"runImage": {"image": image, "mirrors": mirrors}},
    }
    if new_style:
        metadata["runImage"].update({"image": image, "mirrors": mirrors})
    return metadata


def build_app_image(
    engine: Engine,
    tmp: Path,
    run: RunImage,
    tag: str,
    *,
    run_name: str | None = None,
    mirrors: list[str] | None = None,
    platform_api: str | None = "0.12",
    extra_labels: dict | None = None,
    metadata: dict | str | None = None,
    extra_bytes: int = 0,
) -> AppImage:
    """An app image as the lifecycle exports it onto `run`: run layers, then app layers."""
    marker = f"app {uuid.uuid4().hex}\n".encode()
    app_layers = [
        {"workspace/app.txt": marker, "workspace/payload.bin": payload(extra_bytes, marker.hex())},
        {"layers/test_bp/web/bin/web": b"#!/bin/sh\necho web\n" + marker},
        {"cnb/lifecycle/launcher": b"launcher " + marker},
    ]
    if metadata is None:
        metadata = lifecycle_metadata(
            run,
            image=run_name or run.tag,
            mirrors=mirrors or [],
            new_style=platform_api is not None,
        )
    labels = {
        k: v
        for k, v in run.labels.items()
        if k.startswith(("io.buildpacks.stack.", "io.buildpacks.base."))
    }
    labels.update(
        {
            LIFECYCLE_METADATA: metadata if isinstance(metadata, str) else json.dumps(metadata),
            "io.buildpacks.build.metadata": json.dumps({"bom": None, "launcher": {"version": "x"}}),
            "io.buildpacks.project.metadata": "{}",
            "io.buildpacks.stack.mixins": json.dumps(["curl"]),
        }
    )
    labels.update(extra_labels or {})
    env = ["PATH=/cnb/process:/cnb/lifecycle:/bin", "CNB_USER_ID=1000", "CNB_GROUP_ID=1000"]
    if platform_api is not None:
        env.append(f"CNB_PLATFORM_API={platform_api}")
    extra = {
        "config": {
            "Env": env,
            "Labels": labels,
            "WorkingDir": "/workspace",
            "User": "1000:1000",
            "Entrypoint": ["/cnb/process/web"],
        },
        "container": "abc123",
        "author": "packcache tests",
    }
    layers = [*run.layers, *app_layers]
    built = images.build_legacy_archive(
        tmp / f"app-{uuid.uuid4().hex}.tar",
        layers,
        extra,
        tag,
        gzip_layers=[False, True, False, False, True, False],
    )
    engine.docker("load", "-i", str(built.path))
    return AppImage(tag, built, built.diff_ids[len(run.layers) :], marker)


def unique(name: str) -> str:
    return f"packcache-test/{name}-{uuid.uuid4().hex[:8]}:1"
