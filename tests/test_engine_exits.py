"""A run's end from the engine's event stream (hgrun/engine/dockerevents.py): the shortcut, and
every way it falls back to ``wait``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from hgrun.engine import LABEL_RUN, ContainerSpec, ContainerStatus, dockerevents
from hgrun.engine.docker import DockerEngine
from hgrun.engine.dockerevents import Exits
from hgrun.errors import EngineError
from hgrun.models import SIZES


def _event(action: str, cid: str, when: int, **attributes: str) -> str:
    return json.dumps(
        {
            "Type": "container",
            "Action": action,
            "Actor": {"ID": cid, "Attributes": {LABEL_RUN: "1", **attributes}},
            "timeNano": when,
        }
    )


class _Stream:
    """The engine's event stream at our seam: lines fed by the test, ended when it says."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()
        self.opened = 0

    @contextlib.asynccontextmanager
    async def open(self, params: dict[str, str]) -> AsyncIterator[tuple[int, AsyncIterator[str]]]:
        assert json.loads(params["filters"])["label"] == [LABEL_RUN]
        self.opened += 1

        async def lines() -> AsyncIterator[str]:
            while (line := await self.lines.get()) is not None:
                yield line

        yield self.status, lines()


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.002)


async def _live(exits: Exits) -> None:
    exits.watch()
    await asyncio.wait_for(exits._live.wait(), 5)


def test_a_die_that_came_first_is_the_end_with_its_code_oom_and_engine_times() -> None:
    async def main() -> None:
        stream = _Stream()
        exits = Exits(stream.open)
        await _live(exits)
        for line in (
            _event("start", "c1", 1_000_000_000),
            _event("oom", "c1", 1_500_000_000),
            "not json",
            json.dumps({"Action": "die"}),  # no actor: ignored
            _event("die", "c1", 2_000_000_000, exitCode="137", image="x"),
        ):
            stream.lines.put_nowait(line)
        await _until(lambda: "c1" in exits._seen and exits._seen["c1"].ended is not None, "c1 died")
        state = await exits.ended("c1")
        assert state is not None
        assert (state.exit_code, state.oom_killed) == (137, True)
        assert state.status is ContainerStatus.EXITED
        assert (state.started_at, state.finished_at) == (1.0, 2.0)
        assert state.labels == {LABEL_RUN: "1"}
        assert "c1" not in exits._seen  # taken once
        await exits.aclose()

    asyncio.run(main())


def test_an_ask_before_the_die_is_answered_when_it_comes() -> None:
    async def main() -> None:
        stream = _Stream()
        exits = Exits(stream.open)
        await _live(exits)
        asking = asyncio.ensure_future(exits.ended("c2"))
        await asyncio.sleep(0.005)
        assert not asking.done()
        stream.lines.put_nowait(_event("die", "c2", 3_000_000_000, exitCode="4"))
        state = await asking
        assert state is not None and state.exit_code == 4 and not state.oom_killed
        assert state.started_at is None  # its start was not seen: the run's own is kept
        await exits.aclose()

    asyncio.run(main())


def test_no_die_within_the_grace_or_a_stream_down_means_ask_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        stream = _Stream()
        exits = Exits(stream.open)
        assert await exits.ended("c3") is None  # never opened: at once
        await _live(exits)
        assert await exits.ended("c3") is None  # no die within the grace
        asking = asyncio.ensure_future(exits.ended("c4"))
        await asyncio.sleep(0.005)
        stream.lines.put_nowait(None)  # the engine ends the stream
        assert await asking is None
        assert not exits._live.is_set()
        assert exits._waiting == {}
        await exits.aclose()

    monkeypatch.setattr(dockerevents, "GRACE", 0.2)
    asyncio.run(main())


def test_the_stream_is_opened_again_after_it_ends_or_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        stream = _Stream(status=500)
        exits = Exits(stream.open)
        exits.watch()
        await _until(lambda: stream.opened >= 2, "opened again after a refusal")
        assert not exits._live.is_set()
        stream.status = 200
        await asyncio.wait_for(exits._live.wait(), 5)
        stream.lines.put_nowait(None)
        await _until(lambda: stream.opened >= 4, "opened again after its end")
        await exits.aclose()

    monkeypatch.setattr(dockerevents, "RETRY", (0.01, 0.02))
    asyncio.run(main())


