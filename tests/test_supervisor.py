"""The supervisor against an in-memory engine at our seam and a real SQLite store.

Each race of issue 7 is a test: a stop at any moment of a run's life, uploads that never come,
a viewer that never reads, a re-attach from a byte offset, recovery beside a live supervisor,
lost runs. Deadlines are checked with an explicit ``now`` (no watchdog, no sleeping).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import tarfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from fake_engine import FakeEngine
from support.store import app_with_release, new_run, new_store

from hgrun.cli.uploads import plan, tar_stream
from hgrun.engine import LABEL_INSTANCE, LABEL_RUN, STDERR, STDOUT, ContainerSpec
from hgrun.lifecycle import Limits
from hgrun.models import SIZES, App, Release, Run, RunStatus
from hgrun.server.session import Dropped, Finished, Output, Subscriber
from hgrun.server.supervisor import Supervisor
from hgrun.server.uploads import OUT_ROOT, receive
from hgrun.store import Store
from hgrun.uploadtar import UploadFilter

INSTANCE = "i1"
LIMITS = Limits(grace=60, idle_timeout=1800, max_timeout=3600, stop_grace=10)
DEADLINE = 30.0
"""How long a wait for what must happen may take: only a failing test waits it out, so it is
sized for a loaded 2-core machine (thread-pool store writes queue there), not for a fast one."""


def asyncio_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 3 * DEADLINE))

    return wrapper


async def until(condition: Callable[[], bool], what: str = "the condition") -> None:
    """Poll ``condition`` until it holds, failing after a deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"{what} never held")
        await asyncio.sleep(0.005)


@dataclasses.dataclass
class World:
    store: Store
    engine: FakeEngine
    now: list[float]
    app: App
    release: Release

    def clock(self) -> float:
        return self.now[0]

    def supervisor(self, **kwargs: Any) -> Supervisor:
        return Supervisor(
            self.store, self.engine, instance=INSTANCE, limits=LIMITS, clock=self.clock, **kwargs
        )

    def run(self, **changes: Any) -> Run:
        """A detached `sh -c work` of the app's release, 10 minutes timeout, already starting,
        unless ``changes`` say otherwise."""
        fields: dict[str, Any] = {
            "command": ["sh", "-c", "work"],
            "timeout": 600.0,
            "status": RunStatus.STARTING,
            **changes,
        }
        return new_run(self.store, self.app, self.release, **fields)

    def started_container(self, run: Run) -> str:
        """A container of ``run``, made and started outside any supervisor (as a server that
        died would have left it) and recorded on the run; its id."""
        spec = ContainerSpec(
            image=self.release.image,
            command=["x"],
            env={},
            labels={LABEL_RUN: str(run.id), LABEL_INSTANCE: INSTANCE},
            size=SIZES["starter"],
        )
        cid = self.engine.create(spec)
        self.store.set_container(run.id, cid)
        self.engine.start(cid)
        return cid


@pytest.fixture
def world(tmp_path: Path) -> World:
    now = [1000.0]
    store = new_store(tmp_path / "hgrun.db", clock=lambda: now[0])
    return World(store, FakeEngine(), now, *app_with_release(store))


async def _read_all(subscriber: Subscriber) -> tuple[bytes, object]:
    """Everything a viewer gets: its bytes, then what ended it."""
    data = bytearray()
    while True:
        item = await asyncio.wait_for(subscriber.next(), DEADLINE)
        if isinstance(item, Output):
            data += item.data
        else:
            return bytes(data), item


# --- a run from start to end ------------------------------------------------------------------


@asyncio_test
async def test_a_detached_run_stores_its_output_and_succeeds(world: World) -> None:
    sup = world.supervisor()
    session = await sup.launch(world.run(), world.release, "none")
    await until(lambda: world.engine.running() != [], "the container started")
    cid = world.engine.only().id
    assert world.engine.only().spec.size == SIZES["starter"]
    world.engine.emit(cid, STDOUT, b"out\n")
    world.engine.emit(cid, STDERR, b"err\n")
    world.engine.exit(cid, 0)
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    run = world.store.run(session.run.id)
    assert (run.status, run.exit_code, run.error) == (RunStatus.SUCCEEDED, 0, None)
    stored = world.store.output(run_id=run.id)
    assert [(c.stream, c.data) for c in stored] == [(STDOUT, b"out\n"), (STDERR, b"err\n")]
    await until(
        lambda: world.engine.containers == {}, "the container was removed"
    )  # removed once the outcome was stored


