"""``/v1/apps/{app}/runs/attach``: create a run and attach to it in one WebSocket handshake.

``hgrun run CMD`` used to make two round trips before the command could start: ``POST
/v1/apps/{app}/runs``, then the upgrade of ``/v1/runs/{id}/attach``, each with its own
connection, authentication and lookups. Here the upgrade request carries the run request (the
``POST`` body, as base64url JSON in the ``X-Hgrun-Run`` header) and the 101 answer carries the run
(its JSON view, likewise encoded, in ``X-Hgrun-Run``); the relay then goes on as on
``/v1/runs/{id}/attach``, whose first client this is, so the run starts at once. A refusal is the
same JSON error, with the same status, that the ``POST`` would have given.

Only attached runs without uploads come this way (uploads must land before the start); the
``POST`` and the attach endpoint stay for every other client. Taking a run up again after a lost
connection is ``/v1/runs/{id}/attach?offset=N``, as always.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

from hgrun.errors import BusyError, HgrunError, InputError
from hgrun.relay import protocol, runheader
from hgrun.relay import server as relay
from hgrun.server.api.attach import open_attachment
from hgrun.server.api.requests import parse_json
from hgrun.server.api.responses import JSONResponse
from hgrun.server.api.runs import launch_run
from hgrun.server.api.views import run_json
from hgrun.server.auth import authenticate

if TYPE_CHECKING:
    from hgrun.server.api import Server

HEADER = runheader.HEADER.lower()


def endpoint(server: Server) -> Callable[[WebSocket], Awaitable[None]]:
    """The WebSocket endpoint: a token with the ``run`` scope creates an attached run of an app
    of its workspace and attaches to it."""

    async def create_and_attach(websocket: WebSocket) -> None:
        try:
            subprotocol = protocol.negotiate(websocket.scope.get("subprotocols", []))
            caller = authenticate(server.store, websocket.headers)
            caller.require("run")
            app = server.store.app(caller.workspace, websocket.path_params["app"])
            if subprotocol is None:  # checked before anything is made
                raise InputError(
                    "no supported subprotocol", f"offer one of {', '.join(protocol.SUBPROTOCOLS)}"
                )
            body = parse_json(
                runheader.unwrap(websocket.headers.get(HEADER, "")), f"header {runheader.HEADER}"
            )
            if not isinstance(body, dict):
                raise InputError(f"header {HEADER} must hold a JSON object")
            if body.get("detached") or body.get("uploads"):
                raise InputError(
                    "a detached run, or one with uploads, cannot be created on attach",
                    "POST /v1/apps/{app}/runs makes those",
                )
            session = await launch_run(server, caller, app, {**body, "detached": False})
        except HgrunError as e:
            retry = {"Retry-After": str(e.retry_after)} if isinstance(e, BusyError) else None
            await websocket.send_denial_response(
                JSONResponse(e.to_json(), status_code=e.http_status, headers=retry)
            )
            return
        attachment = open_attachment(server.supervisor, session.run, None)
        try:
            queue = server.supervisor.slots.info(session.run.id)  # waiting for a slot: where
            view = runheader.encode(run_json(session.run, app.name, queue))
            await websocket.accept(
                subprotocol=subprotocol, headers=[(HEADER.encode(), view.encode())]
            )
        except BaseException:
            attachment.detach()  # the client went in the handshake: the run's grace applies
            raise
        await relay.relay(websocket, attachment, protocol.ServerConnection(subprotocol))

    return create_and_attach
