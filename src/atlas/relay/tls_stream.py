"""A lean TLS transport for upgraded stream connections (the relay's hot path).

After ``101 Switching Protocols`` a stream connection carries only frames, for as long
as the stream lasts, at hundreds of MB/s. asyncio's ``SSLProtocol`` (CPython 3.11) is a
general TLS transport: a state machine, write backlog, per-read scheduling when a read
fills the application's buffer. :func:`take_over` moves the *same* TLS session — its
``SSLObject`` and memory BIOs — from that protocol to :class:`TlsStream`, which sits
directly on the TCP transport and does only what the relay needs: decrypt everything
that arrived into the application's buffer in one pass, encrypt a batch of frames with
one write to the socket, forward flow control, and close with ``close_notify``.
``bench/relay.py`` measures the difference (docs/performance.md, "Stream relay").

The take-over reads private attributes of asyncio's ``SSLProtocol``; it checks they are
there and in the expected state, and returns ``None`` (the caller keeps asyncio's
transport) on any other Python or event loop (uvloop has its own TLS).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import sslproto
from collections.abc import Callable, Iterable
from typing import Any, Final

from atlas.net.tls_memory import shared_read_buffer

log = logging.getLogger("atlas.relay")

READ_SIZE: Final = 256 * 1024
_AGAIN = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class TlsStream(asyncio.BufferedProtocol, asyncio.Transport):
    """Protocol of the TCP transport, transport of the stream connection above it."""

    def __init__(self, raw: asyncio.Transport, sslobj: ssl.SSLObject,
                 incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        super().__init__()
        self._raw = raw
        self._sslobj = sslobj
        self._incoming = incoming
        self._outgoing = outgoing
        # the C object under ssl.SSLObject: its read(n, buffer) without the wrapper call
        inner: Any = getattr(sslobj, "_sslobj", sslobj)
        self._read: Callable[[int, memoryview], int] = inner.read
        self._write: Callable[[memoryview], int] = inner.write
        self._app: asyncio.BufferedProtocol | None = None
        self._view = memoryview(b"")
        self._closing = False
        self._lost = False

    def start(self, app: asyncio.BufferedProtocol) -> None:
        """Serve ``app`` from now on (and whatever already arrived)."""
        self._app = app
        app.connection_made(self)
        self._decrypt()

    # --- protocol of the TCP transport -------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        # what a read puts here goes into the incoming BIO at once: one buffer per thread
        self._view = shared_read_buffer(READ_SIZE)
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._incoming.write(self._view[:nbytes])
        self._decrypt()

    def eof_received(self) -> bool | None:
        if self._app is not None:
            self._app.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = self._closing = True
        if self._app is not None:
            self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    def _decrypt(self) -> None:
        """Everything readable into the application's buffers, one call per full one."""
        app = self._app
        if app is None or self._closing:
            return
        read = self._read
        while True:
            buf = memoryview(app.get_buffer(-1))
            wants = len(buf)
            got = 0
            try:
                while got < wants:
                    count = read(wants - got, buf[got:] if got else buf)
                    if not count:  # close_notify
                        if got:
                            app.buffer_updated(got)
                        self._peer_closed()
                        return
                    got += count
            except _AGAIN:
                if got:
                    app.buffer_updated(got)
                self._flush()  # a read may answer the peer (alerts, key updates)
                return
            except ssl.SSLError as exc:
                log.info("stream connection: TLS error: %s", exc)
                self.abort()
                return
            app.buffer_updated(got)
            if self._closing:
                return

    def _peer_closed(self) -> None:
        if self._app is not None:
            self._app.eof_received()
        self.close()

    # --- transport of the stream connection ---------------------------------------------
    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and not self._lost:
            self._raw.write(data)

    def write(self, data: Any) -> None:
        self.writelines((data,))

    def writelines(self, list_of_data: Iterable[Any]) -> None:
        if self._closing:
            return
        write = self._write
        try:
            for data in list_of_data:
                view = memoryview(data)
                while view:
                    view = view[write(view):]
        except ssl.SSLError as exc:
            log.info("stream connection: TLS error while writing: %s", exc)
            self.abort()
            return
        self._flush()

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """``close_notify``, what is buffered, then the TCP connection."""
        if self._closing:
            return
        self._closing = True
        try:
            self._sslobj.unwrap()
        except (*_AGAIN, ssl.SSLError, ValueError):
            pass  # the peer's close_notify is not waited for (RFC 8446 §6.1)
        self._flush()
        self._raw.close()

    def abort(self) -> None:
        self._closing = True
        self._raw.abort()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()


def take_over(transport: asyncio.BaseTransport) -> TlsStream | None:
    """Move the TLS session under ``transport`` (asyncio's TLS transport of an upgraded
    connection) to a :class:`TlsStream` on its TCP transport; ``None`` when that cannot
    be done safely here, and the caller goes on with ``transport``."""
    proto: Any = getattr(transport, "_ssl_protocol", None)
    state_enum: Any = getattr(sslproto, "SSLProtocolState", None)
    if proto is None or state_enum is None or not isinstance(proto, sslproto.SSLProtocol):
        return None
    raw = getattr(proto, "_transport", None)
    sslobj = getattr(proto, "_sslobj", None)
    incoming = getattr(proto, "_incoming", None)
    outgoing = getattr(proto, "_outgoing", None)
    if (getattr(proto, "_state", None) is not state_enum.WRAPPED
            or not isinstance(raw, asyncio.Transport) or raw.is_closing()
            or not isinstance(sslobj, ssl.SSLObject)
            or not isinstance(incoming, ssl.MemoryBIO) or not isinstance(outgoing, ssl.MemoryBIO)
            or getattr(proto, "_write_backlog", None) or outgoing.pending
            or getattr(proto, "_app_reading_paused", True)):
        return None
    stream = TlsStream(raw, sslobj, incoming, outgoing)
    # asyncio's protocol lets go: closing its transport later does nothing to the stream
    inner: Any = proto
    inner._set_state(state_enum.UNWRAPPED)
    inner._transport = None
    transport._closed = True  # type: ignore[attr-defined]
    raw.set_protocol(stream)
    return stream