@asyncio_test
async def test_a_failing_start_is_recorded_with_its_exit_status(world: World) -> None:
    from hgrun.errors import CommandNotFoundError

    sup = world.supervisor()
    world.engine.errors["start"] = CommandNotFoundError("command not found: work")
    session = await sup.launch(world.run(), world.release, "none")
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    run = world.store.run(session.run.id)
    assert (run.status, run.exit_code) == (RunStatus.FAILED, 127)
    await until(lambda: world.engine.containers == {}, "the container was removed")


# --- a stop at any moment ---------------------------------------------------------------------


@pytest.mark.parametrize("moment", ["creating", "attaching"])
@asyncio_test
async def test_stop_during_an_engine_call_removes_the_container_unstarted(
    world: World, moment: str
) -> None:
    sup = world.supervisor()
    hold = world.engine.hold("create" if moment == "creating" else "attach")
    run = world.run()
    launching = asyncio.create_task(sup.launch(run, world.release, "none"))
    await hold.reached()
    stopped = await sup.stop(run.id, RunStatus.CANCELED, "run was stopped by admin")
    assert stopped.status is RunStatus.STARTING  # recorded by the launch when the call returns
    hold.release()
    session = await launching
    assert session.finished.is_set()
    run = world.store.run(run.id)
    assert (run.status, run.exit_code) == (RunStatus.CANCELED, 130)
    await until(lambda: world.engine.containers == {}, "the container was removed")
    assert ("start", world.engine.removed[0]) not in world.engine.calls
    # A second stop is answered with the run as it ended, and changes nothing.
    again = await sup.stop(run.id, RunStatus.CANCELED, "again")
    assert (again.status, again.error) == (RunStatus.CANCELED, "run was stopped by admin")


@asyncio_test
async def test_stop_while_waiting_for_a_client(world: World) -> None:
    sup = world.supervisor()
    session = await sup.launch(world.run(detached=False), world.release, "none")
    await sup.stop(session.run.id)
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    run = world.store.run(session.run.id)
    assert (run.status, run.exit_code) == (RunStatus.CANCELED, 130)
    await until(lambda: world.engine.containers == {}, "the container was removed")
    assert not [c for c in world.engine.calls if c[0] == "start"]


@asyncio_test
async def test_stop_while_starting_kills_it_as_soon_as_it_started(world: World) -> None:
    sup = world.supervisor()
    hold = world.engine.hold("start")
    session = await sup.launch(world.run(), world.release, "none")
    await hold.reached()
    await sup.stop(session.run.id)
    hold.release()
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    run = world.store.run(session.run.id)
    assert (run.status, run.exit_code) == (RunStatus.CANCELED, 143)
    await until(lambda: world.engine.containers == {}, "the container was removed")
    assert [c[0] for c in world.engine.calls].count("stop") == 1


@asyncio_test
async def test_stop_while_running(world: World) -> None:
    sup = world.supervisor()
    session = await sup.launch(world.run(), world.release, "none")
    await until(lambda: world.engine.running() != [], "the container started")
    await sup.stop(session.run.id, RunStatus.CANCELED, "stopped by admin")
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    run = world.store.run(session.run.id)
    assert (run.status, run.exit_code, run.error) == (RunStatus.CANCELED, 143, "stopped by admin")
    await until(lambda: world.engine.containers == {}, "the container was removed")
    stderr = b"".join(c.data for c in world.store.output(run_id=run.id) if c.stream == STDERR)
    assert stderr == b"hgrun: stopped by admin\n"


@asyncio_test
async def test_stop_while_queued_records_it_without_a_container(world: World) -> None:
    sup = world.supervisor()
    run = world.run(status=RunStatus.QUEUED)
    stopped = await sup.stop(run.id)
    assert (stopped.status, stopped.exit_code) == (RunStatus.CANCELED, 130)
    # The queue tries to start it later: nothing is made.
    session = await sup.launch(run, world.release, "none")
    assert session.finished.is_set() and world.engine.calls == []


