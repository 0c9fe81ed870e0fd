"""Scripts: list an app's scripts, trigger one, list a script's runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from hgrun.errors import ConflictError, ForbiddenError, InputError
from hgrun.models import ScriptRecord
from hgrun.server.api.requests import (
    body_bytes,
    bool_param,
    int_param,
    parse_json,
    path_app,
    path_id,
)
from hgrun.server.api.responses import JSONResponse
from hgrun.server.api.views import run_json, script_json
from hgrun.server.auth import authenticate
from hgrun.server.scripts import MAX_INPUT, parent_of, trigger_for

if TYPE_CHECKING:
    from hgrun.server.api import Server


MAX_SCRIPT_RUNS_PAGE = 1000  # runs of one GET /v1/scripts/N/runs


def _script_json(server: Server, script: ScriptRecord, app_name: str):
    last = server.store.script_runs(script.id, limit=1)
    return script_json(script, app_name, last[0] if last else None, server.clock())


async def list_scripts(server: Server, request: Request) -> Response:
    """The app's scripts; a trigger token sees only those it may trigger (so CI can find them)."""
    caller = authenticate(server.store, request.headers)
    app = path_app(server, caller, request)
    scripts = [
        s
        for s in server.store.scripts(caller.workspace, app_id=app.id)
        if caller.may_read_run(s.id)
    ]
    return JSONResponse([_script_json(server, s, app.name) for s in scripts])


async def trigger_script(server: Server, request: Request) -> Response:
    """Start a script; the JSON body, if any, becomes HOSTINGGURU_RUN_INPUT in the container."""
    caller = authenticate(server.store, request.headers)
    script = server.store.script(path_id(request, "script_id"), caller.workspace)
    if not caller.may_trigger(script.id):
        raise ForbiddenError(
            f"token {caller.name!r} may not trigger script {script.name!r}",
            "use a token with the trigger scope for this script",
        )
    body = await body_bytes(request, MAX_INPUT)
    input_json = None
    if body.strip():
        parse_json(body, "the run input")
        # Byte for byte as sent (validated, never re-serialised): a signature over the
        # body still verifies against HOSTINGGURU_RUN_INPUT.
        input_json = body.decode("utf-8")
    query = request.query_params
    detached = bool_param(query.get("detached"), "detached", True)
    via = query.get("via")
    if via not in (None, "cli", "api"):
        raise InputError(f"query parameter 'via' must be cli or api, not {via!r}")
    # `via` is still accepted from older CLIs, and ignored: who started a run is the token's to
    # say, so an API token can never record its run as a person's.
    parent = parent_of(caller.name)
    run = await server.scripts.trigger(
        script,
        trigger_for(caller.name, caller.token.scope),
        input_json=input_json,
        parent_run=parent,
        detached=detached,
        tty=bool_param(query.get("tty"), "tty"),
    )
    if run is None:  # only for cron slots
        raise ConflictError("this slot already ran")
    app = server.store.app_by_id(script.app_id)
    return JSONResponse(
        run_json(run, app.name, server.supervisor.slots.info(run.id)), status_code=201
    )


async def list_script_runs(server: Server, request: Request) -> Response:
    caller = authenticate(server.store, request.headers)
    script = server.store.script(path_id(request, "script_id"), caller.workspace)
    if not caller.may_read_run(script.id):
        raise ForbiddenError(f"token {caller.name!r} may not read runs of {script.name!r}")
    query = request.query_params
    limit = int_param(query.get("limit"), "limit", 50, MAX_SCRIPT_RUNS_PAGE)
    before = int_param(query.get("before"), "before", 0) or None
    app = server.store.app_by_id(script.app_id)
    runs = server.store.script_runs(script.id, limit=limit, before=before)
    return JSONResponse([run_json(r, app.name) for r in runs])
