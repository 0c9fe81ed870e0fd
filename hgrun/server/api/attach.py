"""``/v1/runs/{id}/attach``: the server's half of the attach relay.

The WebSocket side (handshake, framing, moving bytes) is :mod:`hgrun.relay.server`; this module
admits the caller and hands the relay an attachment: a live run's session through the supervisor,
a run in flight that another server holds (:mod:`hgrun.server.remote`), or the stored output of
a run that already ended. ``?offset=N`` (bytes of output the client already has, stdout and
stderr together) resumes after them: nothing missed, nothing twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

from hgrun.errors import ForbiddenError, InputError, NotFoundError
from hgrun.models import Run
from hgrun.relay import server as relay
from hgrun.server.api.requests import path_id
from hgrun.server.auth import Principal, authenticate
from hgrun.server.output import OutputLog
from hgrun.server.remote import RemoteRun
from hgrun.server.session import READ_BYTES, Dropped, Finished, Output, RunSession, Subscriber
from hgrun.server.supervisor import Supervisor
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
        offset = websocket.query_params.get("offset")
        if offset is not None and not offset.isdigit():
            raise InputError("query parameter 'offset' must be a whole number of bytes")
        at = None if offset is None else int(offset)
        return lambda: open_attachment(server.supervisor, run, at)

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


def open_attachment(supervisor: Supervisor, run: Run, offset: int | None) -> relay.Attachment:
    """The live session if the supervisor holds the run (or it waits here for a slot,
    ``--max-runs``); a run in flight that another server holds (or that waits to be launched
    or taken up) through the store and the engine (:class:`RemoteRun`); else a replay of what
    was stored."""
    if run.id not in supervisor.sessions and not supervisor.slots.waiting(run.id):
        if run.status.active:
            return RemoteRun(supervisor, run, offset)
        return StoredRun(supervisor.output, supervisor.store.run, run.id, offset or 0)
    # In flight, or waiting for a slot (--max-runs): the session the launch goes on with.
    session, subscriber = supervisor.subscribe(run.id, offset)
    return LiveRun(supervisor, session, subscriber)


class LiveRun:
    """A client subscribed to a run in flight: output as it comes, input to the container."""

    def __init__(self, supervisor: Supervisor, session: RunSession, subscriber: Subscriber) -> None:
        self.run_id = session.run.id
        self._supervisor = supervisor
        self._session = session
        self._subscriber = subscriber

    async def events(self) -> AsyncIterator[relay.Output | relay.Exit | relay.Close]:
        while (item := await self._subscriber.next()) is not None:
            if isinstance(item, Output):
                yield relay.Output(item.stream, item.data)
            elif isinstance(item, Dropped):
                # Told why, then let go without an exit status: the client attaches again
                # from the bytes it has and catches up from the store.
                yield relay.Close(item.message)
                return
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

    def __init__(
        self, output: OutputLog, read_run: Callable[[int], Run], run_id: int, offset: int
    ) -> None:
        self.run_id = run_id
        self._output = output
        self._read_run = read_run
        self._offset = offset

    async def events(self) -> AsyncIterator[relay.Output | relay.Exit]:
        position, hint = self._offset, (0, 0)
        while True:
            pieces, hint = await self._output.read(self.run_id, hint, position, READ_BYTES)
            if not pieces:
                break
            for piece in pieces:
                if piece.marker:  # older output was dropped by the store's cap: say so
                    if self._offset == 0:
                        yield relay.Output(piece.stream, piece.data)
                    continue
                skip = max(0, position - piece.offset)
                yield relay.Output(piece.stream, piece.data[skip:])
                position = piece.end
        run = self._read_run(self.run_id)
        yield relay.Exit(run.exit_code if run.exit_code is not None else 1)

    async def stdin(self, data: bytes) -> None:
        pass

    async def close_stdin(self) -> None:
        pass

    async def resize(self, width: int, height: int) -> None:
        pass

    def detach(self) -> None:
        pass
