"""A run's node, watched: lost after a deadline, taken up again when it comes back in time.

What Swarm does when a node goes (``../shared/lab/README.md``): a worker whose dockerd dies is
seen down after ~1.5 s, its task stays "running" in the manager's view, and the container goes
on until that dockerd starts again (then it fails, 137); a cut link leaves the job running and
its end is reported once the link is back. So a node that is away is not a lost run yet: the run
is lost only when the node has been away ``lost_after`` seconds in a row (Swarm does not see it
ready, and its own engine does not answer either, so a manager that is itself restarting loses
nothing). Until then the attach waits: a stalled connection (a cut link) simply carries on; a
broken one is made again once the node answers, the output the container wrote meanwhile read
back from the node and what was already delivered skipped, stream by stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from hgrun.engine import AttachStream, ContainerState, ContainerStatus
from hgrun.errors import HgrunError, NodeLostError, NotFoundError

POLL = 2.0  # how often a quiet run's node is looked at
SETTLE = 2.0  # an attach that ended while the container still runs: its end may be on its way


class NodeWatch:
    """Whether one node is lost: away ``lost_after`` seconds in a row."""

    def __init__(
        self,
        name: str,
        ready: Callable[[], bool],
        answers: Callable[[], bool],
        lost_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``ready``: Swarm sees the node ready (False when the manager does not answer);
        ``answers``: the node's own engine answers (asked only when Swarm does not say ready).
        Both block."""
        self.name = name
        self._ready = ready
        self._answers = answers
        self.lost_after = lost_after
        self._clock = clock
        self.away_since: float | None = None
        self.why = "down"

    def fine(self) -> None:
        """The node just did something (output came): it is there."""
        self.away_since = None

    def check(self) -> None:
        """One look; raises :class:`NodeLostError` once the node has been away too long."""
        try:
            ready = self._ready()
            self.why = "down"
        except HgrunError:
            ready = False
            self.why = "out of the manager's sight"
        if ready or self._answers():
            self.away_since = None
            return
        now = self._clock()
        if self.away_since is None:
            self.away_since = now
        if now - self.away_since >= self.lost_after:
            raise NodeLostError(
                f"swarm node {self.name} went {self.why} during the run and was not back within"
                f" {self.lost_after:g} s; its output after that is lost"
            )


class WatchedAttach:
    """A task's attach stream through its node, kept across the node's absences (see the
    module docstring). ``inspect`` and ``logs`` read the task's container on the node;
    ``reattach`` attaches to it again (with its earlier output)."""

    def __init__(
        self,
        stream: AttachStream,
        watch: NodeWatch,
        *,
        inspect: Callable[[], ContainerState],
        reattach: Callable[[], Awaitable[AttachStream]],
        logs: Callable[[], AsyncIterator[tuple[int, bytes]]],
        clock: Callable[[], float] = time.monotonic,
        poll: float = POLL,
    ) -> None:
        self._stream = stream
        self._watch = watch
        self._inspect = inspect
        self._reattach = reattach
        self._logs = logs
        self._clock = clock
        self._poll = poll
        self._pending: asyncio.Future[tuple[int, bytes] | None] | None = None
        self._delivered = {1: 0, 2: 0}  # bytes of each stream handed out so far
        self._skip: dict[int, int] = {}  # bytes still to drop from a replay, by stream
        self._final = False  # the stream now is a replay of an ended container's log

    async def read(self) -> tuple[int, bytes] | None:
        while True:
            if self._pending is None:
                self._pending = asyncio.ensure_future(self._stream.read())
            done, _ = await asyncio.wait({self._pending}, timeout=self._poll)
            if not done:
                try:
                    await asyncio.to_thread(self._watch.check)
                except BaseException:
                    self._pending.cancel()
                    raise
                continue
            finished, self._pending = self._pending, None
            try:
                piece = finished.result()
            except (HgrunError, OSError):
                piece, clean = None, False
            else:
                clean = True
            if piece is not None:
                piece = self._unseen(piece)
                if piece is None:
                    continue
                self._watch.fine()
                return piece
            if self._final or not await self._resume(clean):
                return None

    def _unseen(self, piece: tuple[int, bytes]) -> tuple[int, bytes] | None:
        """Drop what a replay repeats of what was already handed out; count the rest."""
        stream, data = piece
        skip = self._skip.get(stream, 0)
        if skip:
            dropped = min(skip, len(data))
            self._skip[stream] = skip - dropped
            data = data[dropped:]
            if not data:
                return None
        self._delivered[stream] = self._delivered.get(stream, 0) + len(data)
        return stream, data

    async def _resume(self, clean: bool) -> bool:
        """The stream ended: True when it goes on (a new attach or the log's rest), False
        when the run's output is over. Raises :class:`NodeLostError` past the deadline."""
        settle = self._clock() + SETTLE
        away = not clean
        while True:
            try:
                state: ContainerState | None = await asyncio.to_thread(self._inspect)
            except NotFoundError:
                return False  # gone with its node's data: the task's status has the end
            except HgrunError:
                state = None
            if state is not None and state.status is ContainerStatus.EXITED:
                if not away:
                    return False  # a clean end: the attach carried every byte
                await self._replay(self._log_stream())
                self._final = True
                return True
            if state is not None and (away or self._clock() > settle):
                with contextlib.suppress(HgrunError):
                    await self._replay(await self._reattach())
                    self._watch.fine()
                    return True
            if state is None:
                away = True
                await asyncio.to_thread(self._watch.check)
            await asyncio.sleep(self._poll if state is None else 0.2)

    async def _replay(self, stream: AttachStream) -> None:
        """Read on from ``stream``, which starts again at the container's first byte."""
        old, self._stream = self._stream, stream
        self._skip = dict(self._delivered)
        with contextlib.suppress(Exception):
            await old.close()

    def _log_stream(self) -> AttachStream:
        return _LogStream(self._logs())

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)

    async def close_stdin(self) -> None:
        await self._stream.close_stdin()

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        await self._stream.close()


class _LogStream:
    """An ended container's log, as a read-only attach stream."""

    def __init__(self, pieces: AsyncIterator[tuple[int, bytes]]) -> None:
        self._pieces = pieces

    async def read(self) -> tuple[int, bytes] | None:
        try:
            return await anext(self._pieces)
        except StopAsyncIteration:
            return None

    async def write(self, data: bytes) -> None:
        return None

    async def close_stdin(self) -> None:
        return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._pieces.aclose()  # type: ignore[attr-defined]
