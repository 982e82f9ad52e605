"""Publishing and viewing streams on a traffic node (the clients' side of the relay).

::

    url = stream_url("https://us-traffic1.support.example", session_id, "screen:customer",
                     "publish")
    async with await publish(url, token, ssl=ctx, resolver=resolver) as pub:
        await pub.send_key(jpeg_bytes)          # then deltas, a key frame now and then
        await pub.send_delta(patch_bytes)
        await pub.end()

    async with await subscribe(url_for_subscribe, token, ssl=ctx) as sub:
        async for frame in sub:                 # stops at the stream's end
            show(frame)
        print(sub.end_code, sub.end_reason)

Both speak the raw ``atlas-stream/1`` data plane by default (``atlas.relay.upgrade``;
the faster one) or WebSocket (``transport="websocket"``, as a browser would). A refused
token is a :class:`StreamRefused` with the node's reason; a stream that ends is the end
of the ``async for`` (or :class:`StreamClosed` from :meth:`StreamSubscriber.receive`).

How it ended is the close code: the node's end frame (or WebSocket close frame) says
why (``CloseCode``: 1000 the publisher ended it, 1001 the node shuts down, …); a
connection that breaks without one — the node crashed or was killed, a reset, EOF — is
:data:`ABNORMAL_CLOSURE` (1006, RFC 6455 §7.1.5: "the connection was closed abnormally,
e.g., without sending or receiving a Close control frame"), never a normal end. 1006 is
only ever reported, never sent.

Backpressure: ``send_*`` wait while the connection's write buffer is full; a subscriber
buffers at most ``max_buffer`` bytes of received frames and then stops reading, which
makes the relay skip frames for it rather than queue them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl as ssl_mod
import time
from collections import deque
from types import TracebackType
from typing import Final, Literal, Self, cast
from urllib.parse import urlsplit

import aiohttp

from atlas.broker.stream_tokens import Direction
from atlas.net.resolver import Resolver
from atlas.protocol.frames import (
    MAX_FRAME_SIZE,
    CloseCode,
    Frame,
    FrameParser,
    FrameType,
    RemoteProtocolError,
    end_frame,
    end_reason,
    parse,
)
from atlas.relay.endpoint import stream_path
from atlas.relay.upgrade import UPGRADE_TOKEN, WRITE_HIGH_WATER, WRITE_LOW_WATER

Transport = Literal["atlas-stream", "websocket"]
CONNECT_TIMEOUT: Final = 10.0
CLOSE_TIMEOUT: Final = 5.0
DEFAULT_MAX_BUFFER: Final = 2 * MAX_FRAME_SIZE
MAX_RESPONSE_HEAD: Final = 16 * 1024
MAX_RESPONSE_BODY: Final = 64 * 1024
ABNORMAL_CLOSURE: Final = 1006
"""The connection broke without an end frame (RFC 6455 §7.1.5); reported, not sent."""


class StreamRefused(Exception):
    """The traffic node refused the connection (HTTP status and its reason)."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message


class StreamClosed(Exception):
    """The stream connection ended; ``code`` is a ``CloseCode`` value."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"stream closed ({code}): {reason}")
        self.code = code
        self.reason = reason


def stream_url(base: str, session: str, stream: str, direction: Direction) -> str:
    """``https://node:port`` + the stream endpoint path."""
    return base.rstrip("/") + stream_path(session, stream, direction)


def now_us() -> int:
    return time.time_ns() // 1000


# --- channels: one connection, frames in and out -------------------------------------

