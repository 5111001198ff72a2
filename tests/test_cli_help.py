"""Every `--help` prints every help text of the source whole (rich markup eats `[...]`)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from packcache.cli import app

COMMAND = typer.main.get_command(app)  # the group: its commands, their parameters
COMMANDS = sorted(COMMAND.commands)


def flat(text: str) -> str:
    """Text as words: no panel borders, one space between words (a wrapped line rejoins)."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def help_output(*args: str, columns: int = 200) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return flat(result.stdout)


def written_texts(command: object) -> list[str]:
    """What the source says about a command: its help, epilog, and each parameter's help and
    shown default."""
    texts = [command.help or "", command.epilog or ""]
    for param in command.params:
        texts.append(getattr(param, "help", None) or "")
        shown = getattr(param, "show_default", None)
        if isinstance(shown, str):
            texts.append(shown)
    return [flat(text) for text in texts if text]


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize("name", COMMANDS)
def test_every_help_text_of_a_command_is_printed_whole(name: str, columns: int) -> None:
    output = help_output(name, columns=columns)
    for text in written_texts(COMMAND.commands[name]):
        assert text in output, f"{name} --help lost text of {text!r}"


def test_the_top_level_help_names_every_command_with_its_whole_summary() -> None:
    output = help_output()
    for text in written_texts(COMMAND):
        assert text in output
    for name, command in COMMAND.commands.items():
        assert f"{name} {flat(command.help or '')}" in output


def test_rebase_help_keeps_its_defaults() -> None:
    output = help_output("rebase")
    assert "New run image. [default: (from the image's metadata)]" in output
    assert "Name the result this. [default: (IMAGE)]" in output


def test_help_of_the_installed_command_on_a_wide_terminal() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "packcache", "rebase", "--help"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "from the image's metadata" in done.stdout
