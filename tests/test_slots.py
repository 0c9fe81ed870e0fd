"""The server's cap on runs in flight (``--max-runs``) and its line (``--max-queue``).

The admission decision as a table; the line's order, positions and cancels without an engine;
then the supervisor with the in-memory engine at our seam and a real SQLite store: beyond the
cap runs are recorded queued with no container and start first in, first out as slots free; an
attached client of a waiting run holds its session and gets its output and exit code; a stop
of a waiting run cancels it without a container; a full line refuses before recording.
"""

# ruff: noqa: F811 - `world` is test_supervisor's fixture, imported to be used here

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fake_engine import FakeEngine
from test_supervisor import World, _read_all, asyncio_test, until, world  # noqa: F401

from hgrun.engine import LABEL_RUN, STDOUT
from hgrun.errors import BusyError
from hgrun.lifecycle import Phase
from hgrun.models import Concurrency, RunStatus, Script, Trigger, TriggerKind
from hgrun.server.launcher import Launcher, Request
from hgrun.server.session import Finished, Output, RunSession
from hgrun.server.slots import Admission, RunSlots, admit

# --- the decision -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_flight", "waiting", "max_runs", "max_queue", "expected"),
    [
        (0, 0, 0, 0, Admission.START),  # 0: no cap
        (500, 0, 0, 0, Admission.START),
        (1, 0, 2, 10, Admission.START),
        (2, 0, 2, 10, Admission.QUEUE),  # every slot taken
        (1, 1, 2, 10, Admission.QUEUE),  # a slot is free but someone waits: no overtaking
        (2, 9, 2, 10, Admission.QUEUE),
        (2, 10, 2, 10, Admission.REFUSE),  # the line is full
        (2, 0, 2, 0, Admission.REFUSE),  # no line at all
    ],
)
def test_admission(
    in_flight: int, waiting: int, max_runs: int, max_queue: int, expected: Admission
) -> None:
    assert admit(in_flight, waiting, max_runs, max_queue) is expected


# --- the line, without an engine --------------------------------------------------------------


def _session(run_id: int, detached: bool = True) -> RunSession:
    from test_lifecycle import a_run

    return RunSession(run=a_run(id=run_id, detached=detached), phase=Phase.QUEUED)


def _line(max_runs: int = 1, max_queue: int = 10) -> tuple[RunSlots, list[int]]:
    started: list[int] = []
    slots = RunSlots(lambda coro: coro.close(), max_runs=max_runs, max_queue=max_queue)

    def wait(run_id: int, script_id: int | None = None) -> None:
        async def start() -> None:
            pass

        def spawn_marker() -> Any:
            started.append(run_id)
            return start()

        slots.wait(run_id, script_id, _session(run_id), spawn_marker)

    slots.enqueue_for_test = wait  # type: ignore[attr-defined]
    return slots, started


def test_the_line_is_first_in_first_out_with_positions_and_a_cancel_from_the_middle() -> None:
    slots, started = _line(max_runs=1)
    assert slots.take(1)
    assert not slots.take(2)  # the slot is taken: the caller puts it in line
    for run_id in (2, 3, 4, 5):
        slots.enqueue_for_test(run_id)  # type: ignore[attr-defined]
    assert [slots.position(r) for r in (2, 3, 4, 5)] == [0, 1, 2, 3]
    assert slots.room() == 0
    assert slots.cancel(3) is not None
    assert slots.cancel(3) is None
    assert [slots.position(r) for r in (2, 4, 5)] == [0, 1, 2]
    assert slots.position(3) is None
    slots.release(1)
    assert started == [2]
    assert slots.holding == {2}
    assert [slots.position(r) for r in (4, 5)] == [0, 1]
    slots.release(2)
    slots.release(4)
    slots.release(5)
    assert started == [2, 4, 5]
    assert len(slots) == 0 and slots.holding == set()
    assert slots.room() == 1


def test_a_full_line_refuses_and_a_script_counts_what_waits() -> None:
    slots, _started = _line(max_runs=1, max_queue=2)
    assert slots.take(1)
    slots.enqueue_for_test(2, 7)  # type: ignore[attr-defined]
    slots.enqueue_for_test(3, 7)  # type: ignore[attr-defined]
    assert slots.waiting_for_script(7) == 2
    with pytest.raises(BusyError, match=r"--max-runs 1\) and 2 more wait \(--max-queue 2\)"):
        slots.check()
    with pytest.raises(BusyError):
        slots.enqueue_for_test(4)  # type: ignore[attr-defined]
    slots.cancel(2)
    assert slots.waiting_for_script(7) == 1
    slots.check()  # room in the line again


def test_no_cap_never_queues() -> None:
    slots, _ = _line(max_runs=0, max_queue=0)
    assert all(slots.take(run_id) for run_id in range(1, 1000))
    slots.check()


# --- the supervisor with the line -------------------------------------------------------------


def _launcher(world: World, sup: Any) -> Launcher:
    return Launcher(world.store, sup, host_cpus=8, host_memory=64 * 1024**3)


