"""Cron timing and overlap policy for scripts: values in, values out, no I/O, no clock.

Every instant here is a time-zone-aware :class:`~datetime.datetime`; results are in UTC. ``now`` is
always a parameter. Slots are compared as instants, never as wall-clock times (croniter#259 is what
happens otherwise). A *slot* is one instant at which a cron expression fires; the store identifies
a scheduled run by ``(script, slot in UTC)`` under a unique key, so nothing here can make one slot
run twice.

Expressions are read in the script's IANA time zone with croniter (tz-aware datetimes, Vixie
day-of-month/day-of-week OR rule). Daylight saving time, checked against croniter 7.0.0:

* **Spring forward** (the wall clock skips an hour). A slot whose time does not exist that day
  runs once, at the first minute after the gap: ``30 2 * * *`` in America/New_York fires at 03:00
  EDT on 2024-03-10, and ``*/20 2 * * *`` fires once at 03:00 instead of three times. Slots whose
  minute pattern repeats every hour simply have no occurrence in the missing hour: ``0 * * * *``
  fires at 01:00 EST then 03:00 EDT, and ``30 * * * *`` at 01:30 then 03:30. Vixie cron behaves
  the same way; Nomad instead drops the nonexistent slot.
* **Fall back** (the wall clock repeats an hour). hgrun follows Vixie cron: a *fixed-time* job,
  one whose minute and hour fields are both not ``*``-led (``30 1 * * *``, ``0 2,14 * * *``,
  ``@daily``), runs once, at the first pass through the repeated hour. A *wildcard* job, whose
  minute or hour field starts with ``*`` (``*/15 * * * *``, ``0 * * * *``, ``*/10 1 * * *``,
  ``@hourly``), runs at every matching instant, so in both passes: hourly stays hourly in elapsed
  time. croniter alone would run ``30 1 * * *`` twice on that day; Nomad does too.

Other schedulers' semantics behind the policies: shared/research/semantics.md, sections 1 and 2a.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo

from hgrun.errors import InputError
from hgrun.models import Catchup, Concurrency

# croniter (with dateutil: ~36 ms of import) and zoneinfo (~8 ms) are imported where an
# expression is read or a zone looked up: a manifest without cron scripts, the server's start
# and `hgrun run`'s folder check do not pay for them (tests/test_cli_imports.py).

# The @-macros of Vixie cron that name a schedule, with their five fields (crontab(5)).
# @reboot names an event, not a time, and hgrun has no such event.
MACROS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Kubernetes CronJob's limit: more missed slots than this and only the most recent one counts.
MISSED_CAP = 100
# How late (seconds) a slot may be and still count as "now": covers the scheduler's tick interval.
DEFAULT_TICK_GRACE = 60.0
# How many runs a `queue` script may hold waiting (semantics.md section 0: one queued run at most).
DEFAULT_BACKLOG_CAP = 1

# croniter extensions that Vixie cron, Kubernetes and Nomad do not read: H (hashed) and R (random)
# as a whole field item, e.g. "H", "H/15", "H(0-29)", "R". Month and day names hold no item
# starting with H or R, so THU or MAR are not caught.
_HASHED = re.compile(r"(?:^|,)[HhRr](?:$|[(/,])")
# croniter reads seconds and years when given 6 or 7 fields; start the search for a match from a
# fixed instant so validation does not depend on the clock.
_PROBE = datetime(2000, 1, 1, tzinfo=UTC)
_MINUTE = timedelta(minutes=1)


class CronError(InputError):
    """A cron expression or time zone hgrun does not accept."""

    code = "invalid_schedule"


# --- validation -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def validate_cron(expr: str) -> str | None:
    """Return why ``expr`` is not a schedule hgrun accepts, or ``None`` when it is.

    Accepted: five fields (minute hour day-of-month month day-of-week) that croniter reads, or one
    of the :data:`MACROS` (any letter case). Refused although croniter reads them: a seconds or
    year field (6 or 7 fields, which Quartz and croniter read differently), ``@reboot``, and
    ``H``/``R`` items. Also refused: a date that never comes, such as ``0 0 31 2 *``; with a
    restricted day-of-week the Vixie OR rule applies, so ``0 0 31 2 1`` (every Monday in February)
    is accepted.
    """
    e = expr.strip()
    if not e:
        return "it is empty"
    if e.startswith("@"):
        if e.lower() == "@reboot":
            return "@reboot is not supported: hgrun schedules by time only"
        if e.lower() not in MACROS:
            return f"unknown macro {e!r}; use one of {', '.join(MACROS)}"
        return None
    fields = e.split()
    if len(fields) != 5:
        return f"{len(fields)} fields, expected 5 (minute hour day-of-month month day-of-week)"
    if any(_HASHED.search(f) for f in fields):
        return "H (hashed) and R (random) values are not supported"
    from croniter import CroniterBadDateError, CroniterError, croniter

    if not croniter.is_valid(e):
        return "a field is malformed or out of range"
    # strict=True checks day-of-month against the month; only meaningful when day-of-week does
    # not widen the match (crontab(5): if both day fields are restricted, either may match).
    if fields[4] == "*" and not croniter.is_valid(e, strict=True):
        return "that day never occurs in that month"
    try:
        croniter(e, _PROBE).get_next(datetime)
    except CroniterBadDateError:
        return "it never fires"
    except CroniterError:
        return "a field is malformed or out of range"
    return None


def validate_timezone(tz: str) -> str | None:
    """Return why ``tz`` is not an IANA time zone name, or ``None`` when it is."""
    try:
        _zone(tz)
    except CronError as e:
        return e.message
    return None


# --- slots ------------------------------------------------------------------------------------


def next_fire(expr: str, tz: str, after: datetime) -> datetime:
    """The first slot of ``expr`` (read in zone ``tz``) strictly after ``after``, in UTC.

    Raises :class:`CronError` for an expression :func:`validate_cron` refuses or an unknown zone.
    """
    return next(_slots(expr, tz, _utc(after, "after")))


def last_fire(expr: str, tz: str, at: datetime) -> datetime:
    """The most recent slot of ``expr`` at or before ``at`` (``at`` itself counts), in UTC."""
    # Slots fall on whole minutes, so the answer is the same for every ``at`` of one minute:
    # a scheduler ticking each second for many scripts computes each schedule once a minute.
    at = _utc(at, "at")
    return _last_fire_in_minute(expr, tz, at.replace(second=0, microsecond=0))


@functools.lru_cache(maxsize=4096)
def _last_fire_in_minute(expr: str, tz: str, at: datetime) -> datetime:
    from croniter import croniter

    cron, zone, fixed = _compile(expr, tz)
    # Slots fall on whole minutes, so "slot <= at" is "slot < floor(at) + 1 minute"; croniter's
    # get_prev is exclusive of its start.
    bound = at.replace(second=0, microsecond=0) + _MINUTE
    it = croniter(cron, bound.astimezone(zone))
    for _ in range(3):
        guess = _as_utc(it.get_prev(datetime))
        if guess <= at and not (fixed and _second_pass(guess, zone)):
            break
    else:
        raise CronError(f"cannot find the slot of {expr!r} before {at.isoformat()}")
    # get_prev has had DST bugs of its own (croniter#90, #137); walking forward with the
    # exclusive get_next corrects a guess that landed too early.
    later = _slots(expr, tz, guess)
    while (slot := next(later)) <= at:
        guess = slot
    return guess


@dataclasses.dataclass(frozen=True)
class Due:
    """Slots that came due, oldest first.

    ``truncated`` is true when more than the cap came due (k8s ``TooManyMissedTimes``); then
    ``slots`` holds only the most recent one and the older ones are dropped.
    """

    slots: tuple[datetime, ...]
    truncated: bool = False


def due_slots(
    expr: str, tz: str, last_slot: datetime | None, now: datetime, cap: int = MISSED_CAP
) -> Due:
    """The slots in ``(last_slot, now]``: exclusive of ``last_slot``, inclusive of ``now``.

    ``last_slot`` is the scheduler's cursor: the last slot it handled, or the ``now`` of its last
    evaluation. ``None`` (never evaluated) means nothing is due. More than ``cap`` slots: like the
    Kubernetes CronJob controller v2, only the most recent is returned and ``truncated`` is set;
    the scan stops after ``cap + 1`` slots, so a long outage costs no more than that.
    """
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    now = _utc(now, "now")
    if last_slot is None:
        _compile(expr, tz)
        return Due(())
    last_slot = _utc(last_slot, "last_slot")
    out: list[datetime] = []
    for slot in _slots(expr, tz, last_slot):
        if slot > now:
            break
        if len(out) == cap:
            return Due((last_fire(expr, tz, now),), truncated=True)
        out.append(slot)
    return Due(tuple(out))


def catchup_slots(
    expr: str,
    tz: str,
    catchup: Catchup,
    last_slot: datetime | None,
    now: datetime,
    starting_deadline: float | None,
    tick_grace: float = DEFAULT_TICK_GRACE,
) -> list[datetime]:
    """The slots a scheduler starts when it ticks or (re)starts at ``now``: none or one.

    Only the most recent slot ``s <= now`` is ever a candidate, and only if ``s > last_slot``
    (already handled otherwise). Its lateness is ``now - s`` in seconds, and it is returned when
    the lateness is within the window:

    * ``Catchup.SKIP``: ``tick_grace``. The slot is "now" for a scheduler that ticks at least
      every ``tick_grace`` seconds; a slot missed during an outage is dropped.
    * ``Catchup.LATEST``: unbounded, so the most recent missed slot runs however old (the k8s
      CronJob model); older missed slots are dropped however many there were.
    * ``starting_deadline`` (seconds, ``None`` for none), when set, caps the window under both
      policies: no run ever starts later than that after its slot (k8s
      ``startingDeadlineSeconds``). Keep it above the tick interval or on-time slots are dropped.
    * ``last_slot is None`` (a script never evaluated, e.g. just deployed): nothing counts as
      missed, so both policies use the ``tick_grace`` window.

    The caller then advances its cursor to ``now`` (or to the returned slot); slots not returned
    are dropped for good, and should it crash before that, the store's unique key on the slot's
    UTC instant keeps the retry from running one slot twice.
    """
    if tick_grace < 0:
        raise ValueError(f"tick_grace must not be negative, got {tick_grace}")
    if starting_deadline is not None and starting_deadline < 0:
        raise ValueError(f"starting_deadline must not be negative, got {starting_deadline}")
    now = _utc(now, "now")
    slot = last_fire(expr, tz, now)
    if last_slot is not None and slot <= _utc(last_slot, "last_slot"):
        return []
    window = math.inf if catchup == Catchup.LATEST and last_slot is not None else tick_grace
    if starting_deadline is not None:
        window = min(window, starting_deadline)
    return [slot] if (now - slot).total_seconds() <= window else []


def slots_to_run(
    expr: str,
    tz: str,
    catchup: Catchup,
    last_slot: datetime | None,
    now: datetime,
    starting_deadline: float | None,
    *,
    up_since: datetime | None,
    tick_grace: float = DEFAULT_TICK_GRACE,
    cap: int = MISSED_CAP,
) -> list[datetime]:
    """The slots a running scheduler starts at a tick at ``now``, oldest first.

    A busy server loses no slot; only a server that was down applies the catch-up policy:

    * a slot in ``(last_slot, now]`` that came due while this scheduler was up (``slot >=
      up_since``, the instant of its first tick) runs however late its tick comes: a tick
      delayed by a blocked event loop, or a script whose previous trigger was still in flight,
      runs the slot late instead of dropping it. ``starting_deadline`` still caps its lateness
      (the script asked for that); more than ``cap`` such slots keep only the most recent
      (:func:`due_slots`).
    * the slots that came due before ``up_since`` (the server was down) are decided by
      :func:`catchup_slots` as at ``up_since``: none, or the most recent one.

    ``up_since`` None (not ticked yet) is the first tick: :func:`catchup_slots` alone.
    """
    if up_since is None or last_slot is None:
        return catchup_slots(expr, tz, catchup, last_slot, now, starting_deadline, tick_grace)
    now, up_since = _utc(now, "now"), _utc(up_since, "up_since")
    down = catchup_slots(
        expr, tz, catchup, last_slot, min(now, up_since), starting_deadline, tick_grace
    )
    # Scanned from up_since at the earliest (exclusive bound, hence the microsecond): a cursor
    # left before an outage costs nothing, and a tick costs one step per slot due.
    since = max(_utc(last_slot, "last_slot"), up_since - timedelta(microseconds=1))
    up = [
        slot
        for slot in due_slots(expr, tz, since, now, cap).slots
        if starting_deadline is None or (now - slot).total_seconds() <= starting_deadline
    ]
    return sorted({*down, *up})


# --- concurrency ------------------------------------------------------------------------------


class Decision(enum.StrEnum):
    """What to do with a run that is due, given the script's runs already in flight."""

    START = "start"
    ENQUEUE = "enqueue"
    SKIP = "skip"  # record a run with status `skipped` and the reason from skip_reason()
    REPLACE = "replace"  # cancel the active run(s), then start this one


