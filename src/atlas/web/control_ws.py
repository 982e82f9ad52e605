"""``GET /client/control``: the clients' control connection, a WebSocket over TLS.

A thin adapter (CONVENTIONS.md "Shape"): each text frame goes to the connection's
sans-I/O :class:`~atlas.protocol.control.MasterControlConnection`, each message it
accepts to the :class:`~atlas.broker.service.Broker`, and what the broker sends goes
back out through :class:`WebSocketLink`. When the state machine closes (a protocol
violation, refused credentials), the WebSocket closes with its code and reason — that
connection only.

WebSocket settings (CONVENTIONS.md "WebSocket pitfalls"): permessage-deflate off (the
messages are small; compression costs CPU and ~64 KiB of zlib state per connection), the
maximum message size set explicitly (:data:`WS_MAX_MESSAGE`; the protocol's own limit
is checked by the state machine), a heartbeat (WebSocket ping) to find dead
transports, and two timeouts: a connection must be welcomed within
``auth_timeout_seconds``; a welcomed client that says nothing (send ``ping``) for
``idle_timeout_seconds`` is dropped.

Backpressure: what the broker sends waits in the link's outbox, bounded by
:data:`MAX_OUTBOX_BYTES`; a client that lets it overflow, or does not take a message
within :data:`SEND_TIMEOUT`, is dropped ("too slow") rather than buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import WSMsgType, web

from atlas.broker.service import BROKER, CONTROL_PATH, Broker, is_master
from atlas.net.tls_memory import share_tls_read_buffers
from atlas.node.app import NODE
from atlas.protocol.control import (
    MAX_MESSAGE_BYTES,
    AnyMasterMessage,
    CloseCode,
    Error,
    ErrorCode,
    LocalProtocolError,
    MasterControlConnection,
    ProtocolViolation,
    State,
)

log = logging.getLogger("atlas.control")

WS_MAX_MESSAGE: Final = 2 * MAX_MESSAGE_BYTES
"""aiohttp's own limit. The protocol's limit (:data:`MAX_MESSAGE_BYTES`) is enforced by
the state machine, which reads the whole frame and closes cleanly with 1009 and the
reason; aiohttp stops a frame twice that size at its header (memory stays bounded) but
closes with unread data, so the peer may see the close as abnormal (1006)."""
MAX_OUTBOX_BYTES: Final = 1024 * 1024
SEND_TIMEOUT: Final = 10.0
CLOSE_TIMEOUT: Final = 5.0


class WebSocketLink:
    """The broker's :class:`~atlas.broker.service.ClientLink` for one WebSocket."""

    __slots__ = ("_flushing", "_outbox", "_queued", "_source_ip", "conn", "deadline",
                 "dropped", "in_handler", "silence", "ws")

    def __init__(self, ws: web.WebSocketResponse, conn: MasterControlConnection,
                 source_ip: str) -> None:
        self.ws = ws
        self.conn = conn
        self._source_ip = source_ip
        self._outbox: deque[str] | None = None  # made when needed: most links are idle
        self._queued = 0
        self._flushing = False
        self.in_handler = True  # the handler flushes after each message it handles
        self.dropped = False
        self.deadline = float("inf")  # loop time by which the client must speak
        self.silence = ""  # what the sweeper says when it drops the client

    @property
    def source_ip(self) -> str:
        return self._source_ip

    def send(self, message: AnyMasterMessage) -> None:
        if self.dropped or self.conn.state is State.CLOSED:
            return
        try:
            text = self.conn.send(message)
        except LocalProtocolError:
            log.exception("the broker sent %s out of turn", message.type)
            return
        if self._outbox is None:
            self._outbox = deque()
        self._outbox.append(text)
        self._queued += len(text)
        if self._queued > MAX_OUTBOX_BYTES:
            self.close(CloseCode.POLICY_VIOLATION, "too slow: the client does not read")
            return
        if not self.in_handler and not self._flushing:
            asyncio.get_running_loop().create_task(self.flush())

    def close(self, code: int, reason: str) -> None:
        """Drop the connection (idempotent); the handler's loop ends with it."""
        if self.dropped:
            return
        self.dropped = True
        self._outbox = None
        self._queued = 0
        try:
            close_code = CloseCode(code)
        except ValueError:
            close_code = CloseCode.POLICY_VIOLATION
        self.conn.close(close_code, reason)
        asyncio.get_running_loop().create_task(self._close_ws(code, reason))

    async def _close_ws(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.ws.close(code=code, message=reason.encode())

    async def flush(self) -> None:
        """Send what is queued (unless a flush is running: it takes it); then, if the
        conversation is over, close."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._outbox and not self.dropped:
                text = self._outbox.popleft()
                self._queued -= len(text)
                async with asyncio.timeout(SEND_TIMEOUT):
                    await self.ws.send_str(text)
            self._outbox = None
        except TimeoutError:
            self.close(CloseCode.POLICY_VIOLATION, "too slow: the client does not read")
            return
        except (ConnectionError, RuntimeError):
            self.dropped = True  # the transport is gone; the handler sees it close
            return
        finally:
            self._flushing = False
        if self.conn.state is State.CLOSED and not self.dropped:
            self.dropped = True
            await self._close_ws(self.conn.close_code or CloseCode.NORMAL,
                                 self.conn.close_reason)


def _source_ip(request: web.Request) -> str:
    return request.remote or "0.0.0.0"  # noqa: S104 - a placeholder, never bound


async def control(request: web.Request) -> web.StreamResponse:
    """Upgrade, then feed every frame to the connection's state machine and the broker."""
    broker: Broker = request.app[BROKER]
    settings = broker.settings
    ws = web.WebSocketResponse(
        max_msg_size=WS_MAX_MESSAGE, compress=False, heartbeat=settings.heartbeat_seconds,
        autoping=True,
    )
    await ws.prepare(request)
    conn = MasterControlConnection()
    link = WebSocketLink(ws, conn, _source_ip(request))
    if not is_master(request.config_dict[NODE]):
        link.send(Error(code=ErrorCode.NOT_ALLOWED,
                        message="this node is not the primary master: connect to one of "
                        "the master addresses you were given"))
        await link.flush()
        return ws
    peer = broker.connected(link)
    loop = asyncio.get_running_loop()
    sweeper = request.app[SWEEPER]
    link.deadline = loop.time() + settings.auth_timeout_seconds
    link.silence = "not authenticated in time"
    sweeper.links.add(link)
    try:
        while not link.dropped:
            if peer.client_id is not None:  # welcomed: from now on, silence is idleness
                link.deadline = loop.time() + settings.idle_timeout_seconds
                link.silence = f"no message for {settings.idle_timeout_seconds:g} s (send ping)"
            link.in_handler = False
            msg = await ws.receive()
            link.in_handler = True
            if msg.type is WSMsgType.TEXT:
                try:
                    message = conn.receive_text(msg.data)
                except ProtocolViolation as violation:
                    log.info("control connection refused a frame: %s", violation,
                             extra={"remote": link.source_ip})
                    await link.flush()  # anything queued before it, then the close
                    link.close(violation.close_code, violation.reason)
                    break
                await broker.handle(peer, message)
                await link.flush()
            elif msg.type is WSMsgType.BINARY:
                with contextlib.suppress(ProtocolViolation):
                    conn.receive_binary(msg.data)
                link.close(conn.close_code or CloseCode.UNSUPPORTED_DATA, conn.close_reason)
                break
            else:  # CLOSE, CLOSING, CLOSED, ERROR (e.g. an oversized frame: 1009)
                with contextlib.suppress(LocalProtocolError):
                    conn.receive_close(ws.close_code, str(msg.extra or ""))
                break
    finally:
        sweeper.links.discard(link)
        broker.disconnected(peer)
        if not ws.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await ws.close(code=conn.close_code or CloseCode.GOING_AWAY,
                                   message=conn.close_reason.encode())
    return ws


class Sweeper:
    """Drops control connections whose client stayed silent past its deadline: one task
    for all of them rather than a timer per connection (each idle client costs memory)."""

    def __init__(self) -> None:
        self.links: set[WebSocketLink] = set()

    def sweep(self, now: float) -> int:
        dropped = 0
        for link in [link for link in self.links if now >= link.deadline]:
            self.links.discard(link)
            link.close(CloseCode.POLICY_VIOLATION, link.silence)
            dropped += 1
        return dropped

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """``app.cleanup_ctx``: sweep while the app runs."""

        async def forever() -> None:
            loop = asyncio.get_running_loop()
            while True:
                settings = app[BROKER].settings
                shortest = min(settings.idle_timeout_seconds, settings.auth_timeout_seconds)
                await asyncio.sleep(max(0.05, min(1.0, shortest / 4)))
                self.sweep(loop.time())

        task = asyncio.get_running_loop().create_task(forever(), name="control-sweeper")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


SWEEPER: Final = web.AppKey("atlas_control_sweeper", Sweeper)


def setup(app: web.Application) -> None:
    """Node feature: mount the control endpoint (the broker feature must come first).

    Every online client holds a TLS connection to the master, so the node's TLS
    connections share their read buffer (:mod:`atlas.net.tls_memory`: 256 KiB less per
    client)."""
    share_tls_read_buffers()
    sweeper = app[SWEEPER] = Sweeper()
    app.cleanup_ctx.append(sweeper.run)
    app.router.add_get(CONTROL_PATH, control)
