"""Table tests for hgrun.schedule: every instant is explicit, no clock is read or patched."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from support.store import app_with_release, new_run, new_store

from hgrun.models import Catchup, Concurrency, Run, Script, ScriptRecord, Trigger
from hgrun.schedule import (
    MACROS,
    MISSED_CAP,
    CronError,
    Decision,
    Due,
    catchup_slots,
    decide,
    due_slots,
    last_fire,
    next_fire,
    skip_reason,
    slots_to_run,
    validate_cron,
    validate_timezone,
)
from hgrun.server.scheduler import Scheduler
from hgrun.server.scripts import SlotPlan, SlotRuns
from hgrun.store import Store

NY = "America/New_York"
PARIS = "Europe/Paris"


def u(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    """An instant in UTC."""
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


def at(tz: str, y: int, mo: int, d: int, h: int = 0, mi: int = 0, fold: int = 0) -> datetime:
    """A wall-clock time in ``tz`` (``fold=1``: the second pass through a repeated hour)."""
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(tz), fold=fold)


def zs(*times: str) -> list[datetime]:
    """Instants in UTC from ISO texts, e.g. ``zs("2024-11-03T05:30")``."""
    return [datetime.fromisoformat(t).replace(tzinfo=UTC) for t in times]


# --- validate_cron ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        *MACROS,
        "@HOURLY",
        "@Daily",
        "  @weekly  ",
        "* * * * *",
        "*/5 * * * *",
        "0 9 * * 1-5",
        "30 2 * * *",
        "0 0 29 2 *",  # leap days only
        "0 0 31 2,3 *",  # March 31st exists
        "0 0 31 2 1",  # day-of-week restricted too: Vixie OR rule, every Monday in February
        "0 0 * JAN MON",
        "0 0 * * THU",  # a day name starting with H is not a hashed item
        "0 0 * MAR *",  # nor one starting with R... with M, but MAR holds an R
        "0 0 * * 7",  # Sunday as 7
        "  0  0  *  *  *  ",
    ],
)
def test_validate_cron_accepts(expr: str) -> None:
    assert validate_cron(expr) is None


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("@reboot", "@reboot is not supported"),
        ("@REBOOT", "@reboot is not supported"),
        ("@every 5m", "unknown macro"),
        ("@fortnightly", "unknown macro"),
        ("* * * *", "4 fields, expected 5"),
        ("* * * * * 15", "6 fields"),  # croniter: seconds at the end
        ("0 0 0 1 1 * 2030", "7 fields"),  # croniter: seconds and a year
        ("H * * * *", "H (hashed) and R (random)"),
        ("H/15 * * * *", "H (hashed) and R (random)"),
        ("0 H(0-5) * * *", "H (hashed) and R (random)"),
        ("R * * * *", "H (hashed) and R (random)"),
        ("0 0 1,R * *", "H (hashed) and R (random)"),
        ("60 * * * *", "malformed or out of range"),
        ("0 24 * * *", "malformed or out of range"),
        ("0 0 0 * *", "malformed or out of range"),
        ("0 0 * 13 *", "malformed or out of range"),
        ("0 0 * * 8", "malformed or out of range"),
        ("*/0 * * * *", "malformed or out of range"),
        ("a b c d e", "malformed or out of range"),
        ("0 0 31 2 *", "never occurs"),
        ("0 0 30 2 *", "never occurs"),
        ("0 0 30,31 2 *", "never occurs"),
        ("0 0 31 4 *", "never occurs"),
    ],
)
def test_validate_cron_rejects(expr: str, reason: str) -> None:
    problem = validate_cron(expr)
    assert problem is not None and reason in problem


@pytest.mark.parametrize(
    ("tz", "ok"),
    [
        ("UTC", True),
        (NY, True),
        (PARIS, True),
        ("Asia/Kolkata", True),
        ("", False),
        ("utc", False),
        ("America", False),
        ("Nowhere/City", False),
        ("../etc/passwd", False),
        ("/etc/localtime", False),
    ],
)
def test_validate_timezone(tz: str, ok: bool) -> None:
    assert (validate_timezone(tz) is None) is ok


# --- next_fire and last_fire ------------------------------------------------------------------

NEW_YEAR = u(2024, 1, 1)  # a Monday


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        # every macro, from midnight UTC on Monday 2024-01-01 (exclusive: midnight is not "after")
        ("@hourly", "UTC", NEW_YEAR, u(2024, 1, 1, 1)),
        ("@daily", "UTC", NEW_YEAR, u(2024, 1, 2)),
        ("@midnight", "UTC", NEW_YEAR, u(2024, 1, 2)),
        ("@weekly", "UTC", NEW_YEAR, u(2024, 1, 7)),  # Sunday
        ("@monthly", "UTC", NEW_YEAR, u(2024, 2, 1)),
        ("@yearly", "UTC", NEW_YEAR, u(2025, 1, 1)),
        ("@annually", "UTC", NEW_YEAR, u(2025, 1, 1)),
        ("@DAILY", "UTC", NEW_YEAR, u(2024, 1, 2)),
        # strictly after: on a slot, a second before, a microsecond after
        ("* * * * *", "UTC", u(2024, 1, 1, 0, 1), u(2024, 1, 1, 0, 2)),
        ("* * * * *", "UTC", u(2024, 1, 1, 0, 0, 59), u(2024, 1, 1, 0, 1)),
        ("* * * * *", "UTC", u(2024, 1, 1, 0, 0, 59, 999_999), u(2024, 1, 1, 0, 1)),
        ("* * * * *", "UTC", u(2024, 1, 1, 0, 1, 0, 1), u(2024, 1, 1, 0, 2)),
        ("*/15 * * * *", "UTC", u(2024, 1, 1, 10, 7), u(2024, 1, 1, 10, 15)),
        ("0 9 * * 1-5", "UTC", u(2024, 1, 5, 9), u(2024, 1, 8, 9)),  # Friday -> Monday
        ("0 0 29 2 *", "UTC", NEW_YEAR, u(2024, 2, 29)),
        ("0 0 29 2 *", "UTC", u(2024, 3, 1), u(2028, 2, 29)),
        ("0 0 31 2 1", "UTC", NEW_YEAR, u(2024, 2, 5)),  # first Monday in February
        # time zones: the expression reads the zone's wall clock
        ("0 9 * * *", PARIS, NEW_YEAR, u(2024, 1, 1, 8)),  # CET, +01:00
        ("0 9 * * *", PARIS, u(2024, 7, 1), u(2024, 7, 1, 7)),  # CEST, +02:00
        ("0 9 * * *", NY, NEW_YEAR, u(2024, 1, 1, 14)),  # EST, -05:00
        ("0 0 * * *", "Asia/Kolkata", NEW_YEAR, u(2024, 1, 1, 18, 30)),  # +05:30
        ("@daily", PARIS, NEW_YEAR, u(2024, 1, 1, 23)),
        ("@hourly", "Asia/Kolkata", NEW_YEAR, u(2024, 1, 1, 0, 30)),
        # `after` in any zone is the same instant
        ("0 9 * * *", "UTC", at(PARIS, 2024, 1, 1, 10), u(2024, 1, 2, 9)),
        ("0 9 * * *", "UTC", at(PARIS, 2024, 1, 1, 9, 59), u(2024, 1, 1, 9)),
    ],
)
def test_next_fire(expr: str, tz: str, after: datetime, expected: datetime) -> None:
    got = next_fire(expr, tz, after)
    assert got == expected
    assert got.tzinfo is UTC


@pytest.mark.parametrize(
    ("expr", "tz", "when", "expected"),
    [
        ("* * * * *", "UTC", u(2024, 1, 1, 0, 1), u(2024, 1, 1, 0, 1)),  # inclusive
        ("* * * * *", "UTC", u(2024, 1, 1, 0, 1, 59, 999_999), u(2024, 1, 1, 0, 1)),
        ("@hourly", "UTC", u(2024, 1, 1, 0, 59), u(2024, 1, 1)),
        ("@daily", "UTC", NEW_YEAR, NEW_YEAR),
        ("@yearly", "UTC", u(2024, 12, 31, 23, 59), NEW_YEAR),
        ("0 9 * * 1-5", "UTC", u(2024, 1, 8, 8), u(2024, 1, 5, 9)),  # Monday -> Friday
        ("0 9 * * *", PARIS, u(2024, 7, 1, 7, 30), u(2024, 7, 1, 7)),
        # fall back, America/New_York 2024-11-03: a fixed job keeps its first pass
        ("30 1 * * *", NY, u(2024, 11, 3, 8), u(2024, 11, 3, 5, 30)),
        ("0 * * * *", NY, u(2024, 11, 3, 6, 30), u(2024, 11, 3, 6)),  # 01:00 EST, second pass
        # spring forward, 2024-03-10: 02:30 does not exist and runs at 03:00 EDT
        ("30 2 * * *", NY, u(2024, 3, 10, 12), u(2024, 3, 10, 7)),
        ("0 * * * *", NY, u(2024, 3, 10, 7, 30), u(2024, 3, 10, 7)),
        ("30 2 * * *", PARIS, u(2024, 10, 27, 6), u(2024, 10, 27, 0, 30)),
    ],
)
def test_last_fire(expr: str, tz: str, when: datetime, expected: datetime) -> None:
    assert last_fire(expr, tz, when) == expected


@pytest.mark.parametrize(
    ("expr", "tz", "day"),
    [
        (expr, tz, day)
        for expr in ("30 1 * * *", "30 2 * * *", "0 * * * *", "*/20 * * * *", "*/10 1,2 * * *")
        for tz, day in (
            (NY, u(2024, 3, 10)),
            (NY, u(2024, 11, 3)),
            (PARIS, u(2024, 3, 31)),
            (PARIS, u(2024, 10, 27)),
        )
    ],
)
def test_next_and_last_fire_agree_across_dst(expr: str, tz: str, day: datetime) -> None:
    """For every instant t: last_fire(t) <= t < next_fire(t), and each sees the other's slot."""
    for step in range(0, 36 * 60, 7):
        t = day + timedelta(minutes=step, seconds=13)
        nxt, prev = next_fire(expr, tz, t), last_fire(expr, tz, t)
        assert prev <= t < nxt
        assert last_fire(expr, tz, nxt) == nxt
        assert next_fire(expr, tz, prev) == nxt