class _Channel:
    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def receive(self) -> Frame:
        """The next frame; :class:`StreamClosed` once the connection ended."""
        raise NotImplementedError

    async def close(self, code: CloseCode, reason: str) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class _RawProtocol(asyncio.Protocol):
    """Client side of ``Upgrade: atlas-stream/1``: HTTP head out, 101 in, then frames."""

    def __init__(self, head: bytes, max_buffer: int) -> None:
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._head_out = head
        self._head_in = bytearray()
        self._refusal: tuple[int, dict[str, str], int] | None = None
        self._parser = FrameParser()
        self._frames: deque[Frame] = deque()
        self._buffered = 0
        self._max_buffer = max_buffer
        self._reading_paused = False  # by us, for our own buffer
        self._held = False  # by the application
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._writing_paused = False
        self.closed: StreamClosed | None = None
        self.closing_locally = False  # we sent our end frame
        self.aborted_locally = False
        self.lost = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        transport.write(self._head_out)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self._head_in += data
            self._read_head()
            return
        self._feed(data)

    def _read_head(self) -> None:
        buf = self._head_in
        if self._refusal is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    self._fail(StreamRefused(0, "BadResponse", "response head too long"))
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            parts = lines[0].split(" ", 2)
            try:
                status = int(parts[1])
            except (IndexError, ValueError):
                self._fail(StreamRefused(0, "BadResponse", f"not HTTP: {lines[0]!r}"))
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if status == 101:
                if headers.get("upgrade", "").lower() != UPGRADE_TOKEN:
                    self._fail(StreamRefused(101, "BadResponse",
                                             f"upgraded to {headers.get('upgrade')!r}"))
                    return
                self.upgraded.set_result(None)
                rest = bytes(buf)
                buf.clear()
                if rest:
                    self._feed(rest)
                return
            try:
                length = min(int(headers.get("content-length", "0")), MAX_RESPONSE_BODY)
            except ValueError:
                length = 0
            self._refusal = (status, headers, length)
        status, headers, length = self._refusal
        if len(buf) < length:
            return
        body = bytes(buf[:length]).decode(errors="replace")
        error, message = "HTTPError", body
        with contextlib.suppress(ValueError, AttributeError):
            doc = json.loads(body)
            error, message = str(doc["error"]), str(doc["message"])
        self._fail(StreamRefused(status, error, message))

    def _fail(self, exc: Exception) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def _feed(self, data: bytes) -> None:
        try:
            frames = self._parser.receive_data(data)
        except RemoteProtocolError as exc:
            self._closed(StreamClosed(exc.close_code, str(exc)))
            if self.transport is not None:
                self.transport.write(bytes(end_frame(exc.close_code, str(exc))))
                self.transport.close()
            return
        for f in frames:
            if f.type is FrameType.END:
                try:
                    code, reason = end_reason(f)
                except RemoteProtocolError as exc:
                    code, reason = exc.close_code, str(exc)
                self._closed(StreamClosed(code, reason))
                if self.transport is not None:
                    self.transport.close()
                return
            if f.type is FrameType.PING:
                continue
            self._frames.append(f)
            self._buffered += f.size
        if self._buffered > self._max_buffer and not self._reading_paused:
            self._reading_paused = True
            if self.transport is not None and not self._held:
                self.transport.pause_reading()
        self._wake()

    def _closed(self, exc: StreamClosed) -> None:
        if self.closed is None:
            self.closed = exc
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(
                ConnectionResetError(f"connection closed before the upgrade: {exc}"))
        if self.closing_locally:
            self._closed(StreamClosed(CloseCode.NORMAL, "connection closed"))
        elif self.aborted_locally:
            self._closed(StreamClosed(ABNORMAL_CLOSURE, "connection aborted by this client"))
        else:  # the node said nothing: it died, or the network between us did
            self._closed(StreamClosed(
                ABNORMAL_CLOSURE,
                f"connection lost without an end frame: {exc}" if exc
                else "the node closed the connection without an end frame"))
        self.transport = None
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("connection lost"))
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        if self.transport is None:
            raise ConnectionResetError("the stream connection is closed")
        if self._writing_paused:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    async def next_frame(self) -> Frame:
        while not self._frames:
            if self.closed is not None:
                raise self.closed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        f = self._frames.popleft()
        self._buffered -= f.size
        if self._reading_paused and self._buffered <= self._max_buffer // 2:
            self._reading_paused = False
            if self.transport is not None and not self._held:
                self.transport.resume_reading()
        return f

    def hold(self, held: bool) -> None:
        self._held = held
        t = self.transport
        if t is None:
            return
        if held:
            t.pause_reading()
        elif not self._reading_paused:
            t.resume_reading()


class _RawChannel(_Channel):
    def __init__(self, protocol: _RawProtocol) -> None:
        self.p = protocol

    async def send(self, data: bytes) -> None:
        t = self.p.transport
        if t is None or self.p.closed is not None:
            raise self.p.closed or StreamClosed(CloseCode.NORMAL, "connection closed")
        t.write(data)
        await self.p.drain()

    async def receive(self) -> Frame:
        return await self.p.next_frame()

    async def close(self, code: CloseCode, reason: str) -> None:
        t = self.p.transport
        self.p.closing_locally = True
        if t is not None and not t.is_closing():
            t.write(bytes(end_frame(code, reason)))
            t.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.p.lost), CLOSE_TIMEOUT)
        except TimeoutError:
            self.abort()

    def pause_reading(self) -> None:
        self.p.hold(True)

    def resume_reading(self) -> None:
        self.p.hold(False)

    def abort(self) -> None:
        if self.p.transport is not None:
            self.p.aborted_locally = True
            self.p.transport.abort()


