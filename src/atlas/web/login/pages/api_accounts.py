"""Management → API Configuration: API accounts for the Command API and ``/api/v1``.

An account gets a client id and a client secret for OAuth 2 client credentials
(``/oauth2/token``). The secret is shown once, on the page right after creation, and is
stored only as a hash; a lost secret means revoking the account and creating a new one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from atlas.node.app import NODE
from atlas.store.api_accounts import (
    ApiAccount,
    ApiAccountError,
    Permission,
    create_account,
    get_account,
    list_accounts,
    revoke_account,
)
from atlas.web.login.guard import add_page, admin_route, not_found
from atlas.web.login.state import LOGIN_STATE, ShownSecret
from atlas.web.rendering import VIEWER, Form, flash, read_form, render, see_other

log = logging.getLogger("atlas.web.login")

PATH = "/login/management/api"
CREATED_PATH = PATH + "/created"
MAX_NAME = 64


@dataclass(frozen=True)
class Choice:
    value: str
    label: str
    permission: Permission | None


COMMAND_API: tuple[Choice, ...] = (
    Choice("none", "None", None),
    Choice("read", "Read-only", Permission.COMMAND_READ),
    Choice("full", "Full access", Permission.COMMAND_FULL),
)
CONFIG_API: tuple[Choice, ...] = (
    Choice("none", "None", None),
    Choice("read", "Read", Permission.CONFIG_READ),
    Choice("write", "Read and write", Permission.CONFIG_WRITE),
)
FIELDS: tuple[tuple[str, str, tuple[Choice, ...]], ...] = (
    ("command_api", "Command API", COMMAND_API),
    ("config_api", "Configuration API", CONFIG_API),
)


def describe(perms: frozenset[Permission]) -> list[str]:
    """``["Command API: Full access", "Configuration API: Read"]`` for the accounts table."""
    out = []
    for _name, label, choices in FIELDS:
        granted = [c for c in choices if c.permission in perms]
        if granted:
            out.append(f"{label}: {granted[-1].label}")
    return out


def parse(form: Form) -> tuple[str, frozenset[Permission]]:
    """The account name and permissions from the form; problems go to ``form.errors``."""
    name = form.value("name").strip()
    if not name:
        form.error("name", "Enter a name for the API account.")
    elif len(name) > MAX_NAME:
        form.error("name", f"The name must be at most {MAX_NAME} characters long.")
    elif any(not c.isprintable() for c in name):
        form.error("name", "The name must not contain control characters.")
    perms: set[Permission] = set()
    for field_name, _label, choices in FIELDS:
        value = form.value(field_name, "none")
        chosen = next((c for c in choices if c.value == value), None)
        if chosen is None:
            allowed = ", ".join(c.label for c in choices)
            form.error(field_name, f"Choose one of: {allowed}.")
        elif chosen.permission is not None:
            perms.add(chosen.permission)
    if form.ok and not perms:
        form.error("command_api", "Give the account access to at least one API.")
    return name, frozenset(perms)


def _list_page(request: web.Request, form: Form, status: int = 200) -> web.Response:
    db = request.config_dict[NODE].db
    accounts = list_accounts(db)
    return render(
        request, "login/api_accounts.html", title="Management :: API Configuration",
        status=status, form=form, accounts=accounts, describe=describe,
        fields=FIELDS,
    )


async def api_page(request: web.Request) -> web.StreamResponse:
    return _list_page(request, Form({"command_api": "none", "config_api": "none"}))


async def create(request: web.Request) -> web.StreamResponse:
    db = request.config_dict[NODE].db
    state = request.config_dict[LOGIN_STATE]
    form = await read_form(request)
    form.values.pop("csrf_token", None)
    name, perms = parse(form)
    if form.ok and any(a.active and a.name == name for a in list_accounts(db)):
        form.error("name", f"An active API account named “{name}” already exists.")
    if not form.ok:
        return _list_page(request, form, status=400)
    try:
        new = await asyncio.to_thread(create_account, db, name, perms)
    except ApiAccountError as exc:
        field_name, _, message = str(exc).partition(": ")
        form.error("name" if field_name == "name" else "", message or str(exc))
        return _list_page(request, form, status=400)
    viewer = request[VIEWER]
    log.info(
        "API account created",
        extra={"admin": viewer.username, "account": new.account.name,
               "client_id": new.account.client_id},
    )
    state.new_secrets.put(
        viewer.session_key,
        ShownSecret(new.account.id, new.account.name, new.account.client_id, new.client_secret),
        state.now(),
    )
    return see_other(CREATED_PATH)


async def created(request: web.Request) -> web.StreamResponse:
    """The new account's client secret, shown this once."""
    state = request.config_dict[LOGIN_STATE]
    shown = state.new_secrets.take(request[VIEWER].session_key, state.now())
    account = None
    if shown is not None:
        account = get_account(request.config_dict[NODE].db, shown.account_id)
    return render(
        request, "login/api_created.html", title="Management :: API Configuration",
        shown=shown, account=account, describe=describe,
    )


def _account_from_path(request: web.Request) -> ApiAccount | None:
    raw = request.match_info["account_id"]
    if not raw.isdigit() or len(raw) > 18:
        return None
    return get_account(request.config_dict[NODE].db, int(raw))


async def revoke_confirm(request: web.Request) -> web.StreamResponse:
    account = _account_from_path(request)
    if account is None:
        return not_found(request, "There is no such API account.")
    return render(
        request, "login/api_revoke.html", title="Management :: API Configuration",
        account=account, describe=describe,
    )


async def revoke(request: web.Request) -> web.StreamResponse:
    account = _account_from_path(request)
    if account is None:
        return not_found(request, "There is no such API account.")
    db = request.config_dict[NODE].db
    if revoke_account(db, account.id):
        log.info(
            "API account revoked",
            extra={"admin": request[VIEWER].username, "account": account.name,
                   "client_id": account.client_id},
        )
        flash(request, f"The API account “{account.name}” has been revoked; its tokens "
                       "no longer work.")
    else:
        flash(request, f"The API account “{account.name}” was already revoked.")
    return see_other(PATH)


def setup(app: web.Application) -> None:
    add_page(app, "management", "api", "API Configuration", PATH, api_page, post=create)
    admin_route(app, "GET", CREATED_PATH, created)
    admin_route(app, "GET", PATH + "/{account_id}/revoke", revoke_confirm)
    admin_route(app, "POST", PATH + "/{account_id}/revoke", revoke)
