"""The node's aiohttp application: one factory, features plugged in by ``setup(app)``."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from atlas.node.runtime import Node

NODE: web.AppKey[Node] = web.AppKey("atlas_node", Node)

# Each module exposes ``setup(app: web.Application) -> None``; order is routing order.
FEATURES: tuple[str, ...] = (
    "atlas.web.health",
    "atlas.web.oauth",
    "atlas.web.command_api",
    "atlas.web.api_v1",
    "atlas.web.login",
    "atlas.node.internal_api",
    "atlas.node.health_monitor",
    "atlas.broker.service",  # the master's broker (creates the stream signing key)
    "atlas.relay.endpoint",
    "atlas.relay.reporting",  # stream connections reported to the master
    "atlas.web.control_ws",  # GET /client/control
)

MAX_REQUEST_BYTES = 4 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    h = response.headers
    h.setdefault("Strict-Transport-Security", "max-age=31536000")
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "same-origin")
    h.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
        "script-src 'self'; connect-src 'self' wss:; frame-ancestors 'none'",
    )
    return response


def build_app(node: Node) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[security_headers])
    app[NODE] = node

    async def on_startup(_app: web.Application) -> None:
        await node.start_background()

    async def on_shutdown(_app: web.Application) -> None:
        await node.stop_background()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    for name in FEATURES:
        importlib.import_module(name).setup(app)
    return app
