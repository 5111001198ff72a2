"""`packcache rebase` on every engine of the matrix, checked against the platform spec."""

from __future__ import annotations

import copy
import json
import tarfile
from pathlib import Path

import pytest

from tests.cnb_images import (
    LIFECYCLE_METADATA,
    AppImage,
    RunImage,
    build_app_image,
    build_run_image,
    run_labels,
    unique,
)
from tests.engines.harness import Engine
from tests.test_cli import snapshot
from tests.test_engine_load import saved_layers

NORMALIZED = "1980-01-01T00:00:01Z"
SYNCED = ("io.buildpacks.stack.", "io.buildpacks.base.")


def inspect(engine: Engine, ref: str) -> dict:
    return json.loads(engine.docker("image", "inspect", ref).stdout)[0]


def saved_config(engine: Engine, ref: str, tmp_path: Path) -> dict:
    path = tmp_path / "config-save.tar"
    engine.docker("save", "-o", str(path), ref)
    with tarfile.open(path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        return json.loads(tar.extractfile(manifest[0]["Config"]).read())


def expected_config(app: AppImage, run: RunImage, run_ref: str | None = None) -> dict:
    """The spec's rebased config, computed from the inputs the test built."""
    config = copy.deepcopy(app.built.config)
    labels = {k: v for k, v in config["config"]["Labels"].items() if not k.startswith(SYNCED)}
    labels.update({k: v for k, v in run.labels.items() if k.startswith(SYNCED)})
    metadata = json.loads(labels[LIFECYCLE_METADATA])
    metadata["runImage"]["topLayer"] = run.built.diff_ids[-1]
    metadata["runImage"]["reference"] = run.image_id.removeprefix("sha256:")
    if run_ref is not None:  # --force onto an image the metadata does not name
        metadata["runImage"]["image"], metadata["runImage"]["mirrors"] = run_ref, []
        metadata["stack"] = {"runImage": {"image": run_ref, "mirrors": []}}
    labels[LIFECYCLE_METADATA] = metadata
    config["config"]["Labels"] = labels
    diff_ids = run.built.diff_ids + app.app_diff_ids
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    config["created"] = NORMALIZED
    config["history"] = [{"created": NORMALIZED}] * len(diff_ids)
    config.pop("container")
    config["os"], config["architecture"] = run.built.config["os"], run.built.config["architecture"]
    return config


def actual_config(engine: Engine, ref: str, tmp_path: Path) -> dict:
    config = saved_config(engine, ref, tmp_path)
    labels = config["config"]["Labels"]
    labels[LIFECYCLE_METADATA] = json.loads(labels[LIFECYCLE_METADATA])
    return config


@pytest.fixture
def stack(engine: Engine, tmp_path: Path):
    """Run images v1 and v2 (unique tags) and an app image on v1 naming the v1 repository."""
    repo = unique("run").rsplit(":", 1)[0]
    run1 = build_run_image(engine, tmp_path, "v1", f"{repo}:v1")
    run2 = build_run_image(engine, tmp_path, "v2", f"{repo}:v2")
    app = build_app_image(engine, tmp_path, run1, unique("app"), run_name=repo)
    return run1, run2, app


def rebase(cli, engine: Engine, *args: str):
    return cli("--host", engine.host, "rebase", *args, "--format", "json")


def check_result(engine: Engine, tmp_path: Path, tag: str, app: AppImage, run: RunImage) -> None:
    assert actual_config(engine, tag, tmp_path) == expected_config(app, run)
    layers = run.built.diff_ids + app.app_diff_ids
    assert inspect(engine, tag)["RootFS"]["Layers"] == layers
    run_cat = ["run", "--rm", "--network", "none", "--entrypoint", "cat", tag]
    assert engine.docker(*run_cat, "/etc/run-version").stdout == f"{run.version}\n".encode()
    assert engine.docker(*run_cat, "/workspace/app.txt").stdout == app.marker
    assert saved_layers(engine, tag, tmp_path) == layers


def test_cold_then_warm_rebase(cli, engine: Engine, tmp_path: Path, stack) -> None:
    run1, run2, app = stack
    cold = rebase(cli, engine, app.tag, "--run-image", run2.tag)
    assert cold.exit_code == 0, cold.stderr
    report = cold.json()
    # A containerd store whose daemon names its containerd (API 1.46+) gives the run image's
    # manifest without a save; Engine 26.1 (API 1.45) does not say where it is: the manifest
    # then comes from the head of a save of the run image, closed once it has passed.
    run_head = engine.containerd_store and engine.kind == "26.1-containerd"
    assert report["saved"] == [app.tag]
    assert list(report["config_from_save"]) == ([run2.tag] if run_head else [])
    assert report["layer_sources"] == dict.fromkeys(app.app_diff_ids, "docker save")
    # A containerd store still holds the app's blobs (the app image is there): referenced.
    app_sent = 0 if engine.containerd_store else len(app.app_diff_ids)
    assert report["layers_sent"] == app_sent
    assert report["layers_reused"] == len(run2.built.diff_ids) + len(app.app_diff_ids) - app_sent
    check_result(engine, tmp_path, app.tag, app, run2)
    first_id = report["new_image_id"]

    # Warm: the same app (loaded again) rebased again, the previous result removed from the
    # daemon so that the app layers must really be sent, from the cache.
    engine.docker("rmi", app.tag)
    engine.docker("load", "-i", str(app.built.path))
    warm = rebase(cli, engine, app.tag, "--run-image", run2.tag).json()
    assert warm["saved"] == []  # nothing read with docker save
    assert warm["layers_sent"] == app_sent  # no run image layer sent
    assert warm["bytes_sent"] < 1_000_000  # the busybox run layer alone is ~1 MB
    assert warm["new_image_id"] == first_id
    check_result(engine, tmp_path, app.tag, app, run2)

    # And back to v1: the cache has everything; the v1+app chain is still in the daemon.
    # A containerd store's v1 blobs can be referenced by the digests the app's manifest
    # recorded while the daemon still holds that image (Engine 28 keeps it, untagged, once
    # the tag moves; 26.1 deletes it); if not, v1's manifest read from the daemon's containerd
    # does, or (where the daemon does not say where its containerd is) the head of a save.
    original_app_held = engine.docker("image", "inspect", report["old_image_id"], check=False)
    v1_head = run_head and original_app_held.returncode != 0
    back = rebase(cli, engine, app.tag, "--run-image", run1.tag).json()
    assert back["saved"] == []
    assert list(back["config_from_save"]) == ([run1.tag] if v1_head else [])
    check_result(engine, tmp_path, app.tag, app, run1)


def test_run_image_from_metadata_and_mirror(cli, engine: Engine, tmp_path: Path) -> None:
    repo = unique("run").rsplit(":", 1)[0]
    mirror = unique("mirror").rsplit(":", 1)[0]
    run1 = build_run_image(engine, tmp_path, "v1", f"{repo}:latest")
    run2 = build_run_image(engine, tmp_path, "v2", f"{mirror}:latest")
    app = build_app_image(engine, tmp_path, run1, unique("app"), run_name=repo, mirrors=[mirror])
    engine.docker("rmi", run1.tag)  # only the mirror (holding v2) is in the daemon now
    result = rebase(cli, engine, app.tag)
    assert result.exit_code == 0, result.stderr
    assert result.json()["run_image"] == mirror
    check_result(engine, tmp_path, app.tag, app, run2)


def test_no_cache_gives_the_same_config(cli, engine: Engine, tmp_path: Path, stack) -> None:
    _, run2, app = stack
    other = unique("copy")
    engine.docker("tag", app.tag, other)
    cached = rebase(cli, engine, app.tag, "--run-image", run2.tag).json()
    pack = rebase(cli, engine, other, "--run-image", run2.tag, "--no-cache").json()
    assert pack["method"] == "no-cache"
    # pack's method: every app layer sent; the run image's as placeholders on a graphdriver,
    # sent too on a containerd store.
    run_layers = len(run2.built.diff_ids)
    sent_run_layers = run_layers if engine.containerd_store else 0
    assert pack["layers_sent"] == pack["app_layers"] + sent_run_layers
    assert pack["layers_reused"] == run_layers - sent_run_layers
    assert actual_config(engine, other, tmp_path) == actual_config(engine, app.tag, tmp_path)
    if not engine.containerd_store:
        assert pack["new_image_id"] == cached["new_image_id"]
    assert cli("ls", "--image", other).exit_code == 1  # --no-cache leaves the cache alone


def test_tag_leaves_the_original(cli, engine: Engine, tmp_path: Path, stack) -> None:
    _, run2, app = stack
    before = inspect(engine, app.tag)["Id"]
    new = unique("new")
    result = rebase(cli, engine, app.tag, "--run-image", run2.tag, "--tag", new).json()
    assert inspect(engine, app.tag)["Id"] == before
    assert inspect(engine, new)["Id"] == result["new_image_id"]


def test_dry_run_changes_nothing(cli, engine: Engine, tmp_path: Path, stack, cache_dir) -> None:
    _, run2, app = stack
    before = inspect(engine, app.tag)["Id"]
    result = rebase(cli, engine, app.tag, "--run-image", run2.tag, "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.json()["dry_run"]
    assert inspect(engine, app.tag)["Id"] == before


def test_old_style_image_checks_stack_and_mixins(cli, engine: Engine, tmp_path: Path) -> None:
    repo = unique("run").rsplit(":", 1)[0]
    run1 = build_run_image(engine, tmp_path, "v1", f"{repo}:v1")
    other_stack = build_run_image(
        engine, tmp_path, "v2", f"{repo}:other", labels=run_labels("v2", stack="other.stack")
    )
    no_curl = build_run_image(
        engine, tmp_path, "v3", f"{repo}:nocurl", labels=run_labels("v3", mixins=["tzdata"])
    )
    good = build_run_image(engine, tmp_path, "v2", f"{repo}:v2")
    app = build_app_image(engine, tmp_path, run1, unique("old"), run_name=repo, platform_api=None)
    result = rebase(cli, engine, app.tag, "--run-image", other_stack.tag)
    assert result.exit_code == 1 and "incompatible stack" in result.stderr
    result = rebase(cli, engine, app.tag, "--run-image", no_curl.tag)
    assert result.exit_code == 1 and "lacks mixin(s) curl" in result.stderr
    result = rebase(cli, engine, app.tag, "--run-image", good.tag)
    assert result.exit_code == 0, result.stderr
    check_result(engine, tmp_path, app.tag, app, good)


def test_force_onto_an_unnamed_run_image(cli, engine: Engine, tmp_path: Path, stack) -> None:
    _, _, app = stack
    stranger = build_run_image(engine, tmp_path, "v2", unique("stranger"))
    refused = rebase(cli, engine, app.tag, "--run-image", stranger.tag)
    assert refused.exit_code == 1 and "not" in refused.stderr and "mirrors" in refused.stderr
    forced = rebase(cli, engine, app.tag, "--run-image", stranger.tag, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert actual_config(engine, app.tag, tmp_path) == expected_config(app, stranger, stranger.tag)


def _refusal_cases(engine: Engine, tmp_path: Path):
    repo = unique("run").rsplit(":", 1)[0]
    run1 = build_run_image(engine, tmp_path, "v1", f"{repo}:v1")
    run2 = build_run_image(engine, tmp_path, "v2", f"{repo}:v2")
    arm = build_run_image(
        engine, tmp_path, "v2", f"{repo}:arm", config_extra={"architecture": "arm64"}
    )
    other_distro = build_run_image(
        engine,
        tmp_path,
        "v2",
        f"{repo}:distro",
        labels={**run_labels("v2"), "io.buildpacks.base.distro.version": "9.9"},
    )
    plain = unique("plain")
    engine.docker("tag", run1.tag, plain)  # an image without lifecycle metadata
    return (
        {
            "image missing": (
                ["nope/app:1", "--run-image", run2.tag],
                "image nope/app:1 is not in the Docker daemon",
            ),
            "run image missing": (
                [None, "--run-image", "nope/run:1"],
                "run image nope/run:1 is not in the Docker daemon",
            ),
            "not a CNB image": ([plain, "--run-image", run2.tag], "is not a CNB image"),
            "malformed metadata": (["malformed", "--run-image", run2.tag], "is not valid JSON"),
            "top layer not found": (["notop", "--run-image", run2.tag], "top layer"),
            "not rebasable": (["unrebasable", "--run-image", run2.tag], "not marked as rebasable"),
            "architecture": ([None, "--run-image", arm.tag], "architecture 'arm64'"),
            "distro": ([None, "--run-image", other_distro.tag], "distro version '9.9'"),
        },
        run1,
        repo,
    )


REFUSALS = [
    "image missing",
    "run image missing",
    "not a CNB image",
    "malformed metadata",
    "top layer not found",
    "not rebasable",
    "architecture",
    "distro",
]


@pytest.mark.parametrize("case", REFUSALS)
def test_errors_leave_image_and_cache_untouched(cli, engine: Engine, tmp_path, cache_dir, case):
    cases, run1, repo = _refusal_cases(engine, tmp_path)
    args, message = cases[case]
    app = build_app_image(engine, tmp_path, run1, unique("app"), run_name=repo)
    special = {
        "malformed": {"metadata": "{not json"},
        "notop": {"metadata": {"runImage": {"topLayer": "sha256:" + "9" * 64, "image": repo}}},
        "unrebasable": {"extra_labels": {"io.buildpacks.rebasable": "false"}},
    }
    if args[0] in special:
        app = build_app_image(
            engine, tmp_path, run1, unique(args[0]), run_name=repo, **special[args[0]]
        )
        args = [app.tag, *args[1:]]
    elif args[0] is None:
        args = [app.tag, *args[1:]]
    cli("info")  # create the cache, so "untouched" compares something
    before_cache = snapshot(cache_dir)
    before_image = inspect(engine, app.tag)["Id"]
    result = rebase(cli, engine, *args)
    assert result.exit_code == 1, result.stdout
    assert message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
    assert inspect(engine, app.tag)["Id"] == before_image
    assert snapshot(cache_dir) == before_cache


def test_unreachable_daemon(cli) -> None:
    result = cli("--host", "unix:///nonexistent.sock", "rebase", "app:1")
    assert result.exit_code == 1 and "cannot reach the Docker daemon" in result.stderr


def test_report_file(cli, engine: Engine, tmp_path: Path, stack) -> None:
    _, run2, app = stack
    report = tmp_path / "report.json"
    result = cli(
        "--host", engine.host, "rebase", app.tag, "--run-image", run2.tag, "--report", str(report)
    )
    assert result.exit_code == 0, result.stderr
    assert "Rebased" in result.stdout
    data = json.loads(report.read_text())
    assert data["new_image_id"] == inspect(engine, app.tag)["Id"]
    assert set(data["timings"]) >= {"inspect", "load", "total"}


def test_image_named_without_a_tag(cli, engine: Engine, tmp_path: Path, stack) -> None:
    _, run2, app = stack
    bare = app.tag.rsplit(":", 1)[0]
    engine.docker("tag", app.tag, f"{bare}:latest")
    result = rebase(cli, engine, bare, "--run-image", run2.tag)
    assert result.exit_code == 0, result.stderr
    assert inspect(engine, f"{bare}:latest")["Id"] == result.json()["new_image_id"]


def test_invalid_tag_is_a_usage_error(cli, engine: Engine, stack) -> None:
    _, run2, app = stack
    before = inspect(engine, app.tag)["Id"]
    result = rebase(cli, engine, app.tag, "--run-image", run2.tag, "--tag", "Bad/Name:1")
    assert result.exit_code == 2 and "repository names are lowercase" in result.stderr
    assert inspect(engine, app.tag)["Id"] == before
