"""The Docker engine's own framing stays inside it: pairs out, Docker's states in three words."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from hgrun.engine import STDERR, STDOUT, ContainerStatus, attachpipe
from hgrun.engine.attachpipe import Pipe
from hgrun.engine.dockerwire import RawAttach, container_state
from hgrun.engine.multiplex import frame


class _Transport(asyncio.Transport):
    """The transport under a Pipe in these tests: it records pauses, never writes."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...


def _received(pipe: Pipe, data: bytes) -> None:
    """``data`` as the transport hands it over: into the pipe's own buffer."""
    while data:
        buffer = pipe.get_buffer(-1)
        n = min(len(buffer), len(data))
        buffer[:n] = data[:n]
        pipe.buffer_updated(n)
        data = data[n:]


async def _read_all(raw: bytes, tty: bool, chunk: int) -> list[tuple[int, bytes]]:
    pipe = Pipe()
    transport = _Transport()
    pipe.connection_made(transport)
    stream = RawAttach(pipe, transport, tty)

    async def arrive() -> None:
        for i in range(0, len(raw), chunk):
            _received(pipe, raw[i : i + chunk])
            if i % (3 * chunk) == 0:  # the reader takes after one piece, or after several
                await asyncio.sleep(0)
        pipe.eof_received()

    engine = asyncio.create_task(arrive())
    out = []
    while (piece := await stream.read()) is not None:
        out.append(piece)
    await engine
    return out


def test_the_pipe_takes_its_head_then_what_came_after_it_and_pauses_when_full() -> None:
    async def go() -> None:
        pipe = Pipe(size=32)
        transport = _Transport()
        pipe.connection_made(transport)
        _received(pipe, b"HTTP/1.1 101 UPGRADED\r\n\r\nab")
        assert await pipe.head() == b"HTTP/1.1 101 UPGRADED\r\n\r\n"
        assert await pipe.wait()
        assert pipe.take(memoryview.tobytes) == b"ab"
        assert transport.paused == 0
        _received(pipe, b"x" * 32)
        assert transport.paused == 1  # full: the engine waits until the reader takes
        assert pipe.take(memoryview.tobytes) == b"x" * 32
        pipe.eof_received()
        assert not await pipe.wait()

    asyncio.run(go())


def test_the_pipe_starts_small_grows_while_output_comes_fast_and_shrinks_when_it_slows() -> None:
    """A connection that prints little holds FIRST bytes, not its largest buffer."""

    async def go() -> None:
        pipe = Pipe(size=64, first=16)
        transport = _Transport()
        pipe.connection_made(transport)
        assert len(pipe.get_buffer(-1)) == 16
        _received(pipe, b"a" * 60)  # faster than taken: 16 -> 32 -> 64
        assert len(pipe._buffer) == 64 and transport.paused == 0
        _received(pipe, b"b" * 4)
        assert transport.paused == 1  # full at its largest: the engine waits
        assert pipe.take(memoryview.tobytes) == b"a" * 60 + b"b" * 4
        assert len(pipe._buffer) == 64  # a big take: it stays big
        _received(pipe, b"c" * 3)
        assert pipe.take(memoryview.tobytes) == b"ccc"
        assert len(pipe._buffer) == 16  # a small take: back to the first size

    asyncio.run(go())


