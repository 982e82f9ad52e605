"""My Account: change one's own password (current + new + confirmation).

A changed password ends every other session of the account; this one stays signed in.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from atlas.node.app import NODE
from atlas.store.admins import get_admin, set_password
from atlas.store.passwords import password_problem, verify_password
from atlas.web.login import sessions
from atlas.web.login.guard import add_page
from atlas.web.login.state import LOGIN_STATE
from atlas.web.rendering import VIEWER, Form, flash, read_form, render, see_other

log = logging.getLogger("atlas.web.login")

PATH = "/login/account"
MAX_PASSWORD = 1024


def _page(request: web.Request, form: Form, status: int = 200) -> web.Response:
    return render(request, "login/account.html", title="My Account", status=status, form=form)


async def account_page(request: web.Request) -> web.StreamResponse:
    return _page(request, Form())


async def change_password(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    db = request.config_dict[NODE].db
    state = request.config_dict[LOGIN_STATE]
    posted = await read_form(request)
    current = posted.value("current_password")
    new = posted.value("new_password")
    confirm = posted.value("confirm_password")
    form = Form()  # password fields are never shown back

    if not current:
        form.error("current_password", "Enter your current password.")
    if not new:
        form.error("new_password", "Enter a new password.")
    elif problem := password_problem(new):
        form.error("new_password", f"The new password {problem}.")
    elif new == current:
        form.error("new_password", "The new password must differ from the current one.")
    if new and not confirm:
        form.error("confirm_password", "Enter the new password again.")
    elif new and confirm != new:
        form.error("confirm_password", "This does not match the new password.")

    admin = get_admin(db, viewer.username)
    if admin is None:
        form.error("", "Your account no longer exists.")
        return _page(request, form, status=400)
    if current and len(current) <= MAX_PASSWORD:
        ok = await asyncio.to_thread(verify_password, admin.password_hash, current)
    else:
        ok = False
    if current and not ok:
        state.limiter.failed(request.remote or "unknown", state.now())
        form.error("current_password", "The current password is wrong.")
    if not form.ok:
        return _page(request, form, status=400)

    await asyncio.to_thread(set_password, db, admin.id, new)
    ended = sessions.delete_others(db, admin.id, viewer.session_key)
    log.info("admin password changed", extra={"admin": admin.username, "sessions_ended": ended})
    message = "Your password has been changed."
    if ended:
        message += f" {ended} other session(s) of your account were signed out."
    flash(request, message)
    return see_other(PATH)


def setup(app: web.Application) -> None:
    add_page(app, "account", "account", "My Account", PATH, account_page, post=change_password)
