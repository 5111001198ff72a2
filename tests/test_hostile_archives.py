"""Archives built to hurt: odd encodings, wrong types, huge headers, bombs, many entries.

Each is refused with one `packcache: error:` line (or, for a bomb layer, imported in bounded
memory), and a refused archive leaves the cache exactly as it was.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from packcache.digest import GzipMembers, GzipTrailingGarbageError, decompression_errors
from packcache.store.store import Store
from tests.archives import (
    FILL_BLOCK,
    GzipTarWriter,
    build_oci_archive,
    oci_members,
    write_zero_layer,
    zero_layer_header,
    zero_layer_tar_digest,
)
from tests.engines.images import build_legacy_archive, layer_tar, write_tar
from tests.layers import sha256
from tests.test_cli import snapshot

REF = "io.containerd.image.name"
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


def _oci_with_index(tmp_path: Path, make_index: Callable[[dict], list[dict]]) -> Path:
    """The OCI archive with index.json listing `make_index(manifest descriptor)`."""
    path = tmp_path / "oci.tar"
    build_oci_archive(path, LAYERS, "odd:1")
    members = _members(path)
    [descriptor] = json.loads(members["index.json"])["manifests"]
    manifests = make_index(descriptor)
    for document in [m.pop("document") for m in manifests if "document" in m]:
        members[f"blobs/sha256/{sha256(document)[7:]}"] = document
    members["index.json"] = json.dumps({"schemaVersion": 2, "manifests": manifests}).encode()
    write_tar(path, members)
    return path


def test_an_index_naming_one_manifest_under_two_names_records_both(cli, seeded, tmp_path):
    def two_names(descriptor: dict) -> list[dict]:
        other = {**descriptor, "annotations": {REF: "docker.io/library/other:2"}}
        return [descriptor, other]

    path = _oci_with_index(tmp_path, two_names)
    assert cli("import", "--archive", str(path)).exit_code == 0
    images = cli("du", "--format", "json").json()["images"]
    assert ["odd:1", "other:2"] in [sorted(image["refs"]) for image in images]


def test_an_index_multiplying_its_manifests_is_refused(cli, seeded, tmp_path) -> None:
    """400 names of a nested index that names the manifest 400 times: 160,000 to visit."""

    def multiplied(descriptor: dict) -> list[dict]:
        nested = json.dumps({"schemaVersion": 2, "manifests": [descriptor] * 400}).encode()
        nested_descriptor = {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": sha256(nested),
            "size": len(nested),
        }
        return [{**nested_descriptor, "document": nested}] + [dict(nested_descriptor)] * 399

    path = _oci_with_index(tmp_path, multiplied)
    assert_refused_and_cache_unchanged(cli, seeded, path, "names over 100,000 manifests")


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


# -- memory: archives shaped to make a reader hold too much, run through the real CLI ----------

PEAK_RSS_BOUND = 300 << 20  # generous: guards against unbounded growth, not against bloat

_MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps([done.returncode, done.stdout, done.stderr, peak]))
"""


def import_measured(cache_dir: Path, archive: Path) -> tuple[int, str, str, int]:
    """Run `packcache import --archive` as its own process, under a fresh wrapper process whose
    only child it is; return its exit code, output and peak resident memory in bytes."""
    command = [sys.executable, "-m", "packcache", "--cache-dir", str(cache_dir)]
    command += ["import", "--archive", str(archive)]
    wrapper = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, check=True
    )
    returncode, stdout, stderr, peak = json.loads(wrapper.stdout)
    print(f"peak RSS of importing {archive.name}: {peak / (1 << 20):.0f} MiB")
    return returncode, stdout, stderr, peak


def assert_refused_in_bounded_memory(cli, cache_dir: Path, archive: Path, message: str) -> int:
    before = snapshot(cache_dir)
    returncode, _, stderr, peak = import_measured(cache_dir, archive)
    assert returncode == 1, stderr
    [line] = stderr.splitlines()
    assert line.startswith("packcache: error: ") and message in line, line
    assert peak < PEAK_RSS_BOUND
    assert snapshot(cache_dir) == before
    assert list((cache_dir / "ingest").iterdir()) == []
    assert cli("verify", cache=cache_dir).exit_code == 0
    return peak


