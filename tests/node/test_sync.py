"""Sync, the internal API and the cluster facade, in one process over real TLS.

Traffic nodes here are :class:`~atlas.node.runtime.Node` objects served by an aiohttp
app holding only the internal API (``localhost`` on distinct ports, one test CA); the
multi-process cluster is tested in ``tests/integration/test_cluster_sync.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yarl
from aiohttp import web

from atlas.model.config import Address
from atlas.net import certs
from atlas.net.tls import client_context, server_context
from atlas.node import cluster, internal_api, roles
from atlas.node.app import NODE
from atlas.node.datadir import DataDir
from atlas.node.init import init_node
from atlas.node.internal_api import PREFIX, load_counters
from atlas.node.peers import NoPreSharedKey, PeerClient, PeerPskMismatch, PeerRejected
from atlas.node.roles import Role
from atlas.node.runtime import Node
from atlas.node.sync import SyncInProgress, failure_message, push_to_node
from atlas.store import config_store, history
from tests.support.cluster import free_port

PSK = "test pre-shared key"
SITE = "support.example.test"


@dataclass
class Served:
    node: Node
    port: int
    runner: web.AppRunner

    @property
    def name(self) -> str:
        return self.node.identity.name

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"


class InProcessCluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca_dir = tmp / "ca"
        certs.create_ca_dir(self.ca_dir)
        self.served: dict[str, Served] = {}
        self.masters: list[Node] = []

    def make_node(self, name: str, psk: str | None = PSK) -> tuple[Node, int]:
        port = free_port("127.0.0.1")
        root = self.tmp / name
        init_node(root, name=name, public=f"localhost:{port}", listen="127.0.0.1",
                  ca_dir=self.ca_dir, admin_password="test-admin-password")
        if psk is not None:
            DataDir(root).write_secret("psk", psk.encode())
        return Node(root), port

    def master(self, name: str = "master1", psk: str | None = PSK) -> Node:
        node, _ = self.make_node(name, psk)
        self.masters.append(node)
        return node

    async def traffic(self, name: str, psk: str | None = PSK) -> Served:
        node, port = self.make_node(name, psk)
        app = web.Application()
        app[NODE] = node
        internal_api.setup(app)
        runner = web.AppRunner(app)
        await runner.setup()
        dd = DataDir(node.datadir.root)
        site = web.TCPSite(runner, "127.0.0.1", port,
                           ssl_context=server_context(dd.cert_file, dd.key_file))
        await site.start()
        served = self.served[name] = Served(node, port, runner)
        return served

    async def stop(self, name: str) -> None:
        await self.served[name].runner.cleanup()

    async def close(self) -> None:
        for s in self.served.values():
            await s.runner.cleanup()
            s.node.close()
        for m in self.masters:
            m.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[InProcessCluster]:
    w = InProcessCluster(tmp_path)
    try:
        yield w
    finally:
        await w.close()


def entries(*served: Served) -> list[dict[str, str]]:
    return [{"name": s.name, "public": s.address} for s in served]


async def test_invalid_document_is_rejected_with_the_reason(world: InProcessCluster) -> None:
    t1 = await world.traffic("t1")
    master = world.master()
    config = cluster.create_cluster(master, SITE, traffic_nodes=entries(t1))
    bad = config.canonical_json().replace('"timezone":"+00:00"', '"timezone":"+99:00"')
    async with PeerClient(master) as peers:
        with pytest.raises(PeerRejected) as caught:
            await push_to_node(peers, master, config, bad, config.traffic_nodes[0], timeout=5)
    assert caught.value.reason == "invalid_document"
    assert "timezone" in caught.value.detail
    message = failure_message("t1 (x)", "t1", caught.value)
    assert message.startswith(
        "Data Sync: Failed configuration data sync with t1 (x): rejected document "
        "(invalid_document: traffic_nodes.0.timezone"
    )
    assert config_store.current_revision(t1.node.db) == 0
    assert roles.current_role(t1.node.db) is Role.STANDALONE


async def test_accepting_fast_path(world: InProcessCluster) -> None:
    t1, t2 = await world.traffic("t1"), await world.traffic("t2")
    master = world.master()
    cluster.create_cluster(master, SITE, traffic_nodes=entries(t1, t2))
    assert (await cluster.sync_now(master)).ok
    load_counters(t1.node).active_sessions = 2

    result = await cluster.set_accepting(master, "T1", False)  # names ignore case
    assert result.confirmed and result.changed and result.sessions_left == 2
    assert result.revision == 2
    assert not config_store.sync_needed(master.db)  # no full sync needed for the flag
    held = config_store.load(t1.node.db)
    assert held is not None and held.revision == 1 and not held.traffic_nodes[0].accepting
    assert history.recent(master.db)[0].message == (
        f"Cluster: t1 ({t1.address}) is no longer accepting new client connections "
        "(2 sessions left)."
    )

    again = await cluster.set_accepting(master, "t1", False)
    assert again.confirmed and not again.changed and again.revision == 2

    with pytest.raises(cluster.UnknownTrafficNode):
        await cluster.set_accepting(master, "nope", True)

    # Unreachable: not confirmed, and "sync needed" stays up for that node only.
    await world.stop("t2")
    result = await cluster.set_accepting(master, "t2", False, timeout=3)
    assert not result.confirmed and result.reason == "unreachable"
    assert config_store.nodes_needing_sync(master.db) == ["t2"]
    assert history.recent(master.db)[0].status == history.FAILED


async def test_a_traffic_node_follows_one_master(world: InProcessCluster) -> None:
    t1 = await world.traffic("t1")
    first, second = world.master("master1"), world.master("master2")
    cluster.create_cluster(first, SITE, traffic_nodes=entries(t1))
    assert (await cluster.sync_now(first)).ok
    cluster.create_cluster(second, "other.example.test", traffic_nodes=entries(t1))
    report = await cluster.sync_now(second)
    assert report.results[0].reason == "other_master"
    assert "traffic node of master1" in (report.results[0].message or "")
    # Disable notices from another master are refused as well.
    disabled = await cluster.disable_cluster(second)
    assert disabled.unreachable[0].reason == "other_master"
    assert roles.current_role(t1.node.db) is Role.TRAFFIC


async def test_a_master_takes_no_data_sync(world: InProcessCluster) -> None:
    other = await world.traffic("m2")
    cluster.create_cluster(other.node, "other.example.test")
    master = world.master()
    cluster.create_cluster(master, SITE, traffic_nodes=entries(other))
    report = await cluster.sync_now(master)
    assert report.results[0].reason == "wrong_role"


async def test_older_revision_is_refused(world: InProcessCluster) -> None:
    t1 = await world.traffic("t1")
    master = world.master()
    old = cluster.create_cluster(master, SITE, traffic_nodes=entries(t1))
    config = config_store.save(master.db, old, expected_revision=1, author="x")
    assert (await cluster.sync_now(master)).ok
    async with PeerClient(master) as peers:
        with pytest.raises(PeerRejected) as caught:
            await push_to_node(peers, master, old, old.canonical_json(), old.traffic_nodes[0],
                               timeout=5)
    assert caught.value.reason == "stale_revision"
    assert config_store.current_revision(t1.node.db) == config.revision


async def test_unsigned_requests_are_refused_and_recorded_once(
    world: InProcessCluster,
) -> None:
    t1 = await world.traffic("t1")
    ca = DataDir(t1.node.datadir.root).ca_file
    connector = aiohttp.TCPConnector(ssl=client_context(ca))
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(3):
            url = yarl.URL(f"https://{t1.address}{PREFIX}/health")
            async with session.get(url) as response:
                assert response.status == 401
                body = await response.json()
                assert body["error"]["reason"] == "missing_signature"
    refused = [r for r in history.recent(t1.node.db) if r.status != 0]
    assert len(refused) == 1 and "refused a request from" in refused[0].message


async def test_psk_missing_on_either_side(world: InProcessCluster) -> None:
    t1 = await world.traffic("t1", psk=None)
    master = world.master()
    cluster.create_cluster(master, SITE, traffic_nodes=entries(t1))
    async with PeerClient(master) as peers:
        with pytest.raises(PeerPskMismatch, match="no pre-shared key"):
            await peers.call(Address.parse(t1.address), "GET", f"{PREFIX}/health")
    lonely = world.master("master2", psk=None)
    cluster.create_cluster(lonely, "x.example.test")
    with pytest.raises(NoPreSharedKey):
        await cluster.sync_now(lonely)


async def test_one_sync_at_a_time(world: InProcessCluster) -> None:
    t1 = await world.traffic("t1")
    master = world.master()
    cluster.create_cluster(master, SITE, traffic_nodes=entries(t1))
    running = asyncio.create_task(cluster.sync_now(master))
    await asyncio.sleep(0)
    with pytest.raises(SyncInProgress):
        await cluster.sync_now(master)
    assert (await running).ok
    assert cluster.status(master).sync.running is False


async def test_status_and_leaving_by_hand(world: InProcessCluster) -> None:
    t1, t2 = await world.traffic("t1"), await world.traffic("t2")
    master = world.master()
    with pytest.raises(roles.WrongRole):
        await cluster.sync_now(master)
    cluster.create_cluster(master, SITE, traffic_nodes=entries(t1, t2))
    status = cluster.status(master)
    assert status.role is Role.PRIMARY and status.sync_needed and status.revision == 1
    assert status.description.startswith("This site instance is the primary master node")
    assert [(n.name, n.needs_sync, n.sync) for n in status.nodes] == [
        ("t1", True, None), ("t2", True, None)
    ]
    assert (await cluster.sync_now(master)).ok
    status = cluster.status(master)
    assert not status.sync_needed
    assert status.nodes[0].sync is not None and status.nodes[0].sync.acked_revision == 1

    on_t1 = cluster.status(t1.node)
    assert on_t1.role is Role.TRAFFIC and on_t1.member_name == "t1"
    assert on_t1.master is not None and on_t1.master.name == "master1"
    assert "traffic node in the cluster of support.example.test" in on_t1.description

    cluster.leave_cluster(t1.node)
    assert roles.current_role(t1.node.db) is Role.STANDALONE
    report = await cluster.disable_cluster(master)
    assert report.ok  # a node already standalone answers the notice all the same
    assert roles.current_role(t2.node.db) is Role.STANDALONE
    assert config_store.load(t2.node.db) is None


async def test_last_data_sync_is_recorded_for_check_health(world: InProcessCluster) -> None:
    t1 = await world.traffic("t1")
    t2 = await world.traffic("t2")
    master = world.master()
    cluster.create_cluster(master, SITE, traffic_nodes=entries(t1, t2))
    assert master.db.get_setting("last_data_sync_time") is None
    assert (await cluster.sync_now(master)).ok
    assert master.db.get_setting("last_data_sync_status") == "success"
    assert t1.node.db.get_setting("last_data_sync_status") == (
        "applied revision 1 from master1"
    )
    await world.stop("t2")
    report = await cluster.sync_now(master)
    assert not report.ok
    assert master.db.get_setting("last_data_sync_status") == report.summary
    assert float(master.db.get_setting("last_data_sync_time") or 0) > 0