class _WebSocketChannel(_Channel):
    def __init__(self, session: aiohttp.ClientSession,
                 ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws
        self.closed: StreamClosed | None = None
        self._abort_task: asyncio.Future[None] | None = None

    async def send(self, data: bytes) -> None:
        if self.closed is not None:
            raise self.closed
        await self.ws.send_bytes(data)

    async def receive(self) -> Frame:
        if self.closed is not None:
            raise self.closed
        while True:
            msg = await self.ws.receive()
            if msg.type is aiohttp.WSMsgType.BINARY:
                try:
                    frame = parse(msg.data)
                except RemoteProtocolError as exc:
                    await self.close(exc.close_code, str(exc))
                    raise StreamClosed(exc.close_code, str(exc)) from None
                if frame.type is FrameType.PING:
                    continue
                if frame.type is FrameType.END:
                    self.closed = StreamClosed(*end_reason(frame))
                    await self.close(CloseCode.NORMAL, "")
                    raise self.closed
                return frame
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    code, reason = int(msg.data), str(msg.extra or "")
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    code = int(self.ws.close_code or ABNORMAL_CLOSURE)
                    reason = str(msg.data)
                else:  # no close frame: aiohttp reports a plain EOF as 1000, it is not
                    code = ABNORMAL_CLOSURE
                    reason = "the node closed the connection without a close frame"
                self.closed = StreamClosed(code, reason or "connection closed")
                await self.session.close()
                raise self.closed

    async def close(self, code: CloseCode, reason: str) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if not self.ws.closed and self.closed is None:
                    await self.ws.send_bytes(bytes(end_frame(code, reason)))
                await self.ws.close(code=int(code), message=reason.encode()[:123])
        await self.session.close()

    def pause_reading(self) -> None:
        raise NotImplementedError("pause_reading is only available on atlas-stream/1")

    def resume_reading(self) -> None:
        raise NotImplementedError("resume_reading is only available on atlas-stream/1")

    def abort(self) -> None:
        self._abort_task = asyncio.ensure_future(self.session.close())


async def _connect_raw(url: str, token: str, *, ssl: ssl_mod.SSLContext,
                       resolver: Resolver | None, local_address: str | None,
                       max_buffer: int) -> _Channel:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"a stream URL is https://host[:port]/…, not {url!r}")
    if any(c in token for c in "\r\n"):
        raise ValueError("a stream token must not contain line breaks")
    host = parts.hostname
    port = parts.port or 443
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    host_header = (f"[{host}]" if ":" in host else host) + (
        f":{parts.port}" if parts.port else "")
    head = (
        f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nConnection: Upgrade\r\n"
        f"Upgrade: {UPGRADE_TOKEN}\r\nAuthorization: Bearer {token}\r\n"
        "User-Agent: atlas-relay-client\r\n\r\n"
    ).encode("latin-1")
    address = host
    if resolver is not None:
        address = (await resolver.resolve(host, port))[0]
    loop = asyncio.get_running_loop()
    _t, protocol = await loop.create_connection(
        lambda: _RawProtocol(head, max_buffer), address, port, ssl=ssl,
        server_hostname=host,
        local_addr=(local_address, 0) if local_address else None,
    )
    try:
        await protocol.upgraded
    except BaseException:
        if protocol.transport is not None:
            protocol.transport.abort()
        raise
    return _RawChannel(protocol)


async def _connect_websocket(url: str, token: str, *, ssl: ssl_mod.SSLContext,
                             resolver: Resolver | None, local_address: str | None,
                             max_buffer: int) -> _Channel:
    connector = aiohttp.TCPConnector(
        ssl=ssl, resolver=resolver.aiohttp_resolver() if resolver else None,
        local_addr=(local_address, 0) if local_address else None,
    )
    session = aiohttp.ClientSession(connector=connector)
    try:
        ws = await session.ws_connect(
            url, headers={"Authorization": f"Bearer {token}"}, compress=0,
            max_msg_size=MAX_FRAME_SIZE, autoping=True, autoclose=True,
        )
    except aiohttp.WSServerHandshakeError as exc:
        await session.close()
        raise StreamRefused(exc.status, "HTTPError", exc.message) from None
    except BaseException:
        await session.close()
        raise
    return _WebSocketChannel(session, ws)


