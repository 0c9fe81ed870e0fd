"""What every route does with its request: the endpoint wrapper, the caller, the body and params.

A handler takes the :class:`~hgrun.server.api.Server` and the request and returns a response, or
raises an :class:`~hgrun.errors.HgrunError` that :func:`endpoint` turns into the JSON error
``{"error", "message", "hint"}`` with its status. Bad input is a 4xx here, never a 500.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from hgrun.errors import BusyError, HgrunError, InputError, NotFoundError, PayloadTooLargeError
from hgrun.models import App, Run
from hgrun.server.api.responses import JSONResponse
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
        except BusyError as e:
            headers = {"Retry-After": str(e.retry_after)}
            return JSONResponse(e.to_json(), status_code=e.http_status, headers=headers)
        except HgrunError as e:
            return JSONResponse(e.to_json(), status_code=e.http_status)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return JSONResponse(
                {"error": "internal", "message": "internal server error", "hint": None},
                status_code=500,
            )

    return run


def dispatch(
    server: Server,
    handlers: Mapping[str, Handler],
    queries: Mapping[str, frozenset[str]],
) -> ASGIApp:
    """The endpoint of one path: each method's handler; another method is a JSON 405 with
    ``Allow`` (RFC 9110 section 15.5.6). HEAD is answered as GET. A query parameter the
    method does not take (``queries``) is a 400 naming it: a typo is not silently ignored."""
    endpoints = {
        method: _strict_query(endpoint(server, handler), queries.get(method, frozenset()))
        for method, handler in handlers.items()
    }
    if "GET" in endpoints:
        endpoints["HEAD"] = endpoints["GET"]
    return _PathEndpoint(endpoints)


def _strict_query(
    run: Callable[[Request], Awaitable[Response]], known: frozenset[str]
) -> Callable[[Request], Awaitable[Response]]:
    async def checked(request: Request) -> Response:
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            error = InputError(
                f"unknown query parameter {unknown[0]!r}",
                f"this call takes: {', '.join(sorted(known))}" if known else "it takes none",
            )
            return JSONResponse(error.to_json(), status_code=error.http_status)
        return await run(request)

    return checked


class _PathEndpoint:
    """An ASGI app rather than a request function, so Starlette passes it every method (for a
    function it answers a plain-text 405 itself to all but GET and HEAD)."""

    def __init__(self, endpoints: Mapping[str, Callable[[Request], Awaitable[Response]]]) -> None:
        self.endpoints = endpoints
        self.allow = ", ".join(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        chosen = self.endpoints.get(request.method)
        if chosen is None:
            response: Response = JSONResponse(
                {
                    "error": "method_not_allowed",
                    "message": f"{request.method} is not allowed on {request.url.path}",
                    "hint": f"allowed: {self.allow}",
                },
                status_code=405,
                headers={"Allow": self.allow},
            )
        else:
            response = await chosen(request)
        await response(scope, receive, send)


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


MAX_INT = 2**63 - 1
"""The largest whole number a query or path value may be: SQLite's INTEGER."""
MAX_DIGITS = 19  # len(str(MAX_INT)): longer is refused before int() parses it


async def body_bytes(request: Request, cap: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to be over ``cap`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLargeError(f"request body over {cap // 1024} KB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise PayloadTooLargeError(f"request body over {cap // 1024} KB")
    return bytes(body)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259 section 6)")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(body: bytes, what: str = "request body") -> Any:
    """``body`` as JSON: strict RFC 8259 (no NaN or Infinity, no lone UTF-16 surrogate),
    nesting bounded by the decoder.

    Anything else is an :class:`InputError` naming ``what``; never a RecursionError.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{what} is not UTF-8: {e.reason} at byte {e.start}") from e
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError as e:
        # The C decoder stops at the interpreter's recursion limit (about 1,000 levels).
        raise InputError(f"{what} nests too deep") from e
    except ValueError as e:
        raise InputError(f"{what} is not valid JSON: {e}") from e
    if _SURROGATE_ESCAPE.search(text):
        # Only an escape makes a lone UTF-16 surrogate (a pair decodes to its character): a
        # string no UTF-8 can hold, which would be stored and launched, then fail every answer.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            lone = f"\\u{ord(e.object[e.start]):04x}"
            raise InputError(
                f"{what} holds a lone UTF-16 surrogate ({lone}), which is not a character",
                "send the character itself, or both halves of its surrogate pair",
            ) from e
        except RecursionError as e:
            raise InputError(f"{what} nests too deep") from e
    return value


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object (an empty body is ``{}``); anything else is a 400."""
    body = await body_bytes(request, MAX_JSON_BODY)
    value = parse_json(body or b"{}")
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


def int_param(value: str | None, name: str, default: int, maximum: int = MAX_INT) -> int:
    """A whole-number query parameter (ASCII digits only), ``default`` when absent.

    Over ``maximum`` is a 400 naming the parameter and the bound, as is anything but digits
    (``str.isdigit`` alone would take ``"²"``, which ``int()`` then refuses).
    """
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value.lstrip("0")) > MAX_DIGITS:
        raise InputError(
            f"query parameter {name!r} must be a whole number from 0 to {maximum}, not {value!r}"
        )
    number = int(value)
    if number > maximum:
        raise InputError(f"query parameter {name!r} must be at most {maximum}, not {number}")
    return number


EnumT = TypeVar("EnumT", bound=enum.Enum)


def enum_param(value: str | None, name: str, kind: type[EnumT], plural: str) -> EnumT | None:
    """A query parameter naming one of ``kind``'s values; None when absent. Any other word
    (empty too) is a 400 naming it, with the values (``plural``: the hint's word for them)."""
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError as e:
        raise InputError(
            f"unknown {name} {value!r}", f"{plural}: {', '.join(m.value for m in kind)}"
        ) from e


def bool_param(value: str | None, name: str, default: bool = False) -> bool:
    """A yes/no query parameter: ``1``/``true`` or ``0``/``false`` (empty is ``default``)."""
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise InputError(f"query parameter {name!r} must be 1, 0, true or false, not {value!r}")


def path_id(request: HTTPConnection, name: str) -> int:
    """The ``{name:int}`` path parameter; a number no row can have is a 404, not an overflow."""
    value: int = request.path_params[name]
    if value > MAX_INT:
        raise NotFoundError(f"no {name.removesuffix('_id')} {value}")
    return value
