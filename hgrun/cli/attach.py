"""The attach client: moves bytes between the terminal and a run's attach WebSocket.

Framing and the session rules live in :mod:`hgrun.relay.protocol` (the channels) and
:mod:`hgrun.relay.websocket` (RFC 6455); this module only reads the terminal, sends frames,
receives frames and writes what they carry. It is blocking code on one socket and a selector, on
the standard library alone: asyncio and the ``websockets`` client cost more import time than a
whole ``docker run`` start, and a one-off's start is the CLI's first impression.

:func:`attach_blocking` is the CLI's; :func:`attach` runs it from inside an event loop (tests,
embedders).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import signal
import socket
import stat
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from hgrun import errors
from hgrun.cli import trace
from hgrun.cli.terminal import Terminal
from hgrun.relay import websocket as wsproto
from hgrun.relay.protocol import (
    SUBPROTOCOLS,
    ClientConnection,
    Exited,
    StderrData,
    StdoutData,
)

READ_CHUNK = 64 * 1024
"""How much stdin is read at a time."""
RECV_CHUNK = 256 * 1024
"""How much is read from the socket at a time."""
SEND_HIGH = 256 * 1024
"""Stdin is not read while this much is still unsent (backpressure)."""
MAX_MESSAGE = 64 * 1024 * 1024
"""Largest message accepted from the server; output frames are far smaller."""
OPEN_TIMEOUT = 15.0
RECONNECT_WINDOW = 60.0
"""How long a lost session is tried again: the server's default grace (``--grace``)."""
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)

if TYPE_CHECKING:
    from ssl import SSLContext  # ssl (OpenSSL) is imported for wss:// only
TRY_AGAIN = 1013  # RFC 6455 close code the server lets a viewer go with (relay.server.Close)


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


class WebSocket:
    """One open WebSocket: a non-blocking socket, what was read past the handshake, the agreed
    subprotocol and the answer's headers (names lower-case). ``again``: the errors that mean
    "not now" on this socket (TLS adds its own)."""

    def __init__(
        self,
        sock: socket.socket,
        subprotocol: str | None,
        headers: Mapping[str, str],
        rest: bytes,
        again: tuple[type[Exception], ...] = (BlockingIOError,),
    ) -> None:
        self.sock = sock
        self.subprotocol = subprotocol
        self.headers = headers
        self.rest = rest
        self.again = again

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def connect(
    url: str, headers: Mapping[str, str], what: str, ssl: SSLContext | None = None
) -> WebSocket:
    """Open the WebSocket at ``url`` (``ws://`` or ``wss://``, verified with ``ssl`` or the
    default context), offering the attach subprotocols.

    Raises :class:`~hgrun.errors.AuthError`, :class:`~hgrun.errors.ForbiddenError`,
    :class:`~hgrun.errors.NotFoundError` (or the server's own JSON error) when it refuses the
    upgrade, :class:`~hgrun.errors.UnreachableError` when it cannot be reached.
    """
    opened = _handshake(url, headers, what, ssl)
    if isinstance(opened, WebSocket):
        return opened
    raise _refused(*opened, what)


def create_and_connect(
    url: str, headers: Mapping[str, str], what: str, ssl: SSLContext | None = None
) -> WebSocket | None:
    """:func:`connect` to an endpoint that creates the run it attaches to; None when the
    server refuses without an hgrun error, as one without that endpoint does (the caller then
    creates and attaches in two steps)."""
    opened = _handshake(url, headers, what, ssl)
    if isinstance(opened, WebSocket):
        return opened
    if _json_error(opened[1]) is None:
        return None
    raise _refused(*opened, what)