def test_many_small_files_expanding_past_a_gigabyte_are_refused(cli, seeded, tmp_path) -> None:
    """1,100 files of 1 MiB (not layers, so each would be held until manifest.json)."""
    path = tmp_path / "small-files.tar.gz"
    with open(path, "wb") as out:
        writer = GzipTarWriter(out)
        for i in range(1100):
            writer.entry_header(f"junk/{i:05}", FILL_BLOCK)
            writer.filled(FILL_BLOCK)
        writer.end()
    assert writer.expanded > 1 << 30 and path.stat().st_size < 2 << 20
    assert_refused_in_bounded_memory(cli, seeded, path, "more than 64 MiB")


def test_many_entries_with_long_names_are_refused(cli, seeded, tmp_path) -> None:
    """150,000 empty files, each named by a 2,000-byte GNU long name."""
    # The names differ in their last digits only, which only the long-name blocks hold: the
    # headers around them are the same for every entry.
    template = tarfile.TarInfo("n" * 1993 + "0000000").tobuf(tarfile.GNU_FORMAT)
    long_name_header, name, header = template[:512], template[512:-512], template[-512:]
    path = tmp_path / "many-entries.tar.gz"
    with open(path, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as gz:
        for i in range(150_000):
            gz.write(long_name_header + name[:1993] + b"%07d" % i + name[2000:] + header)
        gz.write(bytes(1024))
    assert path.stat().st_size < 4 << 20
    assert_refused_in_bounded_memory(cli, seeded, path, "more than 64 MiB")


def test_more_entries_than_the_cap_are_refused(cli, seeded: Path, tmp_path: Path) -> None:
    # One header, its name's digits and checksum rewritten for each entry.
    template = tarfile.TarInfo("d0000000").tobuf(tarfile.USTAR_FORMAT)
    base = sum(template[:148]) + sum(template[156:]) + 8 * ord(" ") - sum(b"0000000")
    path = tmp_path / "entries.tar"
    with open(path, "wb") as out:
        for i in range(100_001):
            digits = b"%07d" % i
            checksum = b"%06o\0 " % (base + sum(digits))
            out.write(template[:1] + digits + template[8:148] + checksum + template[156:])
        out.write(bytes(1024))
    assert_refused_and_cache_unchanged(cli, seeded, path, "more than 100,000 entries")


HUGE_HEADER = 400 << 20


def _huge_pax_header(writer: GzipTarWriter) -> None:
    """A PAX header of one record, "<length> path=aaa...\\n", HUGE_HEADER bytes long."""
    prefix = f"{HUGE_HEADER} path=".encode()
    writer.entry_header("././@PaxHeader", HUGE_HEADER, tarfile.XHDTYPE)
    writer.raw(prefix)
    writer.filled(HUGE_HEADER - len(prefix), b"a", last=b"\n")


def _huge_long_name(writer: GzipTarWriter) -> None:
    writer.entry_header("././@LongLink", HUGE_HEADER, tarfile.GNUTYPE_LONGNAME)
    writer.filled(HUGE_HEADER, b"a", last=b"\0")


@pytest.mark.parametrize("header", [_huge_pax_header, _huge_long_name], ids=["pax", "gnu"])
def test_a_huge_extended_header_is_refused(cli, seeded: Path, tmp_path: Path, header) -> None:
    path = tmp_path / "huge-header.tar.gz"
    with open(path, "wb") as out:
        writer = GzipTarWriter(out)
        header(writer)
        writer.file("manifest.json", b"[]")
        writer.end()
    assert path.stat().st_size < 2 << 20
    assert_refused_in_bounded_memory(cli, seeded, path, "header of 419,430,400 bytes")


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([(tarfile.XHDTYPE, 600_000), (tarfile.GNUTYPE_LONGNAME, 600_000)], "over 1 MiB"),
        ([(tarfile.XGLTYPE, 600_000)] * 2, "over 1 MiB"),
        ([(tarfile.GNUTYPE_LONGNAME, 100)] * 9, "9 extended headers in a row"),
    ],
    ids=["chain over the cap", "global headers over the cap", "long chain"],
)
def test_extended_headers_adding_up_are_refused(cli, seeded, tmp_path, headers, message):
    path = tmp_path / "chain.tar"
    with open(path, "wb") as out:
        for kind, size in headers:
            info = tarfile.TarInfo("././@LongLink")
            info.type, info.size = kind, size
            out.write(info.tobuf(tarfile.USTAR_FORMAT))
            record = b"%d a=" % size  # a PAX record of `size` bytes (also a valid long name)
            out.write(record + b"b" * (size - len(record) - 1) + b"\n" + bytes(-size % 512))
        out.write(tarfile.TarInfo("x").tobuf(tarfile.USTAR_FORMAT) + bytes(1024))
    assert_refused_and_cache_unchanged(cli, seeded, path, message)


