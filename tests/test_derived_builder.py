"""`packcache create-builder NAME --from-builder BUILDER ...` against every real engine: the
derived builder is, label for label and layer for layer, the builder a full create-builder of
the same inputs gives; a reader that finds buildpacks as the lifecycle does (order, then the
layers label, then the files) finds every one; the existing builder is never saved; and every
bad input is one clear message."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from packcache.operations.derived_builder import DerivedBuilderRequest, derive_builder
from packcache.store.store import Store
from packcache.transports.daemon import Daemon
from tests import builder_fixtures as fx
from tests.engines.harness import Engine
from tests.engines.pytest_plugin import EnginePool
from tests.test_builder_engine import Inputs, cat, checksums, create, inspect, make_inputs
from tests.test_containerd_load import our_leases_and_ingests, run_cat, saved_blobs_complete
from tests.test_containerd_transport import CONTAINERD_KINDS, GRAPHDRIVER_KINDS
from tests.test_launch_cache import daemon_time
from tests.test_lazy_imports import imported, loaded

EMPTY_TAR = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


@pytest.fixture
def via_containerd(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """On a containerd store, packcache told where the engine's containerd is (26.1's API does
    not say), so results go through the containerd path."""
    if engine.containerd_store:
        monkeypatch.setenv("PACKCACHE_CONTAINERD_ADDRESS", str(engine.root / "c.sock"))
        monkeypatch.setenv("PACKCACHE_CONTAINERD_NAMESPACE", f"pc-{engine.root.name}")
    return engine


@dataclass
class Derived:
    inputs: Inputs
    base: str  # the builder derived from, made by a full create-builder
    extra: fx.Buildpackage  # a buildpackage image the base builder does not have


def make_base(cli, engine: Engine, tmp_path: Path) -> Derived:
    inputs = make_inputs(engine, tmp_path)
    base = fx.unique("base-builder")
    create(cli, engine, base, inputs.toml)
    extra = fx.load_buildpackage(
        engine, tmp_path, fx.unique("extra-package"), fx.make_buildpack("test/extra", "9.0.0")
    )
    return Derived(inputs, base, extra)


def derive(cli, engine: Engine, name: str, base: str, *args: str, cache=None) -> dict:
    result = cli(
        "--host", engine.host, "create-builder", name, "--from-builder", base,
        "--format", "json", *args, cache=cache,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return result.json()


def _group_toml(group: list[dict]) -> str:
    text = "\n[[order]]\n"
    for ref in group:
        text += "  [[order.group]]\n"
        for key, value in ref.items():
            text += f"    {key} = {json.dumps(value)}\n"
    return text


def full_toml(d: Derived, tmp_path: Path, order: list[list[dict]]) -> Path:
    """The base builder's builder.toml with the extra buildpack added and `order` instead of
    its order: what a full create-builder of the derived builder's inputs reads."""
    text = d.inputs.toml.read_text()
    head, _, rest = text.partition("\n[[order]]")
    tail = rest[rest.index("\n[build]") :]
    head += f'\n[[buildpacks]]\n  uri = "docker://{d.extra.ref}"\n'
    path = tmp_path / "full-builder.toml"
    path.write_text(head + "".join(_group_toml(g) for g in order) + tail)
    return path


def extra_info(d: Derived) -> dict:
    bp = d.extra.main
    name, homepage = f"Test {bp.id}", f"https://example.test/{bp.id}"
    return {"id": bp.id, "name": name, "version": bp.version, "homepage": homepage}


# -- the derived builder is what a full create-builder gives -----------------------------------


def test_derived_builder_equals_a_full_create_builder(
    cli, via_containerd: Engine, tmp_path
) -> None:
    engine = via_containerd
    d = make_base(cli, engine, tmp_path)
    base = inspect(engine, d.base)
    name = fx.unique("derived")
    report = derive(
        cli, engine, name, d.base, "--buildpack", f"docker://{d.extra.ref}",
        "--buildpack", "from=builder", "--env", "BP_DERIVED=yes",
    )  # fmt: skip
    derived = inspect(engine, name)

    # pack build's order for these locators: the extra buildpack, then each builder group.
    base_order = json.loads(base["Config"]["Labels"]["io.buildpacks.buildpack.order"])
    order = [[extra_info(d), *entry["group"]] for entry in base_order]
    full_name = fx.unique("full")
    full_report = create(cli, engine, full_name, full_toml(d, tmp_path, order))
    full = inspect(engine, full_name)

    assert derived["Config"]["Labels"] == full["Config"]["Labels"]
    assert derived["Config"]["Env"] == full["Config"]["Env"]
    assert derived["Config"]["WorkingDir"] == "/layers"
    # Layers: the base builder's, then the default dirs, the extra buildpack, order, stack,
    # run and env, each the layer the full builder has for it (but env, which holds the var).
    layers, full_layers = derived["RootFS"]["Layers"], full["RootFS"]["Layers"]
    base_layers = base["RootFS"]["Layers"]
    assert report["diff_ids"] == layers
    assert layers[: len(base_layers)] == base_layers
    extra_layer = d.extra.diff_ids[f"test/extra@{d.extra.main.version}"]
    dirs = full_layers[len(d.inputs.build["RootFS"]["Layers"])]
    assert layers[len(base_layers) : -1] == [dirs, extra_layer, *full_layers[-5:-2]]
    assert layers[-1] not in full_layers and set(full_layers) <= set(layers)
    assert full_report["diff_ids"] == full_layers

    # The base builder was not saved; the extra buildpackage was read once.
    assert report["saved_builder"] is False
    assert report["imported"] == [d.extra.ref]
    if engine.containerd_store:
        assert report["load"]["load_method"] == "containerd"
    assert cat(engine, name, "/platform/env/BP_DERIVED") == b"yes"
    assert cat(engine, name, "/cnb/order.toml") == cat(engine, full_name, "/cnb/order.toml")
    # Whole as the daemon sees it (on a containerd store: every blob there, unpacked on use).
    saved = tmp_path / "derived.tar"
    engine.docker("save", "-o", str(saved), name)
    assert saved.stat().st_size > 0


