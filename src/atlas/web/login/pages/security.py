"""Management → Security: the Inter-appliance Communication Pre-shared Key.

Guide: "Enter a secure password into the Inter-appliance Communication Pre-shared Key
field. This password must match among all nodes." The key is never shown back: the page
only says whether one is set and when it was changed. The rules and the storage (a 0600
file) are :mod:`atlas.node.psk`, shared with ``atlas psk set``.
"""

from __future__ import annotations

from aiohttp import web

from atlas.node.app import NODE
from atlas.node.psk import PSK_MAX, PSK_MIN, psk_changed_at, psk_problem, save_psk
from atlas.web.login.guard import add_page
from atlas.web.login.state import LOGIN_STATE
from atlas.web.rendering import VIEWER, Form, flash, read_form, render, see_other

PATH = "/login/management/security"


def _page(request: web.Request, form: Form, status: int = 200) -> web.Response:
    node = request.config_dict[NODE]
    return render(
        request, "login/security.html", title="Management :: Security", status=status,
        form=form, psk_set=node.psk is not None, psk_changed=psk_changed_at(node.db),
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
    save_psk(node.datadir, node.db, psk, request.config_dict[LOGIN_STATE].now(),
             request[VIEWER].username)
    flash(request, "The inter-appliance communication pre-shared key has been saved. "
                   "Set the same key on every node of the cluster.")
    return see_other(PATH)


def setup(app: web.Application) -> None:
    add_page(app, "management", "security", "Security", PATH, security_page, post=save_security)
