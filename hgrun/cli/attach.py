"""The attach client: moves bytes between the terminal and a run's attach WebSocket.

Framing and the session rules live in :mod:`hgrun.relay.protocol`; this module only reads the
terminal, sends frames, receives frames and writes what they carry. It is the one place where
``websockets`` exceptions are translated into hgrun errors on the CLI side.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import stat
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from ssl import SSLCertVerificationError, SSLContext
from typing import Any, BinaryIO

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.typing import Subprotocol

from hgrun import errors
from hgrun.cli import trace
from hgrun.cli.terminal import Terminal
from hgrun.relay.protocol import (
    SUBPROTOCOLS,
    ClientConnection,
    Exited,
    StderrData,
    StdoutData,
)

READ_CHUNK = 64 * 1024
"""How much stdin is read at a time."""
MAX_MESSAGE = 64 * 1024 * 1024
"""Largest message accepted from the server; output frames are far smaller."""
OPEN_TIMEOUT = 15.0
RECONNECT_WINDOW = 60.0
"""How long a lost session is tried again: the server's default grace (``--grace``)."""
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)
TRY_AGAIN = 1013  # RFC 6455 close code the server lets a viewer go with (relay.server.Close)


async def attach(
    url: str,
    headers: dict[str, str],
    terminal: Terminal,
    *,
    tty: bool,
    run_id: str | int | None = None,
    ssl: SSLContext | None = None,
    reconnect: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Attach the terminal to the run behind ``url`` until it exits; return its exit code.

    With ``tty`` the stdin terminal is put in raw mode for the session (and always restored),
    the window size is sent at once and on every SIGWINCH, and keys (Ctrl-C included) go through
    as bytes. Without it stdin is streamed as binary until EOF, then closed (v5), and stdout and
    stderr stay apart.

    A connection lost before the exit status (the network, a restart of the server) is taken up
    again by itself for ``reconnect`` seconds (0: never), with a one-line notice: the client
    sends how many bytes of output it has (``?offset=``), so nothing is lost or printed twice,
    then the window size (twice, so a full-screen program redraws), and input goes on where it
    was. A viewer the server lets go (it fell too far behind) is not taken up again.

    Raises :class:`~hgrun.errors.AuthError`, :class:`~hgrun.errors.ForbiddenError` or
    :class:`~hgrun.errors.NotFoundError` when the server refuses the handshake,
    :class:`~hgrun.errors.UnreachableError` when it cannot be reached or the connection is lost
    for longer than ``reconnect``, :class:`~hgrun.relay.protocol.ProtocolError` when the server
    breaks the protocol. The run goes on server-side for a grace period after the client goes
    away (including on KeyboardInterrupt, which is left to propagate).
    """
    what = f"run {run_id}" if run_id is not None else "the run"
    state = _State()
    ws = await _connect(url, headers, what, ssl)
    trace.mark("attached")
    with terminal.raw() if tty else contextlib.nullcontext():
        while True:
            try:
                async with ws:
                    if ws.subprotocol not in SUBPROTOCOLS:
                        raise errors.HgrunError(
                            f"the server did not agree on an attach protocol for {what}",
                            hint=f"hgrun needs a server that speaks {' or '.join(SUBPROTOCOLS)}.",
                        )
                    conn = ClientConnection(ws.subprotocol)
                    session = _Session(ws, conn, terminal, what, run_id, state)
                    return await session.run(tty=tty)
            except errors.UnreachableError as lost:
                if reconnect <= 0:
                    raise
                deadline = clock() + reconnect
                ws = await _reconnect(
                    url, headers, what, ssl, terminal, state, lost, deadline, clock
                )


@dataclasses.dataclass
class _State:
    """What carries over from one connection of a session to the next."""

    received: int = 0  # bytes of output written (stdout and stderr): the offset to resume from
    unsent: bytes = b""  # input read but not sent when the connection went
    stdin_eof: bool = False  # stdin reached its end
    stdin_closed: bool = False  # ... and the server was told
    reconnects: int = 0


async def _reconnect(
    url: str,
    headers: dict[str, str],
    what: str,
    ssl: SSLContext | None,
    terminal: Terminal,
    state: _State,
    lost: errors.UnreachableError,
    deadline: float,
    clock: Callable[[], float],
) -> WebSocket:
    """Connect again, resuming after the output already shown; the lost error after the
    deadline. One line says it is happening."""
    newline = "\r\n" if terminal.stdin_isatty else "\n"
    why = lost.message.partition(": ")[2]
    notice = f"hgrun: {why or 'connection lost'}; reconnecting to {what}...{newline}"
    _write_all(terminal.stderr, notice.encode())
    resume = _with_offset(url, state.received)
    for attempt in range(10**9):
        try:
            ws = await _connect(resume, headers, what, ssl)
        except errors.UnreachableError:
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            if clock() + delay > deadline:
                raise lost from None
            await asyncio.sleep(delay)
            continue
        state.reconnects += 1
        return ws
    raise lost


def _with_offset(url: str, offset: int) -> str:
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "offset"]
    query.append(("offset", str(offset)))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


async def _connect(
    url: str, headers: dict[str, str], what: str, ssl: SSLContext | None = None
) -> WebSocket:
    """``ssl``: how to verify a wss:// server (None: the default context, for wss)."""
    tls: dict[str, Any] = {"ssl": ssl} if ssl is not None else {}  # websockets: ws:// takes none
    try:
        return await connect(
            url,
            **tls,
            subprotocols=[Subprotocol(p) for p in SUBPROTOCOLS],
            additional_headers=headers,
            max_size=MAX_MESSAGE,
            compression=None,
            open_timeout=OPEN_TIMEOUT,
        )
    except InvalidStatus as e:
        raise _refused(e, what) from e
    except InvalidURI as e:
        raise errors.InputError(f"bad attach URL {url!r}: {e}") from e
    except SSLCertVerificationError as e:
        reason = e.verify_message or e.reason or "verification failed"
        raise errors.UnreachableError(
            f"cannot attach to {what}: the server's certificate is not trusted ({reason})",
            hint="Pass its CA: hgrun login --ca-cert CA.pem (or set HGRUN_CA_CERT).",
        ) from e
    except (OSError, TimeoutError, InvalidHandshake) as e:
        raise errors.UnreachableError(
            f"cannot attach to {what}: {e or type(e).__name__}",
            hint="Check that the hgrun server is running and its URL is right.",
        ) from e


def _refused(e: InvalidStatus, what: str) -> errors.HgrunError:
    """Turn a refused handshake into an hgrun error, using the server's JSON error if any."""
    status = e.response.status_code
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        body = json.loads(e.response.body or b"")
        if isinstance(body, dict) and body.get("error"):
            err = errors.from_json(body, status)
            if status in _REFUSALS and not isinstance(err, _REFUSALS[status][0]):
                cls = _REFUSALS[status][0]
                err = cls(err.message, err.hint)
            return err
    if status in _REFUSALS:
        cls, message, hint = _REFUSALS[status]
        return cls(message.format(what=what), hint)
    return errors.HgrunError(
        f"the server refused to attach to {what} (HTTP {status})",
        hint="Try again; if it persists, look at the server's log.",
    )


_REFUSALS: dict[int, tuple[type[errors.HgrunError], str, str]] = {
    401: (
        errors.AuthError,
        "the server did not accept your token when attaching to {what}",
        "Check that your API token is set and still valid.",
    ),
    403: (
        errors.ForbiddenError,
        "your token may not attach to {what}",
        "Attaching needs a token with the run scope in this workspace (X-Workspace-Id).",
    ),
    404: (
        errors.NotFoundError,
        "{what} was not found in this workspace",
        "`hgrun ps` lists the runs still going; a finished run cannot be attached.",
    ),
}


class _Session:
    def __init__(
        self,
        ws: WebSocket,
        conn: ClientConnection,
        terminal: Terminal,
        what: str,
        run_id: str | int | None,
        state: _State,
    ) -> None:
        self.ws = ws
        self.conn = conn
        self.terminal = terminal
        self.what = what
        self.run_id = run_id
        self.tty = False
        self.state = state

    async def run(self, *, tty: bool) -> int:
        """Pump both ways until the exit status arrives; return the exit code."""
        self.tty = tty
        loop = asyncio.get_running_loop()
        output = asyncio.create_task(self._pump_output())
        helpers = [asyncio.create_task(self._pump_input())]
        resized = asyncio.Event()
        if tty:
            # Send the window size right away, then on every SIGWINCH.
            resized.set()
            loop.add_signal_handler(signal.SIGWINCH, resized.set)
            helpers.append(asyncio.create_task(self._pump_resizes(resized)))
        pending: set[asyncio.Future[Any]] = {output, *helpers}
        try:
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if output in done:
                    return output.result()
                for task in done:
                    task.result()  # an input failure ends the session
        finally:
            if tty:
                loop.remove_signal_handler(signal.SIGWINCH)
            for task in (output, *helpers):
                task.cancel()
            await asyncio.gather(output, *helpers, return_exceptions=True)

    async def _pump_output(self) -> int:
        stdout, stderr = self.terminal.stdout, self.terminal.stderr
        at_line_start = True
        try:
            async for message in self.ws:
                for event in self.conn.receive(message):
                    if isinstance(event, StdoutData):
                        if not self.state.received:
                            trace.mark("first_byte")
                        _write_all(stdout, event.data)
                        if event.data:
                            at_line_start = event.data.endswith(b"\n")
                        self.state.received += len(event.data)
                    elif isinstance(event, StderrData):
                        data = event.data
                        if self.tty:
                            data = status_line(data, at_line_start)
                            at_line_start = True
                        _write_all(stderr, data)
                        self.state.received += len(event.data)  # the server's bytes, as sent
                    elif isinstance(event, Exited):
                        trace.mark("exit_reported")
                        return event.exit_code
        except ConnectionClosed as e:
            if e.rcvd is not None and e.rcvd.code == TRY_AGAIN:
                # Let go on purpose (it fell behind): following again is the user's call.
                raise errors.HgrunError(
                    f"the server let go of {self.what}: {e.rcvd.reason}",
                    hint="The run goes on; `hgrun attach` shows its latest output.",
                ) from e
            raise self._lost(e) from e
        raise self._lost(None)

    def _lost(self, e: ConnectionClosed | None) -> errors.UnreachableError:
        reason = e.rcvd.reason if e is not None and e.rcvd is not None else ""
        if not reason and self.ws.close_reason:
            reason = self.ws.close_reason
        message = f"lost the connection to the server before {self.what} finished"
        if reason:
            message += f": {reason}"
        again = f"`hgrun attach {self.run_id}`" if self.run_id is not None else "`hgrun attach`"
        return errors.UnreachableError(
            message,
            hint=f"The run goes on for a grace period; {again} takes it up again.",
        )

    async def _pump_input(self) -> None:
        state = self.state
        try:
            if state.unsent:
                for frame in self.conn.stdin(state.unsent):
                    await self.ws.send(frame)
                state.unsent = b""
            if not state.stdin_eof:
                read = _stdin_reader(self.terminal.stdin)
                while chunk := await read():
                    state.unsent = chunk
                    for frame in self.conn.stdin(chunk):
                        await self.ws.send(frame)  # waits while the write buffer is full
                    state.unsent = b""
                state.stdin_eof = True
            if not state.stdin_closed:
                if (frame_or_none := self.conn.close_stdin()) is not None:
                    await self.ws.send(frame_or_none)
                state.stdin_closed = True
        except ConnectionClosed:
            return  # the output pump reports how the session ended

    async def _pump_resizes(self, resized: asyncio.Event) -> None:
        try:
            if self.state.reconnects:
                # Taken up again: a size change makes a full-screen program redraw its screen.
                width, height = self.terminal.size()
                await self.ws.send(self.conn.resize(width, max(1, height - 1)))
            while True:
                await resized.wait()
                resized.clear()
                await self.ws.send(self.conn.resize(*self.terminal.size()))
        except ConnectionClosed:
            return


def _stdin_reader(stdin: BinaryIO | None) -> Callable[[], Awaitable[bytes]]:
    """An async function returning the next chunk of stdin, b"" at EOF.

    Pipes, sockets and ttys are read when the event loop says they are readable, so waiting on
    them never blocks the loop and can be cancelled; one chunk is read per call, so a slow
    WebSocket slows the reading (backpressure). Regular files, /dev/null and other devices never
    make a reader wait, and epoll refuses them (EPERM), so they are read directly. A missing or
    closed stdin is at EOF at once. A file object without a descriptor (BytesIO) is read directly
    and must not block.
    """
    if stdin is None or stdin.closed:
        return _eof
    try:
        fd = stdin.fileno()
    except (OSError, ValueError):
        return _read_object(stdin)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:  # fd 0 closed underneath us
        return _eof
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd):
        return _read_when_ready(fd)

    async def read_now() -> bytes:
        return os.read(fd, READ_CHUNK)

    return read_now


async def _eof() -> bytes:
    return b""


def _read_object(stdin: BinaryIO) -> Callable[[], Awaitable[bytes]]:
    async def read() -> bytes:
        return stdin.read(READ_CHUNK)

    return read


def _read_when_ready(fd: int) -> Callable[[], Awaitable[bytes]]:
    async def read() -> bytes:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, on_readable)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
        try:
            return os.read(fd, READ_CHUNK)
        except OSError:  # EIO: the pty's other side hung up
            return b""

    return read


def status_line(data: bytes, at_line_start: bool) -> bytes:
    """hgrun's own status text (``hgrun: ... timed out``) for a terminal in raw mode.

    With a TTY the container's stderr arrives merged into stdout, so the stderr channel carries
    only the server's status lines. In raw mode ``\n`` does not return the carriage: each line
    ends with ``\r\n``, and starts on a fresh line when the command left the cursor mid-line.
    """
    text = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return text if at_line_start else b"\r\n" + text


def _write_all(stream: BinaryIO, data: bytes) -> None:
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