# --- deadlines --------------------------------------------------------------------------------


@asyncio_test
async def test_uploads_that_never_come_fail_the_run_after_the_grace(world: World) -> None:
    sup = world.supervisor()
    session = await sup.launch(world.run(uploads=True), world.release, "none")
    await sup.check(session, world.now[0] + LIMITS.grace - 0.5)
    assert not session.finished.is_set()
    await sup.check(session, world.now[0] + LIMITS.grace)
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    run = world.store.run(session.run.id)
    assert (run.status, run.exit_code) == (RunStatus.FAILED, 125)
    assert run.error == f"the files for {run.label} did not arrive within 1m; run it again"
    await until(lambda: world.engine.containers == {}, "the container was removed")


@asyncio_test
async def test_an_upload_lands_in_tmp_uploads_made_by_the_upload(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "x.txt").write_text("hello")
    monkeypatch.chdir(tmp_path)
    body = b"".join(tar_stream(plan(["x.txt"])))
    checked = UploadFilter(1 << 30, out_root=OUT_ROOT)  # what the API hands on

    async def chunks() -> Any:
        for i in range(0, len(body), 1000):
            if out := checked.feed(body[i : i + 1000]):
                yield out
        yield checked.close()

    sup = world.supervisor()
    session = await sup.launch(world.run(uploads=True), world.release, "none")
    cid = session.container_id
    assert cid is not None
    assert await receive(sup, session.run.id, chunks()) > 0
    await until(lambda: world.engine.running() != [], "the container started")
    ((path, tar),) = world.engine.containers[cid].archives
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        members = {m.name: m for m in archive.getmembers()}
        assert path == "/"
        assert members["tmp"].mode == 0o1777 and members["tmp"].isdir()
        assert archive.extractfile("tmp/uploads/x.txt").read() == b"hello"  # type: ignore[union-attr]
    world.engine.exit(cid, 0)
    await asyncio.wait_for(session.finished.wait(), DEADLINE)


@asyncio_test
async def test_an_attached_run_left_alone_is_stopped_after_the_grace(world: World) -> None:
    sup = world.supervisor()
    session = await sup.launch(world.run(detached=False), world.release, "none")
    _, viewer = sup.subscribe(session.run.id)
    await until(lambda: world.engine.running() != [], "the container started")
    world.now[0] += 10
    sup.unsubscribe(session, viewer)
    await sup.check(session, world.now[0] + LIMITS.grace - 1)
    assert not session.finished.is_set()
    await sup.check(session, world.now[0] + LIMITS.grace)
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    run = world.store.run(session.run.id)
    assert run.status is RunStatus.CANCELED
    assert run.error == f"{run.label} was stopped: no client attached for 1m"


# --- viewers ----------------------------------------------------------------------------------


@asyncio_test
async def test_a_viewer_that_never_reads_does_not_slow_the_run(world: World) -> None:
    sup = world.supervisor()
    session = await sup.launch(world.run(detached=False), world.release, "none")
    _, viewer = sup.subscribe(session.run.id)
    await until(lambda: world.engine.running() != [], "the container started")
    cid = world.engine.only().id
    piece = bytes(range(256)) * 256  # 64 KiB
    for _ in range(80):  # 5 MiB, five times what a viewer may hold unread
        world.engine.emit(cid, STDOUT, piece)
    world.engine.exit(cid, 0)
    # The run ends while its viewer has read nothing.
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    assert viewer.behind
    data, end = await _read_all(viewer)
    assert data == piece * 80  # every byte once, in order, caught up from the store
    assert isinstance(end, Finished) and end.status is RunStatus.SUCCEEDED


