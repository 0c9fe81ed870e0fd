"""A large request body read straight off the client's socket, in large reads.

uvicorn (0.54, httptools) hands a body to the app piece by piece: the event loop reads at most
256 KB at a time, the parser copies each piece into a ``bytes``, the request cycle appends it to
a ``bytearray`` and ``receive()`` copies that again, and reading pauses and resumes every 64 KB
(``HIGH_WATER_LIMIT``); each piece then wakes the app's task through an event. For a 1 GB upload
that is four copies and thousands of wake-ups in the one event loop thread.

:func:`body_stream` takes the rest of such a body over instead, when it can: uvicorn stops
reading the connection, the bytes its parser already has are handed over first, then the socket
(a duplicate of its descriptor) is read directly in reads of up to :data:`READ_SIZE`, exactly
up to the declared ``Content-Length``. The connection is then closed after the answer (the
parser still counts the body as unread, so it cannot serve a next request). Anything else goes
through Starlette's ``request.stream()`` as before: TLS (the bytes on the socket are encrypted),
a chunked body, a body already being read, another server than hgrun's protocol.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

EXTENSION = "hgrun.body_tap"  # the scope["extensions"] key of the connection's BodyTap
READ_SIZE = 1024 * 1024


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
        cycle.body.clear()
        remaining = 0 if not cycle.more_body else declared - self.parsed
        return buffered, sock, remaining


def body_stream(request: Request) -> AsyncIterator[bytes | memoryview]:
    """The request's body: off the socket in large reads when it can be taken over (a plain
    connection, a ``Content-Length``), else through ``request.stream()``. A piece is valid
    until the next is asked for (see :func:`_read`)."""
    tap = request.scope.get("extensions", {}).get(EXTENSION)
    length = request.headers.get("content-length", "")
    if (
        isinstance(tap, BodyTap)
        and "transfer-encoding" not in request.headers
        and length.isascii()
        and length.isdigit()
        and (taken := tap.take(int(length))) is not None
    ):
        return _read(*taken)
    return request.stream()


async def _read(
    buffered: bytes, sock: socket.socket, remaining: int
) -> AsyncIterator[bytes | memoryview]:
    """``buffered``, then up to ``remaining`` bytes off ``sock``; ends early if the client
    closes (the reader of the body decides whether what came is whole).

    The pieces read off the socket are views of one buffer, reused for the next read: a piece
    must be used (sent on, or copied) before the next is asked for. No allocation per piece:
    a fresh 1 MiB block each time would be a fresh mmap, each of its pages faulted in and
    zeroed before the copy into it (hgrun/server/memory.py keeps such blocks off the heap)."""
    loop = asyncio.get_running_loop()
    try:
        if buffered:
            yield buffered
        buffer = memoryview(bytearray(min(READ_SIZE, remaining)))
        while remaining > 0:
            try:
                n = await loop.sock_recv_into(sock, buffer[: min(len(buffer), remaining)])
            except (ConnectionError, OSError):
                return
            if not n:
                return
            remaining -= n
            yield buffer[:n]
    finally:
        sock.close()  # the duplicate only: uvicorn's transport closes the connection