def _handshake(
    url: str, headers: Mapping[str, str], what: str, ssl: SSLContext | None
) -> WebSocket | tuple[wsproto.Answer, bytes]:
    """The open WebSocket, or the refusal's answer and body (the socket closed)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise errors.InputError(f"bad attach URL {url!r}: not a ws:// or wss:// URL")
    secure = parts.scheme == "wss"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError as e:
        raise errors.InputError(f"bad attach URL {url!r}: {e}") from e
    host = parts.hostname
    default_port = port == (443 if secure else 80)
    host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = wsproto.new_key()
    request = wsproto.handshake_request(host_header, target, key, SUBPROTOCOLS, headers)
    sock: socket.socket | None = None
    again: tuple[type[Exception], ...] = (BlockingIOError,)
    verify_error: tuple[type[Exception], ...] = ()  # a certificate the context refuses
    try:
        sock = socket.create_connection((host, port), timeout=OPEN_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if secure:
            import ssl as ssl_module

            again = (BlockingIOError, ssl_module.SSLWantReadError, ssl_module.SSLWantWriteError)
            verify_error = (ssl_module.SSLCertVerificationError,)
            if ssl is None:
                ssl = ssl_module.create_default_context()
            sock = ssl.wrap_socket(sock, server_hostname=host)
        sock.sendall(request)
        received = b""
        while (answer := wsproto.parse_answer(received)) is None:
            chunk = sock.recv(RECV_CHUNK)
            if not chunk:
                raise ConnectionResetError("the server closed the connection in the handshake")
            received += chunk
        if answer.status != 101:
            body = _body(sock, answer)
            sock.close()
            return answer, body
        subprotocol = wsproto.check_handshake(answer, key, SUBPROTOCOLS)
        sock.settimeout(None)
        sock.setblocking(False)
        return WebSocket(sock, subprotocol, answer.headers, answer.rest, again)
    except errors.HgrunError:
        if sock is not None:
            sock.close()
        raise
    except OSError as e:  # TimeoutError and ssl.SSLError too
        if sock is not None:
            sock.close()
        if isinstance(e, verify_error):
            reason = getattr(e, "verify_message", None) or getattr(e, "reason", None)
            raise errors.UnreachableError(
                f"cannot attach to {what}: the server's certificate is not trusted"
                f" ({reason or 'verification failed'})",
                hint="Pass its CA: hgrun login --ca-cert CA.pem (or set HGRUN_CA_CERT).",
            ) from e
        raise _unreachable(what, e) from e


def _unreachable(what: str, e: BaseException) -> errors.UnreachableError:
    return errors.UnreachableError(
        f"cannot attach to {what}: {e or type(e).__name__}",
        hint="Check that the hgrun server is running and its URL is right.",
    )


def _body(sock: socket.socket, answer: wsproto.Answer) -> bytes:
    """The refusal's body: Content-Length of it, or up to the connection's end (capped)."""
    body = answer.rest
    length = answer.headers.get("content-length", "")
    want = int(length) if length.isdigit() else 64 * 1024
    with contextlib.suppress(OSError):
        while len(body) < min(want, 64 * 1024):
            chunk = sock.recv(RECV_CHUNK)
            if not chunk:
                break
            body += chunk
    return body


def _json_error(body: bytes) -> dict[str, Any] | None:
    """The hgrun JSON error in a refusal's body, if it is one."""
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        parsed = json.loads(body or b"")
        if isinstance(parsed, dict) and parsed.get("error"):
            return parsed
    return None


def _refused(answer: wsproto.Answer, body: bytes, what: str) -> errors.HgrunError:
    """Turn a refused handshake into an hgrun error, using the server's JSON error if any."""
    status = answer.status
    parsed = _json_error(body)
    if parsed is not None:
        err = errors.from_json(parsed, status)
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


