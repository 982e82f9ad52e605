"""The pure parts of /login: lockout table, address limiter, redirects, tokens, the menu."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlas.web.login import lockout, sessions
from atlas.web.login.csrf import LoginCsrf
from atlas.web.login.pages.signin import HOME, safe_next
from atlas.web.login.state import OneTimeStore
from atlas.web.rendering import (
    DEFAULT_ENTRIES,
    FlashStore,
    Form,
    NavEntry,
    NavRegistry,
    format_duration,
    format_time,
    nav_view,
)

# --- account lockout ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "seconds"),
    [(0, 0), (1, 0), (4, 0), (5, 30), (6, 60), (7, 120), (8, 240), (9, 480), (10, 900),
     (11, 900), (50, 900), (10**6, 900)],
)
def test_lock_table(failures: int, seconds: float) -> None:
    assert lockout.lock_seconds(failures) == seconds


@given(st.integers(min_value=0, max_value=10_000))
def test_lock_grows_and_is_capped(failures: int) -> None:
    now = lockout.lock_seconds(failures)
    assert 0 <= now <= lockout.MAX_LOCK
    assert lockout.lock_seconds(failures + 1) >= now


def test_after_failure_counts_and_locks_from_the_fifth() -> None:
    state = lockout.Failure(0, 0.0)
    for _ in range(4):
        state = lockout.after_failure(state.failures, 1000.0)
        assert state.locked_until == 0.0
    state = lockout.after_failure(state.failures, 1000.0)
    assert state == lockout.Failure(5, 1030.0)
    assert lockout.locked(state.locked_until, 1029.9)
    assert not lockout.locked(state.locked_until, 1030.0)


def test_address_limiter_window_and_retry_after() -> None:
    lim = lockout.AddressLimiter(limit=3, window=60.0)
    for t in (0.0, 1.0, 2.0):
        assert lim.retry_after("10.0.0.1", t) == 0
        lim.failed("10.0.0.1", t)
    assert lim.retry_after("10.0.0.1", 3.0) == pytest.approx(57.0)
    assert lim.retry_after("10.0.0.2", 3.0) == 0  # other addresses unaffected
    assert lim.retry_after("10.0.0.1", 60.0) == 0  # the oldest failure left the window


def test_address_limiter_memory_is_bounded() -> None:
    lim = lockout.AddressLimiter(limit=2, window=60.0, max_addresses=100)
    for i in range(1000):
        lim.failed(f"10.0.{i // 256}.{i % 256}", 1.0)
        lim.failed(f"10.0.{i // 256}.{i % 256}", 1.0)
    assert len(lim._failures) == 100
    assert lim.retry_after("10.0.3.231", 2.0) > 0  # the most recent are kept


# --- sessions ----------------------------------------------------------------------------


def test_session_expiry_idle_and_absolute() -> None:
    created = 1000.0
    assert sessions.next_expiry(created, created) == created + sessions.IDLE_TIMEOUT
    late = created + sessions.ABSOLUTE_TIMEOUT - 60
    assert sessions.next_expiry(created, late) == created + sessions.ABSOLUTE_TIMEOUT
    assert sessions.alive(created, created + 1800, created + 1799)
    assert not sessions.alive(created, created + 1800, created + 1800)
    # expires_at in the future does not outlive the absolute limit
    assert not sessions.alive(created, created + 10**9, created + sessions.ABSOLUTE_TIMEOUT)


# --- the login form's redirect -----------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["/login/management/security", "/login/management/api?x=1", "/login/account#top"],
)
def test_safe_next_keeps_login_paths(target: str) -> None:
    assert safe_next(target) == target


@pytest.mark.parametrize(
    "target",
    [None, "", "https://evil.example/login", "//evil.example/login", "/\\evil.example",
     "\\\\evil.example", "http:/login", "javascript:alert(1)", "/login/../../evil",
     "/login/./x", "/loginx", "/api/v1/nodes", "/login", "login/x", "/login/\r\nSet-Cookie:x",
     "/login/\x00", " //evil.example", "/" + "a" * 3000, "https:evil.example"],
)
def test_safe_next_refuses_other_targets(target: str | None) -> None:
    assert safe_next(target) == HOME


@given(st.text(max_size=80))
def test_safe_next_never_leaves_the_site(target: str) -> None:
    resolved = urlsplit(urljoin("https://node.example:443/login", safe_next(target)))
    assert resolved.netloc == "node.example:443"
    assert resolved.path.startswith("/login/")


# --- the login form's signed double-submit token ----------------------------------------


def test_login_csrf_round_trip_and_tampering() -> None:
    csrf = LoginCsrf(b"k" * 32)
    token = csrf.issue(1000.0)
    assert csrf.valid(token, token, 1000.0)
    assert csrf.valid(token, token, 1000.0 + csrf.lifetime)
    assert not csrf.valid(token, token, 1001.0 + csrf.lifetime)  # too old
    assert not csrf.valid(token, token, 900.0)  # from the future
    assert not csrf.valid(token, None, 1000.0)
    assert not csrf.valid(None, token, 1000.0)
    assert not csrf.valid(token, csrf.issue(1000.0), 1000.0)  # cookie and field differ
    nonce, issued, sig = token.split(".")
    forged = f"{nonce}x.{issued}.{sig}"
    assert not csrf.valid(forged, forged, 1000.0)  # planted without the key
    other = LoginCsrf(b"o" * 32).issue(1000.0)
    assert not csrf.valid(other, other, 1000.0)
    assert not csrf.valid("a.b", "a.b", 1000.0)
    assert not csrf.valid("é.1.x", "é.1.x", 1000.0)


def test_login_csrf_needs_a_real_key() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        LoginCsrf(b"short")


# --- the menu ----------------------------------------------------------------------------


def test_default_menu_follows_the_guide() -> None:
    reg = NavRegistry.default()
    assert [s.title for s in reg.sections] == [
        "Status", "My Account", "Configuration", "Users & Security", "Management"]
    assert [e.title for e in reg.entries("management")] == [
        "Software Management", "Security", "Site Configuration", "Cluster", "Failover",
        "API Configuration"]
    assert all(not e.built and e.pending.startswith("Available once") for e in DEFAULT_ENTRIES)
    assert reg.get("cluster") is not None
    assert reg.get("cluster").href == "/login/pending/cluster"  # type: ignore[union-attr]


def test_adding_a_page_replaces_the_placeholder_in_place() -> None:
    reg = NavRegistry.default()
    reg.add(NavEntry("management", "cluster", "Cluster", "/login/management/cluster", order=40))
    entry = reg.get("cluster")
    assert entry is not None and entry.built and entry.href == "/login/management/cluster"
    assert [e.key for e in reg.entries("management")][3] == "cluster"
    view = nav_view(reg, "/login/management/cluster/nodes/3/edit")
    assert [t.title for t in view.tabs if t.active] == ["Management"]
    assert [i.title for i in view.subnav if i.active] == ["Cluster"]
    # The Management tab leads to its first built page.
    assert reg.landing("management").key == "cluster"  # type: ignore[union-attr]


def test_menu_refuses_unknown_sections_and_conflicting_paths() -> None:
    reg = NavRegistry.default()
    with pytest.raises(ValueError, match="unknown /login section"):
        reg.add(NavEntry("reports", "reports", "Reports", "/login/reports"))
    reg.add(NavEntry("management", "cluster", "Cluster", "/login/management/cluster"))
    with pytest.raises(ValueError, match="already at"):
        reg.add(NavEntry("management", "cluster", "Cluster", "/login/cluster"))


def test_single_page_section_has_no_second_row() -> None:
    reg = NavRegistry.default()
    reg.add(NavEntry("account", "account", "My Account", "/login/account", order=10))
    assert not nav_view(reg, "/login/account").show_subnav
    assert nav_view(reg, "/login/pending/cluster").show_subnav


# --- small helpers -----------------------------------------------------------------------


def test_form_keeps_first_error_and_text_values() -> None:
    form = Form.from_post({"name": "x", "file": object()})
    assert form.values == {"name": "x"}
    form.error("name", "first")
    form.error("name", "second")
    assert form.errors == {"name": "first"} and not form.ok


def test_flash_and_one_time_stores_are_bounded_and_one_shot() -> None:
    flashes = FlashStore(max_sessions=2, per_session=2)
    for m in ("a", "b", "c"):
        flashes.push("s1", m)
    flashes.push("s2", "x")
    flashes.push("s3", "y")
    assert flashes.take("s1") == []  # evicted, oldest session first
    assert flashes.take("s3") == ["y"] and flashes.take("s3") == []
    store: OneTimeStore[str] = OneTimeStore(ttl=10.0, max_items=2)
    store.put("s1", "secret", 0.0)
    assert store.take("s1", 5.0) == "secret"
    assert store.take("s1", 5.0) is None
    store.put("s1", "secret", 0.0)
    assert store.take("s1", 10.0) is None  # expired


def test_formatting() -> None:
    assert format_time(0) == "1970-01-01 00:00:00 UTC"
    assert format_time(None) == ""
    assert format_duration(0) == "0 s"
    assert format_duration(3 * 86400 + 4 * 3600 + 5 * 60 + 6) == "3 d 4 h 5 min"
    assert format_duration(61) == "1 min 1 s"
