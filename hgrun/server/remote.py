"""Attach through a server that does not hold the run (several servers on one store).

Any server answers ``/v1/runs/N/attach``. When the run is in flight and another server holds it
(its ``run:N`` lease: that one pumps the output into the store, applies the deadlines and records
the outcome), the server the client reached serves it as :class:`RemoteRun`:

- **Output comes from the store**, by byte offset, as the holder stores it. The store is the one
  ordered record of a run's output; a second attach of our own to the container would give the
  same bytes but from a point no one can place exactly (Docker's attach says nothing of how much
  the container wrote before it; its ``logs=1`` replay and the live stream are joined without a
  lock in dockerd, and Docker's log is capped), so joining it to the stored part could
  double or lose bytes. Following the store cannot: the client's ``?offset`` counts the same
  bytes, and a takeover (the store's copy replaced by the engine's replay, same offsets) is
  followed through. To keep it live, the holder stores a run's output as it comes while a remote
  client watches (``RunSession.watched_elsewhere``) instead of every 0.2-0.5 s, and this side's
  own attach to the container is used as a doorbell: a piece there means one is on its way to
  the store, which is then read every :data:`HOT_POLL` seconds for a moment.
- **Input goes to the container through the engine**: stdin on an attach of our own (single host:
  the same dockerd; swarm: the task's node endpoint, as the holder does), a resize through the
  engine, EOF by closing that attach's stdin (a piped run's ``StdinOnce``; the shim's EOF frame on
  a swarm). A piped run's stdin attach is this server's, not the client's (:class:`PipedInputs`):
  made when a client first sends input, it outlives the client, since closing it is the command's
  EOF; only the client's EOF or the container's end closes it, so a client that drops and comes
  back finds its command's stdin open, as through the holder. Input waits until the store says
  the run is running, as on the holder.
- **The exit code is the store's outcome**, read once the run is final (the holder stores all of
  the output before the outcome, so what follows is read to the end first).
- **The holder counts the client**: the attachment keeps a row in the store
  (:mod:`hgrun.store.viewers`) that the holder reads every watchdog beat
  (:func:`count_remote_viewers`): the run starts when its first client came through another
  server, is not "alone" while one is there, and its input keeps it from idling out.

When the holder dies, its runs are taken up by another server as always; this attachment does
not depend on it (its input goes to the container, its output comes from whoever stores it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from hgrun.engine import AttachStream
from hgrun.errors import HgrunError
from hgrun.models import Run, RunStatus
from hgrun.relay import server as relay
from hgrun.server.session import READ_BYTES

if TYPE_CHECKING:
    from hgrun.server.supervisor import Supervisor

log = logging.getLogger("hgrun.remote")

HOT_POLL = 0.02  # seconds between reads of the store while output is coming
HOT_FOR = 1.0  # how long after a sign of output (or input sent) the store is read that often
IDLE_POLL = 0.5  # seconds between reads otherwise (and between reads of the run's status)
VIEWER_TTL = 8.0  # a client's row in the store counts this long after its last renewal
VIEWER_RENEW = 2.0


class RemoteRun:
    """A client attached to a run in flight that this server does not hold (module docstring):
    its output from the store, its input to the container, its exit code from the store."""

    def __init__(
        self,
        supervisor: Supervisor,
        run: Run,
        offset: int | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.run_id = run.id
        self._sup = supervisor
        self._tty = run.tty
        self._first = offset or 0
        self._position = self._first
        self._hint = (0, 0)
        self._clock = clock
        self._viewer = secrets.token_hex(8)
        self._active = clock()  # the client's last input, for the holder's idle deadline
        self._wake = asyncio.Event()
        self._hot_until = 0.0
        self._running = asyncio.Event()  # set once the run runs (input may go) or ended
        self._container: str | None = None
        self._size: tuple[int, int] | None = None
        self._watch: AttachStream | None = None  # the doorbell (with stdin on a TTY)
        self._inputs = inputs_of(supervisor)  # a piped run's stdin, kept past this client
        self._tasks: set[asyncio.Task[None]] = set()
        self._ended = False  # the container's output ended (seen on our own attach)
        self._closed = False

    # -- output, then the exit code ----------------------------------------------------------

    async def events(self) -> AsyncIterator[relay.Output | relay.Exit | relay.Close]:
        await asyncio.to_thread(self._see)  # counted by the holder from now on
        self._spawn(self._keep_seen())
        checked = 0.0
        while True:
            self._wake.clear()
            sent = False
            async for event in self._stored():
                sent = True
                yield event
            if sent:
                self._heat()
            if time.monotonic() - checked >= IDLE_POLL or self._ended:
                checked = time.monotonic()
                self._ended = False
                run = await asyncio.to_thread(self._sup.store.run, self.run_id)
                if run.status.finished:
                    self._running.set()
                    # The holder stored every byte before the outcome: read them to the end.
                    async for event in self._stored(to_the_end=True):
                        yield event
                    code = run.exit_code if run.exit_code is not None else 1
                    yield relay.Exit(code, relay.exit_reason(run.status), run.error)
                    return
                if run.status is RunStatus.RUNNING and run.container_id and not self._container:
                    self._container = run.container_id
                    self._spawn(self._connect())
            if sent:
                continue
            hot = time.monotonic() < self._hot_until
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), HOT_POLL if hot else IDLE_POLL)

    async def _stored(self, *, to_the_end: bool = False) -> AsyncIterator[relay.Output]:
        """The stored output after the client's position: one read (``READ_BYTES``), or all."""
        while True:
            pieces, self._hint = await self._sup.output.read(
                self.run_id, self._hint, self._position, READ_BYTES
            )
            for piece in pieces:
                if piece.marker:  # older output was dropped by the store's cap: say so
                    if self._first == 0 and self._position == 0:
                        yield relay.Output(piece.stream, piece.data)
                    continue
                if piece.end <= self._position:
                    continue
                data = piece.data[max(0, self._position - piece.offset) :]
                self._position = piece.end
                yield relay.Output(piece.stream, data)
            if not pieces or not to_the_end:
                return

    def _heat(self) -> None:
        """Output is on its way: read the store often for a moment."""
        self._hot_until = time.monotonic() + HOT_FOR
        self._wake.set()

    # -- the client's presence, for the holder -------------------------------------------------

    def _see(self) -> None:
        self._sup.store.see_viewer(
            self.run_id, self._viewer, self._clock() + VIEWER_TTL, self._active
        )

    async def _keep_seen(self) -> None:
        while True:
            await asyncio.sleep(VIEWER_RENEW)
            try:
                await asyncio.to_thread(self._see)
            except HgrunError as e:
                log.warning("run %s: cannot record its client: %s", self.run_id, e.message)

    # -- input to the container ----------------------------------------------------------------

    async def _connect(self) -> None:
        """Attach to the running container (a TTY's stdin with it), apply the size the client
        sent meanwhile, and ring on every piece of output."""
        container = self._container
        if container is None:
            return
        try:
            self._watch = await self._sup.engine.attach(
                container, tty=self._tty, stdin=self._tty, logs=False, running=True
            )
        except HgrunError as e:
            log.info("run %s: no attach of its own (%s): output from the store", self.run_id, e)
        self._running.set()
        if self._size is not None and self._tty:
            await self._resize(*self._size)
        if self._watch is not None:
            await self._ring(self._watch)

    async def _ring(self, stream: AttachStream) -> None:
        """Read (and drop) our own attach's output: each piece says the store is about to
        have more. Read at once, so dockerd never holds the container's output for us."""
        with contextlib.suppress(HgrunError, OSError):
            while await stream.read() is not None:
                self._heat()
        if not self._closed:
            self._ended = True
            self._heat()

    async def _stdin_stream(self) -> AttachStream | None:
        """Where the client's input goes: the TTY's attach, or the piped run's stdin attach of
        this server (:class:`PipedInputs`); None when there is none (the run ended)."""
        await self._running.wait()
        if self._tty or self._container is None or self._closed:
            return self._watch
        return await self._inputs.stream(self._sup, self.run_id, self._container)

    async def stdin(self, data: bytes) -> None:
        self._active = self._clock()
        stream = await self._stdin_stream()
        if stream is not None:
            with contextlib.suppress(HgrunError):
                await stream.write(data)
            self._heat()

    async def close_stdin(self) -> None:
        """EOF for a piped run; never for a TTY (its input ends with Ctrl-D), as on the holder."""
        if self._tty:
            return
        stream = await self._stdin_stream()
        if stream is not None:
            await stream.close_stdin()

    async def resize(self, width: int, height: int) -> None:
        self._size = (width, height)
        if self._tty and self._running.is_set():
            await self._resize(width, height)

    async def _resize(self, width: int, height: int) -> None:
        if self._container is not None:
            with contextlib.suppress(HgrunError):
                await asyncio.to_thread(self._sup.engine.resize, self._container, width, height)

    # -- the end -------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def detach(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        self._sup.spawn(self._close())

    async def _close(self) -> None:
        if self._watch is not None:
            with contextlib.suppress(Exception):
                await self._watch.close()
        try:
            await asyncio.to_thread(self._sup.store.drop_viewer, self.run_id, self._viewer)
        except HgrunError as e:  # its row expires by itself
            log.warning("run %s: cannot drop its client: %s", self.run_id, e.message)


