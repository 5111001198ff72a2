"""Builder layer tars and labels: deterministic, and laid out as pack's Go code lays them out."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from pathlib import Path

from packcache.builder import labels as L
from packcache.builder.descriptors import parse_buildpack_toml, parse_lifecycle_toml
from packcache.builder.layers import (
    buildpack_layer,
    default_dirs,
    env_layer,
    lifecycle_layer,
    single_file_layer,
)
from packcache.builder.sources import archive_members, directory_members
from packcache.builder.tarwriter import (
    NORMALIZED_MTIME,
    REGULAR,
    TarEntry,
    header,
    tar_chunks,
    tar_reader,
)
from packcache.operations.builder_modules import LayerWriter
from packcache.store.store import Store
from tests import builder_fixtures as fx

EMPTY_TAR_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


def tar_bytes(entries) -> bytes:
    return b"".join(tar_chunks(entries))


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def test_empty_layer_is_two_zero_blocks_like_go() -> None:
    data = tar_bytes([])
    assert data == b"\0" * 1024
    assert "sha256:" + hashlib.sha256(data).hexdigest() == EMPTY_TAR_DIFF_ID
    assert "sha256:" + hashlib.sha256(tar_bytes(env_layer("/platform/env", {}))).hexdigest() == (
        EMPTY_TAR_DIFF_ID
    )


def test_header_fields_as_go_writes_them() -> None:
    block = header(TarEntry("/cnb/buildpacks", b"5", 0o755, 1000, 1001))
    assert len(block) == 512
    assert block[:16] == b"/cnb/buildpacks\0"  # leading / kept, no trailing / on a directory
    assert block[100:108] == b"0000755\0"
    assert block[108:124] == b"0001750\x000001751\0"
    assert block[136:148] == f"{NORMALIZED_MTIME:011o}".encode() + b"\0"  # 1980-01-01T00:00:01Z
    assert block[156:157] == b"5"
    assert block[257:265] == b"ustar\x0000"
    assert block[329:345] == b"0000000\x000000000\0"
    checksum = sum(block[:148]) + 8 * 32 + sum(block[156:])
    assert block[148:156] == f"{checksum:06o}".encode() + b"\0 "
    assert members(block + b"\0" * 1024)[0].name == "/cnb/buildpacks"


def test_long_names_split_or_get_a_pax_record() -> None:
    split = "/cnb/buildpacks/" + "a" * 120 + "/file"
    very_long = "/cnb/" + "b" * 300
    data = tar_bytes(
        [TarEntry(split, REGULAR, size=2, data=b"hi"), TarEntry(very_long, REGULAR, data=b"")]
    )
    read = members(data)
    assert [m.name for m in read] == [split, very_long]
    assert data[345 : 345 + len(split) - 5] == split[:-5].encode()  # USTAR prefix field
    assert b"PaxHeaders.0" in data


def test_same_inputs_same_bytes_and_mtime_normalized(tmp_path) -> None:
    buildpack = fx.make_buildpack("test/same")
    folder = fx.write_directory(buildpack, tmp_path / "bp")
    descriptor = parse_buildpack_toml(buildpack.files["buildpack.toml"], "bp")
    first = tar_bytes(buildpack_layer(descriptor, directory_members(folder)))
    later = time.time() + 1000
    for path in folder.rglob("*"):
        os.utime(path, (later, later))  # other times on disk: the same layer
    assert tar_bytes(buildpack_layer(descriptor, directory_members(folder))) == first
    read = members(first)
    assert {m.mtime for m in read} == {NORMALIZED_MTIME}
    assert {(m.uid, m.gid, m.uname, m.gname) for m in read} == {(0, 0, "", "")}
    root = "/cnb/buildpacks/test_same/1.0.0"
    assert [m.name for m in read][:2] == ["/cnb/buildpacks/test_same", root]
    modes = {m.name: m.mode for m in read}
    assert modes[f"{root}/bin/build"] == 0o755
    assert modes[f"{root}/buildpack.toml"] == 0o644
    assert modes[f"{root}/lib"] == 0o755
    # a change of contents changes the layer
    (folder / "lib" / "salt.txt").write_text("other")
    assert tar_bytes(buildpack_layer(descriptor, directory_members(folder))) != first


def test_directory_walk_order_is_go_filepath_walk(tmp_path) -> None:
    for rel in ("a.txt", "a/b", "b", "A"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    os.symlink("b", tmp_path / "link")
    names = [e.name for e in directory_members(tmp_path)]
    assert names == ["A", "a", "a/b", "a.txt", "b", "link"]  # per directory, byte order


def test_archive_and_directory_give_the_same_buildpack_layer(tmp_path) -> None:
    buildpack = fx.make_buildpack("test/both")
    folder = fx.write_directory(buildpack, tmp_path / "bp")
    archive = fx.write_tgz(buildpack, tmp_path / "bp.tgz")
    descriptor = parse_buildpack_toml(buildpack.files["buildpack.toml"], "bp")
    from_dir = tar_bytes(buildpack_layer(descriptor, directory_members(folder)))
    from_tgz = tar_bytes(buildpack_layer(descriptor, archive_members(archive)))

    # pack normalizes owner, time and modes, so the same files give the same files in the
    # layer; only the order differs (walk order vs archive order).
    def content(data: bytes) -> dict:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return {
                m.name: (m.mode, m.mtime, m.uid, tar.extractfile(m).read() if m.isfile() else None)
                for m in tar
            }

    assert content(from_dir) == content(from_tgz)


def test_lifecycle_layer_takes_the_release_layout(tmp_path) -> None:
    expected = fx.write_lifecycle(tmp_path / "lifecycle.tgz")
    read = members(tar_bytes(lifecycle_layer(archive_members(tmp_path / "lifecycle.tgz"))))
    names = [m.name for m in read]
    assert names[0] == "/cnb/lifecycle" and names[-1] == "/lifecycle"
    assert read[-1].issym() and read[-1].linkname == "/cnb/lifecycle"
    assert sorted(names[1:-1]) == sorted(f.path for f in expected.values())
    assert "lifecycle.toml" not in " ".join(names)


def test_default_dirs_owned_as_pack_owns_them() -> None:
    read = members(tar_bytes(default_dirs(1000, 1001)))
    assert [(m.name, m.uid, m.gid) for m in read[:2]] == [
        ("/workspace", 1000, 1001),
        ("/layers", 1000, 1001),
    ]
    assert all((m.uid, m.gid) == (0, 0) for m in read[2:])
    assert [m.name for m in read[2:]] == [
        "/cnb", "/cnb/buildpacks", "/cnb/extensions", "/platform", "/platform/env",
        "/cnb/build-config", "/cnb/build-config/env",
    ]  # fmt: skip


def test_tar_reader_streams_exactly_the_chunks() -> None:
    entries = [TarEntry("/f", REGULAR, size=3, data=b"abc")]
    reader = tar_reader(entries)
    pieces = []
    while piece := reader.read(100):
        pieces.append(piece)
    assert b"".join(pieces) == tar_bytes([TarEntry("/f", REGULAR, size=3, data=b"abc")])


def test_cut_archive_is_an_error_not_a_shorter_buildpack(tmp_path) -> None:
    import pytest

    from packcache.builder.sources import SourceError

    archive = fx.write_tgz(fx.make_buildpack("test/cut", size=200_000), tmp_path / "bp.tgz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) - 100])
    with pytest.raises(SourceError, match="cannot read archive"):  # while its bytes stream
        for entry in archive_members(archive):
            if entry.source:
                with entry.source() as member:
                    member.read()


def test_go_json_escapes_like_encoding_json() -> None:
    assert L.go_json({"a": "<b>&", "c": None, "d": ["é"]}) == (
        '{"a":"\\u003cb\\u003e\\u0026","c":null,"d":["é"]}'
    )


def test_toml_files_as_burntsushi_writes_them() -> None:
    order = [
        [{"id": "a", "version": "1"}, {"id": "b", "version": "2", "optional": True}],
        [{"id": "c", "version": "3"}],
    ]
    assert L.order_toml(order) == (
        '[[order]]\n\n  [[order.group]]\n    id = "a"\n    version = "1"\n\n'
        '  [[order.group]]\n    id = "b"\n    version = "2"\n    optional = true\n\n'
        '[[order]]\n\n  [[order.group]]\n    id = "c"\n    version = "3"\n'
    )
    assert L.stack_toml("run:1", ["m:1", "m:2"]) == (
        '[run-image]\n  image = "run:1"\n  mirrors = ["m:1", "m:2"]\n'
    )
    assert L.stack_toml("run:1", None) == '[run-image]\n  image = "run:1"\n'
    assert L.run_toml([{"image": "r:1", "mirrors": None}, {"image": "r:2", "mirrors": []}]) == (
        '[[images]]\n  image = "r:1"\n\n[[images]]\n  image = "r:2"\n  mirrors = []\n'
    )


def test_lifecycle_descriptor_compat_fields() -> None:
    new = parse_lifecycle_toml(fx.LIFECYCLE_TOML.format(version="0.20.1").encode(), "x")
    assert (new.buildpack_api, new.platform_api) == ("0.7", "0.7")
    old = parse_lifecycle_toml(
        b'[api]\n  buildpack = "0.2"\n  platform = "0.3"\n[lifecycle]\n  version = "0.9.0"\n', "x"
    )
    assert old.apis == {
        "buildpack": {"deprecated": None, "supported": ["0.2"]},
        "platform": {"deprecated": None, "supported": ["0.3"]},
    }


def test_fixture_paths_exist(tmp_path: Path) -> None:
    """The tgz fixture prefixes ./ as `tar czf .` does; normpath strips it."""
    archive = fx.write_tgz(fx.make_buildpack("test/p"), tmp_path / "p.tgz")
    assert all(e.name == "." or e.name.startswith("./") for e in archive_members(archive))


def test_extension_order_and_system_files_as_burntsushi_writes_them() -> None:
    order = [[{"id": "a", "version": "1"}]]
    extensions = [[{"id": "e", "version": "2"}]]
    assert L.order_toml(order, extensions) == (
        '[[order]]\n\n  [[order.group]]\n    id = "a"\n    version = "1"\n\n'
        '[[order-extensions]]\n\n  [[order-extensions.group]]\n    id = "e"\n    version = "2"\n'
    )
    assert L.order_toml([], extensions).startswith("[[order-extensions]]\n")
    pre, post = [{"id": "p", "version": "1"}], [{"id": "q", "version": "2", "optional": True}]
    assert L.system_toml(pre, post) == (
        "[system]\n  [system.pre]\n\n    [[system.pre.buildpacks]]\n"
        '      id = "p"\n      version = "1"\n'
        "  [system.post]\n\n    [[system.post.buildpacks]]\n"
        '      id = "q"\n      version = "2"\n      optional = true\n'
    )
    assert L.system_toml(pre, []) == (
        '[system]\n  [system.pre]\n\n    [[system.pre.buildpacks]]\n      id = "p"\n'
        '      version = "1"\n'
    )
    assert L.system_json([{"id": "p"}], []) == '{"pre":{"buildpacks":[{"id":"p"}]},"post":{}}'


def test_extension_layer_goes_under_cnb_extensions(tmp_path: Path) -> None:
    from packcache.builder.descriptors import parse_extension_toml

    toml = b'api = "0.9"\n[extension]\n  id = "test/ext"\n  version = "1.0"\n'
    descriptor = parse_extension_toml(toml, "x")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "generate").write_text("#!/bin/sh\n")
    (tmp_path / "extension.toml").write_bytes(toml)
    names = {m.name: m.mode for m in members(tar_bytes(
        buildpack_layer(descriptor, directory_members(tmp_path))
    ))}  # fmt: skip
    assert names["/cnb/extensions/test_ext"] == 0o755
    assert names["/cnb/extensions/test_ext/1.0/bin/generate"] == 0o755
    assert names["/cnb/extensions/test_ext/1.0/extension.toml"] == 0o644


def test_flatten_flag_syntax_is_packs() -> None:
    import pytest

    from packcache.builder.flatten import parse_flatten
    from packcache.errors import UsageError

    assert parse_flatten(["a@1, b@2", "c@3"]) == [["a@1", "b@2"], ["c@3"]]
    for bad in ("a", "a@1@2", "@1", "a@ "):
        with pytest.raises(UsageError, match="invalid format"):
            parse_flatten([bad])


def test_targets_for_the_daemon_are_picked_as_pack_picks_them() -> None:
    import pytest

    from packcache.builder.config import Target
    from packcache.builder.rules import BuilderError
    from packcache.builder.targets import daemon_target, parse_target
    from packcache.errors import UsageError

    assert parse_target("linux/arm/v7:ubuntu@22.04;debian") == Target(
        "linux", "arm", "v7", (("ubuntu", "22.04"), ("debian", ""))
    )
    for bad in ("", "plan10/amd64", "linux/amd64/v9", "linux/sparc", "linux:@1"):
        with pytest.raises(UsageError):
            parse_target(bad)
    config = [Target("windows", "amd64"), Target("linux", "amd64")]
    assert daemon_target([], config, "linux", "x86_64") == Target("linux", "amd64")
    assert daemon_target(["linux"], config, "linux", "aarch64") == Target("linux")
    assert daemon_target([], [], "linux", "x86_64") is None
    with pytest.raises(UsageError, match="only one target"):
        daemon_target(["linux/amd64", "linux/arm64"], [], "linux", "x86_64")
    with pytest.raises(BuilderError, match="os=linux and architecture=arm64"):
        daemon_target(["linux/amd64"], [], "linux", "aarch64")


def test_a_flattened_package_layer_splits_into_a_layer_per_buildpack() -> None:
    from packcache.builder.flatten import ModuleSplitter, flattened_entries

    one, two = fx.make_buildpack("test/one"), fx.make_buildpack("test/two", "2.0")
    one_b = fx.make_buildpack("test/one", "1.5")
    descriptors = [
        parse_buildpack_toml(bp.files["buildpack.toml"], "x") for bp in (one, one_b, two)
    ]
    separate = []
    for bp, descriptor in zip((one, one_b, two), descriptors, strict=True):
        folder_entries = [
            TarEntry(rel, REGULAR, 0o755 if rel in bp.executable else 0o644,
                     size=len(data), data=data)
            for rel, data in sorted(bp.files.items())
        ]  # fmt: skip
        separate.append(list(buildpack_layer(descriptor, folder_entries)))
    flat = list(flattened_entries(zip(descriptors, separate, strict=True)))
    # the second version of test/one does not repeat its id directory
    assert [e.name for e in flat].count("/cnb/buildpacks/test_one") == 1
    pieces = {}
    for module_id, version, group in ModuleSplitter(flat, "/cnb/buildpacks").groups():
        pieces[f"{module_id}@{version}"] = tar_bytes(group)
    assert list(pieces) == ["test_one@1.0.0", "test_one@1.5", "test_two@2.0"]
    # each piece is that buildpack's own layer, byte for byte (pack's ToNLayerTar re-adds the
    # id directory a later version of the same id lacks)
    for piece, entries in zip(pieces.values(), separate, strict=True):
        assert piece == tar_bytes(entries)


def test_flattening_buildpacks_from_two_packages_writes_each_directory_once() -> None:
    """A buildpackage's layer carries /cnb and /cnb/buildpacks itself: flattening two of them
    must not name those directories twice (a graphdriver refuses the layer)."""
    from packcache.builder.flatten import flattened_entries
    from packcache.builder.tarwriter import DIRECTORY

    modules = []
    for name in ("test/one", "test/two"):
        bp = fx.make_buildpack(name)
        descriptor = parse_buildpack_toml(bp.files["buildpack.toml"], "x")
        files = [
            TarEntry(rel, REGULAR, 0o644, size=len(data), data=data)
            for rel, data in sorted(bp.files.items())
        ]
        parents = [TarEntry(d, DIRECTORY, 0o755) for d in ("/cnb", "/cnb/buildpacks/")]
        modules.append((descriptor, [*parents, *buildpack_layer(descriptor, files)]))
    names = [e.name.rstrip("/") for e in flattened_entries(modules)]
    assert len(names) == len(set(names))
    assert {"/cnb", "/cnb/buildpacks"} <= set(names)
    # every file of both buildpacks is there
    assert sum(1 for n in names if n.endswith("/buildpack.toml")) == 2


def test_tag_target_and_label_values_split_as_packs_flag_library_splits_them() -> None:
    import pytest

    from packcache.builder.flags import builder_options, string_slice, string_to_string
    from packcache.errors import UsageError

    assert string_slice(["a:1,b:2", "c:3", ""], "--tag") == ["a:1", "b:2", "c:3"]
    assert string_slice(['"x,y:1",z:2'], "--tag") == ["x,y:1", "z:2"]
    assert string_to_string(["a=b,c", "d=1,e=2", "f=x=y", '"g=h"'], "--label") == {
        "a": "b,c", "d": "1", "e": "2", "f": "x=y", "g": "h",
    }  # fmt: skip
    for bad in ("novalue", "=x", "a=1,b,c=2"):
        with pytest.raises(UsageError, match="expected KEY=VALUE"):
            string_to_string([bad], "--label")
    options = builder_options(["a:1,b:2"], ["x@1,y@2"], ["linux/amd64"], True)
    assert (options.tags, options.flatten) == (["a:1", "b:2"], [["x@1", "y@2"]])
    with pytest.raises(UsageError, match="invalid image reference"):
        builder_options(["Bad:Tag"], [], [], False)


def test_a_package_layer_naming_a_parent_path_is_refused_as_pack_refuses_it() -> None:
    import pytest

    from packcache.builder.flatten import ModuleSplitter, SplitError

    entries = [
        TarEntry("/cnb/buildpacks/a", b"5", 0o755),
        TarEntry("/cnb/buildpacks/a/1", b"5", 0o755),
        TarEntry("/cnb/buildpacks/a/1/../../../etc/x", data=b"", size=0),
    ]
    with pytest.raises(SplitError, match="unexpected special elements"):
        for _, _, group in ModuleSplitter(entries, "/cnb/buildpacks").groups():
            list(group)


def test_the_small_layers_the_cache_lacks_are_committed_together(tmp_path: Path) -> None:
    # One index transaction and one round of syncs for pack's small layers, not one per layer;
    # the layers the cache holds already are not written again.
    store = Store.open(tmp_path / "cache")
    commits: list[int] = []
    real_commit = store.commit_staged_many
    store.commit_staged_many = lambda staged, *rest, **kw: (  # type: ignore[method-assign]
        commits.append(len(staged)) or real_commit(staged, *rest, **kw)
    )
    with store.lease("test") as lease:
        held = LayerWriter(store, lease, dry_run=False)
        held.add(single_file_layer("/cnb/stack.toml", "held"))
        layers = LayerWriter(store, lease, dry_run=False)
        diff_ids = [
            layers.add_small(single_file_layer("/cnb/stack.toml", text))
            for text in ("held", "a", "b", "c")
        ]
        layers.write_small()
    assert commits == [1, 3] and layers.written == 3
    assert store.cached_diff_ids(diff_ids) == set(diff_ids)