@asyncio_test
async def test_reattach_from_an_offset_has_no_gap_and_no_duplicate(world: World) -> None:
    sup = world.supervisor()
    session = await sup.launch(world.run(detached=False), world.release, "none")
    _, first = sup.subscribe(session.run.id)
    await until(lambda: world.engine.running() != [], "the container started")
    cid = world.engine.only().id
    for part in (b"0123", b"4567"):
        world.engine.emit(cid, STDOUT, part)
    await until(lambda: session.total == 8, "the output was pumped")
    await sup.output.flush(session)  # the first part from the store, the rest from memory
    world.engine.emit(cid, STDERR, b"89")
    await until(lambda: session.total == 10, "the output was pumped")
    sup.unsubscribe(session, first)  # the client went away having printed 5 bytes
    _, second = sup.subscribe(session.run.id, offset=5)
    world.engine.emit(cid, STDOUT, b"ab")
    world.engine.exit(cid, 0)
    got = []
    while not isinstance(item := await asyncio.wait_for(second.next(), DEADLINE), Finished):
        assert isinstance(item, Output)
        got.append((item.stream, item.data))
    assert b"".join(d for _, d in got) == b"56789ab"
    assert (STDERR, b"89") in got


@asyncio_test
async def test_a_viewer_too_far_behind_is_told_and_let_go(world: World) -> None:
    sup = world.supervisor()
    session = await sup.launch(world.run(detached=False), world.release, "none")
    _, viewer = sup.subscribe(session.run.id)
    viewer.lag_limit = 100_000
    await until(lambda: world.engine.running() != [], "the container started")
    cid = world.engine.only().id
    world.engine.emit(cid, STDOUT, b"x" * 2_000_000)
    await until(lambda: session.total == 2_000_000, "the output was pumped")
    item = await asyncio.wait_for(viewer.next(), DEADLINE)
    assert isinstance(item, Dropped)
    assert f"`hgrun attach {session.run.id}` to follow again" in item.message
    world.engine.exit(cid, 0)
    await asyncio.wait_for(session.finished.wait(), DEADLINE)


# --- recovery ---------------------------------------------------------------------------------


@asyncio_test
async def test_recovery_never_takes_a_run_a_live_supervisor_holds(world: World) -> None:
    first = world.supervisor()
    session = await first.launch(world.run(), world.release, "none")
    await until(lambda: world.engine.running() != [], "the container started")
    cid = world.engine.only().id
    world.engine.emit(cid, STDOUT, b"once\n")
    await until(lambda: session.total == 5, "the output was pumped")
    await first.output.flush(session)
    second = world.supervisor()
    await second.recoverer.recover()
    assert second.sessions == {}
    assert cid in world.engine.containers
    assert len(world.store.output(run_id=session.run.id)) == 1  # not cleared, not doubled
    # The first one goes silent (its lease is not renewed): the second takes the run up.
    world.now[0] += 16
    await second.recoverer.recover()
    assert session.run.id in second.sessions
    world.engine.exit(cid, 0)
    taken = second.sessions[session.run.id]
    await asyncio.wait_for(taken.finished.wait(), DEADLINE)
    run = world.store.run(session.run.id)
    assert run.status is RunStatus.SUCCEEDED
    assert b"".join(c.data for c in world.store.output(run_id=run.id)) == b"once\n"


@asyncio_test
async def test_a_run_whose_container_vanished_is_lost_and_its_hooks_run(world: World) -> None:
    run = world.run()
    world.store.set_container(run.id, "gone")
    world.store.mark_running(run.id, 1000.0)
    sup = world.supervisor()
    seen: list[Run] = []
    sup.on_outcome.append(seen.append)  # where a script run's own token is revoked
    await sup.recoverer.recover()
    lost = world.store.run(run.id)
    assert (lost.status, lost.exit_code) == (RunStatus.LOST, 125)
    assert lost.error == f"the container of {run.label} vanished while no server watched it"
    assert [r.id for r in seen] == [run.id]


