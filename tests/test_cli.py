"""The cache commands, through the CLI runner."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import pytest

from packcache.store.database import HEAD_REVISION
from packcache.store.store import Store
from tests.conftest import add_image
from tests.layers import random_tar


def snapshot(cache_dir) -> dict[str, object]:
    """Every file of the cache with its bytes, and the index's rows, to assert "unchanged".

    The index is compared by content: a command that only takes and drops a lease rewrites
    pages of the file without changing what it says.
    """
    files: dict[str, object] = {
        str(p.relative_to(cache_dir)): p.read_bytes()
        for p in sorted(cache_dir.rglob("*"))
        if p.is_file() and not p.name.startswith("index.db")
    }
    if (cache_dir / "index.db").exists():
        with closing(sqlite3.connect(cache_dir / "index.db")) as conn:
            files["index.db"] = list(conn.iterdump())
    return files


def test_ls_lists_every_layer_with_its_images(cli, two_images) -> None:
    (_, base_ids), (_, app_ids) = two_images
    rows = cli("ls", "--format", "json").json()
    assert {r["diff_id"] for r in rows} == set(app_ids)
    by_id = {r["diff_id"]: r for r in rows}
    assert by_id[base_ids[0]]["images"] == ["app:1", "base:1"]
    assert by_id[app_ids[3]]["images"] == ["app:1"]
    assert all(r["compression"] == "gzip" and len(r["digests"]) == 1 for r in rows)
    table = cli("ls")
    assert table.exit_code == 0
    assert table.stdout.splitlines()[0].split() == [
        "DIFF",
        "ID",
        "DIGESTS",
        "SIZE",
        "IMAGES",
        "LAST",
        "USED",
    ]
    assert len(table.stdout.splitlines()) == 5
    assert "seconds ago" in table.stdout or "now" in table.stdout


def test_ls_image_shows_exactly_its_layers_in_order(cli, two_images) -> None:
    (base_digest, base_ids), (_, app_ids) = two_images
    assert [
        r["diff_id"] for r in cli("ls", "--image", "base:1", "--format", "json").json()
    ] == base_ids
    assert [
        r["diff_id"] for r in cli("ls", "--image", "app:1", "--format", "json").json()
    ] == app_ids
    by_short_id = cli("ls", "--image", base_digest[7:19], "--format", "json").json()
    assert [r["diff_id"] for r in by_short_id] == base_ids


def test_ls_table_names_one_image_and_counts_the_rest(cli, store, two_images) -> None:
    (_, base_ids), _ = two_images
    base_layers = [random_tar(50_000, seed=b"base0"), random_tar(70_000, seed=b"base1")]
    for n in range(4):  # five images on base:1's layers, plus base:1 and app:1
        add_image(store, [*base_layers, random_tar(1_000, seed=b"more%d" % n)], [f"more:{n}"])
    row = next(line for line in cli("ls").stdout.splitlines() if line.startswith(base_ids[0][7:19]))
    assert row.split()[4:6] == ["app:1", "+5"]  # as docker truncates: one name, then a count
    full = cli("ls", "--no-trunc").stdout.splitlines()
    row = next(line for line in full if line.startswith(base_ids[0]))  # the whole diffID
    assert "app:1,base:1,more:0,more:1,more:2,more:3" in row
    # JSON always names every image.
    by_id = {r["diff_id"]: r for r in cli("ls", "--format", "json").json()}
    assert len(by_id[base_ids[0]]["images"]) == 6


def test_ls_sort_by_size(cli, two_images) -> None:
    sizes = [r["size"] for r in cli("ls", "--sort", "size", "--format", "json").json()]
    assert sizes == sorted(sizes, reverse=True)


def test_du_reports_shared_and_unique_sizes(cli, cache_dir, two_images) -> None:
    usage = cli("du", "--format", "json").json()
    on_disk = sum(p.stat().st_size for p in (cache_dir / "blobs").rglob("*") if p.is_file())
    assert usage["size"] == on_disk
    assert usage["layers"] == 4
    images = {tuple(i["refs"]): i for i in usage["images"]}
    base, app_image = images[("base:1",)], images[("app:1", "registry.local/app:1")]
    assert base["unique_size"] == 0 and base["shared_size"] == base["size"]
    assert app_image["shared_size"] == base["size"]
    assert app_image["size"] + 0 == on_disk
    assert app_image["unique_size"] == on_disk - base["size"]
    table = cli("du").stdout
    assert "4 layers" in table and "SHARED SIZE" in table and "app:1" in table


def test_prune_max_size_evicts_least_recently_used(cli, store: Store, two_images) -> None:
    (_, base_ids), (_, app_ids) = two_images
    now = time.time()
    with store.db.write() as conn:  # make the order explicit: app layers oldest
        for age, diff_id in enumerate(reversed(app_ids)):
            conn.exec_driver_sql(
                "UPDATE layers SET last_access = ? WHERE diff_id = ?", (now - 100 * age, diff_id)
            )
    total = cli("du", "--format", "json").json()["size"]
    biggest = max(r["size"] for r in cli("ls", "--format", "json").json())
    dry = cli("prune", "--max-size", str(total - 1), "--dry-run", "--format", "json").json()
    assert [r["diff_id"] for r in dry["removed"]] == [base_ids[0]]
    assert cli("du", "--format", "json").json()["size"] == total, "dry run changes nothing"
    result = cli("prune", "--max-size", str(total - biggest - 1), "--format", "json").json()
    assert result["size_after"] <= total - biggest - 1
    assert result["removed"][0]["diff_id"] == base_ids[0]
    assert cli("du", "--format", "json").json()["size"] == result["size_after"]
    text = cli("prune", "--max-size", "0").stdout
    assert "Reclaimed" in text
    assert cli("du", "--format", "json").json() == {
        "layers": 0,
        "size": 0,
        "uncompressed_size": 0,
        "partial_files": 0,
        "partial_size": 0,
        "images": [],
    }


def test_prune_older_than(cli, store: Store, two_images) -> None:
    (_, base_ids), _ = two_images
    with store.db.write() as conn:
        conn.exec_driver_sql(
            "UPDATE layers SET last_access = ? WHERE diff_id = ?",
            (time.time() - 8 * 86400, base_ids[1]),
        )
    result = cli("prune", "--older-than", "7d", "--format", "json").json()
    assert [r["diff_id"] for r in result["removed"]] == [base_ids[1]]
    assert cli("prune", "--older-than", "7d", "--format", "json").json()["removed"] == []


def test_prune_image_and_all(cli, two_images) -> None:
    (_, base_ids), _ = two_images
    result = cli("prune", "--image", "base:1", "--format", "json").json()
    assert {r["diff_id"] for r in result["removed"]} == set(base_ids)
    # base:1 has no cached layer left, so the cache forgets it; app:1 keeps its own layers.
    assert [i["refs"] for i in cli("du", "--format", "json").json()["images"]] == [
        ["app:1", "registry.local/app:1"]
    ]
    assert cli("prune", "--all", "--format", "json").json()["reclaimed"] > 0
    assert cli("ls", "--format", "json").json() == []


def test_rm_image_keeps_shared_layers(cli, two_images) -> None:
    (_, base_ids), (_, app_ids) = two_images
    out = cli("rm", "app:1", "--format", "json").json()
    assert {r["diff_id"] for r in out["removed"]} == set(app_ids[2:])
    assert {r["diff_id"] for r in cli("ls", "--format", "json").json()} == set(base_ids)
    assert cli("ls", "--image", "app:1").exit_code == 1


def test_rm_layer(cli, two_images) -> None:
    (_, base_ids), _ = two_images
    assert cli("rm", "--layer", base_ids[0][7:20]).exit_code == 0
    assert base_ids[0] not in {r["diff_id"] for r in cli("ls", "--format", "json").json()}


def test_rm_names_of_the_same_image_or_layer_remove_it_once(cli, two_images) -> None:
    (_, base_ids), (_, app_ids) = two_images
    args = ["app:1", "registry.local/app:1", "--layer", app_ids[3][7:20], "--layer", app_ids[3]]
    out = cli("rm", *args, "--format", "json")
    assert out.exit_code == 0, out.stderr
    assert sorted(r["diff_id"] for r in out.json()["removed"]) == sorted(app_ids[2:])
    assert {r["diff_id"] for r in cli("ls", "--format", "json").json()} == set(base_ids)


def test_verify_finds_and_repairs_damage(cli, store: Store, cache_dir, two_images) -> None:
    assert cli("verify").stdout.strip().endswith("OK")
    (_, base_ids), (_, app_ids) = two_images
    corrupt = store.layer(app_ids[3])
    missing = store.layer(app_ids[2])
    os.chmod(store.blobs.path(corrupt.digest), 0o644)
    with open(store.blobs.path(corrupt.digest), "r+b") as handle:
        handle.seek(10)
        handle.write(b"XXXX")
    store.blobs.path(missing.digest).unlink()
    orphan = store.blobs.path("sha256:" + "ab" * 32)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"stray")
    stale = cache_dir / "ingest" / "somehost-1-abc.partial"
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    result = cli("verify", "--format", "json")
    assert result.exit_code == 1
    report = result.json()
    assert report["corrupt"] == [app_ids[3]]
    assert report["missing"] == [app_ids[2]]
    assert report["orphans"] == [str(orphan)]
    assert report["stale_ingest"] == [str(stale)]
    assert cli("verify", "--repair").exit_code == 0
    assert cli("verify").exit_code == 0
    assert {r["diff_id"] for r in cli("ls", "--format", "json").json()} == set(base_ids)


def test_info(cli, two_images) -> None:
    info = cli("info", "--format", "json").json()
    assert info["schema_revision"] == HEAD_REVISION
    assert (info["layers"], info["images"], info["refs"]) == (4, 2, 3)
    assert "cache dir:" in cli("info").stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["prune", "--max-size", "20X"], 2, "invalid size '20X'"),
        (["prune", "--max-size", "-5G"], 2, "invalid size"),
        (["prune", "--older-than", "7years"], 2, "invalid duration '7years'"),
        (["prune"], 2, "say what to prune"),
        (["prune", "--image", "nope:1"], 1, "no image 'nope:1'"),
        (["ls", "--image", "nope"], 1, "no image 'nope'"),
        (["ls", "--sort", "colour"], 2, "colour"),
        (["ls", "--format", "yaml"], 2, "yaml"),
        (["rm", "base:1", "nope"], 1, "no image 'nope'"),
        (["rm", "--layer", "ffff"], 1, "no layer 'ffff'"),
        (["rm"], 2, "name an image"),
    ],
)
def test_bad_input_fails_cleanly_and_changes_nothing(
    cli, cache_dir, two_images, args, code, message
) -> None:
    before = snapshot(cache_dir)
    result = cli(*args)
    assert result.exit_code == code
    assert message in result.stderr
    assert result.stdout == ""
    assert snapshot(cache_dir) == before


def test_foreign_or_unreadable_index_is_refused(cli, tmp_path) -> None:
    cache = tmp_path / "foreign"
    cache.mkdir()
    (cache / "index.db").write_bytes(b"this is not a database at all" * 10)
    result = cli("ls", cache=cache)
    assert result.exit_code == 1
    assert "not a packcache index (not an SQLite database)" in result.stderr
    assert (cache / "index.db").read_bytes() == b"this is not a database at all" * 10

    other = tmp_path / "other-app"
    other.mkdir()
    subprocess.run(
        [
            "python3",
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]);"
            " c.execute('create table users (id)'); c.commit()",
            str(other / "index.db"),
        ],
        check=True,
    )
    result = cli("du", cache=other)
    assert result.exit_code == 1
    assert "not a packcache index" in result.stderr and "users" in result.stderr


def test_index_from_a_newer_packcache_is_refused(cli, cache_dir, two_images) -> None:
    store = Store.open(cache_dir)
    with store.db.write() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    before = snapshot(cache_dir)
    result = cli("ls")
    assert result.exit_code == 1
    assert "newer packcache" in result.stderr
    assert snapshot(cache_dir) == before


def test_cache_dir_not_writable(cli, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = cli("du", cache=blocker / "cache")
    assert result.exit_code == 1
    assert "is not writable" in result.stderr


@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount")
def test_read_only_cache_dir(cli, tmp_path, two_images, cache_dir) -> None:
    # Root ignores permission bits, so make the cache truly read-only with a read-only bind mount.
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(cache_dir), str(ro)])
    if mounted.returncode != 0:
        pytest.skip("bind mounts are not allowed here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        result = cli("prune", "--all", cache=ro)
        assert result.exit_code == 1
        assert "not writable" in result.stderr
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert len(cli("ls", "--format", "json").json()) == 4


def test_help_documents_size_units(cli) -> None:
    out = cli("prune", "--help").stdout
    assert "powers of 1000" in out and "powers of 1024" in out


def test_size_cap_from_config_file(cli, cache_dir, store: Store, monkeypatch) -> None:
    from packcache.store.prune import configured_max_size, enforce_size_cap

    for seed in range(3):
        add_image(
            store, [random_tar(40_000, seed=bytes([seed]))], [f"img:{seed}"], compression="none"
        )
    (cache_dir / "config.toml").write_text('max-size = "110K"\n')
    result = enforce_size_cap(store, configured_max_size(store))
    assert result.size_after <= 110_000 and len(result.removed) == 1
    assert cli("info", "--format", "json").json()["max_size"] == 110_000
    monkeypatch.setenv("PACKCACHE_MAX_SIZE", "60KB")
    assert len(enforce_size_cap(store, configured_max_size(store)).removed) == 1
    monkeypatch.setenv("PACKCACHE_MAX_SIZE", "lots")
    result = cli("info")
    assert result.exit_code == 2 and "PACKCACHE_MAX_SIZE" in result.stderr


@pytest.mark.parametrize("setting", ["env", "config"])
def test_a_bad_size_cap_stops_an_import_before_it_changes_anything(
    cli, cache_dir, tmp_path, monkeypatch, setting: str
) -> None:
    from tests.engines.images import build_legacy_archive

    archive = build_legacy_archive(tmp_path / "x.tar", [{"x.txt": b"x\n"}], repo_tag="x:1")
    Store.open(cache_dir)
    if setting == "env":
        monkeypatch.setenv("PACKCACHE_MAX_SIZE", "lots")
    else:
        (cache_dir / "config.toml").write_text('max-size = "lots"\n')
    before = snapshot(cache_dir)
    result = cli("import", "--archive", str(archive.path))
    assert result.exit_code == 2
    assert "lots" in result.stderr and len(result.stderr.splitlines()) == 1
    assert snapshot(cache_dir) == before


def test_an_index_failure_is_one_error_not_a_traceback(
    cli, cache_dir, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from packcache.store.database import Database
    from tests.engines.images import build_legacy_archive

    archive = build_legacy_archive(tmp_path / "x.tar", [{"x.txt": b"x\n"}], repo_tag="x:1")
    Store.open(cache_dir)
    before = snapshot(cache_dir)

    def failing_write(self, **options):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Database, "write_plain", failing_write)
    result = cli("import", "--archive", str(archive.path))
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line == "packcache: error: the cache index failed: disk I/O error"
    assert snapshot(cache_dir) == before


def test_an_empty_cache_dir_is_refused_not_the_current_directory(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from packcache.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["--cache-dir", "", "ls"])
    assert result.exit_code == 2
    assert result.stderr == "packcache: error: --cache-dir is empty\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ls", "--format", "yaml"], "Invalid value for '--format': 'yaml' is not one of"),
        (["create-builder", "b:1"], "Missing option '--config'"),
        (["nosuch"], "No such command 'nosuch'"),
    ],
)
def test_usage_errors_of_the_command_are_one_line(cache_dir, args, message) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "packcache", "--cache-dir", str(cache_dir), *args],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"packcache: error: {message}"), line