def test_what_it_remembers_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        stream = _Stream()
        exits = Exits(stream.open)
        await _live(exits)
        for i in range(50):
            stream.lines.put_nowait(_event("die", f"x{i}", i, exitCode="0"))
        await _until(lambda: "x49" in exits._seen, "the 50th noted")
        assert list(exits._seen) == [f"x{i}" for i in range(40, 50)]
        await exits.aclose()

    monkeypatch.setattr(dockerevents, "REMEMBERED", 10)
    asyncio.run(main())


# -- against a real engine -------------------------------------------------------------------


def _spec(image: str, script: str, **labels: str) -> ContainerSpec:
    return ContainerSpec(
        image=image,
        command=["sh", "-c", script],
        env={},
        labels={LABEL_RUN: "exits-test", **labels},
        size=SIZES["starter"],
    )


def test_dockers_die_event_gives_the_end_of_a_run(docker_host: str, busybox_image: str) -> None:
    async def main() -> Any:
        engine = DockerEngine(docker_host)
        container = await asyncio.to_thread(engine.create, _spec(busybox_image, "echo hi; exit 7"))
        try:
            stream = await engine.attach(container, tty=False, stdin=False, logs=False)
            await asyncio.wait_for(engine._exits._live.wait(), 10)
            await asyncio.to_thread(engine.start, container)
            output = b""
            while (piece := await stream.read()) is not None:
                output += piece[1]
            state = await engine.ended(container)
            await stream.close()
            return output, state
        finally:
            await asyncio.to_thread(engine.remove, container)
            await engine.aclose()

    output, state = asyncio.run(main())
    assert output == b"hi\n"
    assert state is not None, "the die event did not come: the run would have asked wait"
    assert state.exit_code == 7 and not state.oom_killed
    assert state.started_at is not None and state.finished_at is not None
    assert 0 <= state.finished_at - state.started_at < 30


def test_a_container_that_ended_before_the_stream_was_open_is_left_to_wait(
    docker_host: str, busybox_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> Any:
        engine = DockerEngine(docker_host)
        container = await asyncio.to_thread(engine.create, _spec(busybox_image, "exit 3"))
        try:
            await asyncio.to_thread(engine.start, container)
            code = await asyncio.to_thread(engine.wait, container)
            engine._exits.watch()
            await asyncio.wait_for(engine._exits._live.wait(), 10)
            return code, await engine.ended(container)
        finally:
            await asyncio.to_thread(engine.remove, container)
            await engine.aclose()

    monkeypatch.setattr(dockerevents, "GRACE", 0.2)
    assert asyncio.run(main()) == (3, None)


def test_an_attach_to_a_container_that_ended_is_refused_not_left_open(
    docker_host: str, busybox_image: str
) -> None:
    """Docker never ends an attach to a container that had ended already: an attach asked for
    a running container (``running=True``) says so at once. One to a container still running
    ends with it, its whole output read."""

    async def main() -> Any:
        engine = DockerEngine(docker_host)
        ended = await asyncio.to_thread(engine.create, _spec(busybox_image, "echo gone"))
        running = await asyncio.to_thread(engine.create, _spec(busybox_image, "sleep 1; echo b"))
        try:
            await asyncio.to_thread(engine.start, ended)
            await asyncio.to_thread(engine.wait, ended)
            # Docker's own behaviour, which `running` is for: this attach never ends.
            raw = await engine.attach(ended, tty=False, stdin=False, logs=True)
            with pytest.raises(TimeoutError):
                while await asyncio.wait_for(raw.read(), 2) is not None:
                    pass
            await raw.close()
            with pytest.raises(EngineError, match="no longer running"):
                await engine.attach(ended, tty=False, stdin=False, logs=True, running=True)
            await asyncio.to_thread(engine.start, running)
            stream = await engine.attach(running, tty=False, stdin=False, logs=True, running=True)
            output = b""
            while (piece := await asyncio.wait_for(stream.read(), 30)) is not None:
                output += piece[1]
            await stream.close()
            return output
        finally:
            for container in (ended, running):
                await asyncio.to_thread(engine.remove, container)
            await engine.aclose()

    assert asyncio.run(main()) == b"b\n"
