"""A traffic node lost mid-stream is a loss (close code 1006), never a normal end.

RFC 6455 §7.1.5: a connection closed without a close frame is "closed abnormally", code
1006. On the raw ``atlas-stream/1`` plane the end frame plays the close frame's part: a
node that dies (killed, crashed, the network cut) sends none, and the client must say
so — unlike a publisher that ended its stream (1000) or a node shutting down (1001).

Real servers: a real ``atlas serve`` process killed with SIGKILL in the middle of a
stream, and a bare TLS server that upgrades, sends a frame and then drops the
connection without an end frame (a plain EOF, or a TCP reset).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from atlas.broker.stream_tokens import load_or_create_signer
from atlas.clients.network import NetworkSettings
from atlas.clients.screen import TestPattern
from atlas.clients.streams import (
    FrameReceived,
    RetryPolicy,
    ScreenPublisher,
    StreamDown,
    StreamLost,
    StreamTarget,
    StreamUp,
    StreamViewer,
)
from atlas.node.datadir import DataDir
from atlas.protocol.control import NodeRef, StreamDirection, StreamKind
from atlas.protocol.frames import Frame, FrameType
from atlas.relay.client import (
    ABNORMAL_CLOSURE,
    StreamClosed,
    Transport,
    publish,
    stream_url,
    subscribe,
)
from atlas.relay.upgrade import UPGRADE_TOKEN
from tests.clients.test_streams import Events
from tests.conftest import RunningNode
from tests.relay.conftest import HOST, TlsMaterial
from tests.support.reporters import ListReporter

pytestmark = pytest.mark.timeout(90)
SESSION = "s-loss"
STREAM = StreamKind.CUSTOMER_SCREEN


def tokens_for(node: RunningNode, direction: str, participant: str) -> str:
    """A stream token signed with the node's own key (a standalone node is its own
    master and trusts it)."""
    guid = node.info.identity.guid
    signer = load_or_create_signer(DataDir(node.data_dir), issuer=guid)
    return signer.issue(node_guid=guid, participant=participant, session=SESSION,
                        direction=direction, stream=STREAM.value,  # type: ignore[arg-type]
                        now=time.time(), ttl=120)


@pytest.mark.parametrize("transport", ["atlas-stream", "websocket"])
async def test_a_killed_node_ends_both_ends_with_1006(running_node: RunningNode,
                                                      transport: Transport) -> None:
    ctx = running_node.info.ssl_context()
    url = running_node.url
    sub = await subscribe(stream_url(url, SESSION, STREAM.value, "subscribe"),
                          tokens_for(running_node, "subscribe", "rep"), ssl=ctx,
                          transport=transport)
    pub = await publish(stream_url(url, SESSION, STREAM.value, "publish"),
                        tokens_for(running_node, "publish", "customer"), ssl=ctx,
                        transport=transport)
    try:
        await pub.send_key(b"first picture")
        frame = await asyncio.wait_for(sub.receive(), 20)
        assert frame.payload == b"first picture"
        running_node.process.kill()  # SIGKILL: no end frame, no close frame, nothing
        with pytest.raises(StreamClosed) as caught:
            await asyncio.wait_for(sub.receive(), 20)
        assert caught.value.code == ABNORMAL_CLOSURE  # not CloseCode.NORMAL: a loss
        assert sub.end_code == ABNORMAL_CLOSURE
        gone = await asyncio.wait_for(pub.wait_closed(), 20)
        assert gone.code == ABNORMAL_CLOSURE
    finally:
        pub.abort()
        sub.abort()


# --- a bare server that drops the connection ------------------------------------------


Drop = Callable[[asyncio.StreamWriter], None]


def eof(writer: asyncio.StreamWriter) -> None:
    writer.close()  # TLS close_notify and FIN, but no end frame


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # an RST


@dataclass
class DroppingServer:
    """Upgrades any stream request, sends one key frame, and drops the connection the
    way ``drop`` says once ``go`` is set."""

    base: str
    go: asyncio.Event


@pytest.fixture
async def dropping_server(tls: TlsMaterial
                          ) -> AsyncIterator[Callable[[Drop], Awaitable[DroppingServer]]]:
    servers: list[asyncio.Server] = []

    async def start(drop: Drop) -> DroppingServer:
        go = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {UPGRADE_TOKEN}\r\n"
                         "Connection: Upgrade\r\n\r\n".encode())
            writer.write(bytes(Frame(FrameType.KEY, 1, 1, b"only frame")))
            await writer.drain()
            await go.wait()
            drop(writer)

        server = await asyncio.start_server(serve, HOST, 0, ssl=tls.server)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return DroppingServer(f"https://{HOST}:{port}", go)

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("drop", [eof, reset], ids=["eof", "reset"])
async def test_a_connection_dropped_without_an_end_frame_is_1006(
        dropping_server: Callable[[Drop], Awaitable[DroppingServer]], tls: TlsMaterial,
        drop: Drop) -> None:
    server = await dropping_server(drop)
    sub = await subscribe(stream_url(server.base, SESSION, STREAM.value, "subscribe"), "t",
                          ssl=tls.client)
    try:
        assert (await asyncio.wait_for(sub.receive(), 10)).payload == b"only frame"
        server.go.set()
        with pytest.raises(StreamClosed) as caught:
            await asyncio.wait_for(sub.receive(), 10)
    finally:
        sub.abort()
    assert caught.value.code == ABNORMAL_CLOSURE
    assert "without an end frame" in caught.value.reason
    assert sub.end_code == ABNORMAL_CLOSURE


# --- what the runners and the client report -------------------------------------------


async def test_a_viewer_reports_a_killed_node_as_lost(running_node: RunningNode) -> None:
    guid = running_node.info.identity.guid
    node = NodeRef(name="node-1", guid=guid, url=running_node.url.replace("https", "wss"))
    network = NetworkSettings(ca_file=running_node.ca_file)
    policy = RetryPolicy(same_node_window=1.0, backoff_initial=0.05, backoff_max=0.2,
                         connect_timeout=2.0)
    seen, sent = Events(), Events()
    viewer = StreamViewer(StreamTarget(SESSION, STREAM, StreamDirection.SUBSCRIBE, node,
                                       tokens_for(running_node, "subscribe", "rep")),
                          network=network, on_event=seen, policy=policy)
    publisher = ScreenPublisher(StreamTarget(SESSION, STREAM, StreamDirection.PUBLISH, node,
                                             tokens_for(running_node, "publish", "customer")),
                                TestPattern((64, 48)), network=network, on_event=sent,
                                fps=20, policy=policy)
    tasks = [asyncio.create_task(viewer.run()), asyncio.create_task(publisher.run())]
    try:
        await seen.wait(lambda: len(seen.of(FrameReceived)) >= 3)
        running_node.process.kill()
        await seen.wait(lambda: bool(seen.of(StreamLost)), timeout=30)
        await sent.wait(lambda: bool(sent.of(StreamLost)), timeout=30)
    finally:
        viewer.stop()
        publisher.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
    for events in (seen, sent):
        first = events.of(StreamDown)[0]
        assert isinstance(first, StreamDown)
        assert first.lost and first.code == ABNORMAL_CLOSURE, first
        assert "lost (1006" in first.reason
        assert all(isinstance(e, StreamDown) and e.lost for e in events.of(StreamDown))
    assert len(seen.of(StreamUp)) == 1  # it never came back


async def test_the_client_reports_a_loss_unlike_an_end() -> None:
    from atlas.clients.control import ControlClient
    from atlas.clients.host import HostFacts
    from atlas.clients.network import SiteAddress
    from atlas.clients.representative import RepresentativeApp
    from atlas.clients.session import ClientSettings
    from atlas.protocol.control import AuthRep, ClientKind

    control = ControlClient(SiteAddress.parse("https://localhost:1"),
                            kind=ClientKind.REPRESENTATIVE,
                            auth=AuthRep(username="a", password="p"), host=HostFacts.local())
    reporter = ListReporter()
    app = RepresentativeApp(control, ClientSettings(), reporter)
    node = NodeRef(name="us-1", guid="g1", url="wss://us-1.example.test")
    lost = StreamDown(STREAM, StreamDirection.SUBSCRIBE, node,
                      "connection to us-1 lost (1006: …)", lost=True, code=ABNORMAL_CLOSURE)
    ended = StreamDown(STREAM, StreamDirection.SUBSCRIBE, node,
                       "us-1 ended the stream (1000: done)", lost=False, code=1000)
    await app.handle(lost)
    await app.handle(ended)
    states = [f["state"] for e, f in reporter.events if e == "stream"]
    assert states[0].startswith("lost") and not states[1].startswith("lost")
    assert "1006" in reporter.events[0][1]["reason"]
    await control.close()