def decide(policy: Concurrency, active: int, queued: int, backlog_cap: int) -> Decision:
    """Decide a due run's fate from the script's ``active`` and ``queued`` run counts.

    ``allow`` always starts. ``skip`` starts when nothing is active, else skips (k8s ``Forbid``).
    ``replace`` starts when nothing is active, else replaces (k8s ``Replace``). ``queue`` starts
    only when nothing is active *and* nothing waits; otherwise it enqueues while fewer than
    ``backlog_cap`` runs wait, and skips when the backlog is full. A run waiting while nothing is
    active (the moment between one finishing and the next being taken) keeps its place: the new
    run queues behind it, so the backlog stays first in, first out.
    """
    return _decide(policy, active, queued, backlog_cap)[0]


def skip_reason(policy: Concurrency, active: int, queued: int, backlog_cap: int) -> str | None:
    """Why :func:`decide` skips with these arguments, for the skipped run's record; else None."""
    return _decide(policy, active, queued, backlog_cap)[1]


def _decide(
    policy: Concurrency, active: int, queued: int, backlog_cap: int
) -> tuple[Decision, str | None]:
    if active < 0 or queued < 0 or backlog_cap < 0:
        raise ValueError(f"negative count: active={active} queued={queued} cap={backlog_cap}")
    if policy == Concurrency.ALLOW:
        return Decision.START, None
    if policy == Concurrency.SKIP:
        if active:
            return Decision.SKIP, f"concurrency is skip and {_runs(active)} still active"
        return Decision.START, None
    if policy == Concurrency.REPLACE:
        return (Decision.REPLACE if active else Decision.START), None
    if policy != Concurrency.QUEUE:
        raise ValueError(f"unknown concurrency policy {policy!r}")
    if not active and not queued:
        return Decision.START, None
    if queued < backlog_cap:
        return Decision.ENQUEUE, None
    return Decision.SKIP, f"concurrency is queue and the backlog is full ({queued}/{backlog_cap})"


