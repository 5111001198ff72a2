"""`packcache create-builder` with pack's registry behaviour on every engine: --pull-policy
(build image, buildpackages and lifecycle images fetched from their registries into the cache,
never pulled into the daemon), `[lifecycle] uri = "docker://..."` and `version`, and --publish
(blobs the registry has mounted or skipped, never downloaded). Everything lives in the tests'
own plain registry on 127.0.0.1; nothing reaches a public one."""

from __future__ import annotations

import json
import os
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from packcache.transports.registry import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, ImageName
from tests import builder_fixtures as fx
from tests.engines import images
from tests.engines.harness import Engine
from tests.registries.harness import RegistrySet
from tests.test_builder_engine import Inputs, checksums, inspect, listing, make_inputs
from tests.test_rebase_pull_policy import push

pytestmark = pytest.mark.engine


@dataclass
class Remote:
    inputs: Inputs
    toml: Path  # builder.toml naming the registry's images
    host: str
    build: str  # the build image in the registry
    packages: list[str]  # the buildpackages in the registry
    run: str


def to_registry(
    engine: Engine, registries: RegistrySet, tmp_path: Path, build_text: bytes = b"build image\n"
) -> Remote:
    """The builder inputs with the build image, buildpackages and run image only in the
    registry (the daemon keeps the run image: a builder does not need it there). `build_text`:
    see fx.load_build_image."""
    inputs = make_inputs(engine, tmp_path, build_text)
    host = registries.plain.host
    repo = f"{host}/t/{uuid.uuid4().hex[:8]}"
    build, run = f"{repo}/build:1", f"{repo}/run:1"
    packages = [f"{repo}/package-{index}:1" for index in range(len(inputs.packages))]
    text = inputs.toml.read_text()
    for source, target in [
        (inputs.build_ref, build),
        *((p.ref, t) for p, t in zip(inputs.packages, packages, strict=True)),
    ]:
        push(engine, source, target)
        engine.docker("rmi", source)
        text = text.replace(f'"{source}"', f'"{target}"').replace(
            f'"docker://{source}"', f'"docker://{target}"'
        )
    push(engine, inputs.run_ref, run)
    text = text.replace(f'image = "{inputs.run_ref}"', f'image = "{run}"')
    text = text.replace('mirrors = ["mirror.test/run:1"]', f'mirrors = ["{run}"]')
    toml = tmp_path / "remote.toml"
    toml.write_text(text)
    return Remote(inputs, toml, host, build, packages, run)


def create(cli, engine: Engine, name: str, toml: Path, host: str, *args: str, cache=None):
    return cli(
        "--host", engine.host, "create-builder", name, "--config", str(toml),
        "--insecure-registry", host, "--format", "json", *args, cache=cache,
    )  # fmt: skip