def test_a_steady_stream_is_gathered_and_output_now_and_then_is_taken_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bytes that follow a take closely are left GATHER to fill (one take, not one per engine
    write); bytes after a pause are taken the moment they arrive."""
    monkeypatch.setattr(attachpipe, "GATHER", 0.3)
    monkeypatch.setattr(attachpipe, "HOT", 0.2)

    async def go() -> None:
        pipe = Pipe()
        pipe.connection_made(_Transport())
        loop = asyncio.get_running_loop()
        _received(pipe, b"first")
        assert pipe.take(memoryview.tobytes) == b"first"
        _received(pipe, b"a")  # right after the take: a steady stream
        loop.call_later(0.05, _received, pipe, b"b")
        assert await pipe.wait()
        assert pipe.take(memoryview.tobytes) == b"ab"  # one take for both writes
        pipe._taken_at -= 1.0  # the last take long ago: output now and then
        _received(pipe, b"c")
        loop.call_later(0.05, _received, pipe, b"d")
        assert await pipe.wait()
        assert pipe.take(memoryview.tobytes) == b"c"  # at once, not gathered
        await asyncio.sleep(0.1)
        assert pipe.take(memoryview.tobytes) == b"d"
        monkeypatch.setattr(attachpipe, "GATHER_BYTES", 4)
        _received(pipe, b"efgh")  # steady, but already a take's worth: at once
        loop.call_later(0.05, _received, pipe, b"i")
        assert await pipe.wait()
        assert pipe.take(memoryview.tobytes) == b"efgh"
        await asyncio.sleep(0.1)

    asyncio.run(go())


def test_a_steady_stream_is_read_at_once_after_its_gather_on_a_real_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a steady stream gathers, reading pauses: the engine's writes (4 KB each with a TTY)
    wait in the kernel and come in one read, not one turn of the event loop each."""
    monkeypatch.setattr(attachpipe, "GATHER", 0.3)
    monkeypatch.setattr(attachpipe, "HOT", 0.2)
    chunk, count = b"x" * 4096, 40

    async def go() -> None:
        loop = asyncio.get_running_loop()
        ours, engine = socket.socketpair()
        engine.setblocking(False)
        pipe = Pipe()
        reads: list[int] = []
        updated = pipe.buffer_updated
        monkeypatch.setattr(pipe, "buffer_updated", lambda n: (reads.append(n), updated(n)))
        transport, _ = await loop.connect_accepted_socket(lambda: pipe, ours)
        try:
            engine.send(b"first")
            assert await pipe.wait()
            assert pipe.take(memoryview.tobytes) == b"first"
            reads.clear()
            engine.send(chunk)  # right after the take: a steady stream, left to gather

            async def write() -> None:
                for _ in range(count - 1):
                    await asyncio.sleep(0.002)
                    engine.send(chunk)

            writer = asyncio.create_task(write())
            assert await pipe.wait()
            await writer
            assert pipe.take(memoryview.tobytes) == chunk * count
            assert len(reads) <= 3, f"{len(reads)} reads for {count} writes: {reads}"
        finally:
            transport.close()
            engine.close()

    asyncio.run(go())


@pytest.mark.parametrize("chunk", [1, 3, 8, 9, 1000])
def test_attach_yields_stream_pairs_in_order(chunk: int) -> None:
    raw = frame(STDOUT, b"out1") + frame(STDERR, b"err") + frame(STDOUT, b"out2")
    pieces = asyncio.run(_read_all(raw, tty=False, chunk=chunk))
    assert b"".join(p for s, p in pieces if s == STDOUT) == b"out1out2"
    assert b"".join(p for s, p in pieces if s == STDERR) == b"err"
    assert [s for s, _ in pieces] == [STDOUT, STDERR, STDOUT]


def test_attach_with_a_tty_is_raw_stdout() -> None:
    raw = b"\x01\x00\x00\x00\x00\x00\x00\x05hello"
    assert asyncio.run(_read_all(raw, tty=True, chunk=1000)) == [(STDOUT, raw)]


@pytest.mark.parametrize(
    ("docker_status", "running", "status"),
    [
        ("created", False, ContainerStatus.CREATED),
        ("running", True, ContainerStatus.RUNNING),
        ("paused", True, ContainerStatus.RUNNING),
        ("restarting", True, ContainerStatus.RUNNING),
        ("exited", False, ContainerStatus.EXITED),
        ("dead", False, ContainerStatus.EXITED),
        ("removing", False, ContainerStatus.EXITED),
        ("", True, ContainerStatus.RUNNING),  # an unknown word: Running decides
        ("", False, ContainerStatus.EXITED),
    ],
)
def test_docker_states(docker_status: str, running: bool, status: ContainerStatus) -> None:
    raw: dict[str, Any] = {"Id": "abc", "State": {"Status": docker_status, "Running": running}}
    assert container_state(raw).status is status
    assert container_state(raw).running is (status is ContainerStatus.RUNNING)
