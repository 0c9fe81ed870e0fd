"""The quick reader of ``hgrun run``'s arguments: the common forms, without importing click.

click costs ``hgrun run`` ~20 ms of imports at every start, more than its whole parse is worth
for the forms people type (``hgrun run -a app --no-tty CMD ARGS``). :func:`parse` reads those and
answers the very :class:`~hgrun.cli.runstart.RunArgs` click's reading of them gives
(tests/test_cli_runfast.py holds the two side by side); anything else it leaves to click by
answering None: ``--help``, an unknown or misspelt option, a value glued to its short flag
(``-afoo``) or looking like an option, flags bundled (``-dn``), a missing value, no command. Pure.
"""

from __future__ import annotations

from hgrun.cli.runstart import RunArgs

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the start of `hgrun run` milliseconds: for the checker only
    from collections.abc import Sequence
    from typing import Final

# Each option of `hgrun run` (see hgrun.cli.commands.runs.run) by every spelling: its
# RunArgs field, and whether it takes a value. "--tty"/"--no-tty" are one flag's two ends.
VALUED: Final = {
    "--app": "app_name", "-a": "app_name",
    "--env": "env_pairs", "-e": "env_pairs",
    "--size": "size", "-s": "size",
    "--type": "process_type", "-t": "process_type",
    "--file": "files", "-f": "files",
    "--timeout": "timeout",
}  # fmt: skip
FLAGS: Final = {
    "--detached": "detached", "-d": "detached",
    "--no-stdin": "no_stdin", "-n": "no_stdin",
    "--build": "build",
    "--exit-code": "exit_code", "-x": "exit_code",
    "--no-build": "no_build",
    "--json": "as_json",
}  # fmt: skip
REPEATED: Final = frozenset({"env_pairs", "files"})


def parse(argv: Sequence[str]) -> RunArgs | None:
    """``hgrun [--debug] run ...`` read as click reads it, or None (then click reads it)."""
    words = list(argv)
    if words[:1] == ["--debug"]:
        words = words[1:]
    if words[:1] != ["run"]:
        return None
    raw = words[1:]
    values: dict[str, object] = {}
    repeated: dict[str, list[str]] = {"env_pairs": [], "files": []}
    i = 0
    # As click with allow_interspersed_args off: options until the first other word or `--`.
    while i < len(raw):
        word = raw[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-":
            break
        name, eq, glued = word.partition("=") if word.startswith("--") else (word, "", "")
        if name in ("--tty", "--no-tty") and not eq:
            values["tty"] = name == "--tty"
            i += 1
            continue
        if name in FLAGS and not eq:
            values[FLAGS[name]] = True
            i += 1
            continue
        if name not in VALUED:
            return None  # --help, -h, a typo, bundled short flags, -afoo: click's
        if eq:
            value, i = glued, i + 1
        elif i + 1 < len(raw) and not raw[i + 1].startswith("-"):
            value, i = raw[i + 1], i + 2
        else:
            return None  # no value, or one that looks like an option: click says what it does
        field = VALUED[name]
        if field in REPEATED:
            repeated[field].append(value)
        else:
            values[field] = value  # given twice: the last wins, as with click
    command = tuple(raw[i:])
    if not command and not values.get("process_type"):
        return None  # click's usage error says what to give
    return RunArgs(
        command=command,
        raw=tuple(raw),
        env_pairs=tuple(repeated["env_pairs"]),
        files=tuple(repeated["files"]),
        **values,  # type: ignore[arg-type]
    )
