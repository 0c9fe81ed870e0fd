"""The engine's side of a hijacked attach connection, as an asyncio protocol.

The transport receives straight into one buffer that lives as long as the connection
(``recv_into``: no bytes object made, no copy and no allocation per read, where a
``StreamReader`` makes a fresh block for each read, copies it into its buffer and out again);
the reader takes whatever arrived since it last took, at once, and never waits for more than
is there. With a TTY the engine writes a few KB at a time, so this is paid once per few KB.

The buffer starts small (:data:`FIRST`) and doubles while output comes faster than it is taken,
up to :data:`BUFFER`; it goes back to its first size when a take finds little. A thousand runs
in flight that print little hold 16 KB each, not 1 MB (bench/scripts.py: the server at 1.1 GB
with 1,000 runs in flight when each connection had its 1 MB from the start).

A stream that keeps coming (its next bytes arrive within :data:`HOT` of the last take) is left
:data:`GATHER` to fill before it is taken, with reading paused meanwhile: with a TTY the engine
writes 4 KB at a time, each read is a turn of the event loop and each take costs the pump, the
store and every viewer's socket a message of their own, which on two cores starves the engine
and the command of CPU. 100 MB on a TTY came in 16,500 reads; gathered so, in 1,300 (the
server's CPU for it 1.4 -> 0.8 s). Output that comes now and then (a shell's echo, a log line)
is taken the moment it arrives.

Reading pauses while the buffer is full at its largest (the engine, then the container, waits:
backpressure) and resumes once it is taken; writing waits while the transport asks
(:meth:`Pipe.drain`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

BUFFER = 1024 * 1024  # bytes received at most before the reader takes them
FIRST = 16 * 1024  # the buffer's first size, and its size again after a take of less
MAX_HEAD = 64 * 1024  # the engine's answer head, at most
HOT = 0.005  # seconds: bytes arriving this soon after the last take come from a steady stream
GATHER = 0.003  # seconds a steady stream is left to fill before it is taken
GATHER_BYTES = 256 * 1024  # taken at once from this much on


class Pipe(asyncio.BufferedProtocol):
    """One hijacked connection: the answer's head, then bytes as they come (:meth:`take`)."""

    def __init__(self, size: int = BUFFER, first: int = FIRST) -> None:
        self._size = size
        self._first = min(first, size)
        self._buffer = bytearray(self._first)
        self._filled = 0
        self._eof = False
        self._transport: asyncio.Transport | None = None
        self._over_ssl = False
        self._arrived: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._read_paused = False
        self._write_paused = False
        self._taken_at = 0.0  # monotonic: the last take
        self._arrived_at = 0.0  # monotonic: the first bytes since the last take
        self.lost: Exception | None = None

    # -- the transport's side ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - a stream connection
        self._transport = transport
        self._over_ssl = transport.get_extra_info("sslcontext") is not None

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._filled == len(self._buffer):
            # Output comes faster than it is taken: twice the room. Or full at its largest,
            # reading paused, and TLS may still hand over what it decrypted already.
            if len(self._buffer) < self._size:
                self._resize(min(2 * len(self._buffer), self._size))
            else:
                self._resize(len(self._buffer) + max(sizehint, 65536))
        return memoryview(self._buffer)[self._filled :]

    def _resize(self, size: int) -> None:
        """A new buffer of ``size`` holding what arrived (a new object: a view of the old one
        that is still alive, the transport's last, stays valid and cannot block it)."""
        buffer = bytearray(size)
        buffer[: self._filled] = self._buffer[: self._filled]
        self._buffer = buffer

    def buffer_updated(self, nbytes: int) -> None:
        if not self._filled:
            self._arrived_at = time.monotonic()
        self._filled += nbytes
        if self._filled >= self._size and not self._read_paused and self._transport:
            self._transport.pause_reading()
            self._read_paused = True
        _wake(self._arrived)

    def eof_received(self) -> bool:
        self._eof = True
        _wake(self._arrived)
        # Keep the connection open to write (the container's stdin), as StreamReaderProtocol
        # does; over TLS a half-close is not possible (asyncio warns on True).
        return not self._over_ssl

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self.lost = exc
        _wake(self._arrived)
        _wake(self._drained)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._drained)

    # -- the reader's side ---------------------------------------------------------------------

    async def wait(self) -> bool:
        """Until something arrived: True; False at the end with nothing left. A steady stream
        is given :data:`GATHER` more to fill first."""
        while not self._filled and not self._eof:
            self._arrived = asyncio.get_running_loop().create_future()
            try:
                await self._arrived
            finally:
                self._arrived = None
        if (
            not self._eof
            and self._filled < GATHER_BYTES
            and self._arrived_at - self._taken_at < HOT
        ):
            await self._gather()
        return self._filled > 0

    async def _gather(self) -> None:
        """Leave a steady stream :data:`GATHER` to fill, reading paused: the kernel holds the
        engine's writes meanwhile, and they are then read at once, into room made for them."""
        transport = self._transport
        if transport is None or self._read_paused or self._over_ssl:
            # Paused for backpressure already, or over TLS (an engine on tcp://, whose reads
            # asyncio decrypts through its own buffer: the pause is not measured there), the
            # stream is only left to fill, as before.
            await asyncio.sleep(GATHER)
            return
        room = min(self._filled + GATHER_BYTES, self._size)
        if len(self._buffer) < room:
            self._resize(room)
        transport.pause_reading()
        try:
            await asyncio.sleep(GATHER)
        finally:
            transport.resume_reading()
        # Two turns of the loop: in the first the transport reads what the socket holds (the
        # loop polls its sockets before it runs what is ready); without it, it is taken next.
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def take(self, consume: Callable[[memoryview], T]) -> T:
        """``consume`` what arrived, given as a view valid only during the call (it copies
        what it keeps); the buffer is then empty again."""
        taken = self._filled
        self._taken_at = time.monotonic()
        try:
            with memoryview(self._buffer) as view:
                return consume(view[:taken])
        finally:
            self._filled = 0
            if taken < self._first and len(self._buffer) > self._first:
                self._resize(self._first)  # the output slowed down: back to the first size
            elif len(self._buffer) > self._size:
                self._resize(self._size)  # back to size after a TLS overrun
            if self._read_paused and self._transport is not None:
                self._read_paused = False
                self._transport.resume_reading()

    async def head(self) -> bytes:
        """The answer's head, up to its blank line; what came after it stays to be taken.
        Raises :class:`asyncio.IncompleteReadError` when the connection ends first, and
        :class:`asyncio.LimitOverrunError` for a head over :data:`MAX_HEAD`."""
        while True:
            end = self._buffer.find(b"\r\n\r\n", 0, self._filled)
            if end >= 0:
                end += 4
                head = bytes(self._buffer[:end])
                rest = self._filled - end
                self._buffer[:rest] = self._buffer[end : self._filled]
                self._filled = rest
                return head
            if self._filled > MAX_HEAD:
                raise asyncio.LimitOverrunError("the engine's answer head is too long", 0)
            if self._eof:
                raise asyncio.IncompleteReadError(bytes(self._buffer[: self._filled]), None)
            self._arrived = asyncio.get_running_loop().create_future()
            try:
                await self._arrived
            finally:
                self._arrived = None

    async def drain(self) -> None:
        """Until the transport takes writes again; ConnectionResetError once it is gone."""
        while self._write_paused and self.lost is None and not self._eof_closed():
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await self._drained
            finally:
                self._drained = None
        if self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("the connection to the engine is closed")

    def _eof_closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
