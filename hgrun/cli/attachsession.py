"""One attach connection's life: a selector on the socket, stdin and a wake-up pipe.

:class:`Session` moves bytes between the terminal and one open attach WebSocket until the run
exits (its code), the server lets go of the client or the connection is lost (the caller,
:mod:`hgrun.cli.attach`, reconnects). Blocking code on the standard library alone.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import stat

from hgrun import errors
from hgrun.cli import trace
from hgrun.cli.terminal import Terminal
from hgrun.cli.wsclient import RECV_CHUNK, WebSocket
from hgrun.relay import websocket as wsproto
from hgrun.relay.protocol import ClientConnection, Exited, StderrData, StdoutData

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the start of `hgrun run` milliseconds: for the checker only
    from collections.abc import Callable
    from typing import BinaryIO

READ_CHUNK = 64 * 1024
"""How much stdin is read at a time."""
SEND_HIGH = 256 * 1024
"""Stdin is not read while this much is still unsent (backpressure)."""
MAX_MESSAGE = 64 * 1024 * 1024
"""Largest message accepted from the server; output frames are far smaller."""
RECV_BUFFER = 1024 * 1024
"""The most read from the socket at once: what has arrived, up to this, in one read."""
WRITE_BATCH = 1024 * 1024
"""Output gathered from what has already arrived is written once it reaches this size (else
when the socket has nothing more to give): one write for many small messages."""
try:  # the most buffers one writev(2) takes (1024 on Linux; POSIX allows as few as 16)
    IOV_MAX = os.sysconf("SC_IOV_MAX")
except (AttributeError, OSError, ValueError):
    IOV_MAX = 16
NEWLINE = ord("\n")
TRY_AGAIN = 1013  # RFC 6455 close code the server lets a viewer go with (relay.server.Close)


class State:
    """What carries over from one connection of a session to the next (made as ``State()``:
    the class attributes are the starting values, each immutable, set on the instance as it
    changes; no dataclass, whose import costs `hgrun run` milliseconds)."""

    received: int = 0  # bytes of output written (stdout and stderr): the offset to resume from
    unsent: bytes = b""  # input read but not sent when the connection went
    stdin_eof: bool = False  # stdin reached its end
    stdin_closed: bool = False  # ... and the server was told
    reconnects: int = 0
    at_line_start: bool = True  # the terminal's cursor is at a line's start (after a newline)


class Wakeup:
    """A pipe that wakes a session from another thread or a signal handler: ``resize`` (the
    window changed: send its size) or ``cancel`` (stop: the session raises :class:`Cancelled`,
    the terminal restored)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def resize(self, *_: object) -> None:
        with contextlib.suppress(OSError):  # a full pipe already holds a wake-up
            os.write(self.write_fd, b"r")

    def cancel(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.write_fd, b"c")

    def drain(self) -> bytes:
        with contextlib.suppress(BlockingIOError):
            return os.read(self.read_fd, 4096)
        return b""

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class Cancelled(Exception):
    """The session was stopped through :meth:`Wakeup.cancel`."""


class Closed(Exception):
    """The connection ended: with the server's close frame, or without (None)."""

    def __init__(self, frame: wsproto.Closed | None) -> None:
        super().__init__(frame)
        self.frame = frame


