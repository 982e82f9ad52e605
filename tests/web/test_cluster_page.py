"""/login → Management → Cluster in process: every form field's bad values, stale edits,
CSRF, the read-only view of a traffic node, escaping.

Each bad value must be answered next to its field, keep what was typed, and leave the
stored document exactly as it was (checked in the store, not only on the page).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

import pytest

from atlas.model.config import ClusterConfig
from atlas.node import roles
from atlas.node.roles import MasterIdentity, Role, RoleEvent
from atlas.store import config_store, history
from atlas.store.db import Database
from tests.conftest import InProcessNode, LoginClient

PAGE = "/login/management/cluster"
MASTER = PAGE + "/master"
NODE = PAGE + "/node"
REMOVE = PAGE + "/node/remove"
METHOD = PAGE + "/method"
ACCEPTING = PAGE + "/accepting"
SYNC = PAGE + "/sync"
SYNC_STATUS = PAGE + "/sync/status"
DISABLE = PAGE + "/disable"
LEAVE = PAGE + "/leave"
SITE = "support.example.test"
XSS = "<script>alert(1)</script>"


def field_error(page_text: str, name: str) -> str:
    m = re.search(rf'<p class="field-error" id="f-{re.escape(name)}-error">(.*?)</p>', page_text)
    return html.unescape(m.group(1)) if m else ""


def form_error(page_text: str) -> str:
    m = re.search(r'<p class="form-error" role="alert"[^>]*>(.*?)</p>', page_text, re.S)
    return html.unescape(m.group(1)) if m else ""


def input_value(page_text: str, name: str) -> str | None:
    m = re.search(rf'<input id="f-{re.escape(name)}" name="{re.escape(name)}"[^>]*'
                  r'value="([^"]*)"', page_text)
    return html.unescape(m.group(1)) if m else None


def textarea_value(page_text: str, name: str) -> str | None:
    m = re.search(rf'<textarea id="f-{re.escape(name)}"[^>]*>(.*?)</textarea>', page_text, re.S)
    return html.unescape(m.group(1)) if m else None


def accepting_box(page_text: str, name: str) -> str:
    """"checked" or "unchecked": the Accepting checkbox in traffic node ``name``'s row."""
    row = page_text.split(f'<tr data-name="{html.escape(name)}">')[1].split("</tr>")[0]
    m = re.search(r'<input type="checkbox"[^>]*class="accepting-toggle"[^>]*>', row, re.S)
    assert m is not None
    return "checked" if m.group(0).endswith(" checked>") else "unchecked"


def db_of(target: InProcessNode) -> Database:
    return target.node.db


def snapshot(db: Database) -> tuple[int, str | None, int]:
    """Everything a refused post must leave alone: revision, document, history length."""
    config = config_store.load(db)
    return (config_store.current_revision(db), config.canonical_json() if config else None,
            len(history.recent(db, 10_000)))


def create_fields(**over: str) -> dict[str, str]:
    fields = {
        "site_hostname": SITE, "name": "master1", "public_host": "master1.example.test",
        "public_port": "443", "internal_host": "", "internal_port": "443",
        "master_fallback_limit": "50", "revision": "0",
    }
    fields.update(over)
    return fields


def node_fields(revision: int, **over: str) -> dict[str, str]:
    fields = {
        "name": "osaka", "public_host": "osaka.example.test", "public_port": "443",
        "internal_host": "", "internal_port": "443", "accepting": "on", "prefixes": "",
        "timezone": "+09:00", "capacity": "500", "region": "asia", "revision": str(revision),
    }
    fields.update(over)
    return {k: v for k, v in fields.items() if v is not None}


@pytest.fixture
async def admin(inprocess_node: InProcessNode, login_client: Callable[..., Any]) -> LoginClient:
    client: LoginClient = await login_client(inprocess_node)
    return client


async def create_cluster(admin: LoginClient, **over: str) -> None:
    await admin.get(PAGE)
    page = await admin.post(MASTER, create_fields(**over))
    assert page.status == 200 and page.url.endswith(PAGE), page.text[:2000]


async def add_node(admin: LoginClient, db: Database, name: str, **over: str) -> None:
    await admin.get(NODE)
    fields = node_fields(config_store.current_revision(db), **{
        "name": name, "public_host": f"{name.lower()}.example.test", **over})
    page = await admin.post(NODE, fields)
    assert page.status == 200 and page.url.endswith(PAGE), form_error(page.text) or page.text


@pytest.fixture
async def primary(inprocess_node: InProcessNode, admin: LoginClient) -> LoginClient:
    """A primary master with traffic nodes tokyo and lima."""
    await create_cluster(admin)
    await add_node(admin, db_of(inprocess_node), "tokyo", prefixes="10.20.0.0/16")
    await add_node(admin, db_of(inprocess_node), "lima", timezone="America/Lima")
    return admin


# --- Cluster :: Status ------------------------------------------------------------------


