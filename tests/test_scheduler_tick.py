"""Scheduler.tick with explicit instants: a real SQLite store, a fake script runner at our own
seam (it records triggers, and can hold one in flight), no Docker, no clock, no sleeps.

The cron timing rules are table-tested in test_schedule.py; this is the loop's part: one trigger
per due slot with the slot as the run's key, the cursor moved after it, nothing twice, a script
whose trigger is still in flight left for a later tick, and a new schedule never running a slot
from before it was first seen.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from support.store import app_with_release, new_store
from support.stores import StoreFactory

from hgrun.models import Catchup, Script, ScriptRecord, Trigger, TriggerKind
from hgrun.server.scheduler import Scheduler
from hgrun.store import Store

# 2026-12-01 04:00:00 UTC, a whole minute.
SLOT = datetime.datetime(2026, 12, 1, 4, 0, tzinfo=datetime.UTC).timestamp()


class FakeRunner:
    """The ScriptRunner seam: records (script name, trigger, slot); ``hold`` keeps triggers in
    flight until released."""

    def __init__(self) -> None:
        self.triggered: list[tuple[str, Trigger, float | None]] = []
        self.hold: asyncio.Event | None = None

    async def trigger(
        self, script: ScriptRecord, trigger: Trigger, *, slot: float | None = None
    ) -> Any:
        self.triggered.append((script.spec.name, trigger, slot))
        if self.hold is not None:
            await self.hold.wait()
        return None


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = new_store(tmp_path / "hgrun.db", clock=lambda: SLOT)
    app, _ = app_with_release(store)
    store.sync_scripts(
        "default",
        app.id,
        [
            Script(name="every-minute", command="true", cron="* * * * *"),
            Script(name="hourly", command="true", cron="0 * * * *", catchup=Catchup.LATEST),
            Script(name="manual", command="true"),
        ],
    )
    return store


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def scheduler(store: Store, runner: FakeRunner) -> Scheduler:
    def no_clock() -> float:
        raise AssertionError("tick(now) must not read the clock")

    return Scheduler(store, runner, clock=no_clock)  # type: ignore[arg-type]


async def tick(s: Scheduler, now: float) -> list[Any]:
    """One tick at ``now``, its triggers run to their end."""
    return [await task for task in s.tick(now)]


def test_first_sight_runs_no_slot_from_before_and_the_next_slot_once(store: Store) -> None:
    runner = FakeRunner()

    async def scenario() -> None:
        s = scheduler(store, runner)
        # First seen at 03:59:30, 30 s after the 03:59 slot: that slot is before our time.
        await tick(s, SLOT - 30)
        assert runner.triggered == []
        # The slot, on time: both cron scripts (04:00 is also the hourly one's), once each.
        await tick(s, SLOT)
        await tick(s, SLOT + 0.5)
        await tick(s, SLOT + 1)
        names = sorted(name for name, _, _ in runner.triggered)
        assert names == ["every-minute", "hourly"]
        for _, trigger, slot in runner.triggered:
            assert trigger == Trigger(TriggerKind.CRON, "2026-12-01T04:00:00Z")
            assert slot == SLOT
        # The next minute: only the every-minute script.
        await tick(s, SLOT + 60)
        assert [n for n, _, _ in runner.triggered[2:]] == ["every-minute"]
        assert runner.triggered[2][2] == SLOT + 60

    run(scenario())
    cursors = {r.spec.name: r.cursor for r in store.scripts(cron_only=True)}
    assert cursors == {"every-minute": SLOT + 60, "hourly": SLOT}


def test_a_script_whose_trigger_is_in_flight_is_left_for_a_later_tick(store: Store) -> None:
    runner = FakeRunner()

    async def scenario() -> None:
        s = scheduler(store, runner)
        await tick(s, SLOT - 30)
        runner.hold = asyncio.Event()
        first = s.tick(SLOT)
        assert len(first) == 2
        await asyncio.sleep(0)  # the triggers start, and wait on hold
        # Still in flight: a second tick in the slot's minute starts nothing more.
        assert s.tick(SLOT + 1) == []
        runner.hold.set()
        await asyncio.gather(*first)
        assert s.tick(SLOT + 2) == []  # done, and the cursor moved past the slot
        assert len(runner.triggered) == 2

    run(scenario())


def test_scripts_without_cron_are_never_triggered(store: Store) -> None:
    runner = FakeRunner()

    async def scenario() -> None:
        s = scheduler(store, runner)
        for now in (SLOT - 30, SLOT, SLOT + 60, SLOT + 3600):
            await tick(s, now)

    run(scenario())
    assert "manual" not in {name for name, _, _ in runner.triggered}


def test_the_loop_reads_the_injected_clock() -> None:
    """Scheduler's loop asks its injected clock for ``now`` and counts its ticks."""
    seen: list[float] = []

    class Store_:
        def scripts(self, cron_only: bool = False) -> list[ScriptRecord]:
            return []

    async def scenario() -> None:
        def clock() -> float:
            seen.append(SLOT + len(seen))
            return seen[-1]

        s = Scheduler(Store_(), FakeRunner(), clock=clock, tick=0.01)  # type: ignore[arg-type]
        s.start()
        while s.ticks < 3:  # counted for /v1/health
            await asyncio.sleep(0.01)
        await s.stop()

    run(scenario())
    # Each tick asked the injected clock (for its ``now`` and for when to wake).
    assert len(seen) >= 3 and seen[0] == SLOT


# -- one scheduler at a time on a shared store -----------------------------------------------


def test_one_scheduler_at_a_time_and_a_standby_takes_over_with_the_handovers_slots(
    make_store: StoreFactory,
) -> None:
    """Two servers' schedulers on one store (each backend): the first to claim the lease ticks,
    the other stands by; when the leader's process is gone the standby takes over, and a slot
    that came due during the handover runs (30 s late: past the tick grace, so a scheduler
    that had just started would have skipped it); the lease then keeps the old leader out."""
    now = [SLOT - 30]
    shared = make_store(clock=lambda: now[0])
    app, _ = app_with_release(shared)
    shared.sync_scripts(
        "default", app.id, [Script(name="every-minute", command="true", cron="* * * * *")]
    )
    dead: set[str] = set()
    runners = FakeRunner(), FakeRunner()
    a, b = (
        Scheduler(shared, runner, owner=owner, holder_gone=dead.__contains__)  # type: ignore[arg-type]
        for runner, owner in zip(runners, ("host:1:a", "host:2:b"), strict=True)
    )

    async def scenario() -> None:
        assert a.lead(now[0]) and not b.lead(now[0])
        await tick(a, now[0])  # first sight of the schedule: its cursor is set
        assert a.leading and not b.leading and b.standby_since is not None
        dead.add("host:1:a")  # A is killed before the 04:00 slot
        now[0] = SLOT + 30
        assert b.lead(now[0]) and b.leading
        await tick(b, now[0])
        assert [(n, s) for n, _, s in runners[1].triggered] == [("every-minute", SLOT)]
        assert runners[0].triggered == []
        dead.clear()  # A was only paused: B's lease keeps it out until it expires
        now[0] = SLOT + 31
        assert not a.lead(now[0])
        now[0] += b.lease_ttl + 1  # B stops renewing: its lease expires, A leads again
        assert a.lead(now[0]) and not b.lead(now[0]) and not b.leading

    run(scenario())
