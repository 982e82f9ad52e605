"""``generate_session_key``, ``get_connected_clients``, ``get_connected_client_list`` and
their ``/api/v1`` twins, in process; XML read namespace-stripped as integrations do."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from atlas.broker.service import BROKER, Broker
from atlas.node import roles
from atlas.node.app import build_app
from atlas.node.init import init_node
from atlas.node.roles import MasterIdentity, RoleEvent
from atlas.node.runtime import Node
from atlas.protocol.control import (
    AcceptNext,
    AuthCustomer,
    AuthRep,
    ClientKind,
    Hello,
)
from atlas.protocol.frames import CloseCode
from atlas.relay.endpoint import RELAY
from atlas.store import representatives
from atlas.store.api_accounts import Permission, create_account, issue_token
from atlas.web.command_api import NAMESPACE
from tests.broker.test_service import Client, FakeLink

PASSWORD = "correct horse battery staple 7"
Http = TestClient[web.Request, web.Application]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    root = tmp_path / "node"
    init_node(root, name="n1", public="n1.example.test:4443", listen="127.0.0.1",
              admin_password="correct horse battery")
    n = Node(root)
    representatives.create(n.db, "alice", "Alice A.", PASSWORD)
    yield n
    n.close()


@pytest.fixture
async def client(node: Node) -> AsyncIterator[Http]:
    async with TestClient(TestServer(build_app(node))) as c:
        yield c


def bearer(node: Node, *perms: Permission, name: str = "acct") -> dict[str, str]:
    account = create_account(node.db, name, frozenset(perms)).account
    return {"Authorization": f"Bearer {issue_token(node.db, account)[0]}"}


async def xml(r) -> ET.Element:
    body = await r.read()
    assert r.status == 200, body
    assert f'xmlns="{NAMESPACE}"'.encode() in body
    root = ET.fromstring(body)  # noqa: S314 - our own server
    for el in root.iter():
        el.tag = el.tag.split("}")[-1]
    return root


async def error_of(r, status: int) -> str:
    body = await r.read()
    assert r.status == status, body
    root = ET.fromstring(body)  # noqa: S314
    assert root.tag.endswith("error")
    return root.text or ""


async def connect(broker: Broker, kind: ClientKind, ip: str, hostname: str) -> Client:
    link = FakeLink(ip)
    c = Client(broker, link, broker.connected(link))
    await c.say(Hello(kind=kind, software_version="1.0", platform="Windows 11 x64",
                      hostname=hostname, utc_offset_minutes=-300))
    return c


async def online(client: Http) -> tuple[Client, Client]:
    """A representative in a session with a customer (standalone: on this node)."""
    broker = client.app[BROKER]
    rep = await connect(broker, ClientKind.REPRESENTATIVE, "10.2.0.1", "rep-laptop")
    await rep.say(AuthRep(username="alice", password=PASSWORD))
    customer = await connect(broker, ClientKind.SUPPORT_CUSTOMER, "10.1.0.1", "cust-pc")
    key = broker.issue_session_key("general", 600)
    await customer.say(AuthCustomer(session_key=key.short_key))
    await rep.say(AcceptNext())
    return rep, customer


# --- generate_session_key -----------------------------------------------------------------


async def test_generate_session_key(client: Http, node: Node) -> None:
    h = bearer(node, Permission.COMMAND_FULL)
    before = int(time.time())
    root = await xml(await client.get(
        "/api/command?action=generate_session_key&type=support&queue_id=general&ttl=300",
        headers=h))
    assert root.tag == "session_key"
    short_key = root.findtext("short_key") or ""
    assert len(short_key) == 7 and short_key.isdigit()
    assert root.findtext("key_url") == f"https://n1.example.test:4443/s/{short_key}"
    expires = root.find("expires")
    assert expires is not None
    assert before + 300 <= int(expires.get("ts") or 0) <= int(time.time()) + 300
    assert (expires.text or "").endswith("+00:00")
    assert root.findtext("queue_id") == "general"
    key = client.app[BROKER].keys.get(short_key)
    assert key is not None and key.created_by == "api:acct"
    # a representative's personal queue, by id or by username
    rep_id = representatives.get_by_username(node.db, "alice").id  # type: ignore[union-attr]
    for queue in (f"rep:{rep_id}", "rep_username:alice"):
        r = await client.post("/api/command", data={
            "action": "generate_session_key", "type": "support", "queue_id": queue},
            headers=h)
        assert (await xml(r)).findtext("queue_id") == queue


@pytest.mark.parametrize("query,expected", [
    ("queue_id=general", "'type' is required"),
    ("type=presentation&queue_id=general", "'type' must be one of support"),
    ("type=support", "'queue_id' is required"),
    ("type=support&queue_id=team:3", "expected general, rep:<id> or rep_username"),
    ("type=support&queue_id=rep:999", "no such representative"),
    ("type=support&queue_id=rep_username:nobody", "no such representative"),
    ("type=support&queue_id=general&ttl=5", "ttl"),
    ("type=support&queue_id=general&ttl=abc", "ttl"),
])
async def test_generate_session_key_refusals(client: Http, node: Node, query: str,
                                             expected: str) -> None:
    h = bearer(node, Permission.COMMAND_FULL)
    r = await client.get(f"/api/command?action=generate_session_key&{query}", headers=h)
    assert expected in await error_of(r, 400)


async def test_generate_session_key_needs_full_access(client: Http, node: Node) -> None:
    h = bearer(node, Permission.COMMAND_READ)
    r = await client.get("/api/command?action=generate_session_key&type=support"
                         "&queue_id=general", headers=h)
    assert "command:full" in await error_of(r, 403)


# --- connected clients --------------------------------------------------------------------


async def test_get_connected_clients_on_the_master(client: Http, node: Node) -> None:
    rep, customer = await online(client)
    h = bearer(node, Permission.COMMAND_READ)
    root = await xml(await client.get("/api/command?action=get_connected_clients", headers=h))
    assert root.tag == "connected_clients"
    assert [(e.tag, e.get("id")) for e in root] == [
        ("connected_representative", rep.id), ("connected_support_customer", customer.id)]
    cust = root[1]
    assert cust.findtext("hostname") == "cust-pc"
    assert cust.findtext("platform") == "Windows 11 x64"
    assert cust.find("platform").get("id") == "windows"  # type: ignore[union-attr]
    assert cust.findtext("timezone_offset") == "-18000"
    assert cust.find("client_connections") is None  # only with include_connections=1
    root = await xml(await client.get(
        f"/api/command?action=get_connected_clients&type=support_customer"
        f"&include_connections=1&id={customer.id},{rep.id}", headers=h))
    (only,) = root
    (conn,) = only.findall("client_connections/client_connections/client_connection")
    assert conn.findtext("appliance_id") == node.identity.guid
    assert conn.findtext("role") == "primary" and conn.findtext("hostname") == "n1.example.test"
    assert conn.find("connected_since").get("ts")  # type: ignore[union-attr]
    root = await xml(await client.get(
        "/api/command?action=get_connected_clients&type=presentation_attendee,push_agent",
        headers=h))
    assert len(root) == 0
    for bad, word in (("type=robots", "'type'"), ("id=abc", "'id'"),
                      ("include_connections=maybe", "include_connections")):
        r = await client.get(f"/api/command?action=get_connected_clients&{bad}", headers=h)
        assert word in await error_of(r, 400)


async def test_get_connected_client_list(client: Http, node: Node) -> None:
    rep, customer = await online(client)
    h = bearer(node, Permission.COMMAND_READ)
    root = await xml(await client.get("/api/command?action=get_connected_client_list",
                                      headers=h))
    (summary,) = root.findall("connected_client_summary/appliance_summary")
    assert summary.get("id") == node.identity.guid
    assert {c.get("type"): c.text for c in summary.findall("count")} == {
        "representative": "1", "support_customer": "1"}
    assert [(c.get("type"), c.get("id")) for c in root.findall("connected_client")] == [
        ("representative", rep.id), ("support_customer", customer.id)]
    root = await xml(await client.get(
        "/api/command?action=get_connected_client_list&summary_only=1&type=representative",
        headers=h))
    assert root.findall("connected_client") == []
    counts = root.findall("connected_client_summary/appliance_summary/count")
    assert [(c.get("type"), c.text) for c in counts] == [("representative", "1")]


async def test_rest_twins(client: Http, node: Node) -> None:
    rep, customer = await online(client)
    h = bearer(node, Permission.CONFIG_WRITE, Permission.CONFIG_READ)
    r = await client.post("/api/v1/session-keys", json={"queue_id": "general", "ttl": 120},
                          headers=h)
    assert r.status == 201, await r.text()
    body = await r.json()
    assert len(body["short_key"]) == 7 and body["queue_id"] == "general"
    assert body["key_url"].endswith(body["short_key"])
    assert body["expires_ts"] - int(time.time()) in range(118, 121)
    r = await client.post("/api/v1/session-keys", json={"queue_id": "team:1"}, headers=h)
    assert r.status == 422
    r = await client.post("/api/v1/session-keys", json={"ttl": 1}, headers=h)
    assert r.status == 422
    r = await client.get("/api/v1/connected-clients?include_connections=true", headers=h)
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["scope"] == "cluster" and body["node_guid"] == node.identity.guid
    assert [(c["id"], c["type"]) for c in body["clients"]] == [
        (rep.id, "representative"), (customer.id, "support_customer")]
    assert body["clients"][0]["name"] == "Alice A."
    assert body["clients"][1]["connections"][0]["role"] == "primary"
    assert body["summary"] == [{"node_guid": node.identity.guid,
                                "counts": {"representative": 1, "support_customer": 1}}]
    r = await client.get("/api/v1/connected-clients?type=bogus", headers=h)
    assert r.status == 422
    doc = await (await client.get("/api/v1/openapi.json")).json()
    assert "/api/v1/session-keys" in doc["paths"] and "/api/v1/connected-clients" in doc["paths"]


async def test_status_page_lists_connected_clients(inprocess_node, login_client) -> None:
    representatives.create(inprocess_node.node.db, "alice", "Alice A.", PASSWORD)
    broker = inprocess_node.app[BROKER]
    rep = await connect(broker, ClientKind.REPRESENTATIVE, "10.2.0.1", "rep-laptop")
    await rep.say(AuthRep(username="alice", password=PASSWORD))
    customer = await connect(broker, ClientKind.SUPPORT_CUSTOMER, "10.1.0.1", "cust-pc")
    await customer.say(AuthCustomer(
        session_key=broker.issue_session_key("general", 600).short_key))
    admin = await login_client(inprocess_node)
    page = await admin.get("/login/status/information")
    assert page.status == 200
    assert "Connected Clients" in page.text
    assert "cust-pc" in page.text and "rep-laptop" in page.text and "Alice A." in page.text
    broker.disconnected(customer.peer)
    broker.disconnected(rep.peer)
    page = await admin.get("/login/status/information")
    assert "No clients are connected." in page.text


# --- on a traffic node ----------------------------------------------------------------------


class Sink:
    def write(self, data: bytes) -> None: ...
    def writelines(self, data: list[bytes]) -> None: ...
    def wakeup(self) -> None: ...
    def buffered(self) -> int:
        return 0

    def end(self, code: CloseCode, reason: str, pending: Sequence[bytes] = ()) -> None: ...


async def test_a_traffic_node_lists_only_its_session_connections(client: Http,
                                                                  node: Node) -> None:
    roles.transition(node.db, RoleEvent.ACCEPT_SYNC, member="t1", master=MasterIdentity(
        site_hostname="support.example.test", name="master1", guid="f" * 32,
        internal="master1.example.test:443"))
    hub = client.app[RELAY].hub
    hub.attach_publisher("s1", "screen:customer", "7", Sink())
    hub.attach_subscriber("s1", "screen:customer", "8", Sink())
    h = bearer(node, Permission.COMMAND_FULL)
    root = await xml(await client.get(
        "/api/command?action=get_connected_clients&include_connections=1", headers=h))
    assert [(e.tag, e.get("id")) for e in root] == [
        ("connected_support_customer", "7"), ("connected_representative", "8")]
    roles_seen = {e.text for e in root.iter("role")}
    assert roles_seen == {"traffic"}
    assert {e.text for e in root.iter("appliance_id")} == {node.identity.guid}
    summary = await xml(await client.get(
        "/api/command?action=get_connected_client_list&summary_only=1", headers=h))
    (appliance,) = summary.findall("connected_client_summary/appliance_summary")
    assert appliance.get("id") == node.identity.guid
    r = await client.get("/api/command?action=generate_session_key&type=support"
                         "&queue_id=general", headers=h)
    assert "primary master" in await error_of(r, 409)
