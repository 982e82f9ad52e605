"""API and representative accounts travel with data sync (design section 4).

The master and its traffic nodes run in this process over real TLS, as in
``tests/node/test_sync.py`` (whose cluster helper this reuses); the traffic nodes here
also serve ``/oauth2/token`` and ``/api/command``, so a test can do what the guide tells
an operator to do: ask each traffic node for its connected clients.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from atlas.net import certs
from atlas.net.tls import client_context, server_context
from atlas.node import cluster, internal_api
from atlas.node.app import NODE
from atlas.node.datadir import DataDir
from atlas.node.internal_api import PREFIX
from atlas.node.peers import PeerClient, PeerRejected
from atlas.node.sync import failure_message, sync_payload
from atlas.store import (
    account_sync,
    api_accounts,
    config_store,
    history,
    representatives,
)
from atlas.store.account_sync import InvalidAccounts, parse_accounts
from atlas.store.api_accounts import Permission
from atlas.store.db import Database
from atlas.store.passwords import hash_password
from atlas.web import command_api, oauth
from tests.node.test_sync import SITE, InProcessCluster, Served, entries

REP_PASSWORD = "correct horse battery"


class ApiCluster(InProcessCluster):
    """Traffic nodes that also serve the OAuth token endpoint and the Command API."""

    async def traffic(self, name: str, psk: str | None = "test pre-shared key") -> Served:
        node, port = self.make_node(name, psk)
        app = web.Application()
        app[NODE] = node
        oauth.setup(app)
        command_api.setup(app)
        internal_api.setup(app)
        runner = web.AppRunner(app)
        await runner.setup()
        dd = DataDir(node.datadir.root)
        site = web.TCPSite(runner, "127.0.0.1", port,
                           ssl_context=server_context(dd.cert_file, dd.key_file))
        await site.start()
        served = self.served[name] = Served(node, port, runner)
        return served


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[ApiCluster]:
    w = ApiCluster(tmp_path)
    try:
        yield w
    finally:
        await w.close()


@pytest.fixture
async def http(world: ApiCluster) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_context(world.ca_dir / certs.CA_CERT))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def get_token(
    http: aiohttp.ClientSession, t: Served, client_id: str, secret: str
) -> tuple[int, dict[str, Any]]:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    async with http.post(
        f"https://{t.address}/oauth2/token", data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    ) as response:
        return response.status, await response.json()


async def connected_clients(
    http: aiohttp.ClientSession, t: Served, token: str
) -> tuple[int, str]:
    async with http.get(
        f"https://{t.address}/api/command", params={"action": "get_connected_clients"},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, await response.text()


def held_accounts(db: Database) -> str:
    return account_sync.export_accounts(db).canonical_json()


async def test_api_account_from_the_master_works_on_a_traffic_node(
    world: ApiCluster, http: aiohttp.ClientSession
) -> None:
    t1 = await world.traffic("t1")
    # A standalone node's own accounts are replaced when it joins.
    local = api_accounts.create_account(t1.node.db, "local", frozenset({Permission.COMMAND_READ}))
    master = world.master()
    cluster.create_cluster(master, SITE, traffic_nodes=entries(t1))
    made = api_accounts.create_account(
        master.db, "integration", frozenset({Permission.COMMAND_READ})
    )
    client_id, secret = made.account.client_id, made.client_secret

    status, body = await get_token(http, t1, client_id, secret)
    assert status == 401 and body["error"] == "invalid_client"

    assert (await cluster.sync_now(master)).ok
    status, body = await get_token(http, t1, client_id, secret)
    assert status == 200, body
    token = body["access_token"]
    status, text = await connected_clients(http, t1, token)
    assert status == 200, text
    root = ET.fromstring(text)  # noqa: S314 - our own server
    assert root.tag == f"{{{command_api.NAMESPACE}}}connected_clients"
    assert (await get_token(http, t1, local.account.client_id, local.client_secret))[0] == 401
    assert api_accounts.get_account_by_client_id(t1.node.db, local.account.client_id) is None

    # Syncing unchanged accounts keeps the node's tokens.
    assert (await cluster.sync_now(master)).ok
    assert (await connected_clients(http, t1, token))[0] == 200

    # Revoked on the master: "sync needed", then refused on the traffic node.
    assert api_accounts.revoke_account(master.db, made.account.id)
    assert config_store.nodes_needing_sync(master.db) == ["t1"]
    assert (await cluster.sync_now(master)).ok
    assert not config_store.sync_needed(master.db)
    status, body = await get_token(http, t1, client_id, secret)
    assert status == 401 and body["error"] == "invalid_client"
    assert (await connected_clients(http, t1, token))[0] == 401
    assert held_accounts(t1.node.db) == held_accounts(master.db)


async def test_representatives_follow_the_master(world: ApiCluster) -> None:
    t1 = await world.traffic("t1")
    master = world.master()
    cluster.create_cluster(master, SITE, traffic_nodes=entries(t1))
    assert (await cluster.sync_now(master)).ok
    assert not config_store.sync_needed(master.db)

    rep = representatives.create(master.db, "alice", "Alice Example", REP_PASSWORD)
    assert config_store.nodes_needing_sync(master.db) == ["t1"]
    assert (await cluster.sync_now(master)).ok
    assert not config_store.sync_needed(master.db)
    on_t1 = representatives.get_by_username(t1.node.db, "alice")
    assert on_t1 is not None and on_t1.display_name == "Alice Example" and on_t1.enabled
    assert representatives.authenticate(t1.node.db, "alice", REP_PASSWORD, now=0) is not None

    representatives.update(master.db, rep.id, display_name="Alice E.", enabled=False)
    assert config_store.sync_needed(master.db)
    assert (await cluster.sync_now(master)).ok
    on_t1 = representatives.get_by_username(t1.node.db, "alice")
    assert on_t1 is not None and on_t1.display_name == "Alice E." and not on_t1.enabled
    assert not config_store.sync_needed(master.db)

    master.db.execute("DELETE FROM representatives")
    assert config_store.sync_needed(master.db)
    assert (await cluster.sync_now(master)).ok
    assert representatives.list_all(t1.node.db) == []


async def test_malformed_accounts_refuse_the_whole_sync(world: ApiCluster) -> None:
    t1 = await world.traffic("t1")
    master = world.master()
    old = cluster.create_cluster(master, SITE, traffic_nodes=entries(t1))
    representatives.create(master.db, "bob", "Bob", REP_PASSWORD)
    assert (await cluster.sync_now(master)).ok
    before = held_accounts(t1.node.db)
    config = config_store.save(master.db, old, expected_revision=1, author="x")

    payload = sync_payload(master, config, config.canonical_json(), config.traffic_nodes[0])
    payload["accounts"]["api_accounts"] = [{
        "client_id": "c1", "name": "x", "secret_hash": hash_password("s3cret-s3cret"),
        "permissions": ["command:root"], "created_at": 1.0, "revoked_at": None,
    }]
    async with PeerClient(master) as peers:
        with pytest.raises(PeerRejected) as caught:
            await peers.call(config.traffic_nodes[0].internal_address(), "POST",
                             f"{PREFIX}/sync", payload, timeout=5)
    assert caught.value.reason == "accounts"
    assert failure_message("t1 (x)", "t1", caught.value).startswith(
        "Data Sync: Failed configuration data sync with t1 (x): rejected document "
        "(accounts: api_accounts.0.permissions: 'command:root' is unknown"
    )
    assert config_store.current_revision(t1.node.db) == 1
    assert held_accounts(t1.node.db) == before

    # A master whose own account rows are damaged: the node refuses, the master reports.
    master.db.execute("UPDATE representatives SET password_hash = 'plain text'")
    report = await cluster.sync_now(master)
    assert report.results[0].reason == "accounts"
    message = report.results[0].message or ""
    assert "rejected document (accounts: representatives.0.password_hash: is not an " \
           "argon2 hash)" in message and "plain text" not in message
    assert history.recent(master.db)[0].status == history.FAILED
    assert config_store.current_revision(t1.node.db) == 1
    assert held_accounts(t1.node.db) == before
    assert config_store.sync_needed(master.db)


async def test_a_crash_mid_apply_keeps_the_previous_accounts(
    world: ApiCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    t1 = await world.traffic("t1")
    master = world.master()
    old = cluster.create_cluster(master, SITE, traffic_nodes=entries(t1))
    api_accounts.create_account(master.db, "first", frozenset({Permission.CONFIG_READ}))
    assert (await cluster.sync_now(master)).ok
    before = held_accounts(t1.node.db)

    config_store.save(master.db, old, expected_revision=1, author="x")
    api_accounts.create_account(master.db, "second", frozenset({Permission.COMMAND_FULL}))
    representatives.create(master.db, "carol", "Carol", REP_PASSWORD)

    seen_mid_apply: list[bool] = []

    def boom() -> None:
        # The accounts are written in this transaction, before the fault point.
        seen_mid_apply.append(representatives.get_by_username(t1.node.db, "carol") is not None)
        raise RuntimeError("crash between statements")

    monkeypatch.setattr(config_store, "_between_statements", boom)
    report = await cluster.sync_now(master, timeout=5)
    assert not report.ok and seen_mid_apply == [True]
    assert config_store.current_revision(t1.node.db) == 1
    assert held_accounts(t1.node.db) == before
    assert config_store.sync_needed(master.db)

    monkeypatch.setattr(config_store, "_between_statements", None)
    assert (await cluster.sync_now(master)).ok
    assert config_store.current_revision(t1.node.db) == 2
    assert held_accounts(t1.node.db) == held_accounts(master.db)
    assert not config_store.sync_needed(master.db)


# --- the pure part: validation and replacement ----------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(tmp_path / "atlas.db")
    yield d
    d.close()


def test_export_round_trips_and_carries_no_secret(db: Database) -> None:
    made = api_accounts.create_account(db, "a", frozenset({Permission.COMMAND_FULL}))
    representatives.create(db, "dave", "Dave", REP_PASSWORD)
    exported = account_sync.export_accounts(db)
    text = exported.canonical_json()
    assert made.client_secret not in text and REP_PASSWORD not in text
    assert parse_accounts(json.loads(text)) == exported
    assert exported.digest != account_sync.EMPTY_DIGEST


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("representatives"), "accounts: missing representatives"),
        (lambda d: d["api_accounts"][0].update(permissions=[]), "api_accounts.0.permissions"),
        (lambda d: d["api_accounts"][0].update(name="x" * 65), "api_accounts.0.name"),
        (lambda d: d["api_accounts"][0].update(created_at="now"), "api_accounts.0.created_at"),
        (lambda d: d["api_accounts"].append(dict(d["api_accounts"][0])), "listed twice"),
        (lambda d: d["representatives"][0].update(enabled=1), "representatives.0.enabled"),
        (lambda d: d["representatives"][0].update(username="bad name"),
         "representatives.0.username"),
        (lambda d: d["representatives"][0].update(extra=1), "unknown field 'extra'"),
        (lambda d: d.update(api_accounts="all"), "api_accounts: must be a list"),
    ],
)
def test_malformed_sets_are_refused(db: Database, mutate: Any, message: str) -> None:
    api_accounts.create_account(db, "a", frozenset({Permission.COMMAND_FULL}))
    representatives.create(db, "erin", "Erin", REP_PASSWORD)
    data = account_sync.export_accounts(db).as_json()
    mutate(data)
    with pytest.raises(InvalidAccounts, match=message.replace(".", r"\.")):
        parse_accounts(data)


def test_replace_keeps_tokens_of_unchanged_accounts_only(tmp_path: Path) -> None:
    master, node = Database(tmp_path / "m.db"), Database(tmp_path / "n.db")
    try:
        keep = api_accounts.create_account(master, "keep", frozenset({Permission.COMMAND_READ}))
        gone = api_accounts.create_account(master, "gone", frozenset({Permission.COMMAND_READ}))
        with node.transaction():
            account_sync.replace_accounts(node, account_sync.export_accounts(master))
        tokens = {}
        for made in (keep, gone):
            acc = api_accounts.authenticate_client(
                node, made.account.client_id, made.client_secret
            )
            assert acc is not None
            tokens[made.account.name] = api_accounts.issue_token(node, acc)[0]
        assert api_accounts.revoke_account(master, gone.account.id)
        with node.transaction():
            account_sync.replace_accounts(node, account_sync.export_accounts(master))
        assert api_accounts.account_for_token(node, tokens["keep"]) is not None
        assert api_accounts.account_for_token(node, tokens["gone"]) is None
        assert node.one("SELECT COUNT(*) FROM api_tokens")[0] == 1  # type: ignore[index]
        assert held_accounts(node) == held_accounts(master)
    finally:
        master.close()
        node.close()
