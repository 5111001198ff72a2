"""A cold rebase onto a multi-platform run image on the containerd image store.

The run image is an index of two platforms (amd64, and arm64 with layers of its own) in the
tests' registry, pushed by a graphdriver engine and pulled by the containerd store engine: the
daemon's image ID is then the index's digest and its content store holds only the host
platform's manifest, config and layers. The rebase must find the host platform's manifest in
the content store (through the index, or `manifests=1` on API 1.48+), save nothing of the run
image, and give an image that runs and saves whole.

Its layers share no snapshot with other images: containerd does not fetch a layer whose
snapshot exists already, and such an image is incomplete to the engine itself (Engine 28's
inspect then gives no platform, config or layers; 26.1's `docker save` leaves out its config and
every layer).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.cnb_images import build_app_image, build_run_image, run_labels
from tests.registries import pushing
from tests.test_containerd_load import settings
from tests.test_engine_load import saved_layers


@pytest.mark.parametrize("kind", ["26.1-containerd", "28-containerd"])
def test_cold_rebase_onto_a_pulled_multi_platform_run_image(
    cli, engine_pool, registries, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pusher = engine_pool.get("26.1-graphdriver")
    host = registries.plain.host
    repo = f"{host}/t/run-multi-{uuid.uuid4().hex[:8]}"
    version = f"v2-{uuid.uuid4().hex[:8]}"  # layers no engine of the session holds yet
    amd64 = build_run_image(pusher, tmp_path, version, f"{repo}:amd64", own_base=True)
    arm64 = build_run_image(
        pusher,
        tmp_path,
        f"{version}-arm",
        f"{repo}:arm64",
        labels=run_labels(version),
        config_extra={"architecture": "arm64"},
        own_base=True,
    )
    for run in (amd64, arm64):
        pusher.docker("push", run.tag)
        pusher.docker("rmi", run.tag)
    path = repo.split("/", 1)[1]
    pushing.push_index(pusher, registries.plain, f"{path}:v2", [f"{path}:amd64", f"{path}:arm64"])

    engine = engine_pool.get(kind)
    for key, value in settings(engine).items():  # Engine 26.1 does not say where containerd is
        monkeypatch.setenv(key, value)
    run1 = build_run_image(engine, tmp_path, "v1", f"{repo}:v1")
    app = build_app_image(engine, tmp_path, run1, f"packcache-test/app-{uuid.uuid4().hex[:8]}:1",
                          run_name=repo)  # fmt: skip
    engine.docker("pull", f"{repo}:v2")
    pulled = json.loads(engine.docker("image", "inspect", f"{repo}:v2").stdout)[0]
    try:
        done = cli(
            "--host", engine.host, "rebase", app.tag, "--run-image", f"{repo}:v2",
            "--pull-policy", "never", "--no-launch-cache", "--format", "json",
        )  # fmt: skip
        assert done.exit_code == 0, done.stderr
        report = done.json()
        assert report["run_image_id"] == pulled["Id"]
        assert report["saved"] == [app.tag]  # the run image's manifest came from containerd
        assert report["load_method"] == "containerd"
        layers = amd64.built.diff_ids + app.app_diff_ids
        result = json.loads(engine.docker("image", "inspect", app.tag).stdout)[0]
        assert result["RootFS"]["Layers"] == layers
        assert result["Architecture"] == "amd64"
        cat = ["run", "--rm", "--pull", "never", "--network", "none", "--entrypoint", "cat"]
        assert engine.docker(*cat, app.tag, "/etc/run-version").stdout == f"{version}\n".encode()
        assert engine.docker(*cat, app.tag, "/workspace/app.txt").stdout == app.marker
        assert saved_layers(engine, app.tag, tmp_path) == layers
    finally:
        for ref in (app.tag, f"{repo}:v2", run1.tag):
            engine.docker("rmi", "-f", ref, check=False)
