"""``/login``: the login form, signing in and out.

A failed login always gets the same answer, whether the user exists, the password is
wrong or the account is locked, so the answer tells an attacker nothing; the timing is the
same too (a password hash is verified in every case).
"""

from __future__ import annotations

import asyncio
import logging
import math
from urllib.parse import urlsplit

from aiohttp import web

from atlas.node.app import NODE
from atlas.store.admins import get_admin
from atlas.store.db import Database
from atlas.store.passwords import token_digest, verify_password
from atlas.web.login import csrf, lockout, sessions
from atlas.web.login.guard import LOGIN_PATH, admin_route
from atlas.web.login.state import LOGIN_STATE
from atlas.web.rendering import Form, flashes, render, see_other, viewer_of

log = logging.getLogger("atlas.web.login")

HOME = "/login/status/information"
MAX_USERNAME = 64
MAX_PASSWORD = 1024
MAX_NEXT = 2048

FAILED = (
    "Login failed: the user name or password is wrong, or the account is locked for a "
    "few minutes after repeated failed logins."
)
NOTICES = {
    "expired": "Your session has expired. Log in again.",
    "logged_out": "You are logged out.",
}


def safe_next(value: str | None) -> str:
    """Where to go after login: a /login path of this site, never another site."""
    if not value or len(value) > MAX_NEXT:
        return HOME
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return HOME
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or value.startswith("//"):
        return HOME
    path = parts.path
    if not (path == LOGIN_PATH or path.startswith(LOGIN_PATH + "/")):
        return HOME
    if any(seg in (".", "..") for seg in path.split("/")):
        return HOME
    if path == LOGIN_PATH:
        return HOME
    return value


def _login_page(
    request: web.Request,
    form: Form,
    *,
    status: int = 200,
    notice: str | None = None,
) -> web.Response:
    state = request.config_dict[LOGIN_STATE]
    token = state.login_csrf.issue(state.now())
    resp = render(
        request, "login/signin.html", title="Log in", status=status, csrf_token=token,
        form=form, notice=notice, next_path=safe_next(form.value("next")),
    )
    csrf.set_login_cookie(resp, token)
    return resp


async def login_form(request: web.Request) -> web.StreamResponse:
    state = request.config_dict[LOGIN_STATE]
    db = request.config_dict[NODE].db
    next_path = request.query.get("next")
    session = sessions.lookup(db, request.cookies.get(sessions.COOKIE), state.now())
    if session is not None:
        return see_other(safe_next(next_path))
    notice = next((text for flag, text in NOTICES.items() if request.query.get(flag)), None)
    return _login_page(request, Form({"next": next_path or ""}), notice=notice)


async def _check_credentials(db: Database, username: str, password: str, now: float) -> int | None:
    """The admin id if the credentials are right and the account not locked; else None.

    Counts the failure against an existing account and locks it per ``lockout``.
    """
    admin = get_admin(db, username) if len(username) <= MAX_USERNAME else None
    ok = await asyncio.to_thread(verify_password, admin.password_hash if admin else None, password)
    if admin is None:
        return None
    if lockout.locked(admin.locked_until, now):
        log.warning("login refused: account locked", extra={"admin": admin.username})
        return None
    if not ok:
        with db.transaction() as c:
            row = c.execute("SELECT failed_logins FROM admins WHERE id = ?", (admin.id,)).fetchone()
            after = lockout.after_failure(int(row["failed_logins"]) if row else 0, now)
            c.execute(
                "UPDATE admins SET failed_logins = ?, locked_until = ? WHERE id = ?",
                (after.failures, after.locked_until, admin.id),
            )
        if after.locked_until:
            log.warning(
                "account locked after failed logins",
                extra={"admin": admin.username, "failures": after.failures,
                       "seconds": round(after.locked_until - now)},
            )
        return None
    db.execute("UPDATE admins SET failed_logins = 0, locked_until = 0 WHERE id = ?", (admin.id,))
    return admin.id


async def login_submit(request: web.Request) -> web.StreamResponse:
    state = request.config_dict[LOGIN_STATE]
    db = request.config_dict[NODE].db
    now = state.now()
    address = request.remote or "unknown"
    form = Form.from_post(await request.post())
    password = form.values.pop("password", "")  # never echoed back

    if not state.login_csrf.valid(
        request.cookies.get(csrf.LOGIN_COOKIE), form.value(csrf.FIELD), now
    ):
        form.error("", "The login form had expired or did not come from this site. "
                       "It has been reloaded: log in again.")
        return _login_page(request, form, status=403)

    wait = math.ceil(state.limiter.retry_after(address, now))
    if wait:
        form.error("", f"Too many failed logins from your address. "
                       f"Try again in {wait} seconds.")
        resp = _login_page(request, form, status=429)
        resp.headers["Retry-After"] = str(wait)
        return resp

    username = form.value("username").strip()
    if not username:
        form.error("username", "Enter your user name.")
    if not password:
        form.error("password", "Enter your password.")
    if not form.ok:
        return _login_page(request, form, status=400)

    admin_id = None
    if len(password) <= MAX_PASSWORD:
        admin_id = await _check_credentials(db, username, password, now)
    if admin_id is None:
        state.limiter.failed(address, now)
        log.warning("login failed", extra={"client": address})
        form.error("", FAILED)
        return _login_page(request, form, status=403)

    previous = request.cookies.get(sessions.COOKIE)
    if previous:  # a new login always gets a new session (no session fixation)
        sessions.delete(db, token_digest(previous))
    token, session = sessions.create(db, admin_id, now)
    log.info("admin logged in", extra={"admin": session.username, "client": address})
    resp = see_other(safe_next(form.value("next")))
    sessions.set_cookie(resp, token)
    csrf.clear_login_cookie(resp)
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    viewer = viewer_of(request)
    resp = see_other(LOGIN_PATH + "?logged_out=1")
    if viewer is not None:
        sessions.delete(request.config_dict[NODE].db, viewer.session_key)
        flashes(request.app).forget(viewer.session_key)
        log.info("admin logged out", extra={"admin": viewer.username})
    sessions.clear_cookie(resp)
    return resp


async def trailing_slash(_request: web.Request) -> web.StreamResponse:
    return see_other(LOGIN_PATH)


def setup(app: web.Application) -> None:
    app.router.add_get(LOGIN_PATH, login_form)
    app.router.add_get(LOGIN_PATH + "/", trailing_slash)
    app.router.add_post(LOGIN_PATH, login_submit)
    admin_route(app, "POST", LOGIN_PATH + "/logout", logout)