def _header_with_size_field(kind: bytes, field: bytes) -> bytes:
    """A tar header whose 12-byte size field is `field`, as written (checksum made right)."""
    header = bytearray(tarfile.TarInfo("././@LongLink").tobuf(tarfile.USTAR_FORMAT))
    header[156:157] = kind
    header[124:136] = field
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


@pytest.mark.parametrize(
    ("kind", "field", "message"),
    [
        (tarfile.GNUTYPE_LONGNAME, b"7777777777\0x", "header of 1,073,741,823 bytes"),
        (tarfile.GNUTYPE_LONGNAME, b"\x80" + (1 << 40).to_bytes(11, "big"), "1,099,511,627,776"),
        (tarfile.GNUTYPE_LONGNAME, b"\xff" * 12, "negative size"),
        (tarfile.REGTYPE, b"\xff" * 11 + b"\x00", "negative size"),
    ],
    ids=["octal cut at a NUL", "base-256", "negative long name", "negative file"],
)
def test_header_sizes_are_read_as_tarfile_reads_them(cli, seeded, tmp_path, kind, field, message):
    path = tmp_path / "sizes.tar"
    path.write_bytes(_header_with_size_field(kind, field) + bytes(4096))
    assert_refused_and_cache_unchanged(cli, seeded, path, message)


def test_a_pax_header_of_digits_is_refused(cli, seeded: Path, tmp_path: Path) -> None:
    """Python's tarfile (before 3.11.10) searches a PAX header in time quadratic in its
    longest run of digits: 64 KiB of them would hold the CPU for minutes, 1 MiB for hours."""
    size = 64 << 10
    record = b"%d path=" % size
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, size
    path = tmp_path / "digits.tar"
    path.write_bytes(
        info.tobuf(tarfile.USTAR_FORMAT)
        + record
        + b"1" * (size - len(record) - 1)
        + b"\n"
        + tarfile.TarInfo("x").tobuf(tarfile.USTAR_FORMAT)
        + bytes(1024)
    )
    assert_refused_and_cache_unchanged(cli, seeded, path, "run of over 64 digits")


@pytest.mark.parametrize("form", ["gnu", "pax-1.0"])
def test_sparse_files_are_refused(cli, seeded: Path, tmp_path: Path, form: str) -> None:
    """tarfile reads the map of a sparse file of any length it declares: never asked to."""
    path = tmp_path / "sparse.tar"
    info = tarfile.TarInfo("sparse")
    if form == "gnu":
        info.type = tarfile.GNUTYPE_SPARSE
        header = info.tobuf(tarfile.GNU_FORMAT)
    else:
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
        header = info.tobuf(tarfile.PAX_FORMAT)
    path.write_bytes(header + b"99999999\n" + bytes(2048))
    assert_refused_and_cache_unchanged(cli, seeded, path, "sparse file")


BOMB_SIZE = 2 << 30
DISK_BOMB_SIZE = 1 << 30  # written out uncompressed: a smaller one shows the same


def test_a_gzip_bomb_layer_streams_in_bounded_memory(cli, seeded, tmp_path: Path) -> None:
    """A 2 MB gzip layer blob expanding to 2 GiB of zeros: it is stored as it came (2 MB),
    decompressed only to hash it, one bounded piece at a time."""
    header, diff_id = zero_layer_tar_digest(BOMB_SIZE)
    blob = io.BytesIO()
    write_zero_layer(GzipTarWriter(blob), header, BOMB_SIZE)
    members, _, _ = oci_members([blob.getvalue()], [diff_id], "bomb:1")
    path = tmp_path / "bomb.tar"
    write_tar(path, members)
    returncode, _, stderr, peak = import_measured(seeded, path)
    assert returncode == 0, stderr
    assert peak < PEAK_RSS_BOUND
    [row] = cli("ls", "--image", "bomb:1", "--format", "json").json()
    assert row["diff_id"] == diff_id
    assert cli("verify").exit_code == 0


