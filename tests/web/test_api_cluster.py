"""``/api/v1/cluster`` in process: create, edit, concurrency, permissions, validation,
the route dry run, and the ``get_appliances`` Command API action."""

from __future__ import annotations

import datetime as dt
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from atlas.model.config import ClusterConfig
from atlas.node import roles
from atlas.node.app import build_app
from atlas.node.health_monitor import monitor_for
from atlas.node.init import init_node
from atlas.node.roles import MasterIdentity, Role, RoleEvent
from atlas.node.runtime import Node
from atlas.selection import HealthSnapshot, NodeHealth
from atlas.store import config_store
from atlas.store.api_accounts import Permission, create_account, issue_token

SITE = "support.example.test"
BASE = "/api/v1/cluster"

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    root = tmp_path / "master1"
    init_node(root, name="master1", public="master1.example.test:4443",
              listen="127.0.0.1", admin_password="correct horse battery")
    n = Node(root)
    yield n
    n.close()


@pytest.fixture
async def client(node: Node) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(node))) as c:
        yield c


_tokens: dict[tuple[str, frozenset[Permission]], dict[str, str]] = {}


def token_for(node: Node, *perms: Permission) -> dict[str, str]:
    """A bearer token with these permissions (one account per node and set: creating
    accounts hashes secrets, which is slow on purpose)."""
    key = (node.identity.guid, frozenset(perms))
    if key not in _tokens:
        acc = create_account(node.db, f"acct-{len(_tokens)}", frozenset(perms)).account
        _tokens[key] = {"Authorization": f"Bearer {issue_token(node.db, acc)[0]}"}
    return dict(_tokens[key])


def writer(node: Node, etag: str | None = None) -> dict[str, str]:
    h = token_for(node, Permission.CONFIG_WRITE)
    if etag is not None:
        h["If-Match"] = etag
    return h


async def error_of(r: Any, status: int) -> dict[str, Any]:
    assert r.status == status, await r.text()
    body = await r.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    return err


def fields_of(err: dict[str, Any]) -> dict[str, str]:
    return {f["field"]: f["message"] for f in err.get("fields") or []}


def tn(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "public": f"{name}.example.test:443", **extra}


async def create(client: Client, node: Node, **body: Any) -> dict[str, Any]:
    r = await client.post(BASE, headers=writer(node, '"rev-0"'),
                          json={"site_hostname": SITE, **body})
    assert r.status == 201, await r.text()
    assert r.headers["ETag"] == '"rev-1"' or body.get("backup")
    assert r.headers["Location"] == BASE
    out: dict[str, Any] = await r.json()
    return out


async def etag(client: Client, node: Node) -> str:
    r = await client.get(BASE, headers=token_for(node, Permission.CONFIG_READ))
    assert r.status == 200
    return r.headers["ETag"]


def stored(node: Node) -> tuple[int, str | None]:
    """What the store holds: current revision and the document's canonical JSON."""
    config = config_store.load(node.db)
    return config_store.current_revision(node.db), (
        config.canonical_json() if config else None)


# --- create and read -------------------------------------------------------------------------


async def test_standalone_cluster_status(client: Client, node: Node) -> None:
    r = await client.get(BASE, headers=token_for(node, Permission.CONFIG_READ))
    assert r.status == 200 and r.headers["ETag"] == '"rev-0"'
    body = await r.json()
    assert body["role"] == "standalone" and body["document"] is None
    assert body["revision"] == 0 and body["traffic_nodes"] == []
    assert body["this_node"]["guid"] == node.identity.guid
    r = await client.get(f"{BASE}/document", headers=token_for(node, Permission.CONFIG_READ))
    await error_of(r, 404)


async def test_create_cluster(client: Client, node: Node) -> None:
    r = await client.post(BASE, headers=writer(node), json={"site_hostname": SITE})
    assert (await error_of(r, 428))["code"] == "precondition_required"
    assert stored(node) == (0, None)
    body = await create(client, node, traffic_nodes=[tn("tokyo", prefixes=["10.30.0.0/16"])])
    doc = body["document"]
    assert body["revision"] == 1 and body["changed"] is True
    assert doc["primary"]["guid"] == node.identity.guid
    assert doc["primary"]["name"] == "master1"
    assert doc["primary"]["public"] == {"host": "master1.example.test", "port": 4443}
    assert doc["primary"]["internal"] is None
    assert [t["name"] for t in doc["traffic_nodes"]] == ["tokyo"]
    assert roles.current_role(node.db) is Role.PRIMARY

    h = token_for(node, Permission.CONFIG_READ)
    r = await client.get(BASE, headers=h)
    status = await r.json()
    assert status["role"] == "primary" and status["revision"] == 1
    assert status["sync_needed"] is True
    assert status["site_hostname"] == SITE
    [entry] = status["traffic_nodes"]
    assert entry["name"] == "tokyo" and entry["state"] == "offline" and entry["online"] is False
    assert entry["acknowledged_revision"] == 0 and entry["needs_sync"] is True
    r = await client.get(BASE, headers={**h, "If-None-Match": '"rev-1"'})
    assert r.status == 304
    r = await client.get(f"{BASE}/document", headers=h)
    assert r.headers["ETag"] == '"rev-1"'
    assert ClusterConfig.model_validate(await r.json()).revision == 1

    # a second Create New Cluster is a conflict, whatever If-Match says
    r = await client.post(BASE, headers=writer(node, "*"), json={"site_hostname": SITE})
    assert (await error_of(r, 409))["code"] == "cluster_exists"
    assert stored(node)[0] == 1


