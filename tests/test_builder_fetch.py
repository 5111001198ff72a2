"""create-builder's fetch of the images it is made from, on every engine: the images to pull
are pulled together, and one whose download fails there is pulled again on its own, so a
blob broken once costs a retry, not the builder (as when each image was pulled apart)."""

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
from tests.test_containerd_load import layer_sizes, our_leases_and_ingests

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
