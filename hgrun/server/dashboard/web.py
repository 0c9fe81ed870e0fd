"""The dashboard's request plumbing: who is asking (session cookie to Principal), CSRF checks,
security headers, rendering templates, and turning errors into pages.

Every handler is wrapped by :func:`handler`, which resolves the session before the handler runs:
no session means a redirect to the sign-in page (or 401 for a data request); a state-changing
method without the session's CSRF token is refused with 403 before the body is read.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from hgrun.errors import AuthError, ForbiddenError, HgrunError, InputError, PayloadTooLargeError
from hgrun.models import Scope
from hgrun.server.auth import GRANTS, Principal
from hgrun.server.dashboard import session as sessions
from hgrun.server.dashboard import words

log = logging.getLogger("hgrun.dashboard")

TEMPLATES = Path(__file__).parent / "templates"
MAX_FORM = 64 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD"})


def csp(style_nonce: str | None = None) -> str:
    """A strict Content-Security-Policy: scripts and styles only from files this server serves.

    ``style_nonce`` admits ``<style>`` elements carrying it: only the shell page needs one,
    because xterm.js writes its measured cell sizes into ``<style>`` elements it creates
    (xtermjs/xterm.js#4445); shell.js stamps the nonce on them. Script stays 'self' only.
    """
    style = "'self'" + (f" 'nonce-{style_nonce}'" if style_nonce else "")
    return (
        "default-src 'none'; script-src 'self'; "
        f"style-src {style}; img-src 'self'; connect-src 'self'; font-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,  # every value is escaped; templates never mark anything safe
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters["when"] = _when
ENV.filters["duration"] = words.duration
ENV.filters["badge"] = words.badge
ENV.filters["command_line"] = words.command_line


@dataclasses.dataclass
class Viewer:
    """The signed-in person: their token's principal, the session, what the page may offer."""

    principal: Principal
    session: sessions.Session

    @property
    def scope(self) -> Scope:
        return self.principal.token.scope

    def may(self, action: str) -> bool:
        return action in GRANTS[self.scope]


class Dashboard:
    """What the handlers share: the server's parts and the session book."""

    def __init__(self, server: Any, book: sessions.SessionBook | None = None) -> None:
        self.server = server
        self.book = book or sessions.SessionBook()

    @property
    def store(self) -> Any:
        return self.server.store

    def now(self) -> float:
        return float(self.server.clock())

    def viewer(self, request: HTTPConnection) -> Viewer | None:
        """The session behind the request's cookie, if it is live and its token still valid."""
        cookie = request.cookies.get(sessions.COOKIE)
        found = self.book.get(cookie, self.now())
        if found is None:
            return None
        token = self.store.token_by_hash(found.token_hash)
        if token is None:  # revoked since sign-in
            self.book.close(cookie)
            return None
        return Viewer(Principal(token[0]), found)

    def render(
        self,
        request: Request,
        template: str,
        viewer: Viewer | None,
        status: int = 200,
        style_nonce: str | None = None,
        **values: Any,
    ) -> Response:
        values.setdefault("title", "hgrun")
        html = ENV.get_template(template).render(
            viewer=viewer,
            csrf=viewer.session.csrf if viewer else "",
            path=request.url.path,
            style_nonce=style_nonce or "",
            **values,
        )
        return secure(HTMLResponse(html, status_code=status), style_nonce)


def secure(response: Response, style_nonce: str | None = None) -> Response:
    response.headers["Content-Security-Policy"] = csp(style_nonce)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def is_tls(request: Request) -> bool:
    return request.url.scheme in ("https", "wss")


Handler = Callable[[Dashboard, Request, Viewer], Awaitable[Response]]


def handler(
    dash: Dashboard, fn: Handler, *, data: bool = False, fragment: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a page, a ``fragment`` of one (what app.js polls), or a ``data`` (JSON) endpoint:
    session, CSRF, errors. Without a session a page redirects to the sign-in page; a fragment or
    data request gets 401, so a poll never swaps the sign-in form into a page."""

    async def endpoint(request: Request) -> Response:
        viewer = dash.viewer(request)
        try:
            if viewer is None:
                if data or fragment or request.method not in SAFE_METHODS:
                    raise AuthError("not signed in", "sign in again")
                target = urllib.parse.quote(request.url.path, safe="/")
                return secure(RedirectResponse(f"/signin?next={target}", status_code=303))
            if request.method not in SAFE_METHODS:
                given = request.headers.get(sessions.CSRF_HEADER)
                if given is None and _is_form(request):
                    form = await read_form(request)
                    request.state.form = form
                    given = form.get(sessions.CSRF_FIELD)
                if not sessions.csrf_ok(viewer.session.csrf, given):
                    raise ForbiddenError(
                        "missing or wrong CSRF token", "reload the page and try again"
                    )
            return await fn(dash, request, viewer)
        except HgrunError as e:
            if data:
                return secure(JSONResponse(e.to_json(), status_code=e.http_status))
            return dash.render(request, "error.html", viewer, status=e.http_status, error=e)
        except Exception:
            log.exception("dashboard %s %s failed", request.method, request.url.path)
            if data:
                body = {"error": "internal", "message": "internal server error", "hint": None}
                return secure(JSONResponse(body, status_code=500))
            error = HgrunError("internal server error", "see the server's log")
            return dash.render(request, "error.html", viewer, status=500, error=error)

    return endpoint


def _is_form(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind == "application/x-www-form-urlencoded"


async def read_body(request: Request, cap: int = MAX_FORM) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLargeError(f"request body over {cap // 1024} KB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise PayloadTooLargeError(f"request body over {cap // 1024} KB")
    return bytes(body)


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form (read once; a second call returns what the first read)."""
    cached = getattr(request.state, "form", None)
    if cached is not None:
        return dict(cached)
    if not _is_form(request):
        raise InputError("expected a form (application/x-www-form-urlencoded)")
    text = (await read_body(request)).decode("utf-8", errors="replace")
    form = {k: v[-1] for k, v in urllib.parse.parse_qs(text, keep_blank_values=True).items()}
    request.state.form = form
    return form


async def read_json(request: Request, cap: int) -> Any:
    body = await read_body(request, cap)
    try:
        return json.loads(body or b"null")
    except ValueError as e:
        raise InputError(f"not valid JSON: {e}") from e


def new_nonce() -> str:
    return secrets.token_urlsafe(16)