async def test_create_with_primary_and_backup(client: Client, node: Node) -> None:
    body = await create(client, node, primary={"name": "hq", "public": "hq.example.test:443"},
                        backup={"name": "m2", "public": "m2.example.test:443"})
    doc = body["document"]
    assert doc["primary"]["name"] == "hq" and doc["primary"]["internal"] is None
    assert doc["backup"]["name"] == "m2"


CREATE_BAD: list[tuple[dict[str, Any], str]] = [
    ({"site_hostname": "10.0.0.1"}, "site_hostname"),
    ({"site_hostname": ""}, "site_hostname"),
    ({"site_hostname": SITE, "primary": {"name": ""}}, "primary.name"),
    ({"site_hostname": SITE, "primary": {"public": "10.0.0.5:443"}}, "primary.public.host"),
    ({"site_hostname": SITE, "primary": {"public": f"{SITE}:443"}}, "primary.public"),
    ({"site_hostname": SITE, "primary": {"internal": "x.example.test:70000"}},
     "primary.internal.port"),
    ({"site_hostname": SITE, "primary": {"colour": "red"}}, "primary.colour"),
    ({"site_hostname": SITE, "traffic_nodes": [tn("a"), tn("A")]}, "traffic_nodes.1.name"),
    ({"site_hostname": SITE, "traffic_nodes": [tn("a", prefixes=["10.0.0.0/33"])]},
     "traffic_nodes.0.prefixes"),
    ({"site_hostname": SITE, "backup": {"name": "master1", "public": "b.example.test"}},
     "backup.name"),
    ({"site_hostname": SITE, "selection": {"method": "srv"}}, "selection.srv_name"),
    ({"site_hostname": SITE, "health": {"interval_seconds": 0}}, "health.interval_seconds"),
    ({"site_hostname": SITE, "extra": 1}, "extra"),
    ({}, "site_hostname"),
]


async def test_create_refuses_bad_input(client: Client, node: Node) -> None:
    for body, field in CREATE_BAD:
        r = await client.post(BASE, headers=writer(node, '"rev-0"'), json=body)
        err = await error_of(r, 422)
        assert field in fields_of(err), (body, err)
        assert stored(node) == (0, None)
        assert roles.current_role(node.db) is Role.STANDALONE


# --- traffic nodes ----------------------------------------------------------------------------


