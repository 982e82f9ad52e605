"""The door of every signed-in /login page: session check, CSRF check, menu entry.

A feature adds a page with one call::

    add_page(app, "management", "cluster", "Cluster", "/login/management/cluster",
             cluster_page, post=cluster_post)

and further routes of the same page (no menu entry of their own) with
:func:`admin_route`. Handlers run only for a live session; for POST (and any other
unsafe method) only with the session's CSRF token in the ``csrf_token`` form field or the
``X-CSRF-Token`` header and no foreign ``Origin``. Inside a handler,
``request[VIEWER]`` is the administrator and :func:`atlas.web.rendering.render` draws the
page in the shared layout.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from atlas.node.app import NODE
from atlas.store.api_accounts import Permission
from atlas.web.auth import Principal
from atlas.web.login import csrf, sessions
from atlas.web.login.state import LOGIN_STATE
from atlas.web.rendering import VIEWER, NavEntry, Viewer, nav, render, see_other

log = logging.getLogger("atlas.web.login")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOGIN_PATH = "/login"


def login_url(next_path: str | None = None, **flags: str) -> str:
    query = dict(flags)
    if next_path:
        query["next"] = next_path
    return LOGIN_PATH + ("?" + urlencode(query) if query else "")


def _wants_json(request: web.Request) -> bool:
    return csrf.HEADER in request.headers or "application/json" in request.headers.get(
        "Accept", ""
    )


def require_admin(handler: Handler) -> Handler:
    """Wrap ``handler`` so it runs only for a signed-in administrator (see module doc)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        state = request.config_dict[LOGIN_STATE]
        db = request.config_dict[NODE].db
        token = request.cookies.get(sessions.COOKIE)
        session = sessions.lookup(db, token, state.now())
        if session is None:
            return _not_signed_in(request, had_cookie=token is not None)
        request[VIEWER] = Viewer(session.username, session.csrf_token, session.token_hash)
        if request.method not in csrf.SAFE_METHODS:
            submitted = await csrf.submitted_token(request)
            if not csrf.origin_ok(request) or not csrf.token_matches(
                session.csrf_token, submitted
            ):
                log.warning(
                    "form refused: missing or wrong CSRF token",
                    extra={"path": request.path, "admin": session.username},
                )
                return forbidden(request)
        response = await handler(request)
        response.headers["Cache-Control"] = "no-store"
        return response

    guarded.__name__ = getattr(handler, "__name__", "guarded")
    guarded.__doc__ = handler.__doc__
    return guarded


def _not_signed_in(request: web.Request, *, had_cookie: bool) -> web.StreamResponse:
    if _wants_json(request):
        resp: web.StreamResponse = web.json_response(
            {"error": "not signed in, or the session has expired; sign in at /login"},
            status=401,
        )
    else:
        flags = {"expired": "1"} if had_cookie else {}
        target = request.path_qs if request.method in csrf.SAFE_METHODS else request.path
        resp = see_other(login_url(target, **flags))
    resp.headers["Cache-Control"] = "no-store"
    if had_cookie:
        sessions.clear_cookie(resp)
    return resp


def forbidden(request: web.Request) -> web.StreamResponse:
    """403 for a form that did not come from our page (no/wrong CSRF token)."""
    message = (
        "This request was refused: it did not carry this page's security token (it may "
        "come from another site, or the page is out of date). Go back, reload the page "
        "and try again."
    )
    if _wants_json(request):
        return web.json_response({"error": message}, status=403)
    return render(request, "error.html", title="Request refused", status=403, message=message)


def not_found(request: web.Request, message: str) -> web.Response:
    return render(request, "error.html", title="Not found", status=404, message=message)


def admin_route(app: web.Application, method: str, path: str, handler: Handler) -> None:
    """Route ``method path`` to ``handler``, behind the login guard (GET answers HEAD too)."""
    if method.upper() == "GET":
        app.router.add_get(path, require_admin(handler))
    else:
        app.router.add_route(method, path, require_admin(handler))


def add_page(
    app: web.Application,
    section: str,
    key: str,
    title: str,
    path: str,
    get: Handler,
    *,
    post: Handler | None = None,
    order: int | None = None,
) -> None:
    """Add a signed-in page: GET (and POST) routes behind the guard, plus its menu entry.

    ``section`` is one of the guide's tabs (``status``, ``account``, ``configuration``,
    ``users``, ``management``); ``key`` names the entry; an entry with the same key (the
    guide's "available once …" placeholder) is replaced and keeps its menu position
    unless ``order`` is given.
    """
    reg = nav(app)
    old = reg.get(key)
    position = order if order is not None else (old.order if old is not None else 100)
    reg.add(NavEntry(section, key, title, path, order=position))
    admin_route(app, "GET", path, get)
    if post is not None:
        admin_route(app, "POST", path, post)


async def session_principal(request: web.Request) -> Principal | None:
    """For /api/v1 ``fetch()`` calls from /login pages: the signed-in administrator, if
    the session cookie is live and ``X-CSRF-Token`` is its token (see atlas.web.auth)."""
    state = request.config_dict.get(LOGIN_STATE)
    if state is None:
        return None
    session = sessions.lookup(
        request.config_dict[NODE].db, request.cookies.get(sessions.COOKIE), state.now()
    )
    if session is None or not csrf.origin_ok(request):
        return None
    if not csrf.token_matches(session.csrf_token, request.headers.get(csrf.HEADER)):
        return None
    return Principal("session", session.username, frozenset(Permission))
