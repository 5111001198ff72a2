"""What users of docker, pack and uv expect of a command line: --format templates, tables,
--version, shell completion of cached image names, examples in help, errors that say what fixes
them. Through the CLI runner and the installed command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from packcache.cli import EXAMPLES, app
from packcache.tested import TESTED_ENGINES
from tests.engines.harness import ENGINE_KINDS

COMMANDS = sorted(typer.main.get_command(app).commands)


def packcache(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "packcache", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_ls_format_template_prints_one_line_per_layer(cli, two_images) -> None:
    _, (_, app_ids) = two_images
    rows = cli("ls", "--format", "json").json()
    out = cli("ls", "--format", '{{.DiffID}} {{.Size}} {{join .Images ","}}')
    assert out.exit_code == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"{row['diff_id']} {row['size']} {','.join(row['images'])}" for row in rows
    ]
    table = cli("ls", "--image", "app:1", "--format", "table {{.diff_id}}\\t{{.Compression}}")
    assert table.stdout.splitlines()[0] == "DIFF ID" + " " * 67 + "COMPRESSION"
    assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == app_ids


def test_du_info_and_prune_take_templates_too(cli, two_images) -> None:
    assert cli("du", "--format", "{{.Refs}}").stdout.splitlines() == [
        "[app:1 registry.local/app:1]",
        "[base:1]",
    ]
    info = cli("info", "--format", "{{.Layers}} layers in {{.CacheDir}}")
    assert (
        info.stdout.strip() == f"4 layers in {cli('info', '--format', 'json').json()['cache_dir']}"
    )
    dry = cli("prune", "--all", "--dry-run", "--format", "{{.DryRun}} {{len .Removed}}")
    assert dry.exit_code == 2 and "unknown function 'len'" in dry.stderr


def test_an_unknown_field_is_one_error_line(cache_dir, two_images) -> None:
    done = packcache("--cache-dir", str(cache_dir), "ls", "--format", "{{.Nope}}")
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("packcache: error: --format: no field .Nope; the fields are .diff_id")
    bad = packcache("--cache-dir", str(cache_dir), "ls", "--format", "{{join .Images}}")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert "takes 2 argument(s)" in bad.stderr


def test_du_and_ls_no_trunc(cli, two_images) -> None:
    (base_digest, _), _ = two_images
    assert "app:1 +1" in cli("du").stdout
    assert "app:1,registry.local/app:1" in cli("du", "--no-trunc").stdout
    assert base_digest in cli("du", "--no-trunc").stdout
    assert base_digest not in cli("du").stdout


def test_version() -> None:
    from packcache import __version__

    done = packcache("--version")
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == f"packcache {__version__}"
    assert lines[1].startswith(f"Python {sys.version.split()[0]}")
    assert lines[2].startswith("Tested with Docker Engine 20.10 (API 1.41; graphdriver)")


def test_the_tested_engines_are_the_test_suites_engines() -> None:
    """--version names exactly the kinds tests/engines starts: each release with its stores."""
    kinds = {
        (kind.version_prefix.rstrip("."), "containerd" if kind.containerd_store else "graphdriver")
        for kind in ENGINE_KINDS.values()
    }
    tested = {(e.version, store) for e in TESTED_ENGINES for store in e.image_stores}
    assert tested == kinds


def test_each_engine_reports_the_api_version_named(engine) -> None:
    [named] = [e for e in TESTED_ENGINES if engine.version.startswith(e.version + ".")]
    assert engine.api_version == named.api_version


def complete(words: str, cache: Path, cword: int | None = None) -> subprocess.CompletedProcess:
    parts = words.split(" ")
    return packcache(
        env={
            "_PACKCACHE_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(parts) - 1 if cword is None else cword),
            "PACKCACHE_DIR": str(cache),
        }
    )


def test_shell_completion_offers_cached_image_names(cache_dir, two_images) -> None:
    for words in ("packcache rm ", "packcache load ", "packcache ls --image "):
        done = complete(words, cache_dir)
        assert done.returncode == 0 and done.stderr == ""
        assert done.stdout.split() == ["app:1", "base:1", "registry.local/app:1"], words
    assert complete("packcache load reg", cache_dir).stdout.split() == ["registry.local/app:1"]
    assert complete(f"packcache --cache-dir {cache_dir} rm a", Path("/nonexistent")).stdout == (
        "app:1\n"
    )


def test_completion_never_fails_the_shell(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    done = complete("packcache rm ", missing)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "", "")
    assert not missing.exists()  # nothing created by completing
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.db").write_bytes(b"not a database" * 100)
    done = complete("packcache rm ", broken)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "", "")


def test_completion_scripts_are_typers() -> None:
    done = packcache("--show-completion", "bash")
    assert done.returncode == 0
    assert "_PACKCACHE_COMPLETE=complete_bash" in done.stdout
    assert "--install-completion" in packcache("--help", env={"COLUMNS": "200"}).stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_help_ends_with_examples(name: str) -> None:
    done = packcache(name, "--help", env={"COLUMNS": "200"})
    assert done.returncode == 0
    tail = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    examples = EXAMPLES[name]
    assert 2 <= len(examples) <= 3
    assert tail[-len(examples) - 1 :] == ["Examples:", *(f"$ {line}" for line in examples)]
    for line in examples:
        assert line.split()[:2] == ["packcache", name] or "| packcache" in line


def test_a_missing_image_names_the_commands_that_add_it(cli, engine_pool, two_images) -> None:
    host = engine_pool.get("28-containerd").host
    for args in (["--host", host, "load", "nope:1"], ["ls", "--image", "nope:1"]):
        done = cli(*args)
        assert done.exit_code == 1
        assert "no image 'nope:1' in the cache (`packcache import nope:1` adds it from the" in (
            done.stderr
        )
        assert "`packcache pull nope:1` from its registry)" in done.stderr


def test_an_image_missing_from_the_daemon_names_docker_pull(cli, engine_pool) -> None:
    host = engine_pool.get("28-containerd").host
    done = cli("--host", host, "rebase", "nope:1")
    assert done.exit_code == 1 and len(done.stderr.splitlines()) == 1
    assert "image nope:1 is not in the Docker daemon (`docker pull nope:1` puts it there)" in (
        done.stderr
    )
    run = cli("--host", host, "rebase", "nope:1", "--run-image", "nope/run:1")
    assert "(`docker pull nope:1` puts it there)" in run.stderr  # the app is looked for first


def test_pull_policy_never_names_the_way_out(cli, engine_pool, tmp_path) -> None:
    from tests.test_builder_engine import _edit, make_inputs

    engine = engine_pool.get("28-containerd")
    inputs = make_inputs(engine, tmp_path)
    toml = _edit(inputs.toml, inputs.build_ref, "packcache-test/absent-build:1")
    done = cli(
        "--host", engine.host, "create-builder", "b:1", "--config", str(toml),
        "--pull-policy", "never",
    )  # fmt: skip
    assert done.exit_code == 1 and len(done.stderr.splitlines()) == 1
    assert "`docker pull packcache-test/absent-build:1` puts it there, or --pull-policy " in (
        done.stderr
    )
    assert "if-not-present lets create-builder pull it" in done.stderr


def test_the_daemon_asked_at_start_is_reported_where_the_command_needs_it(cli, tmp_path) -> None:
    """rebase, create-builder and load ask the daemon for its info as they start: a usage error is
    still reported first, and a daemon that cannot be reached is one plain error."""
    host = f"unix://{tmp_path}/no.sock"
    usage = cli("--host", host, "rebase", "app:1", "--pull-policy", "sometimes")
    assert (usage.exit_code, usage.stderr) == (
        2,
        "packcache: error: invalid pull policy 'sometimes' (--pull-policy): choose always, "
        "if-not-present, never\n",
    )
    derive = ["create-builder", "b:1", "--from-builder", "base:1", "--env", "A=1"]
    for args in (["rebase", "app:1"], derive, ["load", "app:1"]):
        missing = cli("--host", host, *args)
        assert (missing.exit_code, missing.stderr) == (
            1,
            f"packcache: error: cannot reach the Docker daemon at {host}: is it running? "
            "(set DOCKER_HOST or --host to use another)\n",
        )