async def test_add_edit_remove_traffic_nodes(client: Client, node: Node) -> None:
    await create(client, node)
    r = await client.post(f"{BASE}/traffic-nodes", headers=writer(node, '"rev-1"'),
                          json=tn("tokyo", timezone="Asia/Tokyo", region="Asia"))
    assert r.status == 201, await r.text()
    assert r.headers["Location"] == f"{BASE}/traffic-nodes/tokyo"
    assert r.headers["ETag"] == '"rev-2"'
    body = await r.json()
    assert body["revision"] == 2 and body["sync_needed"] is True
    r = await client.post(f"{BASE}/traffic-nodes", headers=writer(node, '"rev-2"'),
                          json=tn("lima", prefixes="10.1.0.0/16\n10.2.0.0/255.255.0.0"))
    assert (await r.json())["document"]["traffic_nodes"][1]["prefixes"] == [
        "10.1.0.0/16", "10.2.0.0/16"]

    # the node reported its GUID in an earlier life: edit keeps a configured one
    config = config_store.load(node.db)
    assert config is not None
    nodes = (config.traffic_nodes[0].model_copy(update={"guid": "abc123"}),
             config.traffic_nodes[1])
    config_store.save(node.db, config.model_copy(update={"traffic_nodes": nodes}),
                      expected_revision=3, author="test")

    # edit every field, including the name (case-insensitive lookup)
    edited = {"name": "tokyo-1", "public": "tokyo1.example.test:8443",
              "internal": "tokyo1.int.example.test:9443", "accepting": False,
              "prefixes": ["10.30.0.0/16"], "timezone": "+09:00", "capacity": 50,
              "region": "Japan"}
    r = await client.put(f"{BASE}/traffic-nodes/TOKYO", headers=writer(node, '"rev-4"'),
                         json=edited)
    assert r.status == 200, await r.text()
    got = (await r.json())["document"]["traffic_nodes"][0]
    assert got["guid"] == "abc123"
    assert got["public"] == {"host": "tokyo1.example.test", "port": 8443}
    assert got["internal"] == {"host": "tokyo1.int.example.test", "port": 9443}
    assert (got["name"], got["accepting"], got["capacity"], got["region"], got["timezone"]) == (
        "tokyo-1", False, 50, "Japan", "+09:00")

    # the same edit again changes nothing and saves no revision
    r = await client.put(f"{BASE}/traffic-nodes/tokyo-1", headers=writer(node, '"rev-5"'),
                         json=edited)
    assert (await r.json())["changed"] is False and r.headers["ETag"] == '"rev-5"'
    assert stored(node)[0] == 5

    r = await client.delete(f"{BASE}/traffic-nodes/lima", headers=writer(node, '"rev-5"'))
    assert r.status == 200
    assert [t["name"] for t in (await r.json())["document"]["traffic_nodes"]] == ["tokyo-1"]
    r = await client.delete(f"{BASE}/traffic-nodes/lima", headers=writer(node, '"rev-6"'))
    assert "lima" in (await error_of(r, 404))["message"]
    r = await client.put(f"{BASE}/traffic-nodes/nope", headers=writer(node, '"rev-6"'),
                         json=tn("nope"))
    await error_of(r, 404)

    r = await client.get(f"{BASE}/revisions", headers=token_for(node, Permission.CONFIG_READ))
    revs = await r.json()
    assert revs["current"] == 6
    assert [x["revision"] for x in revs["revisions"]] == [6, 5, 4, 3, 2, 1]
    assert revs["revisions"][0]["current"] is True
    assert revs["revisions"][0]["author"].endswith("(API)")


async def test_names_and_addresses_taken_are_conflicts(client: Client, node: Node) -> None:
    await create(client, node, traffic_nodes=[tn("tokyo"), tn("lima")])
    before = stored(node)
    for body, code in [
        (tn("Tokyo", public="other.example.test:443"), "name_taken"),
        (tn("MASTER1", public="other.example.test:443"), "name_taken"),
        (tn("berlin", public="tokyo.example.test:443"), "address_taken"),
        (tn("berlin", internal="master1.example.test:4443"), "address_taken"),
    ]:
        r = await client.post(f"{BASE}/traffic-nodes", headers=writer(node, '"rev-1"'),
                              json=body)
        err = await error_of(r, 409)
        assert err["code"] == code, err
    r = await client.put(f"{BASE}/traffic-nodes/lima", headers=writer(node, '"rev-1"'),
                         json=tn("tokyo", public="lima.example.test:443"))
    assert "already used by the traffic node 'tokyo'" in (await error_of(r, 409))["message"]
    r = await client.put(f"{BASE}/primary", headers=writer(node, '"rev-1"'),
                         json={"name": "lima", "public": "master1.example.test:4443"})
    assert (await error_of(r, 409))["code"] == "name_taken"
    assert stored(node) == before


async def test_stale_revision_is_412_and_nothing_is_overwritten(client: Client,
                                                                node: Node) -> None:
    await create(client, node, traffic_nodes=[tn("tokyo")])
    first = await etag(client, node)
    # someone else changes the cluster meanwhile
    r = await client.post(f"{BASE}/traffic-nodes", headers=writer(node, first), json=tn("lima"))
    assert r.status == 201
    after = stored(node)
    for method, path, body in [
        ("POST", f"{BASE}/traffic-nodes", tn("berlin")),
        ("PUT", f"{BASE}/traffic-nodes/tokyo", tn("tokyo", region="x")),
        ("DELETE", f"{BASE}/traffic-nodes/tokyo", None),
        ("PUT", f"{BASE}/traffic-nodes/tokyo/accepting", {"accepting": False}),
        ("PUT", f"{BASE}/selection", {"method": "timezone"}),
        ("PUT", f"{BASE}/health-settings", {"interval_seconds": 2, "timeout_seconds": 6}),
        ("PUT", f"{BASE}/primary", {"name": "m", "public": "m.example.test"}),
        ("PUT", f"{BASE}/document", {"site_hostname": "x.example.test",
                                     "primary": {"name": "m", "public": "m.example.test"}}),
        ("POST", f"{BASE}/disable", None),
    ]:
        r = await client.request(method, path, headers=writer(node, first), json=body)
        err = await error_of(r, 412)
        assert err["code"] == "precondition_failed", (method, path)
        assert r.headers["ETag"] == '"rev-2"'
        r = await client.request(method, path, headers=writer(node), json=body)
        await error_of(r, 428)
    assert stored(node) == after
    assert roles.current_role(node.db) is Role.PRIMARY


