"""What every route does with its request: the endpoint wrapper, the caller, the body and params.

A handler takes the :class:`~hgrun.server.api.Server` and the request and returns a response, or
raises an :class:`~hgrun.errors.HgrunError` that :func:`endpoint` turns into the JSON error
``{"error", "message", "hint"}`` with its status. Bad input is a 4xx here, never a 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hgrun.errors import HgrunError, InputError, PayloadTooLargeError
from hgrun.models import App, Run
from hgrun.server.auth import Principal, authenticate

if TYPE_CHECKING:
    from hgrun.server.api import Server

log = logging.getLogger("hgrun.api")

MAX_JSON_BODY = 1024 * 1024

Handler: TypeAlias = "Callable[[Server, Request], Awaitable[Response]]"
RouteSpec: TypeAlias = "tuple[str, str, Handler, str]"
"""One row of the route table: method, path, handler, the summary the OpenAPI document shows."""


def endpoint(server: Server, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint for ``handler``: errors become JSON, the unexpected a logged 500."""

    async def run(request: Request) -> Response:
        try:
            return await handler(server, request)
        except HgrunError as e:
            return JSONResponse(e.to_json(), status_code=e.http_status)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return JSONResponse(
                {"error": "internal", "message": "internal server error", "hint": None},
                status_code=500,
            )

    return run


def principal(server: Server, request: Request, action: str) -> Principal:
    """The caller, who must be allowed ``action`` (raises the 401/403 otherwise)."""
    caller = authenticate(server.store, request.headers)
    caller.require(action)
    return caller


def path_app(server: Server, caller: Principal, request: Request) -> App:
    """The app named by the ``{app}`` path parameter, in the caller's workspace."""
    return server.store.app(caller.workspace, request.path_params["app"])


def workspace_run(server: Server, caller: Principal, run_id: int) -> Run:
    """Run ``run_id`` if it is in the caller's workspace (404 otherwise)."""
    return server.store.run(run_id, caller.workspace)


async def body_bytes(request: Request, cap: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to be over ``cap`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLargeError(f"request body over {cap // 1024} KB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise PayloadTooLargeError(f"request body over {cap // 1024} KB")
    return bytes(body)


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object (an empty body is ``{}``); anything else is a 400."""
    body = await body_bytes(request, MAX_JSON_BODY)
    try:
        value = json.loads(body or b"{}")
    except ValueError as e:
        raise InputError(f"request body is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise InputError("request body must be a JSON object")
    return value


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None):
    """``body[name]`` if it is of ``kind`` or null/absent (then ``default``); a 400 otherwise."""
    value = body.get(name, default)
    if value is None or isinstance(value, kind):
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise InputError(f"field {name!r} must be a number")
        return value
    names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise InputError(f"field {name!r} must be {names}, not {type(value).__name__}")


def int_param(value: str | None, name: str, default: int) -> int:
    """A whole-number query parameter, ``default`` when absent."""
    if value is None:
        return default
    if not value.isdigit():
        raise InputError(f"query parameter {name!r} must be a whole number")
    return int(value)
