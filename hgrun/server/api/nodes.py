"""The engine's nodes (``hgrun nodes``) and the endpoints an operator registers for them.

Server wide, like the engine, so the admin scope only. On one Docker engine there is one node,
the engine itself, and nothing to register.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from hgrun.engine.swarmnodes import NodeView
from hgrun.errors import HgrunError, InputError
from hgrun.server.api.requests import field, json_body, principal
from hgrun.server.api.responses import JSONResponse
from hgrun.server.workers import run_in

if TYPE_CHECKING:
    from hgrun.engine.swarm import SwarmEngine
    from hgrun.server.api import Server

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
ENDPOINT = re.compile(r"^tcp://[A-Za-z0-9.:\[\]-]+:[0-9]{1,5}\Z")
LOCAL = "local"  # the one node of a single Docker engine


def _swarm(server: Server) -> SwarmEngine | None:
    from hgrun.engine.swarm import SwarmEngine

    return server.engine if isinstance(server.engine, SwarmEngine) else None


def _local(server: Server) -> NodeView:
    problem = None
    try:
        server.engine.info()
    except HgrunError as e:
        problem = e.message
    return NodeView(
        id="",
        name=LOCAL,
        role="single",
        state="ready" if problem is None else "down",
        availability="active",
        endpoint=str(getattr(server.engine, "host", "")) or None,
        source="docker-host",
        attach=problem is None,
        problem=problem,
    )


def node_json(view: NodeView, runs: list[int]) -> dict[str, Any]:
    return {
        "name": view.name,
        "id": view.id,
        "role": view.role,
        "state": view.state,
        "availability": view.availability,
        "endpoint": view.endpoint,
        "source": view.source,
        "attach": view.attach,
        "problem": view.problem,
        "runs": runs,
    }


async def list_nodes(server: Server, request: Request) -> Response:
    caller = principal(server, request, "admin")
    swarm = _swarm(server)
    if swarm is None:
        views = [await run_in(server.workers.reads, _local, server)]
    else:
        views = await run_in(server.workers.reads, swarm.nodes.views)
    active = [r for r in server.store.active_runs() if r.workspace == caller.workspace]
    return JSONResponse(
        [node_json(v, [r.id for r in active if (r.node or LOCAL) == v.name]) for v in views]
    )


async def add_node(server: Server, request: Request) -> Response:
    caller = principal(server, request, "admin")
    body = await json_body(request)
    name = field(body, "name", str) or ""
    endpoint = field(body, "endpoint", str) or ""
    if not NODE_NAME.match(name):
        raise InputError(f"invalid node name {name!r}", "the name `hgrun nodes` shows")
    if not ENDPOINT.match(endpoint):
        raise InputError(
            f"invalid endpoint {endpoint!r}: expected tcp://HOST:PORT", "e.g. tcp://10.0.0.12:2376"
        )
    swarm = _swarm(server)
    if swarm is None:
        raise InputError(
            "nodes:add applies to --engine swarm only",
            "one Docker engine is reached at --docker-host",
        )
    # The endpoint must answer and be that node's own engine before it is stored.
    await run_in(server.workers.reads, swarm.nodes.resolve, name, endpoint)
    server.store.set_node_endpoint(name, endpoint, caller.name)
    views = await run_in(server.workers.reads, swarm.nodes.views)
    body = {"name": name, "endpoint": endpoint, "source": "registered"}
    for view in views:
        if view.name == name:
            body = node_json(view, [])
    return JSONResponse(body, status_code=201)


async def remove_node(server: Server, request: Request) -> Response:
    principal(server, request, "admin")
    name = request.path_params["name"]
    server.store.remove_node_endpoint(name)
    swarm = _swarm(server)
    if swarm is not None:
        swarm.nodes.forget(name)
    return JSONResponse({"name": name, "removed": True})
