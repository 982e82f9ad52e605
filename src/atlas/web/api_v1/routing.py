"""The /api/v1 route registry: one decorator, typed models in, typed models out.

A route is declared once with :meth:`ApiRouter.route`; from that single declaration the
framework authenticates the caller, enforces the permission, validates path, query and
body against pydantic models (422 with field paths), serialises the returned model, and
describes the operation in the OpenAPI document (:mod:`atlas.web.api_v1.openapi`)::

    @api.route("PUT", "/api/v1/cluster/nodes/{guid}", summary="Edit a traffic node",
               body=TrafficNodeEdit, response=TrafficNodeOut, etag=True, errors=(404,))
    async def edit_node(ctx: ApiContext, body: TrafficNodeEdit) -> TrafficNodeOut:
        ctx.check_if_match(current_revision_tag)
        ...

Handlers take the :class:`ApiContext` first, then by keyword whichever of ``body``,
``query`` and ``path`` the route declares, and return an instance of ``response`` (or
None when ``response`` is None: 204).

Optimistic concurrency (``etag=True``): a GET route calls :meth:`ApiContext.set_etag`;
the answer carries ``ETag`` and honours ``If-None-Match`` (304). A route that changes
something requires ``If-Match`` (428 without it, RFC 6585 §3) and must call
:meth:`ApiContext.check_if_match` with the current tag (412 when stale, RFC 9110
§13.1.1); use :func:`atlas.web.api_v1.errors.conflict` (409) for other clashes with the
current state.
"""

from __future__ import annotations

import logging
import re
import typing
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from atlas.node.app import NODE
from atlas.node.runtime import Node
from atlas.store.api_accounts import Permission
from atlas.web.api_v1.errors import ApiError, validation_error
from atlas.web.auth import PRINCIPAL, AuthFailure, Principal, authenticate

log = logging.getLogger("atlas.api_v1")

HandlerResult = BaseModel | None
Handler = Callable[..., Awaitable[HandlerResult]]
H = TypeVar("H", bound=Handler)

SAFE_METHODS = frozenset({"GET"})
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
JSON_TYPE = "application/json"
_PATH_PARAM = re.compile(r"\{([^{}]*)\}")
_PARAM_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_ETAG_VALUE = re.compile(r"[!#-~]{1,128}")  # RFC 9110 etagc, without the quotes
_ENTITY_TAG = re.compile(r'\s*(W/)?"([!#-~]*)"\s*(?:,|$)')
IF_MATCH_PATTERN = r'^\s*(\*|(W/)?"[!#-~]*"(\s*,\s*(W/)?"[!#-~]*")*)\s*$'
"""What ``If-Match`` accepts (RFC 9110 §13.1.1), for the OpenAPI document."""


class RouteDefinitionError(ValueError):
    """A route was declared wrongly: our own mistake, found at import time."""


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    description: str
    permission: Permission
    status: int
    response: type[BaseModel] | None
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    path_model: type[BaseModel] | None
    etag: bool
    tags: tuple[str, ...]
    errors: tuple[int, ...]
    path_params: tuple[str, ...]

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    @property
    def changes_state(self) -> bool:
        return self.method not in SAFE_METHODS

    @property
    def pattern(self) -> re.Pattern[str]:
        parts = _PATH_PARAM.split(self.path)  # literal, name, literal, …
        return re.compile(
            "".join(re.escape(p) if i % 2 == 0 else "[^/]+" for i, p in enumerate(parts))
        )


@dataclass
class ApiContext:
    """What a handler gets besides its typed inputs."""

    request: web.Request
    route: Route
    principal: Principal
    node: Node
    path_params: Mapping[str, str]
    if_match: tuple[str, ...] | None
    """Entity tags from ``If-Match`` (unquoted; ``("*",)`` for any), None if absent."""
    status: int
    """The success status; a handler may change it (e.g. 201 with a Location header)."""
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    if_match_checked: bool = False

    def set_etag(self, value: str | int) -> None:
        """Tag the answer with the resource's current version (sent as a strong ETag)."""
        text = str(value)
        if not _ETAG_VALUE.fullmatch(text):
            raise ValueError(f"ETag value {text!r}: visible ASCII without quotes or spaces")
        self.etag = text

    def check_if_match(self, current: str | int) -> None:
        """Compare ``If-Match`` with the resource's current tag; 412 when it is stale."""
        self.if_match_checked = True
        now = str(current)
        if self.if_match is None or "*" in self.if_match or now in self.if_match:
            return
        raise ApiError(
            412,
            f"the resource was changed by someone else (its ETag is now \"{now}\", you sent "
            f"{', '.join(repr(t) for t in self.if_match)}); GET it again and reapply "
            "your change",
            code="precondition_failed",
            headers={"ETag": f'"{now}"'},
        )


