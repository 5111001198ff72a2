"""`packcache create-builder` with pack's other builder.toml tables and flags, against every
real engine: image extensions ([[extensions]], [[order-extensions]]), system buildpacks,
--flatten, a flattened buildpackage, --tag, --label, --target and [[targets]]. Expectations
come from the inputs and pack's code (internal/builder/builder.go), not from packcache."""

from __future__ import annotations

import json
import tomllib
import uuid
from pathlib import Path

from tests import builder_fixtures as fx
from tests.archives import build_oci_archive
from tests.engines import images
from tests.engines.harness import Engine
from tests.test_builder_engine import cat, inspect, listing

EXTENSIONS_LIFECYCLE = fx.LIFECYCLE_TOML.replace('"0.11", "0.12"]', '"0.11", "0.12", "0.13"]')


def make_extension(ext_id: str, version: str = "1.0.0") -> fx.Buildpack:
    salt = uuid.uuid4().hex
    toml = f'api = "0.9"\n\n[extension]\n  id = "{ext_id}"\n  version = "{version}"\n'
    toml += f'  name = "Ext {ext_id}"\n'
    files = {
        "extension.toml": toml.encode(),
        "bin/detect": b"#!/bin/sh\nexit 0\n",
        "bin/generate": f"#!/bin/sh\necho {salt}\n".encode(),
    }
    return fx.Buildpack(ext_id, version, files, {"bin/detect", "bin/generate"}, api="0.9")


def extension_root(ext: fx.Buildpack) -> str:
    return f"/cnb/extensions/{ext.escaped_id}/{ext.version}"


def load_extension_package(engine: Engine, tmp_path: Path, ref: str, ext: fx.Buildpack) -> str:
    """An extension package image (pack extension package): its layer under /cnb/extensions,
    labelled io.buildpacks.extension.layers. Returns the layer's diffID."""
    layer = {
        f"cnb/extensions/{ext.escaped_id}/{ext.version}/{rel}": images.File(
            data, 0o755 if rel in ext.executable else 0o644
        )
        for rel, data in ext.files.items()
    }
    diff_id = images.sha256_digest(images.layer_tar(layer))
    labels = {
        "io.buildpacks.buildpackage.metadata": json.dumps({"id": ext.id, "version": ext.version}),
        "io.buildpacks.extension.layers": json.dumps(
            {ext.id: {ext.version: {"api": ext.api, "layerDiffID": diff_id}}}
        ),
    }
    built = images.build_legacy_archive(
        tmp_path / f"{uuid.uuid4().hex}.tar", [layer], {"config": {"Labels": labels}}, ref
    )
    engine.docker("load", "-i", str(built.path))
    return diff_id


def load_flattened_package(
    engine: Engine, tmp_path: Path, ref: str, buildpacks: list[fx.Buildpack]
) -> str:
    """A buildpackage as `pack buildpack package --flatten` makes it: every buildpack in one
    layer, each label entry naming that layer. Returns the layer's diffID."""
    layer: dict = {}
    for bp in buildpacks:
        layer.update(fx.package_layer(bp))
    diff_id = images.sha256_digest(images.layer_tar(layer))
    layers_label: dict = {}
    for bp in buildpacks:
        layers_label.setdefault(bp.id, {})[bp.version] = fx.layers_label_entry(bp, diff_id)
    main = buildpacks[0]
    labels = {
        "io.buildpacks.buildpackage.metadata": json.dumps({"id": main.id, "version": main.version}),
        "io.buildpacks.buildpack.layers": json.dumps(layers_label),
    }
    built = images.build_legacy_archive(
        tmp_path / f"{uuid.uuid4().hex}.tar", [layer], {"config": {"Labels": labels}}, ref
    )
    engine.docker("load", "-i", str(built.path))
    return diff_id


