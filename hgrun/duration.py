"""Durations as people write them in a manifest or on the command line: ``90s``, ``15m``, ``1h30m``.

A bare number is seconds. Units are ``ms``, ``s``, ``m``, ``h`` and ``d``; components go from the
largest unit to the smallest, each at most once (``1h30m``, not ``30m1h``), and may be separated by
spaces. A duration is always positive: a zero timeout or deadline is a mistake, not "no limit".
"""

from __future__ import annotations

import math
import re

_UNITS: dict[str, float] = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_ORDER = list(_UNITS)
# "ms" before "m" and "s" so that "500ms" is not read as 500 minutes followed by garbage.
_COMPONENT = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)(ms|d|h|m|s)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_WORD = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]+)")


def parse_duration(text: str | int | float) -> float:
    """Return ``text`` as a positive, finite number of seconds.

    Accepts a number (seconds) or a string such as ``"90"``, ``"90s"``, ``"1h30m"``, ``"500ms"``
    or ``"1d"``. Raises :class:`ValueError` with a reason for anything else: empty, zero,
    negative, infinite, a missing or unknown unit, units out of order. Callers wrap the
    ``ValueError`` into their own located error.
    """
    if isinstance(text, bool):
        # bool is an int subclass; "timeout: yes" is a mistake, not one second.
        raise ValueError("expected a duration, not a boolean")
    if isinstance(text, int | float):
        try:
            return _positive(float(text))
        except OverflowError:  # an int past 1.8e308: float() refuses it
            raise ValueError("a duration must be a finite number") from None
    if not isinstance(text, str):
        raise ValueError(f"expected a duration, not {type(text).__name__}")
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    if s.startswith("-"):
        raise ValueError("a duration cannot be negative")
    if _NUMBER.fullmatch(s):
        return _positive(float(s))
    total = 0.0
    pos = 0
    last = -1
    while pos < len(s):
        m = _COMPONENT.match(s, pos)
        if m is None:
            rest = s[pos:].strip()
            if _NUMBER.fullmatch(rest):
                raise ValueError(f"missing unit after {rest!r}")
            word = _WORD.match(rest)
            if word and word.group(2) in _UNITS:
                raise ValueError(f"no space allowed between {word.group(1)} and its unit")
            if word:
                raise ValueError(f"unknown unit {word.group(2)!r}")
            raise ValueError(f"unexpected {rest!r}")
        unit = m.group(2)
        rank = _ORDER.index(unit)
        if rank <= last:
            raise ValueError("units must go from largest to smallest, each at most once")
        last = rank
        total += float(m.group(1)) * _UNITS[unit]
        pos = m.end()
    return _positive(total)


def _positive(seconds: float) -> float:
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds == 0:
        raise ValueError("a duration must be greater than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """Format ``seconds`` compactly: ``120ms``, ``2.5s``, ``45s``, ``1m30s``, ``2h``, ``1d3h``.

    Zero is ``0s``. Under a second shows milliseconds; under a minute shows seconds to one
    decimal place (dropped when zero); from a minute up, whole seconds split into d/h/m/s with
    zero parts left out. The result is accepted by :func:`parse_duration` (for positive values).
    Negative values get a leading ``-``.
    """
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError("cannot format a non-finite duration")
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds == 0:
        return "0s"
    # Round once per branch and compare the rounded value, so 0.9996 s reads "1s", not "1000ms".
    # (Only below a second and a minute: seconds * 1000 overflows to infinity near 1.8e305.)
    ms = round(seconds * 1000) if seconds < 1 else 1000
    if ms < 1000:
        return f"{ms}ms"
    tenths = round(seconds * 10) if seconds < 60 else 600
    if tenths < 600:
        whole, frac = divmod(tenths, 10)
        return f"{whole}.{frac}s" if frac else f"{whole}s"
    rest = round(seconds)
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, rest = divmod(rest, int(_UNITS[unit]))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
