"""`packcache rebase` with pack's registry flags on every engine: --pull-policy (the run image
through the cache), --previous-image, run-image mirrors from pack's config, --report-output-dir.
Run images live in the tests' own plain registry; nothing reaches a public one."""

from __future__ import annotations

import copy
import hashlib
import tarfile
import tomllib
import uuid
from pathlib import Path

import pytest
import requests

from tests.cnb_images import RunImage, build_app_image, build_run_image
from tests.engines.harness import Engine
from tests.registries.harness import RegistrySet
from tests.test_cli import snapshot
from tests.test_rebase import check_result, inspect

pytestmark = pytest.mark.engine


def push(engine: Engine, source: str, target: str) -> None:
    """`target` in the registry holds `source`; the daemon keeps no name `target`."""
    engine.docker("tag", source, target)
    try:
        engine.docker("push", target)
    finally:
        engine.docker("rmi", target)


def as_pulled(engine: Engine, run: RunImage, ref: str) -> RunImage:
    """`run` as the daemon holds it under `ref` after a pull (its ID is the daemon's own)."""
    pulled = copy.copy(run)
    pulled.image_id = inspect(engine, ref)["Id"]
    return pulled


def rebase(cli, engine: Engine, registries: RegistrySet, *args: str):
    host = registries.plain.host
    return cli(
        "--host", engine.host, "rebase", *args, "--insecure-registry", host, "--format", "json"
    )  # fmt: skip


def saved_blob_size(engine: Engine, ref: str, digest: str, tmp_path: Path) -> int:
    """The size of blob `digest` in `docker save` of `ref` (an OCI layout's blobs/)."""
    path = tmp_path / "blob-save.tar"
    engine.docker("save", "-o", str(path), ref)
    with tarfile.open(path) as tar:
        return tar.getmember("blobs/sha256/" + digest.removeprefix("sha256:")).size


@pytest.fixture
def remote_stack(engine: Engine, registries: RegistrySet, tmp_path: Path):
    """An app on run v1 whose metadata names REPO (on the plain registry); the registry's
    REPO:latest is v2, which the daemon does not hold; the daemon holds v1 as REPO:latest."""
    repo = f"{registries.plain.host}/t/run-{uuid.uuid4().hex[:8]}"
    run1 = build_run_image(engine, tmp_path, "v1", f"{repo}:v1")
    # A version of its own: the session's engine holds no layer of it from other tests.
    run2 = build_run_image(engine, tmp_path, f"v2-{uuid.uuid4().hex[:8]}", f"{repo}:v2")
    push(engine, run2.tag, f"{repo}:latest")
    engine.docker("rmi", run2.tag)
    engine.docker("tag", run1.tag, f"{repo}:latest")  # the stale copy a user pulled once
    # Named in the registry (which lacks it): pack pulls the app under `always` too.
    app_name = f"{registries.plain.host}/t/app-{uuid.uuid4().hex[:8]}:1"
    app = build_app_image(engine, tmp_path, run1, app_name, run_name=repo)
    yield repo, run1, run2, app
    for ref in (f"{repo}:latest", run1.tag, app.tag):
        engine.docker("rmi", "-f", ref, check=False)


def test_always_pulls_the_new_run_image_through_the_cache(
    cli, engine: Engine, registries: RegistrySet, tmp_path: Path, remote_stack
) -> None:
    repo, run1, run2, app = remote_stack
    result = rebase(cli, engine, registries, app.tag, "--pull-policy", "always")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    fetch = report["run_image_fetch"]
    assert report["run_image"] == repo and fetch["policy"] == "always"
    # The registry lacks the app: the daemon's copy is used, as pack falls back.
    assert report["app_image_fetch"]["fell_back"] is True
    assert len(fetch["pulled"]["downloaded"]) + len(fetch["pulled"]["already_cached"]) == 3
    new_layers = set(run2.built.diff_ids) - set(run1.built.diff_ids)
    assert fetch["loaded"]["layers_sent"] <= len(run2.built.diff_ids)
    if not engine.containerd_store:  # the daemon is sent only the layers it lacks
        assert fetch["loaded"]["layers_sent"] == len(new_layers)
    check_result(engine, tmp_path, app.tag, app, as_pulled(engine, run2, f"{repo}:latest"))
    # Again: the cache and the daemon hold v2 already, nothing is downloaded.
    again = rebase(cli, engine, registries, app.tag, "--pull-policy", "always")
    assert again.exit_code == 0, again.stderr
    assert again.json()["run_image_fetch"]["pulled"]["downloaded"] == []


