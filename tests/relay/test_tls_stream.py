"""The lean TLS transport under upgraded stream connections (atlas.relay.tls_stream), over
real TLS sockets: a session taken over from asyncio's TLS transport keeps working both
ways, large transfers pause and resume writing, and it ends with close_notify."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket

import pytest

from atlas.relay.tls_stream import TlsStream, take_over

from .conftest import HOST, StartRelay, TlsMaterial
from .test_endpoint import pub_of, sub_of


class Echo(asyncio.BufferedProtocol):
    """Echoes what it reads; counts pause/resume of writing; knows how it ended."""

    def __init__(self) -> None:
        self.buf = bytearray(64 * 1024)
        self.transport: asyncio.Transport | None = None
        self.paused = 0
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = \
            asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        assert self.transport is not None
        data = bytes(self.buf[:nbytes])
        if data == b"bye":
            self.transport.close()
        else:
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        pass

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Upgrader(asyncio.Protocol):
    """Answers the first line with OK (as the relay answers 101), then hands the TLS
    session to a TlsStream serving ``Echo``."""

    def __init__(self, taken: asyncio.Future[tuple[TlsStream, Echo]]) -> None:
        self.taken = taken
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and data == b"UPGRADE\n"
        self.transport.write(b"OK\n")
        stream = take_over(self.transport)
        assert stream is not None
        echo = Echo()
        stream.start(echo)
        stream.set_write_buffer_limits(64 * 1024, 16 * 1024)
        self.taken.set_result((stream, echo))


async def test_a_taken_over_session_echoes_a_large_transfer_and_closes_cleanly(
    tls: TlsMaterial,
) -> None:
    loop = asyncio.get_running_loop()
    taken: asyncio.Future[tuple[TlsStream, Echo]] = loop.create_future()
    server = await loop.create_server(lambda: Upgrader(taken), HOST, 0, ssl=tls.server)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(HOST, port, ssl=tls.client,
                                                       server_hostname=HOST)
        writer.write(b"UPGRADE\n")
        assert await reader.readline() == b"OK\n"
        stream, echo = await asyncio.wait_for(taken, 10)
        assert isinstance(stream.get_extra_info("peername"), tuple)

        # 8 MiB one way while not reading the echo: the server's writes must pause
        data = random.Random(7).randbytes(8 * 1024 * 1024)
        sent = hashlib.sha256(data).hexdigest()

        async def send() -> None:
            writer.write(data)
            await writer.drain()

        sender = asyncio.create_task(send())
        await asyncio.sleep(0.2)
        got = await asyncio.wait_for(reader.readexactly(len(data)), 60)
        await sender
        assert hashlib.sha256(got).hexdigest() == sent
        assert echo.paused >= 1

        writer.write(b"bye")  # the server closes: close_notify, then the TCP connection
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # a clean TLS EOF
        assert await asyncio.wait_for(echo.lost, 10) is None
        assert stream.is_closing()
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_only_asyncios_tls_transport_is_taken_over() -> None:
    loop = asyncio.get_running_loop()
    plain: asyncio.Future[asyncio.BaseTransport] = loop.create_future()

    class Keep(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            plain.set_result(transport)

    server = await loop.create_server(Keep, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with socket.create_connection((HOST, port)):
            transport = await asyncio.wait_for(plain, 10)
            assert take_over(transport) is None  # not TLS: left as it is
            assert not transport.is_closing()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("tls_transport", ["tls-stream", "asyncio"])
async def test_the_relay_works_over_either_transport(
    start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch, tls_transport: str,
) -> None:
    if tls_transport == "asyncio":
        monkeypatch.setenv("ATLAS_RELAY_TLS", "asyncio")
    relay = await start_relay()
    viewer = await sub_of(relay)
    await relay.wait_for(lambda s: s["subscribers"] == 1)
    pub = await pub_of(relay)
    frames = [random.Random(i).randbytes(100_000) for i in range(20)]
    for i, p in enumerate(frames):
        await (pub.send_key(p) if i == 0 else pub.send_delta(p))
    await pub.end("done")
    got = [f.payload async for f in viewer]
    assert got == frames
    assert viewer.end_reason == "done"
