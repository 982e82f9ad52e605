"""The raw data plane: ``Upgrade: atlas-stream/1`` on the node's own HTTPS listener.

ADR 001 allows the relay a faster path than WebSocket; ``bench/relay.py`` shows it is
needed (docs/performance.md, "Stream relay"). The client sends an ordinary HTTP/1.1
request (RFC 9110 §7.8)::

    GET /relay/v1/sessions/{sid}/streams/{stream}/{publish|subscribe} HTTP/1.1
    Host: node.example
    Connection: Upgrade
    Upgrade: atlas-stream/1
    Authorization: Bearer <stream token>

aiohttp routes it and the endpoint checks the token; on success the answer is
``101 Switching Protocols`` and the TLS transport is handed from aiohttp's HTTP protocol
to a :class:`StreamConnection`, which speaks ``atlas.protocol.frames`` back to back with no
further framing. The client must wait for the 101 before it sends a frame (the server
may refuse with an ordinary HTTP error instead).

:class:`StreamConnection` is a thin adapter: bytes go to a ``FrameParser``, frames to the
``RelayHub``; the transport's pause/resume callbacks tell the hub when a viewer stops
accepting bytes. It never pauses reading from a publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Final, cast

from aiohttp import web

from atlas.broker.stream_tokens import StreamGrant
from atlas.protocol.frames import (
    CloseCode,
    Frame,
    FrameParser,
    FrameType,
    RemoteProtocolError,
    end_frame,
    end_reason,
)
from atlas.relay.hub import Publisher, RelayHub, StreamBusy, Subscriber
from atlas.relay.tls_stream import take_over

log = logging.getLogger("atlas.relay")

UPGRADE_TOKEN: Final = "atlas-stream/1"  # noqa: S105 - an HTTP Upgrade token
WRITE_HIGH_WATER: Final = 256 * 1024
"""A viewer's TLS transport is "paused" above this many unsent bytes."""
WRITE_LOW_WATER: Final = 64 * 1024
CLOSE_TIMEOUT: Final = 5.0
"""After sending an end frame, a peer that does not read it is cut off after this long."""

TLS_ENV: Final = "ATLAS_RELAY_TLS"
"""``asyncio``: keep asyncio's TLS transport under stream connections (to compare)."""

_DISCARD = bytearray(64 * 1024)