def test_a_zstd_bomb_layer_with_the_largest_window_streams_in_bounded_memory(
    cli, seeded, tmp_path: Path
) -> None:
    """65 KB of zstd expanding to 2 GiB, framed with a 128 MiB window (the most the
    decompressor accepts): one window and a piece at a time in memory."""
    header, diff_id = zero_layer_tar_digest(BOMB_SIZE)
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=27)
    blob = io.BytesIO()
    compressor = zstandard.ZstdCompressor(compression_params=params)
    with compressor.stream_writer(blob, closefd=False) as writer:
        writer.write(header)
        for _ in range(BOMB_SIZE // FILL_BLOCK):
            writer.write(bytes(FILL_BLOCK))
        writer.write(bytes(2 * tarfile.BLOCKSIZE))
    members, _, _ = oci_members([blob.getvalue()], [diff_id], "zbomb:1", gzip_layers=False)
    path = tmp_path / "zbomb.tar"
    write_tar(path, members)
    returncode, _, stderr, peak = import_measured(seeded, path)
    assert returncode == 0, stderr
    assert peak < PEAK_RSS_BOUND
    [row] = cli("ls", "--image", "zbomb:1", "--format", "json").json()
    assert (row["diff_id"], row["compression"]) == (diff_id, "zstd")


def test_a_bomb_layer_in_a_compressed_archive_streams_to_disk_and_is_cleaned_up(
    cli, tmp_path: Path
) -> None:
    """A 1 MB .tar.gz whose uncompressed layer.tar is 1 GiB of zeros is written to ingest/ as
    it streams (disk use is bounded by the archive's expanded size, memory is not touched);
    its config names another diffID, so the import is refused and ingest/ emptied."""
    on_tmpfs = Path("/dev/shm").is_dir()
    cache_dir = (Path(tempfile.mkdtemp(dir="/dev/shm")) if on_tmpfs else tmp_path) / "cache"
    try:
        header = zero_layer_header(DISK_BOMB_SIZE)
        config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha256(b"other")]}})
        config_name = sha256(config.encode())[7:] + ".json"
        manifest = [{"Config": config_name, "RepoTags": ["bomb:1"], "Layers": ["l/layer.tar"]}]
        path = tmp_path / "bomb.tar.gz"
        with open(path, "wb") as out:
            writer = GzipTarWriter(out)
            writer.entry_header("l/layer.tar", len(header) + DISK_BOMB_SIZE + 1024)
            write_zero_layer(writer, header, DISK_BOMB_SIZE)
            writer.file(config_name, config.encode())
            writer.file("manifest.json", json.dumps(manifest).encode())
            writer.end()
        assert path.stat().st_size < 4 << 20
        Store.open(cache_dir)
        assert_refused_in_bounded_memory(cli, cache_dir, path, "does not match its diffID")
    finally:
        if on_tmpfs:
            shutil.rmtree(cache_dir.parent)


# -- gzip that ends early, or goes on after its end ------------------------------------------

GZIP_ENDINGS = {
    # suffix after a good gzip stream (None: cut the stream short instead) -> error, or None
    "garbage": (b"not gzip at all", "trailing garbage after the gzip stream"),
    "one byte of garbage": (b"g", "trailing garbage after the gzip stream"),
    "half a gzip magic": (b"\x1f", "trailing garbage after the gzip stream"),
    "truncated in the data": (-200, "truncated"),
    "truncated in the trailer": (-3, "truncated"),
    "another member": (b"member", None),
}


def _ended(stream: bytes, ending: bytes | int) -> bytes:
    if isinstance(ending, int):
        return stream[:ending]
    if ending == b"member":
        return stream + gzip.compress(b"")
    return stream + ending