async def test_standalone_page_offers_create_new_cluster(
    inprocess_node: InProcessNode, admin: LoginClient
) -> None:
    page = await admin.get(PAGE)
    assert page.status == 200
    assert "Cluster :: Status" in page.text
    assert "This site instance is not in a cluster." in page.text
    assert 'id="create-cluster">Create New Cluster</button>' in page.text
    assert 'name="site_hostname"' in page.text
    assert "Sync Now" not in page.text and 'id="disable-cluster"' not in page.text
    # the form starts from this node's own identity
    ident = inprocess_node.node.identity
    assert input_value(page.text, "name") == ident.name
    assert input_value(page.text, "public_host") == ident.public.host
    assert input_value(page.text, "public_port") == str(ident.public.port)
    # the menu entry is the real page now, not the "available once" placeholder
    assert 'href="/login/management/cluster"' in page.text
    assert "/login/pending/cluster" not in page.text


async def test_create_new_cluster(inprocess_node: InProcessNode, admin: LoginClient) -> None:
    db = db_of(inprocess_node)
    await create_cluster(admin, internal_host="master1.internal.test", internal_port="8443",
                         master_fallback_limit="7")
    config = config_store.load(db)
    assert config is not None and config.site_hostname == SITE
    assert config.primary.name == "master1"
    assert str(config.primary.public) == "master1.example.test:443"
    assert str(config.primary.internal_address()) == "master1.internal.test:8443"
    assert config.primary.guid == inprocess_node.node.identity.guid
    assert config.selection.master_fallback_limit == 7
    assert roles.current_role(db) is Role.PRIMARY
    page = await admin.get(PAGE)
    assert "This site instance is the primary master node in the cluster." in page.text
    assert 'id="update-primary">Update Primary Node</button>' in page.text
    assert 'id="sync-now">Sync Now</button>' in page.text
    assert 'id="disable-cluster"' in page.text
    assert "When a client is unable to successfully choose a viable default traffic node" \
        in page.text
    assert "Cluster: Created cluster support.example.test" in page.text  # Status History
    assert 'id="sync-needed" role="status" hidden' in page.text  # no traffic nodes yet


CREATE_BAD = [
    ({"site_hostname": ""}, "site_hostname", "hostname must not be empty"),
    ({"site_hostname": "10.0.0.1"}, "site_hostname", "not an IP address"),
    ({"site_hostname": "https://support.example.test/"}, "site_hostname", "without https://"),
    ({"name": ""}, "name", "name must not be empty"),
    ({"name": "n" * 65}, "name", "expected at most 64"),
    ({"name": "tab\there"}, "name", "unprintable character U+0009"),
    ({"public_host": ""}, "public_host", "must not be empty"),
    ({"public_host": "192.0.2.1"}, "public_host", "IP addresses are not supported"),
    ({"public_host": "bad host.example.test"}, "public_host", "is not valid"),
    ({"public_host": SITE}, "public_host", "is the support site hostname"),
    ({"public_port": ""}, "public_port", "Enter the port"),
    ({"public_port": "https"}, "public_port", "is not a number"),
    ({"public_port": "0"}, "public_port", "out of range"),
    ({"public_port": "70000"}, "public_port", "out of range"),
    ({"internal_host": "10.1.1.1"}, "internal_host", "IP addresses are not supported"),
    ({"internal_host": "m.internal.test", "internal_port": "-1"}, "internal_port",
     "is not a number"),
    ({"master_fallback_limit": ""}, "master_fallback_limit", "Enter the master fallback"),
    ({"master_fallback_limit": "-5"}, "master_fallback_limit", "is not a number"),
    ({"master_fallback_limit": "ten"}, "master_fallback_limit", "is not a number"),
    ({"master_fallback_limit": "1000001"}, "master_fallback_limit", "out of range"),
]


async def test_create_new_cluster_bad_values(
    inprocess_node: InProcessNode, admin: LoginClient, subtests: Any
) -> None:
    db = db_of(inprocess_node)
    before = snapshot(db)
    await admin.get(PAGE)
    for over, field, problem in CREATE_BAD:
        with subtests.test(field=field, value=over[field]):
            page = await admin.post(MASTER, create_fields(**over))
            assert page.status == 400
            assert problem.lower() in field_error(page.text, field).lower(), page.text[-4000:]
            assert "Please correct the field" in form_error(page.text)
            assert input_value(page.text, field) == over[field]  # what was typed is kept
            assert snapshot(db) == before
            assert roles.current_role(db) is Role.STANDALONE


# --- Cluster :: Master Node Configuration (Update Primary Node) -------------------------


