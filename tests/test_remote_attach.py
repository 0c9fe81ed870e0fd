"""Attach through a server that does not hold the run (hgrun/server/remote.py), below the
WebSocket: two supervisors on one real store and the in-memory engine at our seam. The client
rows in the store on both backends; the holder counting a client that came through the other
server; and a :class:`RemoteRun` that gets every byte once, in order, across a takeover (the
store's copy replaced by the engine's replay), with its input, resize and EOF reaching the
container and the exit code from the store. End to end with real servers: test_scale_out.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_engine import FakeEngine
from support.store import app_with_release, new_store
from support.stores import StoreFactory
from test_supervisor import DEADLINE, World, asyncio_test, until

from hgrun.engine import STDERR, STDOUT
from hgrun.models import RunStatus
from hgrun.relay import server as relay
from hgrun.server.remote import RemoteRun, count_remote_viewers, inputs_of
from hgrun.store import RemoteViewer


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Supervisors made by ``world.supervisor()`` are servers on one SQLite store (one engine)."""
    now = [1000.0]
    store = new_store(tmp_path / "hgrun.db", clock=lambda: now[0])
    return World(store, FakeEngine(), now, *app_with_release(store))


def test_client_rows_count_until_they_expire_and_are_dropped(make_store: StoreFactory) -> None:
    now = [1000.0]
    one = make_store(clock=lambda: now[0])
    other = make_store(workspace=None, clock=lambda: now[0])  # another server on the store
    one.see_viewer(7, "a", until=1008.0, active=1000.0)
    one.see_viewer(7, "b", until=1004.0, active=1001.0)
    other.see_viewer(8, "c", until=1008.0, active=999.0)
    assert sorted(other.remote_viewers(), key=lambda v: v.viewer) == [
        RemoteViewer(7, "a", 1008.0, 1000.0),
        RemoteViewer(7, "b", 1004.0, 1001.0),
        RemoteViewer(8, "c", 1008.0, 999.0),
    ]
    one.see_viewer(7, "a", until=1010.0, active=1005.0)  # renewed, with new input
    now[0] = 1005.0  # b expired (its server died): not counted, and its row is gone
    assert sorted(one.remote_viewers(), key=lambda v: v.viewer) == [
        RemoteViewer(7, "a", 1010.0, 1005.0),
        RemoteViewer(8, "c", 1008.0, 999.0),
    ]
    other.drop_viewer(8, "c")
    assert one.remote_viewers() == [RemoteViewer(7, "a", 1010.0, 1005.0)]
    assert one.claim_lease("viewer", "x", 10.0) is None  # a lease's row is not a client's
    assert len(one.remote_viewers()) == 1


@asyncio_test
async def test_the_holder_counts_a_client_attached_through_another_server(world: World) -> None:
    holder = world.supervisor()
    session = await holder.launch(world.run(detached=False), world.release, "none")
    detached = await holder.launch(world.run(), world.release, "none")
    await count_remote_viewers(holder, world.now[0])
    assert not session.clients_seen and not session.watched_elsewhere  # nobody yet: waits
    world.store.see_viewer(session.run.id, "v", until=world.now[0] + 8, active=world.now[0] + 1)
    await count_remote_viewers(holder, world.now[0])
    assert session.clients_seen and session.watched_elsewhere and session.alone_since is None
    assert session.last_activity == world.now[0] + 1  # its input is activity (idle deadline)
    assert not detached.watched_elsewhere
    await until(lambda: world.engine.running() != [], "the run started for its client")
    world.now[0] += 100  # past the grace, but the client is there
    world.store.see_viewer(session.run.id, "v", until=world.now[0] + 8, active=world.now[0])
    await count_remote_viewers(holder, world.now[0])
    await holder.check(session, world.now[0])
    assert not session.finished.is_set()
    world.store.drop_viewer(session.run.id, "v")  # the client left B
    await count_remote_viewers(holder, world.now[0])
    assert session.alone_since == world.now[0] and not session.watched_elsewhere
    await holder.check(session, world.now[0] + 60)  # the grace
    await asyncio.wait_for(session.finished.wait(), DEADLINE)
    assert world.store.run(session.run.id).status is RunStatus.CANCELED


async def _collect(events: AsyncIterator[object], into: list[object]) -> None:
    async for event in events:
        into.append(event)


def _bytes(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, relay.Output))


