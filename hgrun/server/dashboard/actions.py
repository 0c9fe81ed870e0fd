"""The dashboard's state-changing requests: sign in and out, stop a run, run a script now,
create and revoke tokens. Each checks the same scope the API's matching route checks; the CSRF
token is checked before any of them runs (see :func:`web.handler`), and sign-in, which has no
session yet, checks the token of its own form (a double-submit cookie).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from hgrun.errors import ConflictError, ForbiddenError, HgrunError, InputError
from hgrun.models import RunStatus, Scope
from hgrun.server.api.requests import path_id
from hgrun.server.api.tokens import TOKEN_NAME
from hgrun.server.auth import RUN_TOKEN_PREFIX, new_token
from hgrun.server.dashboard import session as sessions
from hgrun.server.dashboard.pages import tokens_page
from hgrun.server.dashboard.web import Dashboard, Viewer, is_tls, read_form, read_json, secure
from hgrun.server.scripts import MAX_INPUT, parent_of, trigger_for
from hgrun.store import hash_token


def _next(target: str | None) -> str:
    """A same-site path to go to after sign-in; anything else goes to the Apps page."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def signin_form(dash: Dashboard) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return _signin_page(dash, request, None, 200)

    return endpoint


def _signin_page(dash: Dashboard, request: Request, error: str | None, status: int) -> Response:
    csrf = sessions.new_csrf()
    response = dash.render(
        request,
        "signin.html",
        None,
        status=status,
        title="Sign in",
        signin_csrf=csrf,
        error=error,
        next=_next(request.query_params.get("next")),
    )
    response.headers.append(
        "Set-Cookie",
        sessions.cookie_header(sessions.PRE_COOKIE, csrf, secure=is_tls(request), max_age=3600),
    )
    return response


def signin(dash: Dashboard) -> Callable[[Request], Awaitable[Response]]:
    """Exchange a token for a session: the cookie carries a random id, the session the token's
    hash; the token itself is never stored or sent back."""

    async def endpoint(request: Request) -> Response:
        try:
            form = await read_form(request)
        except HgrunError as e:
            return _signin_page(dash, request, e.message, e.http_status)
        expected = request.cookies.get(sessions.PRE_COOKIE)
        if not sessions.csrf_ok(expected, form.get(sessions.CSRF_FIELD)):
            return _signin_page(dash, request, "The form expired; sign in again.", 403)
        secret = form.get("token", "").strip()
        digest = hash_token(secret) if secret else ""
        if not secret or dash.store.token_by_hash(digest) is None:
            return _signin_page(dash, request, "That token is not valid (or was revoked).", 401)
        dash.book.close(request.cookies.get(sessions.COOKIE))  # a new session, never an old id
        cookie, _session = dash.book.open(digest, dash.now())
        response = secure(RedirectResponse(_next(form.get("next")), status_code=303))
        tls = is_tls(request)
        response.headers.append(
            "Set-Cookie", sessions.cookie_header(sessions.COOKIE, cookie, secure=tls)
        )
        response.headers.append(
            "Set-Cookie", sessions.cookie_header(sessions.PRE_COOKIE, "", secure=tls, max_age=0)
        )
        return response

    return endpoint


async def signout(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    dash.book.close(request.cookies.get(sessions.COOKIE))
    response = secure(RedirectResponse("/signin", status_code=303))
    response.headers.append(
        "Set-Cookie",
        sessions.cookie_header(sessions.COOKIE, "", secure=is_tls(request), max_age=0),
    )
    return response


async def stop(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    """Stop a run, as ``POST /v1/runs/{id}/stop`` does (scope ``run``); back to its page."""
    viewer.principal.require("run")
    run = dash.store.run(path_id(request, "run_id"), viewer.principal.workspace)
    if run.status.finished:
        raise ConflictError(f"{run.label} already ended ({run.status.value})")
    await dash.server.supervisor.stop(
        run.id, RunStatus.CANCELED, f"{run.label} was stopped by {viewer.principal.name}"
    )
    return secure(RedirectResponse(f"/runs/{run.id}", status_code=303))


async def run_now(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    """Trigger a script with a JSON input, as ``POST /v1/scripts/{id}/runs`` does."""
    script = dash.store.script(path_id(request, "script_id"), viewer.principal.workspace)
    if not viewer.principal.may_trigger(script.id):
        raise ForbiddenError(
            f"token {viewer.principal.name!r} may not trigger {script.spec.name!r}"
        )
    value = await read_json(request, MAX_INPUT)
    input_json = None if value is None else json.dumps(value)
    run = await dash.server.scripts.trigger(
        script,
        trigger_for(viewer.principal.name, viewer.principal.token.scope),
        input_json=input_json,
        parent_run=parent_of(viewer.principal.name),
    )
    if run is None:
        raise ConflictError("this slot already ran")
    return secure(
        JSONResponse({"id": run.id, "status": run.status.value, "url": f"/runs/{run.id}"}, 201)
    )


async def create_token(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    """Create a token; its secret is in this one response and nowhere else, ever."""
    viewer.principal.require("admin")
    form = await read_form(request)
    name = form.get("name", "").strip()
    if not TOKEN_NAME.match(name) or name.startswith(RUN_TOKEN_PREFIX):
        raise InputError(
            f"invalid token name {name!r}",
            "use letters, digits, dots, dashes and underscores (not starting with 'run.')",
        )
    try:
        scope = Scope(form.get("scope", ""))
    except ValueError as e:
        raise InputError(f"unknown scope {form.get('scope')!r}") from e
    script_ref = form.get("script", "").strip()
    script_id = None
    if script_ref:
        if scope is not Scope.TRIGGER:
            raise InputError("a script applies to trigger tokens only", "pick the trigger scope")
        app_name, _, script_name = script_ref.rpartition("/")
        app = dash.store.app(viewer.principal.workspace, app_name)
        script_id = str(dash.store.script_by_name(app.id, script_name).id)
    secret = new_token()
    dash.store.add_token(viewer.principal.workspace, name, secret, scope, script_id)
    return tokens_page(dash, request, viewer, secret=secret, status=201)


async def revoke_token(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    viewer.principal.require("admin")
    name = urllib.parse.unquote(request.path_params["name"])
    if name == viewer.principal.name:
        raise ConflictError("a token cannot revoke itself", "revoke it signed in with another")
    dash.store.revoke_token(viewer.principal.workspace, name)
    return secure(RedirectResponse("/tokens", status_code=303))