async def test_update_primary_node(inprocess_node: InProcessNode, primary: LoginClient) -> None:
    db = db_of(inprocess_node)
    revision = config_store.current_revision(db)
    await primary.get(PAGE)
    page = await primary.post(MASTER, {
        "name": "master-one", "public_host": "Master1.Example.Test.", "public_port": "8443",
        "internal_host": "master1.example.test", "internal_port": "8443",
        "master_fallback_limit": "0", "revision": str(revision),
    })
    assert page.status == 200 and page.url.endswith(PAGE)
    config = config_store.load(db)
    assert config is not None and config.revision == revision + 1
    assert config.primary.name == "master-one"
    assert str(config.primary.public) == "master1.example.test:8443"
    assert config.primary.internal is None  # same as the public address
    assert config.selection.master_fallback_limit == 0
    assert config.site_hostname == SITE and len(config.traffic_nodes) == 2
    assert "The primary master node has been updated." in page.text


UPDATE_BAD = [
    *[(o, f, p) for o, f, p in CREATE_BAD if f != "site_hostname"],
    ({"name": "TOKYO"}, "name", "already used by the traffic node “tokyo”"),
    ({"public_host": "lima.example.test"}, "public_host", "already used by the traffic node"),
]


async def test_update_primary_node_bad_values(
    inprocess_node: InProcessNode, primary: LoginClient, subtests: Any
) -> None:
    db = db_of(inprocess_node)
    before = snapshot(db)
    await primary.get(PAGE)
    for over, field, problem in UPDATE_BAD:
        with subtests.test(field=field, value=over[field]):
            fields = create_fields(revision=str(before[0]), **over)
            del fields["site_hostname"]
            page = await primary.post(MASTER, fields)
            assert page.status == 400
            assert problem.lower() in field_error(page.text, field).lower(), page.text[-4000:]
            assert input_value(page.text, field) == over[field]
            assert snapshot(db) == before


async def test_stale_primary_update_is_refused(
    inprocess_node: InProcessNode, primary: LoginClient
) -> None:
    db = db_of(inprocess_node)
    stale = config_store.current_revision(db)
    await add_node(primary, db, "quito")  # someone else's change
    before = snapshot(db)
    await primary.get(PAGE)
    fields = create_fields(revision=str(stale), name="renamed")
    del fields["site_hostname"]
    page = await primary.post(MASTER, fields)
    assert page.status == 409
    message = form_error(page.text)
    assert "Nothing was saved: someone else changed the cluster configuration" in message
    assert f"this page showed revision {stale}; it is now revision {before[0]}" in message
    assert input_value(page.text, "name") == "renamed"  # kept
    assert snapshot(db) == before


# --- Cluster :: Add / Edit / Remove Traffic Node ----------------------------------------


async def test_add_traffic_node_form_has_every_field(primary: LoginClient) -> None:
    page = await primary.get(NODE)
    assert page.status == 200
    assert "Cluster :: Add Traffic Node" in page.text
    for name in ("name", "public_host", "public_port", "internal_host", "internal_port",
                 "timezone", "capacity", "region"):
        assert input_value(page.text, name) is not None, name
    assert 'id="f-accepting" name="accepting" type="checkbox" value="on" checked' in page.text
    assert textarea_value(page.text, "prefixes") == ""
    assert "in the form of ip.add.re.ss[/netmask]" in page.text
    assert "the client is assigned to the traffic node with the longest matching prefix" \
        in page.text
    assert 'id="save-node">Add Traffic Node</button>' in page.text


async def test_add_traffic_node_stores_it_and_shows_prefix_notices(
    inprocess_node: InProcessNode, primary: LoginClient
) -> None:
    db = db_of(inprocess_node)
    revision = config_store.current_revision(db)
    await primary.get(NODE)
    page = await primary.post(NODE, node_fields(
        revision, prefixes="10.1.2.3/16\n\n192.168.7.0/255.255.255.0\n10.1.0.0/16\n2001:db8::1/32",
        internal_host="osaka.internal.test", internal_port="9443", accepting="",
        timezone="asia/tokyo", capacity="250", region="  kansai ",
    ))
    assert page.status == 200 and page.url.endswith(PAGE)
    config = config_store.load(db)
    assert config is not None and config.revision == revision + 1
    osaka = config.traffic_nodes[-1]
    assert osaka.name == "osaka" and not osaka.accepting
    assert osaka.prefixes == ("10.1.0.0/16", "192.168.7.0/24", "2001:db8::/32")
    assert osaka.timezone == "Asia/Tokyo" and osaka.capacity == 250 and osaka.region == "kansai"
    assert str(osaka.internal_address()) == "osaka.internal.test:9443"
    text = html.unescape(page.text)
    assert "Traffic node “osaka” added." in text
    assert "line 1: 10.1.2.3/16 has host bits set; stored as 10.1.0.0/16" in text
    assert "line 4: 10.1.0.0/16 repeats line 1 (10.1.0.0/16); folded" in text
    assert "line 5: 2001:db8::1/32 has host bits set; stored as 2001:db8::/32" in text
    # every change raises the sync-needed warning until the next successful sync
    assert config_store.sync_needed(db)
    assert 'id="sync-needed" role="status">' in page.text
    assert "Cluster: admin added traffic node osaka (osaka.internal.test:9443)." in text


