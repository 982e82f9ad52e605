"""Users & Security → Representatives: the accounts of the people who help customers.

List (username, display name, enabled or disabled, locked until), create (username,
display name, password twice), edit (display name, optionally a new password twice) and
enable/disable. The rules for each value are in :mod:`atlas.store.representatives`; this
page words them for the form and puts each next to its field. Passwords are never shown
back, and a new password also lifts a lock from failed logins.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from atlas.node.app import NODE
from atlas.store import representatives as reps
from atlas.store.representatives import Representative, RepresentativeError
from atlas.web.login.guard import add_page, admin_route, not_found
from atlas.web.login.state import LOGIN_STATE
from atlas.web.rendering import NAV, VIEWER, Form, NavEntry, flash, read_form, render, see_other

log = logging.getLogger("atlas.web.login")

PATH = "/login/users/representatives"
TITLE = "Users & Security :: Representatives"
PASSWORD_FIELDS = ("password", "password_confirm")

# How each field is named in a message ("The display name must not be empty.").
LABELS = {"username": "username", "display_name": "display name", "password": "password"}
MISSING = {
    "username": "Enter a username.",
    "display_name": "Enter a display name.",
    "password": "Enter a password.",
}


def _say(form: Form, exc: RepresentativeError) -> None:
    """Put a store error next to its field, as a sentence naming the field."""
    if exc.field in LABELS:
        form.error(exc.field, f"The {LABELS[exc.field]} {exc.message}.")
    else:
        form.error("", f"{exc.message[:1].upper()}{exc.message[1:]}.")


def _check(form: Form, field: str, value: str, check: Callable[[str], str]) -> None:
    if not value.strip():
        form.error(field, MISSING[field])
        return
    try:
        check(value)
    except RepresentativeError as exc:
        _say(form, exc)


def _check_password_pair(form: Form, password: str, confirm: str, *, required: bool) -> None:
    """The password and its confirmation; with ``required=False`` both may be left empty."""
    if not password and not confirm and not required:
        return
    if not password:
        form.error("password", MISSING["password"] if required else
                   "Enter the new password, or leave both password fields empty.")
        return
    try:
        reps.check_password(password)
    except RepresentativeError as exc:
        _say(form, exc)
        return
    if not confirm:
        form.error("password_confirm", "Enter the password again to confirm it.")
    elif confirm != password:
        form.error("password_confirm", "This does not match the password above.")


# --- list and create -------------------------------------------------------------------


def _list_page(request: web.Request, form: Form, status: int = 200) -> web.Response:
    db = request.config_dict[NODE].db
    return render(
        request, "login/users.html", title=TITLE, status=status, form=form,
        representatives=reps.list_all(db), now=request.config_dict[LOGIN_STATE].now(),
        max_username=reps.MAX_USERNAME, max_display_name=reps.MAX_DISPLAY_NAME,
    )


async def users_page(request: web.Request) -> web.StreamResponse:
    return _list_page(request, Form())


async def create(request: web.Request) -> web.StreamResponse:
    db = request.config_dict[NODE].db
    posted = await read_form(request)
    username, display_name = posted.value("username"), posted.value("display_name")
    password, confirm = posted.value("password"), posted.value("password_confirm")
    form = Form({"username": username, "display_name": display_name})  # never the password

    _check(form, "username", username, reps.check_username)
    _check(form, "display_name", display_name, reps.check_display_name)
    _check_password_pair(form, password, confirm, required=True)
    if "username" not in form.errors and reps.get_by_username(db, username) is not None:
        form.error("username", f"The username “{username.strip()}” is already taken.")
    if not form.ok:
        return _list_page(request, form, status=400)
    try:
        rep = await asyncio.to_thread(reps.create, db, username, display_name, password)
    except RepresentativeError as exc:  # taken between the check and the insert
        _say(form, exc)
        return _list_page(request, form, status=400)
    log.info(
        "representative created",
        extra={"admin": request[VIEWER].username, "representative": rep.username},
    )
    flash(request, f"The representative “{rep.username}” has been created.")
    return see_other(PATH)


# --- one account -----------------------------------------------------------------------


def _from_path(request: web.Request) -> Representative | None:
    raw = request.match_info["rep_id"]
    if not raw.isdigit() or len(raw) > 18:
        return None
    return reps.get(request.config_dict[NODE].db, int(raw))


def _edit_page(
    request: web.Request, rep: Representative, form: Form, status: int = 200
) -> web.Response:
    return render(
        request, "login/users_edit.html", title=TITLE, status=status, form=form, rep=rep,
        now=request.config_dict[LOGIN_STATE].now(), max_display_name=reps.MAX_DISPLAY_NAME,
    )


async def edit_page(request: web.Request) -> web.StreamResponse:
    rep = _from_path(request)
    if rep is None:
        return not_found(request, "There is no such representative.")
    return _edit_page(request, rep, Form({"display_name": rep.display_name}))


async def save(request: web.Request) -> web.StreamResponse:
    rep = _from_path(request)
    if rep is None:
        return not_found(request, "There is no such representative.")
    db = request.config_dict[NODE].db
    posted = await read_form(request)
    display_name = posted.value("display_name")
    password, confirm = posted.value("password"), posted.value("password_confirm")
    form = Form({"display_name": display_name})

    _check(form, "display_name", display_name, reps.check_display_name)
    _check_password_pair(form, password, confirm, required=False)
    if not form.ok:
        return _edit_page(request, rep, form, status=400)
    try:
        saved = await asyncio.to_thread(
            reps.update, db, rep.id, display_name=display_name, password=password or None
        )
    except RepresentativeError as exc:
        _say(form, exc)
        return _edit_page(request, rep, form, status=400)
    log.info(
        "representative changed",
        extra={"admin": request[VIEWER].username, "representative": saved.username,
               "password_changed": bool(password)},
    )
    message = f"The representative “{saved.username}” has been saved."
    if password:
        message += " Their password has been changed."
    flash(request, message)
    return see_other(PATH)


async def _set_enabled(request: web.Request, enabled: bool) -> web.StreamResponse:
    rep = _from_path(request)
    if rep is None:
        return not_found(request, "There is no such representative.")
    word = "enabled" if enabled else "disabled"
    if rep.enabled == enabled:
        flash(request, f"The representative “{rep.username}” was already {word}.")
        return see_other(PATH)
    reps.update(request.config_dict[NODE].db, rep.id, enabled=enabled)
    log.info(
        f"representative {word}",
        extra={"admin": request[VIEWER].username, "representative": rep.username},
    )
    if enabled:
        flash(request, f"The representative “{rep.username}” has been enabled and can sign "
                       "in again.")
    else:
        flash(request, f"The representative “{rep.username}” has been disabled and can no "
                       "longer sign in.")
    return see_other(PATH)


async def enable(request: web.Request) -> web.StreamResponse:
    return await _set_enabled(request, True)


async def disable(request: web.Request) -> web.StreamResponse:
    return await _set_enabled(request, False)


def setup(app: web.Application) -> None:
    # Replaces the guide's "Users" placeholder; administrators keep a placeholder of their own.
    add_page(app, "users", "users", "Representatives", PATH, users_page, post=create)
    app[NAV].add(NavEntry(
        "users", "administrators", "Administrators", order=20,
        pending="Available once administrator accounts can be managed here.",
    ))
    one = PATH + "/{rep_id}"
    admin_route(app, "GET", one, edit_page)
    admin_route(app, "POST", one, save)
    admin_route(app, "POST", one + "/enable", enable)
    admin_route(app, "POST", one + "/disable", disable)