def test_if_not_present_uses_the_daemons_copy_and_pulls_only_when_it_lacks_one(
    cli, engine: Engine, registries: RegistrySet, tmp_path: Path, remote_stack
) -> None:
    repo, run1, run2, app = remote_stack
    kept = rebase(cli, engine, registries, app.tag, "--pull-policy", "if-not-present")
    assert kept.exit_code == 0, kept.stderr
    assert kept.json()["run_image_fetch"]["pulled"] is None
    assert kept.json()["run_image_id"] == run1.image_id  # the stale v1, as pack does
    engine.docker("rmi", f"{repo}:latest")
    pulled = rebase(cli, engine, registries, app.tag, "--pull-policy", "if-not-present")
    assert pulled.exit_code == 0, pulled.stderr
    assert pulled.json()["run_image_fetch"]["pulled"] is not None
    check_result(engine, tmp_path, app.tag, app, as_pulled(engine, run2, f"{repo}:latest"))


def test_never_fails_clearly_when_the_daemon_lacks_the_run_image(
    cli, engine: Engine, registries: RegistrySet, cache_dir: Path, remote_stack
) -> None:
    repo, _, _, app = remote_stack
    engine.docker("rmi", f"{repo}:latest")
    cli("info")
    before_cache, before_image = snapshot(cache_dir), inspect(engine, app.tag)["Id"]
    result = rebase(cli, engine, registries, app.tag, "--pull-policy", "never")
    assert result.exit_code == 1
    assert result.stderr == (
        f"packcache: error: run image {repo} is not in the Docker daemon and the pull policy "
        "is never\n"
    )
    assert inspect(engine, app.tag)["Id"] == before_image
    assert snapshot(cache_dir) == before_cache


def test_always_falls_back_to_the_daemon_when_the_registry_lacks_it_as_pack_does(
    cli, engine: Engine, registries: RegistrySet, cache_dir: Path, tmp_path: Path, remote_stack
) -> None:
    repo, run1, _, app = remote_stack
    local = f"{repo}:only-local"
    engine.docker("tag", run1.tag, local)
    fell_back = rebase(cli, engine, registries, app.tag, "--run-image", local,
                       "--pull-policy", "always")  # fmt: skip
    assert fell_back.exit_code == 0, fell_back.stderr
    assert fell_back.json()["run_image_fetch"]["fell_back"] is True
    engine.docker("rmi", local)
    cli("info")
    before_cache = snapshot(cache_dir)
    missing = rebase(cli, engine, registries, app.tag, "--run-image", local,
                     "--pull-policy", "always")  # fmt: skip
    assert missing.exit_code == 1
    assert "neither in the Docker daemon nor in its registry" in missing.stderr
    assert missing.stderr.count("\n") == 1
    assert snapshot(cache_dir) == before_cache


