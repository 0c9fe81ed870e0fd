"""The dashboard: hgrun's web pages at ``/`` on the API's own port.

:class:`Gate` sits in front of the API app. Paths outside ``/v1`` are the dashboard's; ``/v1``
stays the API's, bearer tokens and all. One ``/v1`` route is shared: the attach WebSocket
``/v1/runs/{id}/attach`` opened by a browser carries the session cookie instead of a bearer
header (a browser's WebSocket cannot send one), so the gate hands exactly that case to the
dashboard's attach endpoint, which checks the session and the Origin and then runs the API's
own relay: the same Kubernetes channel protocol, byte for byte, as the CLI gets.

The pages read the store and act through the supervisor and script runner with the same scope
checks as the API (:class:`hgrun.server.auth.Principal`), so a page offers exactly what its
token may do.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route, Router, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from hgrun.server.dashboard import actions, pages, shell
from hgrun.server.dashboard.session import COOKIE
from hgrun.server.dashboard.web import Dashboard, handler, secure

HERE = Path(__file__).parent
VENDOR = HERE / "vendor" / "node_modules"
ATTACH = re.compile(r"^/v1/runs/\d+/attach$")

# Third-party browser files, installed from npm by scripts/setup (vendor/package-lock.json);
# served by name only, so no request path ever reaches the file system.
VENDOR_FILES = {
    "xterm.js": VENDOR / "@xterm" / "xterm" / "lib" / "xterm.js",
    "xterm.css": VENDOR / "@xterm" / "xterm" / "css" / "xterm.css",
    "addon-fit.js": VENDOR / "@xterm" / "addon-fit" / "lib" / "addon-fit.js",
}
MEDIA = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
OWN_FILES = {p.name: p for p in (HERE / "static").iterdir() if p.suffix in MEDIA}


def middleware(server: Any) -> Middleware:
    """The one line ``build_app`` needs: ``Starlette(..., middleware=[middleware(server)])``."""
    return Middleware(Gate, server=server)


class Gate:
    """Route a request to the dashboard or to the API (see the module docstring)."""

    def __init__(self, app: ASGIApp, server: Any) -> None:
        self.api = app
        self.dash = Dashboard(server)
        self.ui = build_router(self.dash)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind in ("http", "websocket"):
            path: str = scope["path"]
            if not path.startswith("/v1/") and path != "/v1":
                await self.ui(scope, receive, send)
                return
            if kind == "websocket" and ATTACH.match(path) and _cookie_only(scope):
                await shell.attach(self.dash, scope, receive, send)
                return
        await self.api(scope, receive, send)


def _cookie_only(scope: Scope) -> bool:
    names = {name for name, _value in scope.get("headers", ())}
    if b"authorization" in names:
        return False
    cookies = b"; ".join(v for n, v in scope.get("headers", ()) if n == b"cookie")
    return f"{COOKIE}=".encode() in cookies


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    own = OWN_FILES.get(name)
    path = own or VENDOR_FILES.get(name.removeprefix("vendor/"))
    if path is None or (own is None and not name.startswith("vendor/")) or not path.is_file():
        return secure(PlainTextResponse("not found", status_code=404))
    response = secure(FileResponse(path, media_type=MEDIA[path.suffix]))
    response.headers["Cache-Control"] = "no-cache"
    return response


def build_router(dash: Dashboard) -> Router:
    def page(fn: Any) -> Any:
        return handler(dash, fn)

    def live(fn: Any) -> Any:
        return handler(dash, fn, fragment=True)

    def data(fn: Any) -> Any:
        return handler(dash, fn, data=True)

    return Router(
        routes=[
            Route("/", page(pages.apps), methods=["GET"]),
            Route("/live/apps", live(pages.apps_live), methods=["GET"]),
            Route("/signin", actions.signin_form(dash), methods=["GET"]),
            Route("/signin", actions.signin(dash), methods=["POST"]),
            Route("/signout", page(actions.signout), methods=["POST"]),
            Route("/apps/{app}/runs", page(pages.runs), methods=["GET"]),
            Route("/live/apps/{app}/runs", live(pages.runs_live), methods=["GET"]),
            Route("/runs/{run_id:int}", page(pages.run), methods=["GET"]),
            Route("/live/runs/{run_id:int}", live(pages.run_live), methods=["GET"]),
            Route("/runs/{run_id:int}/log", data(pages.run_log), methods=["GET"]),
            Route("/runs/{run_id:int}/stop", page(actions.stop), methods=["POST"]),
            Route("/scripts/{script_id:int}", page(pages.script), methods=["GET"]),
            Route("/live/scripts/{script_id:int}", live(pages.script_live), methods=["GET"]),
            Route("/scripts/{script_id:int}/runs", data(actions.run_now), methods=["POST"]),
            Route("/apps/{app}/shell", page(shell.page), methods=["GET"]),
            Route("/apps/{app}/shell", data(shell.open_shell), methods=["POST"]),
            Route("/audit", page(pages.audit), methods=["GET"]),
            Route("/tokens", page(pages.tokens), methods=["GET"]),
            Route("/tokens", page(actions.create_token), methods=["POST"]),
            Route("/tokens/{name}/revoke", page(actions.revoke_token), methods=["POST"]),
            Route("/static/{name:path}", static, methods=["GET"]),
            Route("/favicon.ico", _favicon, methods=["GET"]),
            WebSocketRoute("/{rest:path}", _no_socket),
        ],
        default=_not_found,
    )


async def _favicon(request: Request) -> Response:
    return secure(RedirectResponse("/static/icon.svg", status_code=301))


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await secure(PlainTextResponse("not found", status_code=404))(scope, receive, send)


async def _no_socket(websocket: Any) -> None:
    await websocket.close(code=1008)