class StreamConnection(asyncio.BufferedProtocol):
    """One upgraded connection: a publisher or a viewer of one stream."""

    def __init__(
        self,
        hub: RelayHub,
        grant: StreamGrant,
        *,
        clock: Callable[[], float],
        on_lost: Callable[[Exception | None], None] | None = None,
    ) -> None:
        self.hub = hub
        self.grant = grant
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._clock = clock
        self._on_lost = on_lost
        self._parser = FrameParser()
        self._transport: asyncio.Transport | None = None
        self._publisher: Publisher | None = None
        self._subscriber: Subscriber | None = None
        self._ending = False
        self._abort: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        g = self.grant
        try:
            if g.direction == "publish":
                self._publisher = self.hub.attach_publisher(g.session, g.stream,
                                                            g.participant, self)
            else:
                self._subscriber = self.hub.attach_subscriber(g.session, g.stream,
                                                              g.participant, self)
        except StreamBusy as exc:
            self.end(CloseCode.STREAM_BUSY, str(exc))

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._ending:  # refused or ended: what still arrives is read and dropped
            return memoryview(_DISCARD)
        return self._parser.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self._ending:
            return
        try:
            frames = self._parser.buffer_updated(nbytes)
        except RemoteProtocolError as exc:
            self._refuse(exc)
            return
        pub = self._publisher
        if pub is None:
            self._from_viewer(frames)
            return
        media = [f for f in frames if f.type is FrameType.DELTA or f.type is FrameType.KEY]
        if len(media) == len(frames):
            self.hub.publish_many(pub, media)
            return
        for f in frames:  # a ping or the end among them
            t = f.type
            if t is FrameType.DELTA or t is FrameType.KEY:
                self.hub.publish(pub, f)
            elif t is FrameType.END:
                try:
                    reason = end_reason(f)[1]
                except RemoteProtocolError as exc:
                    self._refuse(exc)
                    return
                self._peer_ended(reason)
                return

    def _from_viewer(self, frames: list[Frame]) -> None:
        for f in frames:
            t = f.type
            if t is FrameType.END:
                self._peer_ended("")
                return
            if t is not FrameType.PING:
                self._refuse(RemoteProtocolError(
                    f"a viewer cannot send {t.name.lower()} frames"))
                return

    def eof_received(self) -> bool | None:
        try:
            self._parser.receive_eof()
        except RemoteProtocolError as exc:
            log.info("stream connection: %s", exc)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort is not None:
            self._abort.cancel()
        if self._publisher is not None:
            self.hub.end_publisher(self._publisher, CloseCode.PUBLISHER_GONE,
                                   "the publisher disconnected")
        if self._subscriber is not None:
            self.hub.detach_subscriber(self._subscriber)
        self._transport = None
        if self._on_lost is not None:
            self._on_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self._subscriber is not None:
            self._subscriber.pause(self._clock())

    def resume_writing(self) -> None:
        if self._subscriber is not None:
            self._subscriber.resume()

    # --- hub.Sink -------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.write(data)

    def writelines(self, data: list[bytes]) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.writelines(data)

    def wakeup(self) -> None:
        pass

    def buffered(self) -> int:
        t = self._transport
        return t.get_write_buffer_size() if t is not None else 0

    def end(self, code: CloseCode, reason: str, pending: Sequence[bytes] = ()) -> None:
        if self._ending:
            return
        self._ending = True
        t = self._transport
        if t is None or t.is_closing():
            return
        if pending:
            t.writelines(pending)
        t.write(bytes(end_frame(code, reason)))
        t.close()
        self._abort = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, t.abort)

    # --- helpers --------------------------------------------------------------------
    def _peer_ended(self, reason: str) -> None:
        if self._publisher is not None:
            self.hub.end_publisher(self._publisher, CloseCode.NORMAL,
                                   reason or "the publisher ended the stream")
        if self._subscriber is not None:
            self.hub.detach_subscriber(self._subscriber)
        self.end(CloseCode.NORMAL, "bye")

    def _refuse(self, exc: RemoteProtocolError) -> None:
        log.info("stream connection refused a frame: %s", exc)
        if self._publisher is not None:
            self.hub.end_publisher(self._publisher, CloseCode.PUBLISHER_GONE,
                                   "the publisher's stream broke")
        if self._subscriber is not None:
            self.hub.detach_subscriber(self._subscriber)
        self.end(exc.close_code, str(exc))


async def serve_upgrade(request: web.Request, hub: RelayHub, grant: StreamGrant, *,
                        clock: Callable[[], float]) -> web.StreamResponse:
    """Answer 101 and hand the connection to a :class:`StreamConnection` until it ends."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client went away before the upgrade")
    response = web.StreamResponse(
        status=101, reason="Switching Protocols",
        headers={"Upgrade": UPGRADE_TOKEN, "Connection": "Upgrade"},
    )
    writer = await response.prepare(request)
    assert writer is not None
    await writer.drain()  # the 101 head is on the wire; nothing else of HTTP will be
    http_protocol = request.protocol

    def on_lost(exc: Exception | None) -> None:
        # aiohttp's protocol no longer sees the transport; let it clean up as usual.
        http_protocol.connection_lost(exc)

    conn = StreamConnection(hub, grant, clock=clock, on_lost=on_lost)
    lower: asyncio.BaseTransport = transport
    stream = take_over(transport) if os.environ.get(TLS_ENV) != "asyncio" else None
    if stream is not None:
        lower = stream
        stream.start(conn)
    else:
        transport.set_protocol(conn)
        conn.connection_made(transport)
    try:
        await conn.closed
    except asyncio.CancelledError:
        conn.end(CloseCode.GOING_AWAY, "the traffic node is shutting down")
        with contextlib.suppress(Exception):
            cast(asyncio.Transport, lower).abort()
        raise
    return response
