"""Status → Information: what this node is, how long it has been up, and its Connected
Clients (guide, "Check Connections": on the master every online client with the nodes
it is connected to; on a traffic node only those with an active session connection)."""

from __future__ import annotations

from aiohttp import web

from atlas.node.app import NODE
from atlas.node.roles import current_role
from atlas.node.runtime import Node
from atlas.web.login.guard import add_page
from atlas.web.login.state import LOGIN_STATE
from atlas.web.rendering import render

PATH = "/login/status/information"


def role_of(node: Node) -> str:
    """The node's cluster role: standalone, primary, backup or traffic."""
    return current_role(node.db).value


async def information(request: web.Request) -> web.StreamResponse:
    node = request.config_dict[NODE]
    now = request.config_dict[LOGIN_STATE].now()
    return render(
        request, "login/status.html", title="Status :: Information",
        identity=node.identity, version=node.software_version, role=role_of(node),
        started_at=node.started_at, uptime=now - node.started_at,
        connected=connected_view(request.app) if _brokered(request.app) else None,
    )


def _brokered(app: web.Application) -> bool:
    from atlas.broker.service import BROKER
    from atlas.relay.endpoint import RELAY

    return BROKER in app or RELAY in app


def connected_view(app: web.Application) -> object:
    from atlas.broker.service import connected_view as view

    return view(app)


def setup(app: web.Application) -> None:
    add_page(app, "status", "information", "Information", PATH, information)
