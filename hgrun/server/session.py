"""A run in flight as the supervisor holds it: its phase, its output log and its viewers.

Output is counted in bytes from the run's first byte (stdout and stderr together, in the order
the engine gave them): a piece of output has an ``offset``, and a viewer has a position. The
bytes up to ``stored`` are in the store; the rest are held here until a flush writes them, so a
viewer always finds every byte either in the store or in memory. A viewer (:class:`Subscriber`)
is never waited for: the pump hands it a piece when its small buffer has room and otherwise
marks it behind; a viewer behind reads the bytes it missed from the store (then from memory)
and is live again once it has caught up. One that falls more than :data:`LAG_LIMIT` behind is
told so and let go (``hgrun attach N`` takes it up again from where it was).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Awaitable, Callable

from hgrun.engine import STDERR, AttachStream
from hgrun.lifecycle import Phase, Presence, Stop
from hgrun.models import Run, RunStatus

LIVE_BUFFER = 1024 * 1024  # bytes a viewer may hold unread before it is moved to the store
JOIN_BYTES = 1024 * 1024  # a viewer's queued pieces of one stream go out as one, up to this
LAG_LIMIT = 64 * 1024 * 1024  # bytes a viewer may be behind before it is let go
READ_BYTES = 1024 * 1024  # the most a viewer catches up by at once


@dataclasses.dataclass(frozen=True)
class Output:
    """A piece of a run's output: ``stream`` 1 stdout or 2 stderr, ``offset`` its first byte."""

    stream: int
    data: bytes
    offset: int = 0
    ts: float = 0.0
    marker: bool = False  # the store's note that older output was dropped: counts no byte

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclasses.dataclass(frozen=True)
class Finished:
    exit_code: int
    status: RunStatus
    message: str | None


@dataclasses.dataclass(frozen=True)
class Dropped:
    """The viewer fell too far behind and is let go; ``message`` says so."""

    message: str


# Reads a run's stored output: (run_id, hint, position, limit in bytes) -> (pieces covering
# ``position`` onwards, in order, about ``limit`` bytes; the hint for the next read). A hint is
# (store cursor, byte offset at that cursor), so a viewer catching up never rescans; (0, 0) is
# the start. The supervisor wires it to the store through a worker thread.
Hint = tuple[int, int]
StoredReader = Callable[[int, Hint, int, int], Awaitable[tuple[list[Output], Hint]]]


class Subscriber:
    """One attached client's view of a run: every byte after its position, once, in order,
    then the final status. Filled by the pump without waiting; read with :meth:`next`."""

    def __init__(self, session: RunSession, position: int, read_stored: StoredReader) -> None:
        self.session = session
        self.position = position
        self._read_stored = read_stored
        self._hint: Hint = (0, 0)
        self._live: collections.deque[Output] = collections.deque()
        self._live_bytes = 0
        self._backlog: collections.deque[Output] = collections.deque()
        self.behind = False
        self._wake = asyncio.Event()
        self._done = False
        self._gone: Dropped | None = None
        self.lag_limit = LAG_LIMIT

    def offer(self, piece: Output) -> None:
        """Called by the pump for each new piece: kept if there is room, else the viewer is
        marked behind (it reads the piece back from memory or the store when it gets there)."""
        if not self.behind and self._live_bytes + len(piece.data) <= LIVE_BUFFER:
            self._live.append(piece)
            self._live_bytes += len(piece.data)
        else:
            self.behind = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def let_go(self, message: str) -> None:
        """End this view with :class:`Dropped` (the run is followed by another server now)."""
        self._gone = Dropped(f"{message}; `hgrun attach {self.session.run.id}` to follow again")
        self._wake.set()

    async def next(self) -> Output | Finished | Dropped | None:
        """The next piece for this viewer, the outcome once every byte went out, or None after
        the outcome (or after being dropped)."""
        session = self.session
        while not self._done:
            if self._gone is not None:
                self._done = True
                return self._gone
            for queue in (self._backlog, self._live):
                piece = self._covering(queue)
                if piece is not None:
                    return self._take(piece)
            if self.position < session.total:
                if session.total - self.position > self.lag_limit:
                    return self._drop("you fell behind the output of")
                if not await self._catch_up():
                    return self._drop("the output you missed is no longer stored for")
                continue
            if self.behind and not self._live:
                self.behind = False  # caught up: every later piece comes live again
            if session.outcome is not None:
                self._done = True
                return session.outcome
            self._wake.clear()
            if self._live or self.position < session.total or session.outcome is not None:
                continue
            await self._wake.wait()
        return None

    def _covering(self, queue: collections.deque[Output]) -> Output | None:
        """Drop the pieces already sent; the first one holding the byte at ``position``."""
        while queue and queue[0].end <= self.position:
            self._forget(queue, queue.popleft())
        if queue and queue[0].offset <= self.position:
            piece = queue.popleft()
            self._forget(queue, piece)
            if queue and queue[0].stream == piece.stream and queue[0].offset == piece.end:
                piece = self._joined(queue, piece)
            return piece
        return None

    def _joined(self, queue: collections.deque[Output], piece: Output) -> Output:
        """``piece`` and the pieces after it on its stream, contiguous, as one (up to
        :data:`JOIN_BYTES`): a viewer that was busy gets what piled up in one message."""
        parts = [piece.data]
        end, size = piece.end, len(piece.data)
        while queue and size < JOIN_BYTES:
            after = queue[0]
            if after.stream != piece.stream or after.offset != end or after.marker:
                break
            queue.popleft()
            self._forget(queue, after)
            parts.append(after.data)
            end, size = after.end, size + len(after.data)
        if len(parts) == 1:
            return piece
        return Output(piece.stream, b"".join(parts), piece.offset, piece.ts)

    def _forget(self, queue: collections.deque[Output], piece: Output) -> None:
        if queue is self._live:
            self._live_bytes -= len(piece.data)

    def _take(self, piece: Output) -> Output:
        skip = self.position - piece.offset
        data = piece.data[skip:] if skip > 0 else piece.data
        self.position = piece.end
        return Output(piece.stream, data, piece.end - len(data), piece.ts)

    def _drop(self, why: str) -> Dropped:
        self._done = True
        run = self.session.run
        return Dropped(f"{why} {run.label}; `hgrun attach {run.id}` to follow again")

    async def _catch_up(self) -> bool:
        """Fill the backlog from ``position`` on, from memory or the store; False: gone."""
        session = self.session
        if self.position >= session.stored:
            # Not flushed yet: in memory, contiguous up to ``total``.
            self._backlog.extend(p for p in session.unstored if p.end > self.position)
            return bool(self._backlog) and self._backlog[0].offset <= self.position
        hint = self._hint if self._hint[1] <= self.position else (0, 0)
        pieces, self._hint = await self._read_stored(
            session.run.id, hint, self.position, READ_BYTES
        )
        pieces = [p for p in pieces if not p.marker]
        self._backlog.extend(pieces)
        return bool(pieces) and pieces[0].offset <= self.position


