"""The /login pages in process: every field's bad values, what is stored, the menu.

Each bad value must get an answer naming the problem next to its field, leave the stored
data exactly as it was, and leave the server answering.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from atlas.net.tls import server_context
from atlas.node.app import build_app
from atlas.node.datadir import DataDir
from atlas.node.runtime import Node
from atlas.store.api_accounts import Permission, authenticate_client, list_accounts
from atlas.web.login import add_page
from atlas.web.rendering import render
from tests.conftest import InProcessNode, LoginClient, NodeFactory

SECURITY = "/login/management/security"
ACCOUNT = "/login/account"
API = "/login/management/api"
GOOD_PSK = "twelve chars"  # exactly the minimum


def field_error(page_text: str, name: str) -> str:
    m = re.search(rf'<p class="field-error" id="f-{re.escape(name)}-error">(.*?)</p>', page_text)
    return html.unescape(m.group(1)) if m else ""


async def still_up(client: LoginClient) -> None:
    assert (await client.get("/login/status/information")).status == 200


@pytest.fixture
async def admin(inprocess_node: InProcessNode, login_client: Callable[..., Any]) -> LoginClient:
    client: LoginClient = await login_client(inprocess_node)
    return client


# --- Management → Security: the pre-shared key ---------------------------------------------


@pytest.mark.parametrize(
    ("psk", "confirm", "field", "problem"),
    [
        ("", "", "psk", "Enter the pre-shared key."),
        ("a" * 11, "a" * 11, "psk", "must be at least 12 characters"),
        ("a" * 257, "a" * 257, "psk", "must be at most 256 characters"),
        ("x" * 1_000_000, "x" * 1_000_000, "psk", "must be at most 256 characters"),
        ("line one\nline two", "line one\nline two", "psk", "must not contain control"),
        ("tab\tinside key", "tab\tinside key", "psk", "must not contain control"),
        ("a good long key", "", "psk_confirm", "Enter the pre-shared key again"),
        ("a good long key", "a good long kez", "psk_confirm", "does not match"),
    ],
)
async def test_psk_bad_values(
    inprocess_node: InProcessNode, admin: LoginClient,
    psk: str, confirm: str, field: str, problem: str,
) -> None:
    await admin.get(SECURITY)
    page = await admin.post(SECURITY, {"psk": psk, "psk_confirm": confirm})
    assert page.status == 400
    assert problem in field_error(page.text, field)
    if len(psk) > 3:
        assert psk not in page.text  # never shown back
    assert inprocess_node.node.psk is None
    assert not (inprocess_node.info.data_dir / "secrets" / "psk").exists()
    assert inprocess_node.node.db.get_setting("psk_changed_at") is None
    assert "No pre-shared key is set." in page.text
    await still_up(admin)


@pytest.mark.parametrize("psk", [GOOD_PSK, "k" * 256, "ünïcödé kéy ✓ 🔑"])
async def test_psk_is_saved_never_shown_and_never_logged(
    inprocess_node: InProcessNode, admin: LoginClient, psk: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await admin.get(SECURITY)
    with caplog.at_level(logging.INFO, logger="atlas"):
        page = await admin.post(SECURITY, {"psk": psk, "psk_confirm": psk})
    assert page.status == 200 and page.url.endswith(SECURITY)
    assert "has been saved" in page.text
    assert re.search(r"A pre-shared key is set \(changed \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)",
                     page.text)
    assert psk not in page.text and html.escape(psk) not in page.text
    assert inprocess_node.node.psk == psk
    mode = (inprocess_node.info.data_dir / "secrets" / "psk").stat().st_mode & 0o777
    assert mode == 0o600
    assert inprocess_node.node.db.get_setting("psk_changed_at") is not None
    assert any("pre-shared key changed" in r.getMessage() for r in caplog.records)
    assert all(psk not in r.getMessage() and psk not in str(r.__dict__) for r in caplog.records)


async def test_psk_change_replaces_the_old_key(
    inprocess_node: InProcessNode, admin: LoginClient
) -> None:
    for psk in ("first key of two", "second key of two"):
        await admin.get(SECURITY)
        assert (await admin.post(SECURITY, {"psk": psk, "psk_confirm": psk})).status == 200
    assert inprocess_node.node.psk == "second key of two"


# --- My Account: changing one's password ----------------------------------------------------


@pytest.mark.parametrize(
    ("current", "new", "confirm", "field", "problem"),
    [
        ("", "new password 1", "new password 1", "current_password", "Enter your current"),
        ("wrong current", "new password 1", "new password 1", "current_password",
         "The current password is wrong."),
        (None, "", "", "new_password", "Enter a new password."),
        (None, "short7!", "short7!", "new_password", "must be at least 8 characters"),
        (None, "n" * 1025, "n" * 1025, "new_password", "must be at most 1024 characters"),
        (None, None, None, "new_password", "must differ from the current one"),
        (None, "new password 1", "", "confirm_password", "Enter the new password again."),
        (None, "new password 1", "new password 2", "confirm_password", "does not match"),
    ],
)
async def test_password_change_bad_values(
    inprocess_node: InProcessNode, admin: LoginClient,
    current: str | None, new: str | None, confirm: str | None, field: str, problem: str,
) -> None:
    password = inprocess_node.info.admin_password
    before = inprocess_node.node.db.one("SELECT password_hash FROM admins")["password_hash"]
    await admin.get(ACCOUNT)
    page = await admin.post(ACCOUNT, {
        "current_password": password if current is None else current,
        "new_password": password if new is None else new,
        "confirm_password": password if confirm is None else confirm,
    })
    assert page.status == 400
    assert problem in field_error(page.text, field)
    assert 'value="new password' not in page.text  # password fields are never refilled
    after = inprocess_node.node.db.one("SELECT password_hash FROM admins")["password_hash"]
    assert after == before
    await still_up(admin)


async def test_password_change_works_and_ends_other_sessions(
    inprocess_node: InProcessNode, login_client: Callable[..., Any]
) -> None:
    me = await login_client(inprocess_node)
    other = await login_client(inprocess_node)
    new = "a brand new password"
    await me.get(ACCOUNT)
    page = await me.post(ACCOUNT, {
        "current_password": inprocess_node.info.admin_password,
        "new_password": new, "confirm_password": new,
    })
    assert page.status == 200 and "Your password has been changed." in page.text
    assert "1 other session(s)" in page.text
    assert (await me.get(ACCOUNT)).status == 200  # this session goes on
    async with other.session.get(ACCOUNT, allow_redirects=False) as r:
        assert r.status == 303  # the other one is signed out
    fresh = await login_client(inprocess_node, signed_in=False)
    assert (await fresh.login("admin", inprocess_node.info.admin_password)).status == 403
    assert (await fresh.login("admin", new)).url.endswith("/login/status/information")


# --- Management → API Configuration ---------------------------------------------------------


def api_form(name: str = "ticketing", command: str = "read", config: str = "none") -> dict[
        str, str]:
    return {"name": name, "command_api": command, "config_api": config}


@pytest.mark.parametrize(
    ("data", "field", "problem"),
    [
        (api_form(name=""), "name", "Enter a name for the API account."),
        (api_form(name="   "), "name", "Enter a name for the API account."),
        (api_form(name="n" * 65), "name", "at most 64 characters"),
        (api_form(name="bell\x07name"), "name", "must not contain control characters"),
        (api_form(command="admin"), "command_api", "Choose one of: None, Read-only, Full access."),
        (api_form(config="delete"), "config_api", "Choose one of: None, Read, Read and write."),
        (api_form(command="none", config="none"), "command_api", "at least one API"),
        ({"name": "no choices"}, "command_api", "at least one API"),
    ],
)
async def test_api_account_bad_values(
    inprocess_node: InProcessNode, admin: LoginClient,
    data: dict[str, str], field: str, problem: str,
) -> None:
    await admin.get(API)
    page = await admin.post(API, data)
    assert page.status == 400
    assert problem in field_error(page.text, field)
    assert list_accounts(inprocess_node.node.db) == []
    if data["name"].strip() and len(data["name"]) < 65 and data["name"].isprintable():
        assert f'value="{data["name"]}"' in page.text  # input kept
    await still_up(admin)


async def test_api_account_choices_are_kept_after_an_error(admin: LoginClient) -> None:
    await admin.get(API)
    page = await admin.post(API, api_form(name="", command="full", config="write"))
    assert 'name="command_api" value="full" checked' in page.text
    assert 'name="config_api" value="write" checked' in page.text


async def test_api_account_secret_is_shown_once(
    inprocess_node: InProcessNode, admin: LoginClient
) -> None:
    await admin.get(API)
    page = await admin.post(API, api_form(name="ticketing", command="full", config="write"))
    assert page.status == 200 and page.url.endswith("/login/management/api/created")
    assert "shown\n    only this once" in page.text or "only this once" in page.text
    client_id = re.search(r'<code id="client-id">([^<]+)</code>', page.text).group(1)  # type: ignore[union-attr]
    secret = html.unescape(
        re.search(r'<code id="client-secret">([^<]+)</code>', page.text).group(1)  # type: ignore[union-attr]
    )
    assert page.headers["Cache-Control"] == "no-store"
    db = inprocess_node.node.db
    account = authenticate_client(db, client_id, secret)
    assert account is not None and account.name == "ticketing"
    assert account.permissions == {Permission.COMMAND_FULL, Permission.CONFIG_WRITE}
    assert secret not in str([dict(r) for r in db.all("SELECT * FROM api_accounts")])

    again = await admin.get("/login/management/api/created")
    assert "no longer available" in again.text and secret not in again.text
    listing = await admin.get(API)
    assert client_id in listing.text and secret not in listing.text
    assert "Command API: Full access" in listing.text
    assert "Configuration API: Read and write" in listing.text

    # The same name again, while the first is active, is refused.
    duplicate = await admin.post(API, api_form(name="ticketing"))
    assert duplicate.status == 400
    assert "already exists" in field_error(duplicate.text, "name")
    assert len(list_accounts(db)) == 1


async def test_api_account_names_are_escaped(
    inprocess_node: InProcessNode, admin: LoginClient
) -> None:
    name = '<script>alert("x")</script>'
    await admin.get(API)
    page = await admin.post(API, api_form(name=name))
    assert page.status == 200
    listing = await admin.get(API)
    assert name not in listing.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in listing.text


async def test_api_account_revoke_with_confirmation(
    inprocess_node: InProcessNode, admin: LoginClient
) -> None:
    await admin.get(API)
    await admin.post(API, api_form(name="monitoring"))
    account = list_accounts(inprocess_node.node.db)[0]
    revoke = f"{API}/{account.id}/revoke"

    confirm = await admin.get(revoke)
    assert confirm.status == 200 and "Revoke API account “monitoring”?" in confirm.text
    refused = await admin.post(revoke, {}, csrf=False)
    assert refused.status == 403
    assert list_accounts(inprocess_node.node.db)[0].active

    await admin.get(revoke)
    done = await admin.post(revoke, {})
    assert done.status == 200 and done.url.endswith(API)
    assert "has been revoked" in done.text
    assert not list_accounts(inprocess_node.node.db)[0].active
    assert "Revoked" in done.text

    twice = await admin.post(revoke, {}, csrf=admin.last_token)
    assert "was already revoked" in twice.text


@pytest.mark.parametrize("account_id", ["999", "abc", "-1", "1" * 40])
async def test_revoking_an_unknown_account_is_404(
    inprocess_node: InProcessNode, admin: LoginClient, account_id: str
) -> None:
    page = await admin.get(f"{API}/{account_id}/revoke")
    assert page.status == 404 and "There is no such API account." in page.text
    await admin.get(API)
    posted = await admin.post(f"{API}/{account_id}/revoke", {}, csrf=admin.last_token)
    assert posted.status == 404
    await still_up(admin)


# --- the menu, the layout, the headers -------------------------------------------------------


async def test_every_menu_link_leads_somewhere(admin: LoginClient) -> None:
    seen: set[str] = set()
    todo = ["/login/status/information"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        page = await admin.get(path)
        assert page.status == 200, path
        nav = re.findall(r'<nav class="(?:tabs|subnav)".*?</nav>', page.text, re.S)
        for block in nav:
            todo += [h for h in re.findall(r'href="([^"]+)"', block) if h not in seen]
    assert {"/login/management/security", "/login/management/api", "/login/account",
            "/login/management/cluster", "/login/pending/failover"} <= seen
    pending = await admin.get("/login/pending/failover")
    assert "Available once failover" in pending.text


async def test_pending_address_of_a_built_page_forwards(admin: LoginClient) -> None:
    async with admin.session.get("/login/pending/security", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == SECURITY
    assert (await admin.get("/login/pending/nonsense")).status == 404


async def test_pages_are_not_cached_and_keep_the_strict_csp(admin: LoginClient) -> None:
    page = await admin.get(SECURITY)
    assert page.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "<script>" not in page.text and "style=" not in page.text
    assert 'src="/static/atlas.js"' in page.text


async def test_static_files_are_served(inprocess_node: InProcessNode) -> None:
    http = inprocess_node.client()
    async with http.get("/static/atlas.css") as r:
        assert r.status == 200 and r.content_type == "text/css"
    async with http.get("/static/../rendering.py") as r:
        assert r.status in (403, 404)


async def test_a_feature_adds_a_page_with_one_call(node_factory: NodeFactory) -> None:
    """The contract later pages rely on: add_page gives route, guard, CSRF and menu entry."""
    info = node_factory()
    node = Node(info.data_dir)
    app = build_app(node)

    async def cluster_page(request: web.Request) -> web.StreamResponse:
        return render(request, "error.html", title="Failover", message="failover page here")

    async def cluster_post(request: web.Request) -> web.StreamResponse:
        return web.Response(text="posted")

    add_page(app, "management", "failover", "Failover", "/login/management/failover",
             cluster_page, post=cluster_post)
    dd = DataDir(info.data_dir)
    server = TestServer(app, host="localhost")
    await server.start_server(ssl=server_context(dd.cert_file, dd.key_file))
    import aiohttp

    async with aiohttp.ClientSession(
        base_url=f"https://localhost:{server.port}",
        connector=aiohttp.TCPConnector(ssl=info.ssl_context()),
    ) as http:
        try:
            client = LoginClient(http)
            async with http.get("/login/management/failover", allow_redirects=False) as r:
                assert r.status == 303  # behind the login
            await client.login("admin", info.admin_password)
            page = await client.get("/login/management/failover")
            assert "failover page here" in page.text
            assert '<a href="/login/management/failover" class="active"' in page.text
            assert "/login/pending/failover" not in page.text
            assert (await client.post("/login/management/failover", {}, csrf=False)).status == 403
            assert (await client.post("/login/management/failover", {})).text == "posted"
        finally:
            await server.close()
            node.close()