def _list_like(annotation: object) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    return any(_list_like(a) for a in typing.get_args(annotation)) if origin else False


def _query_input(model: type[BaseModel], request: web.Request) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        info = model.model_fields.get(key)
        if info is not None and _list_like(info.annotation):
            data[key] = values
        elif len(values) > 1:
            raise ApiError(400, f"query parameter {key!r} is given more than once")
        else:
            data[key] = values[0]
    return data


def _parse_if_match(header: str) -> tuple[str, ...]:
    text = header.strip()
    if text == "*":
        return ("*",)
    bad = ApiError(
        400, 'If-Match must be "*" or entity tags in double quotes, as ETag sent them',
        code="invalid_if_match",
    )
    if not text:
        raise bad
    tags: list[str] = []
    pos = 0
    while pos < len(text):
        m = _ENTITY_TAG.match(text, pos)
        if m is None or m.end() == pos:
            raise bad
        if not m.group(1):  # weak tags never match under If-Match (RFC 9110 §13.1.1)
            tags.append(m.group(2))
        pos = m.end()
    return tuple(tags)


def _none_match(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return any(m.group(2) == etag for m in _ENTITY_TAG.finditer(header))


async def _body_input(route: Route, request: web.Request) -> BaseModel:
    assert route.body is not None
    if request.content_type != JSON_TYPE:
        raise ApiError(415, f"send the request body as {JSON_TYPE}")
    raw = await request.read()
    try:
        return route.body.model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
        raise validation_error(exc) from None


class ApiRouter:
    """A registry of /api/v1 routes; :meth:`install` adds them to an aiohttp app."""

    def __init__(self, prefix: str = "/api/v1") -> None:
        self.prefix = prefix
        self.routes: list[Route] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        response: type[BaseModel] | None = None,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        path_model: type[BaseModel] | None = None,
        permission: Permission | None = None,
        status: int | None = None,
        etag: bool = False,
        tags: Collection[str] = (),
        errors: Collection[int] = (),
        description: str | None = None,
    ) -> Callable[[H], H]:
        """Declare a route (see the module docstring).

        ``permission`` defaults to ``config:read`` for GET and ``config:write`` otherwise;
        a route that changes state cannot be opened to read-only accounts. ``errors``
        lists further statuses the handler may raise (404, 409 …) for the document.
        """
        m = method.upper()
        if m not in METHODS:
            raise RouteDefinitionError(f"{path}: method {method!r} is not one of {METHODS}")
        if not path.startswith(self.prefix + "/"):
            raise RouteDefinitionError(f"{path}: /api/v1 paths start with {self.prefix}/")
        params = tuple(_PATH_PARAM.findall(path))
        for p in params:
            if not _PARAM_NAME.fullmatch(p):
                raise RouteDefinitionError(f"{path}: path parameter {{{p}}} is not a plain name")
        if path_model is not None and set(path_model.model_fields) != set(params):
            raise RouteDefinitionError(f"{path}: path_model fields must be exactly {params}")
        if body is not None and m in SAFE_METHODS:
            raise RouteDefinitionError(f"{path}: a GET route takes no body")
        perm = permission or (
            Permission.CONFIG_READ if m in SAFE_METHODS else Permission.CONFIG_WRITE
        )
        if m not in SAFE_METHODS and perm is not Permission.CONFIG_WRITE:
            raise RouteDefinitionError(f"{m} {path}: changes need the config:write permission")
        code = status or (200 if response is not None else 204)

        def decorate(handler: H) -> H:
            if any(r.operation_id == handler.__name__ for r in self.routes):
                raise RouteDefinitionError(f"{path}: operation {handler.__name__} exists already")
            if any(r.method == m and r.path == path for r in self.routes):
                raise RouteDefinitionError(f"{m} {path} is declared twice")
            doc = description if description is not None else (handler.__doc__ or "")
            self.routes.append(
                Route(
                    method=m, path=path, handler=handler, summary=summary,
                    description=" ".join(doc.split()), permission=perm, status=code,
                    response=response, body=body, query=query, path_model=path_model,
                    etag=etag, tags=tuple(tags), errors=tuple(errors), path_params=params,
                )
            )
            return handler

        return decorate

    # --- serving ---------------------------------------------------------------------
    async def dispatch(self, route: Route, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(route, request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return ApiError(exc.status, exc.reason).response()
        except Exception:
            log.exception("api handler failed", extra={"route": f"{route.method} {route.path}"})
            return ApiError(500, "internal error; the node's log has the details").response()

    async def _dispatch(self, route: Route, request: web.Request) -> web.StreamResponse:
        who = await authenticate(request, allow_session=True)
        if isinstance(who, AuthFailure):
            raise ApiError(401, who.message, headers={"WWW-Authenticate": who.challenge})
        request[PRINCIPAL] = who
        if not who.allows(route.permission):
            held = ", ".join(sorted(p.value for p in who.permissions)) or "none"
            raise ApiError(
                403, f"{route.method} {route.path} needs the {route.permission.value} "
                f"permission; this account has: {held}",
            )
        if_match: tuple[str, ...] | None = None
        header = request.headers.get("If-Match")
        if route.etag and route.changes_state:
            if header is None:
                raise ApiError(
                    428,
                    "this change needs an If-Match header with the ETag you last read "
                    "(optimistic concurrency); send If-Match: * to change it regardless",
                )
            if_match = _parse_if_match(header)
        ctx = ApiContext(
            request=request, route=route, principal=who, node=request.config_dict[NODE],
            path_params=dict(request.match_info), if_match=if_match, status=route.status,
        )
        kwargs: dict[str, BaseModel] = {}
        try:
            if route.path_model is not None:
                kwargs["path"] = route.path_model.model_validate(dict(request.match_info))
            if route.query is not None:
                kwargs["query"] = route.query.model_validate(_query_input(route.query, request))
        except ValidationError as exc:
            raise validation_error(exc) from None
        if route.body is not None:
            kwargs["body"] = await _body_input(route, request)
        result = await route.handler(ctx, **kwargs)
        if route.etag and route.changes_state and not ctx.if_match_checked:
            raise RuntimeError(f"{route.operation_id}: an etag route must call check_if_match")
        return self._respond(route, ctx, result)

    def _respond(self, route: Route, ctx: ApiContext, result: HandlerResult) -> web.Response:
        headers = {"Cache-Control": "no-store", **ctx.headers}
        if ctx.etag is not None:
            headers["ETag"] = f'"{ctx.etag}"'
            if not route.changes_state and _none_match(
                ctx.request.headers.get("If-None-Match"), ctx.etag
            ):
                return web.Response(status=304, headers=headers)
        if route.response is None:
            if result is not None:
                raise RuntimeError(f"{route.operation_id} declares no response but returned one")
            return web.Response(status=ctx.status, headers=headers)
        if not isinstance(result, route.response):
            raise RuntimeError(
                f"{route.operation_id} must return {route.response.__name__}, "
                f"not {type(result).__name__}"
            )
        return web.Response(
            body=result.model_dump_json(), status=ctx.status, content_type=JSON_TYPE,
            headers=headers,
        )

    async def not_found(self, request: web.Request) -> web.Response:
        """Anything under the prefix no route matched: 405 if the path exists, else 404."""
        allowed = sorted({r.method for r in self.routes if r.pattern.fullmatch(request.path)})
        if allowed:
            return ApiError(
                405, f"{request.method} is not allowed here; use {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            ).response()
        return ApiError(404, f"no API endpoint {request.path}; see {self.prefix}/openapi.json"
                        ).response()

    def install(self, app: web.Application, extra: Callable[[web.Application], None]) -> None:
        """Add every route, then ``extra`` (e.g. the OpenAPI document), then the catch-all."""
        for route in self.routes:
            app.router.add_route(route.method, route.path, _bind(self, route))
        extra(app)
        app.router.add_route("*", self.prefix + "/{tail:.*}", self.not_found)


RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bind(router: ApiRouter, route: Route) -> RequestHandler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await router.dispatch(route, request)

    handler.__name__ = route.operation_id
    return handler


api = ApiRouter()
"""The registry every /api/v1 module declares its routes on."""