NODE_BAD = [
    ({"name": ""}, "name", "name must not be empty"),
    ({"name": "MASTER1"}, "name", "already used by the primary master node"),
    ({"name": "Tokyo"}, "name", "already used by the traffic node 'tokyo'"),
    ({"name": "n" * 65}, "name", "expected at most 64"),
    ({"name": "bell\x07"}, "name", "unprintable character U+0007"),
    ({"public_host": ""}, "public_host", "must not be empty"),
    ({"public_host": "2001:db8::1"}, "public_host", "IP addresses are not supported"),
    ({"public_host": "tokyo.example.test"}, "public_host", "already used by the traffic node"),
    ({"public_host": "master1.example.test"}, "public_host", "primary master node"),
    ({"public_host": SITE}, "public_host", "is the support site hostname"),
    ({"public_host": "-bad-.example.test"}, "public_host", "is not valid"),
    ({"public_host": "osaka.example.test:443"}, "public_host", "without a port"),
    ({"public_port": "x"}, "public_port", "is not a number"),
    ({"public_port": ""}, "public_port", "Enter the port"),
    ({"public_port": "65536"}, "public_port", "out of range"),
    ({"internal_host": "10.0.0.1"}, "internal_host", "IP addresses are not supported"),
    ({"internal_host": "osaka.internal.test", "internal_port": "0"}, "internal_port",
     "out of range"),
    ({"prefixes": "10.0.0.0/33"}, "prefixes", "line 1"),
    ({"prefixes": "10.0.0.0/8\nnot-a-prefix"}, "prefixes", "line 2: 'not-a-prefix'"),
    ({"prefixes": "10.0.0.0/255.0.255.0"}, "prefixes", "not contiguous"),
    ({"prefixes": "10.0.0.0/0.0.255.255"}, "prefixes", "wildcard"),
    ({"timezone": "+25:00"}, "timezone", "out of range"),
    ({"timezone": "+05:20"}, "timezone", "expected minutes 00, 15, 30 or 45"),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone", "is not a known timezone"),
    ({"timezone": ""}, "timezone", "must not be empty"),
    ({"capacity": "0"}, "capacity", "out of range"),
    ({"capacity": "lots"}, "capacity", "is not a number"),
    ({"capacity": "1000001"}, "capacity", "out of range"),
    ({"capacity": ""}, "capacity", "Enter the capacity"),
    ({"region": "r" * 65}, "region", "expected at most 64"),
    ({"region": "line\nbreak"}, "region", "unprintable"),
]


def kept_value(page_text: str, field: str) -> str | None:
    if field == "prefixes":
        value = textarea_value(page_text, field)
        return None if value is None else value.replace("\r\n", "\n")
    return input_value(page_text, field)


async def test_add_traffic_node_bad_values(
    inprocess_node: InProcessNode, primary: LoginClient, subtests: Any
) -> None:
    db = db_of(inprocess_node)
    before = snapshot(db)
    await primary.get(NODE)
    for over, field, problem in NODE_BAD:
        with subtests.test(field=field, value=over[field]):
            page = await primary.post(NODE, node_fields(before[0], **over))
            assert page.status == 400
            assert problem.lower() in field_error(page.text, field).lower(), page.text[-5000:]
            assert "Cluster :: Add Traffic Node" in page.text
            assert kept_value(page.text, field) == over[field]
            assert snapshot(db) == before


async def test_edit_traffic_node_bad_values(
    inprocess_node: InProcessNode, primary: LoginClient, subtests: Any
) -> None:
    db = db_of(inprocess_node)
    before = snapshot(db)
    await primary.get(NODE + "?name=tokyo")
    # tokyo's own name and address are not clashes when tokyo is the node edited
    cases = [*[c for c in NODE_BAD if c[0].get("name") != "Tokyo"
               and c[0].get("public_host") != "tokyo.example.test"],
             ({"name": "LIMA"}, "name", "already used by the traffic node 'lima'"),
             ({"public_host": "lima.example.test"}, "public_host", "already used by the "
                                                                   "traffic node 'lima'")]
    for over, field, problem in cases:
        with subtests.test(field=field, value=over[field]):
            fields = node_fields(before[0], **{"original_name": "tokyo", "name": "tokyo",
                                               "public_host": "tokyo.example.test", **over})
            page = await primary.post(NODE, fields)
            assert page.status == 400
            assert problem.lower() in field_error(page.text, field).lower(), page.text[-5000:]
            assert "Cluster :: Edit Traffic Node" in page.text
            assert 'name="original_name" value="tokyo"' in page.text
            assert kept_value(page.text, field) == over[field]
            assert snapshot(db) == before