def test_builder_buildpacks_and_new_ones_make_the_group(
    cli, via_containerd: Engine, tmp_path
) -> None:
    """pack build's locators: urn:cnb:builder: names a buildpack on the builder (nothing
    added for it), an image adds one; both, in the order given, are the order's one group."""
    engine = via_containerd
    d = make_base(cli, engine, tmp_path)
    name = fx.unique("grouped")
    result = cli(
        "--host", engine.host, "create-builder", name, "--from-builder", d.base,
        "--buildpack", "urn:cnb:builder:test/simple", "--buildpack", f"docker://{d.extra.ref}",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert f"from        {d.base}, its layers left there" in result.stdout
    labels = inspect(engine, name)["Config"]["Labels"]
    assert json.loads(labels["io.buildpacks.buildpack.order"]) == [
        {"group": [{"id": "test/simple"}, extra_info(d)]}
    ]
    metadata = json.loads(labels["io.buildpacks.builder.metadata"])
    base_metadata = json.loads(inspect(engine, d.base)["Config"]["Labels"][
        "io.buildpacks.builder.metadata"
    ])  # fmt: skip
    assert metadata["buildpacks"] == [*base_metadata["buildpacks"], extra_info(d)]
    assert tomllib.loads(cat(engine, name, "/cnb/order.toml").decode()) == {
        "order": [{"group": [{"id": "test/simple", "version": "1.0.0"}, extra_info(d)]}]
    }


def test_a_lifecycle_shaped_reader_finds_every_buildpack(
    cli, via_containerd: Engine, tmp_path
) -> None:
    """As the lifecycle's detector: the order (label, and /cnb/order.toml in the image) names
    buildpacks; each order buildpack's own groups name more; each is found in the layers label
    with a layer the image has, and its buildpack.toml is at /cnb/buildpacks/<id>/<version>."""
    engine = via_containerd
    d = make_base(cli, engine, tmp_path)
    name = fx.unique("derived")
    derive(
        cli, engine, name, d.base, "--buildpack", "from=builder",
        "--buildpack", f"docker://{d.extra.ref}",
    )  # fmt: skip
    image = inspect(engine, name)
    labels = image["Config"]["Labels"]
    layers_label = json.loads(labels["io.buildpacks.buildpack.layers"])
    metadata = json.loads(labels["io.buildpacks.builder.metadata"])
    on_disk = tomllib.loads(cat(engine, name, "/cnb/order.toml").decode())["order"]
    label_order = json.loads(labels["io.buildpacks.buildpack.order"])
    assert [[r["id"] for r in g["group"]] for g in on_disk] == [
        [r["id"] for r in g["group"]] for g in label_order
    ]

    found: dict[str, str] = {}

    def visit(ref: dict) -> None:
        versions = layers_label[ref["id"]]
        version = ref.get("version") or next(iter(versions))
        entry = versions[version]
        assert entry["layerDiffID"] in image["RootFS"]["Layers"]
        found[f"{ref['id']}@{version}"] = entry["layerDiffID"]
        for group in entry.get("order") or []:
            for inner in group["group"]:
                visit(inner)

    for group in on_disk:
        for ref in group["group"]:
            visit(ref)
    every = [*d.inputs.buildpacks, d.extra.main]
    assert set(found) == {f"{bp.id}@{bp.version}" for bp in every}
    assert {f"{b['id']}@{b['version']}" for b in metadata["buildpacks"]} == set(found)
    # Each buildpack's files are where the lifecycle looks for them.
    paths = {f"{bp.root}/buildpack.toml": bp.files["buildpack.toml"] for bp in every}
    sums = checksums(engine, name, sorted(paths))
    assert sums == {path: hashlib.sha256(data).hexdigest() for path, data in paths.items()}
    # Every group is the builder's with the extra buildpack last, which detection runs.
    assert all(g["group"][-1]["id"] == "test/extra" for g in on_disk)


def test_replacing_a_builder_buildpack_hides_the_old_version(
    cli, via_containerd: Engine, tmp_path
) -> None:
    """A buildpack the builder has at the same version with other contents: pack whites the
    old directory out before adding the new layer, and the labels point at the new one."""
    engine = via_containerd
    d = make_base(cli, engine, tmp_path)
    changed = fx.make_buildpack("test/simple")  # same id@version, other salt
    folder = fx.write_directory(changed, tmp_path / "new-simple")
    name = fx.unique("replaced")
    report = derive(cli, engine, name, d.base, "--buildpack", str(folder))
    image = inspect(engine, name)
    layers_label = json.loads(image["Config"]["Labels"]["io.buildpacks.buildpack.layers"])
    new_layer = layers_label["test/simple"]["1.0.0"]["layerDiffID"]
    old = d.inputs.packages[0].diff_ids["test/simple@1.0.0"]
    assert new_layer != old and new_layer in report["diff_ids"]
    base_count = len(inspect(engine, d.base)["RootFS"]["Layers"])
    whiteout = report["diff_ids"][base_count + 1]
    assert whiteout not in (new_layer, old) and report["diff_ids"][base_count + 2] == new_layer
    salt = f"{changed.root}/lib/salt.txt"
    assert cat(engine, name, salt) == changed.files["lib/salt.txt"]
    assert json.loads(image["Config"]["Labels"]["io.buildpacks.buildpack.order"]) == [
        {"group": [{"id": "test/simple", "name": "Test test/simple", "version": "1.0.0",
                    "homepage": "https://example.test/test/simple"}]}
    ]  # fmt: skip


def test_order_and_run_image_options(cli, via_containerd: Engine, tmp_path) -> None:
    engine = via_containerd
    d = make_base(cli, engine, tmp_path)
    run = fx.unique("other-run")
    fx.load_run_image(engine, tmp_path, run)
    name = fx.unique("ordered")
    derive(
        cli, engine, name, d.base, "--order", "test/simple,test/from-dir?",
        "--order", "test/meta@3.0.0", "--run-image", run,
    )  # fmt: skip
    labels = inspect(engine, name)["Config"]["Labels"]
    assert json.loads(labels["io.buildpacks.buildpack.order"]) == [
        {"group": [{"id": "test/simple"}, {"id": "test/from-dir", "optional": True}]},
        {"group": [{"id": "test/meta", "version": "3.0.0"}]},
    ]
    assert tomllib.loads(cat(engine, name, "/cnb/order.toml").decode()) == {
        "order": [
            {"group": [{"id": "test/simple", "version": "1.0.0"},
                       {"id": "test/from-dir", "version": "0.1.0", "optional": True}]},
            {"group": [{"id": "test/meta", "version": "3.0.0"}]},
        ]
    }  # fmt: skip
    metadata = json.loads(labels["io.buildpacks.builder.metadata"])
    assert metadata["stack"] == {"runImage": {"image": run, "mirrors": None}}
    assert metadata["images"] == [{"image": run, "mirrors": None}]
    assert tomllib.loads(cat(engine, name, "/cnb/run.toml").decode()) == {
        "images": [{"image": run}]
    }
    assert tomllib.loads(cat(engine, name, "/cnb/stack.toml").decode()) == {
        "run-image": {"image": run}
    }
    # The buildpacks are the base builder's: nothing added, the layers label unchanged.
    base_labels = inspect(engine, d.base)["Config"]["Labels"]
    key = "io.buildpacks.buildpack.layers"
    assert labels[key] == base_labels[key]


def test_extensions_equal_a_full_create_builder(cli, via_containerd: Engine, tmp_path) -> None:
    """pack build's --extension: each extension added (an extension package image, a
    directory), the extension order replaced by one group with the last given first (pack's
    prependBuildpackToOrder), the builder's order written again: label for label what a full
    create-builder with those [[extensions]] and [[order-extensions]] gives."""
    from tests.test_builder_pack_flags import (
        EXTENSIONS_LIFECYCLE,
        extension_root,
        load_extension_package,
        make_extension,
    )

    engine = via_containerd
    inputs = make_inputs(engine, tmp_path)
    fx.write_lifecycle(tmp_path / "lifecycle.tgz", toml=EXTENSIONS_LIFECYCLE)
    base = fx.unique("base-builder")
    create(cli, engine, base, inputs.toml)
    from_image, from_dir = make_extension("test/ext-a"), make_extension("test/ext-b", "2.0.0")
    ext_ref = fx.unique("ext-package")
    ext_diff_id = load_extension_package(engine, tmp_path, ext_ref, from_image)
    folder = fx.write_directory(from_dir, tmp_path / "ext-b")
    name = fx.unique("derived-ext")
    report = derive(
        cli, engine, name, base, "--extension", f"docker://{ext_ref}", "--extension", str(folder)
    )  # fmt: skip
    assert report["order_replaced"] is False
    assert [(b["id"], b["module"]) for b in report["buildpacks"]] == [
        ("test/ext-a", "extension"), ("test/ext-b", "extension"),
    ]  # fmt: skip

    def info(ext: fx.Buildpack) -> dict:
        """Its ModuleInfo as pack reads it: the package image's label has no name."""
        name = {} if ext is from_image else {"name": f"Ext {ext.id}"}
        return {"id": ext.id, **name, "version": ext.version}

    text = inputs.toml.read_text()
    head, _, tail = text.partition("\n[build]")
    head += f'\n[[extensions]]\n  uri = "docker://{ext_ref}"\n'
    head += f'\n[[extensions]]\n  uri = "{folder}"\n'
    head += _group_toml([info(from_dir), info(from_image)]).replace("order", "order-extensions")
    full_path = tmp_path / "full-with-extensions.toml"
    full_path.write_text(head + "\n[build]" + tail)
    full_name = fx.unique("full-ext")
    create(cli, engine, full_name, full_path)
    derived, full = inspect(engine, name), inspect(engine, full_name)
    assert derived["Config"]["Labels"] == full["Config"]["Labels"]
    labels = derived["Config"]["Labels"]
    assert json.loads(labels["io.buildpacks.buildpack.order-extensions"]) == [
        {"group": [info(from_dir), info(from_image)]}
    ]
    ext_layers = json.loads(labels["io.buildpacks.extension.layers"])
    assert ext_layers["test/ext-a"]["1.0.0"]["layerDiffID"] == ext_diff_id
    # Layers: the base builder's, then dirs, the two extensions, order, stack, run, env: the
    # full builder's layers for them (the build-config env layer is the base builder's).
    base_layers = inspect(engine, base)["RootFS"]["Layers"]
    layers, full_layers = derived["RootFS"]["Layers"], full["RootFS"]["Layers"]
    assert layers[: len(base_layers)] == base_layers
    dirs = full_layers[len(inputs.build["RootFS"]["Layers"])]
    assert layers[len(base_layers) :] == [dirs, *full_layers[-7:-2], full_layers[-1]]
    assert layers[len(base_layers) + 1] == ext_diff_id
    assert report["saved_builder"] is False and report["imported"] == [ext_ref]
    assert cat(engine, name, "/cnb/order.toml") == cat(engine, full_name, "/cnb/order.toml")
    order_toml = tomllib.loads(cat(engine, name, "/cnb/order.toml").decode())
    assert order_toml["order-extensions"] == [{"group": [info(from_dir), info(from_image)]}]
    assert len(order_toml["order"]) == 2  # the builder's order, written again
    for ext in (from_image, from_dir):
        path = f"{extension_root(ext)}/extension.toml"
        assert cat(engine, name, path) == ext.files["extension.toml"]


# -- publish -----------------------------------------------------------------------------------


def _publish(cli, engine: Engine, host: str, name: str, base: str, *args: str):
    return cli(
        "--host", engine.host, "create-builder", name, "--from-builder", base, "--publish",
        "--insecure-registry", host, "--format", "json", *args,
    )  # fmt: skip


def test_publish_from_a_registry_builder_sends_only_the_new_layers(
    cli, engine: Engine, registries, tmp_path
) -> None:
    """The base builder and the extra buildpackage in the registry: the derived builder is
    pushed with their blobs mounted (none downloaded), only pack's new layers and the config
    uploaded; pulled back, it is the builder the same inputs give in the daemon."""
    import uuid

    from tests.test_builder_registry import manifest_digest
    from tests.test_rebase_pull_policy import push

    d = make_base(cli, engine, tmp_path)
    host = registries.plain.host
    repo = f"t/derived-{uuid.uuid4().hex[:8]}"
    base, extra = f"{host}/{repo}/base:1", f"{host}/{repo}/extra:1"
    push(engine, d.base, base)
    push(engine, d.extra.ref, extra)
    target, tag = f"{host}/{repo}/result:1", f"{host}/{repo}/result:also"
    log_before = len(registries.plain.log_text().splitlines())
    args = ("--buildpack", f"docker://{extra}", "--env", "PUBLISHED=1")
    result = _publish(cli, engine, host, target, base, *args, "--pull-policy", "always",
                      "--tag", tag)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = result.json()
    published = report["published"]
    base_layers = inspect(engine, d.base)["RootFS"]["Layers"]
    assert report["saved_builder"] is False and report["imported"] == []
    assert report["load"] is None and absent(engine, target)
    # Mounted: the base builder's layers and the extra buildpack's; uploaded: those of pack's
    # new layers (dirs, order, stack, run, env) the base builder does not hold already, and
    # the config, once (the tag's repository is NAME's).
    extra_layer = d.extra.diff_ids[f"test/extra@{d.extra.main.version}"]
    assert len(set(published["mounted"])) == len(set(base_layers)) + 1
    added = set(report["diff_ids"][len(base_layers) :]) - set(base_layers) - {extra_layer}
    assert len(added) >= 2  # order and env at least
    assert len(published["uploaded"]) == len(added) + 1
    new_lines = registries.plain.log_text().splitlines()[log_before:]
    blob_gets = [line for line in new_lines if '"GET ' in line and "/blobs/" in line]
    assert len(blob_gets) <= len(report["pulled"])  # the configs
    assert manifest_digest(host, f"{repo}/result:also") == published["digest"]
    assert published["tags"] == {tag: published["digest"]}
    # The same derived builder made in the daemon: the same config, the same layers.
    local = derive(cli, engine, fx.unique("local"), d.base, "--buildpack",
                   f"docker://{d.extra.ref}", "--env", "PUBLISHED=1")  # fmt: skip
    assert report["config_digest"] == local["config_digest"]
    engine.docker("pull", target)
    try:
        pulled = inspect(engine, target)
        assert pulled["RootFS"]["Layers"] == local["diff_ids"]
        assert pulled["Config"]["Labels"] == inspect(engine, local["name"])["Config"]["Labels"]
        assert cat(engine, target, "/platform/env/PUBLISHED") == b"1"
    finally:
        engine.docker("rmi", target)


def test_publish_from_a_daemon_builder_reads_it_once(
    cli, engine: Engine, registries, tmp_path
) -> None:
    """The base builder only in the daemon (if-not-present): its layers are read once into the
    cache and uploaded; again, the registry has every blob and nothing is read."""
    import uuid

    from tests.test_rebase_pull_policy import push

    d = make_base(cli, engine, tmp_path)
    host = registries.plain.host
    repo = f"t/derived-{uuid.uuid4().hex[:8]}"
    extra = f"{host}/{repo}/extra:1"
    push(engine, d.extra.ref, extra)
    target = f"{host}/{repo}/result:1"
    args = ("--buildpack", f"docker://{extra}", "--pull-policy", "if-not-present")
    first = _publish(cli, engine, host, target, d.base, *args)
    assert first.exit_code == 0, first.stderr
    published = first.json()["published"]
    assert len(published["mounted"]) == 1  # the extra buildpack's blob, from its repository
    assert len(published["uploaded"]) == len(set(first.json()["diff_ids"]))  # config included
    again = _publish(cli, engine, host, target, d.base, *args)
    assert again.exit_code == 0, again.stderr
    assert again.json()["saved_builder"] is False
    assert again.json()["published"]["uploaded"] == []
    assert again.json()["published"]["digest"] == published["digest"]
    engine.docker("pull", target)
    try:
        assert inspect(engine, target)["RootFS"]["Layers"] == first.json()["diff_ids"]
    finally:
        engine.docker("rmi", target)


def test_publish_failures_are_one_message(cli, engine: Engine, registries, tmp_path) -> None:
    import uuid

    from tests.registries.harness import free_port
    from tests.test_rebase_pull_policy import push

    d = make_base(cli, engine, tmp_path)
    gone = f"127.0.0.1:{free_port()}"
    before = cli("ls", "--format", "json").json()
    result = _publish(cli, engine, gone, f"{gone}/t/x:1", d.base, "--env", "A=1",
                      "--pull-policy", "if-not-present")  # fmt: skip
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("packcache: error:") and gone in result.stderr
    assert result.stderr.count("\n") == 1
    assert cli("verify").exit_code == 0
    # Usage: a digest to push to, --no-cache, a --tag without --publish.
    host = registries.plain.host
    for args, needle in (
        ((), "needs a tag to push to"),
        (("--no-cache",), "--publish and --no-cache cannot be used together"),
    ):
        name = f"{host}/t/x@sha256:{'0' * 64}" if not args else f"{host}/t/x:1"
        bad = _publish(cli, engine, host, name, d.base, "--env", "A=1", *args)
        assert bad.exit_code == 2 and needle in bad.stderr, bad.stderr
        assert bad.stderr.count("\n") == 1
    assert cli("ls", "--format", "json").json() == before
    # A base builder that is nowhere; a buildpackage whose label names a layer it lacks, in
    # the registry (publish) and in the daemon.
    missing = f"{host}/t/no-builder-{uuid.uuid4().hex[:8]}:1"
    nowhere = _publish(cli, engine, host, f"{host}/t/x:1", missing, "--env", "A=1",
                       "--pull-policy", "always")  # fmt: skip
    assert nowhere.exit_code == 1 and nowhere.stderr.count("\n") == 1, nowhere.stderr
    assert f"builder {missing} is neither in its registry" in nowhere.stderr
    hollow = _hollow_package(engine, tmp_path)
    remote_hollow = f"{host}/t/hollow-{uuid.uuid4().hex[:8]}:1"
    push(engine, hollow, remote_hollow)
    for run in (
        lambda: _publish(cli, engine, host, f"{host}/t/x:1", d.base, "--buildpack",
                         f"docker://{remote_hollow}", "--pull-policy", "if-not-present"),
        lambda: cli("--host", engine.host, "create-builder", fx.unique("bad"), "--from-builder",
                    d.base, "--buildpack", f"docker://{hollow}"),
    ):  # fmt: skip
        failed = run()
        assert failed.exit_code == 1 and failed.stderr.count("\n") == 1, failed.stderr
        assert "names layer sha256:000" in failed.stderr
    assert cli("verify").exit_code == 0


def _hollow_package(engine: Engine, tmp_path: Path) -> str:
    """A buildpackage image whose layers label names a layer the image does not have."""
    from tests.engines import images

    bp = fx.make_buildpack("test/hollow")
    labels = {
        "io.buildpacks.buildpackage.metadata": json.dumps(
            {"id": bp.id, "version": bp.version, "stacks": [{"id": fx.STACK}]}
        ),
        "io.buildpacks.buildpack.layers": json.dumps(
            {bp.id: {bp.version: fx.layers_label_entry(bp, "sha256:" + "0" * 64)}}
        ),
    }
    ref = fx.unique("hollow")
    built = images.build_legacy_archive(
        tmp_path / "hollow.tar", [{"x.txt": b"x"}], {"config": {"Labels": labels}}, ref
    )
    engine.docker("load", "-i", str(built.path))
    return ref


def absent(engine: Engine, ref: str) -> bool:
    return engine.docker("image", "inspect", ref, check=False).returncode != 0


# -- the cache and the daemon ------------------------------------------------------------------


def test_recreate_unchanged_saves_nothing_and_sends_no_layer(
    cli, via_containerd: Engine, tmp_path
) -> None:
    engine = via_containerd
    d = make_base(cli, engine, tmp_path)
    name = fx.unique("again")
    args = ("--buildpack", f"docker://{d.extra.ref}", "--env", "A=1")
    first = derive(cli, engine, name, d.base, *args)
    again = derive(cli, engine, name, d.base, *args)
    assert again["imported"] == [] and again["saved_builder"] is False
    assert again["image_id"] == first["image_id"] == inspect(engine, name)["Id"]
    assert again["load"]["layers_sent"] == 0
    # Another, empty cache: the same builder, the base builder still not saved.
    other = derive(cli, engine, fx.unique("other"), d.base, *args, cache=tmp_path / "other")
    assert other["config_digest"] == first["config_digest"]
    assert other["saved_builder"] is False


def image_events(engine: Engine, since: str) -> list[tuple[str, str]]:
    """(action, image ID) of each image event the daemon logged since then."""
    listed = engine.docker(
        "events", "--since", since, "--until", daemon_time(engine), "--filter", "type=image",
        "--format", "{{json .}}",
    ).stdout.decode()  # fmt: skip
    events = [json.loads(line) for line in listed.splitlines() if line.strip()]
    return [(event["Action"], event["Actor"]["ID"]) for event in events]


def test_an_unchanged_builder_the_daemon_holds_is_named_not_loaded(
    cli, via_containerd: Engine, tmp_path
) -> None:
    engine = via_containerd
    d = make_base(cli, engine, tmp_path)
    name, kept = fx.unique("present"), fx.unique("kept")
    args = ("--buildpack", f"docker://{d.extra.ref}")
    first = derive(cli, engine, name, d.base, *args, "--env", "A=1")
    assert first["load"]["load_method"] != "present"
    since = daemon_time(engine)
    again = derive(cli, engine, name, d.base, *args, "--env", "A=1")
    assert again["load"]["load_method"] == "present"
    assert (again["load"]["layers_sent"], again["load"]["bytes_sent"]) == (0, 0)
    assert again["image_id"] == first["image_id"] == inspect(engine, name)["Id"]
    assert image_events(engine, since) == []  # not loaded, not even tagged: it had the name
    engine.docker("tag", name, kept)  # the first builder stays in the daemon whole

    # One input changed: a new config, loaded, the name moved to it.
    since = daemon_time(engine)
    changed = derive(cli, engine, name, d.base, *args, "--env", "A=2")
    assert changed["load"]["load_method"] != "present" and changed["load"]["layers_sent"] >= 1
    assert changed["config_digest"] != first["config_digest"]
    assert changed["image_id"] == inspect(engine, name)["Id"] != first["image_id"]
    assert changed["image_id"] in {image_id for _, image_id in image_events(engine, since)}
    assert cat(engine, name, "/platform/env/A") == b"2"

    # The first inputs again: that builder is named again, nothing loaded.
    since = daemon_time(engine)
    back = derive(cli, engine, name, d.base, *args, "--env", "A=1")
    assert back["load"]["load_method"] == "present" and back["load"]["bytes_sent"] == 0
    assert back["image_id"] == first["image_id"] == inspect(engine, name)["Id"]
    events = image_events(engine, since)
    assert ("tag", first["image_id"]) in events and "load" not in {a for a, _ in events}
    assert cat(engine, name, "/platform/env/A") == b"1"


@pytest.mark.parametrize("kind", GRAPHDRIVER_KINDS)
def test_a_graphdriver_is_asked_nothing_about_images_the_cache_never_saw(
    cli, kind: str, engine_pool: EnginePool, tmp_path
) -> None:
    # The builder's inspect proves the daemon holds its chain of layers: the images an empty
    # cache knows nothing of (the builder, its build image, buildpackages, other tests') are
    # not inspected one by one, and only the layers pack adds are sent. (A containerd store
    # names held blobs by the manifests the cache recorded, not by chains.)
    engine = engine_pool.get(kind)
    d = make_base(cli, engine, tmp_path)
    store = Store.open(tmp_path / "empty-cache")
    daemon = Daemon(engine.host)
    asked: list[str] = []
    real_inspect = daemon._inspect_request
    daemon._inspect_request = lambda ref, *rest: asked.append(ref) or real_inspect(ref, *rest)
    name = fx.unique("asked")
    request = DerivedBuilderRequest(d.base, env={"A": "1"})
    report = derive_builder(store, daemon, name, request, pull_policy="never")
    assert report.load is not None and report.load.load_method == "docker load"
    # The builder, the name and the image the builder would be (whether it is there already),
    # and the result checked after the load: nothing else.
    assert d.base in asked and set(asked) <= {d.base, name, report.config_digest}
    base_layers = inspect(engine, d.base)["RootFS"]["Layers"]
    added = report.diff_ids[len(base_layers) :]
    assert report.diff_ids[: len(base_layers)] == base_layers
    assert (report.load.layers_sent, report.load.layers_reused) == (len(added), len(base_layers))
    assert inspect(engine, name)["Id"] == report.image_id
    assert inspect(engine, name)["RootFS"]["Layers"] == report.diff_ids
    assert cat(engine, name, "/platform/env/A") == b"1"


def test_a_recreate_asks_the_daemon_about_each_image_once(
    cli, via_containerd: Engine, tmp_path
) -> None:
    # The name is inspected (with its manifests, where the API gives them) while the base
    # builder is read, and that answer is the one that finds the builder there whole: neither
    # image is asked about again, and nothing else is asked.
    engine = via_containerd
    d = make_base(cli, engine, tmp_path)
    store = Store.open(tmp_path / "own-cache")
    name = fx.unique("asked-once")
    request = DerivedBuilderRequest(d.base, env={"A": "1"})
    first = derive_builder(store, Daemon(engine.host), name, request, pull_policy="never")
    daemon = Daemon(engine.host)
    asked: list[str] = []
    real_inspect = daemon._inspect_request
    daemon._inspect_request = lambda ref, *rest: asked.append(ref) or real_inspect(ref, *rest)
    again = derive_builder(store, daemon, name, request, pull_policy="never")
    assert again.load is not None and again.load.load_method == "present"
    assert again.image_id == first.image_id == inspect(engine, name)["Id"]
    assert sorted(asked) == sorted([d.base, name])


def test_derived_again_with_another_env_only_the_env_layer_is_sent(
    cli, via_containerd: Engine, tmp_path
) -> None:
    # The layers under the env layer are the first derived builder's, which the cache recorded
    # loading it and the daemon still holds: they are not sent again.
    engine = via_containerd
    d = make_base(cli, engine, tmp_path)
    name, kept = fx.unique("env-again"), fx.unique("env-kept")
    args = ("--buildpack", f"docker://{d.extra.ref}")
    value = name  # an env layer no other test's image has (a content store shares blobs)
    first = derive(cli, engine, name, d.base, *args, "--env", "A=1")
    engine.docker("tag", name, kept)  # the first builder stays in the daemon, named
    again = derive(cli, engine, name, d.base, *args, "--env", f"A={value}")
    assert again["diff_ids"][:-1] == first["diff_ids"][:-1]
    assert again["diff_ids"][-1] != first["diff_ids"][-1]
    assert (again["load"]["layers_sent"], again["saved_builder"]) == (1, False)
    assert inspect(engine, name)["RootFS"]["Layers"] == again["diff_ids"]
    assert cat(engine, name, "/platform/env/A") == value.encode()


# Modules a builder made of what the daemon and the cache hold never needs: a full
# create-builder's phases, the publish path, registry pulls and `docker save` reads.
NOT_FOR_A_RECREATE = {
    "packcache.operations.create_builder",
    "packcache.operations.builder_publish",
    "packcache.operations.derived_publish",
    "packcache.operations.pulling",
    "packcache.operations.streamed_pull",
    "packcache.transports.registry_pull",
    "packcache.operations.importing",
    "packcache.archive.save_reader",
}


def test_a_recreate_imports_neither_the_full_create_the_publish_nor_the_pulls(
    cli, via_containerd: Engine, tmp_path
) -> None:
    engine = via_containerd
    d = make_base(cli, engine, tmp_path)
    args = ["--cache-dir", str(tmp_path / "own-cache"), "--host", engine.host, "create-builder",
            fx.unique("lean"), "--from-builder", d.base, "--env", "A=1", "--pull-policy", "never",
            "--format", "json"]  # fmt: skip
    imported(tmp_path, *args)  # made once
    modules = imported(tmp_path, *args)  # and again, the daemon holding it
    assert "packcache.operations.derived_builder" in modules  # the listing works
    assert loaded(modules, NOT_FOR_A_RECREATE) == set()
    # Nothing is loaded, so the daemon's containerd is not even connected to.
    assert loaded(modules, {"grpc"}) == set()


def test_no_cache_is_packs_method_and_gives_the_same_builder(
    cli, via_containerd: Engine, tmp_path
) -> None:
    engine = via_containerd
    d = make_base(cli, engine, tmp_path)
    before = cli("ls", "--format", "json").json()
    args = ("--buildpack", f"docker://{d.extra.ref}", "--env", "A=1")
    slow = derive(cli, engine, fx.unique("pack-way"), d.base, *args, "--no-cache")
    assert slow["saved_builder"] is True and slow["imported"] == [d.extra.ref]
    assert cli("ls", "--format", "json").json() == before
    fast = derive(cli, engine, fx.unique("fast-way"), d.base, *args)
    assert fast["config_digest"] == slow["config_digest"]
    assert fast["load"]["layers_sent"] < slow["load"]["layers_sent"]


def test_dry_run_changes_nothing(cli, engine: Engine, tmp_path) -> None:
    d = make_base(cli, engine, tmp_path)
    before = cli("ls", "--format", "json").json()
    name = fx.unique("dry")
    plan = derive(cli, engine, name, d.base, "--env", "A=1", "--dry-run")
    assert plan["image_id"] is None
    assert cli("ls", "--format", "json").json() == before
    assert engine.docker("image", "inspect", name, check=False).returncode != 0
    real = derive(cli, engine, name, d.base, "--env", "A=1")
    assert real["config_digest"] == plan["config_digest"]


# -- errors ------------------------------------------------------------------------------------


def _fails(cli, engine: Engine, code: int, needle: str, *args: str) -> None:
    before = cli("ls", "--format", "json").json()
    result = cli("--host", engine.host, "create-builder", fx.unique("bad"), *args)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert needle in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert cli("ls", "--format", "json").json() == before
    assert cli("verify").exit_code == 0


def test_bad_inputs_are_one_message(cli, engine: Engine, tmp_path) -> None:
    d = make_base(cli, engine, tmp_path)
    toml = str(d.inputs.toml)
    _fails(cli, engine, 2, "Missing option '--config' (or --from-builder BUILDER)")
    _fails(cli, engine, 2, "do not go together", "-c", toml, "--from-builder", "x")
    _fails(cli, engine, 2, "go with --config", "--from-builder", d.base, "--tag", "x:1")
    _fails(cli, engine, 2, "need --from-builder", "-c", toml, "--env", "A=1")
    _fails(cli, engine, 2, "expected NAME=VALUE", "--from-builder", d.base, "--env", "=1")
    _fails(cli, engine, 2, "expected ID", "--from-builder", d.base, "--order", "a,,b")
    _fails(cli, engine, 1, "'test/nobody'", "--from-builder", d.base, "--order", "test/nobody")
    _fails(
        cli, engine, 1, "is not in the Docker daemon", "--pull-policy", "never",
        "--from-builder", fx.unique("no-such-builder"), "--env", "A=1",
    )  # fmt: skip
    # An image that is not a builder (the build image): pack's message.
    _fails(
        cli, engine, 1, "missing label io.buildpacks.builder.metadata",
        "--from-builder", d.inputs.build_ref, "--env", "A=1",
    )  # fmt: skip
    _fails(
        cli, engine, 1, "no buildpack test/nobody is on builder",
        "--from-builder", d.base, "--buildpack", "urn:cnb:builder:test/nobody",
    )  # fmt: skip
    _fails(
        cli, engine, 2, "only be given once", "--from-builder", d.base,
        "--buildpack", "from=builder", "--buildpack", "from=builder",
    )  # fmt: skip
    _fails(
        cli, engine, 2, "from builder is not supported for extensions", "--from-builder",
        d.base, "--extension", "from=builder",
    )  # fmt: skip
    _fails(
        cli, engine, 1, "not valid for extensions", "--from-builder", d.base,
        "--extension", "urn:cnb:registry:test/x",
    )  # fmt: skip
    _fails(
        cli, engine, 1, "no extension test/nobody is on builder", "--from-builder", d.base,
        "--extension", "urn:cnb:builder:test/nobody",
    )  # fmt: skip
    _fails(cli, engine, 2, "need --from-builder", "-c", toml, "--extension", "x")


@pytest.mark.parametrize("kind", CONTAINERD_KINDS)
def test_through_containerd_a_whole_image_that_travels(
    cli, kind: str, engine_pool: EnginePool, registries, tmp_path, monkeypatch
) -> None:
    """On a containerd store: written into the content store, never saved or unpacked by
    packcache; then saved complete, pushed, pulled back and run on another engine, removed
    with no lease or ingest left."""
    engine = engine_pool.get(kind)
    monkeypatch.setenv("PACKCACHE_CONTAINERD_ADDRESS", str(engine.root / "c.sock"))
    monkeypatch.setenv("PACKCACHE_CONTAINERD_NAMESPACE", f"pc-{engine.root.name}")
    d = make_base(cli, engine, tmp_path)
    name = fx.unique("travelling")
    report = derive(
        cli, engine, name, d.base, "--buildpack", f"docker://{d.extra.ref}", "--env", "T=1",
        cache=tmp_path / "fresh-cache",
    )  # fmt: skip
    assert report["load"]["load_method"] == "containerd" and report["saved_builder"] is False
    assert inspect(engine, name)["Id"] == report["image_id"]
    saved_blobs_complete(engine, name, tmp_path)
    remote = f"{registries.plain.host}/{name.split('/')[-1]}"
    engine.docker("tag", name, remote)
    engine.docker("push", remote)
    engine.docker("rmi", remote)
    other = engine_pool.get("26.1-graphdriver")
    other.docker("pull", remote)
    extra_root = f"{d.extra.main.root}/lib/salt.txt"
    assert run_cat(other, remote, extra_root) == d.extra.main.files["lib/salt.txt"]
    assert run_cat(other, remote, "/platform/env/T") == b"1"
    other.docker("rmi", remote)
    engine.docker("rmi", name)
    assert our_leases_and_ingests(engine) == ([], [])


@pytest.mark.parametrize("kind", CONTAINERD_KINDS)
def test_from_a_registry_builder_on_a_containerd_store_blobs_come_through_the_mirror(
    cli, kind: str, engine_pool: EnginePool, registries, tmp_path, monkeypatch
) -> None:
    """The base builder and a buildpackage only in the registry: what the pull downloads is
    written into the content store as it arrives, so the load writes none of it (only pack's
    small layers, the config and the manifest); the result is listed, inspected and runs."""
    import uuid

    from tests.test_containerd_load import layer_sizes
    from tests.test_rebase_pull_policy import push

    engine = engine_pool.get(kind)
    monkeypatch.setenv("PACKCACHE_CONTAINERD_ADDRESS", str(engine.root / "c.sock"))
    monkeypatch.setenv("PACKCACHE_CONTAINERD_NAMESPACE", f"pc-{engine.root.name}")
    d = make_base(cli, engine, tmp_path)
    big = fx.make_buildpack("test/big", "2.0.0")
    big.files["lib/payload.bin"] = os.urandom(1 << 20)  # a blob that does not compress
    package = fx.load_buildpackage(engine, tmp_path, fx.unique("big-package"), big)
    host = registries.plain.host
    repo = f"{host}/t/mirrored-{uuid.uuid4().hex[:8]}"
    base, extra = f"{repo}/base:1", f"{repo}/big:1"
    push(engine, d.base, base)
    push(engine, package.ref, extra)
    engine.docker("rmi", d.base, package.ref)
    name = fx.unique("mirrored")
    report = derive(
        cli, engine, name, base, "--buildpack", f"docker://{extra}", "--env", "M=1",
        "--pull-policy", "always", "--insecure-registry", host, cache=tmp_path / "fresh-cache",
    )  # fmt: skip
    assert report["load"]["load_method"] == "containerd" and report["saved_builder"] is False
    pulled = {p["ref"]: p for p in report["pulled"]}
    assert pulled[base]["layers_downloaded"] >= 1 and pulled[extra]["layers_downloaded"] == 1
    assert absent(engine, extra)
    # Without the mirror the load writes the big layer's blob itself.
    assert report["load"]["bytes_sent"] < min(layer_sizes(extra).values())
    listed = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
    assert f"{name} {report['image_id'][7:19]}" in listed.decode().splitlines()
    assert inspect(engine, name)["Id"] == report["image_id"]
    assert run_cat(engine, name, f"{big.root}/lib/payload.bin") == big.files["lib/payload.bin"]
    assert run_cat(engine, name, "/platform/env/M") == b"1"
    saved_blobs_complete(engine, name, tmp_path)
    engine.docker("rmi", name, base)
    assert our_leases_and_ingests(engine) == ([], [])
