"""Parse a Procfile: the process types of an app, as Heroku and foreman read them.

A Procfile has one ``name: command`` line per process type. Blank lines and lines whose first
non-blank character is ``#`` are skipped; CRLF line ends and a leading UTF-8 byte-order mark are
accepted. Unlike foreman and honcho, which skip a line they cannot read, every malformed line here
is an error that names its line and column: a silently dropped ``worker`` type only shows up later
as "unknown process type".
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from hgrun.errors import ProcfileError

# The name pattern foreman and Heroku accept: ^([A-Za-z0-9_-]+):\s*(.+)$
PROCESS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_LINE_END = re.compile(r"\r\n|\n|\r")
_BOM = "\ufeff"


def parse_procfile(text: str, file: str = "Procfile") -> dict[str, str]:
    """Return the process types of ``text`` as an ordered ``{name: command}`` mapping.

    Raises :class:`ProcfileError` located as ``file:line:col`` for a line without ``:``, an
    invalid or duplicate name, or an empty command. Columns count characters from 1.
    """
    if text.startswith(_BOM):
        text = text[len(_BOM) :]
    processes: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for lineno, line in enumerate(_LINE_END.split(text), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        name_col = indent + 1
        name, colon, rest = line[indent:].partition(":")
        if not colon:
            raise ProcfileError(
                f"expected 'name: command', found {stripped!r}",
                file=file,
                line=lineno,
                col=name_col,
                hint="write a process type as 'name: command', e.g. 'web: python3 app.py'",
            )
        if not PROCESS_NAME.match(name):
            what = "empty process type name" if not name.strip() else f"invalid name {name!r}"
            raise ProcfileError(
                what,
                file=file,
                line=lineno,
                col=name_col,
                hint="a process type name uses only letters, digits, '_' and '-', "
                "with no space before the ':'",
            )
        command = rest.strip()
        if not command:
            raise ProcfileError(
                f"process type {name!r} has no command",
                file=file,
                line=lineno,
                col=name_col + len(name) + 1,
                hint=f"put the command after the ':', e.g. '{name}: python3 app.py', "
                "or delete the line",
            )
        if name in processes:
            raise ProcfileError(
                f"duplicate process type {name!r}",
                file=file,
                line=lineno,
                col=name_col,
                hint=f"{name!r} is already defined on line {first_seen[name]}; "
                "keep one of the two lines",
            )
        processes[name] = command
        first_seen[name] = lineno
    return processes


class ResolvedCommand(NamedTuple):
    """What to run for a command line, after looking it up in the Procfile.

    ``command`` is a shell command string (to run with ``sh -c``) when ``process`` names the
    Procfile type it came from, and the argv list unchanged when ``process`` is ``None``.
    """

    command: str | list[str]
    process: str | None


def resolve_command(procfile: Mapping[str, str], argv: Sequence[str]) -> ResolvedCommand:
    """Resolve ``argv`` the way ``heroku run`` does.

    When ``argv[0]`` names a process type, the result is that type's command with the remaining
    arguments appended, each shell-quoted (``shlex.join``), so ``["worker", "--once"]`` runs
    ``<worker command> --once``. Otherwise ``argv`` is returned as a new list and ``process`` is
    ``None``. An empty ``argv`` resolves to ``([], None)``; the caller decides what that means.
    """
    if argv and argv[0] in procfile:
        command = procfile[argv[0]]
        rest = list(argv[1:])
        if rest:
            command = f"{command} {shlex.join(rest)}"
        return ResolvedCommand(command, argv[0])
    return ResolvedCommand(list(argv), None)
