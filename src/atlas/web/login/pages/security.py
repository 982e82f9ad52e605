"""Management → Security: the Inter-appliance Communication Pre-shared Key.

Guide: "Enter a secure password into the Inter-appliance Communication Pre-shared Key
field. This password must match among all nodes." The key is never shown back: the page
only says whether one is set and when it was changed. It is stored by ``Node.set_psk``
(a 0600 file); the change time goes to ``settings``; logs record the fact, never the value.
"""

from __future__ import annotations

import logging

from aiohttp import web

from atlas.node.app import NODE
from atlas.node.runtime import Node
from atlas.web.login.guard import add_page
from atlas.web.login.state import LOGIN_STATE
from atlas.web.rendering import VIEWER, Form, flash, read_form, render, see_other

log = logging.getLogger("atlas.web.login")

PATH = "/login/management/security"
PSK_MIN = 12
PSK_MAX = 256
CHANGED_SETTING = "psk_changed_at"


def psk_problem(psk: str) -> str | None:
    """Why ``psk`` cannot be the pre-shared key, or None."""
    if not psk:
        return "Enter the pre-shared key."
    if len(psk) < PSK_MIN:
        return f"The pre-shared key must be at least {PSK_MIN} characters long."
    if len(psk) > PSK_MAX:
        return f"The pre-shared key must be at most {PSK_MAX} characters long."
    if any(not c.isprintable() for c in psk):
        return "The pre-shared key must not contain control characters such as line breaks."
    return None


def save_psk(node: Node, psk: str, now: float, by: str) -> None:
    node.set_psk(psk)
    node.db.set_setting(CHANGED_SETTING, repr(now))
    log.info("inter-appliance pre-shared key changed", extra={"admin": by})


def psk_changed_at(node: Node) -> float | None:
    raw = node.db.get_setting(CHANGED_SETTING)
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def _page(request: web.Request, form: Form, status: int = 200) -> web.Response:
    node = request.config_dict[NODE]
    return render(
        request, "login/security.html", title="Management :: Security", status=status,
        form=form, psk_set=node.psk is not None, psk_changed=psk_changed_at(node),
        psk_min=PSK_MIN, psk_max=PSK_MAX,
    )


async def security_page(request: web.Request) -> web.StreamResponse:
    return _page(request, Form())


async def save_security(request: web.Request) -> web.StreamResponse:
    posted = await read_form(request)
    psk, confirm = posted.value("psk"), posted.value("psk_confirm")
    form = Form()  # the key is never shown back, not even after an error
    if problem := psk_problem(psk):
        form.error("psk", problem)
    elif not confirm:
        form.error("psk_confirm", "Enter the pre-shared key again to confirm it.")
    elif confirm != psk:
        form.error("psk_confirm", "This does not match the pre-shared key above.")
    if not form.ok:
        return _page(request, form, status=400)
    node = request.config_dict[NODE]
    save_psk(node, psk, request.config_dict[LOGIN_STATE].now(), request[VIEWER].username)
    flash(request, "The inter-appliance communication pre-shared key has been saved. "
                   "Set the same key on every node of the cluster.")
    return see_other(PATH)


def setup(app: web.Application) -> None:
    add_page(app, "management", "security", "Security", PATH, security_page, post=save_security)