def ok(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return result.json()


def absent(engine: Engine, ref: str) -> bool:
    return engine.docker("image", "inspect", ref, check=False).returncode != 0


@pytest.fixture
def remote(engine: Engine, registries: RegistrySet, tmp_path: Path) -> Remote:
    return to_registry(engine, registries, tmp_path)


def test_always_fetches_from_the_registry_into_the_cache_not_the_daemon(
    cli, engine: Engine, remote: Remote, tmp_path: Path
) -> None:
    name = fx.unique("builder")
    report = ok(create(cli, engine, name, remote.toml, remote.host, "--pull-policy", "always"))
    pulled = {p["ref"]: p for p in report["pulled"]}
    assert {remote.build, *remote.packages} <= set(pulled)
    assert report["imported"] == []  # no docker save of anything
    assert all(absent(engine, ref) for ref in [remote.build, *remote.packages])
    # The builder is what the same inputs give from the daemon (images loaded there).
    for ref in [remote.build, *remote.packages]:
        engine.docker("pull", ref)
    daemon_made = ok(
        create(cli, engine, fx.unique("from-daemon"), remote.toml, remote.host,
               "--pull-policy", "never", cache=tmp_path / "other-cache")
    )  # fmt: skip
    assert report["config_digest"] == daemon_made["config_digest"]
    labels = inspect(engine, name)["Config"]["Labels"]
    layers = json.loads(labels["io.buildpacks.buildpack.layers"])
    for package in remote.inputs.packages:
        for buildpack in package.buildpacks:
            entry = layers[buildpack.id][buildpack.version]
            assert entry["layerDiffID"] == package.diff_ids[f"{buildpack.id}@{buildpack.version}"]
    files = listing(engine, name, "/cnb/buildpacks")
    assert any(path.endswith("/bin/build") for path in files)
    # Again: everything is cached, no layer is downloaded (the manifests are read again).
    again = ok(create(cli, engine, name, remote.toml, remote.host, "--pull-policy", "always"))
    assert again["pulled"] and all(p["layers_downloaded"] == 0 for p in again["pulled"])
    assert again["config_digest"] == report["config_digest"]


def test_if_not_present_takes_what_the_daemon_has_and_pulls_the_rest(
    cli, engine: Engine, remote: Remote
) -> None:
    engine.docker("pull", remote.build)
    report = ok(
        create(cli, engine, fx.unique("b"), remote.toml, remote.host, "--pull-policy",
               "if-not-present")
    )  # fmt: skip
    pulled = {p["ref"] for p in report["pulled"]}
    assert remote.build not in pulled and set(remote.packages) <= pulled
    assert all(absent(engine, ref) for ref in remote.packages)
    # Again: the buildpackages the cache recorded with every layer are taken from it.
    again = ok(
        create(cli, engine, fx.unique("b"), remote.toml, remote.host, "--pull-policy",
               "if-not-present")
    )  # fmt: skip
    assert {p["ref"] for p in again["pulled"]} <= {remote.run}  # its labels only
    assert again["imported"] == [] and again["config_digest"] == report["config_digest"]


def test_never_names_the_missing_image(cli, engine: Engine, remote: Remote) -> None:
    before = cli("ls", "--format", "json").json()
    result = create(cli, engine, fx.unique("b"), remote.toml, remote.host, "--pull-policy", "never")
    assert result.exit_code == 1
    assert f"build image {remote.build} is not in the Docker daemon" in result.stderr
    assert result.stderr.count("\n") == 1
    assert cli("ls", "--format", "json").json() == before


def test_unreachable_registry_is_one_clear_error(
    cli, engine: Engine, remote: Remote, tmp_path: Path
) -> None:
    from tests.registries.harness import free_port

    gone = f"127.0.0.1:{free_port()}"
    toml = tmp_path / "gone.toml"
    toml.write_text(remote.toml.read_text().replace(remote.host, gone))
    result = create(cli, engine, fx.unique("b"), toml, gone, "--pull-policy", "always")
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("packcache: error:") and gone in result.stderr
    assert result.stderr.count("\n") == 1
    assert cli("verify").exit_code == 0


def test_buildpackage_missing_its_layer(
    cli, engine: Engine, registries: RegistrySet, remote: Remote, tmp_path: Path
) -> None:
    """A registry buildpackage whose label names a layer it does not have."""
    package = remote.inputs.packages[0]
    labels = {
        "io.buildpacks.buildpackage.metadata": json.dumps(
            {"id": package.main.id, "version": package.main.version, "stacks": [{"id": fx.STACK}]}
        ),
        "io.buildpacks.buildpack.layers": json.dumps(
            {package.main.id: {package.main.version: fx.layers_label_entry(package.main,
                                                                          "sha256:" + "0" * 64)}}
        ),
    }  # fmt: skip
    ref = fx.unique("hollow")
    built = images.build_legacy_archive(
        tmp_path / "hollow.tar", [{"x.txt": b"x"}], {"config": {"Labels": labels}}, ref
    )
    engine.docker("load", "-i", str(built.path))
    target = f"{remote.host}/t/hollow-{uuid.uuid4().hex[:8]}:1"
    push(engine, ref, target)
    toml = tmp_path / "hollow.toml"
    toml.write_text(remote.toml.read_text().replace(remote.packages[0], target))
    result = create(cli, engine, fx.unique("b"), toml, remote.host, "--pull-policy", "always")
    assert result.exit_code == 1
    assert "names layer sha256:000" in result.stderr and target in result.stderr


# -- lifecycle images ---------------------------------------------------------------------


def push_lifecycle_image(engine: Engine, host: str, tmp_path: Path, version: str) -> str:
    """A lifecycle image as buildpacks/lifecycle's tools/image lays it out: the release
    archive's entries under /cnb/ in the last layer; pushed as REPO:version."""
    archive = tmp_path / f"lifecycle-{version}.tgz"
    fx.write_lifecycle(archive, version)
    layer: dict[str, images.Entry] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            name = f"cnb/{member.name}"
            if member.issym():
                layer[name] = images.Symlink(member.linkname)
            elif member.isdir():
                layer[name] = images.Dir(member.mode)
            else:
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                layer[name] = images.File(data, member.mode)
    ref = fx.unique("lifecycle-image")
    built = images.build_legacy_archive(
        tmp_path / f"{uuid.uuid4().hex}.tar", [{"etc/base.txt": b"base"}, layer],
        {"config": {"Labels": {"io.buildpacks.lifecycle.version": version}}}, ref,
    )  # fmt: skip
    engine.docker("load", "-i", str(built.path))
    repository = f"{host}/t/lifecycle-{uuid.uuid4().hex[:8]}"
    push(engine, ref, f"{repository}:{version}")
    engine.docker("rmi", ref)
    return repository


def lifecycle_files(engine: Engine, image: str) -> dict:
    return listing(engine, image, "/cnb/lifecycle")


def test_lifecycle_from_a_docker_uri_equals_the_archive(
    cli, engine: Engine, remote: Remote, tmp_path: Path
) -> None:
    from_archive = ok(create(cli, engine, fx.unique("tgz"), remote.toml, remote.host,
                             "--pull-policy", "always"))  # fmt: skip
    repository = push_lifecycle_image(engine, remote.host, tmp_path, fx.LIFECYCLE_VERSION)
    toml = tmp_path / "lifecycle-image.toml"
    toml.write_text(
        remote.toml.read_text().replace(
            'uri = "lifecycle.tgz"', f'uri = "docker://{repository}:{fx.LIFECYCLE_VERSION}"'
        )
    )
    name = fx.unique("image")
    report = ok(create(cli, engine, name, toml, remote.host, "--pull-policy", "always"))
    assert f"{repository}:{fx.LIFECYCLE_VERSION}" in {p["ref"] for p in report["pulled"]}
    # The lifecycle layer holds what the release archive does (its tar headers are those of
    # the image's layer, as pack copies them); every other layer is the same.
    differing = [
        index
        for index, (a, b) in enumerate(
            zip(report["diff_ids"], from_archive["diff_ids"], strict=True)
        )
        if a != b
    ]
    assert len(differing) == 1
    files = lifecycle_files(engine, name)
    assert files == lifecycle_files(engine, from_archive["name"])
    for expected in remote.inputs.lifecycle.values():
        assert files[expected.path][1] == expected.mode
    paths = [e.path for e in remote.inputs.lifecycle.values() if e.link is None]
    assert checksums(engine, name, paths) == checksums(engine, from_archive["name"], paths)
    metadata = json.loads(
        inspect(engine, name)["Config"]["Labels"]["io.buildpacks.builder.metadata"]
    )
    assert metadata["lifecycle"]["version"] == fx.LIFECYCLE_VERSION


def test_lifecycle_version_from_packs_lifecycle_image(
    cli, engine: Engine, remote: Remote, tmp_path: Path
) -> None:
    version = f"0.{uuid.uuid4().int % 1000}.{uuid.uuid4().int % 100}"
    repository = push_lifecycle_image(engine, remote.host, tmp_path, version)
    toml = tmp_path / "version.toml"
    toml.write_text(
        remote.toml.read_text().replace('uri = "lifecycle.tgz"', f'version = "{version}"')
    )
    for ref in [remote.build, *remote.packages]:  # so that `never` gets to the lifecycle
        engine.docker("pull", ref)
    # Not in pack's config yet: the default repository is not tried under pull policy never,
    # and the registry's lifecycle image is unknown.
    failed = create(cli, engine, fx.unique("b"), toml, remote.host, "--pull-policy", "never")
    assert failed.exit_code == 1 and "neither cached nor reachable" in failed.stderr
    config = Path(os.environ["PACK_HOME"]) / "config.toml"
    config.write_text(config.read_text() + f'lifecycle-image = "{repository}"\n')
    name = fx.unique("by-version")
    report = ok(create(cli, engine, name, toml, remote.host, "--pull-policy", "if-not-present"))
    assert f"{repository}:{version}" in {p["ref"] for p in report["pulled"]}
    labels = inspect(engine, name)["Config"]["Labels"]
    assert json.loads(labels["io.buildpacks.builder.metadata"])["lifecycle"]["version"] == version
    # Cached now: found by version with the policy never.
    ok(create(cli, engine, fx.unique("cached"), toml, remote.host, "--pull-policy", "never"))


# -- publish ----------------------------------------------------------------------------


def test_publish_mounts_the_sources_and_uploads_only_the_builders_own_layers(
    cli, engine: Engine, registries: RegistrySet, remote: Remote, tmp_path: Path
) -> None:
    target = f"{remote.host}/t/builder-{uuid.uuid4().hex[:8]}:1"
    log_before = len(registries.plain.log_text().splitlines())
    report = ok(create(cli, engine, target, remote.toml, remote.host, "--publish"))
    published = report["published"]
    assert published["digest"].startswith("sha256:")
    build_layers = len(remote.inputs.build["RootFS"]["Layers"])
    package_layers = sum(len(p.buildpacks) for p in remote.inputs.packages)
    assert len(published["mounted"]) == build_layers + package_layers
    own_layers = len(report["diff_ids"]) - build_layers - package_layers
    assert len(published["uploaded"]) == own_layers + 1  # and the config
    # No layer blob of the sources was downloaded: only manifests and configs were read.
    new_lines = registries.plain.log_text().splitlines()[log_before:]
    blob_gets = [line for line in new_lines if '"GET ' in line and "/blobs/" in line]
    assert len(blob_gets) <= len(report["pulled"])  # the configs
    assert all(p["layers_downloaded"] == 0 for p in report["pulled"])
    # Pulled into a daemon, it is the builder the same inputs give there.
    engine.docker("pull", target)
    for ref in [remote.build, *remote.packages]:
        engine.docker("pull", ref)
    local = ok(create(cli, engine, fx.unique("local"), remote.toml, remote.host,
                      "--pull-policy", "never", cache=tmp_path / "other-cache"))  # fmt: skip
    assert report["config_digest"] == local["config_digest"]
    pulled = inspect(engine, target)
    assert pulled["RootFS"]["Layers"] == local["diff_ids"]
    assert pulled["Config"]["Labels"] == inspect(engine, local["name"])["Config"]["Labels"]
    # Again: the registry has every blob.
    again = ok(create(cli, engine, target, remote.toml, remote.host, "--publish"))
    assert again["published"]["uploaded"] == [] and again["published"]["mounted"] == []
    assert again["published"]["digest"] == published["digest"]


def test_publish_with_pull_policy_never_is_refused(cli, engine: Engine, remote: Remote) -> None:
    target = f"{remote.host}/t/never:1"
    result = create(cli, engine, target, remote.toml, remote.host, "--publish", "--pull-policy",
                    "never")  # fmt: skip
    assert result.exit_code == 2
    assert "--publish and --pull-policy never cannot be used together" in result.stderr


def test_publish_to_another_registry_uploads_the_sources_from_the_cache(
    cli, engine: Engine, registries: RegistrySet, remote: Remote, tmp_path: Path, monkeypatch
) -> None:
    from tests.registries import pushing
    from tests.test_registry_push import docker_config

    token = registries.token
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path, token.host, registries)))
    target = f"{token.host}/t/builder-{uuid.uuid4().hex[:8]}:1"
    report = ok(
        create(cli, engine, target, remote.toml, remote.host, "--publish",
               "--insecure-registry", token.host)
    )  # fmt: skip
    published = report["published"]
    # Nothing can be mounted across registries: the sources' layers were pulled to upload.
    assert set(published["pulled_for_upload"]) == {remote.build, *remote.packages}
    assert published["mounted"] == [] and published["present"] == []
    assert len(published["uploaded"]) == len(set(report["diff_ids"])) + 1
    # Read back whole (every blob verified) into another cache: the builder's config.
    check = cli("pull", "--insecure-registry", token.host, target, "--format", "json",
                cache=tmp_path / "check-cache")  # fmt: skip
    assert check.exit_code == 0, check.stderr
    assert check.json()[0]["config_digest"] == report["config_digest"]
    if engine.containerd_store:
        return  # its docker pull wants an OAuth POST the tests' token realm does not serve
    pushing.docker_login(engine, registries, token)
    engine.docker("pull", target)
    try:
        assert inspect(engine, target)["RootFS"]["Layers"] == report["diff_ids"]
    finally:
        engine.docker("rmi", target)