@dataclasses.dataclass
class RunSession:
    """A run this supervisor holds, from the moment its launch began to its outcome."""

    run: Run
    phase: Phase = Phase.CREATING
    container_id: str | None = None
    stream: AttachStream | None = None
    stop: Stop | None = None
    subscribers: list[Subscriber] = dataclasses.field(default_factory=list)
    # Set on anything a waiting launch cares about: uploads in, a client came, a stop.
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    finished: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    outcome: Finished | None = None
    uploads_done: bool = False
    uploading: bool = False
    clients_seen: bool = False
    size: tuple[int, int] | None = None
    waiting_since: float | None = None  # the instant the run began waiting for its uploads
    alone_since: float | None = None
    last_activity: float = 0.0
    task: asyncio.Task[None] | None = None
    # The output log: bytes [0, stored) are in the store, [stored, total) in ``unstored``.
    total: int = 0
    stored: int = 0
    unstored: list[Output] = dataclasses.field(default_factory=list)
    flush_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    flushing: asyncio.Task[None] | None = None  # the flush the pump started, if any
    stdin_log: bytearray = dataclasses.field(default_factory=bytearray)
    last_flush: float = 0.0
    # A client follows the run through another server (from the store): its output is stored
    # as it comes rather than every FLUSH_SECONDS (hgrun.server.remote).
    watched_elsewhere: bool = False
    # Its container came from the warm pool (hgrun.server.warm): running before the run was,
    # its command handed over on its stdin, where another's is started.
    warm: bool = False

    @property
    def presence(self) -> Presence:
        """What :func:`hgrun.lifecycle.due` needs to know besides the run record."""
        return Presence(
            waiting_since=None if (self.uploads_done or self.uploading) else self.waiting_since,
            alone_since=self.alone_since,
            last_activity=self.last_activity,
            stopping=self.stop is not None or self.phase is Phase.FINISHING,
        )

    @property
    def ready(self) -> bool:
        """Whether the run may start: its uploads are in and, attached, a client came."""
        return (not self.run.uploads or self.uploads_done) and (
            self.run.detached or self.clients_seen
        )

    def add(self, stream: int, data: bytes, ts: float) -> Output:
        """Append output to the log and offer it to every viewer; never waits."""
        piece = Output(stream, data, self.total, ts)
        self.total += len(data)
        self.unstored.append(piece)
        for subscriber in self.subscribers:
            subscriber.offer(piece)
        return piece

    @property
    def unstored_bytes(self) -> int:
        return self.total - self.stored

    def note(self, message: str, ts: float) -> None:
        """An hgrun message on the run's stderr (the end of a stopped run, say)."""
        self.add(STDERR, f"hgrun: {message}\n".encode(), ts)
