"""/login in a real browser against a real ``atlas serve`` process over verified TLS."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import pytest

from atlas.store.api_accounts import authenticate_client, list_accounts
from atlas.store.db import Database
from tests.conftest import RunningNode

pytestmark = pytest.mark.browser

SCREENSHOT = Path("/tmp/atlas-login.png")
PSK = "cluster-wide secret 0123"


def psk_file(node: RunningNode) -> Path:
    return node.data_dir / "secrets" / "psk"


def log_in(page: Any, password: str) -> None:
    page.fill("#f-username", "admin")
    page.fill("#f-password", password)
    page.click("button:has-text('Log in')")
    page.wait_for_load_state()


def test_admin_logs_in_sets_psk_and_creates_api_account(
    running_node: RunningNode, chromium_for: Any
) -> None:
    browser = chromium_for(running_node.data_dir)
    context = browser.new_context(viewport={"width": 1200, "height": 820})
    page = context.new_page()
    problems: list[str] = []
    # CSP violations ("Refused to load/apply/execute …") and script errors; the 4xx pages
    # of refused forms are expected and also logged as console errors, so only these count.
    page.on("console", lambda m: problems.append(m.text) if "Refused to" in m.text else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"404 {r.url}") if r.status == 404 else None)
    base = running_node.url

    # A signed-out visit to a page leads to the login form, which then leads back there.
    page.goto(f"{base}/login/management/security")
    assert re.search(r"/login\?next=", page.url)

    # A wrong password is refused with a message that names no account detail.
    log_in(page, "not the password")
    assert page.locator(".form-error").inner_text().startswith("Login failed")
    assert "/login" in page.url and "security" not in page.locator("h1").inner_text().lower()

    log_in(page, running_node.admin_password)
    assert page.url == f"{base}/login/management/security"
    assert page.locator("#psk-state").inner_text() == "No pre-shared key is set."

    # Too short: the problem is named next to the field, nothing is stored.
    page.fill("#f-psk", "short")
    page.fill("#f-psk_confirm", "short")
    page.click("button:has-text('Save')")
    page.wait_for_load_state()
    assert "at least 12 characters" in page.locator("#f-psk-error").inner_text()
    assert page.locator("#f-psk").input_value() == ""
    assert not psk_file(running_node).exists()

    page.fill("#f-psk", PSK)
    page.fill("#f-psk_confirm", PSK)
    page.click("button:has-text('Save')")
    page.wait_for_load_state()
    assert page.locator("#psk-state").inner_text().startswith("A pre-shared key is set (changed ")
    assert PSK not in page.content()
    assert psk_file(running_node).read_text() == PSK
    assert stat.S_IMODE(psk_file(running_node).stat().st_mode) == 0o600
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # A POST without the CSRF token, with the session cookie, is refused; nothing changes.
    refused = page.request.post(
        f"{base}/login/management/security",
        form={"psk": "another secret 4567", "psk_confirm": "another secret 4567"},
    )
    assert refused.status == 403
    assert psk_file(running_node).read_text() == PSK

    # API Configuration: the client secret is shown once.
    page.click("nav.subnav >> text=API Configuration")
    page.wait_for_load_state()
    page.fill("#f-name", "ticketing")
    page.check("input[name=command_api][value=full]")
    page.check("input[name=config_api][value=read]")
    page.click("button:has-text('Create API Account')")
    page.wait_for_load_state()
    assert "shown only this once" in page.locator(".warning").inner_text()
    client_id = page.locator("#client-id").inner_text()
    secret = page.locator("#client-secret").inner_text()
    db = Database(running_node.data_dir / "atlas.db")
    try:
        account = authenticate_client(db, client_id, secret)
        assert account is not None and account.name == "ticketing"
        assert [a.name for a in list_accounts(db)] == ["ticketing"]
    finally:
        db.close()

    page.reload()
    assert "no longer available" in page.locator("h1").inner_text()
    assert secret not in page.content()
    page.goto(f"{base}/login/management/api")
    assert client_id in page.locator("#api-accounts").inner_text()
    assert secret not in page.content()

    # Log out: the session is gone.
    page.click("button:has-text('Log out')")
    page.wait_for_load_state()
    assert "You are logged out." in page.content()
    page.goto(f"{base}/login/management/api")
    assert "/login?next=" in page.url
    assert problems == []  # no CSP violations, script errors or missing resources


def test_login_and_psk_work_without_javascript(
    running_node: RunningNode, chromium_for: Any
) -> None:
    browser = chromium_for(running_node.data_dir)
    page = browser.new_context(java_script_enabled=False).new_page()
    page.goto(f"{running_node.url}/login")
    log_in(page, running_node.admin_password)
    assert page.url.endswith("/login/status/information")
    assert running_node.info.identity.guid in page.content()
    page.click("nav.tabs >> text=Management")
    page.wait_for_load_state()
    assert page.url.endswith("/login/management/security")
    page.fill("#f-psk", PSK)
    page.fill("#f-psk_confirm", PSK + "x")
    page.click("button:has-text('Save')")
    page.wait_for_load_state()
    assert "does not match" in page.locator("#f-psk_confirm-error").inner_text()
    assert not psk_file(running_node).exists()
