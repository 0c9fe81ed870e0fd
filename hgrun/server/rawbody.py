"""A large request body read straight off the client's socket, in large reads.

uvicorn (0.54, httptools) hands a body to the app piece by piece: the event loop reads at most
256 KB at a time, the parser copies each piece into a ``bytes``, the request cycle appends it to
a ``bytearray`` and ``receive()`` copies that again, and reading pauses and resumes every 64 KB
(``HIGH_WATER_LIMIT``); each piece then wakes the app's task through an event. For a 1 GB upload
that is four copies and thousands of wake-ups in the one event loop thread.

:class:`RequestBody` takes the rest of such a body over instead, when it can: uvicorn stops
reading the connection, the bytes its parser already has are handed over first, then the socket
(a duplicate of its descriptor) is read directly in reads of up to :data:`READ_SIZE`, exactly
up to the declared ``Content-Length``. The connection is then closed after the answer (the
parser still counts the body as unread, so it cannot serve a next request). Anything else goes
through Starlette's ``request.stream()`` as before: TLS (the bytes on the socket are encrypted),
a chunked body, a body already being read, another server than hgrun's protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request

from hgrun.engine.span import SocketSpan, SplicePipe
from hgrun.errors import HgrunError

EXTENSION = "hgrun.body_tap"  # the scope["extensions"] key: {"tap": the request's BodyTap}
READ_SIZE = 1024 * 1024
MIN_SPAN = 64 * 1024  # bytes worth a splice; fewer are read
DRAIN_SECONDS = 30.0  # at most this long reading the rest of a body that was refused part-way


# What take() reads and writes of uvicorn's RequestResponseCycle (0.30 to 0.54 at least).
_CYCLE = (
    "body",
    "more_body",
    "keep_alive",
    "waiting_for_100_continue",
    "response_started",
    "disconnected",
)


class BodyTap:
    """What a request's handler needs to take its body off the connection: the uvicorn
    protocol and the request cycle it belongs to (set by :mod:`hgrun.server.connections`)."""

    def __init__(self, protocol: Any, cycle: Any) -> None:
        self.protocol = protocol
        self.cycle = cycle
        self.parsed = 0  # body bytes the parser handed to the cycle so far
        self.taken = False

    def on_body(self, n: int) -> bool:
        """Count ``n`` parsed body bytes; False once the body is taken (drop them)."""
        self.parsed += n
        return not self.taken

    def take(self, declared: int) -> tuple[bytes, socket.socket, int] | None:
        """Stop uvicorn reading and return (what its parser already has, the socket, how many
        bytes remain); None when the body cannot be taken (see the module's docstring)."""
        protocol, cycle = self.protocol, self.cycle
        transport = protocol.transport
        if not all(hasattr(cycle, name) for name in _CYCLE) or not hasattr(protocol, "flow"):
            return None  # a uvicorn of another shape: its own way, as any other body
        if (
            self.taken
            or protocol.cycle is not cycle
            or cycle.response_started
            or cycle.disconnected
            or transport.is_closing()
            or transport.get_extra_info("sslcontext") is not None
            or self.parsed > declared
        ):
            return None
        raw = transport.get_extra_info("socket")
        if raw is None:
            return None
        protocol.flow.pause_reading()
        try:
            sock = socket.socket(fileno=os.dup(raw.fileno()))
        except OSError:
            protocol.flow.resume_reading()
            return None
        sock.setblocking(False)
        self.taken = True
        # The parser still expects the rest of this body: no next request on this connection.
        cycle.keep_alive = False
        if cycle.waiting_for_100_continue:
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        buffered = bytes(cycle.body)
        cycle.body = cycle.body[:0]
        remaining = 0 if not cycle.more_body else declared - self.parsed
        return buffered, sock, remaining


class RequestBody:
    """One request's body, read once: off the socket when it can be taken over (a plain
    connection, a ``Content-Length``), else through ``request.stream()``. The takeover
    happens at the first read, so a handler that answers before reading (a 404, a 409, a
    declared size over the cap) leaves the body to uvicorn, which skips it and keeps the
    connection.

    Read with :meth:`read` (or :meth:`chunks`); where the reader knows the next bytes need no
    look, :meth:`span` hands them on as a :class:`~hgrun.engine.span.SocketSpan` to be spliced
    to the engine's socket, never read here.

    Use it as an async context manager: when the handler fails part-way through a taken body,
    the rest is read and dropped (for at most :data:`DRAIN_SECONDS`) before the answer goes,
    so the connection closes cleanly and the client, still sending, reads the answer (a close
    with unread bytes would be a reset, which may lose it); uvicorn does the same for the
    bodies it reads."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._begun = False
        self._stream: AsyncIterator[bytes] | None = None  # not taken: Starlette's
        self._buffered = b""  # taken: what uvicorn's parser had, handed on first
        self._sock: socket.socket | None = None
        self._remaining = 0  # taken: bytes still on the socket (spans not counted)
        self._buffer: memoryview | None = None
        self._pipe: SplicePipe | None = None
        self._span: SocketSpan | None = None  # the last span handed out

    async def __aenter__(self) -> RequestBody:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        sock, self._sock = self._sock, None
        if self._span is not None:
            self._remaining += self._span.size - self._span.moved
        try:
            if sock is not None and kind is not None and self._remaining > 0:
                with contextlib.suppress(TimeoutError, OSError):
                    async with asyncio.timeout(DRAIN_SECONDS):
                        await self._drain(sock)
        finally:
            if sock is not None:
                sock.close()  # the duplicate only: uvicorn's transport closes the connection
            if self._pipe is not None:
                self._pipe.close()

    async def read(self) -> bytes | memoryview | None:
        """The next piece of the body; None at its end (or where the client stopped: the
        reader decides whether what came is whole). Pieces read off the socket are views of
        one buffer, reused for the next read: use (send on, or copy) a piece before asking
        for the next. No allocation per piece: a fresh 1 MiB block each time would be a
        fresh mmap, each of its pages faulted in and zeroed before the copy into it
        (hgrun/server/memory.py keeps such blocks off the heap)."""
        self._begin()
        if self._stream is not None:
            return await anext(self._stream, None)
        if self._buffered:
            piece, self._buffered = self._buffered, b""
            return piece
        if self._sock is None or self._remaining <= 0:
            return None
        if self._buffer is None:
            self._buffer = memoryview(bytearray(min(READ_SIZE, self._remaining)))
        want = self._buffer[: min(len(self._buffer), self._remaining)]
        try:
            n = await asyncio.get_running_loop().sock_recv_into(self._sock, want)
        except (ConnectionError, OSError):
            n = 0
        if not n:
            self._remaining = 0
            return None
        self._remaining -= n
        return self._buffer[:n]

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        """:meth:`read` until the end."""
        while (piece := await self.read()) is not None:
            yield piece

    def span(self, limit: int, ended: Callable[[], HgrunError] | None = None) -> SocketSpan | None:
        """The next ``limit`` bytes (fewer at the body's end) as a span to move unread (its
        error when the client stops first: ``ended``); None where they must be read (a body
        not taken over, bytes already buffered, too few)."""
        self._begin()
        if (
            self._sock is None
            or self._buffered
            or min(limit, self._remaining) < MIN_SPAN
            or not hasattr(os, "splice")
        ):
            return None
        if self._pipe is None:
            self._pipe = SplicePipe()
        size = min(limit, self._remaining)
        self._remaining -= size
        self._span = SocketSpan(self._sock, size, self._pipe, ended)
        return self._span

    def _begin(self) -> None:
        if self._begun:
            return
        self._begun = True
        taken = self._take()
        if taken is None:
            self._stream = self._request.stream().__aiter__()
        else:
            self._buffered, self._sock, self._remaining = taken

    def _take(self) -> tuple[bytes, socket.socket, int] | None:
        request = self._request
        tap = request.scope.get("extensions", {}).get(EXTENSION, {}).get("tap")
        length = request.headers.get("content-length", "")
        if (
            not isinstance(tap, BodyTap)
            or "transfer-encoding" in request.headers
            or not length.isascii()
            or not length.isdigit()
        ):
            return None
        return tap.take(int(length))

    async def _drain(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        buffer = memoryview(bytearray(min(READ_SIZE, self._remaining)))
        while self._remaining > 0:
            n = await loop.sock_recv_into(sock, buffer[: min(len(buffer), self._remaining)])
            if not n:
                return
            self._remaining -= n
