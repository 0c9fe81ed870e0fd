"""A shell in the browser: an attached TTY run of an app, and the attach WebSocket for it.

"Open a shell" creates a run as ``POST /v1/apps/{app}/runs`` with ``tty: true`` does (scope
``run``); the page then opens ``/v1/runs/{id}/attach`` (Kubernetes channel protocol, the CLI's
own) with its session cookie. The run starts when the page attaches, like ``hgrun run``; after a
reload the page attaches again within the server's grace period.

The WebSocket handshake is a cross-origin-capable GET, so besides the SameSite=Strict cookie it
must come from this server's own page: its ``Origin`` must name this host (RFC 6455 10.2).
"""

from __future__ import annotations

import shlex

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from hgrun.errors import AuthError, ForbiddenError, InputError, NotFoundError
from hgrun.models import Trigger, TriggerKind
from hgrun.relay import server as relay
from hgrun.server.api.attach import open_attachment
from hgrun.server.api.requests import int_param
from hgrun.server.dashboard import words
from hgrun.server.dashboard.web import Dashboard, Viewer, new_nonce, read_json, secure
from hgrun.server.launcher import Request as LaunchRequest
from hgrun.server.networks import check_network

MAX_COMMAND = 4096

BASH_OR_SH = words.BASH_OR_SH


def command_argv(text: str) -> list[str]:
    """The argv of what the person typed; plain ``bash`` falls back to ``sh`` without bash."""
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise InputError(f"cannot read the command: {e}", "check its quotes") from e
    if not argv:
        raise InputError("type a command to run, such as bash")
    return argv


async def page(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    viewer.principal.require("run")
    app = dash.store.app(viewer.principal.workspace, request.path_params["app"])
    run_id = int_param(request.query_params.get("run") or None, "run", 0) or ""
    return dash.render(
        request,
        "shell.html",
        viewer,
        title=f"Shell on {app.name}",
        app=app,
        reattach=run_id,
        style_nonce=new_nonce(),
    )


async def open_shell(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    """Create the attached TTY run; the page attaches to it to start it."""
    principal = viewer.principal
    principal.require("run")
    server = dash.server
    app = dash.store.app(principal.workspace, request.path_params["app"])
    body = await read_json(request, MAX_COMMAND * 2)
    text = body.get("command", "bash") if isinstance(body, dict) else None
    if not isinstance(text, str) or len(text) > MAX_COMMAND:
        raise InputError("'command' must be a string")
    argv = command_argv(text)
    release = dash.store.latest_release(app.id)
    if release is None:
        raise NotFoundError(f"app {app.name!r} has no release yet", "run `hgrun deploy` first")
    if argv == ["bash"] and "bash" not in release.procfile:
        argv = BASH_OR_SH
    # The same refusals as `hgrun run` (hgrun.server.api.runs.create_run).
    check_network(release.manifest.network, server.allowed_networks, f"app {app.name}")
    await server.launcher.users.check(release.manifest.user, release.image, f"app {app.name}")
    session = await server.launcher.run(
        LaunchRequest(
            workspace=principal.workspace,
            app_id=app.id,
            release=release,
            trigger=Trigger(TriggerKind.USER, principal.name),
            argv=argv,
            detached=False,
            tty=True,
        )
    )
    run = session.run
    return secure(JSONResponse({"id": run.id, "url": f"/apps/{app.name}/shell?run={run.id}"}, 201))


def _same_origin(websocket: WebSocket) -> bool:
    origin = websocket.headers.get("origin")
    host = websocket.headers.get("host")
    if not origin or not host:
        return False
    scheme = "https" if websocket.url.scheme == "wss" else "http"
    return origin == f"{scheme}://{host}"


async def attach(dash: Dashboard, scope: Scope, receive: Receive, send: Send) -> None:
    """``/v1/runs/{id}/attach`` for a browser: the session instead of a bearer token, then the
    API's own relay and attachment (one protocol, one implementation)."""

    def admit(websocket: WebSocket) -> relay.Opener:
        if not _same_origin(websocket):
            raise ForbiddenError("attach from another site refused")
        viewer = dash.viewer(websocket)
        if viewer is None:
            raise AuthError("not signed in", "sign in again")
        viewer.principal.require("run")
        run = dash.store.run(int(scope["path"].split("/")[3]), viewer.principal.workspace)
        offset = websocket.query_params.get("offset")
        at = int(offset) if offset is not None and offset.isdigit() else None
        return lambda: open_attachment(dash.server.supervisor, run, at)

    await relay.serve(WebSocket(scope, receive, send), admit)
