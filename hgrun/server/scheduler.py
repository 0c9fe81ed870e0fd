"""The cron loop: evaluates each script's schedule and triggers the slots that are due.

The timing decisions are pure (``hgrun.schedule``); this loop only reads the clock, keeps each
script's cursor in the store and calls the script runner. A slot is triggered with its UTC
instant as the run's slot key, which the store keeps unique per script: a restart, a retry or a
second server process on the same store never runs a slot twice.
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
from hgrun.schedule import catchup_slots
from hgrun.server.scripts import ScriptRunner
from hgrun.store import Store

log = logging.getLogger("hgrun.scheduler")

TICK = 1.0
TICK_GRACE = 10.0  # a slot up to this late is "now"; older ones follow the catch-up policy


class Scheduler:
    def __init__(
        self,
        store: Store,
        runner: ScriptRunner,
        *,
        clock: Callable[[], float] = time.time,
        tick: float = TICK,
    ) -> None:
        self.store = store
        self.runner = runner
        self.clock = clock
        self.tick_seconds = tick
        self._task: asyncio.Task[None] | None = None
        self._in_flight: dict[int, asyncio.Task[int | None]] = {}
        # Ticks of the loop so far (`GET /v1/health` shows it): proof that cron is alive, and
        # what a test waits on instead of sleeping through "a few ticks".
        self.ticks = 0

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

    async def _loop(self) -> None:
        while True:
            try:
                self.tick(self.clock())
            except Exception:
                log.exception("scheduler tick failed")
            self.ticks += 1
            # Wake just after the next whole second: cron slots fall on whole minutes.
            await asyncio.sleep(self.tick_seconds - (self.clock() % self.tick_seconds) + 0.01)

    def tick(self, now: float) -> list[asyncio.Task[int | None]]:
        """Start a trigger for every script with a due slot; the tasks (each gives a run id).

        Scripts are independent: each due slot is triggered in a task of its own, so a slow
        container start delays no other script and no later tick. A script whose previous
        trigger is still in flight is left for the next tick.
        """
        at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        started = []
        for script in self.store.scripts(cron_only=True):
            if script.id in self._in_flight:
                continue
            slot = self._due(script, at)
            if slot is None:
                continue
            task = asyncio.create_task(self._trigger(script, slot))
            self._in_flight[script.id] = task
            task.add_done_callback(functools.partial(self._done, script.id))
            started.append(task)
        return started

    def _done(self, script_id: int, _task: asyncio.Task[int | None]) -> None:
        self._in_flight.pop(script_id, None)

    def _due(self, script: ScriptRecord, now: datetime.datetime) -> datetime.datetime | None:
        spec = script.spec
        if spec.cron is None:
            return None
        if script.cursor is None:
            # First sight of this schedule: from now on, slots that pass unrun count as missed.
            self.store.set_cursor(script.id, now.timestamp())
            cursor = None
        else:
            cursor = datetime.datetime.fromtimestamp(script.cursor, datetime.UTC)
        slots = catchup_slots(
            spec.cron,
            spec.timezone,
            spec.catchup,
            cursor,
            now,
            spec.starting_deadline,
            tick_grace=TICK_GRACE,
        )
        return slots[-1] if slots else None

    async def _trigger(self, script: ScriptRecord, slot: datetime.datetime) -> int | None:
        spec = script.spec
        stamp = slot.strftime("%Y-%m-%dT%H:%M:%SZ")
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
            return None
        return run.id