def push_index(host: str, repository: str, tags: list[str], index_tag: str) -> None:
    """An OCI index at repository:index_tag naming the images at `tags`, with their platforms
    (read from their configs), as a multi-arch base image is published."""
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    manifests = []
    for tag in tags:
        got = requests.get(f"http://{host}/v2/{repository}/manifests/{tag}",
                           headers={"Accept": accept}, timeout=30)  # fmt: skip
        got.raise_for_status()
        document = got.json()
        config = requests.get(
            f"http://{host}/v2/{repository}/blobs/{document['config']['digest']}", timeout=30
        ).json()
        manifests.append(
            {
                "mediaType": document["mediaType"],
                "size": len(got.content),
                "digest": got.headers["Docker-Content-Digest"],
                "platform": {"architecture": config["architecture"], "os": config["os"]},
            }
        )
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    put = requests.put(
        f"http://{host}/v2/{repository}/manifests/{index_tag}",
        data=json.dumps(index),
        headers={"Content-Type": OCI_INDEX},
        timeout=30,
    )
    put.raise_for_status()


def two_platforms(engine: Engine, remote: Remote, tmp_path: Path):
    """builder.toml naming a build image index of two platforms (the native one and another)
    in the registry: (toml, native, other, the other build image)."""
    native = images.docker_arch()
    other = "arm64" if native != "arm64" else "amd64"
    host = remote.host
    build_repo = ImageName.parse(remote.build).repository
    built = images.build_busybox_archive(
        tmp_path / "other.tar", fx.unique("build-other"), [{"etc/build-image.txt": b"other\n"}],
        config_extra={"architecture": other, "config": {
            "Env": ["PATH=/bin", f"CNB_USER_ID={fx.CNB_UID}", f"CNB_GROUP_ID={fx.CNB_GID}"],
            "Labels": {"io.buildpacks.stack.id": fx.STACK}}},
    )  # fmt: skip
    engine.docker("load", "-i", str(built.path))
    push(engine, built.repo_tag, f"{host}/{build_repo}:other")
    engine.docker("rmi", built.repo_tag)
    push_index(host, build_repo, ["1", "other"], "multi")
    toml = tmp_path / "multi.toml"
    toml.write_text(remote.toml.read_text().replace(remote.build, f"{host}/{build_repo}:multi"))
    return toml, native, other, built