class Session:
    """One connection's life: a selector on the socket, stdin and the wake-up pipe."""

    def __init__(
        self,
        ws: WebSocket,
        conn: ClientConnection,
        terminal: Terminal,
        what: str,
        run_id: str | int | None,
        state: State,
        wake: Wakeup,
    ) -> None:
        self.ws = ws
        self.sock = ws.sock
        self.conn = conn
        self.terminal = terminal
        self.what = what
        self.run_id = run_id
        self.state = state
        self.wake = wake
        self.tty = False
        self.reader = wsproto.FrameReader(MAX_MESSAGE)
        self.outgoing = bytearray()
        self.close_sent = False
        self.retry = 0  # a TLS write to retry with the same length (OpenSSL's rule)
        # Output not yet written: pieces for one stream, in order (see _output).
        self.out: list[bytes | memoryview] = []
        self.out_stream: BinaryIO | None = None
        self.out_size = 0

    def run(self, *, tty: bool) -> int:
        """Pump both ways until the exit status arrives; return the exit code."""
        self.tty = tty
        state = self.state
        try:
            if tty:
                width, height = self.terminal.size()
                if state.reconnects:
                    # Taken up again: a size change makes a full-screen program redraw.
                    self._send(self.conn.resize(width, max(1, height - 1)))
                self._send(self.conn.resize(width, height))
            if state.unsent:
                self._send_stdin(state.unsent)
            try:
                code = self._received(self.ws.rest)
            finally:
                self._write_out()
            if code is not None:
                return code
            return self._loop()
        except Closed as e:
            if e.frame is not None and e.frame.code == TRY_AGAIN:
                # Let go on purpose (it fell behind): following again is the user's call.
                raise errors.HgrunError(
                    f"the server let go of {self.what}: {e.frame.reason}",
                    hint="The run goes on; `hgrun attach` shows its latest output.",
                ) from None
            raise self._lost(e.frame) from None

    def _loop(self) -> int:
        state = self.state
        read_stdin, stdin_fd, pollable = _stdin_reader(self.terminal.stdin)
        if read_stdin is None:
            state.stdin_eof = True
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self.wake.read_fd, selectors.EVENT_READ)
            stdin_registered = False
            while True:
                if not state.stdin_eof and read_stdin is not None and not pollable:
                    # A file or device never makes a reader wait: read it when the socket
                    # has room (epoll refuses regular files).
                    if len(self.outgoing) < SEND_HIGH:
                        self._stdin_chunk(read_stdin())
                want_stdin = pollable and not state.stdin_eof and len(self.outgoing) < SEND_HIGH
                if want_stdin != stdin_registered:
                    if want_stdin:
                        selector.register(stdin_fd, selectors.EVENT_READ)
                    else:
                        selector.unregister(stdin_fd)
                    stdin_registered = want_stdin
                if state.stdin_eof and not state.stdin_closed:
                    if (frame := self.conn.close_stdin()) is not None:
                        self._send(frame)
                    state.stdin_closed = True
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outgoing else 0)
                selector.modify(self.sock, events)
                busy = (  # more of a file to read as soon as the socket takes it
                    not state.stdin_eof
                    and read_stdin is not None
                    and not pollable
                    and len(self.outgoing) < SEND_HIGH
                )
                for key, mask in selector.select(0 if busy else None):
                    if key.fd == self.wake.read_fd:
                        woke = self.wake.drain()
                        if b"c" in woke:
                            raise Cancelled
                        if self.tty and b"r" in woke:
                            self._send(self.conn.resize(*self.terminal.size()))
                    elif key.fileobj is self.sock:
                        if mask & selectors.EVENT_WRITE:
                            self._flush()
                        if mask & selectors.EVENT_READ:
                            code = self._read_socket()
                            if code is not None:
                                return code
                    else:
                        assert read_stdin is not None
                        self._stdin_chunk(read_stdin())
                if self.outgoing:
                    self._flush()

    def _stdin_chunk(self, chunk: bytes | None) -> None:
        if chunk is None:
            return
        if not chunk:
            self.state.stdin_eof = True
            return
        self._send_stdin(chunk)

    def _send_stdin(self, chunk: bytes) -> None:
        self.state.unsent = chunk
        for message in self.conn.stdin(chunk):
            self.outgoing += wsproto.frame(wsproto.BINARY, message)
        self._flush()

    def _send(self, message: bytes, opcode: int = wsproto.BINARY) -> None:
        self.outgoing += wsproto.frame(opcode, message)
        self._flush()

    def _flush(self) -> None:
        """Write what the socket takes now; the rest waits for it to be writable."""
        while self.outgoing:
            size = self.retry or min(len(self.outgoing), RECV_CHUNK)
            try:
                sent = self.sock.send(self.outgoing[:size])
            except self.ws.again:
                self.retry = size
                return
            except OSError:
                raise Closed(None) from None
            self.retry = 0
            del self.outgoing[:sent]
        self.state.unsent = b""

    def _read_socket(self) -> int | None:
        """Read what has arrived (all of it: TLS may hold decrypted bytes the selector cannot
        see); the exit code once the status arrives. The output it carried is written before
        this returns or raises, whatever happens: nothing counted as received stays unshown."""
        try:
            while True:
                try:
                    # Fresh bytes each time: the messages in them are handed on as views of
                    # them, down to the write to the terminal, never copied.
                    data = self.sock.recv(RECV_BUFFER)
                except self.ws.again:
                    return None
                except OSError:
                    raise Closed(None) from None
                if not data:
                    raise Closed(None)
                code = self._received(data)
                if code is not None:
                    return code
        finally:
            self._write_out()

    def _received(self, data: bytes) -> int | None:
        for event in self.reader.feed(data) if data else ():
            if isinstance(event, wsproto.Ping):
                self._send(event.data, wsproto.PONG)
            elif isinstance(event, wsproto.Closed):
                with contextlib.suppress(Closed):
                    if not self.close_sent:
                        self.close_sent = True
                        self._send(wsproto.close_payload(1000), wsproto.CLOSE)
                raise Closed(event)
            else:
                code = self._message(event.data)
                if code is not None:
                    self._goodbye()
                    return code
        return None

    def _message(self, message: bytes | memoryview) -> int | None:
        stdout, stderr = self.terminal.stdout, self.terminal.stderr
        state = self.state
        for event in self.conn.receive(message):
            if isinstance(event, StdoutData):
                if not state.received:
                    trace.mark("first_byte")
                self._output(stdout, event.data)
                if event.data:
                    state.at_line_start = event.data[-1] == NEWLINE
                state.received += len(event.data)
            elif isinstance(event, StderrData):
                data = bytes(event.data)
                if self.tty:
                    data = status_line(data, state.at_line_start)
                    state.at_line_start = True
                self._output(stderr, data)
                state.received += len(event.data)  # the server's bytes, as sent
            elif isinstance(event, Exited):
                trace.mark("exit_reported")
                return event.exit_code
        return None

    def _output(self, stream: BinaryIO, data: bytes | memoryview) -> None:
        """Gather ``data`` for ``stream``: written with what came before it for the same
        stream (in order across the two), by :meth:`_write_out` once the socket has nothing
        more for now, or at :data:`WRITE_BATCH` bytes. Never waits for more to arrive."""
        if self.out and stream is not self.out_stream:
            self._write_out()
        self.out.append(data)
        self.out_stream = stream
        self.out_size += len(data)
        if self.out_size >= WRITE_BATCH:
            self._write_out()

    def _write_out(self) -> None:
        if not self.out or self.out_stream is None:
            return
        parts = self.out
        self.out = []
        self.out_size = 0
        write_parts(self.out_stream, parts)

    def _goodbye(self) -> None:
        """Close the WebSocket politely (section 7.1.2), without waiting for the answer: the
        exit status is all this session needed."""
        with contextlib.suppress(Closed, OSError):
            self.close_sent = True
            self.outgoing += wsproto.frame(wsproto.CLOSE, wsproto.close_payload(1000))
            self._flush()

    def _lost(self, frame: wsproto.Closed | None) -> errors.UnreachableError:
        reason = frame.reason if frame is not None else ""
        message = f"lost the connection to the server before {self.what} finished"
        if reason:
            message += f": {reason}"
        again = f"`hgrun attach {self.run_id}`" if self.run_id is not None else "`hgrun attach`"
        return errors.UnreachableError(
            message,
            hint=f"The run goes on for a grace period; {again} takes it up again.",
        )


