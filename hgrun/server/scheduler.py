"""The cron loop: evaluates each script's schedule and triggers the slots that are due.

The timing decisions are pure (``hgrun.schedule``); this loop only reads the clock, keeps each
script's cursor in the store and calls the script runner. A slot is triggered with its UTC
instant as the run's slot key, which the store keeps unique per script: a restart, a retry or a
second server process on the same store never runs a slot twice.

A slot that came due while this scheduler was up always runs, however late its tick (a busy
event loop, a slow trigger of the same script): only slots missed while the server was down go
by the script's catch-up policy (``schedule.slots_to_run``).

Several servers on one store (PostgreSQL) run one scheduler at a time: each tick, a server
claims or renews the store's lease ``scheduler`` (``LEASE_TTL``) and ticks only while it holds
it; the others stand by. A holder that dies is replaced when its lease expires, or at once when
it was a process of this host (``holder_gone``). A standby that takes over counts itself up
since it began standing by: slots that came due during the handover run, they were not missed
by a server that was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import time
from collections.abc import Callable

from hgrun.errors import HgrunError
from hgrun.models import ScriptRecord, Trigger, TriggerKind
from hgrun.schedule import slots_to_run
from hgrun.server.scripts import ScriptRunner
from hgrun.store import Store

log = logging.getLogger("hgrun.scheduler")

TICK = 1.0
TICK_GRACE = 10.0  # a slot up to this late is "now"; older ones follow the catch-up policy
LEASE = "scheduler"
LEASE_TTL = 10.0  # renewed every tick; a dead scheduler is replaced within this


class Scheduler:
    def __init__(
        self,
        store: Store,
        runner: ScriptRunner,
        *,
        clock: Callable[[], float] = time.time,
        tick: float = TICK,
        owner: str | None = None,
        lease_ttl: float = LEASE_TTL,
        holder_gone: Callable[[str], bool] = lambda _holder: False,
    ) -> None:
        """``owner``: this server's id in the store's ``scheduler`` lease (None: tick without
        one, as a unit test does)."""
        self.store = store
        self.runner = runner
        self.clock = clock
        self.tick_seconds = tick
        self._task: asyncio.Task[None] | None = None
        self._in_flight: dict[int, asyncio.Task[int | None]] = {}
        # Ticks of the loop so far (`GET /v1/health` shows it): proof that cron is alive, and
        # what a test waits on instead of sleeping through "a few ticks".
        self.ticks = 0
        # The instant of the first tick: slots due since then came due while we were up.
        self.up_since: datetime.datetime | None = None
        self.owner = owner
        self.lease_ttl = lease_ttl
        self.holder_gone = holder_gone
        self.leading = owner is None  # whether this server runs the scheduler now
        self.standby_since: datetime.datetime | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._in_flight.values()):
            with contextlib.suppress(Exception):
                await task
        if self.owner is not None and self.leading:
            # Let another server take over now rather than when the lease expires.
            with contextlib.suppress(Exception):
                self.store.release_lease(LEASE, self.owner)

    async def _loop(self) -> None:
        while True:
            try:
                now = self.clock()
                if self.lead(now):
                    self.tick(now)
            except Exception:
                log.exception("scheduler tick failed")
            self.ticks += 1
            # Wake just after the next whole second: cron slots fall on whole minutes.
            await asyncio.sleep(self.tick_seconds - (self.clock() % self.tick_seconds) + 0.01)

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

    def tick(self, now: float) -> list[asyncio.Task[int | None]]:
        """Start a trigger for every script with a due slot; the tasks (each gives a run id).

        Scripts are independent: each due slot is triggered in a task of its own, so a slow
        container start delays no other script and no later tick. A script whose previous
        trigger is still in flight is left for the next tick.
        """
        at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        up_since, self.up_since = self.up_since, self.up_since or at
        started = []
        for script in self.store.scripts(cron_only=True):
            if script.id in self._in_flight:
                continue
            slots = self._due(script, at, up_since)
            if not slots:
                continue
            task = asyncio.create_task(self._trigger(script, slots, at))
            self._in_flight[script.id] = task
            task.add_done_callback(functools.partial(self._done, script.id))
            started.append(task)
        return started

    def _done(self, script_id: int, _task: asyncio.Task[int | None]) -> None:
        self._in_flight.pop(script_id, None)

    def _due(
        self,
        script: ScriptRecord,
        now: datetime.datetime,
        up_since: datetime.datetime | None,
    ) -> list[datetime.datetime]:
        spec = script.spec
        if spec.cron is None:
            return []
        if script.cursor is None:
            # First sight of this schedule: from now on, slots that pass unrun count as missed.
            self.store.set_cursor(script.id, now.timestamp())
            cursor = None
        else:
            cursor = datetime.datetime.fromtimestamp(script.cursor, datetime.UTC)
        return slots_to_run(
            spec.cron,
            spec.timezone,
            spec.catchup,
            cursor,
            now,
            spec.starting_deadline,
            up_since=up_since,
            tick_grace=TICK_GRACE,
        )

    async def _trigger(
        self, script: ScriptRecord, slots: list[datetime.datetime], at: datetime.datetime
    ) -> int | None:
        """Trigger ``slots`` in order; the id of the last run made (None if none was)."""
        spec = script.spec
        last = None
        for slot in slots:
            stamp = slot.strftime("%Y-%m-%dT%H:%M:%SZ")
            late = (at - slot).total_seconds()
            if late > TICK_GRACE:
                log.warning("script %s: slot %s runs %.0f s late", spec.name, stamp, late)
            # Trigger first, then move the cursor: a crash in between retries the slot, and the
            # store's unique key turns the retry into a no-op.
            try:
                run = await self.runner.trigger(
                    script, Trigger(TriggerKind.CRON, stamp), slot=slot.timestamp()
                )
            except HgrunError as e:
                log.warning("script %s: slot %s not run: %s", spec.name, stamp, e.message)
                run = None
            self.store.set_cursor(script.id, slot.timestamp())
            if run is None:
                log.info("script %s: slot %s already has its run", spec.name, stamp)
            else:
                last = run.id
        return last