def test_publish_for_two_platforms_pushes_an_index(
    cli, engine: Engine, registries: RegistrySet, remote: Remote, tmp_path: Path
) -> None:
    """pack's multi-arch builder: one builder per platform, pushed by digest, and an OCI index
    naming them under the tag; each builder is made of its platform's build image."""
    from packcache.builder.config import read_config
    from packcache.operations.create_builder import Registry, create_builder
    from packcache.store.store import Store
    from packcache.transports.registry import Platform, RegistryOptions

    toml, native, other, built = two_platforms(engine, remote, tmp_path)
    host = remote.host
    target = f"{host}/t/multi-{uuid.uuid4().hex[:8]}:1"
    platforms = (Platform("linux", native), Platform("linux", other))
    report = create_builder(
        Store.open(tmp_path / "cache"), None, target, read_config(toml),
        pull_policy="always",
        registry=Registry(RegistryOptions(insecure=frozenset({host})), True, None, platforms),
    )  # fmt: skip
    published = report.published
    assert published is not None and published.media_type == OCI_INDEX
    assert set(published.platforms) == {f"linux/{native}", f"linux/{other}"}
    repository = ImageName.parse(target).repository
    index = requests.get(f"http://{host}/v2/{repository}/manifests/1",
                         headers={"Accept": OCI_INDEX}, timeout=30).json()  # fmt: skip
    assert {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]} == {
        native: published.platforms[f"linux/{native}"],
        other: published.platforms[f"linux/{other}"],
    }
    for architecture, build_diff_ids in ((native, remote.inputs.build["RootFS"]["Layers"]),
                                         (other, built.diff_ids)):  # fmt: skip
        digest = published.platforms[f"linux/{architecture}"]
        manifest = requests.get(f"http://{host}/v2/{repository}/manifests/{digest}",
                                headers={"Accept": DOCKER_MANIFEST}, timeout=30).json()  # fmt: skip
        config = requests.get(
            f"http://{host}/v2/{repository}/blobs/{manifest['config']['digest']}", timeout=30
        ).json()
        assert config["architecture"] == architecture
        diff_ids = config["rootfs"]["diff_ids"]
        assert diff_ids[: len(build_diff_ids)] == list(build_diff_ids)
        assert len(manifest["layers"]) == len(diff_ids)
    # The CLI's --target values give the same index.
    again = ok(create(cli, engine, target, toml, host, "--publish", "--target",
                      f"linux/{native},linux/{other}"))  # fmt: skip
    assert again["published"]["media_type"] == OCI_INDEX
    assert again["published"]["platforms"] == published.platforms
    assert again["published"]["digest"] == published.digest