async def test_read_only_accounts_cannot_change_anything(client: Client, node: Node) -> None:
    await create(client, node, traffic_nodes=[tn("tokyo")])
    before = stored(node)
    ro = {**token_for(node, Permission.CONFIG_READ, Permission.COMMAND_FULL), "If-Match": "*"}
    for method, path, body in [
        ("POST", BASE, {"site_hostname": SITE}),
        ("POST", f"{BASE}/traffic-nodes", tn("berlin")),
        ("PUT", f"{BASE}/traffic-nodes/tokyo", tn("tokyo")),
        ("DELETE", f"{BASE}/traffic-nodes/tokyo", None),
        ("PUT", f"{BASE}/traffic-nodes/tokyo/accepting", {"accepting": False}),
        ("PUT", f"{BASE}/selection", {"method": "timezone"}),
        ("PUT", f"{BASE}/health-settings", {}),
        ("PUT", f"{BASE}/primary", {"name": "m", "public": "m.example.test"}),
        ("PUT", f"{BASE}/document", json.loads(config_store.load(node.db).model_dump_json())),  # type: ignore[union-attr]
        ("POST", f"{BASE}/sync", None),
        ("POST", f"{BASE}/disable", None),
    ]:
        r = await client.request(method, path, headers=ro, json=body)
        err = await error_of(r, 403)
        assert "config:write" in err["message"], (method, path)
    assert stored(node) == before
    for path in (BASE, f"{BASE}/document", f"{BASE}/history", f"{BASE}/revisions",
                 f"{BASE}/sync", f"{BASE}/route?ip=10.0.0.1"):
        r = await client.get(path, headers=ro)
        assert r.status == 200, path
    r = await client.get(BASE, headers=token_for(node, Permission.COMMAND_FULL))
    await error_of(r, 403)


# --- every field of every body: 422 naming it, nothing stored -----------------------------------

