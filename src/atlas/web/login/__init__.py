"""``/login``: the administrative web interface (guide: "/login > Management > …").

Server-rendered pages (Jinja2, autoescaped) that work without JavaScript. This package
holds sign-in, sessions and CSRF defences and the pages built so far; the shared layout,
menu and form helpers are in :mod:`atlas.web.rendering`. Other features add pages with
:func:`add_page` (route + login guard + menu entry) and :func:`admin_route`.
"""

from __future__ import annotations

from aiohttp import web

from atlas.node.app import NODE
from atlas.web.auth import register_session_authenticator
from atlas.web.login.csrf import LoginCsrf
from atlas.web.login.guard import (
    add_page,
    admin_route,
    forbidden,
    not_found,
    require_admin,
    session_principal,
)
from atlas.web.login.pages import (
    account,
    api_accounts,
    cluster,
    pending,
    security,
    signin,
    status,
    users,
)
from atlas.web.login.state import LOGIN_STATE, LoginState, signing_key
from atlas.web.rendering import STATIC_DIR, STATIC_PREFIX, flashes, nav

__all__ = ["add_page", "admin_route", "forbidden", "not_found", "require_admin", "setup"]

PAGES = (signin, status, account, users, security, cluster, api_accounts, pending)


def setup(app: web.Application) -> None:
    node = app[NODE]
    app[LOGIN_STATE] = LoginState(LoginCsrf(signing_key(node)))
    nav(app)
    flashes(app)
    app.router.add_static(STATIC_PREFIX, STATIC_DIR)
    for page in PAGES:
        page.setup(app)
    register_session_authenticator(session_principal)
