"""The README's error examples are hgrun's real output: each fenced block after a
``<!-- readme-test: SETUP -->`` marker is run, command by command, in the folder SETUP makes,
and what hgrun prints (stdout, then stderr) must be the lines under the command, exactly.

``$ CMD    # exits N`` also checks the exit status; the app's real name reads ``myapp``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
from support.apps import deploy_busybox_app, unique, write_busybox_app
from support.cli import Cli, text

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"<!-- readme-test: ([a-z0-9-]+) -->\n```\n(.*?)```", re.S)
COMMAND = re.compile(r"^\$ (.+?)(?:\s+# exits (\d+))?$")


def blocks() -> list[tuple[str, list[tuple[str, int | None, list[str]]]]]:
    """(setup, [(command, exit status or None, expected lines)]) for each marked block."""
    found = []
    for setup, body in MARKER.findall(README.read_text(encoding="utf-8")):
        steps: list[tuple[str, int | None, list[str]]] = []
        for line in body.splitlines():
            command = COMMAND.match(line)
            if command:
                status = int(command.group(2)) if command.group(2) else None
                steps.append((command.group(1), status, []))
            else:
                assert steps, f"README block {setup!r} does not start with a `$ ` line"
                steps[-1][2].append(line)
        found.append((setup, steps))
    return found


def _app(cli: Cli, root: Path) -> str:
    return deploy_busybox_app(cli, root, unique("readme"))


def _procfile_line_3(cli: Cli, root: Path) -> str:
    name = unique("readme")
    write_busybox_app(root, name, procfile="web: echo web\nworker: echo w\nbroken line\n")
    return name


SETUPS: dict[str, Callable[[Cli, Path], str]] = {
    "app": _app,
    "procfile-line-3": _procfile_line_3,
}


def test_the_readme_has_marked_examples() -> None:
    setups = [setup for setup, _ in blocks()]
    assert "app" in setups and "procfile-line-3" in setups
    assert set(setups) <= set(SETUPS)


@pytest.mark.parametrize(("setup", "steps"), blocks(), ids=[s for s, _ in blocks()])
def test_readme_examples_are_the_real_output(
    cli: Cli,
    tmp_path: Path,
    busybox_image: str,
    setup: str,
    steps: list[tuple[str, int | None, list[str]]],
) -> None:
    root = tmp_path / "app"
    name = SETUPS[setup](cli, root)
    for command, status, expected in steps:
        words = shlex.split(command)
        assert words[0] == "hgrun", command
        done = cli(*words[1:], cwd=root, input=b"")
        shown = (text(done.stdout) + text(done.stderr)).replace(name, "myapp")
        assert shown.splitlines() == expected, f"$ {command}\n{shown}"
        if status is not None:
            assert done.returncode == status, f"$ {command}: exit {done.returncode}"
        else:
            assert done.returncode != 0, f"$ {command}: an error example that succeeded"
