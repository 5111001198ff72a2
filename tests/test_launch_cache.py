"""pack's launch caches on every engine: a cold rebase takes the app layers from them instead of
a `docker save`, a load the layers the cache lost, and a launch cache's bad files are skipped,
reported and never cached."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import socket
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from packcache.transports.containerd import Containerd
from tests import test_rebase
from tests.cnb_images import AppImage
from tests.engines.harness import Engine
from tests.launch_caches import fill_volume
from tests.test_containerd_transport import collect_garbage, endpoint_of
from tests.test_rebase import check_result, rebase


def app_layer_tars(app: AppImage) -> dict[str, bytes]:
    """diffID -> the uncompressed tar of each app layer, as the lifecycle's exporter keeps it."""
    found = {}
    with tarfile.open(app.built.path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        for path in manifest[0]["Layers"]:
            data = tar.extractfile(path).read()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
            if diff_id in app.app_diff_ids:
                found[diff_id] = data
    assert list(found) == app.app_diff_ids
    return found


def write_launch_cache(root: Path, files: dict[str, bytes]) -> Path:
    """A launch cache directory in lifecycle's layout; `files` are paths under it."""
    (root / "committed").mkdir(parents=True)
    (root / "staging").mkdir()
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def committed(tars: dict[str, bytes]) -> dict[str, bytes]:
    return {f"committed/{diff_id}.tar": data for diff_id, data in tars.items()}


def volume_name(image: str) -> str:
    """A volume name as pack makes them for `image` (the hex part is a stand-in for pack's)."""
    part = image.replace("/", "_").replace(":", "_")
    return f"pack-cache-{part}-{hashlib.sha256(image.encode()).hexdigest()[:12]}.launch"


@pytest.fixture
def launch_volume(engine: Engine, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Makes launch cache volumes, named as pack names them, removed after the test:
    `launch_volume(app, with_image, files=None)` fills one with `files` (paths under the
    cache; default: every app layer, committed) through a container created, never started,
    from `with_image` (which the daemon holds), and returns its name."""
    made: list[str] = []

    def make(app: AppImage, with_image: str, files: dict[str, bytes] | None = None) -> str:
        name = volume_name(app.tag)
        source = tmp_path / f"launch-volume-{len(made)}"
        write_launch_cache(source, committed(app_layer_tars(app)) if files is None else files)
        made.append(name)  # removed after the test even if filling it fails
        fill_volume(engine, name, source, with_image)
        return name

    yield make
    for name in made:
        engine.docker("volume", "rm", "-f", name)


@pytest.fixture
def content_env(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the test engine's containerd listens: Engine 26.1 (API 1.45) does not say."""
    if engine.containerd_store:
        monkeypatch.setenv("PACKCACHE_CONTAINERD_ADDRESS", str(engine.root / "c.sock"))
        monkeypatch.setenv("PACKCACHE_CONTAINERD_NAMESPACE", f"pc-{engine.root.name}")


stack = test_rebase.stack  # run images v1 and v2, and an app on v1


def cached_layers(cli) -> set[str]:
    return {layer["diff_id"] for layer in cli("ls", "--format", "json").json()}


def _read_all(layers):
    """Each (entry, sha256 hex of its bytes), read before the next is asked for."""
    for entry, stream in layers:
        yield entry, hashlib.sha256(stream.read()).hexdigest()


def daemon_time(engine: Engine) -> str:
    return engine.docker("info", "--format", "{{.SystemTime}}").stdout.decode().strip()


def save_events(engine: Engine, since: str) -> list[str]:
    """The images the daemon saved since then (its events endpoint)."""
    events = engine.docker(
        "events",
        "--since",
        since,
        "--until",
        daemon_time(engine),
        "--filter",
        "type=image",
        "--filter",
        "event=save",
        "--format",
        "{{.Actor.ID}}",
    ).stdout.decode()
    return events.split()


def warm_rebase_id(cli, engine: Engine, app: AppImage, run2) -> str:
    """The image a warm rebase (on the daemon's own socket) makes of the app as it was."""
    engine.docker("rmi", app.tag)
    engine.docker("load", "-i", str(app.built.path))
    warm = rebase(cli, engine, app.tag, "--run-image", run2.tag).json()
    assert warm["saved"] == [] and warm["config_from_save"] == {}
    assert warm["layer_sources"] == dict.fromkeys(app.app_diff_ids, "cache")
    return str(warm["new_image_id"])


def test_cold_rebase_takes_the_app_layers_from_a_bind_launch_cache(
    cli, engine: Engine, tmp_path: Path, stack, content_env
) -> None:
    """pack's `--cache 'type=launch;format=bind;source=DIR'`: DIR/launch-cache, named."""
    _run1, run2, app = stack
    write_launch_cache(tmp_path / "bind" / "launch-cache", committed(app_layer_tars(app)))
    since = daemon_time(engine)
    cold = rebase(
        cli, engine, app.tag, "--run-image", run2.tag, "--launch-cache", str(tmp_path / "bind")
    )
    assert cold.exit_code == 0, cold.stderr
    report = cold.json()
    assert report["saved"] == [] and report["config_from_save"] == {}
    assert report["layer_sources"] == dict.fromkeys(app.app_diff_ids, "launch-cache")
    assert report["launch_cache_problems"] == []
    assert save_events(engine, since) == []
    check_result(engine, tmp_path, app.tag, app, run2)
    assert warm_rebase_id(cli, engine, app, run2) == report["new_image_id"]


def test_cold_rebase_takes_the_app_layers_from_a_launch_volume(
    cli, engine: Engine, tmp_path: Path, stack, content_env, launch_volume
) -> None:
    run1, run2, app = stack
    launch_volume(app, run1.tag)
    since = daemon_time(engine)
    cold = rebase(cli, engine, app.tag, "--run-image", run2.tag)
    assert cold.exit_code == 0, cold.stderr
    report = cold.json()
    assert report["saved"] == []
    assert report["layer_sources"] == dict.fromkeys(app.app_diff_ids, "launch-cache")
    assert report["launch_cache_problems"] == []
    assert save_events(engine, since) == []  # no image saved at all, the run image neither
    check_result(engine, tmp_path, app.tag, app, run2)
    containers = engine.docker("ps", "-aq", "--filter", "label=io.packcache.reader")
    assert containers.stdout.strip() == b""
    assert warm_rebase_id(cli, engine, app, run2) == report["new_image_id"]


def test_bad_entries_are_skipped_and_the_rest_saved(
    cli, engine: Engine, tmp_path: Path, stack, content_env, cache_dir: Path
) -> None:
    """On a graphdriver the good layer verifies on its way into the load and the tampered one
    cuts that load short; the app is then saved and loaded from the cache."""
    _run1, run2, app = stack
    tars = app_layer_tars(app)
    good, tampered, truncated = app.app_diff_ids
    files = committed({good: tars[good]})
    files[f"committed/{tampered}.tar"] = tars[good]  # another layer's bytes under this name
    files[f"committed/{truncated}.tar"] = tars[truncated][:-1024]
    files["committed/notes.txt"] = b"stray"
    files["staging/sha256:" + "0" * 64 + ".tar"] = b"a build is exporting"
    root = write_launch_cache(tmp_path / "bind" / "launch-cache", files)
    (root / "committed" / ("sha256:" + "1" * 64 + ".tar")).symlink_to("/etc/passwd")

    result = rebase(
        cli, engine, app.tag, "--run-image", run2.tag, "--launch-cache", str(root.parent)
    )
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["saved"] == [app.tag]
    assert report["layer_sources"] == {
        good: "launch-cache",
        tampered: "docker save",
        truncated: "docker save",
    }
    problems = "\n".join(report["launch_cache_problems"])
    assert f"{tampered}.tar: does not match its name" in problems
    assert f"{truncated}.tar: does not match its name" in problems
    assert "notes.txt" in problems and "stray" in problems
    assert "sha256:" + "1" * 64 + ".tar: not a regular file" in problems
    assert "a build is exporting to it" in problems  # staging/ holds a file
    check_result(engine, tmp_path, app.tag, app, run2)
    verify = cli("verify", "--format", "json").json()
    assert verify["ok"] is True
    listed = cached_layers(cli)
    assert set(app.app_diff_ids) <= listed
    assert list((cache_dir / "ingest").iterdir()) == []  # no temp file of a layer left


def test_import_reads_a_volume_in_use_through_the_engine(
    cli, engine: Engine, tmp_path: Path, stack, content_env, launch_volume
) -> None:
    """Through an idle container and the archive endpoint (as for a daemon on another host):
    the same layers as reading it in place, a build's staging/ noticed, nothing left behind."""
    from packcache.transports.daemon import Daemon
    from packcache.transports.launch_cache import DirectoryReader, VolumeReader, named_volume

    run1, _run2, app = stack
    tars = app_layer_tars(app)
    first = app.app_diff_ids[0]
    files = committed(tars)
    files[f"committed/{first}.tar"] = tars[first][:-1]
    files["committed/extra"] = b"stray"
    files["staging/sha256:" + "0" * 64 + ".tar"] = b"partial"
    volume = launch_volume(app, run1.tag, files)
    daemon = Daemon(engine.host)
    cache = named_volume(daemon, volume)
    assert cache is not None and cache.image_part == app.tag.replace("/", "_").replace(":", "_")
    read = {}
    with VolumeReader(cache, daemon, run1.tag) as through_engine:
        for entry, stream in through_engine.layers():
            read[entry.diff_id] = hashlib.sha256(stream.read()).hexdigest()
    second = app.app_diff_ids[1]
    with VolumeReader(cache, daemon, run1.tag) as one_layer:
        [(entry, stream)] = list(_read_all(one_layer.layers({second, "sha256:" + "2" * 64})))
        assert entry.diff_id == second and stream == hashlib.sha256(tars[second]).hexdigest()
    in_place = DirectoryReader(cache, cache.mountpoint)
    direct = {e.diff_id: hashlib.sha256(s.read()).hexdigest() for e, s in in_place.layers()}
    assert read == direct and set(read) == set(app.app_diff_ids)
    assert through_engine.listing.in_use and in_place.listing.in_use
    assert through_engine.listing.problems == in_place.listing.problems
    assert len(in_place.listing.problems) == 1 and "extra" in in_place.listing.problems[0]
    containers = engine.docker("ps", "-aq", "--filter", "label=io.packcache.reader")
    assert containers.stdout.strip() == b""

    result = cli("--host", engine.host, "import", "--launch-cache", volume, "--format", "json")
    assert result.exit_code == 0, result.stderr
    imported = result.json()
    assert sorted(imported["recorded"]) == sorted(app.app_diff_ids[1:])
    assert imported["in_use"] == [volume]
    assert any(first in problem for problem in imported["problems"])
    listed = {layer["diff_id"]: layer for layer in cli("ls", "--format", "json").json()}
    assert first not in listed and set(app.app_diff_ids[1:]) <= set(listed)
    for diff_id in app.app_diff_ids[1:]:  # the volume's name says which image it is for
        assert app.tag in listed[diff_id]["images"]
    info = cli("--host", engine.host, "info", "--format", "json").json()
    assert volume in info["launch_caches"]


def test_import_of_an_app_takes_its_layers_from_a_launch_volume(
    cli, engine: Engine, stack, content_env, launch_volume
) -> None:
    run1, _run2, app = stack
    launch_volume(app, run1.tag)
    assert cli("--host", engine.host, "import", run1.tag).exit_code == 0
    since = daemon_time(engine)
    result = cli("--host", engine.host, "import", app.tag, "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["from_launch_cache"] == [app.tag] and report["images"] == []
    assert save_events(engine, since) == []
    listed = {layer["diff_id"]: layer for layer in cli("ls", "--format", "json").json()}
    for diff_id in app.app_diff_ids:  # recorded with the app image they came from
        assert app.tag in listed[diff_id]["images"]
    again = cli("--host", engine.host, "import", app.tag, "--no-launch-cache", "--format", "json")
    assert again.json()["already_cached"] == [app.tag]


class RemoteDaemon:
    """The engine's unix socket forwarded to a TCP port on 127.0.0.1: to packcache, a daemon on
    another host, whose paths (volume mount points, its root dir) are not read in place."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.server = socket.create_server(("127.0.0.1", 0))
        self.host = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.socket_path)
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (target, source):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def remote(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[RemoteDaemon]:
    """The engine as a daemon on another host: no containerd address either."""
    monkeypatch.delenv("PACKCACHE_CONTAINERD_ADDRESS", raising=False)
    forwarder = RemoteDaemon(engine.host.removeprefix("unix://"))
    yield forwarder
    forwarder.close()


def config_end_in_save(engine: Engine, image_id: str, tmp_path: Path) -> tuple[int, int]:
    """Where the config (and on a containerd store the manifests, the image ID's and those it
    lists) ends in the image's save stream, and the stream's length."""
    archive = tmp_path / "whole-save.tar"
    engine.docker("save", "-o", str(archive), image_id)
    ends, blobs = {}, {}
    with tarfile.open(archive) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            ends[name] = member.offset_data + member.size
            if member.isfile() and member.size < 1 << 20:
                blobs[name] = tar.extractfile(member).read()
    hex_id = image_id.removeprefix("sha256:")
    if not engine.containerd_store:
        return ends.get(f"{hex_id}.json") or ends[f"blobs/sha256/{hex_id}"], archive.stat().st_size
    wanted = [json.loads(blobs["manifest.json"])[0]["Config"], f"blobs/sha256/{hex_id}"]
    listed = json.loads(blobs[wanted[1]]).get("manifests") or []  # an index: its manifests
    wanted += [f"blobs/sha256/{entry['digest'][7:]}" for entry in listed]
    return max(ends[path] for path in wanted if path in ends), archive.stat().st_size


def test_cold_rebase_through_a_daemon_on_another_host(
    cli, engine: Engine, tmp_path: Path, stack, remote: RemoteDaemon, launch_volume
) -> None:
    """Its volume is read through an idle container, and its app config from the head of a
    save, closed once the config has passed: no layer after it is received."""
    run1, run2, app = stack
    launch_volume(app, run1.tag)
    app_id = json.loads(engine.docker("image", "inspect", app.tag).stdout)[0]["Id"]
    end, whole = config_end_in_save(engine, app_id, tmp_path)
    since = daemon_time(engine)
    cold = cli("--host", remote.host, "rebase", app.tag, "--run-image", run2.tag,
               "--format", "json")  # fmt: skip
    assert cold.exit_code == 0, cold.stderr
    report = cold.json()
    assert report["saved"] == []
    assert report["layer_sources"] == dict.fromkeys(app.app_diff_ids, "launch-cache")
    assert report["launch_cache_problems"] == []
    read = report["config_from_save"][app.tag]
    assert 0 < read <= end < whole
    if engine.containerd_store:  # the run image's manifest came the same way
        assert run2.tag in report["config_from_save"]
    else:
        assert list(report["config_from_save"]) == [app.tag]
    run_id = json.loads(engine.docker("image", "inspect", run2.tag).stdout)[0]["Id"]
    assert set(save_events(engine, since)) <= {app_id, run_id}  # read only to the config
    check_result(engine, tmp_path, app.tag, app, run2)
    containers = engine.docker("ps", "-aq", "--filter", "label=io.packcache.reader")
    assert containers.stdout.strip() == b""
    assert warm_rebase_id(cli, engine, app, run2) == report["new_image_id"]


# -- `packcache load` of a cached image whose layers were evicted -------------------------


def pruned_app(cli, engine: Engine, app: AppImage) -> str:
    """The app imported, its own layers evicted from the cache (the run image's stay: an image
    none of whose layers are cached is forgotten) and the app removed from the daemon (on a
    containerd store its blobs collected too): only a launch cache can give them back.
    Returns the ID the daemon held the app by."""
    original = json.loads(engine.docker("image", "inspect", app.tag).stdout)[0]["Id"]
    assert cli("--host", engine.host, "import", app.tag, "--no-launch-cache").exit_code == 0
    for diff_id in app.app_diff_ids:
        assert cli("rm", "--layer", diff_id).exit_code == 0
    assert not set(app.app_diff_ids) & cached_layers(cli)
    engine.docker("rmi", app.tag)
    if engine.containerd_store:
        with Containerd(endpoint_of(engine)) as ctd:
            collect_garbage(ctd)
    return str(original)


def load(cli, engine: Engine, tag: str, *args: str):
    return cli("--host", engine.host, "load", tag, *args, "--format", "json")


def test_load_takes_pruned_layers_from_a_launch_volume(
    cli, engine: Engine, tmp_path: Path, stack, content_env, launch_volume
) -> None:
    run1, _run2, app = stack
    original = pruned_app(cli, engine, app)
    run_top = run1.built.diff_ids[-1]  # evicted as well: the daemon holds it in run1
    assert cli("rm", "--layer", run_top).exit_code == 0
    launch_volume(app, run1.tag)
    since = daemon_time(engine)
    result = load(cli, engine, app.tag)
    assert result.exit_code == 0, result.stderr
    report = result.json()
    sources = report["layer_sources"]
    assert [sources[diff_id] for diff_id in app.app_diff_ids] == ["launch-cache"] * 3
    assert [sources[diff_id] for diff_id in run1.built.diff_ids[:-1]] == ["cache"] * (
        len(run1.built.diff_ids) - 1
    )
    assert sources[run_top] == "daemon"
    assert report["launch_cache_problems"] == []
    assert report["layers_sent"] == len(app.app_diff_ids)
    assert save_events(engine, since) == []
    loaded = json.loads(engine.docker("image", "inspect", app.tag).stdout)[0]
    assert loaded["Id"] == report["image_id"]
    assert loaded["RootFS"]["Layers"] == run1.built.diff_ids + app.app_diff_ids
    if not engine.containerd_store:  # a graphdriver's image ID is its config's digest
        assert loaded["Id"] == original
    run_cat = ["run", "--rm", "--network", "none", "--entrypoint", "cat", app.tag]
    assert engine.docker(*run_cat, "/workspace/app.txt").stdout == app.marker
    # Recorded again, with the image; a load from the cache alone gives the same image.
    listed = {layer["diff_id"]: layer for layer in cli("ls", "--format", "json").json()}
    for diff_id in app.app_diff_ids:
        assert app.tag in listed[diff_id]["images"]
    assert cli("verify", "--format", "json").json()["ok"] is True
    engine.docker("rmi", app.tag)
    again = load(cli, engine, app.tag, "--no-launch-cache")
    assert again.exit_code == 0, again.stderr
    assert again.json()["image_id"] == report["image_id"]
    assert {again.json()["layer_sources"][d] for d in app.app_diff_ids} == {"cache"}


def test_load_refuses_a_tampered_launch_cache_layer(
    cli, engine: Engine, tmp_path: Path, stack, content_env, cache_dir: Path
) -> None:
    """The bytes under one layer's name are another layer's: the load stops, says which,
    and the cache records nothing wrong; the image is not in the daemon."""
    _run1, _run2, app = stack
    pruned_app(cli, engine, app)
    tars = app_layer_tars(app)
    tampered = app.app_diff_ids[1]
    files = committed(tars)
    files[f"committed/{tampered}.tar"] = tars[app.app_diff_ids[0]]
    root = write_launch_cache(tmp_path / "bind" / "launch-cache", files)
    result = cli("--host", engine.host, "load", app.tag, "--launch-cache", str(root.parent))
    assert result.exit_code == 1
    assert result.stderr.startswith("packcache: error: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{tampered}.tar does not match its name" in result.stderr
    assert engine.docker("image", "inspect", app.tag, check=False).returncode != 0
    assert tampered not in cached_layers(cli)
    assert cli("verify", "--format", "json").json()["ok"] is True
    assert list((cache_dir / "ingest").iterdir()) == []
    # The cache is intact: with the layer's true bytes the image loads.
    files[f"committed/{tampered}.tar"] = tars[tampered]
    fixed = write_launch_cache(tmp_path / "fixed", files)
    result = cli("--host", engine.host, "load", app.tag, "--launch-cache", str(fixed))
    assert result.exit_code == 0, result.stderr
    # The layers that verified were kept (read by the load or after it): only one is read now.
    lines = [line for line in result.stdout.splitlines() if line.startswith("  layers ")]
    assert len(lines) == 1 and "1 from launch-cache" in lines[0], result.stdout
    assert tampered in cached_layers(cli)
    run_cat = ["run", "--rm", "--network", "none", "--entrypoint", "cat", app.tag]
    assert engine.docker(*run_cat, "/workspace/app.txt").stdout == app.marker


def test_load_without_launch_caches_names_the_missing_layers(
    cli, engine: Engine, stack, content_env, launch_volume
) -> None:
    run1, _run2, app = stack
    pruned_app(cli, engine, app)
    launch_volume(app, run1.tag)  # there, but not to be read
    result = cli("--host", engine.host, "load", app.tag, "--no-launch-cache")
    assert result.exit_code == 1
    assert result.stderr.startswith("packcache: error: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--no-launch-cache" in result.stderr
    for diff_id in app.app_diff_ids:
        assert diff_id in result.stderr
    assert not set(app.app_diff_ids) & cached_layers(cli)  # the volume was not read
    assert engine.docker("image", "inspect", app.tag, check=False).returncode != 0