@asyncio_test
async def test_a_container_that_exited_meanwhile_is_finished_from_its_logs(world: World) -> None:
    run = world.run()
    cid = world.started_container(run)
    world.engine.emit(cid, STDOUT, b"done\n")
    world.engine.exit(cid, 3)
    spec = world.engine.containers[cid].spec
    stray = world.engine.create(dataclasses.replace(spec, labels={LABEL_INSTANCE: INSTANCE}))
    sup = world.supervisor()
    await sup.recoverer.recover()
    finished = world.store.run(run.id)
    assert (finished.status, finished.exit_code) == (RunStatus.FAILED, 3)
    assert b"".join(c.data for c in world.store.output(run_id=run.id)) == b"done\n"
    await until(lambda: world.engine.containers == {}, "the container was removed")
    assert stray in world.engine.removed


@asyncio_test
async def test_a_container_that_ends_between_the_listing_and_the_attach_is_finished(
    world: World,
) -> None:
    """Listed running, ended before the attach: Docker never ends such an attach (the fake
    does as Docker does), so the run is finished from the log, not followed for ever. The
    CI's fault suite met it: a client waiting for an exit code that never came."""
    run = world.run()
    cid = world.started_container(run)
    world.store.mark_running(run.id, 1000.0)
    world.engine.emit(cid, STDOUT, b"all of it\n")
    attach = world.engine.hold("attach")
    sup = world.supervisor()
    recovering = asyncio.create_task(sup.recoverer.recover())
    await attach.reached()
    world.engine.exit(cid, 4)  # it ends while the attach is on its way
    attach.release()
    await asyncio.wait_for(recovering, DEADLINE)
    await until(lambda: world.store.run(run.id).status is RunStatus.FAILED, "the run finished")
    assert world.store.run(run.id).exit_code == 4
    assert b"".join(c.data for c in world.store.output(run_id=run.id)) == b"all of it\n"


@asyncio_test
async def test_a_stop_answered_by_another_server_ends_the_run_where_it_runs(world: World) -> None:
    holder = world.supervisor()
    session = await holder.launch(world.run(), world.release, "none")
    await until(lambda: world.engine.running() != [], "the container started")
    other = world.supervisor()
    stopped = await other.stop(session.run.id, RunStatus.CANCELED, "stopped elsewhere")
    assert stopped.status is RunStatus.CANCELED
    await holder.recoverer.renew()  # the holder's next lease renewal sees it
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    await until(lambda: world.engine.containers == {}, "the container was removed")
    run = world.store.run(session.run.id)
    assert (run.status, run.error) == (RunStatus.CANCELED, "stopped elsewhere")


@asyncio_test
async def test_a_run_taken_over_is_let_go_by_its_old_holder(world: World) -> None:
    old = world.supervisor()
    session = await old.launch(world.run(), world.release, "none")
    await until(lambda: world.engine.running() != [], "the container started")
    world.now[0] += 16  # the old holder stalled past its lease
    new = world.supervisor()
    await new.recoverer.recover()
    assert session.run.id in new.sessions
    await old.recoverer.renew()
    assert old.sessions == {}  # it lets go without touching the container
    taken = new.sessions[session.run.id]
    world.engine.exit(world.engine.only().id, 0)
    await asyncio.wait_for(taken.finished.wait(), DEADLINE)
    assert world.store.run(session.run.id).status is RunStatus.SUCCEEDED


@asyncio_test
async def test_a_viewer_behind_what_the_cap_kept_is_told_and_let_go(
    world: World, tmp_path: Path
) -> None:
    store = new_store(tmp_path / "capped.db", clock=world.clock, max_output=100_000)
    app, release = app_with_release(store)
    world = dataclasses.replace(world, store=store, app=app, release=release)
    sup = world.supervisor()
    session = await sup.launch(world.run(detached=False), world.release, "none")
    _, viewer = sup.subscribe(session.run.id)
    await until(lambda: world.engine.running() != [], "the container started")
    cid = world.engine.only().id
    for _ in range(30):  # 30 x 64 KiB: the store keeps the newest 100 kB
        world.engine.emit(cid, STDOUT, b"z" * 65536)
    world.engine.exit(cid, 0)
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    item = await asyncio.wait_for(viewer.next(), DEADLINE)
    while isinstance(item, Output):  # what it held live, then the gap
        item = await asyncio.wait_for(viewer.next(), DEADLINE)
    assert isinstance(item, Dropped)
    assert "the output you missed is no longer stored" in item.message


