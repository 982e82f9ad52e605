"""Stream connections over WebSocket (for browsers; one frame per binary message).

Same rules as the raw data plane (``atlas.relay.upgrade``), on aiohttp's WebSocket:
permessage-deflate off (screen frames are already compressed; ADR 001 measured 600 →
40 MB/s with it on), an explicit maximum message size (one maximum-size frame), and
close codes/reasons that match the ``end`` frames of the raw plane. aiohttp's
``send_bytes`` is a coroutine, so viewers here *pull* from their outbox in a writer task;
a send that stays blocked marks the viewer stalled for the hub's sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Final

from aiohttp import WSMsgType, web

from atlas.broker.stream_tokens import StreamGrant
from atlas.protocol.frames import (
    MAX_FRAME_SIZE,
    CloseCode,
    FrameType,
    RemoteProtocolError,
    end_reason,
    parse,
)
from atlas.relay.hub import Publisher, RelayHub, StreamBusy, Subscriber
from atlas.relay.upgrade import CLOSE_TIMEOUT, WRITE_HIGH_WATER, WRITE_LOW_WATER

log = logging.getLogger("atlas.relay")

WS_MAX_MESSAGE: Final = MAX_FRAME_SIZE


class WebSocketConnection:
    """One stream connection over WebSocket; implements ``hub.Sink``."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, hub: RelayHub,
                 grant: StreamGrant, *, clock: Callable[[], float]) -> None:
        self.request = request
        self.ws = ws
        self.hub = hub
        self.grant = grant
        self._clock = clock
        self._ready = asyncio.Event()
        self._ending: tuple[CloseCode, str, list[bytes]] | None = None
        self._abort: asyncio.TimerHandle | None = None
        self.publisher: Publisher | None = None
        self.subscriber: Subscriber | None = None

    # --- hub.Sink -------------------------------------------------------------------
    def write(self, data: bytes) -> None:  # pragma: no cover - pulling sink
        raise RuntimeError("WebSocket viewers pull their frames")

    def writelines(self, data: list[bytes]) -> None:  # pragma: no cover - pulling sink
        raise RuntimeError("WebSocket viewers pull their frames")

    def wakeup(self) -> None:
        self._ready.set()

    def buffered(self) -> int:
        t = self.request.transport
        return t.get_write_buffer_size() if t is not None else 0

    def end(self, code: CloseCode, reason: str, pending: Sequence[bytes] = ()) -> None:
        if self._ending is not None:
            return
        self._ending = (code, reason, list(pending))
        self._ready.set()
        self._abort = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._cut_off)

    def _cut_off(self) -> None:
        t = self.request.transport
        if t is not None:
            t.abort()

    # --- tasks ----------------------------------------------------------------------
    async def _writer(self) -> None:
        ws = self.ws
        while True:
            await self._ready.wait()
            self._ready.clear()
            sub = self.subscriber
            while sub is not None and self._ending is None:
                wire = sub.pop()
                if wire is None:
                    break
                sub.sending(self._clock())
                await ws.send_bytes(wire)
                sub.sending(None)
            if self._ending is not None:
                code, reason, pending = self._ending
                for wire in pending:
                    await ws.send_bytes(wire)
                await ws.close(code=int(code), message=reason.encode()[:123])
                return

    async def run(self) -> None:
        g = self.grant
        try:
            if g.direction == "publish":
                self.publisher = self.hub.attach_publisher(g.session, g.stream,
                                                           g.participant, self)
            else:
                self.subscriber = self.hub.attach_subscriber(g.session, g.stream,
                                                             g.participant, self, pulls=True)
        except StreamBusy as exc:
            await self.ws.close(code=CloseCode.STREAM_BUSY, message=str(exc).encode()[:123])
            return
        writer = asyncio.create_task(self._writer(), name="relay-ws-writer")
        try:
            async for msg in self.ws:
                if self._ending is not None:
                    break
                if msg.type is WSMsgType.BINARY:
                    try:
                        self._frame(msg.data)
                    except RemoteProtocolError as exc:
                        log.info("stream connection refused a frame: %s", exc)
                        self._detach(CloseCode.PUBLISHER_GONE, "the publisher's stream broke")
                        self.end(exc.close_code, str(exc))
                elif msg.type is WSMsgType.TEXT:
                    self._detach(CloseCode.PUBLISHER_GONE, "the publisher's stream broke")
                    self.end(CloseCode.PROTOCOL_ERROR, "text messages are not stream frames")
            if self.publisher is not None and self.ws.close_code == CloseCode.NORMAL:
                # a browser ends with a close frame rather than an end frame
                self.hub.end_publisher(self.publisher, CloseCode.NORMAL,
                                       "the publisher ended the stream")
        finally:
            self._detach(CloseCode.PUBLISHER_GONE, "the publisher disconnected")
            if self._ending is None:
                writer.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer, CLOSE_TIMEOUT)
            if self._abort is not None:
                self._abort.cancel()

    def _detach(self, code: CloseCode, reason: str) -> None:
        if self.publisher is not None:
            self.hub.end_publisher(self.publisher, code, reason)
        if self.subscriber is not None:
            self.hub.detach_subscriber(self.subscriber)

    def _frame(self, data: bytes) -> None:
        frame = parse(data)
        t = frame.type
        if t is FrameType.PING:
            return
        if t is FrameType.END:
            reason = end_reason(frame)[1]
            if self.publisher is not None:
                self.hub.end_publisher(self.publisher, CloseCode.NORMAL,
                                       reason or "the publisher ended the stream")
            self._detach(CloseCode.NORMAL, "")
            self.end(CloseCode.NORMAL, "bye")
            return
        if self.publisher is None:
            raise RemoteProtocolError(f"a viewer cannot send {t.name.lower()} frames")
        self.hub.publish(self.publisher, frame)


async def serve_websocket(request: web.Request, hub: RelayHub, grant: StreamGrant, *,
                          clock: Callable[[], float]) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(
        compress=False,
        max_msg_size=WS_MAX_MESSAGE,
        autoping=True,
        timeout=CLOSE_TIMEOUT,
        writer_limit=WRITE_HIGH_WATER,
    )
    await ws.prepare(request)
    if request.transport is not None:
        request.transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
    await WebSocketConnection(request, ws, hub, grant, clock=clock).run()
    return ws
