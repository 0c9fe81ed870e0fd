"""The OpenAPI 3.1 document of the API, made from the route table so the two cannot drift.

Every route declares its parameters (typed, with the bounds the handlers enforce), its body and
the schema of each response; :data:`OPERATIONS` is keyed by the route table's method and path,
and :func:`document` fails on a route it does not describe (a test builds the document).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hgrun import __version__
from hgrun.models import SIZES, RunStatus, Scope, TriggerKind
from hgrun.server.api.requests import MAX_INT, RouteSpec

PUBLIC = ("/v1/health", "/v1/openapi.json")
"""The paths that need no token."""

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: bool = True, **properties: Schema) -> Schema:
    """An object with exactly these ``properties`` (all of them present when ``required``)."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(properties)
    return schema


def _null(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
STRS: Schema = {"type": "array", "items": STR}

SCHEMAS: dict[str, Schema] = {
    "Error": _obj(error=STR, message=STR, hint=_null(STR)),
    "Health": _obj(status=STR, version=STR, scheduler=_obj(ticks=INT)),
    "App": _obj(id=INT, name=STR, created=NUM),
    "Release": _obj(
        id=INT,
        version=INT,
        image=STR,
        context_hash=STR,
        process_types=STRS,
        env_keys=STRS,
        description=STR,
        created=NUM,
    ),
    "Run": _obj(
        id=INT,
        label=STR,
        app=_null(STR),
        release=INT,
        command=STRS,
        process_type=_null(STR),
        tty=BOOL,
        detached=BOOL,
        size=STR,
        timeout=NUM,
        env_keys=STRS,
        trigger=_obj(kind=STR, name=STR),
        script=_null(STR),
        parent_run=_null(INT),
        status={"type": "string", "enum": [s.value for s in RunStatus]},
        exit_code=_null(INT),
        node=_null(STR),
        oom=BOOL,
        error=_null(STR),
        created=NUM,
        started=_null(NUM),
        finished=_null(NUM),
        duration=_null(NUM),
        # Waiting for a slot of the server (--max-runs): runs ahead (0: next), and the cap.
        queue=_null(_obj(position=INT, max_runs=INT)),
    ),
    "Script": _obj(
        id=INT,
        app=STR,
        name=STR,
        command=_null(STR),
        process=_null(STR),
        cron=_null(STR),
        timezone=STR,
        next_fire=_null(NUM),
        concurrency=STR,
        catchup=STR,
        timeout=NUM,
        size=_null(STR),
        history=INT,
        notify={"type": "object"},
        last_run=_null(_ref("Run")),
    ),
    "Token": _obj(name=STR, scope=STR, script=_null(STR), created=NUM),
    "AuditRecord": _obj(
        id=INT,
        time=NUM,
        run=_null(INT),
        action=STR,
        payload=_null({"type": "object"}),
        problem=_null(STR),
    ),
    "Config": {"type": "object", "additionalProperties": STR},
    "Node": _obj(
        name=STR,
        id=STR,
        role=STR,
        state=STR,
        availability=STR,
        endpoint=_null(STR),
        source={"type": "string", "enum": ["registered", "label", "docker-host", "none"]},
        attach=BOOL,
        problem=_null(STR),
        runs={"type": "array", "items": INT},
    ),
}


def _list(name: str) -> Schema:
    return {"type": "array", "items": _ref(name)}


def _query(name: str, schema: Schema, description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, **(
        {"description": description} if description else {}
    )}  # fmt: skip


def _count(maximum: int) -> Schema:
    return {"type": "integer", "minimum": 0, "maximum": maximum}


# The name rules of hgrun.models and tokens.py, as ECMA-262 patterns (where "$" is the end).
APP_PATTERN = "^[a-z][a-z0-9-]{0,62}$"
TOKEN_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NODE_PATTERN = TOKEN_PATTERN
ENDPOINT_PATTERN = "^tcp://[A-Za-z0-9.:\\[\\]-]+:[0-9]{1,5}$"
ENV_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"
ID: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_INT}
FLAG: Schema = {"type": "string", "enum": ["1", "0", "true", "false"]}
NDJSON = {"application/x-ndjson": {"schema": STR}}
TAR = {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}