def attach_blocking(
    url: str,
    headers: Mapping[str, str],
    terminal: Terminal,
    *,
    tty: bool,
    run_id: str | int | None = None,
    ssl: SSLContext | None = None,
    reconnect: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    wake: Wakeup | None = None,
    opened: WebSocket | None = None,
    wait: Callable[[], bool] | None = None,
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

    ``opened``: a WebSocket already open on the run (the create's own handshake); ``url`` is
    then only where to take it up again. ``wake``: who wakes the session; without one, SIGWINCH
    is caught here (which only the main thread may do). ``wait``: the run waits for a slot of
    the server (``--max-runs``): once connected, and before the terminal goes raw, the session
    is held open while ``wait()`` says so (:func:`wait_while`).

    Raises :class:`~hgrun.errors.AuthError`, :class:`~hgrun.errors.ForbiddenError` or
    :class:`~hgrun.errors.NotFoundError` when the server refuses the handshake,
    :class:`~hgrun.errors.UnreachableError` when it cannot be reached or the connection is lost
    for longer than ``reconnect``, :class:`~hgrun.relay.protocol.ProtocolError` when the server
    breaks the protocol, :class:`Cancelled` after ``wake.cancel()``. The run goes on
    server-side for a grace period after the client goes away (including on
    KeyboardInterrupt, which is left to propagate).
    """
    what = f"run {run_id}" if run_id is not None else "the run"
    state = _State()
    ws = opened if opened is not None else connect(url, headers, what, ssl)
    trace.mark("attached")
    if wait is not None:
        wait_while(ws, wait)
    own_wake = wake is None
    wake = wake or Wakeup()
    previous: Any = None
    if tty and own_wake:
        previous = signal.signal(signal.SIGWINCH, wake.resize)
    try:
        with terminal.raw() if tty else contextlib.nullcontext():
            while True:
                try:
                    return _one_connection(ws, terminal, what, run_id, state, wake, tty)
                except errors.UnreachableError as lost:
                    if reconnect <= 0:
                        raise
                    deadline = clock() + reconnect
                    ws = _reconnect(
                        url, headers, what, ssl, terminal, state, lost, deadline, clock, wake
                    )
    finally:
        if tty and own_wake:
            signal.signal(signal.SIGWINCH, previous if previous is not None else signal.SIG_DFL)
        if own_wake:
            wake.close()


async def attach(
    url: str,
    headers: Mapping[str, str],
    terminal: Terminal,
    *,
    tty: bool,
    run_id: str | int | None = None,
    ssl: SSLContext | None = None,
    reconnect: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """:func:`attach_blocking` from inside an event loop: it runs in a worker thread, the loop
    takes SIGWINCH and hands it on, and cancelling the task stops the session (terminal
    restored) before :class:`asyncio.CancelledError` propagates."""
    import asyncio
    import functools

    loop = asyncio.get_running_loop()
    wake = Wakeup()
    if tty:
        loop.add_signal_handler(signal.SIGWINCH, wake.resize)
    call = functools.partial(
        attach_blocking,
        url,
        headers,
        terminal,
        tty=tty,
        run_id=run_id,
        ssl=ssl,
        reconnect=reconnect,
        clock=clock,
        wake=wake,
    )
    future = loop.run_in_executor(None, call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        wake.cancel()
        await asyncio.wait([future])
        raise
    finally:
        if tty:
            loop.remove_signal_handler(signal.SIGWINCH)
        if future.done():
            wake.close()


def wait_while(ws: WebSocket, waiting: Callable[[], bool], interval: float = 1.0) -> None:
    """Hold the open WebSocket while ``waiting()`` (asked every ``interval`` seconds) says the
    run still waits for a slot of the server: the server's pings are answered (uvicorn closes
    a connection whose pongs stop), and anything else it sends (the run's first output, or its
    exit when it is stopped while it waits) ends the wait. Every byte read is kept in
    ``ws.rest`` for the session, which reads it first (a ping answered here is answered again
    there: an unsolicited pong is ignored, RFC 6455 section 5.5.3). The terminal is left as it
    is: keys wait in its own buffer, Ctrl-C is a signal."""
    reader = wsproto.FrameReader(MAX_MESSAGE)
    kept = bytearray(ws.rest)

    def only_pings(data: bytes) -> bool:
        for event in reader.feed(data) if data else ():
            if not isinstance(event, wsproto.Ping):
                return False
            with contextlib.suppress(OSError):
                ws.sock.send(wsproto.frame(wsproto.PONG, event.data))
        return True

    try:
        if not only_pings(bytes(ws.rest)):
            return
        with selectors.DefaultSelector() as selector:
            selector.register(ws.sock, selectors.EVENT_READ)
            due = time.monotonic()
            while True:
                if time.monotonic() >= due:
                    if not waiting():
                        return
                    due = time.monotonic() + interval
                if not selector.select(max(0.0, due - time.monotonic())):
                    continue
                try:
                    data = ws.sock.recv(RECV_CHUNK)
                except ws.again:
                    continue
                except OSError:
                    return  # the session finds the connection lost, and takes it up again
                kept += data
                if not data or not only_pings(data):
                    return
    finally:
        ws.rest = bytes(kept)


def _one_connection(
    ws: WebSocket,
    terminal: Terminal,
    what: str,
    run_id: str | int | None,
    state: _State,
    wake: Wakeup,
    tty: bool,
) -> int:
    try:
        if ws.subprotocol not in SUBPROTOCOLS:
            raise errors.HgrunError(
                f"the server did not agree on an attach protocol for {what}",
                hint=f"hgrun needs a server that speaks {' or '.join(SUBPROTOCOLS)}.",
            )
        conn = ClientConnection(ws.subprotocol)
        return _Session(ws, conn, terminal, what, run_id, state, wake).run(tty=tty)
    finally:
        ws.close()


@dataclasses.dataclass
class _State:
    """What carries over from one connection of a session to the next."""

    received: int = 0  # bytes of output written (stdout and stderr): the offset to resume from
    unsent: bytes = b""  # input read but not sent when the connection went
    stdin_eof: bool = False  # stdin reached its end
    stdin_closed: bool = False  # ... and the server was told
    reconnects: int = 0


def _reconnect(
    url: str,
    headers: Mapping[str, str],
    what: str,
    ssl: SSLContext | None,
    terminal: Terminal,
    state: _State,
    lost: errors.UnreachableError,
    deadline: float,
    clock: Callable[[], float],
    wake: Wakeup,
) -> WebSocket:
    """Connect again, resuming after the output already shown; the lost error after the
    deadline. One line says it is happening."""
    newline = "\r\n" if terminal.stdin_isatty else "\n"
    why = lost.message.partition(": ")[2]
    notice = f"hgrun: {why or 'connection lost'}; reconnecting to {what}...{newline}"
    _write_all(terminal.stderr, notice.encode())
    resume = _with_offset(url, state.received)
    attempt = 0
    while True:
        try:
            ws = connect(resume, headers, what, ssl)
        except errors.UnreachableError:
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            attempt += 1
            if clock() + delay > deadline:
                raise lost from None
            _sleep(delay, wake)
            continue
        state.reconnects += 1
        return ws


def _sleep(seconds: float, wake: Wakeup) -> None:
    """Sleep, or stop early on a cancel (a resize meanwhile is let go: the size is sent on
    reconnecting anyway)."""
    with selectors.DefaultSelector() as selector:
        selector.register(wake.read_fd, selectors.EVENT_READ)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if selector.select(left) and b"c" in wake.drain():
                raise Cancelled


def _with_offset(url: str, offset: int) -> str:
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "offset"]
    query.append(("offset", str(offset)))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class _Closed(Exception):
    """The connection ended: with the server's close frame, or without (None)."""

    def __init__(self, frame: wsproto.Closed | None) -> None:
        super().__init__(frame)
        self.frame = frame


class _Session:
    """One connection's life: a selector on the socket, stdin and the wake-up pipe."""

    def __init__(
        self,
        ws: WebSocket,
        conn: ClientConnection,
        terminal: Terminal,
        what: str,
        run_id: str | int | None,
        state: _State,
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
        self.at_line_start = True
        self.close_sent = False
        self.retry = 0  # a TLS write to retry with the same length (OpenSSL's rule)

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
            code = self._received(self.ws.rest)
            if code is not None:
                return code
            return self._loop()
        except _Closed as e:
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
                raise _Closed(None) from None
            self.retry = 0
            del self.outgoing[:sent]
        self.state.unsent = b""

    def _read_socket(self) -> int | None:
        """Read what has arrived (all of it: TLS may hold decrypted bytes the selector cannot
        see); the exit code once the status arrives."""
        while True:
            try:
                data = self.sock.recv(RECV_CHUNK)
            except self.ws.again:
                return None
            except OSError:
                raise _Closed(None) from None
            if not data:
                raise _Closed(None)
            code = self._received(data)
            if code is not None:
                return code

    def _received(self, data: bytes) -> int | None:
        for event in self.reader.feed(data) if data else ():
            if isinstance(event, wsproto.Ping):
                self._send(event.data, wsproto.PONG)
            elif isinstance(event, wsproto.Closed):
                with contextlib.suppress(_Closed):
                    if not self.close_sent:
                        self.close_sent = True
                        self._send(wsproto.close_payload(1000), wsproto.CLOSE)
                raise _Closed(event)
            else:
                code = self._message(event.data)
                if code is not None:
                    self._goodbye()
                    return code
        return None

    def _message(self, message: bytes) -> int | None:
        stdout, stderr = self.terminal.stdout, self.terminal.stderr
        state = self.state
        for event in self.conn.receive(message):
            if isinstance(event, StdoutData):
                if not state.received:
                    trace.mark("first_byte")
                _write_all(stdout, event.data)
                if event.data:
                    self.at_line_start = event.data.endswith(b"\n")
                state.received += len(event.data)
            elif isinstance(event, StderrData):
                data = event.data
                if self.tty:
                    data = status_line(data, self.at_line_start)
                    self.at_line_start = True
                _write_all(stderr, data)
                state.received += len(event.data)  # the server's bytes, as sent
            elif isinstance(event, Exited):
                trace.mark("exit_reported")
                return event.exit_code
        return None

    def _goodbye(self) -> None:
        """Close the WebSocket politely (section 7.1.2), without waiting for the answer: the
        exit status is all this session needed."""
        with contextlib.suppress(_Closed, OSError):
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
