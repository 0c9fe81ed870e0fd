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
PROCESS_NAME = re.compile(r"^[A-Za-z0-9_-]+\Z")
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

    ``command`` is a shell command line (to run with ``sh -c``): a Procfile type's command, or
    a one-argument command line; or an argv list to run as given, without a shell.
    """

    command: str | list[str]
    process: str | None


# A word that means the same run with or without a shell: no blanks, quotes, globs, `$`,
# redirections, `=` (an assignment), `~` or `#`. Such a word runs as is, so `hgrun run env`
# works in an image without a shell, and a mistyped one is reported as not found in the image.
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9_./@%+,:-]+$")
# Words a shell runs itself (POSIX special built-ins, and the built-ins that only mean something
# inside a shell): `hgrun run cd` must reach a shell, not fail as "not found".
SHELL_ONLY = frozenset(
    {
        ".",
        ":",
        "alias",
        "bg",
        "break",
        "cd",
        "command",
        "continue",
        "eval",
        "exec",
        "exit",
        "export",
        "fc",
        "fg",
        "getopts",
        "hash",
        "jobs",
        "read",
        "readonly",
        "return",
        "set",
        "shift",
        "source",
        "times",
        "trap",
        "type",
        "ulimit",
        "umask",
        "unalias",
        "unset",
        "wait",
    }
)
_FIRST_WORD = re.compile(r"^\s*(\S+)(.*)$", re.S)


def resolve_command(procfile: Mapping[str, str], argv: Sequence[str]) -> ResolvedCommand:
    """Resolve ``argv`` the way ``heroku run`` and ``scalingo run`` do.

    - One argument is a command line for ``sh -c`` (``hgrun run 'ls -l | wc -l'``), returned as
      a string; a line that is one plain word (no shell syntax, not a shell built-in) is
      returned as ``[word]`` instead, which runs the same without needing a shell.
    - Several arguments run as given, without a shell: returned as a new list.
    - When the first word names a process type, the result is that type's command with the rest
      appended: the rest of the line as typed for one argument, each further argument
      shell-quoted (``shlex.join``) for several, so ``["worker", "--once"]`` runs
      ``<worker command> --once``.

    An empty ``argv`` resolves to ``([], None)``; the caller decides what that means.
    """
    if len(argv) == 1:
        line = argv[0]
        first = _FIRST_WORD.match(line)
        if first and first.group(1) in procfile:
            return ResolvedCommand(
                procfile[first.group(1)] + first.group(2).rstrip(), first.group(1)
            )
        if _PLAIN_WORD.match(line) and line not in SHELL_ONLY:
            return ResolvedCommand([line], None)
        return ResolvedCommand(line, None)
    if argv and argv[0] in procfile:
        command = procfile[argv[0]]
        rest = list(argv[1:])
        if rest:
            command = f"{command} {shlex.join(rest)}"
        return ResolvedCommand(command, argv[0])
    return ResolvedCommand(list(argv), None)


def command_line_argv(line: str) -> list[str]:
    """The argv that runs a command line (a script's ``command:``, one ``hgrun run`` argument):
    ``[word]`` for one plain word, else ``["sh", "-c", line]``. See :func:`resolve_command`."""
    resolved = resolve_command({}, [line])
    if isinstance(resolved.command, str):
        return ["sh", "-c", resolved.command]
    return resolved.command
