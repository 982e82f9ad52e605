"""/login → Management → Cluster in a real browser against a real ``atlas serve`` process.

Creates a cluster, adds two traffic nodes (their addresses point at nothing: syncing is
not part of this test), toggles Accepting New Client Connections without a page load and
sees it survive a restart, sees the sync-needed warning, a validation error next to its
field, a stale toggle put back, and a node name with markup shown as text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningNode, free_port

pytestmark = pytest.mark.browser

SCREENSHOT = Path("/tmp/atlas-cluster.png")
NODE_SCREENSHOT = Path("/tmp/atlas-cluster-node.png")
PAGE = "/login/management/cluster"
XSS = "<script>alert(1)</script>"


def log_in(page: Any, password: str) -> None:
    page.fill("#f-username", "admin")
    page.fill("#f-password", password)
    page.click("button:has-text('Log in')")
    page.wait_for_load_state()


def submit(page: Any, selector: str) -> None:
    with page.expect_navigation():
        page.click(selector)


def row(page: Any, name: str) -> Any:
    return page.locator("#traffic-node-table tbody tr").filter(
        has=page.locator("td.name", has_text=name))


def add_traffic_node(page: Any, name: str, port: int, **extra: str) -> None:
    submit(page, "#add-traffic-node")
    assert page.locator("h1").inner_text() == "Cluster :: Add Traffic Node"
    page.fill("#f-name", name)
    page.fill("#f-public_host", "localhost")
    page.fill("#f-public_port", str(port))
    for field, value in extra.items():
        page.fill(f"#f-{field}", value)
    submit(page, "#save-node")


def test_cluster_page_in_a_browser(running_node: RunningNode, chromium_for: Any) -> None:
    browser = chromium_for(running_node.data_dir)
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    dialogs: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if "Refused to" in m.text else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    base = running_node.url

    page.goto(f"{base}{PAGE}")
    log_in(page, running_node.admin_password)
    assert page.url == f"{base}{PAGE}"
    assert "This site instance is not in a cluster." in page.locator("#current-status").inner_text()

    # Create New Cluster: this node's own name and address are filled in already.
    assert page.locator("#f-public_host").input_value() == "localhost"
    page.fill("#f-site_hostname", "support.example.test")
    submit(page, "#create-cluster")
    status = page.locator("#current-status").inner_text()
    assert "This site instance is the primary master node in the cluster." in status
    assert page.locator("#sync-needed").is_hidden()  # nothing to sync yet

    # A bad value is named next to its field; what was typed stays.
    tokyo_port, xss_port = free_port(), free_port()
    add_traffic_node(page, "tokyo", tokyo_port, timezone="+25:00",
                     prefixes="10.20.1.0/16\n10.30.0.0/16")
    error = page.locator("#f-timezone-error")
    assert "out of range" in error.inner_text()
    # the message sits right under the Timezone Offset box
    box, err = page.locator("#f-timezone").bounding_box(), error.bounding_box()
    assert 0 <= err["y"] - (box["y"] + box["height"]) < 40 and abs(err["x"] - box["x"]) < 30
    assert page.locator("#f-timezone").get_attribute("aria-invalid") == "true"
    assert page.locator("#f-name").input_value() == "tokyo"
    page.screenshot(path=str(NODE_SCREENSHOT), full_page=True)
    page.fill("#f-timezone", "Asia/Tokyo")
    submit(page, "#save-node")
    flashes = page.locator(".flash").all_inner_texts()
    assert "Traffic node “tokyo” added. Click Sync Now so the traffic nodes get the change." \
        in flashes
    assert any("10.20.1.0/16 has host bits set; stored as 10.20.0.0/16" in f for f in flashes)

    add_traffic_node(page, XSS, xss_port)
    assert row(page, XSS).locator("td.name").inner_text().startswith(XSS)  # shown as text
    assert dialogs == []
    assert page.locator("#traffic-node-table script").count() == 0

    # Every change raises the sync-needed warning.
    assert page.locator("#sync-needed").is_visible()
    assert "Sync needed" in page.locator("#sync-needed").inner_text()

    # Accepting takes effect at once, without loading a page.
    page.evaluate("window.__sameDocument = true")
    navigations: list[str] = []
    page.on("framenavigated", lambda f: navigations.append(f.url) if f == page.main_frame
            else None)
    revision_before = page.locator("#cluster").get_attribute("data-revision")
    box = row(page, "tokyo").locator("input.accepting-toggle")
    assert box.is_checked()
    box.click()
    message = page.locator("#accepting-message")
    message.wait_for(state="visible")
    assert "Saved: “tokyo” no longer accepts new client connections" in message.inner_text()
    assert "psk_not_set" in message.inner_text()  # no PSK on this node: told at the next sync
    assert not box.is_checked() and box.is_enabled()
    assert navigations == [] and page.evaluate("window.__sameDocument") is True
    revision_after = page.locator("#cluster").get_attribute("data-revision")
    assert int(revision_after) == int(revision_before) + 1
    assert page.locator("#method-form input[name=revision]").input_value() == revision_after
    assert row(page, "tokyo").locator(".needs-sync").is_visible()

    # Someone else changes the document meanwhile: the next toggle is refused and put back.
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    other = page.request.post(
        f"{base}{PAGE}/accepting",
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
        data={"name": XSS, "accepting": False, "revision": int(revision_after)},
    )
    assert other.status == 200, other.text()
    xss_box = row(page, XSS).locator("input.accepting-toggle")
    assert xss_box.is_checked()  # this page does not know yet
    box.click()  # tokyo back on, from a stale page
    page.locator("#accepting-message", has_text="Not changed").wait_for()
    assert "changed since this page was loaded" in message.inner_text()
    assert not box.is_checked()  # put back
    assert navigations == []

    # Sync Now without a pre-shared key: said in place, no page load.
    page.click("#sync-now")
    summary = page.locator("#sync-summary")
    summary.wait_for(state="visible")
    assert "no Inter-appliance Communication Pre-shared Key" in summary.inner_text()
    assert navigations == []

    page.reload()
    assert not row(page, "tokyo").locator("input.accepting-toggle").is_checked()
    assert not row(page, XSS).locator("input.accepting-toggle").is_checked()

    # The flags survive a restart of the node.
    running_node.restart()
    page.goto(f"{base}{PAGE}")
    if "/login?" in page.url:  # the session survives restarts; log in again if not
        log_in(page, running_node.admin_password)
    assert page.url == f"{base}{PAGE}"
    assert not row(page, "tokyo").locator("input.accepting-toggle").is_checked()
    assert not row(page, XSS).locator("input.accepting-toggle").is_checked()
    box = row(page, "tokyo").locator("input.accepting-toggle")
    box.click()
    page.locator("#accepting-message", has_text="tokyo").wait_for()
    assert box.is_checked()
    assert page.locator("#sync-needed").is_visible()
    history = page.locator("#status-history tbody tr").first.inner_text()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", history)

    # The method settings shown are those of the chosen method.
    page.select_option("#f-method", "srv")
    assert page.locator("#f-srv_name").is_visible()
    assert page.locator("#f-anycast_address").is_hidden()
    page.select_option("#f-method", "random")

    page.reload()
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert dialogs == []
    assert problems == [], problems
