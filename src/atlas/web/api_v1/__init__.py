"""``/api/v1``: the JSON REST API, described by ``/api/v1/openapi.json``.

Add endpoints in a module of this package (one per resource: ``node.py``,
``cluster.py`` …) with the :data:`api` decorator and list the module in
:data:`ROUTE_MODULES`. See :mod:`atlas.web.api_v1.routing` for what a route gets.
"""

from __future__ import annotations

import importlib
from typing import Any

from aiohttp import web

from atlas import SOFTWARE_VERSION
from atlas.web.api_v1.errors import ApiError, ErrorBody, conflict, not_found, validation_error
from atlas.web.api_v1.openapi import build_document
from atlas.web.api_v1.routing import ApiContext, ApiRouter, Route, api

__all__ = [
    "ROUTE_MODULES",
    "ApiContext",
    "ApiError",
    "ApiRouter",
    "ErrorBody",
    "Route",
    "api",
    "conflict",
    "not_found",
    "setup",
    "validation_error",
]

OPENAPI_PATH = "/api/v1/openapi.json"
TITLE = "Atlas API"

# Modules whose import declares routes on ``api``; order is the document's order.
ROUTE_MODULES: tuple[str, ...] = (
    "atlas.web.api_v1.node",
    "atlas.web.api_v1.cluster",
    "atlas.web.api_v1.sessions",
)

OPENAPI_DOC: web.AppKey[dict[str, Any]] = web.AppKey("atlas_openapi", dict)


def _openapi_path_item() -> dict[str, Any]:
    return {
        "get": {
            "operationId": "get_openapi",
            "summary": "This document",
            "description": "The OpenAPI 3.1 description of /api/v1; needs no token.",
            "security": [],
            "tags": ["meta"],
            "responses": {
                "200": {
                    "description": "The OpenAPI document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_DOC])


def setup(app: web.Application) -> None:
    for name in ROUTE_MODULES:
        importlib.import_module(name)
    app[OPENAPI_DOC] = build_document(
        api.routes, title=TITLE, version=SOFTWARE_VERSION,
        extra_paths={OPENAPI_PATH: _openapi_path_item()},
    )

    def add_openapi(a: web.Application) -> None:
        a.router.add_get(OPENAPI_PATH, openapi_json)

    api.install(app, add_openapi)
