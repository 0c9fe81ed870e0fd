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
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from fake_engine import FakeEngine
from support.store import app_with_release, counted_writes, new_store
from support.stores import StoreFactory

from hgrun.models import Catchup, Concurrency, RunStatus, Script, ScriptRecord, Trigger, TriggerKind
from hgrun.server.launcher import Launcher
from hgrun.server.scheduler import PLAN_AHEAD, Scheduler
from hgrun.server.scripts import ScriptRunner, SlotPlan, SlotRuns
from hgrun.server.supervisor import Supervisor
from hgrun.store import Store

# 2026-12-01 04:00:00 UTC, a whole minute.
SLOT = datetime.datetime(2026, 12, 1, 4, 0, tzinfo=datetime.UTC).timestamp()


class FakeRunner:
    """The ScriptRunner seam: records (script name, trigger, slot); ``hold`` keeps triggers in
    flight until released."""

    def __init__(self) -> None:
        self.triggered: list[tuple[str, Trigger, float | None]] = []
        self.hold: asyncio.Event | None = None

    def plan_slots(self, due: list[tuple[ScriptRecord, float]]) -> SlotPlan:
        """Every due slot goes the one-at-a-time way (``trigger``), which this fake records."""
        return SlotPlan(due=list(due), items=[], cursors={}, later=list(due))

    def record_slots(self, plan: SlotPlan) -> SlotRuns:
        return SlotRuns(made=[], to_start=[], already=[], later=plan.later)

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


def test_the_loop_sleeps_until_the_next_slot_and_wakes_at_its_boundary(store: Store) -> None:
    """No fixed tick: the loop sleeps until the next slot of any script (here a whole minute),
    waking PLAN_AHEAD before it to make the slot's runs ready, ticks at that instant, then
    sleeps until the one after. The tick at a planned slot reads no script: the plan did."""
    now = [SLOT - 12.5]
    sleeps: list[float] = []
    events: list[tuple[str, float]] = []  # ("read" the scripts | "record" a slot, when)
    runner = FakeRunner()
    scripts, record = store.scripts, runner.record_slots

    def read(cron_only: bool = False) -> list[ScriptRecord]:
        events.append(("read", now[0]))
        return scripts(cron_only=cron_only)

    def recording(plan: SlotPlan) -> SlotRuns:
        events.append(("record", now[0]))
        return record(plan)

    store.scripts = read  # type: ignore[method-assign]
    runner.record_slots = recording  # type: ignore[method-assign]

    async def scenario() -> None:
        done = asyncio.Event()

        async def sleep(seconds: float) -> None:  # the fake clock moves by the sleep
            sleeps.append(seconds)
            await asyncio.sleep(0.01)  # what the slot started runs meanwhile
            now[0] += seconds
            if len(sleeps) == 6:
                done.set()
                await asyncio.Event().wait()  # the loop sleeps for ever: the test stops it

        s = Scheduler(store, runner, clock=lambda: now[0], sleep=sleep)  # type: ignore[arg-type]
        s.start()
        await asyncio.wait_for(done.wait(), 10)
        await s.stop()
        assert s.ticks == 3

    run(scenario())
    # First sight at 03:59:47.5, then the 04:00 boundary (planned a second before), then 04:01
    # (every-minute is the soonest schedule).
    ahead = PLAN_AHEAD
    assert sleeps == [12.5 - ahead, ahead, 60 - ahead, ahead, 60 - ahead, ahead]
    slots = [slot for _, _, slot in runner.triggered]
    assert slots.count(SLOT) == 2 and slots.count(SLOT + 60) == 1  # hourly and every-minute
    # At each slot the runs are recorded before anything is read: the scripts were read
    # ahead of it (then once more after it, for the next slot).
    for slot in (SLOT, SLOT + 60):
        assert events.index(("record", slot)) < events.index(("read", slot))
        assert events.index(("read", slot - ahead)) < events.index(("record", slot))


def _hourly_store(tmp_path: Path, now: list[float]) -> Store:
    """A store on the fake clock ``now`` with one script, hourly."""
    store = new_store(tmp_path / "hgrun.db", clock=lambda: now[0])
    app, _ = app_with_release(store)
    store.sync_scripts("default", app.id, [Script(name="hourly", command="true", cron="0 * * * *")])
    return store


