"""A real relay for tests: an aiohttp app with the stream endpoint, TLS on 127.0.3.1."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from atlas.broker.stream_tokens import Direction, StreamKeyring, StreamSigner
from atlas.net import certs
from atlas.relay.client import stream_url
from atlas.relay.endpoint import RelayService, install
from atlas.relay.hub import RelayLimits

HOST = "127.0.3.1"
MASTER_GUID = "0" * 31 + "1"
NODE_GUID = "f" * 32


@dataclass
class RelayUnderTest:
    base: str
    service: RelayService
    signer: StreamSigner
    client_ssl: ssl.SSLContext
    runner: web.AppRunner

    def url(self, direction: Direction, session: str = "s-1",
            stream: str = "screen:customer") -> str:
        return stream_url(self.base, session, stream, direction)

    def token(self, direction: Direction, *, session: str = "s-1",
              stream: str = "screen:customer", participant: str = "p-1",
              node_guid: str = NODE_GUID, now: float | None = None, **kw: Any) -> str:
        return self.signer.issue(node_guid=node_guid, participant=participant,
                                 session=session, direction=direction, stream=stream,
                                 now=time.time() if now is None else now, **kw)

    def stats(self) -> dict[str, Any]:
        return self.service.stats()

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool],
                       timeout: float = 10.0) -> dict[str, Any]:
        """Poll the relay's stats until ``predicate`` holds (with a deadline)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            st = self.stats()
            if predicate(st):
                return st
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"relay stats never matched: {st}")
            await asyncio.sleep(0.01)


@dataclass(frozen=True)
class TlsMaterial:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    d: Path = tmp_path_factory.mktemp("relay-tls")
    ca = certs.create_ca()
    pair = certs.issue(ca, [HOST, "relay.test"])
    (d / "cert.pem").write_bytes(pair.cert_pem)
    (d / "key.pem").write_bytes(pair.key_pem)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(d / "cert.pem", d / "key.pem")
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    return TlsMaterial(server, client)


StartRelay = Callable[..., Awaitable[RelayUnderTest]]


@pytest.fixture
async def start_relay(tls: TlsMaterial) -> AsyncIterator[StartRelay]:
    runners: list[web.AppRunner] = []

    async def start(limits: RelayLimits | None = None) -> RelayUnderTest:
        signer = StreamSigner.generate(issuer=MASTER_GUID)
        app = web.Application()
        service = install(app, node_guid=NODE_GUID,
                          keyring=StreamKeyring.from_pems([signer.public_key_pem()]),
                          limits=limits)
        runner = web.AppRunner(app, shutdown_timeout=5)
        await runner.setup()
        runners.append(runner)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
        site = web.SockSite(runner, sock, ssl_context=tls.server)
        await site.start()
        return RelayUnderTest(f"https://{HOST}:{port}", service, signer, tls.client, runner)

    yield start
    for r in runners:
        await r.cleanup()