BAD_BODIES: list[tuple[str, str, Any, str]] = [
    # add traffic node
    *[("POST", f"{BASE}/traffic-nodes", body, field) for body, field in [
        ({"public": "n.example.test"}, "name"),
        (tn(""), "name"),
        (tn("x\u200bY"), "name"),
        (tn("n" * 65), "name"),
        (tn("n", guid="not a guid!"), "guid"),
        ({"name": "n"}, "public"),
        (tn("n", public="https://n.example.test/"), "public"),
        (tn("n", public="10.1.2.3:443"), "public.host"),
        (tn("n", public="n.example.test:0"), "public.port"),
        (tn("n", public=f"{SITE}:443"), "public"),
        (tn("n", internal="n..example.test"), "internal.host"),
        (tn("n", accepting="maybe"), "accepting"),
        (tn("n", prefixes=["10.0.0.0/33"]), "prefixes"),
        (tn("n", prefixes=["10.0.0.0/255.0.255.0"]), "prefixes"),
        (tn("n", prefixes=[1]), "prefixes"),
        (tn("n", timezone="+25:00"), "timezone"),
        (tn("n", timezone="Mars/Olympus"), "timezone"),
        (tn("n", capacity=0), "capacity"),
        (tn("n", capacity=10**7), "capacity"),
        (tn("n", region="r" * 65), "region"),
        (tn("n", colour="red"), "colour"),
    ]],
    # edit traffic node (every field again, on an existing node)
    *[("PUT", f"{BASE}/traffic-nodes/tokyo", body, field) for body, field in [
        (tn("", public="tokyo.example.test"), "name"),
        ({"name": "tokyo"}, "public"),
        (tn("tokyo", public="tokyo.example.test:99999"), "public.port"),
        (tn("tokyo", internal="[2001:db8::1]:443"), "internal.host"),
        (tn("tokyo", accepting=None), "accepting"),
        (tn("tokyo", prefixes=["2001:db8::/129"]), "prefixes"),
        (tn("tokyo", timezone="+09:10"), "timezone"),
        (tn("tokyo", capacity="lots"), "capacity"),
        (tn("tokyo", region="\x00"), "region"),
        (tn("tokyo", guid="x" * 65), "guid"),
    ]],
    # accepting
    ("PUT", f"{BASE}/traffic-nodes/tokyo/accepting", {"accepting": "no"}, "accepting"),
    ("PUT", f"{BASE}/traffic-nodes/tokyo/accepting", {}, "accepting"),
    ("PUT", f"{BASE}/traffic-nodes/tokyo/accepting", {"accepting": True, "x": 1}, "x"),
    # primary
    ("PUT", f"{BASE}/primary", {"public": "m.example.test"}, "name"),
    ("PUT", f"{BASE}/primary", {"name": "", "public": "m.example.test"}, "name"),
    ("PUT", f"{BASE}/primary", {"name": "m"}, "public"),
    ("PUT", f"{BASE}/primary", {"name": "m", "public": "10.0.0.1"}, "public.host"),
    ("PUT", f"{BASE}/primary", {"name": "m", "public": "m.example.test",
                                "internal": "m.example.test:-1"}, "internal"),
    ("PUT", f"{BASE}/primary", {"name": "m", "public": f"{SITE}:443"}, "public"),
    # selection
    *[("PUT", f"{BASE}/selection", body, field) for body, field in [
        ({"method": "closest"}, "method"),
        ({"method": "srv"}, "srv_name"),
        ({"method": "srv", "srv_name": "10.0.0.1"}, "srv_name"),
        ({"method": "a_record"}, "a_record_hostname"),
        ({"method": "a_record", "a_record_hostname": SITE}, "a_record_hostname"),
        ({"method": "a_record", "a_record_hostname": "192.0.2.1"}, "a_record_hostname"),
        ({"method": "anycast"}, "anycast_address"),
        ({"method": "anycast", "anycast_address": "any.example.test"}, "anycast_address"),
        ({"anycast_port": 0}, "anycast_port"),
        ({"anycast_tls_name": "1.2.3.4"}, "anycast_tls_name"),
        ({"master_fallback_limit": -1}, "master_fallback_limit"),
        ({"master_fallback_limit": 2_000_000}, "master_fallback_limit"),
        ({"mehtod": "random"}, "mehtod"),
    ]],
    # health
    *[("PUT", f"{BASE}/health-settings", body, field) for body, field in [
        ({"interval_seconds": 0}, "interval_seconds"),
        ({"interval_seconds": -1}, "interval_seconds"),
        ({"timeout_seconds": "soon"}, "timeout_seconds"),
        ({"interval_seconds": 10, "timeout_seconds": 5}, "timeout_seconds"),
        ({"every": 5}, "every"),
    ]],
    # the whole document
    *[("PUT", f"{BASE}/document", body, field) for body, field in [
        ({"primary": {"name": "m", "public": "m.example.test"}}, "site_hostname"),
        ({"site_hostname": SITE}, "primary"),
        ({"site_hostname": SITE, "primary": {"name": "m", "public": "m.example.test",
                                             "guid": "someone-else"}}, "primary.guid"),
        ({"site_hostname": SITE, "primary": {"name": "m", "public": "m.example.test"},
          "traffic_nodes": [tn("a"), tn("b", public="a.example.test:443")]},
         "traffic_nodes.1.public"),
        ({"site_hostname": SITE, "primary": {"name": "m", "public": "m.example.test"},
          "revision": -1}, "revision"),
    ]],
]


async def test_bad_input_is_422_naming_the_field(client: Client, node: Node) -> None:
    """Every field of every body, one bad value at a time: 422 names it, and the store
    holds exactly what it held before."""
    await create(client, node, traffic_nodes=[tn("tokyo")])
    before = stored(node)
    for method, path, body, field in BAD_BODIES:
        r = await client.request(method, path, headers=writer(node, '"rev-1"'), json=body)
        err = await error_of(r, 422)
        assert err["code"] == "validation_error"
        assert field in fields_of(err), (method, path, body, err)
        assert stored(node) == before, (method, path, body)


# --- roles -------------------------------------------------------------------------------------


async def test_changes_need_the_primary_master(client: Client, node: Node) -> None:
    h = writer(node, "*")
    r = await client.post(f"{BASE}/traffic-nodes", headers=h, json=tn("tokyo"))
    err = await error_of(r, 409)
    assert err["code"] == "no_cluster" and "create one first" in err["message"]
    # make this node a traffic node of another master
    master_doc = ClusterConfig.model_validate({
        "revision": 7, "site_hostname": SITE,
        "primary": {"name": "hq", "guid": "hq-guid", "public": "hq.example.test:443"},
        "traffic_nodes": [{"name": "master1", "public": "master1.example.test:4443"}],
    })
    config_store.apply_synced(
        node.db, master_doc.canonical_json(), 7,
        then=lambda: roles.transition(
            node.db, RoleEvent.ACCEPT_SYNC, member="master1",
            master=MasterIdentity(SITE, "hq", "hq-guid", "hq.int.example.test:443")))
    before = stored(node)
    for method, path, body in [
        ("POST", f"{BASE}/traffic-nodes", tn("tokyo")),
        ("PUT", f"{BASE}/selection", {"method": "random"}),
        ("POST", f"{BASE}/sync", None),
        ("POST", f"{BASE}/disable", None),
        ("POST", BASE, {"site_hostname": SITE}),
    ]:
        r = await client.request(method, path, headers=h, json=body)
        err = await error_of(r, 409)
        assert err["message"] == (f"this node is a traffic node of {SITE}; change the cluster "
                                  "on its master https://hq.example.test:443"), (method, path)
    r = await client.get(f"{BASE}/route?ip=10.0.0.1", headers=h)
    await error_of(r, 409)
    assert stored(node) == before
    r = await client.get(BASE, headers=h)
    status = await r.json()
    assert status["role"] == "traffic" and status["member_name"] == "master1"
    assert status["master"]["name"] == "hq" and status["document"]["revision"] == 7