async def test_edit_traffic_node(inprocess_node: InProcessNode, primary: LoginClient) -> None:
    db = db_of(inprocess_node)
    page = await primary.get(NODE + "?name=tokyo")
    assert page.status == 200 and "Cluster :: Edit Traffic Node" in page.text
    assert input_value(page.text, "name") == "tokyo"
    assert textarea_value(page.text, "prefixes") == "10.20.0.0/16"
    assert 'id="save-node">Update Traffic Node</button>' in page.text
    # the GUID a node reported is kept across edits (the form does not show it)
    config = config_store.load(db)
    assert config is not None
    nodes = (config.traffic_nodes[0].model_copy(update={"guid": "tokyo-guid"}),
             *config.traffic_nodes[1:])
    config_store.save(db, config.model_copy(update={"traffic_nodes": nodes}),
                      expected_revision=config.revision, author="test")
    revision = config_store.current_revision(db)
    await primary.get(NODE + "?name=tokyo")
    page = await primary.post(NODE, node_fields(
        revision, original_name="tokyo", name="Tokyo-1", public_host="tokyo.example.test",
        prefixes="10.20.0.0/16\n10.21.0.0/16", accepting=""))
    assert page.status == 200 and page.url.endswith(PAGE), form_error(page.text)
    config = config_store.load(db)
    assert config is not None
    assert [n.name for n in config.traffic_nodes] == ["Tokyo-1", "lima"]  # order kept
    tokyo = config.traffic_nodes[0]
    assert tokyo.guid == "tokyo-guid" and not tokyo.accepting
    assert tokyo.prefixes == ("10.20.0.0/16", "10.21.0.0/16")


async def test_stale_traffic_node_edit_is_refused(
    inprocess_node: InProcessNode, primary: LoginClient
) -> None:
    db = db_of(inprocess_node)
    stale = config_store.current_revision(db)
    await add_node(primary, db, "quito")  # meanwhile, another administrator
    before = snapshot(db)
    await primary.get(NODE + "?name=tokyo")
    page = await primary.post(NODE, node_fields(stale, original_name="tokyo", name="tokyo",
                                                public_host="tokyo.example.test",
                                                region="edited"))
    assert page.status == 409
    assert "someone else changed the cluster configuration" in form_error(page.text)
    assert input_value(page.text, "region") == "edited"
    assert snapshot(db) == before
    # adding is refused the same way
    page = await primary.post(NODE, node_fields(stale, name="bogota",
                                                public_host="bogota.example.test"))
    assert page.status == 409 and snapshot(db) == before


async def test_editing_a_node_someone_removed(
    inprocess_node: InProcessNode, primary: LoginClient
) -> None:
    db = db_of(inprocess_node)
    before = snapshot(db)
    await primary.get(NODE)
    page = await primary.post(NODE, node_fields(before[0], original_name="gone", name="gone",
                                                public_host="gone.example.test"))
    assert page.status == 409
    assert "no longer exists" in form_error(page.text)
    assert snapshot(db) == before
    page = await primary.get(NODE + "?name=gone")
    assert page.url.endswith(PAGE)
    assert "There is no traffic node named “gone”" in html.unescape(page.text)


async def test_remove_traffic_node_with_confirmation(
    inprocess_node: InProcessNode, primary: LoginClient
) -> None:
    db = db_of(inprocess_node)
    page = await primary.get(REMOVE + "?name=lima")
    assert page.status == 200
    assert "Remove traffic node “lima”?" in html.unescape(page.text)
    assert config_store.load(db) is not None
    assert len(config_store.load(db).traffic_nodes) == 2  # type: ignore[union-attr]
    page = await primary.post(REMOVE, {"name": "lima",
                                       "revision": str(config_store.current_revision(db))})
    assert page.status == 200 and page.url.endswith(PAGE)
    config = config_store.load(db)
    assert config is not None and [n.name for n in config.traffic_nodes] == ["tokyo"]
    assert "Cluster: admin removed traffic node lima" in page.text


async def test_stale_remove_is_refused(inprocess_node: InProcessNode,
                                       primary: LoginClient) -> None:
    db = db_of(inprocess_node)
    stale = config_store.current_revision(db)
    await add_node(primary, db, "quito")
    before = snapshot(db)
    await primary.get(REMOVE + "?name=lima")
    page = await primary.post(REMOVE, {"name": "lima", "revision": str(stale)})
    assert page.status == 409
    assert "someone else changed the cluster configuration" in html.unescape(page.text)
    assert snapshot(db) == before


# --- Method for Choosing Traffic Nodes --------------------------------------------------


def method_fields(revision: int, **over: str) -> dict[str, str]:
    fields = {"method": "random", "srv_name": "", "a_record_hostname": "",
              "anycast_address": "", "anycast_port": "443", "anycast_tls_name": "",
              "revision": str(revision)}
    fields.update(over)
    return fields


