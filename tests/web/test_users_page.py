"""Users & Security → Representatives in process: list, create, edit, enable/disable.

Every bad value gets a message naming its field, next to the field; the database is read
back to show nothing was stored; typed input comes back except passwords, which never
appear in a page.
"""

from __future__ import annotations

import html
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from argon2 import PasswordHasher

from atlas.store import lockout, passwords
from atlas.store import representatives as reps
from atlas.store.db import Database
from tests.conftest import InProcessNode, LoginClient

PAGE = "/login/users/representatives"
PASSWORD = "rep password 1"
NEW_PASSWORD = "rep password 2"


@pytest.fixture(autouse=True)
def fast_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2id parameters: these tests check many passwords, not the hash's cost."""
    monkeypatch.setattr(passwords, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024))


@pytest.fixture
async def admin(inprocess_node: InProcessNode, login_client: Callable[..., Any]) -> LoginClient:
    client: LoginClient = await login_client(inprocess_node)
    return client


def field_error(page_text: str, name: str) -> str:
    m = re.search(rf'<p class="field-error" id="f-{re.escape(name)}-error">(.*?)</p>', page_text)
    return html.unescape(m.group(1)) if m else ""


def rows(db: Database) -> list[dict[str, Any]]:
    return [dict(r) for r in db.all("SELECT * FROM representatives ORDER BY id")]


def new_rep(username: str = "alice", display_name: str = "Alice from Support",
            password: str = PASSWORD, confirm: str | None = None) -> dict[str, str]:
    return {"username": username, "display_name": display_name, "password": password,
            "password_confirm": password if confirm is None else confirm}


async def add(admin: LoginClient, **kwargs: str) -> Any:
    await admin.get(PAGE)
    return await admin.post(PAGE, new_rep(**kwargs))


# --- the menu -----------------------------------------------------------------------------


async def test_users_and_security_leads_to_representatives(admin: LoginClient) -> None:
    page = await admin.get("/login/users")
    assert page.status == 200 and page.url.endswith(PAGE)
    assert "No representatives yet." in page.text
    assert f'<a href="{PAGE}" class="active"' in page.text
    assert "/login/pending/users" not in page.text
    assert (await admin.get("/login/pending/users")).url.endswith(PAGE)
    pending = await admin.get("/login/pending/administrators")
    assert "Available once administrator accounts can be managed here." in pending.text


async def test_signed_out_and_forged_posts_are_refused(
    inprocess_node: InProcessNode, admin: LoginClient
) -> None:
    async with inprocess_node.client().get(PAGE, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"].startswith("/login?")
    await admin.get(PAGE)
    assert (await admin.post(PAGE, new_rep(), csrf=False)).status == 403
    assert (await admin.post(PAGE, new_rep(), csrf="forged")).status == 403
    assert rows(inprocess_node.node.db) == []


# --- create -------------------------------------------------------------------------------


async def test_create_lists_the_account_and_it_can_sign_in(
    inprocess_node: InProcessNode, admin: LoginClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="atlas.web.login"):
        page = await add(admin, username=" alice ", display_name="Alice from Support")
    assert any(r.getMessage() == "representative created" for r in caplog.records)
    assert all(PASSWORD not in str(r.__dict__) for r in caplog.records)
    assert page.status == 200 and page.url.endswith(PAGE)
    assert "The representative “alice” has been created." in page.text
    row = re.search(r'<tr id="rep-\d+" class="">(.*?)</tr>', page.text, re.S)
    assert row is not None
    cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row.group(1), re.S)]
    assert cells[:2] == ["alice", "Alice from Support"] and "Enabled" in cells[2]
    assert "—" in cells[3]  # not locked
    assert PASSWORD not in page.text
    db = inprocess_node.node.db
    assert PASSWORD not in str(rows(db))
    assert reps.authenticate(db, "alice", PASSWORD, time.time()) is not None