# --- settings, document, accepting, sync, disable, history ------------------------------------


async def test_selection_and_health_settings(client: Client, node: Node) -> None:
    await create(client, node)
    r = await client.put(f"{BASE}/selection", headers=writer(node, '"rev-1"'),
                         json={"method": "anycast", "anycast_address": "192.0.2.10",
                               "master_fallback_limit": 5})
    assert r.status == 200, await r.text()
    sel = (await r.json())["document"]["selection"]
    assert sel["method"] == "anycast" and sel["anycast_tls_name"] == SITE
    assert sel["master_fallback_limit"] == 5
    r = await client.put(f"{BASE}/health-settings", headers=writer(node, '"rev-2"'),
                         json={"interval_seconds": 2, "timeout_seconds": 6})
    assert (await r.json())["document"]["health"] == {"interval_seconds": 2.0,
                                                      "timeout_seconds": 6.0}
    r = await client.put(f"{BASE}/primary", headers=writer(node, '"rev-3"'),
                         json={"name": "hq", "public": "hq.example.test:443",
                               "internal": "hq.int.example.test:8443"})
    primary = (await r.json())["document"]["primary"]
    assert primary["name"] == "hq" and primary["guid"] == node.identity.guid
    assert primary["internal"] == {"host": "hq.int.example.test", "port": 8443}


async def test_replace_the_whole_document(client: Client, node: Node) -> None:
    await create(client, node, traffic_nodes=[tn("tokyo")])
    doc = config_store.load(node.db)
    assert doc is not None
    # the same document (without GUIDs, with another revision): no change, no revision
    same = doc.model_dump(mode="json")
    same["revision"] = 99
    same["primary"]["guid"] = None
    r = await client.put(f"{BASE}/document", headers=writer(node, '"rev-1"'), json=same)
    body = await r.json()
    assert r.status == 200 and body["changed"] is False and body["revision"] == 1
    assert stored(node)[0] == 1
    changed = dict(same, traffic_nodes=[tn("lima")], site_hostname="help.example.test")
    r = await client.put(f"{BASE}/document", headers=writer(node, '"rev-1"'), json=changed)
    body = await r.json()
    assert body["changed"] is True and body["revision"] == 2
    assert body["document"]["primary"]["guid"] == node.identity.guid
    assert body["document"]["site_hostname"] == "help.example.test"
    assert r.headers["ETag"] == '"rev-2"'


async def test_accepting_without_a_reachable_node(client: Client, node: Node) -> None:
    await create(client, node, traffic_nodes=[tn("tokyo")])
    r = await client.put(f"{BASE}/traffic-nodes/Tokyo/accepting",
                         headers=writer(node, '"rev-1"'), json={"accepting": False})
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["name"] == "tokyo" and body["accepting"] is False and body["changed"] is True
    assert body["confirmed"] is False and body["reason"] == "psk_not_set"
    assert body["revision"] == 2 and r.headers["ETag"] == '"rev-2"'
    config = config_store.load(node.db)
    assert config is not None and not config.traffic_nodes[0].accepting
    r = await client.put(f"{BASE}/traffic-nodes/nope/accepting",
                         headers=writer(node, '"rev-2"'), json={"accepting": False})
    await error_of(r, 404)


async def test_sync_needs_a_psk_and_disable(client: Client, node: Node) -> None:
    await create(client, node, traffic_nodes=[tn("tokyo")])
    r = await client.post(f"{BASE}/sync", headers=writer(node))
    assert (await error_of(r, 409))["code"] == "psk_not_set"
    r = await client.get(f"{BASE}/sync", headers=token_for(node, Permission.CONFIG_READ))
    assert (await r.json())["running"] is False
    r = await client.post(f"{BASE}/disable", headers=writer(node, '"rev-1"'))
    assert r.status == 200, await r.text()
    report = await r.json()
    assert report["ok"] is False and report["unreachable"] == ["tokyo"]
    assert report["results"][0]["reason"] == "psk_not_set"
    assert "remove it from the cluster manually" in report["results"][0]["message"]
    assert r.headers["ETag"] == '"rev-0"'
    assert roles.current_role(node.db) is Role.STANDALONE
    r = await client.get(f"{BASE}/history?limit=3", headers=token_for(node,
                                                                       Permission.CONFIG_READ))
    rows = (await r.json())["rows"]
    assert len(rows) == 3
    assert rows[0]["message"].startswith("Disable Cluster: This node is no longer in a cluster")
    assert rows[0]["status"] == 1
    assert dt.datetime.fromisoformat(rows[0]["time"]).tzinfo is not None
    r = await client.get(f"{BASE}/history?limit=0", headers=token_for(node,
                                                                       Permission.CONFIG_READ))
    assert "limit" in fields_of(await error_of(r, 422))