def manifest_digest(host: str, ref_path: str, accept: str = DOCKER_MANIFEST) -> str | None:
    """The digest the registry serves for repository:reference (None if it has none)."""
    repository, _, reference = ref_path.rpartition(":")
    accepted = f"{accept}, {DOCKER_MANIFEST}, {OCI_MANIFEST}, {OCI_INDEX}"
    got = requests.head(f"http://{host}/v2/{repository}/manifests/{reference}",
                        headers={"Accept": accepted}, timeout=30)  # fmt: skip
    return got.headers["Docker-Content-Digest"] if got.status_code == 200 else None


def test_publish_with_tags_pushes_the_same_builder_to_each(
    cli, engine: Engine, registries: RegistrySet, remote: Remote, tmp_path: Path
) -> None:
    """pack's --tag with --publish: the builder's manifest under NAME and every tag, blobs
    mounted from NAME's repository for a tag in another repository of the registry."""
    repo = f"t/builder-{uuid.uuid4().hex[:8]}"
    target = f"{remote.host}/{repo}:1"
    same_repo, other_repo = f"{remote.host}/{repo}:stable", f"{remote.host}/{repo}-b/x:2"
    report = ok(create(cli, engine, target, remote.toml, remote.host, "--publish",
                       "--tag", same_repo, "--tag", other_repo))  # fmt: skip
    published = report["published"]
    digest = published["digest"]
    assert published["tags"] == {same_repo: digest, other_repo: digest}
    for ref in (target, same_repo, other_repo):
        assert manifest_digest(remote.host, ref.removeprefix(f"{remote.host}/")) == digest
    # The other repository's blobs came by mount (every one of them, config included), so
    # nothing was uploaded twice.
    layers = len(report["diff_ids"])
    assert len(published["uploaded"]) == len(set(published["uploaded"]))
    assert len(published["mounted"]) >= layers + 1
    # Pulled back under the tag in the other repository: the builder NAME names.
    engine.docker("pull", other_repo)
    try:
        assert inspect(engine, other_repo)["RootFS"]["Layers"] == report["diff_ids"]
    finally:
        engine.docker("rmi", other_repo)
    # A digest is no tag to push to: refused before anything is read or pushed.
    refused = create(cli, engine, target, remote.toml, remote.host, "--publish",
                     "--tag", f"{remote.host}/{repo}@sha256:{'0' * 64}")  # fmt: skip
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert "--tag needs a tag to push to" in refused.stderr