@asyncio_test
async def test_a_container_that_ends_while_it_is_taken_up_is_finished(world: World) -> None:
    from hgrun.errors import EngineError

    run = world.run()
    cid = world.started_container(run)
    world.store.mark_running(run.id, 1000.0)
    world.engine.emit(cid, STDOUT, b"before\n")
    hold = world.engine.hold("attach")
    world.engine.errors["attach"] = EngineError("container is not running")
    sup = world.supervisor()
    recovering = asyncio.create_task(sup.recoverer.recover())
    await hold.reached()  # listed as running; it ends before the attach gets there
    world.engine.exit(cid, 5)
    hold.release()
    await recovering
    ended = world.store.run(run.id)
    assert (ended.status, ended.exit_code) == (RunStatus.FAILED, 5)
    assert b"".join(c.data for c in world.store.output(run_id=run.id)) == b"before\n"
    assert sup.sessions == {}


@asyncio_test
async def test_a_stalled_holder_whose_run_was_taken_over_neither_stores_nor_finishes_it(
    world: World,
) -> None:
    stale = world.supervisor()
    session = await stale.launch(world.run(detached=False), world.release, "none")
    _, viewer = stale.subscribe(session.run.id)
    await until(lambda: world.engine.running() != [], "the container started")
    cid = world.engine.only().id
    world.engine.emit(cid, STDOUT, b"once\n")
    await until(lambda: session.total == 5, "the output was pumped")
    await stale.output.flush(session)
    world.now[0] += 16  # the holder stalled past its lease
    taker = world.supervisor()
    attaching = world.engine.hold("attach")
    recovering = asyncio.create_task(taker.recoverer.recover())
    await attaching.reached()  # the lease is the taker's; it has not attached yet
    # The stalled holder wakes up first: it sees the end of the run before the taker does.
    world.engine.emit(cid, STDOUT, b"after\n")
    world.engine.exit(cid, 0)
    await until(lambda: stale.sessions == {}, "the stalled holder let the run go")
    item = await asyncio.wait_for(viewer.next(), DEADLINE)
    while isinstance(item, Output):
        item = await asyncio.wait_for(viewer.next(), DEADLINE)
    assert isinstance(item, Dropped) and f"hgrun attach {session.run.id}" in item.message
    assert cid in world.engine.containers  # not removed under the taker
    assert world.store.run(session.run.id).status is RunStatus.RUNNING  # not finished by it
    attaching.release()
    await asyncio.wait_for(recovering, DEADLINE)
    await until(lambda: taker.sessions == {}, "the taker finished the run")
    run = world.store.run(session.run.id)
    assert (run.status, run.exit_code, run.error) == (RunStatus.SUCCEEDED, 0, None)
    assert b"".join(c.data for c in world.store.output(run_id=run.id)) == b"once\nafter\n"
    await until(lambda: world.engine.containers == {}, "the container was removed")
    assert [c for c in world.engine.calls if c[0] == "remove"] == [("remove", cid)]  # once


# --- the run.start audit record: written while the container is made, durable before start ---

GAP = 1.0
"""How long a held audit write waits to see whether the container starts meanwhile (it must
not); only a broken supervisor makes it see one."""


class HeldAudit:
    """A run.start write that stays in flight: it sees whether the container was created while
    it was (the overlap) and whether one started before it returned (it must not)."""

    def __init__(self, engine: FakeEngine, error: Exception | None = None) -> None:
        self.engine = engine
        self.error = error
        self.start_seen = threading.Event()
        self.created_meanwhile = False
        self.started_before_durable = False
        self.durable = False
        self.returned = threading.Event()
        self.records: list[str] = []

    def __call__(self, action: str, run: Run, payload: dict[str, Any]) -> None:
        self.records.append(action)
        if action != "run.start":
            return
        try:
            self._write()
        finally:
            self.returned.set()

    def _write(self) -> None:
        end = time.monotonic() + DEADLINE
        while not any(c[0] == "create" for c in self.engine.calls) and time.monotonic() < end:
            time.sleep(0.002)
        self.created_meanwhile = any(c[0] == "create" for c in self.engine.calls)
        self.started_before_durable = self.start_seen.wait(GAP)
        if self.error is not None:
            raise self.error
        self.durable = True