def _leased_loop(
    store: Store,
    now: list[float],
    sleeps: int,
    *,
    prepare: Callable[[Scheduler], None] = lambda _s: None,
    on_sleep: Callable[[Scheduler, int], None] = lambda _s, _n: None,
) -> None:
    """Run the loop of a scheduler holding a lease of 15 s (a wake every 5 s) on the fake clock
    ``now``, each sleep moving it, until its ``sleeps``-th sleep; ``on_sleep(s, n)`` after the
    n-th sleep's move."""

    async def scenario() -> None:
        done, count = asyncio.Event(), [0]

        async def sleep(seconds: float) -> None:
            count[0] += 1
            now[0] += seconds
            on_sleep(s, count[0])
            if count[0] == sleeps:
                done.set()
                await asyncio.Event().wait()
            await asyncio.sleep(0)

        s = Scheduler(
            store, FakeRunner(), clock=lambda: now[0], sleep=sleep, owner="h:1:a", lease_ttl=15.0
        )  # type: ignore[arg-type]
        prepare(s)
        s.start()
        await asyncio.wait_for(done.wait(), 10)
        await s.stop()

    run(scenario())


def test_wakes_to_renew_the_lease_read_no_script_until_a_slot_a_change_or_max_sleep(
    tmp_path: Path,
) -> None:
    """With a lease, the loop wakes every third of its life to renew it; those wakes claim the
    lease and read no script (a thousand of them took tens of ms each time). The scripts are
    read again at the next slot, when woken by a change, and MAX_SLEEP after the last read."""
    now = [SLOT + 30]  # the hourly script's next slot is 05:00, an hour away
    store = _hourly_store(tmp_path, now)
    reads: list[float] = []
    claims: list[float] = []
    scripts, claim = store.scripts, store.claim_lease

    def read(cron_only: bool = False) -> list[ScriptRecord]:
        reads.append(now[0])
        return scripts(cron_only=cron_only)

    def claiming(*args: Any, **kwargs: Any) -> str | None:
        claims.append(now[0])
        return claim(*args, **kwargs)

    store.scripts = read  # type: ignore[method-assign]
    store.claim_lease = claiming  # type: ignore[method-assign]

    def deploy_at_8th(s: Scheduler, n: int) -> None:
        if n == 8:
            s.wake()  # a deploy, at SLOT + 70

    _leased_loop(store, now, 22, on_sleep=deploy_at_8th)
    # Every wake claims the lease, every 5 s (a third of its life), to SLOT + 130.
    assert claims == [SLOT + 30 + 5 * i for i in range(21)]
    # The scripts are read (twice: the due slots, then the next) at the start and at the
    # deploy (the wake after the 8th sleep), never at the wakes between. MAX_SLEEP (60 s)
    # after that read, the loop wakes as for a slot: planned a second before (one read), then
    # the next slot read at it.
    first, deploy = SLOT + 30, SLOT + 70
    assert reads == [first, first, deploy, deploy, deploy + 60 - PLAN_AHEAD, deploy + 60]


def test_a_tick_that_failed_is_tried_again_at_the_next_wake(tmp_path: Path) -> None:
    """A tick that raised (a store busy for a moment, say) is not left to the next slot: the
    next wake, a lease renewal 5 s on, evaluates the schedules again."""
    now = [SLOT + 30]
    ticked: list[float] = []

    def tick(at: float, plan: Any = None) -> list[Any]:
        ticked.append(at)
        if len(ticked) == 1:
            raise RuntimeError("the store is busy")
        return []

    def failing_first(s: Scheduler) -> None:
        s.tick = tick  # type: ignore[method-assign]

    _leased_loop(_hourly_store(tmp_path, now), now, 3, prepare=failing_first)
    assert ticked == [SLOT + 30, SLOT + 35]  # failed, then again at the next wake only


def test_wake_cuts_the_sleep_short() -> None:
    """A deploy wakes the loop: a new script's first slot is seen before the sleep ends."""

    class NoScripts:
        def scripts(self, cron_only: bool = False) -> list[ScriptRecord]:
            return []

    async def scenario() -> None:
        s = Scheduler(NoScripts(), FakeRunner(), clock=lambda: SLOT)  # type: ignore[arg-type]
        s.start()
        while s.ticks < 1:
            await asyncio.sleep(0.01)
        assert s.next_wake == SLOT + 60  # no cron script: the longest sleep
        s.wake()
        await asyncio.wait_for(_until(lambda: s.ticks >= 2), 5)
        await s.stop()

    run(scenario())