async def _connect(url: str, token: str, *, ssl: ssl_mod.SSLContext, transport: Transport,
                   resolver: Resolver | None, local_address: str | None, timeout: float,
                   max_buffer: int) -> _Channel:
    connect = _connect_raw if transport == "atlas-stream" else _connect_websocket
    async with asyncio.timeout(timeout):
        return await connect(url, token, ssl=ssl, resolver=resolver,
                             local_address=local_address, max_buffer=max_buffer)


# --- what the clients use -------------------------------------------------------------

class _Endpoint:
    def __init__(self, channel: _Channel) -> None:
        self._channel = channel
        self.end_code: int | None = None
        self.end_reason: str | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self, reason: str = "") -> None:
        """Leave: tell the node (an end frame) and close the connection."""
        await self._channel.close(CloseCode.NORMAL, reason)

    def abort(self) -> None:
        """Drop the connection without a word (tests: a client that vanishes)."""
        self._channel.abort()


class StreamPublisher(_Endpoint):
    """Sends one stream's frames; numbers them and stamps them (µs) if not given."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__(channel)
        self.seq = 0

    async def send(self, frame: Frame) -> None:
        await self._channel.send(bytes(frame))

    async def send_key(self, payload: bytes, timestamp_us: int | None = None) -> Frame:
        return await self._send(FrameType.KEY, payload, timestamp_us)

    async def send_delta(self, payload: bytes, timestamp_us: int | None = None) -> Frame:
        return await self._send(FrameType.DELTA, payload, timestamp_us)

    async def ping(self) -> None:
        await self._channel.send(bytes(Frame(FrameType.PING)))

    async def _send(self, t: FrameType, payload: bytes, ts: int | None) -> Frame:
        self.seq += 1
        frame = Frame(t, self.seq, now_us() if ts is None else ts, payload)
        await self.send(frame)
        return frame

    async def end(self, reason: str = "") -> None:
        """End the stream for every viewer (they see ``CloseCode.NORMAL``)."""
        await self.close(reason)

    async def wait_closed(self) -> StreamClosed:
        """Wait until the node ends this connection (e.g. replaced); returns why."""
        while True:
            try:
                await self._channel.receive()
            except StreamClosed as exc:
                self.end_code, self.end_reason = exc.code, exc.reason
                return exc


class StreamSubscriber(_Endpoint):
    """Receives one stream's key and delta frames until the stream ends."""

    async def receive(self) -> Frame:
        try:
            return await self._channel.receive()
        except StreamClosed as exc:
            self.end_code, self.end_reason = exc.code, exc.reason
            raise

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Frame:
        try:
            return await self.receive()
        except StreamClosed:
            raise StopAsyncIteration from None

    def pause_reading(self) -> None:
        """Stop reading from the network (the relay will skip frames, then drop us)."""
        self._channel.pause_reading()

    def resume_reading(self) -> None:
        self._channel.resume_reading()


async def publish(url: str, token: str, *, ssl: ssl_mod.SSLContext,
                  transport: Transport = "atlas-stream", resolver: Resolver | None = None,
                  local_address: str | None = None,
                  timeout: float = CONNECT_TIMEOUT) -> StreamPublisher:
    """Connect to ``url`` (a ``…/publish`` stream URL) and return the publisher."""
    ch = await _connect(url, token, ssl=ssl, transport=transport, resolver=resolver,
                        local_address=local_address, timeout=timeout,
                        max_buffer=DEFAULT_MAX_BUFFER)
    return StreamPublisher(ch)


async def subscribe(url: str, token: str, *, ssl: ssl_mod.SSLContext,
                    transport: Transport = "atlas-stream", resolver: Resolver | None = None,
                    local_address: str | None = None, timeout: float = CONNECT_TIMEOUT,
                    max_buffer: int = DEFAULT_MAX_BUFFER) -> StreamSubscriber:
    """Connect to ``url`` (a ``…/subscribe`` stream URL) and return the viewer."""
    ch = await _connect(url, token, ssl=ssl, transport=transport, resolver=resolver,
                        local_address=local_address, timeout=timeout, max_buffer=max_buffer)
    return StreamSubscriber(ch)
