"""The supervisor's watchdog (hgrun.server.watchdog) against the in-memory engine at our seam.

Its clock is the supervisor's and its sleep is injected: each test drives beats itself, moving
``now`` by hand, so a deadline is checked at exact instants and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from test_supervisor import DEADLINE, LIMITS, World, asyncio_test, until, world

from hgrun.engine import STDOUT
from hgrun.errors import EngineError
from hgrun.lifecycle import Phase
from hgrun.models import RunStatus
from hgrun.server.session import RunSession
from hgrun.server.supervisor import Supervisor

__all__ = ["world"]  # the fixture, shared with test_supervisor


async def launched(world: World, sup: Supervisor, **run: Any) -> tuple[RunSession, float]:
    """A run launched by ``sup`` (``run``: its fields), once its container started: the
    session, and the instant the run started."""
    session = await sup.launch(world.run(**run), world.release, "none")
    # Recorded once the engine's start returned (a container seen running is not enough).
    await until(lambda: session.phase is Phase.RUNNING, "the run recorded running")
    started = world.store.run(session.run.id).started
    assert started is not None
    return session, started


@asyncio_test
async def test_a_run_is_timed_out_at_the_first_beat_past_its_timeout_not_before(
    world: World,
) -> None:
    sup = world.supervisor(tick=0.5)
    session, started = await launched(world, sup, timeout=60.0)
    world.now[0] = started + 59.9
    await sup.watchdog.beat()
    assert not session.finished.is_set() and world.engine.running() != []
    world.now[0] = started + 60.0  # a deadline is reached at its instant exactly
    await sup.watchdog.beat()
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    run = world.store.run(session.run.id)
    assert (run.status, run.error) == (RunStatus.TIMED_OUT, f"{run.label} timed out after 1m")
    assert ("stop", session.container_id) in world.engine.calls
    await until(lambda: world.engine.containers == {}, "the container was removed")


@asyncio_test
async def test_output_held_past_the_flush_interval_is_stored_by_a_beat(world: World) -> None:
    sup = world.supervisor(tick=0.5)
    session = await sup.launch(world.run(), world.release, "none")
    await until(lambda: world.engine.running() != [], "the container started")
    world.engine.emit(session.container_id or "", STDOUT, b"a little\n")  # far under a flush
    await until(lambda: session.total == 9, "the output was pumped")
    await sup.watchdog.beat()  # held for no time yet: not flushed
    await asyncio.sleep(0)
    world.now[0] += 1
    await sup.watchdog.beat()
    await until(lambda: session.stored == 9, "the held output was stored")
    assert [c.data for c in world.store.output(run_id=session.run.id)] == [b"a little\n"]


@asyncio_test
async def test_leases_are_renewed_and_recovery_runs_every_third_of_a_lease(world: World) -> None:
    sup = world.supervisor(tick=0.5, lease_ttl=15.0)  # a third of 15 s is 10 beats of 0.5 s
    recovered: list[int] = []

    async def hook() -> None:
        recovered.append(sup.watchdog.beats)

    sup.on_recover.append(hook)
    session = await sup.launch(world.run(), world.release, "none")
    await until(lambda: world.engine.running() != [], "the container started")
    # Renewed at 5, 10 and 15 s (beats 10, 20, 30): another server looking 16 s on finds the
    # run still held, although the lease the launch took ran out at 15 s.
    other = world.supervisor()
    for beat in range(1, 33):
        world.now[0] += 0.5
        await sup.watchdog.beat()
        if beat == 32:  # 16 s on: past the lease the launch took, not past its renewals
            assert other.hold(session.run.id) is not None, beat
    assert recovered == [10, 20, 30]
    assert sup.sessions.keys() == {session.run.id}


@asyncio_test
async def test_the_loop_beats_every_tick_through_the_injected_sleep(world: World) -> None:
    sup = world.supervisor(tick=0.25)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) > 3:
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    sup.watchdog.sleep = sleep
    try:
        await sup.watchdog.run()
    except asyncio.CancelledError:
        pass
    assert slept == [0.25] * 4 and sup.watchdog.beats == 3


@asyncio_test
async def test_a_failing_check_does_not_stop_the_other_runs_checks(world: World) -> None:
    sup = world.supervisor(tick=0.5)
    broken = await sup.launch(world.run(), world.release, "none")
    timed = await sup.launch(world.run(timeout=10.0), world.release, "none")
    await until(lambda: len(world.engine.running()) == 2, "both containers started")
    started = world.store.run(timed.run.id).started
    assert started is not None
    checked: list[int] = []
    check = sup.check

    async def failing(session: object, now: float) -> None:
        checked.append(session.run.id)
        if session is broken:
            raise RuntimeError("boom")
        await check(timed, now)

    sup.check = failing  # type: ignore[method-assign]
    world.now[0] = started + LIMITS.max_timeout
    await sup.watchdog.beat()
    assert sorted(checked) == sorted([broken.run.id, timed.run.id])
    await asyncio.wait_for(timed.finished.wait(), DEADLINE)
    assert world.store.run(timed.run.id).status is RunStatus.TIMED_OUT
    world.engine.exit(broken.container_id or "", 0)
    await asyncio.wait_for(broken.finished.wait(), DEADLINE)


@asyncio_test
async def test_a_slow_engine_stop_holds_up_no_other_runs_deadline(world: World) -> None:
    sup = world.supervisor(tick=0.5)
    slow, started = await launched(world, sup, timeout=10.0)
    other, other_started = await launched(world, sup, timeout=20.0)
    assert other_started == started  # the injected clock stands still
    # The engine's stop of the first run hangs until the test lets it go (a dockerd that
    # takes its time); every other call goes through.
    entered, release, stop = threading.Event(), threading.Event(), world.engine.stop
    slow_stops: list[float] = []

    def engine_stop(container_id: str, grace: float) -> None:
        if container_id == slow.container_id:
            slow_stops.append(grace)
            entered.set()
            release.wait(3 * DEADLINE)
        stop(container_id, grace)

    world.engine.stop = engine_stop  # type: ignore[method-assign]
    try:
        world.now[0] = started + 10.0
        await asyncio.wait_for(sup.watchdog.beat(), DEADLINE)  # it does not wait for the stop
        await asyncio.to_thread(entered.wait, DEADLINE)
        world.now[0] = started + 20.0
        await asyncio.wait_for(sup.watchdog.beat(), DEADLINE)
        await asyncio.wait_for(other.finished.wait(), DEADLINE)
        assert world.store.run(other.run.id).status is RunStatus.TIMED_OUT
        assert not slow.finished.is_set()  # its stop is still in flight
        await sup.watchdog.beat()  # a beat meanwhile starts no second stop of it
        assert slow_stops == [1.0]
    finally:
        release.set()
    await asyncio.wait_for(slow.finished.wait(), DEADLINE)
    assert world.store.run(slow.run.id).status is RunStatus.TIMED_OUT


@asyncio_test
async def test_an_engine_stop_that_fails_is_logged_and_the_watchdog_goes_on(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    sup = world.supervisor(tick=0.5)
    session, started = await launched(world, sup, timeout=10.0)
    world.engine.errors["stop"] = EngineError("dockerd said no")
    world.now[0] = started + 10.0
    await sup.watchdog.beat()
    await until(lambda: "dockerd said no" in caplog.text, "the failed stop logged")
    assert not session.finished.is_set()
    await sup.watchdog.beat()
    # `hgrun stop` tries again, and hears of the engine's error when there is one.
    world.engine.errors["stop"] = EngineError("dockerd said no again")
    with pytest.raises(EngineError, match="again"):
        await sup.stop(session.run.id)
    await sup.stop(session.run.id)
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    assert world.store.run(session.run.id).status is RunStatus.TIMED_OUT