@pytest.mark.parametrize(
    ("data", "field", "problem"),
    [
        (new_rep(username=""), "username", "Enter a username."),
        (new_rep(username="   "), "username", "Enter a username."),
        (new_rep(username="u" * 65), "username", "The username must be at most 64 characters."),
        (new_rep(username="al ice"), "username", "The username may contain only letters"),
        (new_rep(username="<b>x</b>"), "username", "The username may contain only letters"),
        (new_rep(username=".alice"), "username", "must start with a letter or digit"),
        (new_rep(display_name=""), "display_name", "Enter a display name."),
        (new_rep(display_name="d" * 101), "display_name",
         "The display name must be at most 100 characters."),
        (new_rep(display_name="bell\x07name"), "display_name",
         "The display name must not contain control"),
        (new_rep(password="", confirm=""), "password", "Enter a password."),
        (new_rep(password="short7!"), "password",
         "The password must be at least 8 characters."),
        (new_rep(password="p" * 1025), "password", "The password must be at most 1024"),
        (new_rep(confirm=""), "password_confirm", "Enter the password again"),
        (new_rep(confirm=PASSWORD + "x"), "password_confirm", "does not match the password"),
        ({"display_name": "only a name"}, "username", "Enter a username."),
    ],
)
async def test_create_refuses_bad_values(
    inprocess_node: InProcessNode, admin: LoginClient,
    data: dict[str, str], field: str, problem: str,
) -> None:
    await admin.get(PAGE)
    page = await admin.post(PAGE, data)
    assert page.status == 400
    assert problem in field_error(page.text, field)
    assert "Please correct the field" in page.text
    assert rows(inprocess_node.node.db) == []
    for name in ("username", "display_name"):  # typed input is kept ...
        value = data.get(name, "")
        if value.isprintable() and len(value) < 200:
            assert f'value="{html.escape(value)}"' in page.text
    password = data.get("password", "")
    if password:  # ... passwords never
        assert password not in page.text and 'value="rep password' not in page.text
    assert (await admin.get(PAGE)).status == 200


@pytest.mark.parametrize("again", ["alice", "ALICE", "  Alice"])
async def test_duplicate_username_is_refused(
    inprocess_node: InProcessNode, admin: LoginClient, again: str
) -> None:
    await add(admin, username="alice")
    page = await add(admin, username=again, display_name="Another Alice")
    assert page.status == 400
    assert f"The username “{again.strip()}” is already taken." == field_error(
        page.text, "username")
    assert [r["display_name"] for r in rows(inprocess_node.node.db)] == ["Alice from Support"]


async def test_names_are_escaped(inprocess_node: InProcessNode, admin: LoginClient) -> None:
    name = '<script>alert("x")</script> & co'
    page = await add(admin, display_name=name)
    assert page.status == 200 and name not in page.text
    escaped = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; co"
    assert escaped in page.text
    rep_id = rows(inprocess_node.node.db)[0]["id"]
    edit = await admin.get(f"{PAGE}/{rep_id}")
    assert name not in edit.text and f'value="{escaped}"' in edit.text
    bad = await admin.post(f"{PAGE}/{rep_id}", {"display_name": name + "\x00"})
    assert bad.status == 400 and name not in bad.text


# --- edit ---------------------------------------------------------------------------------


async def test_edit_display_name_keeps_the_password(
    inprocess_node: InProcessNode, admin: LoginClient
) -> None:
    await add(admin)
    db = inprocess_node.node.db
    before = rows(db)[0]
    edit = await admin.get(f"{PAGE}/{before['id']}")
    assert edit.status == 200 and 'value="Alice from Support"' in edit.text
    page = await admin.post(f"{PAGE}/{before['id']}", {
        "display_name": "Alice B.", "password": "", "password_confirm": ""})
    assert page.status == 200 and page.url.endswith(PAGE)
    assert "The representative “alice” has been saved." in page.text
    assert "password has been changed" not in page.text
    after = rows(db)[0]
    assert after["display_name"] == "Alice B."
    assert after["password_hash"] == before["password_hash"]