@pytest.mark.parametrize(
    ("expr", "tz", "error"),
    [
        ("* * * * * *", "UTC", "6 fields"),
        ("@reboot", "UTC", "@reboot"),
        ("H * * * *", "UTC", "hashed"),
        ("0 0 31 2 *", "UTC", "never occurs"),
        ("* * * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_expression_or_zone_raises_cron_error(expr: str, tz: str, error: str) -> None:
    for call in (
        lambda: next_fire(expr, tz, NEW_YEAR),
        lambda: last_fire(expr, tz, NEW_YEAR),
        lambda: due_slots(expr, tz, NEW_YEAR, u(2024, 1, 2)),
        lambda: due_slots(expr, tz, None, u(2024, 1, 2)),
        lambda: catchup_slots(expr, tz, Catchup.SKIP, None, NEW_YEAR, None),
    ):
        with pytest.raises(CronError, match=error):
            call()


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2024, 1, 1)
    with pytest.raises(ValueError, match="after must be time-zone aware"):
        next_fire("@daily", "UTC", naive)
    with pytest.raises(ValueError, match="now must be time-zone aware"):
        due_slots("@daily", "UTC", NEW_YEAR, naive)
    with pytest.raises(ValueError, match="last_slot must be time-zone aware"):
        due_slots("@daily", "UTC", naive, NEW_YEAR)
    with pytest.raises(ValueError, match="now must be time-zone aware"):
        catchup_slots("@daily", "UTC", Catchup.SKIP, None, naive, None)


# --- due_slots --------------------------------------------------------------------------------


def minutes(start: datetime, count: int) -> tuple[datetime, ...]:
    return tuple(start + timedelta(minutes=i) for i in range(count))


@pytest.mark.parametrize(
    ("expr", "last_slot", "now", "cap", "expected"),
    [
        # (last_slot, now]: a cursor exactly on a slot does not return it again; now on a slot does
        (
            "@hourly",
            u(2024, 1, 1, 1),
            u(2024, 1, 1, 3),
            100,
            Due(tuple(zs("2024-01-01T02:00", "2024-01-01T03:00"))),
        ),
        ("@hourly", u(2024, 1, 1, 1), u(2024, 1, 1, 2), 100, Due((u(2024, 1, 1, 2),))),
        ("@hourly", u(2024, 1, 1, 1), u(2024, 1, 1, 1, 59, 59), 100, Due(())),
        ("@hourly", u(2024, 1, 1, 1, 0, 0, 1), u(2024, 1, 1, 2), 100, Due((u(2024, 1, 1, 2),))),
        ("@hourly", u(2024, 1, 1, 1, 30), u(2024, 1, 1, 2, 30), 100, Due((u(2024, 1, 1, 2),))),
        ("@hourly", u(2024, 1, 1, 2), u(2024, 1, 1, 2), 100, Due(())),  # empty interval
        ("@hourly", u(2024, 1, 1, 5), u(2024, 1, 1, 2), 100, Due(())),  # cursor ahead of now
        ("@hourly", None, u(2024, 1, 1, 2), 100, Due(())),  # no cursor: nothing is missed
        # the cap: exactly 100 missed slots are all returned; 101 or more keep only the latest
        ("* * * * *", NEW_YEAR, u(2024, 1, 1, 1, 40), 100, Due(minutes(u(2024, 1, 1, 0, 1), 100))),
        ("* * * * *", NEW_YEAR, u(2024, 1, 1, 1, 41), 100, Due((u(2024, 1, 1, 1, 41),), True)),
        ("* * * * *", NEW_YEAR, u(2024, 1, 1, 1, 41, 30), 100, Due((u(2024, 1, 1, 1, 41),), True)),
        ("* * * * *", NEW_YEAR, u(2025, 1, 1, 0, 0, 30), 100, Due((u(2025, 1, 1),), True)),
        ("* * * * *", NEW_YEAR, u(2024, 1, 1, 0, 3), 3, Due(minutes(u(2024, 1, 1, 0, 1), 3))),
        ("* * * * *", NEW_YEAR, u(2024, 1, 1, 0, 4), 3, Due((u(2024, 1, 1, 0, 4),), True)),
        ("* * * * *", NEW_YEAR, u(2024, 1, 1, 0, 4), 1, Due((u(2024, 1, 1, 0, 4),), True)),
    ],
)
def test_due_slots(
    expr: str, last_slot: datetime | None, now: datetime, cap: int, expected: Due
) -> None:
    assert due_slots(expr, "UTC", last_slot, now, cap) == expected


def test_due_slots_default_cap_is_kubernetes_100() -> None:
    assert MISSED_CAP == 100
    assert due_slots("* * * * *", "UTC", NEW_YEAR, u(2024, 1, 1, 1, 40)).truncated is False
    assert due_slots("* * * * *", "UTC", NEW_YEAR, u(2024, 1, 1, 1, 41)).truncated is True


def test_due_slots_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cap"):
        due_slots("@hourly", "UTC", NEW_YEAR, u(2024, 1, 2), cap=0)


# --- DST: which instants fire on the days the clocks change -----------------------------------


@pytest.mark.parametrize(
    ("expr", "tz", "since", "until", "expected"),
    [
        # America/New_York, fall back 2024-11-03 02:00 EDT -> 01:00 EST: 01:00-01:59 twice.
        # A fixed-time job runs once, at the first pass (Vixie cron; croniter alone runs twice).
        ("30 1 * * *", NY, "2024-11-02T12:00", "2024-11-04T12:00",
         zs("2024-11-03T05:30", "2024-11-04T06:30")),
        ("0,30 1 * * *", NY, "2024-11-03T04:00", "2024-11-03T08:00",
         zs("2024-11-03T05:00", "2024-11-03T05:30")),
        ("@daily", NY, "2024-11-02T12:00", "2024-11-04T12:00",
         zs("2024-11-03T04:00", "2024-11-04T05:00")),
        # A wildcard job runs at each matching instant: hourly stays hourly in elapsed time.
        ("0 * * * *", NY, "2024-11-03T04:00", "2024-11-03T08:00",
         zs("2024-11-03T05:00", "2024-11-03T06:00", "2024-11-03T07:00", "2024-11-03T08:00")),
        ("@hourly", NY, "2024-11-03T04:00", "2024-11-03T08:00",
         zs("2024-11-03T05:00", "2024-11-03T06:00", "2024-11-03T07:00", "2024-11-03T08:00")),
        ("*/30 1 * * *", NY, "2024-11-03T04:00", "2024-11-03T08:00",
         zs("2024-11-03T05:00", "2024-11-03T05:30", "2024-11-03T06:00", "2024-11-03T06:30")),
        # America/New_York, spring forward 2024-03-10 02:00 EST -> 03:00 EDT: no 02:xx that day.
        # A slot in the gap runs once at 03:00 EDT; the next day is back to 02:30.
        ("30 2 * * *", NY, "2024-03-09T12:00", "2024-03-11T12:00",
         zs("2024-03-10T07:00", "2024-03-11T06:30")),
        ("*/20 2 * * *", NY, "2024-03-09T12:00", "2024-03-10T12:00", zs("2024-03-10T07:00")),
        ("0 2,3 * * *", NY, "2024-03-09T12:00", "2024-03-10T12:00", zs("2024-03-10T07:00")),
        # Hourly patterns have no occurrence in the missing hour: 01:00 EST then 03:00 EDT.
        ("0 * * * *", NY, "2024-03-10T05:30", "2024-03-10T08:30",
         zs("2024-03-10T06:00", "2024-03-10T07:00", "2024-03-10T08:00")),
        ("30 * * * *", NY, "2024-03-10T05:45", "2024-03-10T08:45",
         zs("2024-03-10T06:30", "2024-03-10T07:30", "2024-03-10T08:30")),
        # Europe/Paris, fall back 2024-10-27 03:00 CEST -> 02:00 CET: 02:00-02:59 twice.
        ("30 2 * * *", PARIS, "2024-10-26T12:00", "2024-10-28T12:00",
         zs("2024-10-27T00:30", "2024-10-28T01:30")),
        ("0 * * * *", PARIS, "2024-10-26T23:30", "2024-10-27T02:30",
         zs("2024-10-27T00:00", "2024-10-27T01:00", "2024-10-27T02:00")),
        ("0 */2 * * *", PARIS, "2024-10-26T21:30", "2024-10-27T02:30",
         zs("2024-10-26T22:00", "2024-10-27T00:00", "2024-10-27T01:00")),
        # Europe/Paris, spring forward 2024-03-31 02:00 CET -> 03:00 CEST.
        ("30 2 * * *", PARIS, "2024-03-30T12:00", "2024-04-01T12:00",
         zs("2024-03-31T01:00", "2024-04-01T00:30")),
        ("0 * * * *", PARIS, "2024-03-30T23:30", "2024-03-31T02:30",
         zs("2024-03-31T00:00", "2024-03-31T01:00", "2024-03-31T02:00")),
    ],
)  # fmt: skip
def test_dst_days(expr: str, tz: str, since: str, until: str, expected: list[datetime]) -> None:
    (last_slot,), (now,) = zs(since), zs(until)
    due = due_slots(expr, tz, last_slot, now)
    assert list(due.slots) == expected
    assert not due.truncated


def test_fall_back_wall_clock_reading() -> None:
    """The kept slot of a fixed job is the first 01:30 (EDT); the second (EST) is dropped."""
    (first,) = due_slots("30 1 * * *", NY, u(2024, 11, 3), u(2024, 11, 3, 12)).slots
    local = first.astimezone(ZoneInfo(NY))
    assert (local.hour, local.minute, local.fold) == (1, 30, 0)
    assert local.utcoffset() == timedelta(hours=-4)
    # Why instants, not wall clocks: PEP 495 makes == between zones False for any time in the
    # fold, so even the matching wall time compares unequal; its UTC instant does not.
    assert first != at(NY, 2024, 11, 3, 1, 30, fold=0)
    assert first == at(NY, 2024, 11, 3, 1, 30, fold=0).astimezone(UTC)


# --- catchup_slots ----------------------------------------------------------------------------

H = "0 * * * *"  # hourly, UTC
GRACE = 60.0


@pytest.mark.parametrize(
    ("catchup", "last_slot", "now", "deadline", "expected"),
    [
        # an ordinary tick just after the slot: both policies run it
        (Catchup.SKIP, u(2024, 1, 1, 9), u(2024, 1, 1, 10, 0, 5), None, [u(2024, 1, 1, 10)]),
        (Catchup.LATEST, u(2024, 1, 1, 9), u(2024, 1, 1, 10, 0, 5), None, [u(2024, 1, 1, 10)]),
        (Catchup.SKIP, u(2024, 1, 1, 9, 59, 50), u(2024, 1, 1, 10), None, [u(2024, 1, 1, 10)]),
        # lateness exactly the grace still counts
        (Catchup.SKIP, u(2024, 1, 1, 9), u(2024, 1, 1, 10, 1), None, [u(2024, 1, 1, 10)]),
        # the slot was already handled (cursor on it, or past it): nothing, never twice
        (Catchup.SKIP, u(2024, 1, 1, 10), u(2024, 1, 1, 10, 0, 30), None, []),
        (Catchup.LATEST, u(2024, 1, 1, 10), u(2024, 1, 1, 10, 30), None, []),
        (Catchup.LATEST, u(2024, 1, 1, 10, 0, 30), u(2024, 1, 1, 10, 59), None, []),
        # between slots, nothing is due
        (Catchup.SKIP, u(2024, 1, 1, 10, 0, 30), u(2024, 1, 1, 10, 30), None, []),
        # back from an outage (last handled 03:00, now 10:20): skip drops every missed slot
        (Catchup.SKIP, u(2024, 1, 1, 3), u(2024, 1, 1, 10, 20), None, []),
        (Catchup.SKIP, u(2024, 1, 1, 3), u(2024, 1, 1, 10, 1, 1), None, []),  # grace + 1s
        # ...latest runs only the most recent missed slot, 10:00, without or within a deadline
        (Catchup.LATEST, u(2024, 1, 1, 3), u(2024, 1, 1, 10, 20), None, [u(2024, 1, 1, 10)]),
        (Catchup.LATEST, u(2024, 1, 1, 3), u(2024, 1, 1, 10, 20), 3600.0, [u(2024, 1, 1, 10)]),
        (Catchup.LATEST, u(2024, 1, 1, 3), u(2024, 1, 1, 10, 20), 1200.0, [u(2024, 1, 1, 10)]),
        (Catchup.LATEST, u(2024, 1, 1, 3), u(2024, 1, 1, 10, 20), 1199.0, []),  # past deadline
        # ...however long the outage (far beyond the 100-slot cap)
        (Catchup.LATEST, u(2023, 1, 1), u(2024, 1, 1, 10, 20), None, [u(2024, 1, 1, 10)]),
        # a deadline tighter than the grace binds on-time slots too, under both policies
        (Catchup.SKIP, u(2024, 1, 1, 9), u(2024, 1, 1, 10, 0, 30), 20.0, []),
        (Catchup.LATEST, u(2024, 1, 1, 9), u(2024, 1, 1, 10, 0, 30), 20.0, []),
        (Catchup.SKIP, u(2024, 1, 1, 9), u(2024, 1, 1, 10, 0, 20), 20.0, [u(2024, 1, 1, 10)]),
        (Catchup.SKIP, u(2024, 1, 1, 9), u(2024, 1, 1, 10), 0.0, [u(2024, 1, 1, 10)]),
        # no cursor yet (a new script): only a slot that is "now" runs, whatever the policy
        (Catchup.SKIP, None, u(2024, 1, 1, 10, 0, 5), None, [u(2024, 1, 1, 10)]),
        (Catchup.LATEST, None, u(2024, 1, 1, 10, 0, 5), None, [u(2024, 1, 1, 10)]),
        (Catchup.LATEST, None, u(2024, 1, 1, 10, 20), None, []),
        (Catchup.LATEST, None, u(2024, 1, 1, 10, 20), 3600.0, []),
    ],
)
def test_catchup_slots(
    catchup: Catchup,
    last_slot: datetime | None,
    now: datetime,
    deadline: float | None,
    expected: list[datetime],
) -> None:
    assert catchup_slots(H, "UTC", catchup, last_slot, now, deadline, tick_grace=GRACE) == expected


@pytest.mark.parametrize(
    ("catchup", "last_slot", "now", "expected"),
    [
        # NY fall back: down from 00:00 EDT to 01:45 EST; the latest slot of a fixed 01:30 job
        # is the first pass (05:30Z), the second pass (06:30Z) is not a slot.
        (Catchup.LATEST, u(2024, 11, 3, 4), u(2024, 11, 3, 6, 45), [u(2024, 11, 3, 5, 30)]),
        (Catchup.SKIP, u(2024, 11, 3, 4), u(2024, 11, 3, 6, 30, 30), []),
        # ...and once it ran, the repeated 01:30 does not run it again
        (Catchup.SKIP, u(2024, 11, 3, 5, 30), u(2024, 11, 3, 6, 30, 30), []),
        (Catchup.LATEST, u(2024, 11, 3, 5, 30), u(2024, 11, 3, 6, 30, 30), []),
    ],
)
def test_catchup_slots_on_fall_back(
    catchup: Catchup, last_slot: datetime, now: datetime, expected: list[datetime]
) -> None:
    assert catchup_slots("30 1 * * *", NY, catchup, last_slot, now, None) == expected


def test_catchup_slots_ticking_runs_each_slot_once() -> None:
    """A scheduler that ticks every 20 s and moves its cursor to `now` runs every slot once."""
    ran: list[datetime] = []
    cursor: datetime | None = None
    now = u(2024, 11, 3, 4, 30)  # across the NY fall-back night
    while now < u(2024, 11, 3, 8):
        ran += catchup_slots("*/30 * * * *", NY, Catchup.SKIP, cursor, now, None, tick_grace=30)
        cursor, now = now, now + timedelta(seconds=20)
    # 00:30 EDT .. 01:30 EDT, 01:00 EST, 01:30 EST .. 02:30 EST: both passes, each once
    expected = [u(2024, 11, 3, 4, 30) + timedelta(minutes=30 * i) for i in range(7)]
    assert ran == expected


@pytest.mark.parametrize(("grace", "deadline"), [(-1.0, None), (60.0, -1.0)])
def test_catchup_slots_refuses_negative_windows(grace: float, deadline: float | None) -> None:
    with pytest.raises(ValueError):
        catchup_slots(H, "UTC", Catchup.SKIP, None, NEW_YEAR, deadline, tick_grace=grace)


# --- slots_to_run: a busy server loses no slot ------------------------------------------------

M = "* * * * *"  # every minute, UTC
UP = u(2024, 1, 1, 10, 0, 0, 500000)  # the scheduler's first tick


@pytest.mark.parametrize(
    ("catchup", "last_slot", "now", "deadline", "expected"),
    [
        # ticking on time: the slot of the minute
        (Catchup.SKIP, u(2024, 1, 1, 10, 4), u(2024, 1, 1, 10, 5, 1), None, zs("2024-01-01T10:05")),
        # a tick 3.5 minutes late (a blocked event loop): every slot since runs, oldest first
        (
            Catchup.SKIP,
            u(2024, 1, 1, 10),
            u(2024, 1, 1, 10, 3, 30),
            None,
            zs("2024-01-01T10:01", "2024-01-01T10:02", "2024-01-01T10:03"),
        ),
        # ...the same under latest
        (
            Catchup.LATEST,
            u(2024, 1, 1, 10),
            u(2024, 1, 1, 10, 2, 30),
            None,
            zs("2024-01-01T10:01", "2024-01-01T10:02"),
        ),
        # ...but a starting deadline the script set still caps how late a run may start
        (
            Catchup.SKIP,
            u(2024, 1, 1, 10),
            u(2024, 1, 1, 10, 3, 30),
            120.0,
            zs("2024-01-01T10:02", "2024-01-01T10:03"),
        ),
        # nothing new: nothing, never twice
        (Catchup.SKIP, u(2024, 1, 1, 10, 3), u(2024, 1, 1, 10, 3, 59), None, []),
        # the cursor from before an outage (09:00), up at 10:00:00.5: the outage's slots go by
        # the policy (skip: none; latest: only 10:00, the most recent one, as at UP), the slots
        # since UP all run
        (
            Catchup.SKIP,
            u(2024, 1, 1, 9),
            u(2024, 1, 1, 10, 2, 30),
            None,
            zs("2024-01-01T10:00", "2024-01-01T10:01", "2024-01-01T10:02"),
        ),
        (
            Catchup.LATEST,
            u(2024, 1, 1, 9),
            u(2024, 1, 1, 10, 1, 30),
            None,
            zs("2024-01-01T10:00", "2024-01-01T10:01"),
        ),
    ],
)
def test_slots_to_run_while_up(
    catchup: Catchup,
    last_slot: datetime,
    now: datetime,
    deadline: float | None,
    expected: list[datetime],
) -> None:
    got = slots_to_run(M, "UTC", catchup, last_slot, now, deadline, up_since=UP, tick_grace=10)
    assert got == expected


@pytest.mark.parametrize("catchup", list(Catchup))
def test_slots_to_run_after_an_outage_follows_the_policy(catchup: Catchup) -> None:
    """Up at 10:30:30 after a cursor of 10:03: 10:04..10:30 were missed while down."""
    up = u(2024, 1, 1, 10, 30, 30)
    first = slots_to_run(
        M, "UTC", catchup, u(2024, 1, 1, 10, 3), up, None, up_since=None, tick_grace=10
    )
    assert first == ([] if catchup is Catchup.SKIP else zs("2024-01-01T10:30"))
    # The next tick (the cursor unmoved under skip): the outage is not replayed, 10:31 runs.
    cursor = u(2024, 1, 1, 10, 3) if not first else first[-1]
    later = u(2024, 1, 1, 10, 31, 0, 200000)
    assert slots_to_run(M, "UTC", catchup, cursor, later, None, up_since=up, tick_grace=10) == zs(
        "2024-01-01T10:31"
    )


# --- the scheduler loop, with its clock injected (real SQLite, a fake runner) ---------------


class FakeRunner:
    """Our own seam: records triggers and makes the run in the store, like ScriptRunner does."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.slots: list[str] = []
        self.gate: asyncio.Event | None = None

    def plan_slots(self, due: list[tuple[ScriptRecord, float]]) -> SlotPlan:
        """Every due slot goes the one-at-a-time way (``trigger``), which this fake records."""
        return SlotPlan(due=list(due), items=[], cursors={}, later=list(due))

    def record_slots(self, plan: SlotPlan) -> SlotRuns:
        return SlotRuns(made=[], to_start=[], already=[], later=plan.later)

    async def trigger(self, script: ScriptRecord, trigger: Trigger, *, slot: float) -> Run | None:
        if self.gate is not None:
            await self.gate.wait()
        self.slots.append(trigger.name)
        release = self.store.latest_release(script.app_id)
        assert release is not None
        return new_run(
            self.store,
            self.store.app_by_id(script.app_id),
            release,
            workspace=script.workspace,
            trigger=trigger,
            script=script.name,
            slot=trigger.name,
            script_id=script.id,
        )


def _cron_store(tmp_path: Path, catchup: Catchup = Catchup.SKIP) -> Store:
    store = new_store(tmp_path / "cron.db")
    app, _ = app_with_release(store)
    store.sync_scripts(
        "default", app.id, [Script(name="tick", command="true", cron=M, catchup=catchup)]
    )
    return store


def _ticks(scheduler: Scheduler, *instants: datetime) -> None:
    async def go() -> None:
        for instant in instants:
            await asyncio.gather(*scheduler.tick(instant.timestamp()))

    asyncio.run(go())


def test_a_late_tick_runs_every_slot_it_missed(tmp_path: Path) -> None:
    store = _cron_store(tmp_path)
    runner = FakeRunner(store)
    scheduler = Scheduler(store, runner)  # type: ignore[arg-type]
    # On time at 10:00, then the loop is blocked for three and a half minutes.
    _ticks(scheduler, u(2024, 1, 1, 10, 0, 0, 500000), u(2024, 1, 1, 10, 3, 30))
    assert runner.slots == [
        "2024-01-01T10:00:00Z",
        "2024-01-01T10:01:00Z",
        "2024-01-01T10:02:00Z",
        "2024-01-01T10:03:00Z",
    ]
    # The next tick runs nothing twice.
    _ticks(scheduler, u(2024, 1, 1, 10, 3, 31))
    assert len(runner.slots) == 4


def test_a_slot_due_while_the_last_trigger_was_in_flight_runs_late(tmp_path: Path) -> None:
    store = _cron_store(tmp_path)
    runner = FakeRunner(store)
    scheduler = Scheduler(store, runner)  # type: ignore[arg-type]

    async def go() -> None:
        runner.gate = asyncio.Event()
        first = scheduler.tick(u(2024, 1, 1, 10, 0, 0, 500000).timestamp())
        await asyncio.sleep(0)
        # 10:01 comes due while 10:00's trigger is still starting: the script is left alone.
        assert scheduler.tick(u(2024, 1, 1, 10, 1, 0, 500000).timestamp()) == []
        runner.gate.set()
        await asyncio.gather(*first)
        # 21 s after its slot (over the 10 s grace): it runs, late.
        await asyncio.gather(*scheduler.tick(u(2024, 1, 1, 10, 1, 21).timestamp()))

    asyncio.run(go())
    assert runner.slots == ["2024-01-01T10:00:00Z", "2024-01-01T10:01:00Z"]


@pytest.mark.parametrize(
    ("catchup", "expected"),
    [
        (Catchup.SKIP, ["2024-01-01T10:31:00Z"]),
        (Catchup.LATEST, ["2024-01-01T10:30:00Z", "2024-01-01T10:31:00Z"]),
    ],
)
def test_a_server_that_was_down_applies_the_catchup_policy(
    tmp_path: Path, catchup: Catchup, expected: list[str]
) -> None:
    store = _cron_store(tmp_path, catchup)
    before = Scheduler(store, FakeRunner(store))  # type: ignore[arg-type]
    _ticks(before, u(2024, 1, 1, 10, 3, 0, 500000))  # first sight: 10:03 runs, cursor there
    runner = FakeRunner(store)
    after = Scheduler(store, runner)  # type: ignore[arg-type]  # a restart, half an hour later
    _ticks(after, u(2024, 1, 1, 10, 30, 30), u(2024, 1, 1, 10, 31, 0, 500000))
    assert runner.slots == expected


# --- decide -----------------------------------------------------------------------------------

Q, S, A, R = Concurrency.QUEUE, Concurrency.SKIP, Concurrency.ALLOW, Concurrency.REPLACE


@pytest.mark.parametrize(
    ("policy", "active", "queued", "cap", "decision", "reason"),
    [
        (Q, 0, 0, 1, Decision.START, None),
        (Q, 1, 0, 1, Decision.ENQUEUE, None),
        (Q, 1, 1, 1, Decision.SKIP, "backlog is full (1/1)"),
        (Q, 1, 2, 3, Decision.ENQUEUE, None),
        (Q, 1, 3, 3, Decision.SKIP, "backlog is full (3/3)"),
        (Q, 1, 0, 0, Decision.SKIP, "backlog is full (0/0)"),  # no backlog: queue acts as skip
        (Q, 0, 0, 0, Decision.START, None),
        (Q, 0, 1, 2, Decision.ENQUEUE, None),  # first in, first out: it waits behind the queued
        (Q, 0, 1, 1, Decision.SKIP, "backlog is full (1/1)"),
        (Q, 2, 0, 1, Decision.ENQUEUE, None),
        (S, 0, 0, 1, Decision.START, None),
        (S, 1, 0, 1, Decision.SKIP, "1 run is still active"),
        (S, 3, 0, 1, Decision.SKIP, "3 runs are still active"),
        (A, 0, 0, 1, Decision.START, None),
        (A, 5, 0, 0, Decision.START, None),
        (A, 5, 9, 0, Decision.START, None),
        (R, 0, 0, 1, Decision.START, None),
        (R, 1, 0, 1, Decision.REPLACE, None),
        (R, 2, 0, 0, Decision.REPLACE, None),
    ],
)
def test_decide(
    policy: Concurrency,
    active: int,
    queued: int,
    cap: int,
    decision: Decision,
    reason: str | None,
) -> None:
    assert decide(policy, active, queued, cap) is decision
    why = skip_reason(policy, active, queued, cap)
    if reason is None:
        assert why is None
    else:
        assert why is not None and reason in why


@pytest.mark.parametrize(("active", "queued", "cap"), [(-1, 0, 1), (0, -1, 1), (0, 0, -1)])
def test_decide_refuses_negative_counts(active: int, queued: int, cap: int) -> None:
    with pytest.raises(ValueError):
        decide(Concurrency.QUEUE, active, queued, cap)
