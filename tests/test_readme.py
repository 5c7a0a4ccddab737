"""The README stays true to the CLI: every ``segvol`` command it shows exists, and every option it gives that
command is one the command accepts (checked against the command's own parameters, not its help text)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import typer

from segvolpipe.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[tuple[int, str]]:
    """``(line number, command line)`` of every ``segvol ...`` line in the README's bash blocks (continuations
    joined)."""
    lines = README.read_text().splitlines()
    out, block, i = [], False, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            block = line.strip() == "```bash"
        elif block:
            start = i
            text = line
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].strip()
            match = re.search(r"(?:^|\s|\(which )segvol\)?\s+([a-z-]+)(.*)", text.split("#")[0])
            if match and not text.lstrip().startswith("make"):
                out.append((start + 1, f"{match.group(1)}{match.group(2)}"))
        i += 1
    return out


def _options(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


COMMANDS = _commands()


def test_the_readme_shows_every_command() -> None:
    group = typer.main.get_command(app)
    shown = {line.split()[0] for _, line in COMMANDS}
    assert set(group.commands) <= shown, f"not in the README: {set(group.commands) - shown}"


@pytest.mark.parametrize(("line", "command"), COMMANDS, ids=[f"README:{n}" for n, _ in COMMANDS])
def test_readme_commands_use_real_options(line: int, command: str) -> None:
    group = typer.main.get_command(app)
    name = command.split()[0]
    assert name in group.commands, f"README line {line}: no command 'segvol {name}'"
    accepted = _options(group.commands[name])
    given = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", command))
    assert given <= accepted, f"README line {line}: 'segvol {name}' has no option {sorted(given - accepted)}"
