"""Importing docker-save archives (every layout engines write), good and bad, via the CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from packcache.archive.save_reader import ArchiveError, import_archive
from packcache.store.store import Store
from tests.archives import build_oci_archive
from tests.engines.images import build_legacy_archive, write_tar
from tests.layers import sha256
from tests.test_cli import snapshot

BIG = os.urandom(3 << 20)  # bigger than the in-memory threshold: staged while streaming
LAYERS = [
    {"etc/base.txt": b"base layer\n"},
    {"app/big.bin": BIG},
    {"app/config.txt": b"setting=1\n"},
]


@pytest.fixture(params=["legacy", "legacy-gzip", "oci", "oci-gzip"])
def archive(request, tmp_path: Path):
    path = tmp_path / "image.tar"
    kind = request.param
    if kind.startswith("legacy"):
        image = build_legacy_archive(
            path, LAYERS, repo_tag="me/app:1", gzip_layers=[False, kind.endswith("gzip"), True]
        )
        return image, None
    return build_oci_archive(path, LAYERS, "me/app:1", gzip_layers=kind.endswith("gzip"))


def test_import_records_layers_and_image(cli, store: Store, archive) -> None:
    image, manifest_digest = archive
    result = cli("import", "--archive", str(image.path), "--format", "json")
    assert result.exit_code == 0, result.stderr
    out = result.json()
    assert out["layers_written"] == 3
    rows = cli("ls", "--image", "me/app:1", "--format", "json").json()
    assert [r["diff_id"] for r in rows] == image.diff_ids
    for row, blob_digest, diff_id in zip(rows, image.blob_digests, image.diff_ids, strict=True):
        assert row["digests"] == ([] if blob_digest == diff_id else [blob_digest])
    usage = cli("du", "--format", "json").json()
    on_disk = sum(p.stat().st_size for p in (store.root / "blobs").rglob("*") if p.is_file())
    assert usage["size"] == on_disk
    assert usage["images"][0]["refs"] == ["me/app:1"]
    if manifest_digest:
        assert out["images"][0]["manifest_digest"] == manifest_digest
    # Every layer reads back as the tar its diffID names.
    for diff_id in image.diff_ids:
        with store.layer(diff_id).uncompressed() as reader:
            assert sha256(reader.read()) == diff_id


def test_second_import_writes_nothing(cli, archive) -> None:
    image, _ = archive
    cli("import", "--archive", str(image.path))
    again = cli("import", "--archive", str(image.path), "--format", "json").json()
    assert again["layers_written"] == 0 and again["bytes_written"] == 0
    assert again["layers_known"] == 3


def test_known_oci_blobs_are_not_read(store: Store, tmp_path: Path) -> None:
    image, _ = build_oci_archive(tmp_path / "a.tar", LAYERS, gzip_layers=True)
    with open(image.path, "rb") as stream:
        import_archive(store, stream)
    with open(image.path, "rb") as stream:
        report = import_archive(store, stream)
    assert report.bytes_read == 0 and report.layers_known == 3


def test_shared_base_layers_are_stored_once(cli, tmp_path: Path) -> None:
    base = build_legacy_archive(tmp_path / "b.tar", LAYERS[:2], repo_tag="base:1")
    app = build_legacy_archive(tmp_path / "a.tar", LAYERS, repo_tag="app:1")
    cli("import", "--archive", str(base.path))
    out = cli("import", "--archive", str(app.path), "--format", "json").json()
    assert (out["layers_written"], out["layers_known"]) == (1, 2)
    images = {tuple(i["refs"]): i for i in cli("du", "--format", "json").json()["images"]}
    assert images[("base:1",)]["unique_size"] == 0
    assert images[("app:1",)]["shared_size"] == images[("base:1",)]["size"]


def test_import_from_stdin_of_a_real_process(cli, cache_dir, tmp_path: Path) -> None:
    image = build_legacy_archive(tmp_path / "x.tar", LAYERS[:1], repo_tag="x:1")
    with open(image.path, "rb") as stdin:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "packcache",
                "--cache-dir",
                str(cache_dir),
                "import",
                "--archive",
                "-",
            ],
            stdin=stdin,
            capture_output=True,
            text=True,
        )
    assert done.returncode == 0, done.stderr
    assert "Imported x:1 (1 layer)" in done.stdout
    assert cli("ls", "--image", "x:1").exit_code == 0


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def _bad_archives(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = build_legacy_archive(tmp_path / "good.tar", LAYERS, repo_tag="bad:1")
    members = _members(good.path)
    data = good.path.read_bytes()
    manifest = json.loads(members["manifest.json"])
    config_name = manifest[0]["Config"]
    layer_name = manifest[0]["Layers"][1]
    cases: dict[str, tuple[dict[str, bytes] | bytes, str]] = {}
    cases["truncated"] = (data[: len(data) // 2], "truncated")
    cases["not a tar"] = (b"hello" * 1000, "not a readable docker save archive")
    cases["no manifest"] = (
        {k: v for k, v in members.items() if k != "manifest.json"},
        "manifest.json' is missing",
    )
    cases["manifest not json"] = ({**members, "manifest.json": b"[{"}, "not valid JSON")
    cases["no config"] = (
        {k: v for k, v in members.items() if k != config_name},
        "image config",
    )
    cases["config altered"] = ({**members, config_name: b"{nope"}, "does not match its digest")
    bad_config = b'{"rootfs": "nope"}'
    bad_name = sha256(bad_config)[7:] + ".json"
    cases["config malformed"] = (
        {
            **members,
            bad_name: bad_config,
            "manifest.json": json.dumps([{**manifest[0], "Config": bad_name}]).encode(),
        },
        "is malformed",
    )
    more = [*manifest[0]["Layers"], manifest[0]["Layers"][0]]
    cases["more layers than config"] = (
        {**members, "manifest.json": json.dumps([{**manifest[0], "Layers": more}]).encode()},
        "lists 4 layers",
    )
    swapped = list(reversed(manifest[0]["Layers"]))
    cases["layer digest mismatch"] = (
        {**members, "manifest.json": json.dumps([{**manifest[0], "Layers": swapped}]).encode()},
        "does not match its diffID",
    )
    cases["layer missing"] = (
        {k: v for k, v in members.items() if k != layer_name},
        "missing from the archive",
    )
    config = json.loads(members[config_name])
    os_list = json.dumps({**config, "os": ["linux"]}).encode()
    os_list_name = sha256(os_list)[7:] + ".json"
    cases["config field not a string"] = (
        {
            **members,
            os_list_name: os_list,
            "manifest.json": json.dumps([{**manifest[0], "Config": os_list_name}]).encode(),
        },
        "'os' is not a string",
    )
    for label, tags in (("RepoTags not strings", [1]), ("RepoTags a string", "bad:1")):
        cases[label] = (
            {**members, "manifest.json": json.dumps([{**manifest[0], "RepoTags": tags}]).encode()},
            "malformed RepoTags",
        )
    deep = b"[" * 100_000 + b"]" * 100_000
    cases["manifest nested too deep"] = ({**members, "manifest.json": deep}, "not valid JSON")
    cases["index.json not an object"] = ({**members, "index.json": b"[]"}, "not a JSON object")
    with io.BytesIO() as twice:
        with tarfile.open(fileobj=twice, mode="w") as tar:
            for name, content in [*members.items(), (layer_name, members[layer_name])]:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        cases["entry twice"] = (twice.getvalue(), "appears twice")
    built: dict[str, tuple[Path, str]] = {}
    for name, (content, message) in cases.items():
        path = tmp_path / (name.replace(" ", "-") + ".tar")
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            write_tar(path, content)
        built[name] = (path, message)
    return built


def _raw_tar(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(path, "w") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)


BAD_NAMES = [
    "truncated",
    "not a tar",
    "no manifest",
    "manifest not json",
    "no config",
    "config altered",
    "config malformed",
    "more layers than config",
    "layer digest mismatch",
    "layer missing",
    "config field not a string",
    "RepoTags not strings",
    "RepoTags a string",
    "manifest nested too deep",
    "index.json not an object",
    "entry twice",
]


@pytest.mark.parametrize("case", BAD_NAMES)
def test_bad_archive_is_rejected_and_cache_unchanged(cli, cache_dir, tmp_path, case) -> None:
    cli("import", "--archive", str(build_legacy_archive(tmp_path / "ok.tar", LAYERS[:1]).path))
    path, message = _bad_archives(tmp_path)[case]
    before = snapshot(cache_dir)
    result = cli("import", "--archive", str(path))
    assert result.exit_code == 1
    assert message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, "one clear message"
    assert snapshot(cache_dir) == before
    assert list((cache_dir / "ingest").iterdir()) == []


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("../evil"), "outside the archive"),
        (tarfile.TarInfo("/etc/evil"), "outside the archive"),
        (tarfile.TarInfo("x/../../evil"), "outside the archive"),
    ],
)
def test_entries_escaping_the_archive_are_rejected(cli, cache_dir, tmp_path, member, message):
    path = tmp_path / "evil.tar"
    _raw_tar(path, member, b"x")
    result = cli("import", "--archive", str(path))
    assert result.exit_code == 1 and message in result.stderr


@pytest.mark.parametrize(
    ("kind", "target", "message"),
    [
        (tarfile.SYMTYPE, "/etc/passwd", "links outside"),
        (tarfile.SYMTYPE, "../../etc/passwd", "links outside"),
        (tarfile.LNKTYPE, "manifest.json", "hard link"),
    ],
)
def test_links_out_of_the_archive_are_rejected(cli, tmp_path, kind, target, message) -> None:
    member = tarfile.TarInfo("abc/layer.tar")
    member.type = kind
    member.linkname = target
    path = tmp_path / "links.tar"
    _raw_tar(path, member)
    result = cli("import", "--archive", str(path))
    assert result.exit_code == 1 and message in result.stderr


def test_symlinked_duplicate_layers_as_docker_writes_them(cli, tmp_path: Path) -> None:
    """20.10 writes a repeated layer once and symlinks the other <id>/layer.tar to it."""
    good = build_legacy_archive(tmp_path / "g.tar", [LAYERS[0], LAYERS[2], LAYERS[0]])
    members = _members(good.path)
    manifest = json.loads(members["manifest.json"])
    first, _, third = manifest[0]["Layers"]
    assert first == third  # same content, same path in this builder: make it a link instead
    manifest[0]["Layers"][2] = "dup/layer.tar"
    members["manifest.json"] = json.dumps(manifest).encode()
    path = tmp_path / "linked.tar"
    write_tar(path, members)
    with tarfile.open(path, "a") as tar:
        link = tarfile.TarInfo("dup/layer.tar")
        link.type = tarfile.SYMTYPE
        link.linkname = "../" + first
        tar.addfile(link)
    result = cli("import", "--archive", str(path), "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["images"][0]["diff_ids"] == good.diff_ids


def test_missing_archive_file(cli, tmp_path) -> None:
    result = cli("import", "--archive", str(tmp_path / "nope.tar"))
    assert result.exit_code == 1 and "nope.tar" in result.stderr


def test_import_archive_error_type(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError):
        import_archive(store, io.BytesIO(b""))


def test_a_gzip_compressed_archive_imports_like_docker_load_takes_it(
    cli, cache_dir, tmp_path, archive
) -> None:
    import gzip

    image, _ = archive
    compressed = tmp_path / "image.tar.gz"
    compressed.write_bytes(gzip.compress(image.path.read_bytes()))
    result = cli("import", "--archive", str(compressed), "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["images"][0]["diff_ids"] == image.diff_ids
    # And from a pipe, as `docker save IMAGE | gzip` gives it.
    args = ["--cache-dir", str(cache_dir), "import", "--archive", "-", "--format", "json"]
    done = subprocess.run(
        [sys.executable, "-m", "packcache", *args],
        input=compressed.read_bytes(),
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["layers_known"] == len(set(image.diff_ids))


def test_a_damaged_gzip_archive_is_rejected_and_cache_unchanged(cli, cache_dir, tmp_path):
    import gzip

    image = build_legacy_archive(tmp_path / "x.tar", LAYERS, repo_tag="x:1")
    data = bytearray(gzip.compress(image.path.read_bytes()))
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    damaged = tmp_path / "x.tar.gz"
    damaged.write_bytes(bytes(data))
    Store.open(cache_dir)
    before = snapshot(cache_dir)
    result = cli("import", "--archive", str(damaged))
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("packcache: error: the archive's gzip compression is damaged"), line
    assert snapshot(cache_dir) == before
    assert list((cache_dir / "ingest").iterdir()) == []