@pytest.mark.parametrize("case", GZIP_ENDINGS)
@pytest.mark.parametrize("step", [1, 7, 1 << 20], ids=["bytewise", "7 bytes", "whole"])
def test_gzip_members_tell_truncation_from_trailing_garbage(case: str, step: int) -> None:
    ending, message = GZIP_ENDINGS[case]
    plain = os.urandom(3000) * 20
    stream = _ended(gzip.compress(plain), ending)
    members = GzipMembers()
    out = []
    with pytest.raises(decompression_errors()) if message else contextlib.nullcontext() as caught:
        for i in range(0, len(stream), step):
            out.extend(members.inflate(stream[i : i + step]))
        out.append(members.finish())
    if message:
        assert message in str(caught.value)
    else:
        assert b"".join(out) == plain


def test_gzip_members_zero_padding_only_where_asked() -> None:
    stream = gzip.compress(b"data") + bytes(100)
    padded = GzipMembers(zero_padding=True)
    assert b"".join([*padded.inflate(stream), padded.finish()]) == b"data"
    strict = GzipMembers()
    with pytest.raises(GzipTrailingGarbageError):
        list(strict.inflate(stream))


@pytest.mark.parametrize("case", GZIP_ENDINGS)
@pytest.mark.parametrize("size", [50_000, 3 << 20], ids=["held", "streamed"])
def test_a_gzip_layer_in_an_archive_that_ends_oddly(cli, seeded, tmp_path, case, size) -> None:
    tar = layer_tar({"f": os.urandom(size)})
    blob = _ended(gzip.compress(tar), GZIP_ENDINGS[case][0])
    members, _, _ = oci_members([blob], [sha256(tar)], "ending:1")
    path = tmp_path / "layer-ending.tar"
    write_tar(path, members)
    message = GZIP_ENDINGS[case][1]
    if message is None:
        assert cli("import", "--archive", str(path)).exit_code == 0
        return
    assert_refused_and_cache_unchanged(cli, seeded, path, "a layer in the archive is damaged")
    assert_refused_and_cache_unchanged(cli, seeded, path, message)


@pytest.mark.parametrize("case", [*GZIP_ENDINGS, "zero padding"])
def test_a_gzip_compressed_archive_that_ends_oddly(cli, seeded, tmp_path, case) -> None:
    image = build_legacy_archive(tmp_path / "x.tar", LAYERS, repo_tag="ending:1")
    ending, message = (bytes(1000), None) if case == "zero padding" else GZIP_ENDINGS[case]
    path = tmp_path / "x.tar.gz"
    path.write_bytes(_ended(gzip.compress(image.path.read_bytes()), ending))
    if message is None:
        assert cli("import", "--archive", str(path)).exit_code == 0
        assert cli("ls", "--image", "ending:1").exit_code == 0
        return
    assert_refused_and_cache_unchanged(cli, seeded, path, message)
    # From a pipe, as `docker save | gzip` gives it, too.
    args = ["--cache-dir", str(seeded), "import", "--archive", "-"]
    done = subprocess.run(
        [sys.executable, "-m", "packcache", *args], input=path.read_bytes(), capture_output=True
    )
    assert done.returncode == 1
    [line] = done.stderr.decode().splitlines()
    assert line.startswith("packcache: error:") and message in line, line


# -- damage anywhere: never a traceback -------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True], ids=["tar", "tar.gz"])
def test_damaged_archives_give_one_line_never_a_traceback(cli, seeded, tmp_path, compressed):
    """Bytes overwritten or cut at random places (fixed seeds): whatever the parser meets,
    the import succeeds or fails with one line, and a failure changes nothing."""
    image = build_legacy_archive(tmp_path / "x.tar", LAYERS, repo_tag="damaged:1")
    good = image.path.read_bytes()
    if compressed:
        good = gzip.compress(good, mtime=0)
    rng = random.Random(12)
    path = tmp_path / "damaged"
    before = snapshot(seeded)
    for _ in range(60):
        data = bytearray(good)
        at = rng.randrange(len(data))
        if rng.random() < 0.3:
            del data[at:]
        else:
            data[at : at + rng.choice([1, 4, 64])] = rng.randbytes(rng.choice([1, 4, 64]))
        path.write_bytes(bytes(data))
        result = cli("import", "--archive", str(path))  # the fixture raises what was not caught
        if result.exit_code == 0:
            cli("rm", "damaged:1")
            continue
        assert result.exit_code == 1
        [line] = result.stderr.splitlines()
        assert line.startswith("packcache: error: "), line
        assert snapshot(seeded) == before
