"""``/healthz`` and ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from atlas.node.app import NODE


async def healthz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return web.json_response(
        {
            "status": "ok",
            "guid": node.identity.guid,
            "name": node.identity.name,
            "version": node.software_version,
            "uptime_seconds": round(time.time() - node.started_at, 3),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body = generate_latest(node.metrics)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
