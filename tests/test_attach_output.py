"""How the attach client writes output (hgrun.cli.attachsession): what has arrived goes out in
few writes, in order, all of it, without copies; never held back waiting for more."""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hgrun.cli import attachsession
from hgrun.cli.attachsession import Session, State, Wakeup, write_parts
from hgrun.cli.terminal import Terminal
from hgrun.cli.wsclient import WebSocket
from hgrun.relay.protocol import V5, ClientConnection


def _drain(fd: int, into: bytearray) -> threading.Thread:
    def read() -> None:
        while chunk := os.read(fd, 65536):
            into.extend(chunk)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _parts(count: int) -> tuple[list[bytes | memoryview], bytes]:
    """``count`` parts of varied sizes (views among them), and what they make together."""
    parts: list[bytes | memoryview] = []
    for i in range(count):
        piece = bytes([i % 251]) * (1 + (i * 7919) % 70_000)
        parts.append(memoryview(piece)[1:] if i % 3 == 0 else piece)
    return parts, b"".join(parts)


@pytest.mark.parametrize("blocking", [True, False])
def test_write_parts_to_a_pipe_writes_everything_in_order(blocking: bool) -> None:
    # More parts than one writev takes, and more bytes than the pipe holds: short writes.
    parts, whole = _parts(attachsession.IOV_MAX + 100)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, blocking)
    got = bytearray()
    reader = _drain(read_fd, got)
    with os.fdopen(write_fd, "wb") as stream:
        stream.write(b"before:")  # held in the stream's own buffer: it goes first
        write_parts(stream, parts)
    reader.join(30)
    os.close(read_fd)
    assert bytes(got) == b"before:" + whole


def test_write_parts_to_a_stream_without_a_descriptor() -> None:
    parts, whole = _parts(10)
    stream = io.BytesIO()
    write_parts(stream, parts)
    assert stream.getvalue() == whole


class _Recorder(io.RawIOBase):
    """A stream that records each write (with its name) into a shared list."""

    def __init__(self, name: str, log: list[tuple[str, bytes]]) -> None:
        self.name_ = name
        self.log = log

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.log.append((self.name_, bytes(data)))
        return len(data)


@pytest.fixture
def make_session() -> Iterator[Callable[[list[tuple[str, bytes]]], Session]]:
    """A session on one end of a socket pair, writing to recorders of one shared log."""
    ends = socket.socketpair()
    wake = Wakeup()

    def make(log: list[tuple[str, bytes]]) -> Session:
        out, err = _Recorder("out", log), _Recorder("err", log)
        terminal = Terminal.on(None, out, err)  # type: ignore[arg-type]
        ws = WebSocket(ends[0], V5, {}, b"")
        return Session(ws, ClientConnection(V5), terminal, "run 1", 1, State(), wake)

    yield make
    wake.close()
    for end in ends:
        end.close()


def test_output_is_gathered_per_stream_and_written_in_order(make_session: Any) -> None:
    log: list[tuple[str, bytes]] = []
    session = make_session(log)
    out, err = session.terminal.stdout, session.terminal.stderr
    for stream, data in [(out, b"a"), (out, b"b"), (err, b"E"), (out, b"c"), (out, b"d")]:
        session._output(stream, data)
    # A change of stream writes what came before it first; the rest waits until the socket
    # has nothing more.
    assert log == [("out", b"ab"), ("err", b"E")]
    session._write_out()
    assert log == [("out", b"ab"), ("err", b"E"), ("out", b"cd")]
    session._write_out()
    assert len(log) == 3


def test_output_past_the_batch_size_is_written_at_once(make_session: Any) -> None:
    log: list[tuple[str, bytes]] = []
    session = make_session(log)
    big = b"x" * attachsession.WRITE_BATCH
    session._output(session.terminal.stdout, b"y")
    session._output(session.terminal.stdout, big)
    assert log == [("out", b"y" + big)]