@asyncio_test
async def test_the_container_is_made_while_its_start_is_audited_and_starts_only_after(
    world: World,
) -> None:
    sup = world.supervisor()
    audit = HeldAudit(world.engine)
    sup.audit = audit
    start = world.engine.hold("start")
    launching = asyncio.create_task(sup.launch(world.run(), world.release, "none"))
    await asyncio.to_thread(lambda: start.entered.wait(DEADLINE) and audit.start_seen.set())
    assert await asyncio.to_thread(audit.returned.wait, DEADLINE)
    assert not audit.started_before_durable  # the start came after the record was written
    assert audit.durable
    assert audit.created_meanwhile  # and the container was made while it was being written
    start.release()
    session = await launching
    world.engine.exit(world.engine.only().id, 0)
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    assert world.store.run(session.run.id).status is RunStatus.SUCCEEDED
    assert audit.records[0] == "run.start"


@asyncio_test
async def test_a_start_that_cannot_be_audited_fails_its_run_and_its_container_never_starts(
    world: World,
) -> None:
    from hgrun.errors import StoreFullError

    sup = world.supervisor()
    audit = HeldAudit(world.engine, StoreFullError("the disk of the data directory is full"))
    sup.audit = audit
    start = world.engine.hold("start")
    run = world.run()
    launching = asyncio.create_task(sup.launch(run, world.release, "none"))
    await asyncio.to_thread(lambda: start.entered.wait(GAP) and audit.start_seen.set())
    with pytest.raises(StoreFullError, match="disk of the data directory is full"):
        await launching
    assert audit.returned.is_set() and audit.created_meanwhile and not audit.started_before_durable
    await until(lambda: world.engine.containers == {}, "the unstarted container was removed")
    assert not [c for c in world.engine.calls if c[0] == "start"]
    await until(lambda: world.store.run(run.id).status.finished, "the run was recorded ended")
    ended = world.store.run(run.id)
    assert ended.status is RunStatus.FAILED and "disk" in (ended.error or "")
    assert run.id not in sup.sessions


@asyncio_test
async def test_the_end_asks_the_engine_for_the_containers_state_while_the_lease_is_confirmed(
    world: World,
) -> None:
    """The exit is reported after the lease is confirmed (a store write) and the container
    inspected (an engine call): the two go at once, not one after the other."""
    sup = world.supervisor()
    confirming = asyncio.Event()
    taken = sup.leases.taken

    async def held_confirmation(run_id: int, *, confirm: bool = False) -> str | None:
        if confirm:
            await confirming.wait()  # the lease's confirmation stays in flight
        return await taken(run_id, confirm=confirm)

    sup.leases.taken = held_confirmation  # type: ignore[method-assign]
    session = await sup.launch(world.run(), world.release, "none")
    await until(lambda: world.engine.running() != [], "the container started")
    cid = world.engine.only().id
    world.engine.exit(cid, 0)
    await until(lambda: ("inspect", cid) in world.engine.calls, "inspected during the confirm")
    assert not session.finished.is_set()
    confirming.set()
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    assert world.store.run(session.run.id).status is RunStatus.SUCCEEDED


@asyncio_test
async def test_an_end_the_engine_announces_needs_neither_wait_nor_inspect(world: World) -> None:
    """Docker's die event gives the exit code, the OOM flag and the times some 10 ms before
    its wait answers: the outcome is recorded from it, with no wait and no inspect."""
    world.engine.announces = True
    sup = world.supervisor()
    session = await sup.launch(world.run(), world.release, "none")
    await until(lambda: world.engine.running() != [], "the container started")
    cid = world.engine.only().id
    world.engine.clock = 1010.0
    world.engine.exit(cid, 137, oom=True)
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    run = world.store.run(session.run.id)
    assert (run.status, run.exit_code, run.oom) == (RunStatus.FAILED, 137, True)
    assert run.finished == 1010.0
    methods = [method for method, c in world.engine.calls if c == cid]
    assert "ended" in methods
    assert "inspect" not in methods and "wait" not in methods