def _stdin_reader(
    stdin: BinaryIO | None,
) -> tuple[Callable[[], bytes | None] | None, int, bool]:
    """How to read stdin: a function returning the next chunk (b"" at EOF, None when nothing
    is there now; no function: at EOF already), its descriptor, and whether the selector can
    wait on it.

    Pipes, sockets and ttys are read when the selector says they are readable, one chunk per
    turn, and not while the socket's send buffer is full (backpressure). Regular files,
    /dev/null and other devices never make a reader wait, and epoll refuses them (EPERM), so
    they are read directly. A missing or closed stdin is at EOF at once. A file object without
    a descriptor (BytesIO) is read directly and must not block.
    """
    if stdin is None or stdin.closed:
        return None, -1, False
    try:
        fd = stdin.fileno()
    except (OSError, ValueError):
        return (lambda: stdin.read(READ_CHUNK)), -1, False
    try:
        mode = os.fstat(fd).st_mode
    except OSError:  # fd 0 closed underneath us
        return None, -1, False

    def read() -> bytes | None:
        try:
            return os.read(fd, READ_CHUNK)
        except BlockingIOError:  # a non-blocking stdin woke us for nothing
            return None
        except OSError:  # EIO: the pty's other side hung up
            return b""

    pollable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)
    return read, fd, pollable


def status_line(data: bytes, at_line_start: bool) -> bytes:
    """hgrun's own status text (``hgrun: ... timed out``) for a terminal in raw mode.

    With a TTY the container's stderr arrives merged into stdout, so the stderr channel carries
    only the server's status lines. In raw mode ``\n`` does not return the carriage: each line
    ends with ``\r\n``, and starts on a fresh line when the command left the cursor mid-line.
    """
    text = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return text if at_line_start else b"\r\n" + text


def write_parts(stream: BinaryIO, parts: list[bytes | memoryview]) -> None:
    """Write ``parts`` in order, all of them, and flush: with one writev(2) to the stream's
    descriptor when it has one (nothing copied on the way), else joined."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: BytesIO
        fd = -1
    if fd < 0 or not hasattr(os, "writev"):
        write_all(stream, parts[0] if len(parts) == 1 else b"".join(parts))
        return
    stream.flush()  # what went through the stream object before goes first
    views = [memoryview(part).cast("B") for part in parts]
    first = 0
    while first < len(views):
        try:
            written = os.writev(fd, views[first : first + IOV_MAX])
        except BlockingIOError:  # a non-blocking descriptor that is full: wait for room
            select.select([], [fd], [])
            continue
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]


def write_all(stream: BinaryIO, data: bytes | memoryview) -> None:
    """Write all of ``data`` and flush, so output shows as it arrives.

    Unbuffered streams may write less than asked (a signal during a write to a pipe), so loop.
    """
    view = memoryview(data)
    while view:
        written = stream.write(view)
        if written is None:  # a non-blocking stream that is full: nothing was written
            continue
        view = view[written:]
    stream.flush()
