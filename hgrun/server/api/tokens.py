"""API tokens of a workspace, and its audit log: the admin scope's resources."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from hgrun.errors import ConflictError, InputError, NotFoundError
from hgrun.models import Scope, Token
from hgrun.server.api.requests import field, int_param, json_body, principal
from hgrun.server.api.responses import JSONResponse
from hgrun.server.api.views import audit_json, token_json
from hgrun.server.auth import RUN_TOKEN_PREFIX, new_token
from hgrun.server.workers import run_in

if TYPE_CHECKING:
    from hgrun.server.api import Server

MAX_AUDIT_PAGE = 10_000  # records of one GET /v1/audit
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


async def list_tokens(server: Server, request: Request) -> Response:
    caller = principal(server, request, "admin")
    tokens = server.store.tokens(caller.workspace)
    return JSONResponse([_token_json(server, t) for t in tokens])


def _token_json(server: Server, token: Token) -> dict[str, Any]:
    """A token with its script as ``APP/SCRIPT`` (the id is kept as ``script_id``)."""
    body = token_json(token)
    body["script_id"] = token.script
    if token.script is not None:
        try:
            script = server.store.script(int(token.script), token.workspace)
            body["script"] = f"{server.store.app_by_id(script.app_id).name}/{script.spec.name}"
        except (NotFoundError, ValueError):
            body["script"] = f"(removed script {token.script})"
    return body


async def create_token(server: Server, request: Request) -> Response:
    caller = principal(server, request, "admin")
    body = await json_body(request)
    name = field(body, "name", str) or ""
    if not TOKEN_NAME.match(name) or name.startswith(RUN_TOKEN_PREFIX):
        raise InputError(
            f"invalid token name {name!r}",
            "use letters, digits, dots, dashes and underscores (not starting with 'run.')",
        )
    try:
        scope = Scope(field(body, "scope", str) or "")
    except ValueError as e:
        raise InputError(
            f"unknown scope {body.get('scope')!r}", f"scopes: {', '.join(s.value for s in Scope)}"
        ) from e
    script_ref = field(body, "script", str)
    script_id = None
    if script_ref:
        if scope is not Scope.TRIGGER:
            raise InputError("--script applies to trigger tokens only", "add --scope trigger")
        app_name, _, script_name = script_ref.rpartition("/")
        if not app_name:
            raise InputError(f"script {script_ref!r}: expected APP/SCRIPT")
        app = server.store.app(caller.workspace, app_name)
        script_id = str(server.store.script_by_name(app.id, script_name).id)
    secret = new_token()
    token = server.store.add_token(caller.workspace, name, secret, scope, script_id)
    return JSONResponse({**_token_json(server, token), "token": secret}, status_code=201)


async def revoke_token(server: Server, request: Request) -> Response:
    caller = principal(server, request, "admin")
    name = request.path_params["name"]
    if name == caller.name:
        raise ConflictError("a token cannot revoke itself", "revoke it with another admin token")
    server.store.revoke_token(caller.workspace, name)
    return JSONResponse({"name": name, "revoked": True})


async def audit_log(server: Server, request: Request) -> Response:
    caller = principal(server, request, "admin")
    query = request.query_params
    run_id = int_param(query.get("run"), "run", 0) or None
    limit = max(1, int_param(query.get("limit"), "limit", 200, MAX_AUDIT_PAGE))
    before = int_param(query.get("before"), "before", 0) or None
    # Verification reads the whole log: a worker thread's job, never the event loop's.
    page = await run_in(
        server.workers.reads, server.audit.page, caller.workspace, run_id, limit, before
    )
    return JSONResponse(
        {
            "records": [audit_json(r) for r in page.records],
            "problems": [{"id": p.id, "problem": p.problem} for p in page.problems],
            "next": page.next,
            "checked": page.checked,
        }
    )