def test_a_deploy_between_the_plan_and_its_slot_is_in_the_slot(store: Store) -> None:
    """A script deployed after its slot was planned (the loop woken by the deploy) still
    runs at that slot: the plan is made again. Real sleeps, the clock 1.5 s before a slot."""
    t0 = time.monotonic()
    runner = FakeRunner()

    def clock() -> float:
        return SLOT - 1.5 + (time.monotonic() - t0)

    async def scenario() -> None:
        s = Scheduler(store, runner, clock=clock)  # type: ignore[arg-type]
        s.start()
        await asyncio.sleep(0.8)  # planned at SLOT - PLAN_AHEAD, sleeping until the slot
        app_id = store.scripts(cron_only=True)[0].app_id
        names = ["every-minute", "hourly", "late"]
        store.sync_scripts(
            "default",
            app_id,
            [Script(name=name, command="true", cron="* * * * *") for name in names]
            + [Script(name="manual", command="true")],
        )
        s.wake()
        await asyncio.wait_for(_until(lambda: len(runner.triggered) >= 3), 5)
        await s.stop()

    run(scenario())
    assert sorted((name, slot) for name, _, slot in runner.triggered) == [
        ("every-minute", SLOT), ("hourly", SLOT), ("late", SLOT)
    ]  # fmt: skip


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


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def _runner(store: Store) -> tuple[ScriptRunner, FakeEngine]:
    """The real ScriptRunner, launcher and supervisor over the in-memory engine (our seam)."""
    engine = FakeEngine()
    supervisor = Supervisor(store, engine, instance="test", clock=lambda: SLOT)  # type: ignore[arg-type]
    launcher = Launcher(store, supervisor, host_cpus=8, host_memory=64 * 1024**3)
    return ScriptRunner(store, launcher, clock=lambda: SLOT), engine


def test_one_slots_runs_are_recorded_in_one_transaction_then_started(tmp_path: Path) -> None:
    n = 40
    store = new_store(tmp_path / "hgrun.db", clock=lambda: SLOT + 0.002)
    app, _ = app_with_release(store)
    store.sync_scripts(
        "default",
        app.id,
        [Script(name=f"s{i:02d}", command="true", cron="* * * * *") for i in range(n)]
        + [Script(name="skipper", command="true", cron="* * * * *", concurrency=Concurrency.SKIP)],
    )
    runner, engine = _runner(store)

    async def scenario() -> None:
        s = Scheduler(store, runner, clock=lambda: SLOT)
        assert s.tick(SLOT - 30) == []  # first sight
        with counted_writes(store) as writes:
            assert s.tick(SLOT) == []  # nothing left to one-at-a-time triggers
        assert writes == ["tx"]  # the runs and the cursors: one transaction
        # Recorded `starting` before any container exists, and out of recovery's way.
        runs = [r for r in store.active_runs() if r.slot == "2026-12-01T04:00:00Z"]
        assert len(runs) == n + 1
        assert {r.status for r in runs} == {RunStatus.STARTING}
        assert {r.created for r in runs} == {SLOT + 0.002}
        assert runner.supervisor.pending == {r.id for r in runs}
        assert engine.containers == {}
        await _until(lambda: len(engine.containers) == n + 1)
        await _until(lambda: not runner.supervisor.pending)
        # The slot again (a retry, a second process): the unique key makes it a no-op.
        s2 = Scheduler(store, runner, clock=lambda: SLOT)
        for script in store.scripts(cron_only=True):
            store.set_cursor(script.id, SLOT - 30)
        s2.tick(SLOT + 1)
        for cid in list(engine.containers):
            engine.exit(cid, 0)
        await _until(lambda: not runner.supervisor.sessions)

    run(scenario())
    cursors = {r.cursor for r in store.scripts(cron_only=True)}
    assert cursors == {SLOT}
    per_slot = [r for r in store.runs("default", app_id=app.id, limit=1000)]
    assert len(per_slot) == n + 1  # each script's slot ran exactly once


def test_a_batch_follows_each_scripts_concurrency_policy(tmp_path: Path) -> None:
    """A skip script with a run in flight gets a skipped run; a queue script a queued one."""
    store = new_store(tmp_path / "hgrun.db", clock=lambda: SLOT)
    app, _ = app_with_release(store)
    store.sync_scripts(
        "default",
        app.id,
        [
            Script(name="skip", command="true", cron="* * * * *", concurrency=Concurrency.SKIP),
            Script(name="queue", command="true", cron="* * * * *", concurrency=Concurrency.QUEUE),
        ],
    )
    runner, _engine = _runner(store)
    scripts = {s.spec.name: s for s in store.scripts(cron_only=True)}
    batch = runner.record_slots(runner.plan_slots(
        [(scripts["skip"], SLOT), (scripts["skip"], SLOT + 60), (scripts["queue"], SLOT),
         (scripts["queue"], SLOT + 60)]
    ))  # fmt: skip
    runner.supervisor.pending.clear()
    statuses = [(r.script, r.slot[-10:], r.status) for r in batch.made]
    assert statuses == [
        ("skip", "T04:00:00Z", RunStatus.STARTING),
        ("skip", "T04:01:00Z", RunStatus.SKIPPED),
        ("queue", "T04:00:00Z", RunStatus.STARTING),
        ("queue", "T04:01:00Z", RunStatus.QUEUED),
    ]
    assert [r.script for r in batch.to_start] == ["skip", "queue"]
    again = runner.record_slots(runner.plan_slots([(scripts["skip"], SLOT)]))
    assert again.made == [] and [s.spec.name for s, _ in again.already] == ["skip"]


