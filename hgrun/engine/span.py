"""Bytes moved from one socket to another without passing through the process: a file's
contents in an upload, from the client's connection to the engine's.

A :class:`SocketSpan` is ``size`` bytes still to arrive on a socket. An engine writing to a
socket of its own calls :meth:`SocketSpan.move_to`, which splices them (splice(2)) from the
source socket into a pipe and from the pipe into the destination: the kernel hands pages on,
the bytes are never copied into this process (a TCP connection's pages go to the pipe by
reference, and on to a Unix socket the same way since Linux 6.5's ``MSG_SPLICE_PAGES``). Where
splice is refused (another kind of file, an old kernel), they are read and sent instead, through
one reused buffer. Any other consumer reads them with :meth:`SocketSpan.chunks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import AsyncIterator, Callable

from hgrun.errors import HgrunError, InputError

PIPE_SIZE = 1024 * 1024  # asked of the kernel; it keeps 64 KiB when over fs.pipe-max-size
COPY_SIZE = 1024 * 1024
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


class SplicePipe:
    """A non-blocking pipe for splicing, reused by every span of one transfer."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.broken = False  # splice refused once: read and send from then on

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class SocketSpan:
    """``size`` bytes still to come on ``source`` (non-blocking), to pass on unread;
    ``ended`` makes the error raised when the source ends first."""

    def __init__(
        self,
        source: socket.socket,
        size: int,
        pipe: SplicePipe,
        ended: Callable[[], HgrunError] | None = None,
    ) -> None:
        self.source = source
        self.size = size
        self.pipe = pipe
        self.moved = 0  # bytes taken from the source so far
        self._ended_error = ended

    def __len__(self) -> int:
        return self.size

    def _ended(self) -> HgrunError:
        if self._ended_error is not None:
            return self._ended_error()
        return InputError(
            f"the request body ended {self.size - self.moved} bytes early",
            "the connection may have dropped: send it again",
        )

    async def move_to(self, dest: socket.socket) -> None:
        """Move all ``size`` bytes to ``dest`` (non-blocking). Raises the ``ended`` error (an
        :class:`InputError` by default) when the source ends first, and ``OSError`` from
        ``dest`` as it comes."""
        if not self.pipe.broken:
            try:
                await self._splice(dest)
                return
            except OSError as e:
                if e.errno not in _UNSUPPORTED or self.moved:
                    raise
                self.pipe.broken = True
        async for piece in self.chunks():
            await asyncio.get_running_loop().sock_sendall(dest, piece)

    async def _splice(self, dest: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        src, out = self.source.fileno(), dest.fileno()
        pipe = self.pipe
        held = 0  # bytes in the pipe
        while self.moved < self.size or held:
            progressed = False
            if self.moved < self.size:
                try:
                    n = os.splice(src, pipe.write_fd, self.size - self.moved, flags=_FLAGS)
                except BlockingIOError:
                    n = -1  # nothing to read yet, or the pipe is full
                except ConnectionError as e:
                    raise self._ended() from e
                if n == 0:
                    raise self._ended()
                if n > 0:
                    self.moved += n
                    held += n
                    progressed = True
            if held:
                try:
                    held -= os.splice(pipe.read_fd, out, held, flags=_FLAGS)
                    progressed = True
                except BlockingIOError:
                    pass
            if not progressed:
                # Bytes in the pipe: the destination is what holds things up; else the source.
                await _ready(loop, out, write=True) if held else await _ready(loop, src)

    async def chunks(self) -> AsyncIterator[memoryview]:
        """The bytes read off the source, as views of one reused buffer (use or copy each
        before asking for the next)."""
        loop = asyncio.get_running_loop()
        buffer = memoryview(bytearray(min(COPY_SIZE, max(self.size - self.moved, 1))))
        while self.moved < self.size:
            want = min(len(buffer), self.size - self.moved)
            try:
                n = await loop.sock_recv_into(self.source, buffer[:want])
            except ConnectionError as e:
                raise self._ended() from e
            if not n:
                raise self._ended()
            self.moved += n
            yield buffer[:n]


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool = False) -> None:
    """Until ``fd`` is readable (or writable)."""
    done = loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await done
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)
