"""Signing in to /login, in process over TLS: sessions, CSRF, lockout, expiry, redirects."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from atlas.web.login import sessions
from atlas.web.login.guard import session_principal
from atlas.web.login.lockout import AddressLimiter
from atlas.web.login.pages.signin import FAILED, HOME
from atlas.web.login.state import LOGIN_STATE
from tests.conftest import InProcessNode, LoginClient

SECURITY = "/login/management/security"
PSK = "a perfectly fine key"


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(inprocess_node: InProcessNode) -> Clock:
    c = Clock()
    inprocess_node.app[LOGIN_STATE].clock = c
    return c


def session_rows(target: InProcessNode) -> list[Any]:
    return target.node.db.all("SELECT * FROM web_sessions")


def admin_row(target: InProcessNode) -> Any:
    return target.node.db.one("SELECT * FROM admins WHERE username = 'admin'")


async def attempt(client: LoginClient, username: str, password: str, **extra: str) -> Any:
    """GET the login form, post it without following the redirect; the raw answer."""
    await client.get("/login")
    data = {"username": username, "password": password, "csrf_token": client.last_token, **extra}
    async with client.session.post("/login", data=data, allow_redirects=False) as r:
        return r.status, r.headers, await r.text()


# --- signing in and out -----------------------------------------------------------------


async def test_login_sets_a_hardened_session_cookie_stored_hashed(
    inprocess_node: InProcessNode, login_client: Callable[..., Any]
) -> None:
    client = await login_client(inprocess_node, signed_in=False)
    status, headers, _ = await attempt(client, "admin", inprocess_node.info.admin_password)
    assert status == 303 and headers["Location"] == HOME
    cookie = next(v for v in headers.getall("Set-Cookie") if v.startswith("atlas_session="))
    attrs = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= attrs
    token = cookie.split(";")[0].split("=", 1)[1]
    rows = session_rows(inprocess_node)
    assert len(rows) == 1
    assert rows[0]["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(dict(rows[0]))
    page = await client.get(HOME)
    assert page.status == 200 and inprocess_node.node.identity.guid in page.text


async def test_wrong_password_is_refused_and_counted(
    inprocess_node: InProcessNode, login_client: Callable[..., Any]
) -> None:
    client = await login_client(inprocess_node, signed_in=False)
    status, _, text = await attempt(client, "admin", "not the password")
    assert status == 403 and FAILED in text
    assert session_rows(inprocess_node) == []
    assert admin_row(inprocess_node)["failed_logins"] == 1
    assert 'value="admin"' in text  # the user name is kept, the password is not
    assert "not the password" not in text


async def test_missing_fields_are_named(
    inprocess_node: InProcessNode, login_client: Callable[..., Any]
) -> None:
    client = await login_client(inprocess_node, signed_in=False)
    status, _, text = await attempt(client, "", "")
    assert status == 400
    assert "Enter your user name." in text and "Enter your password." in text
    assert admin_row(inprocess_node)["failed_logins"] == 0


async def test_signed_in_visit_to_login_goes_home(
    inprocess_node: InProcessNode, login_client: Callable[..., Any]
) -> None:
    client = await login_client(inprocess_node)
    async with client.session.get("/login", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == HOME


async def test_logout_ends_the_session_for_good(
    inprocess_node: InProcessNode, login_client: Callable[..., Any]
) -> None:
    client = await login_client(inprocess_node)
    token = client.cookie(sessions.COOKIE)
    await client.get(HOME)
    page = await client.post("/login/logout", {})
    assert page.status == 200 and "You are logged out." in page.text
    assert session_rows(inprocess_node) == []
    assert client.cookie(sessions.COOKIE) is None
    # The old cookie value, replayed, no longer works.
    replay = inprocess_node.client()
    async with replay.get(HOME, cookies={sessions.COOKIE: token or ""},
                          allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"].startswith("/login?")


# --- CSRF ---------------------------------------------------------------------------------


async def test_login_post_without_form_token_is_refused(
    inprocess_node: InProcessNode, login_client: Callable[..., Any]
) -> None:
    client = await login_client(inprocess_node, signed_in=False)
    await client.get("/login")
    good = {"username": "admin", "password": inprocess_node.info.admin_password}
    for token in (None, "", "nonsense", client.last_token + "x"):
        data = dict(good) if token is None else {**good, "csrf_token": token}
        async with client.session.post("/login", data=data, allow_redirects=False) as r:
            assert r.status == 403
            assert "did not come from this site" in await r.text()
    assert session_rows(inprocess_node) == []
    assert admin_row(inprocess_node)["failed_logins"] == 0


async def test_login_token_of_another_browser_is_refused(
    inprocess_node: InProcessNode, login_client: Callable[..., Any]
) -> None:
    attacker = await login_client(inprocess_node, signed_in=False)
    await attacker.get("/login")
    victim = await login_client(inprocess_node, signed_in=False)
    await victim.get("/login")
    data = {"username": "admin", "password": inprocess_node.info.admin_password,
            "csrf_token": attacker.last_token}
    async with victim.session.post("/login", data=data, allow_redirects=False) as r:
        assert r.status == 403
    assert session_rows(inprocess_node) == []


async def test_signed_in_post_needs_the_session_token(
    inprocess_node: InProcessNode, login_client: Callable[..., Any]
) -> None:
    client = await login_client(inprocess_node)
    await client.get(SECURITY)
    form = {"psk": PSK, "psk_confirm": PSK}
    for csrf in (False, "", "wrong-token"):
        page = await client.post(SECURITY, form, csrf=csrf)
        assert page.status == 403 and "security token" in page.text
    other = await login_client(inprocess_node)  # another admin session's valid token
    await other.get(SECURITY)
    assert (await client.post(SECURITY, form, csrf=other.last_token)).status == 403
    # a right token from a foreign origin is refused too
    await client.get(SECURITY)
    async with client.session.post(
        SECURITY, data={**form, "csrf_token": client.last_token},
        headers={"Origin": "https://evil.example"}, allow_redirects=False,
    ) as r:
        assert r.status == 403
    assert inprocess_node.node.psk is None
    assert inprocess_node.node.db.get_setting("psk_changed_at") is None


async def test_csrf_header_is_accepted_for_fetch(
    inprocess_node: InProcessNode, login_client: Callable[..., Any]
) -> None:
    client = await login_client(inprocess_node)
    await client.get(SECURITY)
    async with client.session.post(
        SECURITY, data={"psk": PSK, "psk_confirm": PSK},
        headers={"X-CSRF-Token": client.last_token}, allow_redirects=False,
    ) as r:
        assert r.status == 303
    assert inprocess_node.node.psk == PSK


async def test_session_principal_for_api_fetch_needs_cookie_and_header(
    inprocess_node: InProcessNode, login_client: Callable[..., Any]
) -> None:
    client = await login_client(inprocess_node)
    await client.get(SECURITY)
    cookie = f"{sessions.COOKIE}={client.cookie(sessions.COOKIE)}"
    app = inprocess_node.app

    def req(headers: dict[str, str]) -> Any:
        return make_mocked_request("POST", "/api/v1/x", headers=headers, app=app)

    principal = await session_principal(
        req({"Cookie": cookie, "X-CSRF-Token": client.last_token}))
    assert principal is not None and principal.kind == "session" and principal.name == "admin"
    assert await session_principal(req({"Cookie": cookie})) is None
    assert await session_principal(req({"Cookie": cookie, "X-CSRF-Token": "wrong"})) is None
    assert await session_principal(req({"X-CSRF-Token": client.last_token})) is None


async def test_unsigned_fetch_gets_401_json(inprocess_node: InProcessNode) -> None:
    http = inprocess_node.client()
    async with http.post(SECURITY, headers={"X-CSRF-Token": "x"}, allow_redirects=False) as r:
        assert r.status == 401
        assert "sign in" in (await r.json())["error"]


# --- lockout and the address limiter ------------------------------------------------------


async def test_account_locks_after_five_failures_with_doubling_backoff(
    inprocess_node: InProcessNode, login_client: Callable[..., Any], clock: Clock
) -> None:
    client = await login_client(inprocess_node, signed_in=False)
    password = inprocess_node.info.admin_password
    for _ in range(5):
        status, _, _ = await attempt(client, "admin", "wrong")
        assert status == 403
    row = admin_row(inprocess_node)
    assert row["failed_logins"] == 5 and row["locked_until"] == pytest.approx(clock.now + 30)

    # Locked: even the right password is refused, with the very same answer.
    status, _, locked_text = await attempt(client, "admin", password)
    assert status == 403 and FAILED in locked_text
    assert admin_row(inprocess_node)["failed_logins"] == 5  # not counted while locked

    # An unknown user gets exactly the same answer as a locked account.
    status, _, unknown_text = await attempt(client, "nobody", "wrong")
    assert status == 403

    def error_of(text: str) -> str:
        return text.split('class="form-error"', 1)[1].split("</p>", 1)[0]

    assert error_of(unknown_text) == error_of(locked_text)

    # The next failure after the lock doubles it.
    clock.advance(31)
    await attempt(client, "admin", "wrong")
    row = admin_row(inprocess_node)
    assert row["failed_logins"] == 6 and row["locked_until"] == pytest.approx(clock.now + 60)

    clock.advance(61)
    status, headers, _ = await attempt(client, "admin", password)
    assert status == 303 and headers["Location"] == HOME
    row = admin_row(inprocess_node)
    assert row["failed_logins"] == 0 and row["locked_until"] == 0


async def test_address_limiter_stops_guessing_across_names(
    inprocess_node: InProcessNode, login_client: Callable[..., Any], clock: Clock
) -> None:
    inprocess_node.app[LOGIN_STATE].limiter = AddressLimiter(limit=3, window=60.0)
    client = await login_client(inprocess_node, signed_in=False)
    for name in ("alice", "bob", "carol"):
        assert (await attempt(client, name, "guess"))[0] == 403
    status, headers, text = await attempt(client, "admin", inprocess_node.info.admin_password)
    assert status == 429 and "Too many failed logins from your address" in text
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert session_rows(inprocess_node) == []
    clock.advance(61)
    status, _, _ = await attempt(client, "admin", inprocess_node.info.admin_password)
    assert status == 303


# --- expiry ---------------------------------------------------------------------------------


async def test_idle_session_expires_after_30_minutes(
    inprocess_node: InProcessNode, login_client: Callable[..., Any], clock: Clock
) -> None:
    client = await login_client(inprocess_node)
    clock.advance(20 * 60)
    assert (await client.get(SECURITY)).status == 200  # activity slides the deadline
    clock.advance(20 * 60)
    assert (await client.get(SECURITY)).status == 200
    clock.advance(30 * 60 + 1)
    async with client.session.get(SECURITY, allow_redirects=False) as r:
        assert r.status == 303
        assert r.headers["Location"] == "/login?expired=1&next=%2Flogin%2Fmanagement%2Fsecurity"
    assert session_rows(inprocess_node) == []
    page = await client.get("/login?expired=1")
    assert "Your session has expired" in page.text


async def test_session_ends_after_12_hours_however_active(
    inprocess_node: InProcessNode, login_client: Callable[..., Any], clock: Clock
) -> None:
    client = await login_client(inprocess_node)
    for _ in range(12 * 3 - 1):
        clock.advance(20 * 60)
        assert (await client.get(HOME)).status == 200
    clock.advance(20 * 60)
    async with client.session.get(HOME, allow_redirects=False) as r:
        assert r.status == 303 and "expired=1" in r.headers["Location"]


async def test_post_after_expiry_changes_nothing(
    inprocess_node: InProcessNode, login_client: Callable[..., Any], clock: Clock
) -> None:
    client = await login_client(inprocess_node)
    await client.get(SECURITY)
    clock.advance(31 * 60)
    async with client.session.post(
        SECURITY, data={"psk": PSK, "psk_confirm": PSK, "csrf_token": client.last_token},
        allow_redirects=False,
    ) as r:
        assert r.status == 303 and r.headers["Location"].startswith("/login?expired=1")
    assert inprocess_node.node.psk is None


# --- where the login form leads -------------------------------------------------------------


async def test_login_returns_to_the_page_asked_for(
    inprocess_node: InProcessNode, login_client: Callable[..., Any]
) -> None:
    client = await login_client(inprocess_node, signed_in=False)
    async with client.session.get("/login/management/api", allow_redirects=False) as r:
        assert r.headers["Location"] == "/login?next=%2Flogin%2Fmanagement%2Fapi"
    page = await client.get("/login?next=%2Flogin%2Fmanagement%2Fapi")
    assert 'name="next" value="/login/management/api"' in page.text
    status, headers, _ = await attempt(client, "admin", inprocess_node.info.admin_password,
                                       next="/login/management/api")
    assert status == 303 and headers["Location"] == "/login/management/api"


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/login", "/\\evil.example",
               "/api/v1/nodes", "javascript:alert(1)"],
)
async def test_login_never_redirects_off_site(
    inprocess_node: InProcessNode, login_client: Callable[..., Any], target: str
) -> None:
    client = await login_client(inprocess_node, signed_in=False)
    status, headers, _ = await attempt(client, "admin", inprocess_node.info.admin_password,
                                       next=target)
    assert status == 303 and headers["Location"] == HOME
    async with client.session.get("/login", params={"next": target},
                                  allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == HOME


# --- odd values in the login form -----------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "password"),
    [("a" * 10_000, "whatever"), ("admin", "p" * 100_000), ("ad\x00min", "x"),
     ("admin\n", "x"), ("ädmïn", "pässwörd"), (" admin ", "wrong")],
)
async def test_odd_login_values_fail_plainly(
    inprocess_node: InProcessNode, login_client: Callable[..., Any],
    username: str, password: str,
) -> None:
    client = await login_client(inprocess_node, signed_in=False)
    status, _, text = await attempt(client, username, password)
    assert status == 403 and FAILED in text
    assert session_rows(inprocess_node) == []
    assert len(password) < 8 or password not in text
    status, _, _ = await attempt(client, "admin", inprocess_node.info.admin_password)
    assert status == 303  # still up, and the account is not locked by one failure


async def test_login_replaces_an_existing_session(
    inprocess_node: InProcessNode, login_client: Callable[..., Any]
) -> None:
    client = await login_client(inprocess_node)
    first = client.cookie(sessions.COOKIE)
    # Post the login form again while signed in (as a second tab would).
    anon = await login_client(inprocess_node, signed_in=False)
    await anon.get("/login")
    data = {"username": "admin", "password": inprocess_node.info.admin_password,
            "csrf_token": anon.last_token}
    cookies = {sessions.COOKIE: first or ""}
    async with anon.session.post("/login", data=data, cookies=cookies,
                                 allow_redirects=False) as r:
        assert r.status == 303
    hashes = {row["token_hash"] for row in session_rows(inprocess_node)}
    assert hashlib.sha256((first or "").encode()).hexdigest() not in hashes
    assert len(hashes) == 1
