"""The OpenAPI 3.1 document of /api/v1, generated from the route registry.

Every schema comes from the pydantic models the routes declare (input models in
validation mode, answers in serialisation mode), collected under ``components/schemas``
by :func:`pydantic.json_schema.models_json_schema`, so the document cannot drift from
what the code accepts and returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from atlas.store.api_accounts import Permission
from atlas.web.api_v1.errors import ErrorBody
from atlas.web.api_v1.routing import IF_MATCH_PATTERN, Route
from atlas.web.oauth import TOKEN_PATH

REF = "#/components/schemas/{model}"
OPENAPI_VERSION = "3.1.0"

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request is malformed (bad JSON, repeated parameter …)."),
    401: ("Unauthorized", "No access token, or it is unknown or expired."),
    403: ("Forbidden", "The caller lacks the permission this operation needs."),
    404: ("NotFound", "No such resource."),
    409: ("Conflict", "The request clashes with the current state."),
    412: ("PreconditionFailed", "If-Match does not match the current ETag: re-read first."),
    415: ("UnsupportedMediaType", "The body must be application/json."),
    422: ("ValidationFailed", "An input does not validate; `fields` names each problem."),
    428: ("PreconditionRequired", "This change needs an If-Match header."),
}

DESCRIPTION = """\
JSON REST API of an Atlas node: everything the /login cluster page can do.

**Authentication.** Request a bearer token with an API account's client credentials at
`POST /oauth2/token` (`grant_type=client_credentials`, HTTP Basic) and send it as
`Authorization: Bearer <token>`. Reading needs `config:read`, changing needs
`config:write`. Same-site web UI calls may use the /login session cookie together with
an `X-CSRF-Token` header instead.

**Errors** always have the shape `{"error": {"code", "message", "fields"?}}`.

**Concurrency.** Resources with an `ETag` must be changed with `If-Match: "<etag>"`
(428 without it, 412 if it is stale).
"""


def _schema_name(ref: dict[str, Any]) -> str:
    return str(ref["$ref"]).rsplit("/", 1)[-1]


def _models(routes: Iterable[Route]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    seen: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(ErrorBody, "serialization"): None}
    for r in routes:
        for model in (r.body, r.query, r.path_model):
            if model is not None:
                seen[(model, "validation")] = None
        if r.response is not None:
            seen[(r.response, "serialization")] = None
    return list(seen)


def _error_responses() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, text in _ERRORS.values():
        out[name] = {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}},
        }
    out["Unauthorized"]["headers"] = {
        "WWW-Authenticate": {
            "description": "Bearer challenge (RFC 6750 §3).",
            "schema": {"type": "string"},
        }
    }
    return out


def _parameters(schema: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """One OpenAPI parameter per property of a flat model's schema."""
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        p: dict[str, Any] = {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": {k: v for k, v in prop.items() if k != "description"},
        }
        if "description" in prop:
            p["description"] = prop["description"]
        params.append(p)
    return params


Refs = Mapping[tuple[Any, JsonSchemaMode], dict[str, Any]]


def _operation(route: Route, refs: Refs, schemas: dict[str, Any]) -> dict[str, Any]:
    def ref_of(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    def schema_of(model: type[BaseModel]) -> dict[str, Any]:
        found: dict[str, Any] = schemas[_schema_name(ref_of(model, "validation"))]
        return found

    description = route.description
    note = f"Needs the `{route.permission.value}` permission."
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "description": f"{description}\n\n{note}" if description else note,
        "security": [{"bearerAuth": []}, {"oauth2": [route.permission.value]}],
        "parameters": [],
        "responses": {},
    }
    if route.tags:
        op["tags"] = list(route.tags)
    if route.path_model is not None:
        op["parameters"] += _parameters(schema_of(route.path_model), "path")
    else:
        op["parameters"] += [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in route.path_params
        ]
    if route.query is not None:
        op["parameters"] += _parameters(schema_of(route.query), "query")
    if route.etag and route.changes_state:
        op["parameters"].append({
            "name": "If-Match",
            "in": "header",
            "required": True,
            "description": 'The ETag last read, e.g. "rev-12"; "*" to change regardless.',
            "schema": {"type": "string", "pattern": IF_MATCH_PATTERN},
        })
    if not op["parameters"]:
        del op["parameters"]
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref_of(route.body, "validation")}},
        }

    ok: dict[str, Any] = {"description": route.summary}
    if route.response is not None:
        ok["content"] = {"application/json": {"schema": ref_of(route.response, "serialization")}}
    if route.etag:
        ok["headers"] = {
            "ETag": {"description": "Current version of the resource.",
                     "schema": {"type": "string"}}
        }
    responses: dict[str, Any] = {str(route.status): ok}
    if route.etag and not route.changes_state:
        responses["304"] = {"description": "Not modified (If-None-Match matched the ETag)."}
    codes = {401, 403, *route.errors}
    if route.body is not None:
        codes |= {400, 415, 422}
    if route.query is not None:
        codes |= {400, 422}
    if route.path_params:
        codes |= {404}
    if route.path_model is not None:
        codes |= {422}
    if route.etag and route.changes_state:
        codes |= {400, 412, 428}
    for code in sorted(codes):
        name = _ERRORS[code][0] if code in _ERRORS else None
        if name is None:
            responses[str(code)] = {
                "description": "Error.",
                "content": {
                    "application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}
                },
            }
        else:
            responses[str(code)] = {"$ref": f"#/components/responses/{name}"}
    op["responses"] = responses
    return op


def build_document(
    routes: list[Route], *, title: str, version: str, extra_paths: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document for ``routes``."""
    refs, defs = models_json_schema(_models(routes), ref_template=REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    paths: dict[str, Any] = dict(extra_paths or {})
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs, schemas)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": _error_responses(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": f"An access token from {TOKEN_PATH}.",
                },
                "oauth2": {
                    "type": "oauth2",
                    "description": "Client credentials of an API account "
                    "(/login → Management → API Configuration, or `atlas api-account`).",
                    "flows": {
                        "clientCredentials": {
                            "tokenUrl": TOKEN_PATH,
                            "scopes": {p.value: p.description for p in Permission},
                        }
                    },
                },
            },
        },
        "security": [{"bearerAuth": []}, {"oauth2": []}],
    }
