"""``/api/v1/cluster`` and ``atlas cluster`` with real traffic nodes, in one process over
real TLS: Sync Now and its progress, health in the status, the route dry run on live
health, the accepting fast path while draining, Disable Cluster's notifications."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from typer.testing import CliRunner

from atlas.cli import app as cli_app
from atlas.net import certs
from atlas.net.tls import client_context, server_context
from atlas.node import internal_api
from atlas.node.app import NODE, build_app
from atlas.node.datadir import DataDir
from atlas.node.health_monitor import monitor_for
from atlas.node.init import init_node
from atlas.node.internal_api import load_counters
from atlas.node.runtime import Node
from atlas.store.api_accounts import Permission, create_account, issue_token
from tests.support.cluster import free_port

pytestmark = pytest.mark.timeout(180)

PSK = "test pre-shared key"
SITE = "support.example.test"
BASE = "/api/v1/cluster"


@dataclass
class World:
    tmp: Path
    ca_dir: Path
    master: Node | None = None
    server: TestServer | None = None
    traffic: dict[str, tuple[Node, int, web.AppRunner]] = field(default_factory=dict)

    def make(self, name: str) -> tuple[Node, int]:
        port = free_port("127.0.0.1")
        root = self.tmp / name
        init_node(root, name=name, public=f"localhost:{port}", listen="127.0.0.1",
                  ca_dir=self.ca_dir, admin_password="test-admin-password")
        DataDir(root).write_secret("psk", PSK.encode())
        return Node(root), port

    async def start_master(self) -> str:
        node, _ = self.make("master1")
        self.master = node
        dd = node.datadir
        self.server = TestServer(build_app(node), host="localhost")
        await self.server.start_server(ssl=server_context(dd.cert_file, dd.key_file))
        return f"https://localhost:{self.server.port}"

    async def start_traffic(self, name: str) -> int:
        node, port = self.make(name)
        application = web.Application()
        application[NODE] = node
        internal_api.setup(application)
        runner = web.AppRunner(application)
        await runner.setup()
        dd = node.datadir
        await web.TCPSite(runner, "127.0.0.1", port,
                          ssl_context=server_context(dd.cert_file, dd.key_file)).start()
        self.traffic[name] = (node, port, runner)
        return port

    async def stop_traffic(self, name: str) -> None:
        await self.traffic[name][2].cleanup()

    async def close(self) -> None:
        for node, _, runner in self.traffic.values():
            await runner.cleanup()
            node.close()
        if self.server is not None:
            await self.server.close()
        if self.master is not None:
            self.master.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ca_dir = tmp_path / "ca"
    certs.create_ca_dir(ca_dir)
    w = World(tmp_path, ca_dir)
    try:
        yield w
    finally:
        await w.close()


async def test_sync_health_route_accepting_disable(world: World) -> None:
    url = await world.start_master()
    master = world.master
    assert master is not None
    ports = {name: await world.start_traffic(name) for name in ("t1", "t2")}
    new = create_account(master.db, "ops", frozenset({Permission.CONFIG_WRITE,
                                                      Permission.COMMAND_READ}))
    token = issue_token(master.db, new.account)[0]
    headers = {"Authorization": f"Bearer {token}"}
    ssl_ctx = client_context(DataDir(master.datadir.root).ca_file)

    async with aiohttp.ClientSession(base_url=url,
                                     connector=aiohttp.TCPConnector(ssl=ssl_ctx)) as http:

        async def call(method: str, path: str, *, etag: str | None = None,
                       body: Any = None, status: int = 200) -> Any:
            h = dict(headers)
            if etag is not None:
                h["If-Match"] = etag
            async with http.request(method, path, headers=h, json=body) as r:
                assert r.status == status, await r.text()
                return await r.json()

        created = await call("POST", BASE, etag='"rev-0"', status=201, body={
            "site_hostname": SITE,
            "primary": {"public": f"localhost:{world.server.port}"},  # type: ignore[union-attr]
            "traffic_nodes": [
                {"name": "t1", "public": f"localhost:{ports['t1']}",
                 "prefixes": ["10.1.0.0/16"]},
                {"name": "t2", "public": f"localhost:{ports['t2']}",
                 "prefixes": ["10.2.0.0/16"]},
            ],
        })
        assert created["sync_needed"] is True

        report = await call("POST", f"{BASE}/sync")
        assert report["ok"] is True and report["summary"] == "2 of 2 nodes synced"
        guids = {r["name"]: r["guid"] for r in report["results"]}
        assert guids == {n: world.traffic[n][0].identity.guid for n in ("t1", "t2")}
        progress = await call("GET", f"{BASE}/sync")
        assert progress["running"] is False and progress["done"] == progress["total"] == 2
        assert {p["state"] for p in progress["nodes"]} == {"finished"}

        await monitor_for(master).check_once()
        status = await call("GET", BASE)
        assert status["sync_needed"] is False
        for entry in status["traffic_nodes"]:
            assert entry["state"] == "viable" and entry["online"] is True, entry
            assert entry["acknowledged_revision"] == 1 and entry["guid"] == guids[entry["name"]]
            assert entry["version"] == master.software_version
            assert entry["load"]["active_sessions"] == 0

        route = await call("GET", f"{BASE}/route?ip=10.2.3.4")
        assert (route["rule"], route["node"]) == ("prefix", "t2")
        assert route["viable"] == ["t1", "t2"]

        # draining t1: the flag takes effect at once and says how many sessions are left
        load_counters(world.traffic["t1"][0]).active_sessions = 3
        result = await call("PUT", f"{BASE}/traffic-nodes/t1/accepting", etag='"rev-1"',
                            body={"accepting": False})
        assert result["confirmed"] is True and result["sessions_left"] == 3
        await monitor_for(master).check_once()
        status = await call("GET", BASE)
        t1 = status["traffic_nodes"][0]
        assert (t1["state"], t1["sessions_left"], status["sync_needed"]) == (
            "not accepting", 3, False)

        # the same through the CLI (in a thread of its own: it runs its own event loop)
        env = {"ATLAS_URL": url, "ATLAS_CLIENT_ID": new.account.client_id,
               "ATLAS_CLIENT_SECRET": new.client_secret,
               "ATLAS_CA_FILE": str(DataDir(master.datadir.root).ca_file), "COLUMNS": "160"}
        runner = CliRunner()

        async def cli(*args: str) -> tuple[int, str]:
            done = await asyncio.to_thread(runner.invoke, cli_app, ["cluster", *args],
                                           env=env)
            return done.exit_code, done.output

        code, output = await cli("status")
        assert code == 0, output
        assert "draining: 3 sessions left" in output and "not accepting" in output
        assert "viable" in output and "1/2" in output and "up to date" in output
        code, output = await cli("route", "--ip", "10.1.0.9")
        assert code == 0 and "Rule:     random" in output and "t1: not accepting" in output
        code, output = await cli("set-accepting", "t1", "on")
        assert code == 0 and "t1 is accepting new client connections" in output, output

        # get_appliances names the GUIDs the traffic nodes reported
        async with http.get("/api/command?action=get_appliances", headers=headers) as r:
            xml = await r.text()
        assert f'id="{guids["t1"]}"' in xml and "<accepting_connections>1<" in xml

        code, output = await cli("sync")
        assert code == 0, output
        assert "2 of 2 nodes synced" in output and "synced" in output
        await world.stop_traffic("t2")
        code, output = await cli("sync")
        assert code == 1, output
        assert "1 of 2 nodes synced" in output and "failed" in output

        disabled = await call("POST", f"{BASE}/disable", etag='"rev-3"')
        assert disabled["ok"] is False and disabled["unreachable"] == ["t2"]
        by_name = {r["name"]: r for r in disabled["results"]}
        assert by_name["t1"]["notified"] is True
        assert "remove it from the cluster manually" in by_name["t2"]["message"]
        history = await call("GET", f"{BASE}/history?limit=50")
        messages = [row["message"] for row in history["rows"]]
        assert any(m.startswith("Disable Cluster: Notified t1") for m in messages)