METHOD_BAD = [
    ({"method": "srv"}, "srv_name", "required when the method is 'srv'"),
    ({"method": "srv", "srv_name": "bad name!"}, "srv_name", "is not valid"),
    ({"method": "a_record"}, "a_record_hostname", "required when the method is 'a_record'"),
    ({"method": "a_record", "a_record_hostname": SITE}, "a_record_hostname",
     "is the support site hostname"),
    ({"method": "a_record", "a_record_hostname": "10.0.0.1"}, "a_record_hostname",
     "not an IP address"),
    ({"method": "anycast"}, "anycast_address", "required when the method is 'anycast'"),
    ({"method": "anycast", "anycast_address": "anycast.example.test"}, "anycast_address",
     "is not an IP address"),
    ({"method": "anycast", "anycast_address": "224.0.0.1"}, "anycast_address",
     "cannot be an anycast address"),
    ({"method": "anycast", "anycast_address": "192.0.2.10", "anycast_port": "99999"},
     "anycast_port", "out of range"),
    ({"method": "anycast", "anycast_address": "192.0.2.10", "anycast_port": "x"},
     "anycast_port", "is not a number"),
    ({"method": "anycast", "anycast_address": "192.0.2.10", "anycast_tls_name": "192.0.2.10"},
     "anycast_tls_name", "not an IP address"),
    ({"method": "carrier-pigeon"}, "method", "Choose one of: Random, SRV Record Lookup"),
]


async def test_method_bad_values(
    inprocess_node: InProcessNode, primary: LoginClient, subtests: Any
) -> None:
    db = db_of(inprocess_node)
    before = snapshot(db)
    await primary.get(PAGE)
    for over, field, problem in METHOD_BAD:
        with subtests.test(field=field, **over):
            page = await primary.post(METHOD, method_fields(before[0], **over))
            assert page.status == 400
            assert problem.lower() in field_error(page.text, field).lower(), page.text[-5000:]
            if field != "method":
                assert input_value(page.text, field) == over.get(field, "")
            assert snapshot(db) == before


async def test_method_is_saved(inprocess_node: InProcessNode, primary: LoginClient) -> None:
    db = db_of(inprocess_node)
    page = await primary.get(PAGE)
    for m in ("Random", "SRV Record Lookup", "A Record Lookup", "IP Anycast", "Timezone Offset"):
        assert f">{m}</option>" in page.text
    page = await primary.post(METHOD, method_fields(
        config_store.current_revision(db), method="anycast", anycast_address="192.0.2.10",
        anycast_port="8443"))
    assert page.status == 200 and page.url.endswith(PAGE), form_error(page.text)
    config = config_store.load(db)
    assert config is not None
    s = config.selection
    assert (s.method.value, s.anycast_address, s.anycast_port, s.anycast_tls_name) == \
        ("anycast", "192.0.2.10", 8443, SITE)
    assert '<option value="anycast" selected>IP Anycast</option>' in page.text


async def test_stale_method_is_refused(inprocess_node: InProcessNode,
                                       primary: LoginClient) -> None:
    db = db_of(inprocess_node)
    stale = config_store.current_revision(db)
    await add_node(primary, db, "quito")
    before = snapshot(db)
    await primary.get(PAGE)
    page = await primary.post(METHOD, method_fields(stale, method="timezone"))
    assert page.status == 409
    assert "someone else changed" in form_error(page.text)
    assert snapshot(db) == before


# --- Accepting New Client Connections (fetch) -------------------------------------------


