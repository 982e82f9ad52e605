"""``POST /oauth2/token`` in process (RFC 6749 §4.4 client credentials, §5.2 errors)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from atlas.node.app import build_app
from atlas.node.init import init_node
from atlas.node.runtime import Node
from atlas.store.api_accounts import (
    NewAccount,
    Permission,
    account_for_token,
    create_account,
    revoke_account,
)
from atlas.web.oauth import OAUTH_LIMITER, FailedAuthLimiter

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def node(tmp_path: Path) -> Node:
    root = tmp_path / "node"
    init_node(root, name="n1", public="n1.example.test:4443", listen="127.0.0.1",
              admin_password="correct horse battery")
    n = Node(root)
    yield n
    n.close()


@pytest.fixture
def app(node: Node) -> web.Application:
    return build_app(node)


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.fixture
def account(node: Node) -> NewAccount:
    return create_account(node.db, "monitoring", frozenset({Permission.COMMAND_READ}))


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}", **FORM}


async def test_token_is_issued_for_basic_credentials(client, node, account) -> None:
    r = await client.post(
        "/oauth2/token", data="grant_type=client_credentials",
        headers=basic(account.account.client_id, account.client_secret),
    )
    assert r.status == 200
    assert r.headers["Cache-Control"] == "no-store"
    body = await r.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert account_for_token(node.db, body["access_token"]) == account.account


async def test_form_credentials_are_accepted(client, account) -> None:
    r = await client.post("/oauth2/token", data={
        "grant_type": "client_credentials", "client_id": account.account.client_id,
        "client_secret": account.client_secret})
    assert r.status == 200
    assert (await r.json())["token_type"] == "Bearer"


async def test_wrong_secret_is_invalid_client(client, account) -> None:
    r = await client.post("/oauth2/token", data="grant_type=client_credentials",
                          headers=basic(account.account.client_id, "not-the-secret"))
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert r.headers["Cache-Control"] == "no-store"
    body = await r.json()
    assert body["error"] == "invalid_client"
    assert "secret" in body["error_description"]


async def test_revoked_account_gets_no_token(client, node, account) -> None:
    revoke_account(node.db, account.account.id)
    r = await client.post("/oauth2/token", data="grant_type=client_credentials",
                          headers=basic(account.account.client_id, account.client_secret))
    assert r.status == 401


@pytest.mark.parametrize(
    ("headers", "data", "status", "error"),
    [
        ({}, "grant_type=client_credentials", 401, "invalid_client"),  # no credentials
        ({"Authorization": "Bearer x", **FORM}, "grant_type=client_credentials", 401,
         "invalid_client"),
        ({"Authorization": "Basic !!!", **FORM}, "grant_type=client_credentials", 401,
         "invalid_client"),
        ({"Authorization": "Basic " + base64.b64encode(b"nocolon").decode(), **FORM},
         "grant_type=client_credentials", 401, "invalid_client"),
        ({"Content-Type": "application/json"}, '{"grant_type": "client_credentials"}', 400,
         "invalid_request"),
    ],
)
async def test_malformed_requests(client, account, headers, data, status, error) -> None:
    h = dict(headers)
    h.setdefault("Content-Type", FORM["Content-Type"])
    r = await client.post("/oauth2/token", data=data, headers=h)
    assert r.status == status
    body = await r.json()
    assert body["error"] == error
    assert body["error_description"]


async def test_grant_type_errors(client, account) -> None:
    creds = basic(account.account.client_id, account.client_secret)
    r = await client.post("/oauth2/token", data="grant_type=password", headers=creds)
    assert r.status == 400
    assert (await r.json())["error"] == "unsupported_grant_type"
    r = await client.post("/oauth2/token", data="", headers=creds)
    assert r.status == 400
    assert (await r.json())["error"] == "invalid_request"
    r = await client.post(
        "/oauth2/token",
        data="grant_type=client_credentials&grant_type=client_credentials", headers=creds)
    assert r.status == 400
    assert "more than once" in (await r.json())["error_description"]


async def test_both_credential_methods_is_invalid_request(client, account) -> None:
    r = await client.post(
        "/oauth2/token",
        data=f"grant_type=client_credentials&client_id={account.account.client_id}"
             f"&client_secret={account.client_secret}",
        headers=basic(account.account.client_id, account.client_secret))
    assert r.status == 400
    assert (await r.json())["error"] == "invalid_request"


async def test_get_is_not_allowed(client) -> None:
    r = await client.get("/oauth2/token")
    assert r.status == 405


async def test_failed_authentications_are_rate_limited(node, account) -> None:
    app = build_app(node)
    app[OAUTH_LIMITER] = FailedAuthLimiter(max_failures=3, window_seconds=60)
    async with TestClient(TestServer(app)) as c:
        for _ in range(3):
            r = await c.post("/oauth2/token", data="grant_type=client_credentials",
                             headers=basic(account.account.client_id, "wrong"))
            assert r.status == 401
        # now even the right secret is refused until the window ends
        r = await c.post("/oauth2/token", data="grant_type=client_credentials",
                         headers=basic(account.account.client_id, account.client_secret))
        assert r.status == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        body = await r.json()
        assert body["error"] == "invalid_client"
        assert "too many" in body["error_description"]


def test_limiter_window_and_bound() -> None:
    now = [0.0]
    lim = FailedAuthLimiter(max_failures=2, window_seconds=10, max_addresses=3,
                            clock=lambda: now[0])
    lim.record_failure("a")
    assert lim.retry_after("a") is None
    lim.record_failure("a")
    assert lim.retry_after("a") == 10
    now[0] = 9.5
    assert lim.retry_after("a") == pytest.approx(0.5)
    now[0] = 10.0
    assert lim.retry_after("a") is None  # window over: forgotten
    for ip in ("b", "c", "d", "e"):
        lim.record_failure(ip)
    assert len(lim) == 3  # bounded: the oldest address was dropped
