"""The JSON of every command has exactly the keys README documents as stable."""

from __future__ import annotations

import dataclasses
import json

from packcache import render
from tests.conftest import add_image
from tests.layers import random_tar

LS = {
    "diff_id",
    "digests",
    "size",
    "uncompressed_size",
    "compression",
    "images",
    "first_seen",
    "last_used",
    "access_count",
}
DU = {"layers", "size", "uncompressed_size", "partial_files", "partial_size", "images"}
DU_IMAGE = {
    "config_digest",
    "image_ids",
    "refs",
    "layers",
    "cached_layers",
    "size",
    "shared_size",
    "unique_size",
}
EVICTED = {"diff_id", "digest", "size"}
RM = {"dry_run", "removed", "reclaimed"}
PRUNE = RM | {"size_before", "size_after", "in_use"}
IMPORT = {
    "images",
    "layers_written",
    "layers_known",
    "bytes_read",
    "bytes_written",
    "already_cached",
    "from_launch_cache",
}
IMPORT_IMAGE = {"config_digest", "manifest_digest", "refs", "diff_ids"}
LOAD = {
    "image_id",
    "tags",
    "layers_sent",
    "layers_reused",
    "bytes_sent",
    "full_reload",
    "seconds",
    "load_method",
    "manifest_size",
    "layer_sources",
    "launch_cache_problems",
}
REBASE = {
    "image",
    "tag",
    "old_image_id",
    "new_image_id",
    "run_image",
    "run_image_id",
    "method",
    "dry_run",
    "run_image_fetch",
    "app_image_fetch",
    "app_layers",
    "layers_sent",
    "layers_reused",
    "bytes_sent",
    "manifest_size",
    "saved",
    "layer_sources",
    "launch_cache_problems",
    "config_from_save",
    "load_method",
    "timings",
}
CREATE_BUILDER = {
    "name",
    "dry_run",
    "no_cache",
    "image_id",
    "config_digest",
    "diff_ids",
    "buildpacks",
    "imported",
    "layers_written",
    "layers_streamed",
    "load",
    "warnings",
    "seconds",
    "tags",
    "pull_policy",
    "pulled",
    "published",
}
BUILDPACK = {"id", "version", "source", "kind", "diff_id", "reused", "module"}
VERIFY = {
    "checked",
    "missing",
    "corrupt",
    "unreadable",
    "orphans",
    "stale_ingest",
    "unremoved",
    "repaired",
    "ok",
}
INFO = {
    "launch_caches",
    "cache_dir",
    "index",
    "schema_revision",
    "layers",
    "size",
    "uncompressed_size",
    "images",
    "refs",
    "digests",
    "leases",
    "max_size",
    "partial_files",
    "partial_size",
}


def test_ls_and_du(cli, two_images) -> None:
    rows = cli("ls", "--format", "json").json()
    assert rows and all(set(row) == LS for row in rows)
    assert all(row["first_seen"].endswith("Z") for row in rows)
    usage = cli("du", "--format", "json").json()
    assert set(usage) == DU
    assert usage["images"] and all(set(image) == DU_IMAGE for image in usage["images"])


def test_prune_and_rm(cli, two_images) -> None:
    _, (_, app_ids) = two_images
    result = cli("prune", "--image", "base:1", "--dry-run", "--format", "json").json()
    assert set(result) == PRUNE
    assert result["dry_run"] is True and result["removed"]
    assert all(set(layer) == EVICTED for layer in result["removed"])
    assert result["reclaimed"] == sum(layer["size"] for layer in result["removed"])
    assert result["size_after"] == result["size_before"] - result["reclaimed"]
    removed = cli("rm", "app:1", "--format", "json").json()
    assert set(removed) == RM
    assert removed["dry_run"] is False
    assert {layer["diff_id"] for layer in removed["removed"]} == set(app_ids[2:])
    assert all(set(layer) == EVICTED for layer in removed["removed"])
    assert all(layer["digest"].startswith("sha256:") for layer in removed["removed"])
    assert removed["reclaimed"] == sum(layer["size"] for layer in removed["removed"]) > 0


def test_verify_and_info(cli, two_images) -> None:
    report = cli("verify", "--format", "json").json()
    assert set(report) == VERIFY and report["ok"] is True and report["checked"] == 4
    assert set(cli("info", "--format", "json").json()) == INFO


def test_import(cli, tmp_path) -> None:
    from tests.engines.images import build_legacy_archive

    archive = build_legacy_archive(tmp_path / "x.tar", [{"x.txt": b"x\n"}], repo_tag="x:1")
    report = cli("import", "--archive", str(archive.path), "--format", "json").json()
    assert set(report) == IMPORT
    [image] = report["images"]
    assert set(image) == IMPORT_IMAGE
    assert image["refs"] == ["x:1"] and report["layers_written"] == 1


def test_the_reports_of_the_engine_commands_are_their_fields() -> None:
    """load, rebase and create-builder print their dataclasses whole; their fields are the keys
    (the engine tests check the values)."""
    from packcache.operations.create_builder import BuildpackReport, CreateBuilderReport
    from packcache.operations.loading import LoadReport
    from packcache.operations.rebase import RebaseReport

    for report_class, keys in [
        (LoadReport, LOAD),
        (RebaseReport, REBASE),
        (CreateBuilderReport, CREATE_BUILDER),
        (BuildpackReport, BUILDPACK),
    ]:
        assert {field.name for field in dataclasses.fields(report_class)} == keys
    load = LoadReport("sha256:1", ["a:1"], 1, 2, 3, False, 0.5)
    buildpack = BuildpackReport("bp", "1", "docker://bp", "image", "sha256:2", True)
    builder = CreateBuilderReport(
        "b:1", False, False, "sha256:3", "sha256:4", ["sha256:2"], [buildpack], [], 0, load
    )
    data = json.loads(render.report_json(builder))
    assert set(data) == CREATE_BUILDER
    assert set(data["load"]) == LOAD and set(data["buildpacks"][0]) == BUILDPACK
    assert data == dataclasses.asdict(builder)


def test_a_many_image_layer_lists_every_image_in_json(cli, store, two_images) -> None:
    base_layers = [random_tar(50_000, seed=b"base0"), random_tar(70_000, seed=b"base1")]
    for n in range(5):
        add_image(store, [*base_layers, random_tar(900, seed=b"x%d" % n)], [f"x:{n}"])
    text = cli("ls", "--format", "json").stdout
    rows = json.loads(text)
    assert max(len(row["images"]) for row in rows) == 7
    assert text.splitlines()[1:-1] == [json.dumps(row) + "," for row in rows[:-1]] + [
        json.dumps(rows[-1])
    ]  # one layer a line