def test_a_script_whose_lock_was_taken_after_the_plan_goes_one_at_a_time(
    tmp_path: Path,
) -> None:
    """A decision on the script (a trigger waiting on the engine under its lock) began
    between the plan and the slot: its slot is left to a trigger of its own, its cursor not
    moved by the batch; the other scripts' runs are recorded."""
    store = new_store(tmp_path / "hgrun.db", clock=lambda: SLOT)
    app, _ = app_with_release(store)
    store.sync_scripts(
        "default", app.id, [Script(name=n, command="true", cron="* * * * *") for n in "ab"]
    )
    runner, _engine = _runner(store)
    scripts = {s.spec.name: s for s in store.scripts(cron_only=True)}
    for script in scripts.values():
        store.set_cursor(script.id, SLOT - 60)
    plan = runner.plan_slots([(scripts["a"], SLOT), (scripts["b"], SLOT)])

    async def locked() -> SlotRuns:
        async with runner._locks[scripts["a"].id]:
            return runner.record_slots(plan)

    batch = run(locked())
    runner.supervisor.pending.clear()
    assert [r.script for r in batch.made] == ["b"]
    assert [(s.spec.name, slot) for s, slot in batch.later] == [("a", SLOT)]
    cursors = {s.spec.name: s.cursor for s in store.scripts(cron_only=True)}
    assert cursors == {"a": SLOT - 60, "b": SLOT}


def test_stop_drops_the_starts_still_waiting_and_recovery_can_take_them(tmp_path: Path) -> None:
    """A shutdown does not wait for a slot's starts: those not made stay `starting`, with no
    container, for recovery at the next start-up."""
    store = new_store(tmp_path / "hgrun.db", clock=lambda: SLOT)
    app, _ = app_with_release(store)
    store.sync_scripts(
        "default",
        app.id,
        [Script(name=f"s{i}", command="true", cron="* * * * *") for i in range(12)],
    )
    runner, engine = _runner(store)

    async def scenario() -> None:
        held = engine.hold("create")
        s = Scheduler(store, runner, clock=lambda: SLOT)
        s.tick(SLOT - 30)
        s.tick(SLOT)
        await held.reached()  # the first start is in the engine; the others wait their turn
        await asyncio.wait_for(s.stop(), 5)
        held.release()

    run(scenario())
    runs = store.active_runs()
    assert len(runs) == 12 and {r.status for r in runs} == {RunStatus.STARTING}
    assert not runner.supervisor.pending
    assert len(engine.calls) < 12  # not every container was asked for


def test_a_slots_starts_go_to_the_engine_as_many_at_once_as_it_serves(tmp_path: Path) -> None:
    """The engine says how many calls it serves at once (``Engine.concurrency``: docker-py's
    connection pool); a slot's 30 starts keep it that busy, never more, until all are made."""
    store = new_store(tmp_path / "hgrun.db", clock=lambda: SLOT)
    app, _ = app_with_release(store)
    store.sync_scripts(
        "default",
        app.id,
        [Script(name=f"s{i:02d}", command="true", cron="* * * * *") for i in range(30)],
    )
    runner, engine = _runner(store)
    engine.concurrency = 3
    lock = threading.Lock()
    inside = [0]
    most = [0]
    gate = threading.Event()
    create = engine.create

    def counted(spec: Any) -> str:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        gate.wait(0.02)  # a create takes a while: the next ones pile up behind the pool
        with lock:
            inside[0] -= 1
        return create(spec)

    engine.create = counted  # type: ignore[method-assign]

    async def scenario() -> None:
        s = Scheduler(store, runner, clock=lambda: SLOT)
        s.tick(SLOT - 30)
        s.tick(SLOT)
        await _until(lambda: len(engine.containers) == 30)
        await _until(lambda: not runner.supervisor.pending)
        await s.stop()

    run(scenario())
    assert most[0] == 3  # as many as the engine serves, and no more
