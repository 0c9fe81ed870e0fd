"""The swarm engine's node watch, without Docker: a node away too long loses its runs; an attach
that broke is taken up again once the node answers, with nothing doubled or lost.

Fakes here stand at our own seam (hgrun's ``AttachStream`` and the callables the swarm engine
hands to :class:`WatchedAttach`); the real swarm's faults are in test_swarm.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from hgrun.engine import ContainerState, ContainerStatus
from hgrun.engine.swarmwatch import NodeWatch, WatchedAttach
from hgrun.errors import EngineError, NodeLostError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watch(
    clock: Clock, ready: Callable[[], bool], answers: Callable[[], bool] = lambda: False
) -> NodeWatch:
    return NodeWatch("n2", ready, answers, lost_after=10.0, clock=clock)


def test_a_node_away_lost_after_seconds_in_a_row_loses_its_runs() -> None:
    clock, up = Clock(), [False]
    w = watch(clock, lambda: up[0])
    w.check()  # away from now
    clock.now += 9.9
    w.check()
    up[0] = True
    clock.now += 1
    w.check()  # back in time: the count starts again
    up[0] = False
    clock.now += 1
    w.check()
    clock.now += 9.9
    w.check()
    clock.now += 0.2
    with pytest.raises(NodeLostError, match=r"swarm node n2 went down during the run and was not"
                       r" back within 10 s"):  # fmt: skip
        w.check()


def test_a_manager_away_loses_nothing_while_the_node_answers() -> None:
    clock = Clock()

    def manager_down() -> bool:
        raise EngineError("cannot reach the swarm manager")

    w = watch(clock, manager_down, answers=lambda: True)
    for _ in range(5):
        w.check()
        clock.now += 20
    lost = watch(clock, manager_down)
    lost.check()
    clock.now += 10
    with pytest.raises(NodeLostError, match="went out of the manager's sight"):
        lost.check()


class Stream:
    """An attach stream that hands out ``pieces`` then ends (or raises ``end``)."""

    def __init__(self, pieces: list[tuple[int, bytes]], end: Exception | None = None) -> None:
        self.pieces = list(pieces)
        self.end = end
        self.written: list[bytes] = []
        self.closed = False

    async def read(self) -> tuple[int, bytes] | None:
        if self.pieces:
            return self.pieces.pop(0)
        if self.end is not None:
            raise self.end
        return None

    async def write(self, data: bytes) -> None:
        self.written.append(data)

    async def close_stdin(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True


def state(status: ContainerStatus, code: int | None = None) -> ContainerState:
    return ContainerState("c", {}, status, code, False, "")


async def drain(stream: WatchedAttach) -> list[tuple[int, bytes]]:
    out = []
    while (piece := await stream.read()) is not None:
        out.append(piece)
    return out


def attached(
    first: Stream,
    states: list[ContainerState | Exception],
    *,
    again: Stream | None = None,
    logs: list[tuple[int, bytes]] = (),  # type: ignore[assignment]
    node_up: bool = True,
    clock: Clock | None = None,
) -> WatchedAttach:
    clock = clock or Clock()

    def inspect() -> ContainerState:
        got = states.pop(0) if len(states) > 1 else states[0]
        if isinstance(got, Exception):
            raise got
        return got

    async def reattach() -> Stream:
        assert again is not None
        return again

    async def log_pieces() -> AsyncIterator[tuple[int, bytes]]:
        for piece in logs:
            yield piece

    return WatchedAttach(
        first,
        watch(clock, lambda: node_up),
        inspect=inspect,
        reattach=reattach,
        logs=log_pieces,
        clock=clock,
        poll=0.01,
    )


def test_a_clean_end_of_an_ended_container_is_the_end() -> None:
    stream = attached(Stream([(1, b"a"), (2, b"b")]), [state(ContainerStatus.EXITED, 0)])
    assert asyncio.run(drain(stream)) == [(1, b"a"), (2, b"b")]


def test_a_broken_attach_is_made_again_and_the_replay_skips_what_was_delivered() -> None:
    # Broken after "one\n" and "e1": the node away once, then back with the run going on.
    first = Stream([(1, b"one\n"), (2, b"e1")], end=EngineError("connection reset"))
    again = Stream([(1, b"on"), (1, b"e\ntwo\n"), (2, b"e1e2"), (1, b"three\n")])
    stream = attached(
        first,
        [EngineError("node away"), state(ContainerStatus.RUNNING), state(ContainerStatus.EXITED)],
        again=again,
    )
    out = asyncio.run(drain(stream))
    assert out == [(1, b"one\n"), (2, b"e1"), (1, b"two\n"), (2, b"e2"), (1, b"three\n")]
    assert first.closed


def test_a_run_that_ended_while_its_node_was_away_gets_the_rest_from_its_log() -> None:
    first = Stream([(1, b"12")])  # the node's dockerd died: a clean-looking end of stream
    logs = [(1, b"1234"), (2, b"x")]
    stream = attached(
        first, [EngineError("node away"), state(ContainerStatus.EXITED, 137)], logs=logs
    )
    assert asyncio.run(drain(stream)) == [(1, b"12"), (1, b"34"), (2, b"x")]


def test_a_quiet_run_on_a_node_away_too_long_is_lost() -> None:
    clock = Clock()

    class Quiet(Stream):
        async def read(self) -> tuple[int, bytes] | None:
            await asyncio.Event().wait()  # a stalled connection: a cut link
            return None

    def away() -> bool:
        clock.now += 1  # a second between two looks
        return False

    stream = WatchedAttach(
        Quiet([]),
        NodeWatch("n2", away, lambda: False, lost_after=10.0, clock=clock),
        inspect=lambda: state(ContainerStatus.RUNNING),
        reattach=lambda: asyncio.sleep(0, Stream([])),
        logs=lambda: Stream([]).read(),  # type: ignore[arg-type,return-value]
        clock=clock,
        poll=0.01,
    )

    async def go() -> None:
        with pytest.raises(NodeLostError, match="swarm node n2 went down"):
            await stream.read()

    asyncio.run(asyncio.wait_for(go(), 30))
    assert clock.now >= 110