class PipedInputs:
    """The stdin attaches this server opened to piped runs it does not hold, one per run,
    shared by its clients of that run and kept past them: closing one is the command's EOF
    (``StdinOnce``), so it ends only with the client's own EOF or the container's end (its
    output, read and dropped here, ends then). A client that drops and attaches again, here or
    through another server, finds the command's stdin as it left it, as through the holder."""

    def __init__(self) -> None:
        self._streams: dict[int, AttachStream] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def __len__(self) -> int:
        """The runs with a stdin attach open here."""
        return len(self._streams)

    async def stream(
        self, supervisor: Supervisor, run_id: int, container: str
    ) -> AttachStream | None:
        lock = self._locks.setdefault(run_id, asyncio.Lock())
        async with lock:
            stream = self._streams.get(run_id)
            if stream is None:
                try:
                    stream = await supervisor.engine.attach(
                        container, tty=False, stdin=True, logs=False, running=True
                    )
                except HgrunError as e:
                    log.info("run %s: cannot attach its stdin: %s", run_id, e)
                    return None
                self._streams[run_id] = stream
                supervisor.spawn(self._drain(run_id, stream))
            return stream

    async def _drain(self, run_id: int, stream: AttachStream) -> None:
        """Read (and drop) the attach's output until the container ends it, then let go."""
        try:
            with contextlib.suppress(HgrunError, OSError):
                while await stream.read() is not None:
                    pass
        finally:
            if self._streams.get(run_id) is stream:
                del self._streams[run_id]
                self._locks.pop(run_id, None)
            with contextlib.suppress(Exception):
                await stream.close()


