"""A run's output on its way from the engine's stream to the store: the pump and its flushes.

A part of :class:`~hgrun.server.supervisor.Supervisor` of its own: the pump adds every piece to
the run's session (where viewers take it) and has the store keep up, in a worker thread while
it goes on, or, past :data:`HOLD_BYTES` held, before it reads more (the container then waits:
the output is never dropped on the way). A flush checks the run's lease first, so output is
never stored twice when another server took the run over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from hgrun.server.leases import LeaseLost, Leases
from hgrun.server.output import OutputLog
from hgrun.server.recovery import Recoverer
from hgrun.server.session import RunSession

FLUSH_BYTES = 1024 * 1024  # output held before a flush to the store starts (off the pump's path)
HOLD_BYTES = 4 * 1024 * 1024  # output held past which the pump waits for the store
FLUSH_SECONDS = 0.2


class OutputPump:
    """The supervisor's output side; the supervisor provides the attributes."""

    clock: Callable[[], float]
    leases: Leases
    output: OutputLog
    recoverer: Recoverer

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        raise NotImplementedError

    async def flush(self, session: RunSession) -> None:
        """Store the run's output held in memory, unless another server took the run over
        (then :class:`LeaseLost`: it stores that output itself, so nothing is stored twice)."""
        holder = await self.leases.taken(session.run.id)
        if holder is not None:
            raise LeaseLost(holder)
        await self.output.flush(session)

    async def _pump(self, session: RunSession) -> None:
        stream = session.stream
        if stream is None:
            return
        while (piece := await stream.read()) is not None:
            now = self.clock()
            session.last_activity = now
            session.add(piece[0], piece[1], now)
            held = session.unstored_bytes
            if held >= HOLD_BYTES:
                await self.flush(session)  # the store keeps up, or the container waits
            elif (held >= FLUSH_BYTES or session.watched_elsewhere) and (
                session.flushing is None or session.flushing.done()
            ):
                # In a worker thread while the pump goes on; a failure shows at the last flush.
                session.flushing = self.spawn(self._flush_held(session))
        await self.flush(session)

    async def _flush_held(self, session: RunSession) -> None:
        try:
            await self.flush(session)
            # Watched through another server: what came during that flush is stored at once too.
            while session.watched_elsewhere and session.unstored and session.outcome is None:
                await self.flush(session)
        except LeaseLost as e:
            await self.recoverer.let_go(session, e.holder)
