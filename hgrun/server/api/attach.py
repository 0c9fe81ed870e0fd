"""``/v1/runs/{id}/attach``: the server's half of the attach relay.

The WebSocket side (handshake, framing, moving bytes) is :mod:`hgrun.relay.server`; this module
admits the caller and hands the relay an attachment: a live run's session through the supervisor,
or the stored output of a run that already ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

from hgrun.errors import ForbiddenError, NotFoundError
from hgrun.models import Run
from hgrun.relay import server as relay
from hgrun.server.api.requests import path_id
from hgrun.server.auth import Principal, authenticate
from hgrun.server.supervisor import Finished, Output, RunSession, Subscriber, Supervisor
from hgrun.store import Store

if TYPE_CHECKING:
    from hgrun.server.api import Server


def endpoint(server: Server) -> Callable[[WebSocket], Awaitable[None]]:
    """The WebSocket endpoint: a token with the ``run`` scope attaches to a run of its workspace;
    a token that may trigger a script attaches to that script's runs."""

    def admit(websocket: WebSocket) -> relay.Opener:
        principal = authenticate(server.store, websocket.headers)
        run_id = path_id(websocket, "run_id")
        try:
            principal.require("run")
        except ForbiddenError:
            # A trigger token runs its scripts attached (`hgrun scripts:run`): the runs of the
            # scripts it may trigger, and no other (the same 403 whether the run exists or not).
            if not _triggered_by(server.store, principal, run_id):
                raise
        run = server.store.run(run_id, principal.workspace)
        return lambda: open_attachment(server.supervisor, server.store, run)

    async def attach(websocket: WebSocket) -> None:
        await relay.serve(websocket, admit)

    return attach


def _triggered_by(store: Store, principal: Principal, run_id: int) -> bool:
    """Whether ``run_id`` is a run of a script ``principal`` may trigger."""
    try:
        run = store.run(run_id, principal.workspace)
    except NotFoundError:
        return False
    return run.script_id is not None and principal.may_trigger(run.script_id)


def open_attachment(supervisor: Supervisor, store: Store, run: Run) -> relay.Attachment:
    """The live session if the supervisor holds the run, else a replay of what it stored."""
    if run.id not in supervisor.sessions:
        return StoredRun(store, run.id)
    session, subscriber = supervisor.subscribe(run.id)
    return LiveRun(supervisor, session, subscriber)


class LiveRun:
    """A client subscribed to a run in flight: output as it comes, input to the container."""

    def __init__(self, supervisor: Supervisor, session: RunSession, subscriber: Subscriber) -> None:
        self.run_id = session.run.id
        self._supervisor = supervisor
        self._session = session
        self._subscriber = subscriber

    async def events(self) -> AsyncIterator[relay.Output | relay.Exit]:
        while True:
            item = await self._subscriber.queue.get()
            if isinstance(item, Output):
                yield relay.Output(item.stream, item.data)
            elif isinstance(item, Finished):
                yield relay.Exit(item.exit_code, relay.exit_reason(item.status), item.message)
                return

    async def stdin(self, data: bytes) -> None:
        await self._supervisor.stdin(self._session, data)

    async def close_stdin(self) -> None:
        await self._supervisor.close_stdin(self._session)

    async def resize(self, width: int, height: int) -> None:
        await self._supervisor.resize(self._session, width, height)

    def detach(self) -> None:
        self._supervisor.unsubscribe(self._session, self._subscriber)


class StoredRun:
    """A run that already ended: its stored output, then its exit code; input goes nowhere."""

    def __init__(self, store: Store, run_id: int) -> None:
        self.run_id = run_id
        self._store = store

    async def events(self) -> AsyncIterator[relay.Output | relay.Exit]:
        for chunk in self._store.output(run_id=self.run_id, limit=10**9):
            yield relay.Output(chunk.stream, chunk.data)
        run = self._store.run(self.run_id)
        yield relay.Exit(run.exit_code if run.exit_code is not None else 1)

    async def stdin(self, data: bytes) -> None:
        pass

    async def close_stdin(self) -> None:
        pass

    async def resize(self, width: int, height: int) -> None:
        pass

    def detach(self) -> None:
        pass