_INPUTS: weakref.WeakKeyDictionary[Supervisor, PipedInputs] = weakref.WeakKeyDictionary()


def inputs_of(supervisor: Supervisor) -> PipedInputs:
    """The piped stdin attaches of the server ``supervisor`` belongs to."""
    inputs = _INPUTS.get(supervisor)
    if inputs is None:
        inputs = _INPUTS[supervisor] = PipedInputs()
    return inputs


async def count_remote_viewers(supervisor: Supervisor, now: float) -> None:
    """The holder's side, each watchdog beat: the clients attached to its runs through other
    servers (rows in the store) count as clients here. A run waiting for its first client
    starts; a run with one is not alone; their input is activity (the idle deadline); while a run
    has one, its output is stored as it comes (``watched_elsewhere``)."""
    sessions = [s for s in supervisor.sessions.values() if not s.run.detached]
    if not sessions:
        return
    active: dict[int, float] = {}
    for viewer in await asyncio.to_thread(supervisor.store.remote_viewers):
        active[viewer.run_id] = max(active.get(viewer.run_id, 0.0), viewer.active)
    for session in sessions:
        seen = active.get(session.run.id)
        was = session.watched_elsewhere
        session.watched_elsewhere = seen is not None
        if seen is not None:
            session.alone_since = None
            session.last_activity = max(session.last_activity, seen)
            if not session.clients_seen:
                session.clients_seen = True
                session.changed.set()
        elif was and not session.subscribers and session.alone_since is None:
            session.alone_since = now  # its last client (through another server) left
