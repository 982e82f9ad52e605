"""The relay as a node feature: mounted by ``build_app``, keys from the data directory,
metrics on ``/metrics``, counters in ``relay_stats``."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from atlas.broker.stream_tokens import StreamKeyring, StreamSigner, save_trusted_keys
from atlas.node.app import FEATURES, build_app
from atlas.node.init import init_node
from atlas.node.runtime import Node
from atlas.protocol.frames import CloseCode
from atlas.relay.client import StreamRefused, publish, stream_url, subscribe
from atlas.relay.endpoint import relay_stats

HOST = "127.0.3.2"


@pytest.fixture
async def traffic_node(tmp_path: Path) -> AsyncIterator[tuple[Node, web.Application, str,
                                                             StreamSigner]]:
    sock = socket.socket()
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    root = tmp_path / "traffic1"
    init_node(root, name="traffic1", public=f"{HOST}:{port}", listen=HOST,
              admin_password="correct horse battery")
    master = StreamSigner.generate(issuer="m" * 32)
    node_for_keys = Node(root)
    save_trusted_keys(node_for_keys.datadir, StreamKeyring.from_pems([master.public_key_pem()]))
    node_for_keys.close()
    node = Node(root)
    app = build_app(node)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(node.datadir.cert_file, node.datadir.key_file)
    await web.SockSite(runner, sock, ssl_context=ctx).start()
    try:
        yield node, app, f"https://{HOST}:{port}", master
    finally:
        await runner.cleanup()
        node.close()


async def test_node_mounts_the_relay(traffic_node: tuple[Node, web.Application, str,
                                                         StreamSigner]) -> None:
    assert "atlas.relay.endpoint" in FEATURES
    node, app, base, master = traffic_node
    client_ssl = ssl.create_default_context(cafile=str(node.datadir.ca_file))

    def token(direction: str, guid: str = node.identity.guid) -> str:
        return master.issue(node_guid=guid, participant="p", session="s",
                            direction=direction, stream="screen:customer",  # type: ignore[arg-type]
                            now=time.time())

    viewer = await subscribe(stream_url(base, "s", "screen:customer", "subscribe"),
                             token("subscribe"), ssl=client_ssl)
    pub = await publish(stream_url(base, "s", "screen:customer", "publish"),
                        token("publish"), ssl=client_ssl)
    await pub.send_key(b"hello")
    assert (await viewer.receive()).payload == b"hello"
    stats = relay_stats(app)
    assert stats["publishers"] == 1 and stats["subscribers"] == 1

    async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics", ssl=client_ssl) as r:
        text = await r.text()
    assert "atlas_relay_subscribers 1.0" in text
    assert "atlas_relay_bytes_in_total" in text

    with pytest.raises(StreamRefused) as info:  # a token for another node
        await subscribe(stream_url(base, "s", "screen:customer", "subscribe"),
                        token("subscribe", guid="0" * 32), ssl=client_ssl)
    assert info.value.status == 403

    await pub.end()
    async for _ in viewer:
        pass
    assert viewer.end_code == CloseCode.NORMAL
