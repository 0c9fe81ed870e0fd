"""The REST API under ``/v1`` and the attach WebSocket.

Every route but ``/v1/health`` and ``/v1/openapi.json`` needs a bearer token with the right scope.
Errors are JSON ``{"error", "message", "hint"}`` with the matching status; bad input is a 4xx,
never a 500. Request bodies are size-capped; uploads and build contexts are streamed.

One module per resource holds its handlers (:mod:`.apps`, :mod:`.runs`, :mod:`.scripts`,
:mod:`.tokens`, :mod:`.nodes`, :mod:`.attach`, :mod:`.runattach`); :mod:`.requests` reads
requests and :mod:`.views` renders rows.
This module is the route table and :func:`build_app`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from hgrun import __version__
from hgrun.engine import DEFAULT_BUILD_LIMITS, BuildLimits, Engine
from hgrun.server.api import apps, attach, nodes, openapi, runattach, runs, scripts, tokens
from hgrun.server.api.requests import Handler, RouteSpec, dispatch
from hgrun.server.api.responses import JSONResponse
from hgrun.server.api.runs import stderr_tail
from hgrun.server.api.views import run_json
from hgrun.server.launcher import Launcher
from hgrun.server.scripts import ScriptRunner
from hgrun.server.supervisor import Supervisor
from hgrun.server.workers import Workers
from hgrun.store import Store
from hgrun.store.audit import AuditLog

__all__ = ["ROUTES", "Server", "build_app", "run_json", "stderr_tail"]


@dataclasses.dataclass
class Server:
    """What the routes need: the composition root builds one and hands it to :func:`build_app`."""

    store: Store
    engine: Engine
    supervisor: Supervisor
    launcher: Launcher
    scripts: ScriptRunner
    audit: AuditLog
    host_cpus: int  # the most one run may ask for (the dashboard's shell checks it too)
    host_memory: int
    clock: Callable[[], float] = time.time
    scheduler_ticks: Callable[[], int] = lambda: 0  # how often the cron loop has woken
    scheduler_wake: Callable[[], None] = lambda: None  # the scripts changed: evaluate them now
    workers: Workers = dataclasses.field(default_factory=Workers)
    uploading: set[int] = dataclasses.field(default_factory=set)  # runs taking an upload now
    allowed_networks: frozenset[str] = frozenset()  # beyond none and bridge (hgrun.server.networks)
    build_limits: BuildLimits = DEFAULT_BUILD_LIMITS  # memory, CPUs and time of one build


def build_app(server: Server) -> Starlette:
    # One route a path, whatever its methods: a 405 then names them all in Allow (one route a
    # method and path made Starlette name only the first one's).
    by_path: dict[str, dict[str, Handler]] = {}
    for method, path, handler, _summary in ROUTES:
        by_path.setdefault(path, {})[method] = handler
    queries = openapi.query_parameters(ROUTES)
    routes: list[BaseRoute] = [
        Route(path, dispatch(server, handlers, {m: queries[(m, path)] for m in handlers}))
        for path, handlers in by_path.items()
    ]
    routes.append(WebSocketRoute("/v1/runs/{run_id:int}/attach", attach.endpoint(server)))
    routes.append(WebSocketRoute("/v1/apps/{app}/runs/attach", runattach.endpoint(server)))
    from hgrun.server import dashboard  # the web pages at / (its own package; mounted here)

    return Starlette(
        routes=routes,
        middleware=[dashboard.middleware(server)],
        exception_handlers={404: not_found},
    )


async def not_found(request: Request, exc: Exception) -> Response:
    """No route: under /v1 the API's JSON error (a path such as /v1/runs/abc lands here, as
    the run id is not a number), elsewhere plain text."""
    if request.url.path.startswith("/v1/"):
        return JSONResponse(
            {"error": "not_found", "message": f"no such path: {request.url.path}", "hint": None},
            status_code=404,
        )
    return PlainTextResponse("Not Found", status_code=404)


async def health(server: Server, request: Request) -> Response:
    return JSONResponse(
        {"status": "ok", "version": __version__, "scheduler": {"ticks": server.scheduler_ticks()}}
    )


async def openapi_json(server: Server, request: Request) -> Response:
    return JSONResponse(openapi.document(ROUTES))


ROUTES: list[RouteSpec] = [
    ("GET", "/v1/health", health, "Liveness and version; no token needed"),
    ("GET", "/v1/openapi.json", openapi_json, "This document"),
    ("GET", "/v1/apps", apps.list_apps, "List apps [read]"),
    ("POST", "/v1/apps", apps.create_app, "Create an app: {name} [deploy]"),
    ("GET", "/v1/apps/{app}", apps.get_app, "An app and its current release [read]"),
    ("GET", "/v1/apps/{app}/config", apps.get_config, "The app's env vars [deploy]"),
    ("PATCH", "/v1/apps/{app}/config", apps.patch_config, "Set (string) or unset (null) [deploy]"),
    ("GET", "/v1/apps/{app}/builds/{hash}", apps.get_build, "Is this context built? [deploy]"),
    ("POST", "/v1/apps/{app}/builds", apps.create_build, "Build a tar context; NDJSON [deploy]"),
    ("GET", "/v1/apps/{app}/releases", apps.list_releases, "Releases, newest first [read]"),
    ("POST", "/v1/apps/{app}/releases", apps.create_release, "Release a built context [deploy]"),
    (
        "POST",
        "/v1/apps/{app}/releases/rollback",
        apps.rollback,
        "A copy of release {version} (default: the one before) [deploy]",
    ),
    ("DELETE", "/v1/apps/{app}", apps.destroy_app, "Delete an app and all it holds [deploy]"),
    ("POST", "/v1/apps/{app}/runs", runs.create_run, "Create a one-off run [run]"),
    ("GET", "/v1/apps/{app}/runs", runs.list_runs, "Run history; status, trigger, active [read]"),
    (
        "GET",
        "/v1/apps/{app}/logs",
        runs.app_logs,
        "The app log as NDJSON; run, tail, follow [read]",
    ),
    ("GET", "/v1/runs/{run_id:int}", runs.get_run, "One run; stderr_tail=N [read]"),
    ("POST", "/v1/runs/{run_id:int}/stop", runs.stop_run, "SIGTERM, then SIGKILL [run]"),
    ("PUT", "/v1/runs/{run_id:int}/files", runs.upload_files, "Tar into /tmp/uploads [run]"),
    ("GET", "/v1/apps/{app}/scripts", scripts.list_scripts, "The app's scripts [read]"),
    (
        "POST",
        "/v1/scripts/{script_id:int}/runs",
        scripts.trigger_script,
        "Trigger; body=input [trigger]",
    ),
    (
        "GET",
        "/v1/scripts/{script_id:int}/runs",
        scripts.list_script_runs,
        "A script's runs [trigger]",
    ),
    ("GET", "/v1/tokens", tokens.list_tokens, "Tokens of the workspace [admin]"),
    (
        "POST",
        "/v1/tokens",
        tokens.create_token,
        "Create: {name, scope, script}; shown once [admin]",
    ),
    ("DELETE", "/v1/tokens/{name}", tokens.revoke_token, "Revoke a token [admin]"),
    ("GET", "/v1/audit", tokens.audit_log, "The decrypted audit log; run=ID [admin]"),
    ("GET", "/v1/nodes", nodes.list_nodes, "The engine's nodes, their state and runs [admin]"),
    (
        "POST",
        "/v1/nodes",
        nodes.add_node,
        "Register a swarm node's engine endpoint: {name, endpoint} [admin]",
    ),
    ("DELETE", "/v1/nodes/{name}", nodes.remove_node, "Forget a registered endpoint [admin]"),
]
