from __future__ import annotations

import math

import pytest

from hgrun.duration import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("2h", 7200.0),
        ("500ms", 0.5),
        ("1d", 86400.0),
        ("1d2h3m4s5ms", 86400 + 7200 + 180 + 4.005),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("  10m  ", 600.0),
        ("0.25", 0.25),
        (90, 90.0),
        (1.5, 1.5),
    ],
)
def test_parse(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("0", "greater than zero"),
        ("0s", "greater than zero"),
        ("0h0m", "greater than zero"),
        (0, "greater than zero"),
        ("-5s", "cannot be negative"),
        ("-5", "cannot be negative"),
        (-1, "cannot be negative"),
        ("10 minutes", "unknown unit 'minutes'"),
        ("3w", "unknown unit 'w'"),
        ("5 s", "no space allowed between 5 and its unit"),
        ("1h30", "missing unit after '30'"),
        ("30m1h", "largest to smallest"),
        ("1m1m", "largest to smallest"),
        ("abc", "unexpected 'abc'"),
        ("1e3", "unknown unit 'e'"),
        ("1:30", "unexpected '1:30'"),
        ("h", "unexpected 'h'"),
        (True, "not a boolean"),
        (math.inf, "finite"),
        (math.nan, "finite"),
        ("nan", "unexpected"),
    ],
)
def test_parse_rejects(text: str | int | float, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.12, "120ms"),
        (0.0004, "0ms"),
        (0.9996, "1s"),
        (1, "1s"),
        (2.5, "2.5s"),
        (2.54, "2.5s"),
        (45, "45s"),
        (59.96, "1m"),
        (60, "1m"),
        (90, "1m30s"),
        (3600, "1h"),
        (5400, "1h30m"),
        (7261, "2h1m1s"),
        (86400 + 3 * 3600, "1d3h"),
        (-90, "-1m30s"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.12, 1, 2.5, 45, 90, 5400, 7261, 97200])
def test_format_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_format_rejects_non_finite() -> None:
    with pytest.raises(ValueError):
        format_duration(math.inf)