async def test_edit_new_password_works_and_lifts_a_lock(
    inprocess_node: InProcessNode, admin: LoginClient
) -> None:
    await add(admin)
    db = inprocess_node.node.db
    now = time.time()
    for _ in range(lockout.LOCK_AFTER):
        assert reps.authenticate(db, "alice", "wrong password", now) is None
    rep = reps.get_by_username(db, "alice")
    assert rep is not None and rep.locked(now)
    listing = await admin.get(PAGE)
    row = re.search(r'<tr id="rep-\d+".*?</tr>', listing.text, re.S)
    assert row is not None
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", row.group(0))  # locked until

    await admin.get(f"{PAGE}/{rep.id}")
    page = await admin.post(f"{PAGE}/{rep.id}", {
        "display_name": rep.display_name, "password": NEW_PASSWORD,
        "password_confirm": NEW_PASSWORD})
    assert page.status == 200 and "Their password has been changed." in page.text
    assert NEW_PASSWORD not in page.text
    assert reps.authenticate(db, "alice", NEW_PASSWORD, now) is not None  # lock lifted
    assert reps.authenticate(db, "alice", PASSWORD, now) is None


@pytest.mark.parametrize(
    ("data", "field", "problem"),
    [
        ({"display_name": ""}, "display_name", "Enter a display name."),
        ({"display_name": "x" * 101}, "display_name", "must be at most 100 characters"),
        ({"display_name": "tab\there"}, "display_name", "must not contain control"),
        ({"display_name": "Ok", "password": "short", "password_confirm": "short"},
         "password", "The password must be at least 8 characters."),
        ({"display_name": "Ok", "password": NEW_PASSWORD}, "password_confirm",
         "Enter the password again"),
        ({"display_name": "Ok", "password": NEW_PASSWORD, "password_confirm": "other pass"},
         "password_confirm", "does not match"),
        ({"display_name": "Ok", "password_confirm": NEW_PASSWORD}, "password",
         "leave both password fields empty"),
    ],
)
async def test_edit_refuses_bad_values(
    inprocess_node: InProcessNode, admin: LoginClient,
    data: dict[str, str], field: str, problem: str,
) -> None:
    await add(admin)
    db = inprocess_node.node.db
    before = rows(db)
    rep_id = before[0]["id"]
    await admin.get(f"{PAGE}/{rep_id}")
    page = await admin.post(f"{PAGE}/{rep_id}", data)
    assert page.status == 400
    assert problem in field_error(page.text, field)
    assert rows(db) == before
    if data["display_name"].isprintable():
        assert f'value="{html.escape(data["display_name"])}"' in page.text
    assert NEW_PASSWORD not in page.text and 'value="short"' not in page.text


# --- enable / disable ---------------------------------------------------------------------


async def test_disable_and_enable(inprocess_node: InProcessNode, admin: LoginClient) -> None:
    await add(admin)
    db = inprocess_node.node.db
    rep_id = rows(db)[0]["id"]
    listing = await admin.get(PAGE)
    assert f'action="{PAGE}/{rep_id}/disable"' in listing.text

    assert (await admin.post(f"{PAGE}/{rep_id}/disable", {}, csrf=False)).status == 403
    assert rows(db)[0]["enabled"] == 1

    page = await admin.post(f"{PAGE}/{rep_id}/disable", {})
    assert page.status == 200 and page.url.endswith(PAGE)
    assert "has been disabled and can no longer sign in" in page.text
    assert "Disabled" in page.text and f'action="{PAGE}/{rep_id}/enable"' in page.text
    assert rows(db)[0]["enabled"] == 0
    assert reps.authenticate(db, "alice", PASSWORD, time.time()) is None

    again = await admin.post(f"{PAGE}/{rep_id}/disable", {})
    assert "was already disabled" in again.text

    page = await admin.post(f"{PAGE}/{rep_id}/enable", {})
    assert "has been enabled" in page.text and rows(db)[0]["enabled"] == 1
    assert reps.authenticate(db, "alice", PASSWORD, time.time()) is not None


@pytest.mark.parametrize("rep_id", ["999", "abc", "-1", "0", "1" * 40])
async def test_unknown_representative_is_404(
    inprocess_node: InProcessNode, admin: LoginClient, rep_id: str
) -> None:
    page = await admin.get(f"{PAGE}/{rep_id}")
    assert page.status == 404 and "There is no such representative." in page.text
    await admin.get(PAGE)
    for suffix in ("", "/enable", "/disable"):
        posted = await admin.post(f"{PAGE}/{rep_id}{suffix}", {"display_name": "x"},
                                  csrf=admin.last_token)
        assert posted.status == 404
    assert rows(inprocess_node.node.db) == []
