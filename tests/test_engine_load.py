"""`packcache load` against every real engine: complete images, only missing layers sent."""

from __future__ import annotations

import json
import tarfile
import uuid
from pathlib import Path

import pytest

from packcache.errors import NotFoundError
from packcache.transports.containerd import Containerd, find_endpoint
from packcache.transports.daemon import Daemon
from tests.engines import images
from tests.engines.harness import CONTENT_CHECK_KIND, Engine
from tests.layers import sha256
from tests.test_containerd_transport import collect_garbage
from tests.test_engine_import import BASE_LAYERS, inspect, load_image, unique


def app_layers() -> list[dict[str, bytes]]:
    """App layers unique to one test: engines are shared by the session's tests."""
    salt = uuid.uuid4().bytes
    return [
        {"app/main.txt": b"hello from the app\n", "app/salt": salt},
        {"app/data.bin": b"d" * 200_000, "app/salt": salt},
    ]


def saved_layers(engine: Engine, ref: str, tmp_path: Path) -> list[str]:
    """diffIDs of the layer bytes a `docker save` of `ref` really holds (any layout)."""
    path = tmp_path / "saved.tar"
    engine.docker("save", "-o", str(path), ref)
    with tarfile.open(path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        found = []
        for layer_path in manifest[0]["Layers"]:
            data = tar.extractfile(layer_path).read()
            if data[:2] == b"\x1f\x8b":
                import gzip

                data = gzip.decompress(data)
            found.append(sha256(data))
    return found


def test_rmi_then_load_brings_the_image_back_whole(cli, engine: Engine, tmp_path) -> None:
    tag = unique("roundtrip")
    load_image(engine, tmp_path, tag, extra=app_layers())
    before = inspect(engine, tag)
    assert cli("--host", engine.host, "import", tag).exit_code == 0
    engine.docker("rmi", tag)
    result = cli("--host", engine.host, "load", tag, "--format", "json")
    assert result.exit_code == 0, result.stderr
    after = inspect(engine, tag)
    assert after["RootFS"]["Layers"] == before["RootFS"]["Layers"]
    if not engine.containerd_store:
        assert after["Id"] == before["Id"]
    run = engine.docker("run", "--rm", "--network", "none", tag, "cat", "/app/main.txt")
    assert run.stdout == b"hello from the app\n"
    assert saved_layers(engine, tag, tmp_path) == before["RootFS"]["Layers"]


def test_load_onto_a_base_in_the_daemon_sends_only_the_new_layers(
    cli, engine: Engine, tmp_path
) -> None:
    base, app = unique("base"), unique("app")
    load_image(engine, tmp_path, base)
    load_image(engine, tmp_path, app, extra=app_layers())
    assert cli("--host", engine.host, "import", base, app).exit_code == 0
    engine.docker("rmi", app)
    report = cli("--host", engine.host, "load", app, "--format", "json").json()
    layers = inspect(engine, app)["RootFS"]["Layers"]
    assert report["layers_sent"] == 2
    assert report["layers_reused"] == len(layers) - 2
    assert not report["full_reload"]
    # Bytes sent: the new layers, the config and tar framing; not the busybox base (~1 MB).
    assert 200_000 < report["bytes_sent"] < 300_000
    run = engine.docker("run", "--rm", "--network", "none", app, "cat", "/app/main.txt")
    assert run.stdout == b"hello from the app\n"
    assert saved_layers(engine, app, tmp_path) == layers


def test_a_base_the_cache_never_saw(cli, engine: Engine, tmp_path) -> None:
    # Only the app is imported. A graphdriver's chains come from the index for images whose
    # config it holds and from an inspect for the others, so the base is found all the same.
    # Through `docker load`, a containerd store's blobs are known only from manifests recorded
    # from it: the base's is not, so every layer is sent (rebase and create-builder import such
    # a base first). Through its containerd (28: the daemon says where), containerd says.
    base, app = unique("base"), unique("app")
    load_image(engine, tmp_path, base)
    load_image(engine, tmp_path, app, extra=app_layers())
    assert cli("--host", engine.host, "import", app).exit_code == 0
    engine.docker("rmi", app)
    if engine.containerd_store and engine.info().get("Containerd"):
        with Containerd(find_endpoint(engine.info(), {})) as ctd:
            collect_garbage(ctd)  # the app's own blobs are gone: they must be sent
    report = cli("--host", engine.host, "load", app, "--format", "json").json()
    layers = inspect(engine, app)["RootFS"]["Layers"]
    if engine.containerd_store and report["load_method"] == "docker load":
        assert report["layers_sent"] == len(layers)
    else:
        assert report["layers_sent"] == 2
        assert 200_000 < report["bytes_sent"] < 300_000
    assert saved_layers(engine, app, tmp_path) == layers


def test_loading_what_the_daemon_has_sends_config_only(cli, engine: Engine, tmp_path) -> None:
    tag, other = unique("whole"), unique("retag")
    load_image(engine, tmp_path, tag, extra=app_layers())
    cli("--host", engine.host, "import", tag)
    report = cli("--host", engine.host, "load", tag, "--tag", other, "--format", "json").json()
    assert report["layers_sent"] == 0
    assert report["bytes_sent"] < 20_000
    assert inspect(engine, other)["RootFS"]["Layers"] == inspect(engine, tag)["RootFS"]["Layers"]
    assert saved_layers(engine, other, tmp_path) == inspect(engine, tag)["RootFS"]["Layers"]


def test_load_needs_a_cached_image(cli, engine: Engine) -> None:
    result = cli("--host", engine.host, "load", "never-imported:1")
    assert result.exit_code == 1 and "no image 'never-imported:1' in the cache" in result.stderr


def test_incomplete_load_is_detected_and_reloaded_whole(cli, engine_pool, tmp_path, store):
    """A manifest naming a blob the content store lacks loads "fine" but is broken; the check
    after the load (`?manifests=1`, API 1.48+: only a containerd store of Engine 28 and newer
    can report missing content) catches it and everything is sent again."""
    engine = engine_pool.get(CONTENT_CHECK_KIND)
    assert engine.containerd_store
    assert tuple(map(int, engine.api_version.split("."))) >= (1, 48)
    base, app = unique("base"), unique("app")
    load_image(engine, tmp_path, base)
    load_image(engine, tmp_path, app, extra=app_layers())
    cli("--host", engine.host, "import", base, app)
    engine.docker("rmi", app)
    base_id = inspect(engine, base)["Id"]

    def lie() -> None:  # make the recorded manifest of base lie about one blob
        with store.db.write() as conn:
            row = conn.exec_driver_sql(
                "SELECT s.rowid, s.manifest FROM image_sources s WHERE s.manifest IS NOT NULL"
                " AND s.image_id = ?",
                (base_id,),
            ).one()
            manifest = json.loads(row.manifest)
            manifest["layers"][-1]["digest"] = "sha256:" + "0" * 64
            conn.exec_driver_sql(
                "UPDATE image_sources SET manifest = ? WHERE rowid = ?",
                (json.dumps(manifest), row.rowid),
            )

    lie()
    # The check belongs to the `docker load` path (containerd's address `off`).
    off = ("--containerd-address", "off")
    report = cli(*off, "--host", engine.host, "load", app, "--format", "json").json()
    assert report["load_method"] == "docker load"
    assert report["full_reload"]
    layers = inspect(engine, app)["RootFS"]["Layers"]
    assert saved_layers(engine, app, tmp_path) == layers
    # Through containerd the content store itself is asked which blobs it has: a lie in the
    # cache's records is never believed, nothing needs loading twice.
    engine.docker("rmi", app)
    lie()
    through = cli("--host", engine.host, "load", app, "--format", "json").json()
    assert through["load_method"] == "containerd"
    assert not through["full_reload"]
    assert saved_layers(engine, app, tmp_path) == layers


def test_empty_and_repeated_layers_round_trip(cli, engine: Engine, tmp_path) -> None:
    """Empty layers (ENV/LABEL steps of a Dockerfile) and the same layer twice in one image:
    docker save writes the repeat once (20.10 as a symlink), the cache stores it once."""
    tag = unique("empty")
    salt = {"salt": uuid.uuid4().bytes}
    layers = [{}, salt, {}, {"app/x.txt": b"x\n"}, salt]
    load_image(engine, tmp_path, tag, extra=layers, gzip=[False] * 8)
    diff_ids = inspect(engine, tag)["RootFS"]["Layers"]
    assert len(set(diff_ids)) < len(diff_ids)  # really repeated
    result = cli("--host", engine.host, "import", tag, "--format", "json")
    assert result.exit_code == 0, result.stderr
    rows = cli("ls", "--image", tag, "--format", "json").json()
    assert [r["diff_id"] for r in rows] == list(dict.fromkeys(diff_ids))
    engine.docker("rmi", tag)
    assert cli("--host", engine.host, "load", tag).exit_code == 0
    assert inspect(engine, tag)["RootFS"]["Layers"] == diff_ids
    assert saved_layers(engine, tag, tmp_path) == diff_ids


def test_inspects_are_remembered_until_this_client_changes_the_daemon(
    engine: Engine, tmp_path
) -> None:
    present, absent = unique("present"), unique("absent")
    load_image(engine, tmp_path, present)
    daemon = Daemon(engine.host)
    asked: list[str] = []
    real_inspect = daemon._inspect_request
    daemon._inspect_request = lambda ref, *rest: asked.append(ref) or real_inspect(ref, *rest)

    daemon.prefetch([present, absent, present])
    assert sorted(asked) == sorted([present, absent])  # concurrently, each once
    info = daemon.inspect_image(present)
    assert info.id == inspect(engine, present)["Id"]
    assert daemon.has_image(info.id)  # by ID too, from the inspect by tag
    assert daemon.image_diff_ids(info.id) == inspect(engine, present)["RootFS"]["Layers"]
    with pytest.raises(NotFoundError, match=absent):
        daemon.inspect_image(absent)
    assert not daemon.has_image(absent)
    assert len(asked) == 2  # all of that answered from memory

    archive = images.build_busybox_archive(tmp_path / "absent.tar", absent, BASE_LAYERS)
    daemon.load(iter([archive.path.read_bytes()]))
    assert daemon.inspect_image(absent).id == inspect(engine, absent)["Id"]  # asked again
    assert asked[2:] == [absent]


def test_an_image_list_asked_ahead_answers_once_and_never_after_a_change(
    engine: Engine, tmp_path
) -> None:
    daemon = Daemon(engine.host)
    lists: list[int] = []
    real_list = daemon._image_list
    daemon._image_list = lambda: lists.append(1) or real_list()

    daemon.list_images_soon()
    daemon.list_images_soon()  # one list asked for, not two
    listed = daemon.image_ids()
    assert len(lists) == 1 and daemon.image_ids() == listed
    assert set(listed) >= {line for line in engine.docker("images", "-q", "--no-trunc").stdout
                           .decode().split()}  # fmt: skip

    # A list asked for before this client changes the daemon is not what answers after it.
    daemon.list_images_soon()  # remembered already: nothing asked
    assert len(lists) == 1
    before, after = unique("listed-before"), unique("listed-after")
    archive = images.build_busybox_archive(tmp_path / "a.tar", before, app_layers())
    daemon.load(iter([archive.path.read_bytes()]))
    daemon.list_images_soon()
    assert daemon._listing is not None
    daemon._listing.result()  # in, before the next change
    archive = images.build_busybox_archive(tmp_path / "b.tar", after, app_layers())
    daemon.load(iter([archive.path.read_bytes()]))
    assert inspect(engine, after)["Id"] in daemon.image_ids()
    assert len(lists) == 3  # the list asked ahead of the last load was not used


def test_a_load_over_a_taken_tag_replaces_it_and_leaves_no_temporary_name(
    cli, engine: Engine, tmp_path
) -> None:
    app, other = unique("app"), unique("other")
    load_image(engine, tmp_path, app, extra=app_layers())
    assert cli("--host", engine.host, "import", app).exit_code == 0
    built = inspect(engine, app)
    engine.docker("rmi", app)
    load_image(engine, tmp_path, other, extra=[{"other.txt": b"other\n"}])
    engine.docker("tag", other, app)  # the tag now names another image, which the load replaces
    since = engine.docker("info", "--format", "{{.SystemTime}}").stdout.decode().strip()
    result = cli("--host", engine.host, "load", app, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert inspect(engine, app)["RootFS"]["Layers"] == built["RootFS"]["Layers"]
    if not engine.containerd_store:
        assert inspect(engine, app)["Id"] == built["Id"]
    names = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode()
    assert "packcache-keep" not in names  # the replaced image was held only during the load
    assert other in names  # and it keeps its own name
    until = engine.docker("info", "--format", "{{.SystemTime}}").stdout.decode().strip()
    events = engine.docker(
        "events",
        "--since",
        since,
        "--until",
        until,
        "--filter",
        "type=image",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ).stdout.decode()
    held = [line for line in events.splitlines() if "packcache-keep" in line]
    # On a containerd store loaded by `docker load` it was held under a temporary name (tagged,
    # then removed); written through containerd, it is kept as the daemon keeps it, dangling.
    by_docker_load = result.json()["load_method"] == "docker load"
    assert bool(held) == (engine.containerd_store and by_docker_load), events
    run = engine.docker("run", "--rm", "--network", "none", app, "cat", "/app/main.txt")
    assert run.stdout == b"hello from the app\n"
