"""create-builder's fetch of the images it is made from, on every engine: the images to pull
are pulled together, and a blob broken once costs a retry, not the builder (as when each image
was pulled apart). Where the builder goes in with `docker load`, its layers are sent as their
downloads end, while the rest still download; a layer that never arrives whole stops the load
before its manifest: no builder, nothing of the pull in the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import builder_fixtures as fx
from tests.engines.harness import Engine
from tests.registries.faults import CuttingProxy
from tests.registries.harness import RegistrySet
from tests.test_builder_engine import inspect
from tests.test_builder_registry import absent, create, ok, to_registry
from tests.test_containerd_load import layer_sizes, our_leases_and_ingests, settings

pytestmark = pytest.mark.engine


def buildpack_layers(engine: Engine, ref: str) -> dict:
    return json.loads(inspect(engine, ref)["Config"]["Labels"]["io.buildpacks.buildpack.layers"])


def test_a_blob_broken_in_the_joint_pull_is_fetched_again_alone(
    cli, engine: Engine, registries: RegistrySet, tmp_path: Path
) -> None:
    remote = to_registry(engine, registries, tmp_path)
    direct = fx.unique("direct")
    ok(
        create(cli, engine, direct, remote.toml, remote.host, "--pull-policy", "always",
               cache=tmp_path / "direct-cache")
    )  # fmt: skip
    # The first download of one buildpackage layer through the proxy has a bit flipped, in its
    # body (the answer's headers take some 400 of the first bytes; these layers are ~460).
    broken = max(layer_sizes(remote.packages[-1]).items(), key=lambda item: item[1])[0]
    proxy = CuttingProxy(registries.plain.port, cut_after=700, cuts=1, flip_only=True, blob=broken)
    toml = tmp_path / "proxied.toml"
    toml.write_text(remote.toml.read_text().replace(remote.host, proxy.host))
    name = fx.unique("builder")
    try:
        report = ok(create(cli, engine, name, toml, proxy.host, "--pull-policy", "always"))
    finally:
        proxy.close()
    assert proxy.cuts_done == 1
    assert report["image_id"] and all(
        absent(engine, ref.replace(remote.host, proxy.host)) for ref in remote.packages
    )
    # The same buildpack layers as without the proxy (run.toml names the proxy's host).
    assert buildpack_layers(engine, name) == buildpack_layers(engine, direct)
    engine.docker("rmi", name, direct)
    if engine.containerd_store:
        assert our_leases_and_ingests(engine) == ([], [])


def image_ids(engine: Engine) -> list[str]:
    listed = engine.docker("images", "--all", "--quiet", "--no-trunc").stdout.decode()
    return sorted(set(listed.split()))


def test_layers_are_sent_as_they_download_where_docker_load_takes_the_builder(
    cli, engine: Engine, registries: RegistrySet, tmp_path: Path
) -> None:
    remote = to_registry(engine, registries, tmp_path)
    name = fx.unique("builder")
    before = image_ids(engine)
    report = ok(create(cli, engine, name, remote.toml, remote.host, "--pull-policy", "always"))
    downloaded = sum(pulled["layers_downloaded"] for pulled in report["pulled"])
    assert downloaded >= len(remote.packages) + 1
    if report["load"]["load_method"] == "containerd":  # written there as they download
        assert report["layers_streamed"] == 0
    else:
        assert report["layers_streamed"] == downloaded
    assert inspect(engine, name)["Id"] == report["image_id"]
    assert image_ids(engine) == sorted({*before, report["image_id"]})  # nothing else is left
    assert cli("verify").exit_code == 0
    run = engine.docker("run", "--rm", "--pull", "never", "--network", "none", "--entrypoint",
                        "ls", name, "/cnb/buildpacks")  # fmt: skip
    assert run.stdout.strip()
    # Again, all cached: nothing downloads, nothing is streamed, the same builder; of the
    # images read again only the manifests are asked for (the configs are the cache's), but
    # the run image's config, which the cache does not hold.
    engine.docker("rmi", name)
    log_before = len(registries.plain.log_text().splitlines())
    again = ok(create(cli, engine, name, remote.toml, remote.host, "--pull-policy", "always"))
    assert again["layers_streamed"] == 0 and again["config_digest"] == report["config_digest"]
    new_lines = registries.plain.log_text().splitlines()[log_before:]
    run_repository = remote.run.split("/", 1)[1].rsplit(":", 1)[0]
    blob_gets = [line for line in new_lines if '"GET ' in line and "/blobs/" in line]
    assert all(f"/v2/{run_repository}/blobs/" in line for line in blob_gets), blob_gets
    manifest_gets = [line for line in new_lines if '"GET ' in line and "/manifests/" in line]
    assert len(manifest_gets) >= len(remote.packages) + 1
    engine.docker("rmi", name)


def test_a_layer_that_never_downloads_whole_leaves_no_builder_and_nothing_pulled(
    cli, engine: Engine, registries: RegistrySet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamed (docker load): nothing of the pull is kept. Through containerd, where each
    image is then pulled alone, nothing of the image whose layer broke."""
    if engine.containerd_store:
        for key, value in settings(engine).items():
            monkeypatch.setenv(key, value)
    remote = to_registry(engine, registries, tmp_path)
    broken = max(layer_sizes(remote.packages[-1]).items(), key=lambda item: item[1])[0]
    # Every GET of that blob answered 500 (a flipped byte would be placed by the answer bytes
    # counted on its connection, which a kept-alive connection can misplace).
    proxy = CuttingProxy(registries.plain.port, cut_after=0, cuts=1000, answer_status=500,
                         blob=broken)  # fmt: skip
    toml = tmp_path / "proxied.toml"
    toml.write_text(remote.toml.read_text().replace(remote.host, proxy.host))
    cache = tmp_path / "cache"
    before = image_ids(engine)
    name = fx.unique("builder")
    try:
        result = create(cli, engine, name, toml, proxy.host, "--pull-policy", "always",
                        cache=cache)  # fmt: skip
    finally:
        proxy.close()
    assert result.exit_code == 1, result.stdout
    assert result.stderr.startswith("packcache: error:"), result.stderr
    assert result.stderr.count("\n") == 1 and broken in result.stderr, result.stderr
    assert proxy.cuts_done >= 2, result.stderr  # tried again before giving up
    assert absent(engine, name) and image_ids(engine) == before  # no half-made builder
    # Nothing of the pull was committed, and no temp file is left behind.
    assert cli("verify", cache=cache).exit_code == 0
    listed = json.dumps(cli("ls", "--format", "json", cache=cache).json())
    assert broken not in listed
    packages = remote.inputs.packages[-1:] if engine.containerd_store else remote.inputs.packages
    for package in packages:
        assert not any(diff_id in listed for diff_id in package.diff_ids.values())
    assert [p.name for p in (cache / "ingest").iterdir()] == []
    if engine.containerd_store:
        assert our_leases_and_ingests(engine) == ([], [])


