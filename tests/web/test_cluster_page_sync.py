"""/login → Management → Cluster against real traffic nodes, in process over real TLS:
Sync Now progress node by node, the sync-needed warning clearing after a successful
sync, the Accepting checkbox confirmed by the node (draining), Disable Cluster naming
the node it could not reach, and the Sync Now task stopped with the server.

The master is the whole application (``build_app``) served by aiohttp's TestServer; the
traffic nodes are :class:`~atlas.node.runtime.Node` objects serving only the internal
API, each on its own ``localhost`` port with a certificate from one test CA.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from atlas.net import certs
from atlas.net.tls import server_context
from atlas.node import internal_api, roles
from atlas.node.app import NODE, build_app
from atlas.node.datadir import DataDir
from atlas.node.health_monitor import monitor_for
from atlas.node.init import init_node
from atlas.node.internal_api import load_counters
from atlas.node.roles import Role
from atlas.node.runtime import Node
from atlas.store import config_store
from atlas.web.login.pages.cluster import CLUSTER_PAGE
from tests.conftest import InProcessNode, LoginClient, NodeInfo, free_port

PAGE = "/login/management/cluster"
MASTER = PAGE + "/master"
NODE_PATH = PAGE + "/node"
REMOVE = PAGE + "/node/remove"
ACCEPTING = PAGE + "/accepting"
SYNC = PAGE + "/sync"
SYNC_STATUS = PAGE + "/sync/status"
DISABLE = PAGE + "/disable"
PSK = "cluster page test key"
PASSWORD = "test-admin-password"
SITE = "support.example.test"


@dataclass
class Traffic:
    node: Node
    port: int
    runner: web.AppRunner | None = None

    @property
    def name(self) -> str:
        return self.node.identity.name


@dataclass
class World:
    tmp: Path
    ca_dir: Path
    master: InProcessNode | None = None
    traffic: dict[str, Traffic] = field(default_factory=dict)

    def make(self, name: str) -> tuple[Path, int]:
        port = free_port()
        root = self.tmp / name
        init_node(root, name=name, public=f"localhost:{port}", listen="127.0.0.1",
                  ca_dir=self.ca_dir, admin_password=PASSWORD)
        DataDir(root).write_secret("psk", PSK.encode())
        return root, port

    async def start_master(self) -> InProcessNode:
        root, port = self.make("master1")
        node = Node(root)
        dd = DataDir(root)
        server = TestServer(build_app(node), host="localhost")
        await server.start_server(ssl=server_context(dd.cert_file, dd.key_file))
        self.master = InProcessNode(NodeInfo(root, "master1", port, PASSWORD), node, server)
        return self.master

    async def start_traffic(self, name: str) -> Traffic:
        root, port = self.make(name)
        t = Traffic(Node(root), port)
        app = web.Application()
        app[NODE] = t.node
        internal_api.setup(app)
        t.runner = web.AppRunner(app)
        await t.runner.setup()
        dd = DataDir(root)
        await web.TCPSite(t.runner, "127.0.0.1", port,
                          ssl_context=server_context(dd.cert_file, dd.key_file)).start()
        self.traffic[name] = t
        return t

    async def close(self) -> None:
        for t in self.traffic.values():
            if t.runner is not None:
                await t.runner.cleanup()
            t.node.close()
        if self.master is not None:
            await self.master.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ca_dir = tmp_path / "ca"
    certs.create_ca_dir(ca_dir)
    w = World(tmp_path, ca_dir)
    try:
        yield w
    finally:
        await w.close()


async def signed_in(world: World, login_client: Callable[..., Any]) -> LoginClient:
    master = await world.start_master()
    client: LoginClient = await login_client(master)
    return client


async def create_cluster(admin: LoginClient, world: World) -> None:
    assert world.master is not None
    await admin.get(PAGE)
    page = await admin.post(MASTER, {
        "site_hostname": SITE, "name": "master1", "public_host": "localhost",
        "public_port": str(world.master.info.port), "internal_host": "", "internal_port": "443",
        "master_fallback_limit": "50", "revision": "0",
    })
    assert page.status == 200 and page.url.endswith(PAGE), page.text[-3000:]


async def add_node(admin: LoginClient, db: Any, name: str, port: int) -> None:
    await admin.get(NODE_PATH)
    page = await admin.post(NODE_PATH, {
        "name": name, "public_host": "localhost", "public_port": str(port),
        "internal_host": "", "internal_port": "443", "accepting": "on", "prefixes": "",
        "timezone": "+00:00", "capacity": "100", "region": "",
        "revision": str(config_store.current_revision(db)),
    })
    assert page.status == 200 and page.url.endswith(PAGE), page.text[-3000:]


async def post_json(client: LoginClient, path: str, body: object) -> tuple[int, Any]:
    headers = {"Accept": "application/json", "X-CSRF-Token": client.last_token}
    async with client.session.post(path, json=body, headers=headers) as r:
        return r.status, await r.json()


async def get_json(client: LoginClient, path: str) -> Any:
    async with client.session.get(path, headers={"Accept": "application/json"}) as r:
        assert r.status == 200
        return await r.json()


async def wait_for_sync(client: LoginClient, timeout: float = 30.0) -> Any:
    """Poll the progress endpoint like cluster.js does, until the sync is over."""
    deadline = time.monotonic() + timeout
    while True:
        body = await get_json(client, SYNC_STATUS)
        if not body["running"]:
            return body
        assert time.monotonic() < deadline, "Sync Now did not finish"
        await asyncio.sleep(0.05)


async def test_sync_now_progress_and_the_sync_needed_warning(
    world: World, login_client: Callable[..., Any]
) -> None:
    admin = await signed_in(world, login_client)
    assert world.master is not None
    db = world.master.node.db
    t1, t2 = await world.start_traffic("t1"), await world.start_traffic("t2")
    dead_port = free_port()  # nothing listens here
    await create_cluster(admin, world)
    for name, port in (("t1", t1.port), ("t2", t2.port), ("t3", dead_port)):
        await add_node(admin, db, name, port)
    page = await admin.get(PAGE)
    assert 'id="sync-needed" role="status">' in page.text  # shown: never synced

    status, body = await post_json(admin, SYNC, {})
    assert status == 202, body
    assert body["error"] is None
    done = await wait_for_sync(admin)
    states = {n["name"]: n["state"] for n in done["nodes"]}
    assert states == {"t1": "finished", "t2": "finished", "t3": "failed"}
    failed = next(n for n in done["nodes"] if n["name"] == "t3")
    assert failed["reason"] == "unreachable"
    assert f"Data Sync: Failed configuration data sync with t3 (localhost:{dead_port})" \
        in failed["message"]
    assert done["summary"] == ("Sync Now finished: 2 of 3 traffic nodes synced, 1 failed "
                               "(see the Status History).")
    messages = [h["message"] for h in done["history"]]
    assert messages[0] == "Data Sync: Finished data sync with traffic nodes: 2 of 3 nodes synced."
    assert f"Data Sync: Finished configuration data sync with t1 (localhost:{t1.port})." \
        in messages
    assert done["history"][0]["status"] == 1
    # t3 still lacks the document: the warning stays, for t3 only
    assert done["sync_needed"] is True and done["nodes_needing_sync"] == ["t3"]
    assert roles.current_role(t1.node.db) is Role.TRAFFIC

    # Remove the dead node, sync again: the warning goes away.
    page = await admin.get(REMOVE + "?name=t3")
    page = await admin.post(REMOVE, {"name": "t3",
                                     "revision": str(config_store.current_revision(db))})
    assert page.url.endswith(PAGE)
    assert config_store.sync_needed(db)
    status, body = await post_json(admin, SYNC, {})
    assert status == 202
    done = await wait_for_sync(admin)
    assert done["summary"] == "Sync Now finished: 2 of 2 traffic nodes synced."
    assert done["sync_needed"] is False and done["nodes_needing_sync"] == []
    page = await admin.get(PAGE)
    assert 'id="sync-needed" role="status" hidden' in page.text
    revision = config_store.current_revision(db)
    assert page.text.count(f"synced revision {revision}") == 2
    assert t1.node.identity.guid in page.text  # the GUID the node reported at its sync
    assert 'class="badge warn needs-sync" hidden' in page.text

    # A change raises the warning again, until the next successful sync.
    await admin.get(NODE_PATH + "?name=t2")
    page = await admin.post(NODE_PATH, {
        "original_name": "t2", "name": "t2", "public_host": "localhost",
        "public_port": str(t2.port), "internal_host": "", "internal_port": "443",
        "accepting": "on", "prefixes": "10.9.0.0/16", "timezone": "+01:00", "capacity": "100",
        "region": "", "revision": str(revision),
    })
    assert page.url.endswith(PAGE)
    assert 'id="sync-needed" role="status">' in page.text


async def test_sync_now_without_javascript_waits_and_reports(
    world: World, login_client: Callable[..., Any]
) -> None:
    admin = await signed_in(world, login_client)
    assert world.master is not None
    t1 = await world.start_traffic("t1")
    await create_cluster(admin, world)
    await add_node(admin, world.master.node.db, "t1", t1.port)
    await admin.get(PAGE)
    page = await admin.post(SYNC, {})
    assert page.status == 200 and page.url.endswith(PAGE)
    assert "Sync Now finished: 1 of 1 traffic nodes synced." in page.text
    assert "Data Sync: Finished data sync with traffic nodes." in page.text
    assert 'id="sync-needed" role="status" hidden' in page.text


async def test_accepting_is_confirmed_by_the_node_and_shows_draining(
    world: World, login_client: Callable[..., Any]
) -> None:
    admin = await signed_in(world, login_client)
    assert world.master is not None
    master = world.master.node
    t1 = await world.start_traffic("t1")
    await create_cluster(admin, world)
    await add_node(admin, master.db, "t1", t1.port)
    await admin.get(PAGE)
    await post_json(admin, SYNC, {})
    await wait_for_sync(admin)
    load_counters(t1.node).active_sessions = 3

    status, body = await post_json(admin, ACCEPTING, {
        "name": "t1", "accepting": False, "revision": config_store.current_revision(master.db)})
    assert status == 200, body
    assert body["confirmed"] is True and body["sessions_left"] == 3
    assert body["draining_sessions"] == 3
    assert body["message"] == ("“t1” no longer accepts new client connections (the node "
                               "confirmed it); 3 sessions left.")
    assert body["sync_needed"] is False  # the fast path needs no full sync
    held = config_store.load(t1.node.db)
    assert held is not None and not held.traffic_nodes[0].accepting  # the node has it

    await monitor_for(master).check_once()  # what the health monitor does on its interval
    page = await admin.get(PAGE)
    assert "draining: 3 sessions left" in page.text
    assert 'class="badge warn draining">' in page.text
    assert "online" in page.text

    status, body = await post_json(admin, ACCEPTING, {
        "name": "t1", "accepting": True, "revision": config_store.current_revision(master.db)})
    assert status == 200 and body["confirmed"] and body["draining_sessions"] is None
    assert body["message"] == "“t1” is accepting new client connections (the node confirmed it)."


async def test_disable_cluster_notifies_and_names_the_unreachable(
    world: World, login_client: Callable[..., Any]
) -> None:
    admin = await signed_in(world, login_client)
    assert world.master is not None
    master = world.master.node
    t1 = await world.start_traffic("t1")
    dead_port = free_port()
    await create_cluster(admin, world)
    await add_node(admin, master.db, "t1", t1.port)
    await add_node(admin, master.db, "gone", dead_port)
    await admin.get(PAGE)
    await post_json(admin, SYNC, {})
    await wait_for_sync(admin)
    assert roles.current_role(t1.node.db) is Role.TRAFFIC

    page = await admin.get(DISABLE)
    assert "These traffic nodes will be notified" in page.text
    page = await admin.post(DISABLE, {})
    assert page.status == 200 and page.url.endswith(PAGE)
    text = html.unescape(page.text)
    assert roles.current_role(master.db) is Role.STANDALONE
    assert roles.current_role(t1.node.db) is Role.STANDALONE  # it was told
    results = text.split('id="disable-report"')[1].split("</table>")[0]
    assert '<tr class="notified">' in results and '<tr class="unreachable">' in results
    assert "not notified</span> unreachable: log in to gone and remove it" in results
    unreachable = text.split('id="disable-unreachable">')[1].split("</p>")[0]
    assert "gone" in unreachable and f"localhost:{dead_port}" in unreachable
    assert "t1" not in unreachable
    assert "Disable Cluster: Notified t1" in text  # Status History


async def test_a_running_sync_is_not_started_twice_and_stops_with_the_server(
    world: World, login_client: Callable[..., Any]
) -> None:
    admin = await signed_in(world, login_client)
    assert world.master is not None
    master = world.master

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts the connection, never answers the TLS handshake
        writer.close()

    hang = await asyncio.start_server(silent, "127.0.0.1", 0)
    hang_port = hang.sockets[0].getsockname()[1]
    try:
        await create_cluster(admin, world)
        await add_node(admin, master.node.db, "hangs", hang_port)
        await admin.get(PAGE)
        status, _ = await post_json(admin, SYNC, {})
        assert status == 202
        status, body = await post_json(admin, SYNC, {})
        assert status == 409 and body["error"] == \
            "A data sync is already running; wait for it to finish."
        running = await get_json(admin, SYNC_STATUS)
        assert running["running"] is True
        page = await admin.get(PAGE)
        assert 'data-sync-running="true"' in page.text
        task = master.app[CLUSTER_PAGE].sync_task
        assert task is not None and not task.done()
        await master.server.close()  # shutdown cancels the task it owns
        assert task.done()
    finally:
        hang.close()
        await hang.wait_closed()