def _request(world: World, **changes: Any) -> Request:
    """What `hgrun run` asks for (detached unless told)."""
    args: dict[str, Any] = {
        "workspace": "default",
        "app_id": world.app.id,
        "release": world.release,
        "trigger": Trigger(TriggerKind.USER, "admin"),
        "argv": ["true"],
        **changes,
    }
    return Request(**args)


def _container_runs(engine: FakeEngine) -> list[int]:
    return [int(c.spec.labels[LABEL_RUN]) for c in engine.containers.values()]


@asyncio_test
async def test_beyond_the_cap_runs_wait_queued_and_start_in_order(world: World) -> None:
    sup = world.supervisor()
    sup.slots.max_runs = 2
    launcher = _launcher(world, sup)
    sessions = [await launcher.run(_request(world)) for _ in range(4)]
    ids = [s.run.id for s in sessions]
    await until(lambda: len(world.engine.running()) == 2, "two containers running")
    assert sorted(_container_runs(world.engine)) == ids[:2]
    assert [world.store.run(i).status for i in ids] == [
        RunStatus.RUNNING,
        RunStatus.RUNNING,
        RunStatus.QUEUED,
        RunStatus.QUEUED,
    ]
    assert [sup.slots.position(i) for i in ids] == [None, None, 0, 1]
    assert sessions[2].phase is Phase.QUEUED and sessions[2].container_id is None

    def container_of(run_id: int) -> str:
        (cid,) = [
            c.id
            for c in world.engine.containers.values()
            if c.spec.labels[LABEL_RUN] == str(run_id)
        ]
        return cid

    # One slot frees at a time: the run that takes it is the oldest waiting, never another.
    for done, expected in ((ids[0], ids[2]), (ids[1], ids[3]), (ids[2], None), (ids[3], None)):
        await until(
            lambda d=done: world.engine.containers[container_of(d)].status.value == "running"
        )
        world.engine.exit(container_of(done), 0)
        await until(
            lambda d=done: world.store.run(d).status is RunStatus.SUCCEEDED, f"{done} ended"
        )
        if expected is not None:
            await until(lambda e=expected: e in _container_runs(world.engine), f"{expected} made")
            waiting = [i for i in ids if i > expected]
            assert not set(waiting) & set(_container_runs(world.engine)), "a later run overtook"
            assert [sup.slots.position(i) for i in waiting] == list(range(len(waiting)))
        assert len(world.engine.running()) <= 2
    assert [world.store.run(i).status for i in ids] == [RunStatus.SUCCEEDED] * 4
    assert sup.slots.holding == set() and len(sup.slots) == 0


@asyncio_test
async def test_a_stop_of_a_waiting_run_cancels_it_without_a_container(world: World) -> None:
    sup = world.supervisor()
    sup.slots.max_runs = 1
    first = await sup.launch(world.run(), world.release, "none")
    waiting = await sup.launch(world.run(detached=False, tty=True), world.release, "none")
    assert waiting.phase is Phase.QUEUED
    _session, viewer = sup.subscribe(waiting.run.id)  # an attached client holds it meanwhile
    stopped = await sup.stop(waiting.run.id, RunStatus.CANCELED, "stopped by admin")
    assert stopped.status is RunStatus.CANCELED
    data, end = await _read_all(viewer)
    assert data == b"" and isinstance(end, Finished)
    assert (end.status, end.exit_code) == (RunStatus.CANCELED, 130)
    assert not sup.slots.waiting(waiting.run.id)
    # The first run ends: nothing else starts, and the canceled one never had a container.
    await until(lambda: len(world.engine.running()) == 1, "the first run running")
    world.engine.exit(world.engine.only().id, 0)
    await asyncio.wait_for(first.finished.wait(), 5)
    await until(lambda: world.engine.containers == {}, "the first container removed")
    assert [m for m, _ in world.engine.calls].count("create") == 1
    assert world.store.run(waiting.run.id).container_id is None


@asyncio_test
async def test_an_attached_client_of_a_waiting_run_gets_its_output_and_exit(world: World) -> None:
    sup = world.supervisor()
    sup.slots.max_runs = 1
    first = await sup.launch(world.run(), world.release, "none")
    waiting = await sup.launch(world.run(detached=False), world.release, "none")
    session, viewer = sup.subscribe(waiting.run.id)
    assert session is waiting
    await until(lambda: len(world.engine.running()) == 1, "the first run running")
    world.engine.exit(world.engine.only().id, 0)
    await asyncio.wait_for(first.finished.wait(), 5)
    # The same session goes on: its container is made and started for the client already here.
    await until(lambda: len(world.engine.running()) == 1, "the waiting run started")
    cid = world.engine.running()[0].id
    assert waiting.container_id == cid
    world.engine.emit(cid, STDOUT, b"hello\n")
    world.engine.exit(cid, 3)
    data, end = await _read_all(viewer)
    assert data == b"hello\n"
    assert isinstance(end, Finished) and (end.status, end.exit_code) == (RunStatus.FAILED, 3)


