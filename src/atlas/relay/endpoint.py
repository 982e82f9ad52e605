"""The traffic node's stream endpoint: token check, then WebSocket or raw data plane.

``GET /relay/v1/sessions/{session}/streams/{stream}/{publish|subscribe}`` with either
``Upgrade: atlas-stream/1`` (the fast raw data plane, ``atlas.relay.upgrade``; used by
the customer and representative clients) or ``Upgrade: websocket`` (browsers,
``atlas.relay.websocket``). The stream token comes as ``Authorization: Bearer …`` or,
for browsers that cannot set headers on a WebSocket, as ``?token=…``.

Nothing is upgraded, let alone relayed, before the token is verified against this node's
GUID and the session, stream and direction in the URL (DESIGN.md §2); refusals are
plain HTTP answers: 401 (no, malformed, forged or expired token), 403 (a token for
another node, session, stream or direction), 409 (another participant publishes the
stream), 426 (no supported ``Upgrade``), 503 (this node trusts no signing key yet).

As a node feature, :func:`setup` mounts it using the node's identity, metrics registry
and the public keys in its data directory; :func:`install` mounts it on any app (tests,
``bench/relay.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Final
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CollectorRegistry

from atlas.broker.stream_tokens import (
    Direction,
    StreamKeyring,
    StreamTokenError,
    load_trusted_keys,
)
from atlas.protocol.frames import CloseCode
from atlas.relay.hub import RelayHub, RelayLimits, StreamBusy
from atlas.relay.metrics import RelayCollector
from atlas.relay.upgrade import UPGRADE_TOKEN, serve_upgrade
from atlas.relay.websocket import serve_websocket

log = logging.getLogger("atlas.relay")

ROUTE: Final = "/relay/v1/sessions/{session}/streams/{stream}/{direction:publish|subscribe}"
PATH_PREFIX: Final = "/relay/v1/sessions"


def stream_path(session: str, stream: str, direction: Direction) -> str:
    """The URL path of a stream endpoint (components percent-encoded)."""
    return f"{PATH_PREFIX}/{quote(session, safe='')}/streams/{quote(stream, safe=':')}/{direction}"


class RelayService:
    """The relay of one node: hub, trusted keys, node identity and the sweeper task."""

    def __init__(self, *, node_guid: str, keyring: StreamKeyring,
                 limits: RelayLimits | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.node_guid = node_guid
        self.keyring = keyring
        self.hub = RelayHub(limits)
        self.wall_clock = wall_clock
        self._sweeper: asyncio.Task[None] | None = None

    def stats(self) -> dict[str, object]:
        return self.hub.stats()

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = min(1.0, self.hub.limits.stall_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            for sub in self.hub.sweep(loop.time()):
                log.info("dropped a stalled viewer",
                         extra={"session": sub.stream.session, "stream": sub.stream.name,
                                "participant": sub.participant})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        session = request.match_info["session"]
        stream = request.match_info["stream"]
        direction: Direction = (
            "publish" if request.match_info["direction"] == "publish" else "subscribe"
        )
        token = _token_of(request)
        if not len(self.keyring):
            return _refusal(503, "no_signing_key",
                            "this traffic node has no stream signing key yet")
        try:
            grant = self.keyring.verify(token or "", node_guid=self.node_guid,
                                        now=self.wall_clock(), session=session,
                                        stream=stream, direction=direction)
        except StreamTokenError as exc:
            return _refusal(exc.status, type(exc).__name__, str(exc))
        if direction == "publish":
            try:
                self.hub.check_publisher(session, stream, grant.participant)
            except StreamBusy as exc:
                return _refusal(409, "StreamBusy", str(exc))
        upgrade = request.headers.get("Upgrade", "").strip().lower()
        clock = asyncio.get_running_loop().time
        if upgrade == UPGRADE_TOKEN:
            return await serve_upgrade(request, self.hub, grant, clock=clock)
        if upgrade == "websocket":
            return await serve_websocket(request, self.hub, grant, clock=clock)
        return _refusal(426, "UpgradeRequired",
                        f"connect with 'Upgrade: {UPGRADE_TOKEN}' or 'Upgrade: websocket'",
                        headers={"Upgrade": f"{UPGRADE_TOKEN}, websocket",
                                 "Connection": "Upgrade"})

    async def on_shutdown(self, _app: web.Application) -> None:
        """End every stream before aiohttp waits for the handlers to finish."""
        self.hub.close_all(CloseCode.GOING_AWAY, "the traffic node is shutting down")

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """``app.cleanup_ctx``: run the sweeper; on shutdown end every stream."""
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="relay-sweeper")
        try:
            yield
        finally:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self.hub.close_all(CloseCode.GOING_AWAY, "the traffic node is shutting down")


RELAY: Final = web.AppKey("atlas_relay", RelayService)


def _token_of(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token")


def _refusal(status: int, error: str, message: str,
             headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status,
                             headers=headers)


def install(app: web.Application, *, node_guid: str, keyring: StreamKeyring,
            registry: CollectorRegistry | None = None,
            limits: RelayLimits | None = None) -> RelayService:
    """Mount the stream endpoint on ``app``; returns the service (also ``app[RELAY]``)."""
    service = RelayService(node_guid=node_guid, keyring=keyring, limits=limits)
    app[RELAY] = service
    app.router.add_get(ROUTE, service.handle)
    app.cleanup_ctx.append(service.lifecycle)
    app.on_shutdown.append(service.on_shutdown)
    if registry is not None:
        registry.register(RelayCollector(service.hub))
    return service


def setup(app: web.Application) -> None:
    """Node feature (``atlas.node.app.FEATURES``)."""
    from atlas.node.app import NODE

    node = app[NODE]
    install(app, node_guid=node.identity.guid, keyring=load_trusted_keys(node.datadir),
            registry=node.metrics)


def relay_stats(app: web.Application) -> dict[str, object]:
    """The relay's counters for the node's health report (empty without a relay)."""
    service = app.get(RELAY)
    return service.stats() if service is not None else {}
