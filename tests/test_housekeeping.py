"""operations/housekeeping.py: `rm`'s choices and the size cap around commands that add data."""

from __future__ import annotations

import pytest

from packcache.errors import NotFoundError, UsageError
from packcache.operations.housekeeping import remove, size_capped
from packcache.store.store import Store
from tests.conftest import add_image
from tests.layers import random_tar
from tests.test_cli import snapshot


def three_images(store: Store) -> None:
    for seed in range(3):
        add_image(
            store, [random_tar(40_000, seed=bytes([seed]))], [f"img:{seed}"], compression="none"
        )


def test_the_cap_is_read_before_and_enforced_after(store, cache_dir, monkeypatch) -> None:
    monkeypatch.setenv("PACKCACHE_MAX_SIZE", "100K")
    ran = []
    with size_capped(store):
        three_images(store)
        ran.append(True)
    assert ran
    with store.db.read() as conn:
        on_disk = conn.execute("SELECT COALESCE(SUM(blob_size), 0) FROM layers").fetchone()[0]
    assert 0 < on_disk <= 100_000


def test_a_bad_cap_stops_the_command_before_its_body(store, cache_dir, monkeypatch) -> None:
    monkeypatch.setenv("PACKCACHE_MAX_SIZE", "lots")
    before = snapshot(cache_dir)
    with pytest.raises(UsageError, match="PACKCACHE_MAX_SIZE"), size_capped(store):
        pytest.fail("the body ran with a bad size cap")
    assert snapshot(cache_dir) == before


def test_a_failed_command_is_not_followed_by_a_prune(store, cache_dir, monkeypatch) -> None:
    three_images(store)
    monkeypatch.setenv("PACKCACHE_MAX_SIZE", "0")
    before = snapshot(cache_dir)
    with pytest.raises(RuntimeError), size_capped(store):
        raise RuntimeError("the command failed")
    assert snapshot(cache_dir) == before


def test_remove_resolves_every_name_before_removing(store, cache_dir, two_images) -> None:
    before = snapshot(cache_dir)
    with pytest.raises(NotFoundError, match="nope"):
        remove(store, ["app:1", "base:1"], ["nope"])
    with pytest.raises(NotFoundError, match="nope:2"):
        remove(store, ["app:1", "nope:2"], [])
    assert snapshot(cache_dir) == before


def test_remove_an_image_and_a_layer_it_used_alone(store, two_images) -> None:
    (_, base_ids), (_, app_ids) = two_images
    report = remove(store, ["app:1"], [app_ids[3], base_ids[0]])
    assert sorted(layer.diff_id for layer in report.removed) == sorted(
        [app_ids[2], app_ids[3], base_ids[0]]
    )
    assert report.reclaimed == sum(layer.blob_size for layer in report.removed)
    assert not report.dry_run


@pytest.mark.parametrize("command", [["load", "x:1"], ["rebase", "x:1"]])
def test_a_bad_cap_stops_a_daemon_command_before_the_daemon(
    cli, cache_dir, store, tmp_path, monkeypatch, command
) -> None:
    monkeypatch.setenv("PACKCACHE_MAX_SIZE", "lots")
    before = snapshot(cache_dir)
    result = cli("--host", f"unix://{tmp_path}/no-daemon.sock", *command)
    assert result.exit_code == 2, result.stderr
    assert "PACKCACHE_MAX_SIZE" in result.stderr and len(result.stderr.splitlines()) == 1
    assert snapshot(cache_dir) == before
