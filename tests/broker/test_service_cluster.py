"""A master and a traffic node, both full nodes served in this process over TLS (one test
CA): data sync carries the stream-token key, the session's streams go through the
traffic node, which reports them to the master over the signed internal API; when the
traffic node goes offline the session ends with "restart" and is queued again."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from atlas.broker.service import BROKER
from atlas.broker.stream_tokens import load_trusted_keys
from atlas.net import certs
from atlas.net.tls import client_context, server_context
from atlas.node import cluster
from atlas.node.app import build_app
from atlas.node.datadir import DataDir
from atlas.node.health_monitor import monitor_for
from atlas.node.init import init_node
from atlas.node.internal_api import PREFIX, load_counters
from atlas.node.peers import PeerClient, PeerRejected
from atlas.node.runtime import Node
from atlas.protocol.control import (
    AcceptNext,
    AuthCustomer,
    AuthRep,
    ClientKind,
    EndReason,
    Hello,
    SessionEnded,
    SessionQueued,
    SessionStarted,
    StreamDirection,
    StreamKind,
    Welcome,
)
from atlas.relay.client import publish, stream_url, subscribe
from atlas.store import representatives
from atlas.store.api_accounts import Permission, create_account, issue_token
from tests.support.cluster import free_port
from tests.web.test_control_ws import Control

PSK = "test pre-shared key"
PASSWORD = "correct horse battery staple 7"


@dataclass
class Served:
    node: Node
    port: int
    runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    async def start(self) -> None:
        self.runner = web.AppRunner(build_app(self.node))
        await self.runner.setup()
        dd = DataDir(self.node.datadir.root)
        site = web.TCPSite(self.runner, "127.0.0.1", self.port,
                           ssl_context=server_context(dd.cert_file, dd.key_file))
        await site.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Served, Served]]:
    ca = tmp_path / "ca"
    certs.create_ca_dir(ca)
    served = []
    for name in ("master1", "t1"):
        port = free_port("127.0.0.1")
        root = tmp_path / name
        init_node(root, name=name, public=f"localhost:{port}", listen="127.0.0.1",
                  ca_dir=ca, admin_password="test-admin-password")
        DataDir(root).write_secret("psk", PSK.encode())
        served.append(Served(Node(root), port))
    for s in served:
        await s.start()
    try:
        yield served[0], served[1]
    finally:
        for s in served:
            await s.stop()
            s.node.close()


async def until(predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def connected_clients(http: aiohttp.ClientSession, base: str, token: str) -> ET.Element:
    async with http.get(f"{base}/api/command?action=get_connected_clients"
                        "&include_connections=1",
                        headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, await r.text()
        root = ET.fromstring(await r.read())  # noqa: S314 - our own server
    for el in root.iter():
        el.tag = el.tag.split("}")[-1]
    return root


async def test_session_on_a_traffic_node_reported_then_node_lost(
        pair: tuple[Served, Served]) -> None:
    master, t1 = pair
    cluster.create_cluster(master.node, "support.example.test",
                           traffic_nodes=[{"name": "t1", "public": f"localhost:{t1.port}"}],
                           health={"interval_seconds": 0.5, "timeout_seconds": 1.0})
    assert (await cluster.sync_now(master.node)).ok
    # data sync gave the traffic node the master's stream-token public key
    master_signer = master.runner.app[BROKER].signer  # type: ignore[union-attr]
    assert master_signer.key_id in load_trusted_keys(t1.node.datadir).key_ids
    await monitor_for(master.node).check_once()
    representatives.create(master.node.db, "alice", "Alice A.", PASSWORD)

    ssl = client_context(DataDir(master.node.datadir.root).ca_file)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl))
    try:
        async def control(kind: ClientKind, hostname: str) -> Control:
            ws = await http.ws_connect(f"{master.base}/client/control")
            c = Control(ws)
            await c.send(Hello(kind=kind, software_version="1.0", platform="Linux",
                               hostname=hostname, utc_offset_minutes=0))
            return c

        rep = await control(ClientKind.REPRESENTATIVE, "rep-laptop")
        await rep.send(AuthRep(username="alice", password=PASSWORD))
        await rep.expect(Welcome)
        broker = master.runner.app[BROKER]  # type: ignore[union-attr]
        key = broker.issue_session_key("general", 600)
        customer = await control(ClientKind.SUPPORT_CUSTOMER, "cust-pc")
        await customer.send(AuthCustomer(session_key=key.short_key))
        await customer.expect(Welcome)
        await rep.send(AcceptNext())
        cstart = await customer.expect(SessionStarted)
        rstart = await rep.expect(SessionStarted)
        t1_guid = t1.node.identity.guid
        assert cstart.home_node.guid == rstart.home_node.guid == t1_guid
        assert cstart.home_node.url == f"wss://localhost:{t1.port}"
        sid = cstart.session_id

        viewer = await subscribe(stream_url(t1.base, sid, "screen:customer", "subscribe"),
                                 rstart.streams[0].token, ssl=ssl)
        publisher = await publish(stream_url(t1.base, sid, "screen:customer", "publish"),
                                  cstart.streams[0].token, ssl=ssl)
        await publisher.send_key(b"screen")
        assert (await asyncio.wait_for(viewer.receive(), 10)).payload == b"screen"
        # the console's own screen: a standby publisher on its home node, sending nothing
        own = rstart.streams[1]
        assert (own.stream, own.direction, own.node.guid) == (
            StreamKind.REPRESENTATIVE_SCREEN, StreamDirection.PUBLISH, t1_guid)
        standby = await publish(stream_url(t1.base, sid, "screen:representative", "publish"),
                                own.token, ssl=ssl)
        # the master refuses the token meant for the traffic node
        with pytest.raises(Exception, match="403"):
            await publish(stream_url(master.base, sid, "screen:customer", "publish"),
                          cstart.streams[0].token, ssl=ssl)

        # the traffic node reported both connections to the master
        m_token = issue_token(master.node.db, create_account(
            master.node.db, "reader", frozenset({Permission.COMMAND_READ})).account)[0]

        async def both_on_t1() -> ET.Element | None:
            root = await connected_clients(http, master.base, m_token)
            ids = [a.text for a in root.iter("appliance_id")]
            return root if ids.count(t1_guid) == 2 else None

        root = await until(both_on_t1)
        roles = {(c.findtext("appliance_id"), c.findtext("role"))
                 for c in root.iter("client_connection")}
        assert roles == {(master.node.identity.guid, "primary"), (t1_guid, "traffic")}
        # the traffic node lists only its session connections, described by the master
        t_token = issue_token(t1.node.db, create_account(
            t1.node.db, "reader", frozenset({Permission.COMMAND_READ})).account)[0]

        async def described() -> ET.Element | None:
            root = await connected_clients(http, t1.base, t_token)
            return root if root.find("connected_support_customer/hostname") is not None \
                and root.findtext("connected_support_customer/hostname") == "cust-pc" \
                else None

        t_root = await until(described)
        assert {e.text for e in t_root.iter("role")} == {"traffic"}
        assert len(t_root) == 2
        assert load_counters(t1.node).active_sessions == 1
        assert load_counters(t1.node).connected_clients == 2

        # reports are signed with the cluster PSK: a stranger's are refused
        async with PeerClient(master.node) as peers:  # the master is no traffic node
            with pytest.raises(PeerRejected) as refused:
                await peers.call(DataDir(master.node.datadir.root).load_identity().public,
                                 "POST", f"{PREFIX}/stream-connections", {"events": []})
        assert refused.value.reason == "unknown_node"

        # the traffic node goes offline: the session ends, to be restarted
        await publisher.close()
        await viewer.close()
        await standby.close()
        await t1.stop()
        for who in (customer, rep):
            ended = await who.expect(SessionEnded, timeout=15)
            assert ended.reason is EndReason.TRAFFIC_NODE_OFFLINE and ended.restart
            assert ended.node_name == "t1"
        requeued = await customer.expect(SessionQueued)
        assert requeued.queue_id.startswith("rep:")
        assert broker.fallback.count == 0
    finally:
        await http.close()


# --- the report queue, alone ------------------------------------------------------------------


class _Hub:
    def __init__(self) -> None:
        self.streams: dict[Any, Any] = {}


def test_report_queue_batches_retries_and_starts_afresh() -> None:
    from atlas.relay.reporting import MAX_BATCH, ReportQueue, StreamWatcher

    watcher = StreamWatcher(_Hub(), clock=lambda: 1.0)  # type: ignore[arg-type]
    watcher.live = {("s1", "screen:customer", "publish", "7"): 1.0}
    queue = ReportQueue(max_queued=2 * MAX_BATCH)
    first = queue.next_batch(watcher)
    assert first is not None and first["reset"] and len(first["events"]) == 1
    assert queue.next_batch(watcher) == first  # resent as it was until acknowledged
    queue.acknowledged()
    assert queue.next_batch(watcher) is None
    event = {"op": "open", "session": "s1", "stream": "x", "direction": "publish",
             "participant": "7", "since": 1.0}
    queue.add([event] * (MAX_BATCH + 3))
    batch = queue.next_batch(watcher)
    assert batch is not None and not batch["reset"] and len(batch["events"]) == MAX_BATCH
    assert batch["seq"] == first["seq"] + 1
    queue.failed()  # the master may or may not have applied it: start afresh
    again = queue.next_batch(watcher)
    assert again is not None and again["reset"] and len(again["events"]) == 1
    queue.acknowledged()
    queue.add([event] * (2 * MAX_BATCH + 1))  # overflow: the queue is dropped
    assert len(queue.events) == 0 and queue.reset
    final = queue.next_batch(watcher)
    assert final is not None and final["reset"]