def _runs(n: int) -> str:
    return "1 run is" if n == 1 else f"{n} runs are"


# --- internals --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _zone(tz: str) -> tzinfo:
    if tz == "UTC":
        return UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError) as e:
        raise CronError(
            f"unknown time zone {tz!r}", hint="use an IANA name such as Europe/Paris or UTC"
        ) from e


@functools.lru_cache(maxsize=1024)
def _compile(expr: str, tz: str) -> tuple[str, tzinfo, bool]:
    """Validate; return the five-field expression, the zone, and whether it is fixed-time."""
    problem = validate_cron(expr)
    if problem is not None:
        raise CronError(f"cron {expr!r} {problem}", hint="use 5 fields or a macro like @daily")
    e = expr.strip()
    cron = MACROS.get(e.lower(), e)
    minute, hour = cron.split()[:2]
    # Vixie cron (cron.c, MIN_STAR/HR_STAR): a field that starts with "*" makes a wildcard job.
    return cron, _zone(tz), not (minute.startswith("*") or hour.startswith("*"))


def _slots(expr: str, tz: str, after: datetime) -> Iterator[datetime]:
    """Slots strictly after ``after``, in UTC, strictly increasing, fall-back repeats dropped."""
    from croniter import CroniterError, croniter

    cron, zone, fixed = _compile(expr, tz)
    prev = after
    it = croniter(cron, after.astimezone(zone))
    while True:
        try:
            slot = _as_utc(it.get_next(datetime))
        except CroniterError as e:
            raise CronError(f"cron {expr!r} has no slot after {prev.isoformat()}") from e
        if slot <= prev:
            # Never hand out an instant twice or go backwards, whatever croniter's DST handling
            # does (croniter#90, #91, #137); restart exclusive of the last instant handed out.
            it = croniter(cron, prev.astimezone(zone))
            slot = _as_utc(it.get_next(datetime))
            if slot <= prev:
                raise CronError(f"cron {expr!r} does not advance past {prev.isoformat()}")
        prev = slot
        if fixed and _second_pass(slot, zone):
            continue
        yield slot


def _second_pass(slot: datetime, zone: tzinfo) -> bool:
    """Whether ``slot`` falls in the second pass through a wall-clock hour repeated at fall-back."""
    local = slot.astimezone(zone)  # PEP 495: fromutc sets fold=1 on the repeated wall time
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def _utc(t: datetime, name: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{name} must be time-zone aware, got naive {t.isoformat()}")
    return t.astimezone(UTC)


def _as_utc(t: datetime) -> datetime:
    # croniter sets fold=1 on some results; in UTC it means nothing, so drop it.
    return t.astimezone(UTC).replace(fold=0)