def test_append_image_name_suffix_tags_each_platform_as_pack_names_it(
    cli, engine: Engine, registries: RegistrySet, remote: Remote, tmp_path: Path
) -> None:
    """With several targets: each platform's builder under NAME's tag with -os-arch appended
    (pack's name.AppendSuffix), the index under NAME and each --tag."""
    from packcache.operations.builder_publish import append_suffix
    from packcache.transports.registry import Platform

    assert str(append_suffix(ImageName.parse("r.test/b"), Platform("linux", "arm", "v7"))) == (
        "r.test/b:linux-arm-v7"
    )  # `latest` is replaced, another tag is kept
    toml, native, other, _ = two_platforms(engine, remote, tmp_path)
    host = remote.host
    repo = f"t/suffixed-{uuid.uuid4().hex[:8]}"
    tag = f"{host}/{repo}-more:edge"
    report = ok(create(cli, engine, f"{host}/{repo}:1", toml, host, "--publish",
                       "--target", f"linux/{native}", "--target", f"linux/{other}",
                       "--append-image-name-suffix", "--tag", tag))  # fmt: skip
    published = report["published"]
    assert published["media_type"] == OCI_INDEX
    for architecture in (native, other):
        digest = published["platforms"][f"linux/{architecture}"]
        assert manifest_digest(host, f"{repo}:1-linux-{architecture}") == digest
        # the tag's repository holds each platform's manifest too, by digest
        got = requests.get(f"http://{host}/v2/{repo}-more/manifests/{digest}",
                           headers={"Accept": DOCKER_MANIFEST}, timeout=30)  # fmt: skip
        assert got.status_code == 200
    index_digest = published["digest"]
    assert manifest_digest(host, f"{repo}:1", OCI_INDEX) == index_digest
    assert published["tags"] == {tag: index_digest}
    assert manifest_digest(host, f"{repo}-more:edge", OCI_INDEX) == index_digest
    # Pulled on this engine, the tag gives the native builder.
    engine.docker("pull", tag)
    try:
        pulled = inspect(engine, tag)
        assert pulled["Architecture"] == native
        native_config = requests.get(
            f"http://{host}/v2/{repo}/manifests/{published['platforms'][f'linux/{native}']}",
            headers={"Accept": DOCKER_MANIFEST}, timeout=30,
        ).json()["config"]["digest"]  # fmt: skip
        assert pulled["Id"] == native_config or engine.containerd_store
    finally:
        engine.docker("rmi", tag)
    # Without --append-image-name-suffix no platform tag is made.
    plain = f"{host}/{repo}-plain:1"
    ok(create(cli, engine, plain, toml, host, "--publish", "--target",
              f"linux/{native},linux/{other}"))  # fmt: skip
    assert manifest_digest(host, f"{repo}-plain:1-linux-{native}") is None