# --- Identify the Expected Node ------------------------------------------------------------------


def healthy(node: Node, *names: str) -> HealthSnapshot:
    now = time.time()
    return HealthSnapshot({
        n: NodeHealth(online=True, software_version=node.software_version, config_revision=1,
                      synced=True, last_seen=now)
        for n in names
    })


@pytest.fixture
def health(node: Node, monkeypatch: pytest.MonkeyPatch) -> Any:
    monitor = monitor_for(node)

    def set_health(snapshot: HealthSnapshot) -> None:
        monkeypatch.setattr(monitor, "snapshot", lambda: snapshot)

    return set_health


async def route(client: Client, node: Node, query: str) -> dict[str, Any]:
    r = await client.get(f"{BASE}/route?{query}", headers=token_for(node, Permission.CONFIG_READ))
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def test_route_decisions(client: Client, node: Node, health: Any) -> None:
    await create(client, node, traffic_nodes=[
        tn("us", prefixes=["10.10.0.0/16"], timezone="-05:00"),
        tn("eu", prefixes=["10.20.0.0/16", "10.20.5.0/24"], timezone="+01:00"),
        tn("asia", prefixes=["10.20.5.0/24"], timezone="+09:00"),
    ], selection={"method": "random"})
    health(healthy(node, "us", "eu", "asia"))

    # prefix: the longest match wins, whatever the method
    got = await route(client, node, "ip=10.10.3.4")
    assert (got["outcome"], got["rule"], got["node"]) == ("node", "prefix", "us")
    assert got["reason"] == "prefix 10.10.0.0/16 (only match)"
    assert got["decision"]["host"] == "us.example.test"
    got = await route(client, node, "ip=10.20.5.9")
    assert got["rule"] == "prefix" and got["node"] in ("eu", "asia")
    assert got["prefix_match"] == {"prefix": "10.20.5.0/24", "nodes": ["eu", "asia"],
                                   "matches": 2, "skipped": []}
    assert "random among 2 tied nodes" in got["reason"]
    got = await route(client, node, "ip=::ffff:10.10.1.1")
    assert got["node"] == "us" and got["client"]["ip"] == "10.10.1.1"

    # random: no prefix matches
    got = await route(client, node, "ip=192.0.2.1&kind=representative")
    assert got["rule"] == "random" and got["reason"] == "random among 3 viable"
    assert got["node"] in ("us", "eu", "asia") and got["prefix_match"] is None
    assert got["client"]["kind"] == "representative"

    # a node that is not viable is passed over, with the reason shown
    health(healthy(node, "eu", "asia"))
    got = await route(client, node, "ip=10.10.3.4")
    assert got["rule"] == "random" and got["node"] in ("eu", "asia")
    assert got["not_viable"] == {"us": "offline"}

    # fallback: nothing viable
    health(healthy(node))
    got = await route(client, node, "ip=10.10.3.4&tz=%2B09:00")
    assert got["outcome"] == "fallback_wanted" and got["rule"] == "fallback"
    assert got["reason"] == "fallback: no viable node (3 offline)"
    assert got["decision"]["host"] == "master1.example.test"
    assert got["decision"]["limit"] == 50
    assert got["client"]["utc_offset_minutes"] == 540


async def test_route_by_timezone(client: Client, node: Node, health: Any) -> None:
    await create(client, node, traffic_nodes=[
        tn("us", timezone="-05:00"), tn("eu", timezone="+01:00"), tn("asia", timezone="+09:00"),
    ], selection={"method": "timezone"})
    health(healthy(node, "us", "eu", "asia"))
    for tz, expected in (("540", "asia"), ("%2B08:00", "asia"), ("-300", "us"),
                         ("UTC%2B1", "eu")):
        got = await route(client, node, f"ip=192.0.2.1&tz={tz}")
        assert (got["rule"], got["node"]) == ("timezone", expected), (tz, got)


ROUTE_BAD = [
    ("", "ip"),
    ("ip=10.0.0.256", "ip"),
    ("ip=host.example.test", "ip"),
    ("ip=10.0.0.1&tz=%2B25:00", "tz"),
    ("ip=10.0.0.1&tz=900", "tz"),
    ("ip=10.0.0.1&tz=soon", "tz"),
    ("ip=10.0.0.1&tz=%2B09:10", "tz"),
    ("ip=10.0.0.1&kind=robot", "kind"),
    ("ip=10.0.0.1&colour=red", "colour"),
]


