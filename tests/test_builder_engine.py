"""`packcache create-builder` against every real engine: the builder's labels and files match
what the inputs say they must be; warm and cold runs give the same image; a changed buildpack
replaces only its layer; every input error is one clear message and leaves the cache intact."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import builder_fixtures as fx
from tests.archives import build_oci_archive
from tests.engines.harness import Engine


@dataclass
class Inputs:
    toml: Path
    build_ref: str
    build: dict
    run_ref: str
    packages: list[fx.Buildpackage]
    directory: fx.Buildpack
    directory_path: Path
    archive: fx.Buildpack
    lifecycle: dict[str, fx.ExpectedFile]
    order: list[list[tuple[str, str]]]

    @property
    def buildpacks(self) -> list[fx.Buildpack]:
        return [bp for p in self.packages for bp in p.buildpacks] + [self.directory, self.archive]


def make_inputs(engine: Engine, tmp_path: Path, build_text: bytes = b"build image\n") -> Inputs:
    build_ref, run_ref = fx.unique("build"), fx.unique("run")
    build = fx.load_build_image(engine, tmp_path, build_ref, text=build_text)
    fx.load_run_image(engine, tmp_path, run_ref)
    simple = fx.make_buildpack("test/simple")
    dep_one, dep_two = fx.make_buildpack("test/dep-one"), fx.make_buildpack("test/dep-two", "2.0.0")
    meta = fx.make_buildpack(
        "test/meta", "3.0.0", order=[[("test/dep-one", "1.0.0"), ("test/dep-two", "2.0.0")]]
    )
    packages = [
        fx.load_buildpackage(engine, tmp_path, fx.unique("simple-package"), simple),
        fx.load_buildpackage(engine, tmp_path, fx.unique("meta-package"), meta, [dep_one, dep_two]),
    ]
    directory = fx.make_buildpack("test/from-dir", "0.1.0")
    directory_path = fx.write_directory(directory, tmp_path / "bp-dir")
    archive = fx.make_buildpack("test/from-tgz", "0.2.0")
    fx.write_tgz(archive, tmp_path / "bp.tgz")
    lifecycle = fx.write_lifecycle(tmp_path / "lifecycle.tgz")
    order = [
        [("test/meta", "3.0.0"), ("test/from-dir", "")],
        [("test/simple", "1.0.0"), ("test/from-tgz", "0.2.0")],
    ]
    groups = ""
    for group in order:
        groups += "\n[[order]]\n"
        for bp_id, version in group:
            groups += f'  [[order.group]]\n    id = "{bp_id}"\n'
            groups += f'    version = "{version}"\n' if version else "    optional = true\n"
    toml = tmp_path / "builder.toml"
    toml.write_text(
        'description = "A test builder"\n\n'
        f'[[buildpacks]]\n  uri = "docker://{packages[0].ref}"\n\n'
        f'[[buildpacks]]\n  uri = "{packages[1].ref}"\n  id = "test/meta"\n\n'
        '[[buildpacks]]\n  uri = "bp-dir"\n\n'
        f'[[buildpacks]]\n  uri = "file://{tmp_path}/bp.tgz"\n  version = "0.2.0"\n'
        f"{groups}\n"
        f'[build]\n  image = "{build_ref}"\n'
        '  [[build.env]]\n    name = "BP_FOO"\n    value = "bar"\n'
        '  [[build.env]]\n    name = "PATH_EXTRA"\n    value = "/x"\n'
        '    suffix = "append"\n    delim = ":"\n\n'
        f'[[run.images]]\n  image = "{run_ref}"\n  mirrors = ["mirror.test/run:1"]\n\n'
        f'[stack]\n  id = "{fx.STACK}"\n\n'
        '[lifecycle]\n  uri = "lifecycle.tgz"\n'
    )
    return Inputs(
        toml,
        build_ref,
        build,
        run_ref,
        packages,
        directory,
        directory_path,
        archive,
        lifecycle,
        order,
    )


def create(cli, engine: Engine, name: str, toml: Path, *args: str, cache=None):
    result = cli(
        "--host", engine.host, "create-builder", name, "--config", str(toml),
        "--format", "json", *args, cache=cache,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return result.json()


def inspect(engine: Engine, ref: str) -> dict:
    return json.loads(engine.docker("image", "inspect", ref).stdout)[0]


def _mode(text: str) -> int:
    bits = 0
    for char in text[1:10]:
        bits = (bits << 1) | (char not in "-ST")
    return bits


def listing(engine: Engine, image: str, *paths: str) -> dict[str, tuple[str, int, int, int, str]]:
    """path -> (type, mode, uid, gid, symlink target) from `ls -lnR` inside the image."""
    out = engine.docker("run", "--rm", "--network", "none", image, "ls", "-lnR", *paths).stdout
    found: dict[str, tuple[str, int, int, int, str]] = {}
    current = ""
    for line in out.decode().splitlines():
        if line.endswith(":") and line.startswith("/"):
            current = line[:-1]
            continue
        fields = line.split()
        if len(fields) < 9 or fields[0] == "total":
            continue
        name, _, target = " ".join(fields[8:]).partition(" -> ")
        found[f"{current}/{name}"] = (
            fields[0][0],
            _mode(fields[0]),
            int(fields[2]),
            int(fields[3]),
            target,
        )
    return found


def checksums(engine: Engine, image: str, paths: list[str]) -> dict[str, str]:
    out = engine.docker("run", "--rm", "--network", "none", image, "sha256sum", *paths).stdout
    return {line.split()[1]: line.split()[0] for line in out.decode().splitlines()}


def cat(engine: Engine, image: str, path: str) -> bytes:
    """A file's bytes from a container. Seen once on 26.1-containerd: a run of a short-lived
    container exited 0 with no output at all, so an empty answer is asked once more (no file
    read here is empty)."""
    for _ in range(2):
        out = engine.docker("run", "--rm", "--network", "none", image, "cat", path).stdout
        if out:
            break
    return out


# -- the builder is what the inputs say -----------------------------------------------------


def test_builder_labels_and_files_match_the_inputs(cli, engine: Engine, tmp_path) -> None:
    inputs = make_inputs(engine, tmp_path)
    name = fx.unique("builder")
    report = create(cli, engine, name, inputs.toml)
    builder = inspect(engine, name)
    labels = builder["Config"]["Labels"]
    layers = builder["RootFS"]["Layers"]
    build_layers = inputs.build["RootFS"]["Layers"]

    # Layers: the build image's first, then new ones; working dir and env as pack sets them.
    assert layers[: len(build_layers)] == build_layers
    assert report["diff_ids"] == layers
    assert builder["Config"]["WorkingDir"] == "/layers"
    assert builder["Config"]["Env"] == inputs.build["Config"]["Env"]
    assert labels["io.buildpacks.stack.id"] == fx.STACK

    # io.buildpacks.buildpack.layers: every buildpack; buildpackage ones keep their diffIDs.
    layer_label = json.loads(labels["io.buildpacks.buildpack.layers"])
    assert {(i, v) for i in layer_label for v in layer_label[i]} == {
        (bp.id, bp.version) for bp in inputs.buildpacks
    }
    for package in inputs.packages:
        for bp in package.buildpacks:
            expected = fx.layers_label_entry(bp, package.diff_ids[f"{bp.id}@{bp.version}"])
            assert layer_label[bp.id][bp.version] == expected
    for bp in (inputs.directory, inputs.archive):
        entry = layer_label[bp.id][bp.version]
        assert entry["api"] == "0.8" and entry["stacks"] == [{"id": fx.STACK}]
        assert entry["layerDiffID"] in layers[len(build_layers) :]
    # One layer per buildpack, in pack's order (sorted by id@version), after dirs + lifecycle.
    by_name = sorted(inputs.buildpacks, key=lambda bp: f"{bp.id}@{bp.version}")
    start = len(build_layers) + 2
    assert layers[start : start + len(by_name)] == [
        layer_label[bp.id][bp.version]["layerDiffID"] for bp in by_name
    ]
    # then order, stack, run, build-config env and the (empty) env layer
    assert len(layers) == start + len(by_name) + 5
    assert layers[-1] == "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"

    # io.buildpacks.builder.metadata
    metadata = json.loads(labels["io.buildpacks.builder.metadata"])
    assert metadata["description"] == "A test builder"
    main_of = {p.ref: p.main for p in inputs.packages}
    assert [b["id"] for b in metadata["buildpacks"]] == [
        main_of[inputs.packages[0].ref].id,
        "test/meta", "test/dep-one", "test/dep-two", "test/from-dir", "test/from-tgz",
    ]  # fmt: skip
    assert metadata["buildpacks"][-2] == {
        "id": "test/from-dir", "name": "Test test/from-dir", "version": "0.1.0",
        "homepage": "https://example.test/test/from-dir",
    }  # fmt: skip
    assert metadata["stack"] == {
        "runImage": {"image": inputs.run_ref, "mirrors": ["mirror.test/run:1"]}
    }
    assert metadata["images"] == [{"image": inputs.run_ref, "mirrors": ["mirror.test/run:1"]}]
    assert metadata["lifecycle"] == {
        "version": fx.LIFECYCLE_VERSION,
        "api": {"buildpack": "0.7", "platform": "0.7"},
        "apis": {
            "buildpack": {"deprecated": [], "supported": ["0.7", "0.8", "0.9", "0.10"]},
            "platform": {
                "deprecated": [],
                "supported": ["0.7", "0.8", "0.9", "0.10", "0.11", "0.12"],
            },
        },
    }
    assert metadata["extensions"] is None
    # io.buildpacks.buildpack.order: the order as builder.toml wrote it
    assert json.loads(labels["io.buildpacks.buildpack.order"]) == [
        {"group": [{"id": i, "version": v} if v else {"id": i, "optional": True} for i, v in g]}
        for g in inputs.order
    ]
    assert labels["io.buildpacks.buildpack.order-extensions"] == "null"
    assert labels["io.buildpacks.extension.layers"] == "{}"

    # Files, from inside a container of the builder.
    found = listing(engine, name, "/cnb", "/layers", "/workspace", "/platform")
    expected: dict[str, fx.ExpectedFile] = {}
    for bp in inputs.buildpacks:
        expected.update({f.path: f for f in bp.expected()})
    for path in found:
        if path.startswith("/cnb/buildpacks/"):
            assert path in expected, f"unexpected {path}"
    regular = []
    for path, want in expected.items():
        kind, mode, uid, gid, _ = found[path]
        assert (mode, uid, gid) == (want.mode, 0, 0), path
        if want.data is not None:
            regular.append(path)
    sums = checksums(engine, name, regular)
    for path in regular:
        assert sums[path] == hashlib.sha256(expected[path].data).hexdigest(), path
    for binary, want in inputs.lifecycle.items():
        kind, mode, uid, gid, target = found[want.path]
        assert (kind == "l") == (want.link is not None) and target == (want.link or ""), binary
    assert cat(engine, name, "/lifecycle/lifecycle") == cat(
        engine, name, "/cnb/lifecycle/lifecycle"
    )
    dirs = engine.docker(
        "run", "--rm", "--network", "none", name, "ls", "-lnd", "/layers", "/workspace", "/cnb"
    ).stdout.decode()  # fmt: skip
    owners = {line.split()[-1]: (line.split()[0], line.split()[2:4]) for line in dirs.splitlines()}
    assert owners["/layers"] == ("drwxr-xr-x", [str(fx.CNB_UID), str(fx.CNB_GID)])
    assert owners["/workspace"] == ("drwxr-xr-x", [str(fx.CNB_UID), str(fx.CNB_GID)])
    assert owners["/cnb"] == ("drwxr-xr-x", ["0", "0"])
    order = tomllib.loads(cat(engine, name, "/cnb/order.toml").decode())
    versions = {bp.id: bp.version for bp in inputs.buildpacks}
    assert order == {
        "order": [
            {
                "group": [
                    {"id": i, "version": v or versions[i]} | ({} if v else {"optional": True})
                    for i, v in g
                ]
            }
            for g in inputs.order
        ]
    }
    stack_toml = tomllib.loads(cat(engine, name, "/cnb/stack.toml").decode())
    assert stack_toml == {"run-image": {"image": inputs.run_ref, "mirrors": ["mirror.test/run:1"]}}
    run_toml = tomllib.loads(cat(engine, name, "/cnb/run.toml").decode())
    assert run_toml == {"images": [{"image": inputs.run_ref, "mirrors": ["mirror.test/run:1"]}]}
    assert cat(engine, name, "/cnb/build-config/env/BP_FOO") == b"bar"
    assert cat(engine, name, "/cnb/build-config/env/PATH_EXTRA.append") == b"/x"
    assert cat(engine, name, "/cnb/build-config/env/PATH_EXTRA.delim") == b":"


def test_cold_and_warm_runs_give_the_same_image(cli, engine: Engine, tmp_path) -> None:
    inputs = make_inputs(engine, tmp_path)
    first, second = fx.unique("cold"), fx.unique("warm")
    cold = create(cli, engine, first, inputs.toml)
    assert sorted(cold["imported"]) == sorted(p.ref for p in inputs.packages)
    engine.docker("rmi", first)
    warm = create(cli, engine, second, inputs.toml)
    assert warm["imported"] == []  # nothing read from the daemon with docker save
    assert all(bp["reused"] for bp in warm["buildpacks"])
    assert warm["layers_written"] == 0
    assert warm["image_id"] == cold["image_id"] == inspect(engine, second)["Id"]
    # Another, empty cache (cold again): the same image still.
    other = create(cli, engine, first, inputs.toml, cache=tmp_path / "other-cache")
    assert other["image_id"] == cold["image_id"]
    # Recreating with the builder in the daemon sends no layer bytes.
    again = create(cli, engine, second, inputs.toml)
    assert again["load"]["layers_sent"] == 0
    assert again["load"]["load_method"] == "present"  # the daemon held it: only named


def test_changed_buildpack_replaces_only_its_layer(cli, engine: Engine, tmp_path) -> None:
    inputs = make_inputs(engine, tmp_path)
    name = fx.unique("changing")
    before = create(cli, engine, name, inputs.toml)
    (inputs.directory_path / "lib" / "salt.txt").write_bytes(b"changed contents\n")
    after = create(cli, engine, name, inputs.toml)
    changed = [
        i
        for i, (a, b) in enumerate(zip(before["diff_ids"], after["diff_ids"], strict=True))
        if a != b
    ]
    assert len(changed) == 1
    layer_label = json.loads(
        inspect(engine, name)["Config"]["Labels"]["io.buildpacks.buildpack.layers"]
    )
    assert after["diff_ids"][changed[0]] == layer_label["test/from-dir"]["0.1.0"]["layerDiffID"]
    reused = {bp["id"]: bp["reused"] for bp in after["buildpacks"]}
    assert reused == {bp.id: bp.id != "test/from-dir" for bp in inputs.buildpacks}
    assert after["imported"] == []
    # The daemon was sent the changed layer and, on a graphdriver, the layers stacked above it.
    expected_sent = 1 if engine.containerd_store else len(after["diff_ids"]) - changed[0]
    assert after["load"]["layers_sent"] == expected_sent
    assert cat(engine, name, f"{inputs.directory.root}/lib/salt.txt") == b"changed contents\n"


def test_no_cache_builds_the_same_image_and_leaves_the_cache_alone(
    cli, engine: Engine, tmp_path
) -> None:
    inputs = make_inputs(engine, tmp_path)
    name = fx.unique("pack-method")
    slow = create(cli, engine, name, inputs.toml, "--no-cache")
    assert sorted(slow["imported"]) == sorted(p.ref for p in inputs.packages)
    # pack's method: every builder layer sent; the build image's as placeholders on a
    # graphdriver, sent too on a containerd store.
    build_layers = len(inputs.build["RootFS"]["Layers"])
    reused = 0 if engine.containerd_store else build_layers
    assert slow["load"]["layers_sent"] == len(slow["diff_ids"]) - reused
    assert slow["load"]["layers_reused"] == reused
    assert cli("ls", "--format", "json").json() == []
    fast = create(cli, engine, fx.unique("cached"), inputs.toml)
    if not engine.containerd_store:  # the containerd ID also names how blobs were stored
        assert fast["image_id"] == slow["image_id"]
    assert fast["config_digest"] == slow["config_digest"]


def test_a_buildpackage_file_gives_the_same_builder_as_its_image(
    cli, engine: Engine, tmp_path
) -> None:
    inputs = make_inputs(engine, tmp_path)
    package = inputs.packages[0]
    labels = inspect(engine, package.ref)["Config"]["Labels"]
    layers = [fx.package_layer(bp) for bp in package.buildpacks]
    build_oci_archive(tmp_path / "simple.cnb", layers, config_extra={"config": {"Labels": labels}})
    from_file = tmp_path / "from-file.toml"
    text = inputs.toml.read_text()
    assert f'uri = "docker://{package.ref}"' in text
    from_file.write_text(text.replace(f'uri = "docker://{package.ref}"', 'uri = "simple.cnb"'))

    first = create(cli, engine, fx.unique("from-file"), from_file)
    kinds = {(b["id"], b["kind"]) for b in first["buildpacks"]}
    assert ("test/simple", "buildpackage-file") in kinds
    assert package.ref not in first["imported"]  # its layer came from the file
    # The same buildpack from its image: the layer the file gave is in the cache, same builder.
    second = create(cli, engine, fx.unique("from-image"), inputs.toml)
    assert second["imported"] == []
    assert second["config_digest"] == first["config_digest"]


def test_dry_run_changes_nothing(cli, engine: Engine, tmp_path) -> None:
    inputs = make_inputs(engine, tmp_path)
    name = fx.unique("dry")
    plan = create(cli, engine, name, inputs.toml, "--dry-run")
    assert plan["image_id"] is None and plan["imported"] == []
    assert cli("ls", "--format", "json").json() == []
    assert engine.docker("image", "inspect", name, check=False).returncode != 0
    real = create(cli, engine, name, inputs.toml)
    assert real["config_digest"] == plan["config_digest"]


# -- errors ------------------------------------------------------------------------------------


def _fails(
    cli, engine: Engine, toml: Path, *needles: str, code: int = 1, unchanged: bool = True
) -> None:
    """One message naming the problem; the cache still verifies, and when the problem shows
    before any layer is needed (config, order, lifecycle, images) nothing was added to it."""
    before = cli("ls", "--format", "json").json()
    result = cli("--host", engine.host, "create-builder", fx.unique("bad"), "--config", str(toml))
    assert result.exit_code == code, (result.stdout, result.stderr)
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1  # one message
    if unchanged:
        assert cli("ls", "--format", "json").json() == before
    assert cli("verify").exit_code == 0


def _edit(toml: Path, old: str, new: str) -> Path:
    text = toml.read_text()
    assert old in text
    toml.write_text(text.replace(old, new, 1))
    return toml


def test_order_naming_a_buildpack_nobody_provides(cli, engine: Engine, tmp_path) -> None:
    inputs = make_inputs(engine, tmp_path)
    _edit(inputs.toml, 'id = "test/simple"', 'id = "test/missing"')
    # The line of the [[order.group]] entry naming it (the one before its id).
    line = inputs.toml.read_text().splitlines().index('    id = "test/missing"')
    _fails(cli, engine, inputs.toml, f"builder.toml:{line}:", "'test/missing'")


def test_duplicate_buildpack_with_other_contents(cli, engine: Engine, tmp_path) -> None:
    inputs = make_inputs(engine, tmp_path)
    clash = fx.make_buildpack("test/from-dir", "0.1.0")  # same id@version, other salt
    fx.write_directory(clash, tmp_path / "clash")
    _edit(
        inputs.toml,
        '[[buildpacks]]\n  uri = "bp-dir"\n',
        '[[buildpacks]]\n  uri = "bp-dir"\n\n[[buildpacks]]\n  uri = "clash"\n',
    )
    _fails(
        cli,
        engine,
        inputs.toml,
        "test/from-dir@0.1.0 is provided twice with different contents",
        unchanged=False,
    )


def test_unreadable_archive(cli, engine: Engine, tmp_path) -> None:
    inputs = make_inputs(engine, tmp_path)
    data = (tmp_path / "bp.tgz").read_bytes()
    (tmp_path / "bp.tgz").write_bytes(data[: len(data) // 2])
    _fails(cli, engine, inputs.toml, "cannot read archive", "bp.tgz", unchanged=False)


def test_lifecycle_version_neither_cached_nor_reachable(cli, engine: Engine, tmp_path) -> None:
    inputs = make_inputs(engine, tmp_path)
    _edit(inputs.toml, 'uri = "lifecycle.tgz"', 'version = "0.99.0"')
    # pack's config says pull-policy never here: no lifecycle image is looked for remotely.
    _fails(
        cli, engine, inputs.toml, "neither cached nor reachable", "0.99.0",
        "docker.io/buildpacksio/lifecycle:0.99.0", code=1,
    )  # fmt: skip
    # A version already cached (from a run with its archive) is used without the archive.
    create(
        cli,
        engine,
        fx.unique("with-archive"),
        _edit(inputs.toml, 'version = "0.99.0"', 'uri = "lifecycle.tgz"'),
    )
    _edit(inputs.toml, 'uri = "lifecycle.tgz"', f'version = "{fx.LIFECYCLE_VERSION}"')
    (tmp_path / "lifecycle.tgz").unlink()
    create(cli, engine, fx.unique("by-version"), inputs.toml)


def test_build_image_without_cnb_user(cli, engine: Engine, tmp_path) -> None:
    inputs = make_inputs(engine, tmp_path)
    plain = fx.unique("plain")
    from tests.engines import images

    built = images.build_busybox_archive(tmp_path / "plain.tar", plain, [])
    engine.docker("load", "-i", str(built.path))
    _edit(inputs.toml, f'image = "{inputs.build_ref}"', f'image = "{plain}"')
    _fails(cli, engine, inputs.toml, "missing required env var CNB_USER_ID")


def test_buildpack_directory_missing(cli, engine: Engine, tmp_path) -> None:
    inputs = make_inputs(engine, tmp_path)
    shutil.rmtree(inputs.directory_path)
    # A path that does not exist is taken as an image name, which the daemon does not have.
    _fails(cli, engine, inputs.toml, "buildpackage bp-dir is not in the Docker daemon")


def test_tgz_entries_keep_exec_bits(tmp_path) -> None:
    """Sanity for the fixture: the archive really holds the modes the expectations use."""
    bp = fx.make_buildpack("test/x")
    fx.write_tgz(bp, tmp_path / "x.tgz")
    import tarfile

    with tarfile.open(tmp_path / "x.tgz") as tar:
        modes = {m.name: stat.S_IMODE(m.mode) for m in tar}
    assert modes["./bin/build"] == 0o755 and modes["./buildpack.toml"] == 0o644


@pytest.mark.parametrize("policy", ["sometimes", "Always"])
def test_unknown_pull_policy_is_a_usage_error(cli, engine: Engine, tmp_path, policy) -> None:
    inputs = make_inputs(engine, tmp_path)
    result = cli(
        "--host", engine.host, "create-builder", "x:1", "--config", str(inputs.toml),
        "--pull-policy", policy,
    )  # fmt: skip
    assert result.exit_code == 2 and "invalid pull policy" in result.stderr, result.stderr
    assert "always, if-not-present, never" in result.stderr