def test_publish_to_an_unreachable_registry_fails_first(
    cli, engine: Engine, remote: Remote, tmp_path: Path
) -> None:
    """NAME's registry (or a --tag's) not answering: one message before anything is read,
    the cache as it was."""
    from tests.registries.harness import free_port

    gone = f"127.0.0.1:{free_port()}"
    before = cli("ls", "--format", "json").json()
    for name, tags in ((f"{gone}/t/b:1", ()), (f"{remote.host}/t/b:1", ("--tag", f"{gone}/t/b:2"))):
        result = create(cli, engine, name, remote.toml, remote.host, "--publish",
                        "--insecure-registry", gone, *tags)  # fmt: skip
        assert result.exit_code == 1, result.stderr
        assert result.stderr.startswith("packcache: error:") and gone in result.stderr
        assert result.stderr.count("\n") == 1
    assert cli("ls", "--format", "json").json() == before
    assert manifest_digest(remote.host, "t/b:1") is None


def test_dry_run_reads_manifests_and_configs_only(cli, engine: Engine, remote: Remote) -> None:
    before = cli("ls", "--format", "json").json()
    name = fx.unique("dry")
    report = ok(create(cli, engine, name, remote.toml, remote.host, "--pull-policy", "always",
                       "--dry-run"))  # fmt: skip
    assert {remote.build, *remote.packages} <= {p["ref"] for p in report["pulled"]}
    assert all(p["layers_downloaded"] == 0 for p in report["pulled"])
    assert cli("ls", "--format", "json").json() == before
    assert absent(engine, name) and absent(engine, remote.build)
    # The same config as the real run gives.
    real = ok(create(cli, engine, name, remote.toml, remote.host, "--pull-policy", "always"))
    assert real["config_digest"] == report["config_digest"]


def test_always_reports_a_refused_login_even_when_the_daemon_has_the_image(
    cli, engine: Engine, registries: RegistrySet, remote: Remote, tmp_path: Path, monkeypatch
) -> None:
    """A build image the daemon has, named on a registry whose token service refuses the
    (missing) credentials: docker's pull fails with that refusal, not "not found", so pack
    does not fall back to the daemon's copy, and neither does packcache."""
    token = registries.token
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-credentials"))
    local_only = f"{token.host}/t/local-only-{uuid.uuid4().hex[:8]}:1"
    engine.docker("pull", remote.build)
    engine.docker("tag", remote.build, local_only)
    toml = tmp_path / "local-only.toml"
    toml.write_text(remote.toml.read_text().replace(remote.build, local_only))
    name = fx.unique("b")
    failed = create(cli, engine, name, toml, remote.host, "--pull-policy", "always",
                    "--insecure-registry", token.host)  # fmt: skip
    assert failed.exit_code == 1, failed.stdout
    assert "refused the credentials (none given)" in failed.stderr
    assert absent(engine, name)
    # if-not-present takes the daemon's copy without asking the registry.
    report = ok(create(cli, engine, name, toml, remote.host, "--pull-policy", "if-not-present",
                       "--insecure-registry", token.host))  # fmt: skip
    assert local_only not in {p["ref"] for p in report["pulled"]}
