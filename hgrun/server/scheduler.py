"""The cron loop: sleeps until the next slot, records every run due at it, then starts them.

The timing decisions are pure (``hgrun.schedule``); this loop only reads the clock, sleeps, and
hands the due slots to the script runner. It sleeps until the next slot of any script (slots
fall on whole minutes), not a fixed tick: ``wake()`` (a deploy changed the scripts) cuts the
sleep short, and it never sleeps longer than ``MAX_SLEEP`` (another server process on the same
store may have deployed).

At a wake-up, every due slot of every script is recorded in one store transaction with the
scripts' cursors (``ScriptRunner.record_slots``): a thousand scripts due at once all have their
run within milliseconds of the slot. What does not depend on the instant is done ``PLAN_AHEAD``
before the slot (the scripts read, their due slots worked out, each run resolved and checked:
``ScriptRunner.plan_slots``), so at the slot only the policies' decisions and the insert
remain; a wake-up in between (a deploy) makes the plan again. The containers are then started
as fast as the engine takes them (``ScriptRunner.start``, bounded concurrency), in the
background: the next slot's records never wait for this one's starts. A slot is recorded with
its UTC instant as the run's slot key, which the store keeps unique per script: a restart, a
retry or a second server process on the same store never runs a slot twice.

A slot that came due while this scheduler was up always runs, however late its wake-up (a busy
event loop): only slots missed while the server was down go by the script's catch-up policy
(``schedule.slots_to_run``).

Several servers on one store (PostgreSQL) run one scheduler at a time: at each wake-up, a
server claims or renews the store's lease ``scheduler`` (``LEASE_TTL``) and records slots only
while it holds it; the others stand by. With an owner, the loop also wakes every third of the
lease's time to renew it (or, standing by, to take it over). A holder that dies is replaced
when its lease expires, or at once when it was a process of this host (``holder_gone``). A
standby that takes over counts itself up since it began standing by: slots that came due
during the handover run, they were not missed by a server that was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from hgrun.errors import HgrunError
from hgrun.models import ScriptRecord, Trigger, TriggerKind
from hgrun.schedule import next_fire, slots_to_run
from hgrun.server.scripts import ScriptRunner, SlotPlan
from hgrun.store import Store

log = logging.getLogger("hgrun.scheduler")

TICK_GRACE = 10.0  # a slot up to this late is "now"; older ones follow the catch-up policy
LEASE = "scheduler"
PLAN_AHEAD = 1.0  # seconds before a slot its runs are made ready (Scheduler._plan)
LEASE_TTL = 10.0  # renewed every tick; a dead scheduler is replaced within this
MAX_SLEEP = 60.0  # the longest sleep: scripts deployed by another server process are seen


class Scheduler:
    def __init__(
        self,
        store: Store,
        runner: ScriptRunner,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        owner: str | None = None,
        lease_ttl: float = LEASE_TTL,
        holder_gone: Callable[[str], bool] = lambda _holder: False,
    ) -> None:
        """``clock`` gives epoch seconds; ``sleep(seconds)`` waits (by default an
        ``asyncio.sleep`` that :meth:`wake` cuts short). Both are injected for tests.
        ``owner``: this server's id in the store's ``scheduler`` lease (None: run without
        one, as a unit test does)."""
        self.store = store
        self.runner = runner
        self.clock = clock
        self._sleep = sleep or self._wait
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: dict[int, asyncio.Task[int | None]] = {}
        self._starts: set[asyncio.Task[None]] = set()
        # Wake-ups of the loop so far (`GET /v1/health` shows it): proof that cron is alive, and
        # what a test waits on instead of sleeping (the first one is at start-up).
        self.ticks = 0
        # The instant of the first tick: slots due since then came due while we were up.
        self.up_since: datetime.datetime | None = None
        self.owner = owner
        self.lease_ttl = lease_ttl
        self.holder_gone = holder_gone
        self.leading = owner is None  # whether this server runs the scheduler now
        self.standby_since: datetime.datetime | None = None
        # When the loop means to wake next (epoch seconds), for the log and for tests.
        self.next_wake: float | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        """Evaluate the schedules now (the scripts changed): a new script's first slot may come
        before the one the loop sleeps towards."""
        self._woken.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Starts still waiting for the engine are dropped: their runs stay `starting` with no
        # container, which recovery starts at the next start-up (a thousand starts would
        # otherwise hold a shutdown for minutes).
        for starting in list(self._starts):
            starting.cancel()
        for task in [*self._in_flight.values(), *self._starts]:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        if self.owner is not None and self.leading:
            # Let another server take over now rather than when the lease expires.
            with contextlib.suppress(Exception):
                self.store.release_lease(LEASE, self.owner)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), seconds)

    async def _loop(self) -> None:
        plan: tuple[float, SlotPlan] | None = None
        slot: float | None = None  # the next slot as last read; None: read the scripts again
        read_at = 0.0
        failed = False  # the last tick failed: tried again at the next wake, as before
        while True:
            if self._woken.is_set():
                plan, slot = None, None  # the scripts changed since they were read
            self._woken.clear()
            now = self.clock()
            was_leading = self.leading
            try:
                leading = self.lead(now)
            except Exception:
                log.exception("scheduler: cannot claim its lease")
                leading = False
            # A wake only to renew the lease (no slot come, nothing changed, the lead kept,
            # the scripts read less than MAX_SLEEP ago) reads nothing: with a thousand cron
            # scripts, reading them all twice took tens of ms of the event loop every 3.3 s.
            if (
                slot is None
                or failed
                or now >= slot
                or now - read_at >= MAX_SLEEP
                or (leading and not was_leading)
            ):
                failed = False
                try:
                    if leading:
                        self.tick(now, plan)
                except Exception:
                    log.exception("scheduler tick failed")
                    failed = True
                plan = None
                self.ticks += 1
                try:
                    slot, read_at = self.next_slot(now), now
                except Exception:
                    log.exception("scheduler: cannot tell the next slot")
                    slot = None
            wake = slot if slot is not None else now + MAX_SLEEP
            if self.owner is not None:
                # The lease is renewed (or, standing by, watched) well before it expires.
                wake = min(wake, now + self.lease_ttl / 3)
            self.next_wake = wake
            if wake == slot and self.leading:
                # The slot's runs are made ready ahead of it: at the slot, only the decisions
                # and the insert remain.
                await self._sleep(max(0.0, wake - PLAN_AHEAD - self.clock()))
                if not self._woken.is_set():
                    plan = self._plan(wake)
            await self._sleep(max(0.0, wake - self.clock()))

    def _plan(self, slot: float) -> tuple[float, SlotPlan] | None:
        """What the tick at ``slot`` records, made ready before it (None: it could not be)."""
        try:
            at, seen = (_utc(t) for t in (slot, self.clock()))
            return slot, self.runner.plan_slots(self._due_at(at, self.up_since, seen))
        except Exception:
            log.exception("scheduler: cannot plan the slot %s", _stamp(slot))
            return None

    def next_slot(self, now: float) -> float:
        """The instant (epoch seconds) the loop wakes next: the first slot of any cron script
        after ``now``, at most ``MAX_SLEEP`` away."""
        minute = now - now % 60
        wake = now + MAX_SLEEP
        for script in self.store.scripts(cron_only=True):
            spec = script.spec
            if spec.cron is not None:
                with contextlib.suppress(HgrunError):
                    wake = min(wake, _next_slot_after_minute(spec.cron, spec.timezone, minute))
        return wake

    def lead(self, now: float) -> bool:
        """Claim or renew the scheduler's lease; whether this server runs the scheduler now."""
        if self.owner is None:
            return True
        at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        holder = self.store.claim_lease(LEASE, self.owner, self.lease_ttl, self.holder_gone)
        if holder is None:
            if not self.leading:
                log.info("this server runs the scheduler (lease %s)", LEASE)
                if self.up_since is None and self.standby_since is not None:
                    # Up (standing by) since then: slots of the handover are not missed ones.
                    self.up_since = self.standby_since
                self.leading = True
            return True
        if self.leading:
            log.warning("the scheduler is run by hgrun server %s now", holder)
            self.leading = False
        if self.standby_since is None:
            log.info("the scheduler is run by hgrun server %s; standing by", holder)
            self.standby_since = at
        return False

    def tick(
        self, now: float, plan: tuple[float, SlotPlan] | None = None
    ) -> list[asyncio.Task[int | None]]:
        """Record the runs of every due slot at ``now`` (one transaction), start them in the
        background; the tasks of slots triggered one at a time (each gives a run id).

        ``plan``: the slot it was made for (:meth:`_plan`) and the slots due then, made ready;
        taken as what is due when that slot has come. A script whose one-at-a-time trigger
        (``ScriptRunner.record_slots`` says which) is still in flight is left for a later
        tick, and then runs late.
        """
        at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        up_since, self.up_since = self.up_since, self.up_since or at
        if plan is not None and plan[0] <= now:
            ready = plan[1]
        else:
            ready = self.runner.plan_slots(self._due_at(at, up_since))
        due = ready.due
        if not due:
            return []
        batch = self.runner.record_slots(ready)
        for script, slot in batch.already:
            log.info("script %s: slot %s already has its run", script.spec.name, _stamp(slot))
        for script, slot in due:
            if now - slot > TICK_GRACE:
                log.warning("script %s: slot %s runs %.0f s late", script.spec.name,
                            _stamp(slot), now - slot)  # fmt: skip
        if batch.to_start:
            starting = asyncio.create_task(self.runner.start(batch.to_start))
            self._starts.add(starting)
            starting.add_done_callback(self._starts.discard)
        singles: dict[int, list[float]] = {}
        scripts: dict[int, ScriptRecord] = {}
        for script, slot in batch.later:
            singles.setdefault(script.id, []).append(slot)
            scripts[script.id] = script
        started = []
        for script_id, slots in singles.items():
            task = asyncio.create_task(self._trigger(scripts[script_id], slots, at))
            self._in_flight[script_id] = task
            task.add_done_callback(functools.partial(self._done, script_id))
            started.append(task)
        return started

    def _done(self, script_id: int, _task: asyncio.Task[int | None]) -> None:
        self._in_flight.pop(script_id, None)

    def _due_at(
        self,
        at: datetime.datetime,
        up_since: datetime.datetime | None,
        seen: datetime.datetime | None = None,
    ) -> list[tuple[ScriptRecord, float]]:
        """Every slot due at ``at`` of every cron script with no trigger in flight here.
        ``seen``: the instant it is asked, when that is before ``at`` (a plan)."""
        due: list[tuple[ScriptRecord, float]] = []
        # The slots of one schedule from one cursor are the same for every script that shares
        # them (a thousand `* * * * *` scripts whose cursors moved together): computed once.
        memo: dict[tuple[object, ...], list[datetime.datetime]] = {}
        for script in self.store.scripts(cron_only=True):
            if script.id in self._in_flight:
                continue
            slots = self._due(script, at, up_since, memo, seen)
            due += [(script, slot.timestamp()) for slot in slots]
        return due

    def _due(
        self,
        script: ScriptRecord,
        now: datetime.datetime,
        up_since: datetime.datetime | None,
        memo: dict[tuple[object, ...], list[datetime.datetime]] | None = None,
        seen: datetime.datetime | None = None,
    ) -> list[datetime.datetime]:
        spec = script.spec
        if spec.cron is None:
            return []
        if script.cursor is None:
            # First sight of this schedule: from now on, slots that pass unrun count as missed
            # (seen ahead of ``now`` by a plan: those up to ``now`` are due then).
            self.store.set_cursor(script.id, (seen or now).timestamp())
            cursor = seen
        else:
            cursor = datetime.datetime.fromtimestamp(script.cursor, datetime.UTC)
        key = (spec.cron, spec.timezone, spec.catchup, cursor, spec.starting_deadline)
        if memo is not None and key in memo:
            return memo[key]
        slots = slots_to_run(
            spec.cron,
            spec.timezone,
            spec.catchup,
            cursor,
            now,
            spec.starting_deadline,
            up_since=up_since,
            tick_grace=TICK_GRACE,
        )
        if memo is not None:
            memo[key] = slots
        return slots

    async def _trigger(
        self, script: ScriptRecord, slots: list[float], at: datetime.datetime
    ) -> int | None:
        """Trigger ``slots`` in order, one at a time; the id of the last run made (None if
        none was)."""
        spec = script.spec
        last = None
        for slot in slots:
            stamp = _stamp(slot)
            # Trigger first, then move the cursor: a crash in between retries the slot, and the
            # store's unique key turns the retry into a no-op.
            try:
                run = await self.runner.trigger(script, Trigger(TriggerKind.CRON, stamp), slot=slot)
            except HgrunError as e:
                log.warning("script %s: slot %s not run: %s", spec.name, stamp, e.message)
                run = None
            self.store.set_cursor(script.id, slot)
            if run is None:
                log.info("script %s: slot %s already has its run", spec.name, stamp)
            else:
                last = run.id
        return last


@functools.lru_cache(maxsize=4096)
def _next_slot_after_minute(cron: str, timezone: str, minute: float) -> float:
    """The first slot after any instant of the whole minute ``minute`` (slots fall on whole
    minutes, so it is the first after the minute's start): computed once a minute per
    schedule, however often the loop wakes."""
    at = datetime.datetime.fromtimestamp(minute, datetime.UTC)
    return next_fire(cron, timezone, at).timestamp()


def _utc(instant: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(instant, datetime.UTC)


def _stamp(slot: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(slot))
