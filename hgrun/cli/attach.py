"""The attach client: moves bytes between the terminal and a run's attach WebSocket.

Framing and the session rules live in :mod:`hgrun.relay.protocol` (the channels) and
:mod:`hgrun.relay.websocket` (RFC 6455); this module only reads the terminal, sends frames,
receives frames and writes what they carry. It is blocking code on one socket and a selector, on
the standard library alone: asyncio and the ``websockets`` client cost more import time than a
whole ``docker run`` start, and a one-off's start is the CLI's first impression.

:func:`attach_blocking` is the CLI's; :func:`attach` runs it from inside an event loop (tests,
embedders). The handshake is :mod:`hgrun.cli.wsclient`'s and one connection's life
:mod:`hgrun.cli.attachsession`'s; this module keeps a session going across reconnections.
"""

from __future__ import annotations

import contextlib
import selectors
import time

from hgrun import errors
from hgrun.cli import trace
from hgrun.cli.attachsession import (
    MAX_MESSAGE,
    Cancelled,
    Session,
    State,
    Wakeup,
    status_line,
    write_all,
)
from hgrun.cli.terminal import Terminal
from hgrun.cli.wsclient import RECV_CHUNK, WebSocket, connect
from hgrun.relay import websocket as wsproto
from hgrun.relay.protocol import (
    SUBPROTOCOLS,
    ClientConnection,
)

RECONNECT_WINDOW = 60.0
"""How long a lost session is tried again: the server's default grace (``--grace``)."""
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the start of `hgrun run` milliseconds: for the checker only
    from collections.abc import Callable, Mapping
    from ssl import SSLContext  # ssl (OpenSSL) is imported for wss:// only
    from typing import Any


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
    state = State()
    ws = opened if opened is not None else connect(url, headers, what, ssl)
    trace.mark("attached")
    if wait is not None:
        wait_while(ws, wait)
    own_wake = wake is None
    wake = wake or Wakeup()
    previous: Any = None
    if tty and own_wake:
        import signal  # its enums cost a run without a TTY a millisecond for nothing

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
            import signal

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
    import signal

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
    state: State,
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
        return Session(ws, conn, terminal, what, run_id, state, wake).run(tty=tty)
    finally:
        ws.close()


def _reconnect(
    url: str,
    headers: Mapping[str, str],
    what: str,
    ssl: SSLContext | None,
    terminal: Terminal,
    state: State,
    lost: errors.UnreachableError,
    deadline: float,
    clock: Callable[[], float],
    wake: Wakeup,
) -> WebSocket:
    """Connect again, resuming after the output already shown; the lost error after the
    deadline. One line says it is happening."""
    why = lost.message.partition(": ")[2]
    notice = f"hgrun: {why or 'connection lost'}; reconnecting to {what}...\n".encode()
    if terminal.stdin_isatty:  # raw mode: on a line of its own, as the server's status lines
        notice = status_line(notice, state.at_line_start)
        state.at_line_start = True
    write_all(terminal.stderr, notice)
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
    import urllib.parse  # only to reconnect

    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "offset"]
    query.append(("offset", str(offset)))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