async def test_route_refuses_bad_parameters(client: Client, node: Node) -> None:
    await create(client, node)
    for query, field in ROUTE_BAD:
        r = await client.get(f"{BASE}/route?{query}",
                             headers=token_for(node, Permission.CONFIG_READ))
        err = await error_of(r, 422)
        assert field in fields_of(err), (query, err)


# --- Command API: get_appliances ----------------------------------------------------------------


def strip_ns(root: ET.Element) -> ET.Element:
    for el in root.iter():
        el.tag = el.tag.split("}")[-1]
    return root


async def appliances(client: Client, node: Node) -> list[dict[str, str]]:
    h = token_for(node, Permission.COMMAND_READ)
    r = await client.get("/api/command?action=get_appliances", headers=h)
    assert r.status == 200, await r.text()
    raw = await r.read()
    root = ET.fromstring(raw)  # noqa: S314 - our own answer
    assert root.tag == "{https://www.beyondtrust.com/namespaces/API/command}appliances"
    strip_ns(root)
    out = []
    for el in root.findall("appliance"):
        entry = {"id": el.get("id", "")}
        entry.update({child.tag: child.text or "" for child in el})
        out.append(entry)
    return out


async def test_get_appliances(client: Client, node: Node) -> None:
    [single] = await appliances(client, node)
    assert single["id"] == node.identity.guid and single["cluster_role"] == "single"
    assert single["name"] == "master1" and single["public_hostname"] == "master1.example.test"
    assert single["failover_role"] == "none" and single["accepting_connections"] == "1"
    assert int(single["timezone_offset"]) % 60 == 0

    await create(client, node, backup={"name": "m2", "public": "m2.example.test:443"},
                 traffic_nodes=[tn("tokyo", timezone="+09:00", guid="tokyo-guid"),
                                tn("lima", timezone="-05:00", accepting=False)])
    got = await appliances(client, node)
    assert [a["name"] for a in got] == ["master1", "m2", "tokyo", "lima"]
    keys = {"id", "name", "public_hostname", "cluster_role", "failover_role",
            "accepting_connections", "timezone_offset"}
    assert all(set(a) == keys for a in got)
    primary, backup, tokyo, lima = got
    assert (primary["cluster_role"], primary["failover_role"]) == ("primary", "primary")
    assert (backup["cluster_role"], backup["failover_role"]) == ("primary", "backup")
    assert tokyo == {"id": "tokyo-guid", "name": "tokyo", "public_hostname": "tokyo.example.test",
                     "cluster_role": "traffic", "failover_role": "none",
                     "accepting_connections": "1", "timezone_offset": "32400"}
    assert (lima["id"], lima["accepting_connections"], lima["timezone_offset"]) == (
        "", "0", "-18000")
    # read access to the Command API is enough; the REST permission is not
    r = await client.get("/api/command?action=get_appliances",
                         headers=token_for(node, Permission.CONFIG_WRITE))
    assert r.status == 403
    r = await client.get("/api/command?action=get_appliances&x=1",
                         headers=token_for(node, Permission.COMMAND_READ))
    assert r.status == 400


# --- the OpenAPI document -----------------------------------------------------------------------


async def test_cluster_operations_are_documented(client: Client) -> None:
    r = await client.get("/api/v1/openapi.json")
    doc = await r.json()
    from tests.web.test_api_v1 import assert_valid_openapi

    assert_valid_openapi(doc)
    paths = doc["paths"]
    expected = {
        BASE: {"get", "post"}, f"{BASE}/document": {"get", "put"},
        f"{BASE}/primary": {"put"}, f"{BASE}/traffic-nodes": {"post"},
        f"{BASE}/traffic-nodes/{{name}}": {"put", "delete"},
        f"{BASE}/traffic-nodes/{{name}}/accepting": {"put"},
        f"{BASE}/selection": {"put"}, f"{BASE}/health-settings": {"put"},
        f"{BASE}/sync": {"get", "post"}, f"{BASE}/disable": {"post"},
        f"{BASE}/history": {"get"}, f"{BASE}/revisions": {"get"}, f"{BASE}/route": {"get"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) == methods, path
    put = paths[f"{BASE}/traffic-nodes/{{name}}"]["put"]
    assert {"409", "412", "422", "428", "404"} <= set(put["responses"])
    assert any(p["name"] == "If-Match" and p["required"] for p in put["parameters"])
    params = {p["name"] for p in paths[f"{BASE}/route"]["get"]["parameters"]}
    assert params == {"ip", "tz", "kind"}
