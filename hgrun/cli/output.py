"""How the CLI shows things: rich on a terminal, plain text otherwise, JSON on request."""

from __future__ import annotations

import functools
import re
import sys
import time

from hgrun.duration import format_duration

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the start of `hgrun run` milliseconds: for the checker only
    from collections.abc import Sequence
    from typing import Any

    from rich.console import Console

    from hgrun.cli.terminal import Terminal

STATUS_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "lost": "red",
    "canceled": "yellow",
    "skipped": "yellow",
    "running": "cyan",
    "starting": "cyan",
    "queued": "cyan",
}


# C0 controls, DEL, C1 controls, and the invisible characters that reorder or break lines
# (the bidirectional overrides of "Trojan Source", CVE-2021-42574; U+2028/U+2029).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def visible(text: str, keep: str = "") -> str:
    """``text`` with every control character made visible, so that a string from the server
    cannot move the cursor, clear the screen, set the window title or hide what follows.

    The notation is ``cat -v``'s (and less's): C0 controls as caret notation (ESC is ``^[``,
    newline ``^J``), DEL as ``^?``, C1 controls as ``M-^[``-style; the bidirectional and line
    separator characters as ``<U+202E>``. Characters in ``keep`` (e.g. ``"\n"`` for a message
    of several lines) pass as they are. Printable text, any script, is unchanged.
    """

    def show(match: re.Match[str]) -> str:
        c = match.group()
        o = ord(c)
        if c in keep:
            return c
        if o < 0x20:
            return "^" + chr(o + 0x40)
        if o == 0x7F:
            return "^?"
        if o <= 0x9F:
            return "M-^" + chr(o - 0x80 + 0x40)
        return f"<U+{o:04X}>"

    return _UNSAFE.sub(show, text)


class Output:
    """The CLI's only way to print. Data goes to stdout; messages and progress to stderr.

    Messages (:meth:`info`, :meth:`success`, :meth:`error`) and table cells are passed through
    :func:`visible`: they carry strings the server sent. :meth:`line` prints data as it is (a
    run's own output, a token, ``--json``); the views make their server strings visible first.
    """

    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal

    # rich is imported on first use only: most commands a script runs print no table.
    @functools.cached_property
    def out(self) -> Console:
        from rich.console import Console

        return Console(
            file=sys.stdout,
            no_color=not self.terminal.colour,
            highlight=False,
            force_terminal=self.terminal.stdout_isatty or None,
            soft_wrap=not self.terminal.stdout_isatty,
        )

    @functools.cached_property
    def err(self) -> Console:
        from rich.console import Console

        return Console(
            file=sys.stderr,
            no_color=not self.terminal.colour or not self.terminal.environ.get("TERM"),
            highlight=False,
            stderr=True,
            soft_wrap=True,
        )

    @property
    def interactive(self) -> bool:
        return self.terminal.stdout_isatty

    def json(self, value: Any) -> None:
        import json

        sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
        sys.stdout.flush()

    def line(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def info(self, text: str) -> None:
        """A message for a person: stderr, so pipes and $(...) get only data."""
        sys.stderr.write(visible(text, keep="\n\t") + "\n")
        sys.stderr.flush()

    def success(self, text: str) -> None:
        if self.terminal.colour:
            self.err.print(f"[green]✓[/green] {_escape(visible(text, keep=chr(10)))}")
        else:
            self.info(text)

    def error(self, message: str, hint: str | None) -> None:
        message = visible(message, keep="\n")
        hint = visible(hint, keep="\n") if hint else hint
        if self.terminal.colour:
            self.err.print(f"[bold red]error:[/bold red] {_escape(message)}")
            if hint:
                self.err.print(f"[dim]hint:[/dim] {_escape(hint)}")
        else:
            sys.stderr.write(f"error: {message}\n")
            if hint:
                sys.stderr.write(f"hint: {hint}\n")
            sys.stderr.flush()

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A rich table on a terminal; tab-separated columns with a header line otherwise."""
        if self.interactive:
            from rich.table import Table

            table = Table(box=None, header_style="bold", pad_edge=False)
            for header in headers:
                table.add_column(header)
            for row in rows:
                table.add_row(
                    *(_cell(value, header) for value, header in zip(row, headers, strict=True))
                )
            self.out.print(table)
            return
        lines = ["\t".join(h.lower() for h in headers)]
        lines += ["\t".join("" if v is None else visible(str(v)) for v in row) for row in rows]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


def _cell(value: Any, header: str) -> str:
    text = "" if value is None else visible(str(value))
    if header.lower() == "status" and text in STATUS_STYLE:
        return f"[{STATUS_STYLE[text]}]{text}[/]"
    return _escape(text)


def ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return ""
    delta = (now or time.time()) - ts
    if delta < 60:
        return f"{int(delta)}s ago"
    if delta < 3600:
        return f"{int(delta // 60)}m ago"
    if delta < 86400:
        return f"{int(delta // 3600)}h ago"
    return time.strftime("%Y-%m-%d", time.localtime(ts))


def duration(seconds: float | None) -> str:
    return "" if seconds is None else format_duration(seconds)