def write_inputs(engine: Engine, tmp_path: Path, lifecycle_toml: str = EXTENSIONS_LIFECYCLE):
    build_ref, run_ref = fx.unique("build"), fx.unique("run")
    fx.load_build_image(engine, tmp_path, build_ref)
    fx.load_run_image(engine, tmp_path, run_ref)
    fx.write_lifecycle(tmp_path / "lifecycle.tgz", toml=lifecycle_toml)
    bps = {name: fx.make_buildpack(f"test/{name}") for name in ("pre", "post", "flat-a", "flat-b")}
    for name, bp in bps.items():
        fx.write_directory(bp, tmp_path / name)
    packed = [fx.make_buildpack("test/packed-one"), fx.make_buildpack("test/packed-two", "2.0.0")]
    packed_ref = fx.unique("flattened-package")
    packed_diff_id = load_flattened_package(engine, tmp_path, packed_ref, packed)
    ext_dir, ext_image = make_extension("test/ext-dir"), make_extension("test/ext-image", "2.0.0")
    fx.write_directory(ext_dir, tmp_path / "ext-dir")
    ext_tgz = make_extension("test/ext-tgz", "3.0.0")
    fx.write_tgz(ext_tgz, tmp_path / "ext.tgz")
    ext_ref = fx.unique("ext-package")
    ext_diff_id = load_extension_package(engine, tmp_path, ext_ref, ext_image)
    toml = tmp_path / "builder.toml"
    toml.write_text(
        "".join(f'[[buildpacks]]\n  uri = "{name}"\n\n' for name in bps)
        + f'[[buildpacks]]\n  uri = "docker://{packed_ref}"\n\n'
        + '[[extensions]]\n  uri = "ext-dir"\n\n'
        + f'[[extensions]]\n  uri = "{ext_ref}"\n  id = "test/ext-image"\n\n'
        + '[[extensions]]\n  uri = "ext.tgz"\n  version = "3.0.0"\n\n'
        + '[[order]]\n  [[order.group]]\n    id = "test/flat-a"\n'
        + '  [[order.group]]\n    id = "test/packed-two"\n    optional = true\n\n'
        + '[[order-extensions]]\n  [[order-extensions.group]]\n    id = "test/ext-dir"\n'
        + "    optional = true\n"
        + '  [[order-extensions.group]]\n    id = "test/ext-image"\n    version = "2.0.0"\n\n'
        + '[system]\n  [system.pre]\n    [[system.pre.buildpacks]]\n      id = "test/pre"\n'
        + '  [system.post]\n    [[system.post.buildpacks]]\n      id = "test/post"\n'
        + "      optional = true\n\n"
        + '[[targets]]\n  os = "windows"\n\n[[targets]]\n  os = "linux"\n'
        + f'  arch = "{images.docker_arch()}"\n\n'
        + f'[build]\n  image = "{build_ref}"\n\n[[run.images]]\n  image = "{run_ref}"\n\n'
        + f'[stack]\n  id = "{fx.STACK}"\n\n[lifecycle]\n  uri = "lifecycle.tgz"\n'
    )
    return toml, bps, packed, packed_diff_id, (ext_dir, ext_image, ext_tgz), ext_diff_id


