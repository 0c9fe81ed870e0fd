"""The OpenAPI 3.1 document of the API, made from the route table so the two cannot drift."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hgrun import __version__
from hgrun.server.api.requests import RouteSpec

PUBLIC = ("/v1/health", "/v1/openapi.json")
"""The paths that need no token."""


def document(routes: Iterable[RouteSpec]) -> dict[str, Any]:
    """The document for ``routes`` plus the attach WebSocket (not a plain route)."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, _handler, summary in routes:
        clean = path.replace(":int", "")
        params = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in clean.split("/")
            if part.startswith("{")
        ]
        paths.setdefault(clean, {})[method.lower()] = {
            "summary": summary,
            "parameters": params,
            "responses": {"default": {"$ref": "#/components/responses/Error"}},
            **({} if path in PUBLIC else {"security": [{"bearer": []}]}),
        }
    paths["/v1/runs/{run_id}/attach"] = {
        "get": {
            "summary": "WebSocket attach; subprotocol v5.channel.k8s.io or v4.channel.k8s.io [run]",
            "parameters": [
                {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {"101": {"description": "Switching Protocols"}},
            "security": [{"bearer": []}],
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "hgrun", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "An error",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "error": {"type": "string"},
                                    "message": {"type": "string"},
                                    "hint": {"type": ["string", "null"]},
                                },
                            }
                        }
                    },
                }
            },
        },
    }
