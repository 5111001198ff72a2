"""Archives built to hurt: odd encodings, wrong types, huge headers, bombs, many entries.

Each is refused with one `packcache: error:` line (or, for a bomb layer, imported in bounded
memory), and a refused archive leaves the cache exactly as it was.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.archives import build_oci_archive
from tests.engines.images import build_legacy_archive, write_tar
from tests.layers import sha256
from tests.test_cli import snapshot

LAYERS = [{"etc/base.txt": b"base layer\n"}, {"app/run.sh": b"#!/bin/sh\necho hi\n"}]


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def assert_refused_and_cache_unchanged(cli, cache_dir: Path, archive: Path, message: str) -> None:
    """Import `archive` into a cache holding one image: one error line, nothing changed."""
    before = snapshot(cache_dir)
    result = cli("import", "--archive", str(archive))
    assert result.exit_code == 1, result.stdout
    [line] = result.stderr.splitlines()
    assert line.startswith("packcache: error: "), line
    assert message in line, line
    assert snapshot(cache_dir) == before
    assert list((cache_dir / "ingest").iterdir()) == []
    assert cli("verify").exit_code == 0


@pytest.fixture
def seeded(cli, cache_dir: Path, tmp_path: Path) -> Path:
    """A cache holding one image already, so "unchanged" has something to compare."""
    seed = build_legacy_archive(tmp_path / "seed.tar", [{"seed": b"seed\n"}], repo_tag="seed:1")
    assert cli("import", "--archive", str(seed.path)).exit_code == 0
    return cache_dir


# -- configs and manifests that are not clean JSON, or not of the right types ----------------


ConfigEdit = Callable[[dict], bytes]


def _text(config: dict) -> bytes:
    return json.dumps(config).encode()


def _retyped(path: str, value: object) -> ConfigEdit:
    """The config with the field at dotted `path` set to `value`."""

    def edit(config: dict) -> bytes:
        *parents, last = path.split(".")
        node = config
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = value
        return _text(config)

    return edit


CONFIG_CASES: dict[str, tuple[ConfigEdit, str]] = {
    "utf-8 bom": (lambda c: b"\xef\xbb\xbf" + _text(c), "byte-order mark"),
    "utf-16 with bom": (lambda c: json.dumps(c).encode("utf-16"), "byte-order mark"),
    "utf-16 without bom": (lambda c: json.dumps(c).encode("utf-16-le"), "UTF-16"),
    "latin-1 byte": (
        lambda c: _retyped("config.Labels", {"a": "x"})(c).replace(b'"x"', b'"\xe9"'),
        "not UTF-8",
    ),
    "lone surrogate": (_retyped("config.Labels", {"a": "\ud800"}), "lone UTF-16 surrogate"),
    "lone surrogate key": (_retyped("config.Labels", {"\udfff": "a"}), "lone UTF-16 surrogate"),
    "nan": (_retyped("config.StopTimeout", float("nan")), "NaN"),
    "infinity": (_retyped("config.StopTimeout", float("inf")), "Infinity"),
    "duplicate key": (lambda c: _text(c)[:-1] + b', "os": "windows"}', "'os' twice"),
    "not an object": (lambda c: b"[]", "'config' is not an object"),
    "rootfs not an object": (_retyped("rootfs", ["layers"]), "'rootfs' is not an object"),
    "rootfs missing": (lambda c: _text({k: v for k, v in c.items() if k != "rootfs"}), "rootfs"),
    "diff_ids a string": (_retyped("rootfs.diff_ids", "sha256:" + "a" * 64), "'rootfs.diff_ids'"),
    "diff_ids not digests": (_retyped("rootfs.diff_ids", ["nope"]), "sha256 digests"),
    "labels not an object": (_retyped("config.Labels", ["a=b"]), "'config.Labels'"),
    "label not a string": (_retyped("config.Labels", {"a": 1}), "'config.Labels'"),
    "env not a list": (_retyped("config.Env", "PATH=/bin"), "'config.Env'"),
    "env not strings": (_retyped("config.Env", [["PATH=/bin"]]), "'config.Env'"),
    "cmd not strings": (_retyped("config.Cmd", [1]), "'config.Cmd'"),
    "config not an object": (_retyped("config", "yes"), "'config' is not an object"),
    "architecture not a string": (_retyped("architecture", 64), "'architecture' is not a string"),
    "os not a string": (_retyped("os", ["linux"]), "'os' is not a string"),
    "variant not a string": (_retyped("variant", {"v": 8}), "'variant' is not a string"),
    "created not a string": (_retyped("created", 0), "'created' is not a string"),
    "history not a list": (_retyped("history", {"created": "x"}), "'history' is not a list"),
    "history entry not an object": (_retyped("history", ["x"]), "'history[]'"),
    "huge integer": (lambda c: _text(c)[:-1] + b', "n": ' + b"9" * 5000 + b"}", "valid JSON"),
}


def _archive_with_config(tmp_path: Path, edit: ConfigEdit) -> Path:
    """A legacy archive whose config (named by its new digest, as docker names it) is edited:
    its layers are good, so an import that checked too late would commit them."""
    good = build_legacy_archive(tmp_path / "good.tar", LAYERS, repo_tag="odd:1")
    members = _members(good.path)
    [item] = json.loads(members["manifest.json"])
    config = json.loads(members.pop(item["Config"]))
    config_bytes = edit(config)
    config_name = sha256(config_bytes)[7:] + ".json"
    members[config_name] = config_bytes
    members["manifest.json"] = json.dumps([{**item, "Config": config_name}]).encode()
    path = tmp_path / "odd.tar"
    write_tar(path, members)
    return path


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_odd_config_is_refused_before_any_layer_is_committed(
    cli, seeded: Path, tmp_path: Path, case: str
) -> None:
    edit, message = CONFIG_CASES[case]
    archive = _archive_with_config(tmp_path, edit)
    assert_refused_and_cache_unchanged(cli, seeded, archive, message)


def test_the_unedited_config_of_those_cases_imports(cli, seeded: Path, tmp_path: Path) -> None:
    """The cases above fail for what they change, not for how the archive is rebuilt."""
    archive = _archive_with_config(tmp_path, lambda config: json.dumps(config).encode())
    result = cli("import", "--archive", str(archive))
    assert result.exit_code == 0, result.stderr
    assert cli("ls", "--image", "odd:1").exit_code == 0


def _legacy_members(tmp_path: Path) -> tuple[dict[str, bytes], dict]:
    good = build_legacy_archive(tmp_path / "good.tar", LAYERS, repo_tag="odd:1")
    members = _members(good.path)
    [item] = json.loads(members["manifest.json"])
    return members, item


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (lambda item: b"\xef\xbb\xbf" + json.dumps([item]).encode(), "byte-order mark"),
        (lambda item: json.dumps([item]).encode("utf-16-le"), "UTF-16"),
        (lambda item: json.dumps([{**item, "Config": "\ud800"}]).encode(), "surrogate"),
        (lambda item: json.dumps([item])[:-2].encode() + b', "Config": "x"}]', "twice"),
        (lambda item: json.dumps([{**item, "Layers": "a/layer.tar"}]).encode(), "Layers"),
        (lambda item: json.dumps([{**item, "Config": 1}]).encode(), "Config"),
    ],
    ids=["bom", "utf-16", "lone surrogate", "duplicate key", "layers a string", "config a number"],
)
def test_odd_manifest_json_is_refused(cli, seeded: Path, tmp_path: Path, manifest, message):
    members, item = _legacy_members(tmp_path)
    members["manifest.json"] = manifest(item)
    path = tmp_path / "odd.tar"
    write_tar(path, members)
    assert_refused_and_cache_unchanged(cli, seeded, path, message)


def _index(manifest_digest: str, descriptor_extra: dict) -> bytes:
    descriptor = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": 1,
        **descriptor_extra,
    }
    return json.dumps({"schemaVersion": 2, "manifests": [descriptor]}).encode()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"annotations": {"io.containerd.image.name": "\ud800"}}, "surrogate"),
        ({"annotations": {"io.containerd.image.name": 7}}, "'annotations'"),
        ({"annotations": "docker.io/library/x:1"}, "'annotations'"),
        ({"size": "12"}, "'size'"),
        ({"size": -1}, "'size'"),
        ({"digest": "sha256:XYZ"}, "'digest'"),
        ({"mediaType": ["x"]}, "'mediaType'"),
    ],
    ids=["lone surrogate", "name a number", "annotations a string", "size a string",
         "negative size", "bad digest", "media type a list"],
)  # fmt: skip
def test_odd_index_json_is_refused(cli, seeded: Path, tmp_path: Path, extra, message) -> None:
    path = tmp_path / "oci.tar"
    _, manifest_digest = build_oci_archive(path, LAYERS, "odd:1")
    members = _members(path)
    members["index.json"] = _index(manifest_digest, extra)
    write_tar(path, members)
    assert_refused_and_cache_unchanged(cli, seeded, path, message)


def test_odd_oci_manifest_is_refused(cli, seeded: Path, tmp_path: Path) -> None:
    """A manifest (named by its digest in index.json) whose layers are not descriptors."""
    path = tmp_path / "oci.tar"
    _, manifest_digest = build_oci_archive(path, LAYERS, "odd:1")
    members = _members(path)
    manifest = json.loads(members.pop(f"blobs/sha256/{manifest_digest[7:]}"))
    manifest["layers"] = [layer["digest"] for layer in manifest["layers"]]
    manifest_bytes = json.dumps(manifest).encode()
    members[f"blobs/sha256/{sha256(manifest_bytes)[7:]}"] = manifest_bytes
    members["index.json"] = _index(sha256(manifest_bytes), {})
    write_tar(path, members)
    assert_refused_and_cache_unchanged(cli, seeded, path, "descriptor")