@asyncio_test
async def test_a_waiting_run_whose_client_left_for_the_grace_never_gets_a_container(
    world: World,
) -> None:
    sup = world.supervisor()
    sup.slots.max_runs = 1
    await sup.launch(world.run(), world.release, "none")
    waiting = await sup.launch(world.run(detached=False), world.release, "none")
    session, viewer = sup.subscribe(waiting.run.id)
    sup.unsubscribe(session, viewer)  # the client went away
    world.now[0] += 61  # past the grace (60 s)
    await until(lambda: len(world.engine.running()) == 1, "the first run running")
    world.engine.exit(world.engine.only().id, 0)
    await until(
        lambda: world.store.run(waiting.run.id).status is RunStatus.CANCELED, "it was canceled"
    )
    assert "no client attached" in (world.store.run(waiting.run.id).error or "")
    assert [m for m, _ in world.engine.calls].count("create") == 1


@asyncio_test
async def test_a_full_line_refuses_a_new_run_before_it_is_recorded(world: World) -> None:
    sup = world.supervisor()
    sup.slots.max_runs, sup.slots.max_queue = 1, 1
    launcher = _launcher(world, sup)
    app = world.app

    def request() -> Request:
        return _request(world)

    first = await launcher.run(request())
    second = await launcher.run(request())
    assert (first.run.status, second.run.status) == (RunStatus.STARTING, RunStatus.QUEUED)
    before = len(world.store.runs("default", app_id=app.id, limit=100))
    with pytest.raises(BusyError) as refused:
        await launcher.run(request())
    assert refused.value.http_status == 503
    assert "--max-queue 1" in refused.value.message
    assert len(world.store.runs("default", app_id=app.id, limit=100)) == before
    # Stopped meanwhile: the head of the line is gone, the line has room again.
    await sup.stop(second.run.id)
    third = await launcher.run(request())
    assert third.run.status is RunStatus.QUEUED


@asyncio_test
async def test_output_of_a_waiting_run_starts_at_its_first_byte(world: World) -> None:
    """A client attached while the run waited misses nothing the run writes first."""
    sup = world.supervisor()
    sup.slots.max_runs = 1
    await sup.launch(world.run(), world.release, "none")
    waiting = await sup.launch(world.run(), world.release, "none")
    _session, viewer = sup.subscribe(waiting.run.id, 0)
    await until(lambda: len(world.engine.running()) == 1, "the first run running")
    world.engine.exit(world.engine.only().id, 0)
    await until(lambda: waiting.phase is Phase.RUNNING, "the waiting run running")
    world.engine.emit(waiting.container_id or "", STDOUT, b"first\n")
    world.engine.exit(waiting.container_id or "", 0)
    item = await asyncio.wait_for(viewer.next(), 5)
    assert isinstance(item, Output) and item.data == b"first\n"


# --- scripts under the cap ----------------------------------------------------------------------


def test_a_script_run_waiting_for_a_slot_counts_as_active_for_its_policy(tmp_path: Path) -> None:
    """A `skip` script whose run waits in the server's line is not started twice: the waiting
    run is active for its policy; it starts once the one-off ahead of it frees the slot. A
    trigger beyond a full line is refused (503) and nothing is recorded."""
    from test_intake import API, _script, _setup, _until

    store, runner, engine = _setup(
        tmp_path,
        Script(name="once", command="true", concurrency=Concurrency.SKIP),
        Script(name="many", command="true", concurrency=Concurrency.ALLOW),
    )
    sup = runner.supervisor
    sup.slots.max_runs, sup.slots.max_queue = 1, 1
    script = _script(store, "once")
    release = store.latest_release(script.app_id)
    assert release is not None

    async def scenario() -> None:
        blocker = await runner.launcher.run(
            Request(
                workspace="default",
                app_id=script.app_id,
                release=release,
                trigger=Trigger(TriggerKind.USER, "admin"),
                argv=["sleep", "1"],
            )
        )
        first = await runner.trigger(script, API)
        assert first is not None and first.status is RunStatus.QUEUED
        assert sup.slots.position(first.id) == 0
        second = await runner.trigger(script, API)
        assert second is not None and second.status is RunStatus.SKIPPED
        with pytest.raises(BusyError, match="--max-queue 1"):
            await runner.trigger(_script(store, "many"), API)
        await _until(lambda: len(engine.running()) == 1)
        engine.exit(engine.running()[0].id, 0)
        await _until(lambda: store.run(blocker.run.id).status is RunStatus.SUCCEEDED)
        await _until(lambda: len(engine.running()) == 1)
        assert engine.running()[0].spec.labels[LABEL_RUN] == str(first.id)
        engine.exit(engine.running()[0].id, 0)
        await _until(lambda: store.run(first.id).status is RunStatus.SUCCEEDED)

    asyncio.run(scenario())
    assert len(store.script_runs(script.id, limit=10)) == 2
    assert store.script_runs(_script(store, "many").id, limit=10) == []  # refused: nothing made