def test_previous_image_keeps_the_original_and_names_the_result(
    cli, engine: Engine, registries: RegistrySet, tmp_path: Path, remote_stack
) -> None:
    repo, _, run2, app = remote_stack
    before = inspect(engine, app.tag)["Id"]
    new = f"packcache-test/new-{uuid.uuid4().hex[:8]}:1"
    out = tmp_path / "out"
    result = rebase(cli, engine, registries, new, "--previous-image", app.tag,
                    "--pull-policy", "always", "--report-output-dir", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert inspect(engine, app.tag)["Id"] == before
    new_id = inspect(engine, new)["Id"]
    assert result.json()["new_image_id"] == new_id
    check_result(engine, tmp_path, new, app, as_pulled(engine, run2, f"{repo}:latest"))
    # The lifecycle's report.toml of a daemon image: the name given and the ID, no digest;
    # the manifest's size where the daemon holds the result by a manifest (containerd store).
    report = (out / "report.toml").read_text()
    expected = {"tags": [new], "image-id": new_id.removeprefix("sha256:")}
    if engine.containerd_store:
        expected["manifest-size"] = saved_blob_size(engine, new, new_id, tmp_path)
    assert tomllib.loads(report) == {"image": expected}
    assert report.startswith("[image]\n  tags = [")
    both = rebase(cli, engine, registries, new, "--previous-image", app.tag, "--tag", "x:1")
    assert both.exit_code == 2 and "--tag and --previous-image" in both.stderr
    engine.docker("rmi", new)


def test_mirror_in_the_results_registry_first_and_mirrors_from_packs_config(
    cli, engine: Engine, registries: RegistrySet, tmp_path: Path, monkeypatch
) -> None:
    """127.0.0.1:PORT and localhost:PORT are one registry under two names: two registries
    as references see them."""
    port = registries.plain.port
    ip, name = f"127.0.0.1:{port}", f"localhost:{port}"
    suffix = uuid.uuid4().hex[:8]
    recorded, mirror, configured = (f"{ip}/t/run-{suffix}", f"{name}/t/mirror-{suffix}",
                                    f"{name}/t/configured-{suffix}")  # fmt: skip
    run1 = build_run_image(engine, tmp_path, "v1", f"{recorded}:v1")
    run2 = build_run_image(engine, tmp_path, "v2", f"{recorded}:v2")
    for target in (recorded, mirror, configured):
        push(engine, run2.tag, f"{target}:latest")
    app = build_app_image(engine, tmp_path, run1, f"{name}/t/app-{suffix}:1",
                          run_name=recorded, mirrors=[mirror])  # fmt: skip
    pack_home = tmp_path / "pack"
    pack_home.mkdir()
    (pack_home / "config.toml").write_text(
        f'[[run-images]]\nimage = "{recorded}"\nmirrors = ["{configured}"]\n'
    )
    monkeypatch.setenv("PACK_HOME", str(pack_home))
    args = ("--pull-policy", "always", "--insecure-registry", name)
    # Named in 127.0.0.1:PORT, the result takes the recorded image, which is there.
    in_ip = f"{ip}/t/app-{suffix}:1"
    result = rebase(cli, engine, registries, in_ip, "--previous-image", app.tag, *args)
    assert result.exit_code == 0, result.stderr
    assert result.json()["run_image"] == recorded
    # The app named in localhost:PORT: the first candidate there, the configured mirror;
    # the lifecycle refuses a run image the metadata does not name, unless forced.
    configured_choice = rebase(cli, engine, registries, app.tag, *args)
    assert configured_choice.exit_code == 1
    assert f"run image {configured}" in configured_choice.stderr
    forced = rebase(cli, engine, registries, app.tag, *args, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert forced.json()["run_image"] == configured
    (pack_home / "config.toml").write_text("[[run-images]\nimage = 1\n")
    bad = rebase(cli, engine, registries, app.tag, *args)
    assert bad.exit_code == 2
    assert f"pack's config {pack_home / 'config.toml'} is not valid TOML" in bad.stderr
    assert bad.stderr.count("\n") == 1
    for ref in (app.tag, in_ip, run1.tag, run2.tag, f"{configured}:latest", f"{recorded}:latest"):
        engine.docker("rmi", "-f", ref, check=False)


def test_invalid_pull_policy_is_a_usage_error(cli, engine: Engine, registries) -> None:
    result = rebase(cli, engine, registries, "x:1", "--pull-policy", "sometimes")
    assert result.exit_code == 2
    assert "invalid pull policy 'sometimes'" in result.stderr


def test_always_pulls_the_app_image_through_the_cache_too(
    cli, engine: Engine, registries: RegistrySet, tmp_path: Path, cache_dir: Path, remote_stack
) -> None:
    """pack fetches the app with the pull policy as well: one the daemon lacks comes from its
    registry through the cache, and the rebase then needs no docker save of it."""
    repo, _, run2, app = remote_stack
    pushed = app.tag + "-pushed"
    push(engine, app.tag, pushed)
    engine.docker("rmi", app.tag)  # the daemon keeps run v1 only: the app's layers are new
    result = rebase(cli, engine, registries, pushed, "--pull-policy", "always")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    fetched = report["app_image_fetch"]
    assert fetched["policy"] == "always" and fetched["fell_back"] is False
    assert len(fetched["pulled"]["downloaded"]) == len(set(app.built.diff_ids))
    assert fetched["loaded"] is not None  # the daemon lacked the name: loaded under it
    if not engine.containerd_store:  # the daemon holds run v1's layers: only the app's sent
        assert fetched["loaded"]["layers_sent"] == len(app.app_diff_ids)
    assert report["saved"] == [] and set(report["layer_sources"].values()) == {"cache"}
    check_result(engine, tmp_path, pushed, app, as_pulled(engine, run2, f"{repo}:latest"))
    # if-not-present: the daemon has it now, nothing is asked of the registry for it.
    kept = rebase(cli, engine, registries, pushed, "--pull-policy", "if-not-present")
    assert kept.exit_code == 0, kept.stderr
    assert kept.json()["app_image_fetch"]["pulled"] is None
    # never: a missing app is the rebase's own error, naming the way out.
    engine.docker("rmi", pushed)
    before = snapshot(cache_dir)
    never = rebase(cli, engine, registries, pushed, "--pull-policy", "never")
    assert never.exit_code == 1
    assert f"image {pushed} is not in the Docker daemon (`docker pull {pushed}` puts it" in (
        never.stderr
    )
    assert snapshot(cache_dir) == before
    engine.docker("rmi", "-f", pushed, check=False)


def _manifest_digest(registry_url: str, repo_ref: str) -> tuple[str, str]:
    """(manifest digest, config digest) of a tag in the tests' plain registry."""
    path, _, tag = repo_ref.partition("/")[2].rpartition(":")
    accept = ", ".join((
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ))  # fmt: skip
    response = requests.get(
        f"{registry_url}/v2/{path}/manifests/{tag}", headers={"Accept": accept}, timeout=30
    )
    response.raise_for_status()
    digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
    return digest, response.json()["config"]["digest"]


def test_a_run_image_named_by_digest_is_pulled_into_the_cache_and_read_there(
    cli, engine: Engine, registries: RegistrySet, tmp_path: Path, remote_stack
) -> None:
    """docker pull asks the registry for a digest too (pack calls it under `always`); docker
    load cannot name an image by digest, so the cache's copy serves the rebase."""
    repo, _, run2, app = remote_stack
    digest, config_digest = _manifest_digest(registries.plain.url, f"{repo}:latest")
    by_digest = f"{repo}@{digest}"
    result = rebase(cli, engine, registries, app.tag, "--run-image", by_digest,
                    "--pull-policy", "always")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = result.json()
    fetch = report["run_image_fetch"]
    assert report["run_image"] == by_digest and fetch["cached"] == config_digest
    assert fetch["pulled"]["manifest_digest"] == digest and fetch["loaded"] is None
    from_cache = copy.copy(run2)
    from_cache.image_id = config_digest  # runImage.reference: the image ID, as for a daemon's
    check_result(engine, tmp_path, app.tag, app, from_cache)
    # Again under always: the registry is asked, nothing is downloaded.
    again = rebase(cli, engine, registries, app.tag, "--run-image", by_digest,
                   "--pull-policy", "always")  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert again.json()["run_image_fetch"]["pulled"]["downloaded"] == []
    # if-not-present and never: the cache holds that digest whole, no registry is needed.
    for policy in ("if-not-present", "never"):
        held = rebase(cli, engine, registries, app.tag, "--run-image", by_digest,
                      "--pull-policy", policy)  # fmt: skip
        assert held.exit_code == 0, held.stderr
        fetch = held.json()["run_image_fetch"]
        assert fetch["pulled"] is None and fetch["cached"] == config_digest
    check_result(engine, tmp_path, app.tag, app, from_cache)


def test_registry_mirrors_from_packs_config_are_where_both_images_are_read(
    cli, engine: Engine, registries: RegistrySet, tmp_path: Path, monkeypatch, remote_stack
) -> None:
    """pack's [registry-mirrors]: every image its fetcher reads (the app, the run image) is
    read under the mirror's name; the result keeps the name asked for. Here the mirror is
    the same registry under its other name, so the lifecycle's check refuses the run image's
    new name unless forced, as pack's does."""
    repo, _, run2, app = remote_stack
    ip = registries.plain.host
    name = f"localhost:{registries.plain.port}"
    engine.docker("push", app.tag)
    pack_home = tmp_path / "pack"
    pack_home.mkdir()
    (pack_home / "config.toml").write_text(f'[registry-mirrors]\n"{ip}" = "{name}"\n')
    monkeypatch.setenv("PACK_HOME", str(pack_home))
    args = ("--pull-policy", "always", "--insecure-registry", name)
    refused = rebase(cli, engine, registries, app.tag, *args)
    assert refused.exit_code == 1
    mirrored_run = repo.replace(ip, name) + ":latest"  # pack's translation names the tag
    assert f"run image {mirrored_run} is not {repo}" in refused.stderr
    result = rebase(cli, engine, registries, app.tag, *args, "--force")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["image"] == app.tag.replace(ip, name) and report["tag"] == app.tag
    assert report["app_image_fetch"]["ref"] == app.tag.replace(ip, name)
    assert report["app_image_fetch"]["fell_back"] is False
    assert report["run_image"] == mirrored_run
    assert report["run_image_fetch"]["pulled"] is not None
    new_config = inspect(engine, app.tag)
    assert new_config["RootFS"]["Layers"] == run2.built.diff_ids + app.app_diff_ids
    for ref in (app.tag.replace(ip, name), mirrored_run):
        engine.docker("rmi", "-f", ref, check=False)


def test_translate_registry_as_pack_does() -> None:
    from packcache.operations.pack_config import translate_registry

    digest = "sha256:" + "a" * 64
    assert translate_registry("app:1", {"index.docker.io": "m:5000"}) == "m:5000/library/app:1"
    assert translate_registry("app", {"docker.io": "m"}) == "app"  # pack's key is index.docker.io
    assert translate_registry("r.io/x/y@" + digest, {"*": "m", "r.io": "n"}) == f"m/x/y@{digest}"
    assert translate_registry("r.io/x:1", {"q.io": "m"}) == "r.io/x:1"
    assert translate_registry(digest, {"*": "m"}) == digest  # an image ID names no registry


def test_always_fails_clearly_when_the_registry_wants_credentials_as_docker_does(
    cli,
    engine: Engine,
    registries: RegistrySet,
    tmp_path: Path,
    cache_dir: Path,
    monkeypatch,
    remote_stack,
) -> None:
    """A registry that asks for credentials the Docker config lacks (the htpasswd one):
    docker's pull fails as unauthorized, not as not found, so pack does not fall back on the
    daemon's copy; neither does packcache, and nothing changes."""
    _, _, _, app = remote_stack
    tls = registries.tls_basic
    name = f"{tls.host}/t/refused-{uuid.uuid4().hex[:8]}:1"
    engine.docker("tag", app.tag, name)
    no_credentials = tmp_path / "docker-config"
    no_credentials.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(no_credentials))
    cli("info")
    before_cache, before_image = snapshot(cache_dir), inspect(engine, name)["Id"]
    result = cli(
        "--host", engine.host, "rebase", name, "--pull-policy", "always",
        "--insecure-registry", tls.host, "--insecure-registry", registries.plain.host,
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr == (
        f"packcache: error: registry {tls.host} asks for a user and password and the Docker "
        f"config has none for it (docker login {tls.host})\n"
    )
    assert inspect(engine, name)["Id"] == before_image
    assert snapshot(cache_dir) == before_cache
    engine.docker("rmi", name)


def test_no_cache_pulls_the_app_with_docker_pull_as_pack_does(
    cli, engine: Engine, registries: RegistrySet, tmp_path: Path, remote_stack
) -> None:
    """pack's method (--no-cache) fetches both images with `docker pull`, the cache aside."""
    repo, _, run2, app = remote_stack
    pushed = app.tag + "-pushed"
    push(engine, app.tag, pushed)
    result = rebase(cli, engine, registries, pushed, "--pull-policy", "always", "--no-cache")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["app_image_fetch"]["pulled"] is None  # docker's pull, not the cache's
    assert report["app_image_fetch"]["fell_back"] is False
    assert report["method"] == "no-cache"
    check_result(engine, tmp_path, pushed, app, as_pulled(engine, run2, f"{repo}:latest"))
    engine.docker("rmi", pushed)