async def post_json(client: LoginClient, path: str, body: object,
                    token: str | None = None) -> tuple[int, Any]:
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["X-CSRF-Token"] = token
    async with client.session.post(path, json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_accepting_is_saved_at_once(inprocess_node: InProcessNode,
                                          primary: LoginClient) -> None:
    db = db_of(inprocess_node)
    await primary.get(PAGE)
    revision = config_store.current_revision(db)
    status, body = await post_json(primary, ACCEPTING,
                                   {"name": "tokyo", "accepting": False, "revision": revision},
                                   primary.last_token)
    assert status == 200, body
    assert body["accepting"] is False and body["revision"] == revision + 1
    assert body["confirmed"] is False  # no PSK here: the node could not be told
    assert "could not be told at once (psk_not_set)" in body["message"]
    assert body["sync_needed"] is True and "tokyo" in body["nodes_needing_sync"]
    config = config_store.load(db)
    assert config is not None and not config.traffic_nodes[0].accepting
    assert config.traffic_nodes[1].accepting
    # the page now draws the checkbox unchecked and shows the new revision
    page = await primary.get(PAGE)
    assert f'data-revision="{revision + 1}"' in page.text
    assert accepting_box(page.text, "tokyo") == "unchecked"
    assert accepting_box(page.text, "lima") == "checked"


async def test_accepting_refusals(inprocess_node: InProcessNode, primary: LoginClient) -> None:
    db = db_of(inprocess_node)
    await primary.get(PAGE)
    token = primary.last_token
    revision = config_store.current_revision(db)
    before = snapshot(db)
    cases: list[tuple[object, int, str]] = [
        ({"name": "tokyo", "accepting": False, "revision": revision - 1}, 409,
         "configuration changed since this page was loaded"),
        ({"name": "tokyo", "accepting": False}, 409, "changed since this page was loaded"),
        ({"name": "atlantis", "accepting": False, "revision": revision}, 404,
         "no traffic node named “atlantis”"),
        ({"name": "tokyo", "accepting": "no", "revision": revision}, 400, "true or false"),
        ({"accepting": False, "revision": revision}, 400, "name"),
        ([1, 2], 400, "JSON object"),
    ]
    for body, status, words in cases:
        got, answer = await post_json(primary, ACCEPTING, body, token)
        assert got == status, (body, answer)
        assert words in answer["error"], (body, answer)
        assert snapshot(db) == before
    # stale answers carry the stored value so the page can put the checkbox back
    _, answer = await post_json(primary, ACCEPTING, cases[0][0], token)
    assert answer["accepting"] is True and answer["revision"] == revision


async def test_accepting_without_javascript(inprocess_node: InProcessNode,
                                            primary: LoginClient) -> None:
    db = db_of(inprocess_node)
    page = await primary.get(PAGE)
    assert "<noscript><button type=\"submit\" class=\"small\">Save</button></noscript>" \
        in page.text
    page = await primary.post(ACCEPTING, {"name": "lima",
                                          "revision": str(config_store.current_revision(db))})
    assert page.status == 200 and page.url.endswith(PAGE)
    config = config_store.load(db)
    assert config is not None and not config.traffic_nodes[1].accepting
    assert "“lima” no longer accepts new client connections" in html.unescape(page.text)


# --- CSRF -------------------------------------------------------------------------------


async def test_posts_without_csrf_token_are_refused(
    inprocess_node: InProcessNode, primary: LoginClient
) -> None:
    db = db_of(inprocess_node)
    before = snapshot(db)
    revision = str(before[0])
    posts = {
        MASTER: create_fields(revision=revision, name="evil"),
        NODE: node_fields(before[0], name="evil", public_host="evil.example.test"),
        REMOVE: {"name": "tokyo", "revision": revision},
        METHOD: method_fields(before[0], method="timezone"),
        ACCEPTING: {"name": "tokyo", "revision": revision},
        SYNC: {},
        DISABLE: {},
        LEAVE: {},
    }
    for path, data in posts.items():
        for csrf in (False, "forged-token"):
            page = await primary.post(path, data, csrf=csrf)
            assert page.status == 403, path
            assert "did not carry this page's security token" in html.unescape(page.text)
    # fetch() without the header, and with a wrong one
    for token in (None, "forged"):
        status, body = await post_json(primary, ACCEPTING,
                                       {"name": "tokyo", "accepting": False,
                                        "revision": before[0]}, token)
        assert status == 403 and "security token" in body["error"]
    assert snapshot(db) == before
    assert roles.current_role(db) is Role.PRIMARY


async def test_signed_out_requests_are_refused(inprocess_node: InProcessNode,
                                               login_client: Callable[..., Any]) -> None:
    anonymous: LoginClient = await login_client(inprocess_node, signed_in=False)
    page = await anonymous.get(PAGE)
    assert "/login?next=" in page.url
    async with anonymous.session.get(SYNC_STATUS, headers={"Accept": "application/json"}) as r:
        assert r.status == 401


# --- the view of a traffic node ---------------------------------------------------------


def make_traffic_node(db: Database) -> ClusterConfig:
    """This node as traffic node "osaka" of master1, holding a synced document."""
    config = ClusterConfig.model_validate({
        "revision": 7,
        "site_hostname": SITE,
        "primary": {"name": "master1", "guid": "m-guid", "public": "master1.example.test:443",
                    "internal": "master1.internal.test:8443"},
        "traffic_nodes": [
            {"name": "osaka", "public": "osaka.example.test:443", "accepting": True},
            {"name": XSS, "public": "x.example.test:443", "accepting": False},
        ],
    })
    master = MasterIdentity(SITE, "master1", "m-guid", "master1.internal.test:8443")
    config_store.apply_synced(
        db, config.canonical_json(), 7,
        then=lambda: roles.transition(db, RoleEvent.ACCEPT_SYNC, master=master, member="osaka"),
    )
    return config


async def test_traffic_node_shows_the_cluster_read_only(
    inprocess_node: InProcessNode, admin: LoginClient
) -> None:
    db = db_of(inprocess_node)
    make_traffic_node(db)
    page = await admin.get(PAGE)
    assert page.status == 200
    text = html.unescape(re.sub(r"\s+", " ", page.text))
    assert f"This site instance is a traffic node of {SITE}; its cluster is configured on " \
           "the primary master master1." in re.sub(r"<[^>]+>", "", text)
    assert 'href="https://master1.example.test/login/management/cluster"' in page.text
    assert "It is named “osaka” there." in text
    for form_id in ("master-form", "method-form", "sync-form", "node-form"):
        assert f'id="{form_id}"' not in page.text
    assert "accepting-toggle" not in page.text and "Edit Node" not in page.text
    assert "Add New Traffic Node" not in page.text and 'id="disable-cluster"' not in page.text
    assert page.text.count('type="checkbox" disabled') == 2
    assert "master1.internal.test:8443" in page.text  # the master's facts, read-only
    assert 'id="leave-cluster"' in page.text
    assert XSS not in page.text and html.escape(XSS) in page.text

    # every change is refused here, and nothing is stored
    before = snapshot(db)
    await admin.get(PAGE)
    posts = {
        MASTER: create_fields(revision="7", name="evil"),
        NODE: node_fields(7, name="evil", public_host="evil.example.test"),
        REMOVE: {"name": "osaka", "revision": "7"},
        METHOD: method_fields(7, method="timezone"),
        DISABLE: {},
    }
    for path, data in posts.items():
        page = await admin.post(path, data)
        assert page.status == 409, path
        assert "Nothing was changed" in html.unescape(page.text), path
    status, body = await post_json(admin, ACCEPTING,
                                   {"name": "osaka", "accepting": False, "revision": 7},
                                   admin.last_token)
    assert status == 409 and "this node is traffic" in body["error"]
    status, body = await post_json(admin, SYNC, {}, admin.last_token)
    assert status == 409 and "Sync Now was not started" in body["error"]
    for path in (NODE, REMOVE + "?name=osaka", DISABLE):
        page = await admin.get(path)
        assert page.status == 409, path
    assert snapshot(db) == before
    assert roles.current_role(db) is Role.TRAFFIC


async def test_traffic_node_can_leave_its_cluster_by_hand(
    inprocess_node: InProcessNode, admin: LoginClient
) -> None:
    db = db_of(inprocess_node)
    make_traffic_node(db)
    page = await admin.get(LEAVE)
    assert page.status == 200 and "Remove this node from its cluster?" in page.text
    page = await admin.post(LEAVE, {})
    assert page.status == 200 and page.url.endswith(PAGE)
    assert roles.current_role(db) is Role.STANDALONE and config_store.load(db) is None
    assert "This node is no longer in a cluster." in page.text
    assert "This site instance is not in a cluster." in page.text


# --- escaping ---------------------------------------------------------------------------


async def test_markup_in_names_is_shown_as_text(
    inprocess_node: InProcessNode, primary: LoginClient
) -> None:
    db = db_of(inprocess_node)
    await add_node(primary, db, XSS, public_host="xss.example.test",
                   region='"><img src=x onerror=alert(2)>')
    config = config_store.load(db)
    assert config is not None and config.traffic_nodes[-1].name == XSS  # kept as typed
    for path, params in ((PAGE, {}), (NODE, {"name": XSS}), (REMOVE, {"name": XSS})):
        async with primary.session.get(path, params=params) as r:
            text = await r.text()
            assert r.status == 200, path
        assert XSS not in text, path
        assert "<img src=x" not in text, path
        assert html.escape(XSS) in text, path
    page = await primary.get(PAGE)
    assert "/login/management/cluster/node?name=%3Cscript%3Ealert%281%29%3C%2Fscript%3E" \
        in page.text


# --- Sync Now and Disable Cluster without traffic nodes answering ------------------------


async def test_sync_now_needs_the_pre_shared_key(inprocess_node: InProcessNode,
                                                 primary: LoginClient) -> None:
    await primary.get(PAGE)
    status, body = await post_json(primary, SYNC, {}, primary.last_token)
    assert status == 409
    assert "no Inter-appliance Communication Pre-shared Key" in body["error"]
    page = await primary.post(SYNC, {})
    assert page.status == 409
    assert "Sync Now was not started" in html.unescape(page.text)
    page = await primary.get(PAGE)
    assert 'id="psk-missing"' in page.text


async def test_disable_cluster_names_unreachable_nodes(
    inprocess_node: InProcessNode, primary: LoginClient
) -> None:
    db = db_of(inprocess_node)
    page = await primary.get(DISABLE)
    assert page.status == 200
    text = html.unescape(page.text)
    assert "Disable the cluster support.example.test?" in text
    assert "This command will remove all nodes, including this one, from the cluster." in text
    assert roles.current_role(db) is Role.PRIMARY  # the confirmation step changed nothing
    page = await primary.post(DISABLE, {})
    assert page.status == 200 and page.url.endswith(PAGE)
    assert roles.current_role(db) is Role.STANDALONE and config_store.load(db) is None
    text = html.unescape(page.text)
    assert "Disable Cluster: notification results" in text
    assert 'id="disable-unreachable"' in page.text
    unreachable = text.split('id="disable-unreachable">')[1].split("</p>")[0]
    assert "tokyo" in unreachable and "lima" in unreachable
    assert "Disable Cluster: could not notify tokyo" in text  # Status History
    assert "This site instance is not in a cluster." in text
    # the results are shown once
    page = await primary.get(PAGE)
    assert "notification results" not in page.text
