"""`packcache import IMAGE` against every real engine of the matrix."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.engines import images
from tests.engines.harness import Engine

BASE_LAYERS = [{"etc/base-a.txt": b"a\n"}, {"etc/base-b.txt": b"b" * 300_000}]


def unique(name: str) -> str:
    return f"packcache-test/{name}-{uuid.uuid4().hex[:8]}:1"


def load_image(engine: Engine, tmp_path: Path, tag: str, extra=(), gzip=None) -> images.BuiltImage:
    layers = [*BASE_LAYERS, *extra]
    flags = gzip if gzip is not None else [False, False, True] + [False] * len(extra)
    image = images.build_busybox_archive(
        tmp_path / f"{uuid.uuid4().hex}.tar", tag, layers, gzip_layers=flags
    )
    engine.docker("load", "-i", str(image.path))
    return image


def inspect(engine: Engine, ref: str) -> dict:
    return json.loads(engine.docker("image", "inspect", ref).stdout)[0]


def test_import_then_ls_shows_exactly_the_image_layers(
    cli, engine: Engine, tmp_path, store
) -> None:
    tag = unique("import")
    load_image(engine, tmp_path, tag)
    info = inspect(engine, tag)
    result = cli("--host", engine.host, "import", tag, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["layers_written"] == len(info["RootFS"]["Layers"])
    rows = cli("ls", "--image", tag, "--format", "json").json()
    assert [r["diff_id"] for r in rows] == info["RootFS"]["Layers"]
    # The ID the engine gives the image finds it too (manifest digest on containerd).
    by_id = cli("ls", "--image", info["Id"][7:19], "--format", "json").json()
    assert [r["diff_id"] for r in by_id] == info["RootFS"]["Layers"]
    usage = cli("du", "--format", "json").json()
    on_disk = sum(p.stat().st_size for p in (store.root / "blobs").rglob("*") if p.is_file())
    assert usage["size"] == on_disk
    if engine.containerd_store:
        # The content store keeps the gzip blob: its digest is learned with the diffID.
        assert any(r["compression"] == "gzip" and r["digests"] for r in rows)


def test_second_import_saves_nothing(cli, engine: Engine, tmp_path) -> None:
    tag = unique("again")
    load_image(engine, tmp_path, tag)
    cli("--host", engine.host, "import", tag)
    again = cli("--host", engine.host, "import", tag, "--format", "json").json()
    assert again["already_cached"] == [tag]
    assert again["bytes_read"] == 0 and again["layers_written"] == 0


def test_shared_base_is_not_written_twice(cli, engine: Engine, tmp_path) -> None:
    base, app = unique("base"), unique("app")
    load_image(engine, tmp_path, base)
    load_image(engine, tmp_path, app, extra=[{"app/main.txt": b"app\n"}])
    cli("--host", engine.host, "import", base)
    out = cli("--host", engine.host, "import", app, "--format", "json").json()
    assert out["layers_written"] == 1
    assert out["layers_known"] == len(BASE_LAYERS) + 1  # busybox + base layers


def test_import_several_images_in_one_save(cli, engine: Engine, tmp_path) -> None:
    one, two = unique("one"), unique("two")
    load_image(engine, tmp_path, one, extra=[{"x": b"1"}])
    load_image(engine, tmp_path, two, extra=[{"x": b"2"}])
    out = cli("--host", engine.host, "import", one, two, "--format", "json").json()
    assert sorted(r for i in out["images"] for r in i["refs"]) == sorted([one, two])


def test_unknown_image_is_a_clear_error(cli, engine: Engine, cache_dir) -> None:
    result = cli("--host", engine.host, "import", "no-such-image:1")
    assert result.exit_code == 1
    assert "no image no-such-image:1 in the Docker daemon" in result.stderr


@pytest.mark.parametrize("host", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"])
def test_unreachable_daemon_names_the_socket(cli, host) -> None:
    result = cli("--host", host, "import", "x")
    assert result.exit_code == 1
    assert f"cannot reach the Docker daemon at {host}" in result.stderr