def test_flattening_buildpacks_still_downloading_waits_for_their_layers(
    cli, engine: Engine, registries: RegistrySet, tmp_path: Path
) -> None:
    """--flatten reads the layers it joins: those being pulled are waited for first (a group
    of one buildpack: its layer made again as a flattened one)."""
    remote = to_registry(engine, registries, tmp_path)
    first = remote.inputs.packages[0].main
    name = fx.unique("flat")
    args = ("--pull-policy", "always", "--flatten", f"{first.id}@{first.version}")
    cold = ok(create(cli, engine, name, remote.toml, remote.host, *args))
    assert cold["layers_streamed"] == 0  # every download was waited for
    flat = buildpack_layers(engine, name)[first.id][first.version]["layerDiffID"]
    assert flat in inspect(engine, name)["RootFS"]["Layers"]
    engine.docker("rmi", name)
    warm = ok(create(cli, engine, name, remote.toml, remote.host, *args))
    assert warm["config_digest"] == cold["config_digest"]
    engine.docker("rmi", name)


def test_a_builder_refused_once_its_images_are_read_leaves_no_load_and_nothing_pulled(
    cli, engine: Engine, registries: RegistrySet, tmp_path: Path
) -> None:
    """Where docker load takes a graphdriver's builder, its load begins once the images are
    read; an order naming a buildpack no package has is refused only later: that load is
    dropped (no image in the daemon), and nothing of the pull is kept (written into a
    containerd store as it downloads, a pull is committed before the buildpacks are read)."""
    remote = to_registry(engine, registries, tmp_path)
    toml = tmp_path / "unknown.toml"
    toml.write_text(
        remote.toml.read_text() + '\n[[order]]\n  [[order.group]]\n    id = "no/such-bp"\n'
    )
    cache = tmp_path / "cache"
    before = image_ids(engine)
    name = fx.unique("builder")
    result = create(cli, engine, name, toml, remote.host, "--pull-policy", "always", cache=cache)
    assert result.exit_code == 1, result.stdout
    assert result.stderr.startswith("packcache: error:"), result.stderr
    assert "no/such-bp" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert absent(engine, name) and image_ids(engine) == before
    assert cli("verify", cache=cache).exit_code == 0
    listed = json.dumps(cli("ls", "--format", "json", cache=cache).json())
    for package in [] if engine.containerd_store else remote.inputs.packages:
        assert not any(diff_id in listed for diff_id in package.diff_ids.values())
    assert [p.name for p in (cache / "ingest").iterdir()] == []
    # The same registry images then make the builder: nothing of the dropped load is in the way.
    report = ok(create(cli, engine, name, remote.toml, remote.host, "--pull-policy", "always",
                       cache=cache))  # fmt: skip
    assert inspect(engine, name)["Id"] == report["image_id"]
    engine.docker("rmi", name)
