"""What a run's attached clients do to it: watch its output, type, close stdin, resize.

A part of :class:`~hgrun.server.supervisor.Supervisor` of its own (the API's attach calls these
methods on it): a client is a :class:`~hgrun.server.session.Subscriber` of the run's session, and
its input waits for the run to be running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from hgrun.engine import Engine
from hgrun.errors import EngineError
from hgrun.lifecycle import Phase
from hgrun.models import Run
from hgrun.server.output import OutputLog
from hgrun.server.session import LAG_LIMIT, RunSession, Subscriber

AUDIT_CAP = 1024 * 1024  # input and output kept in an audit record, each (the tail past it)


class AttachedClients:
    """The supervisor's side of attached clients; the supervisor provides the attributes."""

    engine: Engine
    clock: Callable[[], float]
    output: OutputLog
    audit: Callable[[str, Run, dict[str, Any]], None] | None

    def _session(self, run_id: int) -> RunSession:
        raise NotImplementedError

    def subscribe(self, run_id: int, offset: int | None = None) -> tuple[RunSession, Subscriber]:
        """A viewer of the run from byte ``offset`` of its output (what the client already has):
        the output after it, then live output, with no gap and nothing twice. Without an
        offset (a new ``hgrun attach``): all of it, or its last ``LAG_LIMIT / 2`` bytes."""
        session = self._session(run_id)
        if offset is None:
            offset = max(0, session.total - LAG_LIMIT // 2)
        subscriber = Subscriber(session, offset, self.output.read)
        session.subscribers.append(subscriber)
        session.alone_since = None
        session.clients_seen = True
        session.last_activity = self.clock()
        session.changed.set()
        return session, subscriber

    def unsubscribe(self, session: RunSession, subscriber: Subscriber) -> None:
        with contextlib.suppress(ValueError):
            session.subscribers.remove(subscriber)
        if not session.subscribers and not session.run.detached:
            session.alone_since = self.clock()

    async def stdin(self, session: RunSession, data: bytes) -> None:
        session.last_activity = self.clock()
        if self.audit is not None:
            session.stdin_log += data
            if len(session.stdin_log) > 2 * AUDIT_CAP:
                del session.stdin_log[:-AUDIT_CAP]
        await self._started(session)
        if session.stream is not None and session.phase is Phase.RUNNING:
            with contextlib.suppress(EngineError):
                await session.stream.write(data)

    async def close_stdin(self, session: RunSession) -> None:
        """EOF for a piped run. Never for a TTY: its input ends with Ctrl-D, and Docker ends
        the output of an attach whose stdin closes (the pump would stop early)."""
        await self._started(session)
        if session.stream is not None and session.phase is Phase.RUNNING and not session.run.tty:
            await session.stream.close_stdin()

    async def resize(self, session: RunSession, width: int, height: int) -> None:
        session.size = (width, height)
        if session.phase is Phase.RUNNING and session.run.tty and session.container_id:
            await asyncio.to_thread(self.engine.resize, session.container_id, width, height)

    async def _started(self, session: RunSession) -> None:
        """Wait until the run runs or ended (stdin sent before the start waits for it)."""
        while session.phase in (
            Phase.QUEUED,
            Phase.CREATING,
            Phase.ATTACHING,
            Phase.WAITING,
            Phase.STARTING,
        ):
            session.changed.clear()
            await session.changed.wait()