def _json_body(schema: Schema, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _operations() -> dict[tuple[str, str], dict[str, Any]]:
    """What each route takes and answers, beyond its summary: keyed by (method, path)."""
    from hgrun.server.api.runs import MAX_LOG_LINES, MAX_RUNS_PAGE, MAX_STDERR_TAIL
    from hgrun.server.api.scripts import MAX_SCRIPT_RUNS_PAGE
    from hgrun.server.api.tokens import MAX_AUDIT_PAGE

    env = {"type": "object", "propertyNames": {"pattern": ENV_PATTERN}, "additionalProperties": STR}
    return {
        ("GET", "/v1/health"): {"200": _ref("Health")},
        ("GET", "/v1/openapi.json"): {"200": {"type": "object"}},
        ("GET", "/v1/apps"): {"200": _list("App")},
        ("POST", "/v1/apps"): {
            "body": _json_body(_obj(name={"type": "string", "pattern": APP_PATTERN})),
            "201": _ref("App"),
        },
        ("GET", "/v1/apps/{app}"): {
            "200": {"allOf": [_ref("App"), _obj(release=_null(_ref("Release")))]}
        },
        ("GET", "/v1/apps/{app}/config"): {"200": _ref("Config")},
        ("PATCH", "/v1/apps/{app}/config"): {
            "body": _json_body(
                {
                    "type": "object",
                    "propertyNames": {"pattern": ENV_PATTERN},
                    "additionalProperties": _null(STR),
                }
            ),
            "200": _ref("Config"),
        },
        ("GET", "/v1/apps/{app}/builds/{hash}"): {"200": _obj(context_hash=STR, image=STR)},
        ("POST", "/v1/apps/{app}/builds"): {
            "params": [
                {
                    "name": "X-Context-Hash",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                },
                _query("network", STR),
                _query("dockerfile", STR),
            ],
            "body": {"required": True, "content": TAR},
            "200": NDJSON,
        },
        ("GET", "/v1/apps/{app}/releases"): {"200": _list("Release")},
        ("POST", "/v1/apps/{app}/releases"): {
            "body": _json_body(
                _obj(required=False, context_hash=STR, procfile=_null(STR), manifest=STR)
            ),
            "200": {"allOf": [_ref("Release"), _obj(unchanged=BOOL)]},
            "201": _ref("Release"),
        },
        ("POST", "/v1/apps/{app}/releases/rollback"): {
            "body": _json_body(_obj(required=False, version=_null(INT)), required=False),
            "201": _ref("Release"),
        },
        ("DELETE", "/v1/apps/{app}"): {"200": _obj(name=STR, destroyed=BOOL)},
        ("POST", "/v1/apps/{app}/runs"): {
            "body": _json_body(
                _obj(
                    required=False,
                    command={"type": "array", "items": STR, "minItems": 1},
                    env=_null(env),
                    size=_null({"type": "string", "enum": list(SIZES)}),
                    timeout=_null({"anyOf": [STR, {"type": "number", "exclusiveMinimum": 0}]}),
                    detached=_null(BOOL),
                    tty=_null(BOOL),
                    uploads=_null(BOOL),
                )
            ),
            "201": _ref("Run"),
        },
        ("GET", "/v1/apps/{app}/runs"): {
            "params": [
                _query(
                    "status",
                    {
                        "type": "array",
                        "items": {"type": "string", "enum": [s.value for s in RunStatus]},
                    },
                ),
                _query("active", FLAG),
                _query("trigger", {"type": "string", "enum": [t.value for t in TriggerKind]}),
                _query("limit", _count(MAX_RUNS_PAGE)),
            ],
            "200": _list("Run"),
        },
        ("GET", "/v1/apps/{app}/logs"): {
            "params": [
                _query("run", ID),
                _query("limit", _count(MAX_LOG_LINES)),
                _query("tail", _count(MAX_LOG_LINES)),
                _query("after", ID, "the cursor of the last line read"),
                _query("follow", FLAG),
            ],
            "200": NDJSON,
        },
        ("GET", "/v1/runs/{run_id}"): {
            "params": [_query("stderr_tail", _count(MAX_STDERR_TAIL))],
            "200": {"allOf": [_ref("Run"), _obj(required=False, stderr_tail=STRS)]},
        },
        ("POST", "/v1/runs/{run_id}/stop"): {"200": _ref("Run")},
        ("PUT", "/v1/runs/{run_id}/files"): {
            "body": {"required": True, "content": TAR},
            "200": _obj(run=INT, bytes=INT),
        },
        ("GET", "/v1/apps/{app}/scripts"): {"200": _list("Script")},
        ("POST", "/v1/scripts/{script_id}/runs"): {
            "params": [
                _query("detached", FLAG),
                _query("tty", FLAG),
                _query("via", {"type": "string", "enum": ["api", "cli"]}),
            ],
            "body": _json_body({}, required=False),
            "201": _ref("Run"),
        },
        ("GET", "/v1/scripts/{script_id}/runs"): {
            "params": [
                _query("limit", _count(MAX_SCRIPT_RUNS_PAGE)),
                _query("before", ID),
            ],
            "200": _list("Run"),
        },
        ("GET", "/v1/tokens"): {"200": _list("Token")},
        ("POST", "/v1/tokens"): {
            "body": _json_body(
                _obj(
                    required=False,
                    name={"type": "string", "pattern": TOKEN_PATTERN},
                    scope={"type": "string", "enum": [s.value for s in Scope]},
                    script=_null(STR),
                )
            ),
            "201": {"allOf": [_ref("Token"), _obj(token=STR)]},
        },
        ("DELETE", "/v1/tokens/{name}"): {"200": _obj(name=STR, revoked=BOOL)},
        ("GET", "/v1/audit"): {
            "params": [
                _query("run", ID),
                _query("limit", _count(MAX_AUDIT_PAGE)),
                _query("before", ID),
            ],
            # A page of records, and the problems of the whole log (verification reads it all).
            "200": _obj(
                records=_list("AuditRecord"),
                problems={"type": "array", "items": _obj(id=INT, problem=STR)},
                next=_null(INT),
                checked=INT,
            ),
        },
        ("GET", "/v1/nodes"): {"200": _list("Node")},
        ("POST", "/v1/nodes"): {
            "body": _json_body(
                _obj(
                    required=False,
                    name={"type": "string", "pattern": NODE_PATTERN},
                    endpoint={"type": "string", "pattern": ENDPOINT_PATTERN},
                )
            ),
            "201": {"anyOf": [_ref("Node"), _obj(name=STR, endpoint=STR, source=STR)]},
        },
        ("DELETE", "/v1/nodes/{name}"): {"200": _obj(name=STR, removed=BOOL)},
    }


def query_parameters(routes: Iterable[RouteSpec]) -> dict[tuple[str, str], frozenset[str]]:
    """The query parameters each route takes, by its (method, path) in the route table."""
    operations = _operations()
    return {
        (method, path): frozenset(
            p["name"]
            for p in operations.get((method, path.replace(":int", "")), {}).get("params", [])
            if p["in"] == "query"
        )
        for method, path, _handler, _summary in routes
    }


def _response(schema: Schema) -> dict[str, Any]:
    if schema is NDJSON:
        return {"description": "NDJSON, one JSON object a line", "content": NDJSON}
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


def document(routes: Iterable[RouteSpec]) -> dict[str, Any]:
    """The document for ``routes`` plus the attach WebSocket (not a plain route).

    A route :func:`_operations` does not describe gets an empty schema (no check);
    ``tests/test_limits.py`` fails on such a route.
    """
    operations = _operations()
    paths: dict[str, dict[str, Any]] = {}
    for method, path, _handler, summary in routes:
        clean = path.replace(":int", "")
        # A route added without its description still gets one (a test wants them all).
        spec = operations.get((method, clean), {"200": {}})
        params = [
            {
                "name": part[1:-1],
                "in": "path",
                "required": True,
                "schema": ID if part.endswith(":int}") else STR,
            }
            for part in path.split("/")
            if part.startswith("{")
        ]
        for param in params:
            param["name"] = param["name"].removesuffix(":int")
        responses = {
            status: _response(schema) for status, schema in spec.items() if status.isdigit()
        }
        responses["default"] = {"$ref": "#/components/responses/Error"}
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": method.lower() + "".join(c if c.isalnum() else "_" for c in clean),
            "parameters": params + spec.get("params", []),
            "responses": responses,
            **({} if path in PUBLIC else {"security": [{"bearer": []}]}),
        }
        if "body" in spec:
            operation["requestBody"] = spec["body"]
        paths.setdefault(clean, {})[method.lower()] = operation
    paths["/v1/runs/{run_id}/attach"] = {
        "get": {
            "summary": "WebSocket attach; subprotocol v5.channel.k8s.io or v4.channel.k8s.io [run]",
            "operationId": "attach_run",
            "parameters": [{"name": "run_id", "in": "path", "required": True, "schema": ID}],
            "responses": {
                "101": {"description": "Switching Protocols"},
                "default": {"$ref": "#/components/responses/Error"},
            },
            "security": [{"bearer": []}],
            # Not plain HTTP: fuzzers that follow the document leave it alone.
            "x-websocket": True,
        }
    }
    run_body = operations[("POST", "/v1/apps/{app}/runs")]["body"]["content"]["application/json"]
    paths["/v1/apps/{app}/runs/attach"] = {
        "get": {
            "summary": (
                "WebSocket: create an attached run and attach to it in one handshake; header"
                " X-Hgrun-Run is the body of POST /v1/apps/{app}/runs as base64url JSON (not"
                " detached, no uploads), and the 101 answer's X-Hgrun-Run the Run made, likewise;"
                " then as /v1/runs/{run_id}/attach [run]"
            ),
            "operationId": "create_and_attach_run",
            "parameters": [
                {"name": "app", "in": "path", "required": True, "schema": STR},
                {
                    "name": "X-Hgrun-Run",
                    "in": "header",
                    "required": True,
                    "schema": {
                        "type": "string",
                        "contentEncoding": "base64url",
                        "contentMediaType": "application/json",
                        "contentSchema": run_body["schema"],
                    },
                },
            ],
            "responses": {
                "101": {
                    "description": "Switching Protocols; X-Hgrun-Run: the Run, base64url JSON",
                    "headers": {
                        "X-Hgrun-Run": {
                            "schema": {
                                "type": "string",
                                "contentEncoding": "base64url",
                                "contentMediaType": "application/json",
                                "contentSchema": _ref("Run"),
                            }
                        }
                    },
                },
                "default": {"$ref": "#/components/responses/Error"},
            },
            "security": [{"bearer": []}],
            "x-websocket": True,
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "hgrun", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
            "responses": {
                "Error": {
                    "description": "An error: bad input (4xx) or the server's fault (5xx)",
                    "content": {"application/json": {"schema": _ref("Error")}},
                }
            },
        },
    }
