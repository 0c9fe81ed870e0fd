"""An upload's chunked body written straight to a socket (hgrun/engine/dockerwire.py), over a
real socket pair with a small send buffer, so the kernel takes most pieces in parts."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import AsyncIterator

import pytest

from hgrun.engine.dockerwire import send_chunked_raw
from hgrun.engine.span import SocketSpan, SplicePipe


def _unchunk(data: bytes) -> bytes:
    """The body of a chunked stream (RFC 9112 section 7.1), checking its framing."""
    out, pos = bytearray(), 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end], 16)
        pos = end + 2
        if size == 0:
            assert data[pos:] == b"\r\n", "the stream ends with the last chunk"
            return bytes(out)
        out += data[pos : pos + size]
        assert data[pos + size : pos + size + 2] == b"\r\n", "each chunk ends with CRLF"
        pos += size + 2


async def _reused(payload: bytes, sizes: list[int]) -> AsyncIterator[bytes | memoryview]:
    """``payload`` in pieces of ``sizes`` (cycled), every piece a view of the same buffer,
    overwritten for the next: what the server's body reader hands on."""
    buffer = memoryview(bytearray(max(sizes)))
    pos, i = 0, 0
    while pos < len(payload):
        n = min(sizes[i % len(sizes)], len(payload) - pos)
        buffer[:n] = payload[pos : pos + n]
        yield buffer[:n]
        buffer[:n] = b"\xff" * n  # a piece still held after this would be corrupt
        pos, i = pos + n, i + 1
    yield b""  # an empty piece is skipped, not the end


def test_pieces_of_a_reused_buffer_arrive_whole_and_in_order() -> None:
    payload = os.urandom(5 * 1024 * 1024 + 17)
    here, there = socket.socketpair()
    here.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    here.setblocking(False)
    got: list[bytes] = []

    def drain() -> None:
        while chunk := there.recv(7 * 1024):
            got.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        asyncio.run(send_chunked_raw(here, _reused(payload, [1, 1024 * 1024, 333, 70_000])))
    finally:
        here.close()
        reader.join(30)
        there.close()
    assert _unchunk(b"".join(got)) == payload


def test_a_failing_source_sends_no_last_chunk() -> None:
    """An upload refused half-way must not look complete to the engine."""

    async def refused() -> AsyncIterator[bytes]:
        yield b"first"
        raise ValueError("refused entry")

    here, there = socket.socketpair()
    here.setblocking(False)
    try:
        with pytest.raises(ValueError, match="refused entry"):
            asyncio.run(send_chunked_raw(here, refused()))
        here.close()
        data = there.recv(1024)
        assert data == b"5\r\nfirst\r\n"
    finally:
        here.close()
        there.close()


# -- spans: bytes spliced from the client's socket to the engine's ----------------------------


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A loopback TCP connection (the client's side, the server's side), as a client's is."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def _send_in_thread(sock: socket.socket, data: bytes, close: bool = True) -> threading.Thread:
    def send() -> None:
        sock.sendall(data)
        if close:
            sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def _relay(payload: bytes, declared: int, *, broken: bool = False, ended=None) -> bytes:
    """``payload`` sent on a TCP connection, a span of ``declared`` bytes of it moved (through
    ``send_chunked_raw``, between two other pieces) to a Unix socket; what arrived there."""
    client, source = _tcp_pair()
    engine_side, engine = socket.socketpair()
    source.setblocking(False)
    engine_side.setblocking(False)
    pipe = SplicePipe()
    pipe.broken = broken
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: engine.recv(1 << 16), b"")))
    reader.start()
    sender = _send_in_thread(client, payload)

    async def pieces() -> AsyncIterator[bytes | memoryview | SocketSpan]:
        yield b"before"
        span = SocketSpan(source, declared, pipe, ended)
        yield span
        assert span.moved == declared
        yield b"after"

    try:
        asyncio.run(send_chunked_raw(engine_side, pieces()))
    finally:
        engine_side.close()
        reader.join(30)
        sender.join(30)
        for s in (client, source, engine):
            s.close()
        pipe.close()
    return _unchunk(b"".join(got))


@pytest.mark.parametrize("broken", [False, True], ids=["spliced", "read-and-sent"])
def test_a_span_moves_exactly_its_bytes(broken: bool) -> None:
    payload = os.urandom(6 * 1024 * 1024 + 3)
    assert _relay(payload, len(payload), broken=broken) == b"before" + payload + b"after"


@pytest.mark.parametrize("broken", [False, True], ids=["spliced", "read-and-sent"])
def test_a_source_that_ends_early_raises_the_span_s_error(broken: bool) -> None:
    from hgrun.errors import InputError

    def ended() -> InputError:
        return InputError("the upload ended before the end of the tar archive")

    with pytest.raises(InputError, match="ended before the end"):
        _relay(os.urandom(100_000), 200_000, broken=broken, ended=ended)
