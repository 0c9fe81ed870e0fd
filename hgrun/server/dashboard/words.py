"""Cron schedules and durations in words, and the bars of a script's run chart. Pure.

``describe("30 4 * * *")`` is "every day at 04:30"; an expression with no plain reading is
returned as it is, quoted ("cron `5 4 1-7 * 1`"): a wrong sentence is worse than none. Times are
in the script's zone, which the page shows next to the sentence.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence

from hgrun.models import SIZES, Run, RunStatus

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
]  # fmt: skip


def _number(field: str, low: int, high: int) -> int | None:
    return int(field) if field.isdigit() and low <= int(field) <= high else None


def _days(field: str) -> str | None:
    if field == "*":
        return "every day"
    if field in ("1-5", "mon-fri", "MON-FRI"):
        return "on weekdays"
    if field in ("0,6", "6,0", "sat,sun", "SAT,SUN"):
        return "on weekends"
    names = []
    for part in field.split(","):
        day = _number(part, 0, 7)
        if day is None:
            return None
        names.append(DAYS[day])
    return "every " + " and ".join(names)


def describe(expr: str) -> str:
    """The schedule in words (see the module docstring)."""
    fields = ALIASES.get(expr.strip().lower(), expr).split()
    quoted = f"cron `{expr}`"
    if len(fields) != 5:
        return quoted
    minute, hour, dom, month, dow = fields
    if fields == ["*"] * 5:
        return "every minute"
    if minute.startswith("*/") and hour == dom == month == dow == "*":
        step = _number(minute[2:], 1, 59)
        return f"every {step} minutes" if step else quoted
    m = _number(minute, 0, 59)
    if m is None:
        return quoted
    if hour == dom == month == dow == "*":
        return "every hour" if m == 0 else f"every hour at minute {m}"
    if hour.startswith("*/") and dom == month == dow == "*":
        step = _number(hour[2:], 1, 23)
        return f"every {step} hours at minute {m}" if step else quoted
    h = _number(hour, 0, 23)
    if h is None:
        return quoted
    at = f"at {h:02d}:{m:02d}"
    if dom == "*" and month == "*":
        days = _days(dow)
        return f"{days} {at}" if days else quoted
    d = _number(dom, 1, 31)
    if d is None or dow != "*":
        return quoted
    if month == "*":
        return f"on day {d} of every month {at}"
    mo = _number(month, 1, 12)
    return f"every year on {MONTHS[mo - 1]} {d} {at}" if mo else quoted


def duration(seconds: float | None) -> str:
    """``0.4 s``, ``12 s``, ``3 min 5 s``, ``15 min``, ``2 h 1 min``; an em dash when unknown."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min" if s % 3600 // 60 else f"{s // 3600} h"


# A browser shell's `bash`: bash where the image has it, else the POSIX shell every image with a
# shell has (see shell.open_shell).
BASH_OR_SH = ["sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi"]


def command_line(argv: Sequence[str]) -> str:
    """A run's argv as one would type it: ``sh -c 'echo "a b"; exit 3'``, not the words joined
    with spaces (``sh -c echo "a b"; exit 3`` reads as a different command). A browser shell's
    ``bash`` reads as what the person typed, not as its fallback to sh."""
    if list(argv) == BASH_OR_SH:
        return "bash (sh where the image has no bash)"
    return shlex.join(argv)


def size_of(name: str) -> str:
    """A size name with what it gives: ``starter (512 MB, 0.5 CPU)``."""
    size = SIZES.get(name)
    return f"{name} ({size.memory_mb} MB, {size.cpus:g} CPU)" if size else name


# -- the chart of a script's recent runs ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bar:
    run: int
    x: float
    y: float
    width: float
    height: float
    status: str
    title: str


WIDTH, HEIGHT = 600.0, 120.0


def chart(runs: Sequence[Run], now: float) -> list[Bar]:
    """One bar per run, oldest on the left, height by duration (a running run counts up to
    ``now``; a run that never started gets a stub so it stays visible)."""
    ordered = sorted(runs, key=lambda r: r.id)
    if not ordered:
        return []
    spans = [_span(r, now) for r in ordered]
    longest = longest_span(ordered, now) or 1.0
    slot = WIDTH / max(len(ordered), 20)
    bars = []
    for i, (run, span) in enumerate(zip(ordered, spans, strict=True)):
        height = max(2.0, HEIGHT * span / longest)
        bars.append(
            Bar(
                run=run.id,
                x=i * slot + slot * 0.1,
                y=HEIGHT - height,
                width=slot * 0.8,
                height=height,
                status=badge(run.status),
                title=f"{run.label} {run.status.value} {duration(span)}",
            )
        )
    return bars


def longest_span(runs: Sequence[Run], now: float) -> float:
    """The longest duration among ``runs`` (the chart's full height), 0 when none ran."""
    return max((_span(r, now) for r in runs), default=0.0)


def _span(run: Run, now: float) -> float:
    if run.started is None:
        return 0.0
    return max(0.0, (run.finished or now) - run.started)


def badge(status: RunStatus) -> str:
    """The colour class of a status: green, red, grey or blue."""
    if status is RunStatus.SUCCEEDED:
        return "ok"
    if status in (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.LOST):
        return "bad"
    if status.active:
        return "live"
    return "off"  # canceled, skipped