@asyncio_test
async def test_a_remote_client_gets_every_byte_once_through_a_takeover(world: World) -> None:
    holder = world.supervisor()
    session = await holder.launch(world.run(detached=False), world.release, "none")
    elsewhere = world.supervisor()  # the server the client reached
    remote = RemoteRun(elsewhere, session.run, None, clock=world.clock)
    events: list[object] = []
    task = asyncio.create_task(_collect(remote.events(), events))
    try:
        await until(lambda: bool(world.store.remote_viewers()), "the client's row")
        await count_remote_viewers(holder, world.now[0])
        await until(lambda: world.engine.running() != [], "the run started for its client")
        cid = world.engine.only().id
        world.engine.emit(cid, STDOUT, b"hello\n")
        await until(lambda: _bytes(events) == b"hello\n", "the first output through the store")

        # Input, resize and EOF reach the container once the run runs (seen from the store).
        await asyncio.wait_for(remote.stdin(b"typed\n"), DEADLINE)
        await asyncio.wait_for(remote.close_stdin(), DEADLINE)
        container = world.engine.containers[cid]
        assert (bytes(container.stdin), container.stdin_closed) == (b"typed\n", True)

        world.engine.emit(cid, STDERR, b"oops\n")
        await until(lambda: _bytes(events) == b"hello\noops\n", "stderr too")
        # The holder stalls past its lease; a third server takes the run up: the store's copy
        # is replaced by the engine's replay (same offsets): nothing comes twice.
        world.now[0] += 16
        third = world.supervisor()
        await third.recoverer.recover()
        assert session.run.id in third.sessions
        world.engine.emit(cid, STDOUT, b"after\n")
        world.engine.exit(cid, 3)
        await asyncio.wait_for(task, DEADLINE)
    finally:
        task.cancel()
        remote.detach()
    assert _bytes(events) == b"hello\noops\nafter\n"
    streams = [e.stream for e in events if isinstance(e, relay.Output)]
    assert streams[0] == STDOUT and STDERR in streams
    end = events[-1]
    assert isinstance(end, relay.Exit) and (end.code, end.reason) == (3, "NonZeroExitCode"), end
    await until(lambda: world.store.remote_viewers() == [], "the client's row dropped")


@asyncio_test
async def test_a_remote_tty_client_resizes_and_ends_with_a_stop(world: World) -> None:
    holder = world.supervisor()
    session = await holder.launch(world.run(detached=False, tty=True), world.release, "none")
    remote = RemoteRun(world.supervisor(), session.run, None, clock=world.clock)
    await remote.resize(80, 24)  # before it runs: applied once it does
    events: list[object] = []
    task = asyncio.create_task(_collect(remote.events(), events))
    try:
        await until(lambda: bool(world.store.remote_viewers()), "the client's row")
        await count_remote_viewers(holder, world.now[0])
        await until(lambda: world.engine.running() != [], "the run started for its client")
        cid = world.engine.only().id
        container = world.engine.containers[cid]
        await until(lambda: container.sizes == [(80, 24)], "the first size")
        await remote.resize(132, 43)
        assert container.sizes == [(80, 24), (132, 43)]
        await remote.close_stdin()  # never for a TTY (Ctrl-D is a key)
        assert not container.stdin_closed
        await holder.stop(session.run.id)
        await asyncio.wait_for(task, DEADLINE)
    finally:
        task.cancel()
        remote.detach()
    end = events[-1]
    assert isinstance(end, relay.Exit) and end.reason == "Canceled", events


@asyncio_test
async def test_a_piped_runs_stdin_outlives_a_client_that_drops(world: World) -> None:
    """Closing a piped run's stdin attach is the command's EOF: the server keeps it past a
    client that drops (without EOF), the next client's input goes on through it, and only an
    EOF or the container's end closes it."""
    holder = world.supervisor()
    session = await holder.launch(world.run(detached=False), world.release, "none")
    elsewhere = world.supervisor()
    first = RemoteRun(elsewhere, session.run, None, clock=world.clock)
    task = asyncio.create_task(_collect(first.events(), []))
    await until(lambda: bool(world.store.remote_viewers()), "the client's row")
    await count_remote_viewers(holder, world.now[0])
    await until(lambda: world.engine.running() != [], "the run started for its client")
    cid = world.engine.only().id
    container = world.engine.containers[cid]
    await until(lambda: len(container.streams) == 2, "the holder's attach and the client's")
    before = list(container.streams)
    await asyncio.wait_for(first.stdin(b"one\n"), DEADLINE)
    (stdin,) = [s for s in container.streams if s not in before]  # its stdin attach
    task.cancel()
    first.detach()  # dropped, no EOF
    await until(lambda: all(s.closed for s in before[1:]), "the client's own attach closed")
    assert not stdin.closed and len(inputs_of(elsewhere)) == 1  # the stdin attach stays
    second = RemoteRun(elsewhere, session.run, 3, clock=world.clock)
    task = asyncio.create_task(_collect(second.events(), []))
    try:
        await until(lambda: len(container.streams) == 4, "the second client's own attach")
        await asyncio.wait_for(second.stdin(b"two\n"), DEADLINE)
        assert (bytes(container.stdin), container.stdin_closed) == (b"one\ntwo\n", False)
        assert len(container.streams) == 4  # through the same stdin attach
        await asyncio.wait_for(second.close_stdin(), DEADLINE)
        assert container.stdin_closed
        world.engine.exit(cid, 0)
        await asyncio.wait_for(task, DEADLINE)
    finally:
        task.cancel()
        second.detach()
    await until(lambda: len(inputs_of(elsewhere)) == 0, "the stdin attach closed at the end")
