"""Timestamps of one CLI invocation's phases, for ``bench/run.py --trace``.

With ``HGRUN_TRACE=FILE`` in the environment, :func:`mark` notes the wall-clock instant (epoch
nanoseconds, the clock the Docker engine's events use, so both line up) of each phase the CLI
goes through, and :func:`dump` appends them to FILE as one JSON object per line
(``{"mark": "request", "ns": 1700000000000000000}``) when the CLI exits. Without it, a mark
costs one comparison; nothing is written.
"""

from __future__ import annotations

import os
import time

_FILE = os.environ.get("HGRUN_TRACE") or None
_marks: list[tuple[str, int]] = []


def mark(name: str) -> None:
    """Note that phase ``name`` is reached now (the first time only)."""
    if _FILE is not None and all(name != seen for seen, _ in _marks):
        _marks.append((name, time.time_ns()))


def dump() -> None:
    """Append the marks to the trace file; a file that cannot be written is let go silently
    (tracing must never change how a command ends)."""
    if _FILE is None or not _marks:
        return
    import json

    try:
        with open(_FILE, "a") as f:
            for name, ns in _marks:
                f.write(json.dumps({"mark": name, "ns": ns}) + "\n")
    except OSError:
        pass
    _marks.clear()
