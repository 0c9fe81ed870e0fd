"""Waiting in the server's line (``hgrun server --max-runs``): what ``hgrun run`` shows meanwhile.

A run the server cannot start yet is recorded ``queued`` and waits for a slot. ``hgrun run``
stays attached while it waits (its WebSocket open and answered: the server knows a client is
there) and looks at the run once a second, showing one line on stderr that it rewrites as the
line moves (``hgrun: waiting for a free run slot (3 ahead, --max-runs 4)``), on a terminal
only: piped output gets nothing extra, as with the CLI's other progress lines. The line is
cleared once the run leaves the queue; then the run proceeds as any other (raw mode, stdin,
exit code).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, BinaryIO

from hgrun.cli.output import visible
from hgrun.cli.views import waiting_line

POLL = 1.0  # seconds between looks at the run while it waits

Fetch = Callable[[], dict[str, Any]]


class Waiting:
    """Asks whether the run still waits, showing where it is on ``stderr`` (None: nowhere).
    Call it until it returns False, then :meth:`clear`."""

    def __init__(self, fetch: Fetch, stderr: BinaryIO | None) -> None:
        self.fetch = fetch
        self.stderr = stderr
        self.shown = ""
        self.info: dict[str, Any] = {}

    def __call__(self) -> bool:
        self.info = self.fetch()
        if self.info["status"] != "queued":
            self.clear()
            return False
        text = visible(waiting_line(self.info))
        if self.stderr is not None and text != self.shown:
            # Rewritten in place: carriage return, the text, erase to the line's end.
            self.stderr.write(f"\r{text}; Ctrl-C stops it\x1b[K".encode())
            self.stderr.flush()
            self.shown = text
        return True

    def clear(self) -> None:
        if self.stderr is not None and self.shown:
            self.stderr.write(b"\r\x1b[K")
            self.stderr.flush()
            self.shown = ""


def wait_out(
    waiting: Callable[[], bool],
    *,
    interval: float = POLL,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once ``waiting()`` says the run no longer waits (looked at every ``interval``)."""
    while waiting():
        sleep(interval)