def test_extensions_system_flatten_and_tags(cli, engine: Engine, tmp_path) -> None:
    toml, bps, packed, packed_diff_id, exts, ext_diff_id = write_inputs(engine, tmp_path)
    name, other = fx.unique("builder"), fx.unique("other-tag")
    flat = f"test/flat-a@{bps['flat-a'].version},test/flat-b@{bps['flat-b'].version}"
    result = cli(
        "--host", engine.host, "create-builder", name, "--config", str(toml),
        "--tag", other, "--label", "org.example=yes", "--flatten", flat,
        "--append-image-name-suffix",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "--append-image-name-suffix will be ignored" in result.stderr
    builder = inspect(engine, name)
    assert inspect(engine, other)["Id"] == builder["Id"]  # --tag: the same image
    assert f"tagged      {other}" in result.stdout
    labels = builder["Config"]["Labels"]
    layers = builder["RootFS"]["Layers"]
    assert labels["org.example"] == "yes"

    bp_layers = json.loads(labels["io.buildpacks.buildpack.layers"])
    flat_ids = {bp_layers[f"test/{n}"]["1.0.0"]["layerDiffID"] for n in ("flat-a", "flat-b")}
    assert len(flat_ids) == 1 and flat_ids <= set(layers)  # --flatten: one layer for both
    packed_ids = [bp_layers[bp.id][bp.version]["layerDiffID"] for bp in packed]
    # the flattened package's layer is split: a layer per buildpack, the shared one not used
    assert len(set(packed_ids)) == 2 and set(packed_ids) <= set(layers)
    assert packed_diff_id not in layers
    ext_layers = json.loads(labels["io.buildpacks.extension.layers"])
    ext_dir, ext_image, ext_tgz = exts
    assert ext_layers[ext_image.id][ext_image.version] == {"api": "0.9", "layerDiffID": ext_diff_id}
    assert ext_layers[ext_dir.id][ext_dir.version]["layerDiffID"] in layers
    # the directory and the .tgz give the same layer for the same files (pack's toDistTar)
    assert ext_layers[ext_tgz.id][ext_tgz.version]["layerDiffID"] in layers
    # layer order (Builder.Save): flattened buildpacks, exploded ones, then extensions
    position = {d: i for i, d in enumerate(layers)}
    assert position[flat_ids.pop()] < min(position[d] for d in packed_ids)
    assert max(position[d] for d in packed_ids) < position[ext_diff_id]

    metadata = json.loads(labels["io.buildpacks.builder.metadata"])
    assert [e["id"] for e in metadata["extensions"]] == [e.id for e in exts]
    assert json.loads(labels["io.buildpacks.buildpack.order-extensions"]) == [
        {"group": [{"id": "test/ext-dir"}, {"id": "test/ext-image", "version": "2.0.0"}]}
    ]  # pack drops `optional` from extension refs
    assert json.loads(labels["io.buildpacks.buildpack.system"]) == {
        "pre": {"buildpacks": [{"id": "test/pre"}]},
        "post": {"buildpacks": [{"id": "test/post", "optional": True}]},
    }

    order = tomllib.loads(cat(engine, name, "/cnb/order.toml").decode())
    assert order["order-extensions"] == [
        {"group": [{"id": e.id, "version": e.version} for e in exts[:2]]}
    ]
    assert order["order"][0]["group"][1] == {
        "id": "test/packed-two", "version": "2.0.0", "optional": True
    }  # fmt: skip
    system = tomllib.loads(cat(engine, name, "/cnb/system.toml").decode())
    assert system == {
        "system": {
            "pre": {"buildpacks": [{"id": "test/pre", "version": "1.0.0"}]},
            "post": {"buildpacks": [{"id": "test/post", "version": "1.0.0", "optional": True}]},
        }
    }
    found = listing(engine, name, "/cnb/extensions", "/cnb/buildpacks")
    for ext in exts:
        assert found[f"{extension_root(ext)}/bin/generate"][1] == 0o755
        generate = cat(engine, name, f"{extension_root(ext)}/bin/generate")
        assert generate == ext.files["bin/generate"]
    for bp in [*packed, *bps.values()]:
        assert cat(engine, name, f"{bp.root}/lib/salt.txt") == bp.files["lib/salt.txt"]


def test_flattening_buildpacks_of_two_buildpackage_images(cli, engine: Engine, tmp_path) -> None:
    """Each buildpackage layer carries the /cnb and /cnb/buildpacks directories: the flattened
    layer names them once, so every engine takes it (a graphdriver refuses a path twice)."""
    build_ref, run_ref = fx.unique("build"), fx.unique("run")
    fx.load_build_image(engine, tmp_path, build_ref)
    fx.load_run_image(engine, tmp_path, run_ref)
    fx.write_lifecycle(tmp_path / "lifecycle.tgz")
    one, two = fx.make_buildpack("test/pkg-one"), fx.make_buildpack("test/pkg-two")
    refs = [fx.unique("package") for _ in (one, two)]
    for ref, bp in zip(refs, (one, two), strict=True):
        fx.load_buildpackage(engine, tmp_path, ref, bp)
    toml = tmp_path / "builder.toml"
    toml.write_text(
        "".join(f'[[buildpacks]]\n  uri = "docker://{ref}"\n\n' for ref in refs)
        + f'[[order]]\n  [[order.group]]\n    id = "{one.id}"\n\n'
        + f'[build]\n  image = "{build_ref}"\n\n[[run.images]]\n  image = "{run_ref}"\n\n'
        + f'[stack]\n  id = "{fx.STACK}"\n\n[lifecycle]\n  uri = "lifecycle.tgz"\n'
    )
    name = fx.unique("builder")
    flat = f"{one.id}@{one.version},{two.id}@{two.version}"
    result = cli(
        "--host", engine.host, "create-builder", name, "--config", str(toml),
        "--flatten", flat, "--pull-policy", "never",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    labels = inspect(engine, name)["Config"]["Labels"]
    bp_layers = json.loads(labels["io.buildpacks.buildpack.layers"])
    flat_ids = {bp_layers[bp.id][bp.version]["layerDiffID"] for bp in (one, two)}
    assert len(flat_ids) == 1 and flat_ids <= set(inspect(engine, name)["RootFS"]["Layers"])
    for bp in (one, two):
        root = f"/cnb/buildpacks/{bp.escaped_id}/{bp.version}"
        assert cat(engine, name, f"{root}/buildpack.toml") == bp.files["buildpack.toml"]


def test_the_same_builder_again_is_the_same_image(cli, engine: Engine, tmp_path) -> None:
    """Flattened and split layers are cached by what they are made from: a second run writes
    nothing and gives the same image; pack's method (--no-cache, a throwaway store) gives the
    same config, and so does a dry run on the warm cache; on an empty cache a dry run says
    what it cannot tell."""
    toml, bps, *_ = write_inputs(engine, tmp_path)
    flat = f"test/flat-a@{bps['flat-a'].version},test/flat-b@{bps['flat-b'].version}"

    def run(*args: str, cache: Path | None = None) -> dict:
        result = cli(
            "--host", engine.host, "create-builder", fx.unique("again"), "--config", str(toml),
            "--flatten", flat, "--format", "json", *args, cache=cache,
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        return result.json()

    cold = run("--dry-run", "--flatten", "test/pre@1.0.0", cache=tmp_path / "empty")
    assert any("dry run cannot tell" in warning for warning in cold["warnings"])
    first, second = run(), run()
    assert second["image_id"] == first["image_id"]
    assert second["layers_written"] == 0
    assert run("--dry-run")["config_digest"] == first["config_digest"]
    # the containerd ID also names how blobs were stored: the config is what must be equal
    assert run("--no-cache")["config_digest"] == first["config_digest"]


def test_package_files_give_the_same_builder_as_their_images(cli, engine: Engine, tmp_path) -> None:
    """An extension package and a flattened buildpackage as `.cnb` files (OCI layout): the
    same builder as from their images, the flattened one split the same way."""
    toml, _, packed, _, exts, _ = write_inputs(engine, tmp_path)
    text = toml.read_text()
    refs = {}
    for kind in ("ext-package", "flattened-package"):
        refs[kind] = next(line.split('"')[1] for line in text.splitlines() if kind in line)
    ext = exts[1]
    ext_layer = {
        f"cnb/extensions/{ext.escaped_id}/{ext.version}/{rel}": images.File(
            data, 0o755 if rel in ext.executable else 0o644
        )
        for rel, data in ext.files.items()
    }
    packed_layer: dict = {}
    for bp in packed:
        packed_layer.update(fx.package_layer(bp))
    from_file = text
    for kind, layer in (("ext-package", ext_layer), ("flattened-package", packed_layer)):
        labels = inspect(engine, refs[kind].removeprefix("docker://"))["Config"]["Labels"]
        path = tmp_path / f"{kind}.cnb"
        build_oci_archive(path, [layer], config_extra={"config": {"Labels": labels}})
        from_file = from_file.replace(f'uri = "{refs[kind]}"', f'uri = "{path.name}"')
    (tmp_path / "from-file.toml").write_text(from_file)
    reports = []
    for path in (tmp_path / "from-file.toml", toml):
        result = cli(
            "--host", engine.host, "create-builder", fx.unique("from-file"), "--config", str(path),
            "--format", "json",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        reports.append(result.json())
    kinds = {(m["id"], m["kind"], m["module"]) for m in reports[0]["buildpacks"]}
    assert (ext.id, "buildpackage-file", "extension") in kinds
    assert {(bp.id, "buildpackage-file", "buildpack") for bp in packed} <= kinds
    assert reports[0]["imported"] == []  # every package layer came from a file
    assert reports[1]["imported"] == []  # the images' layers are the ones the files gave
    assert reports[1]["config_digest"] == reports[0]["config_digest"]


def _fails(cli, engine: Engine, toml: Path, *args: str) -> str:
    result = cli(
        "--host", engine.host, "create-builder", fx.unique("bad"), "--config", str(toml), *args
    )
    assert result.exit_code != 0
    assert result.stderr.startswith("packcache: error: ") and result.stderr.count("\n") == 1
    return result.stderr


def test_what_pack_refuses_is_refused(cli, engine: Engine, tmp_path) -> None:
    toml, *_ = write_inputs(engine, tmp_path)
    assert "only one target" in _fails(cli, engine, toml, "--target", "linux", "-t", "windows")
    assert "could not find a target that matches daemon os=linux" in _fails(
        cli, engine, toml, "--target", "windows/amd64"
    )
    assert "unknown target" in _fails(cli, engine, toml, "--target", "linux/sparc")
    assert "invalid format" in _fails(cli, engine, toml, "--flatten", "test/flat-a")
    # extensions need a lifecycle with Platform API 0.13 (older: experimental in pack)
    fx.write_lifecycle(tmp_path / "lifecycle.tgz")
    assert "older than 0.13" in _fails(cli, engine, toml)
    text = toml.read_text()
    toml.write_text(text.replace('      id = "test/pre"', '      id = "test/nobody"'))
    fx.write_lifecycle(tmp_path / "lifecycle.tgz", toml=EXTENSIONS_LIFECYCLE)
    message = _fails(cli, engine, toml)
    line = text.splitlines().index("    [[system.pre.buildpacks]]") + 1
    assert f"builder.toml:{line}: system.pre references buildpack 'test/nobody'" in message
