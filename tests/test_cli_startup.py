"""Start-up: typer builds only the command a run names (it reads every registered command's
signature and options into click's on each start); help, completion and anything it cannot
tell plainly see every command, and the commands are all there again after the run."""

from __future__ import annotations

import pytest

from packcache import cli

COMMANDS = {command.name for command in cli.app.registered_commands}


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["rebase", "app:1"], "rebase"),
        (["--cache-dir", "ls", "du"], "du"),  # the value of an option is not the command
        (["--cache-dir=/c", "-H", "unix:///d.sock", "-vv", "ls"], "ls"),
        (["-Hunix:///d.sock", "--verbose", "create-builder", "b:1"], "create-builder"),
        (["--containerd-address", "off", "--containerd-namespace", "x", "load", "a"], "load"),
        (["--host=unix:///d.sock", "info", "--format", "json"], "info"),
        (["--help"], None),
        (["--version"], None),
        ([], None),
        (["-x", "ls"], None),  # an option it does not know: click decides what it is
        (["-vH", "unix:///d.sock", "ls"], None),  # short options together
        (["--cache-dir"], None),  # the value is missing: click says so
    ],
)
def test_the_command_a_run_names(args: list[str], command: str | None) -> None:
    assert cli._invoked_command(args) == command


def test_only_that_command_is_built_and_all_are_back_after(monkeypatch) -> None:
    with cli._only_the_command_invoked(["--cache-dir", "/c", "rebase", "app:1"]):
        assert [c.name for c in cli.app.registered_commands] == ["rebase"]
    assert {c.name for c in cli.app.registered_commands} == COMMANDS
    with cli._only_the_command_invoked(["no-such-command"]):  # click's own error then
        assert {c.name for c in cli.app.registered_commands} == COMMANDS
    monkeypatch.setenv("_PACKCACHE_COMPLETE", "bash_complete")
    with cli._only_the_command_invoked(["rebase"]):  # completion lists every command
        assert {c.name for c in cli.app.registered_commands} == COMMANDS


def test_a_run_with_options_before_its_command_works(monkeypatch, capsys, tmp_path) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setattr("sys.argv", ["packcache", "-v", "--cache-dir", str(cache), "du"])
    with pytest.raises(SystemExit) as exited:
        cli.run()
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("0 layers")
    assert {c.name for c in cli.app.registered_commands} == COMMANDS
