"""``/login/pending/<key>``: the short page behind a menu entry not built yet.

Once a feature registers the real page, the pending address forwards to it, so a
bookmark of the placeholder keeps working.
"""

from __future__ import annotations

from aiohttp import web

from atlas.web.login.guard import admin_route, not_found
from atlas.web.rendering import NAV, PENDING_PREFIX, render, see_other


async def pending(request: web.Request) -> web.StreamResponse:
    entry = request.config_dict[NAV].get(request.match_info["key"])
    if entry is None:
        return not_found(request, "There is no such page in /login.")
    if entry.path is not None:
        return see_other(entry.path)
    return render(request, "login/pending.html", title=entry.title, entry=entry)


async def section(request: web.Request) -> web.StreamResponse:
    landing = request.config_dict[NAV].landing(request.match_info["section"])
    if landing is None:
        return not_found(request, "There is no such section in /login.")
    return see_other(landing.href)


def setup(app: web.Application) -> None:
    admin_route(app, "GET", PENDING_PREFIX + "{key}", pending)
    # Tabs by section key (e.g. /login/management) lead to the section's first page.
    admin_route(app, "GET", "/login/{section:(status|configuration|users|management)}",
                section)
