"""Command API actions about sessions and connected clients (DESIGN.md §8).

In the shape of the public BeyondTrust Command API (element names from its
``generate_session_key``, ``get_connected_clients`` and ``get_connected_client_list``)::

    <session_key xmlns="https://www.beyondtrust.com/namespaces/API/command">
      <short_key>0421337</short_key>
      <key_url>https://support.example.com/s/0421337</key_url>
      <expires ts="1718000000">2024-06-10T06:13:20+00:00</expires>
      <queue_id>general</queue_id>
    </session_key>

    <connected_clients>
      <connected_representative id="7">
        <hostname>rep-laptop</hostname>
        <platform id="linux">Linux x86_64</platform>
        <timezone_offset>3600</timezone_offset>            <!-- seconds east of UTC -->
        <connected_since ts="1718000000">2024-06-10T06:13:20+00:00</connected_since>
        <client_connections>                               <!-- include_connections=1 -->
          <client_connections>
            <client_connection>                            <!-- one per node -->
              <appliance_id>GUID</appliance_id>
              <hostname>master1.support.example.com</hostname>
              <role>primary</role>                         <!-- primary | traffic -->
              <connected_since ts="…">…</connected_since>
            </client_connection>
          </client_connections>
          <event_log>
            <event type="connected" appliance_id="GUID" ts="…">control</event>
          </event_log>
        </client_connections>
      </connected_representative>
      <connected_support_customer id="8">…</connected_support_customer>
    </connected_clients>

    <connected_client_list>
      <connected_client_summary>
        <appliance_summary id="GUID"><count type="representative">1</count>…</appliance_summary>
      </connected_client_summary>
      <connected_client type="representative" id="7"/>      <!-- unless summary_only=1 -->
    </connected_client_list>

On the master every online client of the cluster is listed with where it is connected;
on a traffic node only the clients with an active session connection to it (guide,
"Check Connections"). ``generate_session_key`` is the master's (it brokers sessions).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping

from aiohttp import web

from atlas.broker.service import BROKER, ClientView, ConnectedView, connected_view, is_master
from atlas.broker.session_keys import SessionKeyRequestError, SessionKeyStoreFull
from atlas.node.app import NODE
from atlas.protocol.control import ClientKind
from atlas.store.api_accounts import Permission
from atlas.web.auth import PRINCIPAL
from atlas.web.command_api import (
    CommandError,
    ParamError,
    action,
    bool_param,
    element,
    iso_time,
    str_param,
    sub,
)

CLIENT_TYPES = ("representative", "support_customer", "presentation_attendee", "push_agent")
MAX_IDS = 100
_ELEMENT = {
    ClientKind.REPRESENTATIVE: "connected_representative",
    ClientKind.SUPPORT_CUSTOMER: "connected_support_customer",
    ClientKind.PRESENTATION_ATTENDEE: "connected_presentation_attendee",
}
_PLATFORM_ID = re.compile(r"[^a-z0-9]+")


def parse_types(raw: str | None) -> frozenset[ClientKind]:
    """``type``: ``all`` or a comma-separated list (``push_agent`` is accepted; Atlas
    has none)."""
    if raw is None or raw.strip() == "" or raw.strip() == "all":
        return frozenset(ClientKind)
    kinds: set[ClientKind] = set()
    for part in raw.split(","):
        name = part.strip()
        if name == "all":
            return frozenset(ClientKind)
        if name not in CLIENT_TYPES:
            raise ParamError(f"parameter 'type' must be all or a comma-separated list of "
                             f"{', '.join(CLIENT_TYPES)}; got {name[:40]!r}")
        if name != "push_agent":
            kinds.add(ClientKind(name))
    return frozenset(kinds)


def parse_ids(raw: str | None) -> frozenset[str] | None:
    if raw is None or raw.strip() == "":
        return None
    ids = [p.strip() for p in raw.split(",") if p.strip()]
    if len(ids) > MAX_IDS:
        raise ParamError(f"parameter 'id' takes at most {MAX_IDS} ids")
    if any(not i.isascii() or not i.isdigit() for i in ids):
        raise ParamError("parameter 'id' must be client ids (numbers), comma-separated")
    return frozenset(ids)


def select(view: ConnectedView, kinds: frozenset[ClientKind],
           ids: frozenset[str] | None = None) -> list[ClientView]:
    return [c for c in view.clients
            if c.kind in kinds and (ids is None or c.client_id in ids)]


def _platform_id(platform: str) -> str:
    return _PLATFORM_ID.sub("-", platform.lower().split(" ", 1)[0]).strip("-")[:32] or "unknown"


def client_element(client: ClientView, *, include_connections: bool) -> ET.Element:
    el = element(_ELEMENT[client.kind], id=client.client_id)
    if include_connections:
        outer = sub(el, "client_connections")
        inner = sub(outer, "client_connections")
        for c in client.nodes():
            conn = sub(inner, "client_connection")
            sub(conn, "appliance_id", c.node_guid)
            sub(conn, "hostname", c.node_hostname)
            sub(conn, "role", c.role)
            sub(conn, "connected_since", iso_time(c.since), ts=int(c.since))
        log = sub(outer, "event_log")
        for c in sorted(client.connections, key=lambda c: c.since):
            sub(log, "event", c.detail, type="connected", appliance_id=c.node_guid,
                ts=int(c.since))
    sub(el, "hostname", client.hostname)
    sub(el, "platform", client.platform, id=_platform_id(client.platform))
    sub(el, "timezone_offset", client.timezone_offset_seconds)
    sub(el, "connected_since", iso_time(client.connected_since), ts=int(client.connected_since))
    return el


def connected_clients_element(view: ConnectedView, kinds: frozenset[ClientKind],
                              ids: frozenset[str] | None, include_connections: bool
                              ) -> ET.Element:
    root = element("connected_clients")
    for client in select(view, kinds, ids):
        root.append(client_element(client, include_connections=include_connections))
    return root


def summary_counts(view: ConnectedView, kinds: Iterable[ClientKind]
                   ) -> dict[str, dict[ClientKind, int]]:
    wanted = set(kinds)
    out: dict[str, dict[ClientKind, int]] = {}
    for guid, per_kind in view.counts.items():
        counts = {k: n for k, n in per_kind.items() if k in wanted and n}
        if counts:
            out[guid] = counts
    return out


def connected_client_list_element(view: ConnectedView, kinds: frozenset[ClientKind],
                                  summary_only: bool) -> ET.Element:
    root = element("connected_client_list")
    summary = sub(root, "connected_client_summary")
    for guid, counts in summary_counts(view, kinds).items():
        appliance = sub(summary, "appliance_summary", id=guid)
        for kind in ClientKind:
            if kind in counts:
                sub(appliance, "count", counts[kind], type=kind.value)
    if not summary_only:
        for client in select(view, kinds):
            sub(root, "connected_client", type=client.kind.value, id=client.client_id)
    return root


@action("get_connected_clients", Permission.COMMAND_READ,
        params=("type", "id", "include_connections"))
async def get_connected_clients(request: web.Request, params: Mapping[str, str]) -> ET.Element:
    """Details of connected clients (on a traffic node: those with a session connection
    to it)."""
    kinds = parse_types(str_param(params, "type", max_length=200))
    ids = parse_ids(str_param(params, "id", max_length=2000))
    include = bool_param(params, "include_connections")
    return connected_clients_element(connected_view(request.app), kinds, ids, include)


@action("get_connected_client_list", Permission.COMMAND_READ,
        params=("type", "summary_only"))
async def get_connected_client_list(request: web.Request,
                                    params: Mapping[str, str]) -> ET.Element:
    """A summary per node of connected clients and, unless ``summary_only``, their ids."""
    kinds = parse_types(str_param(params, "type", max_length=200))
    summary_only = bool_param(params, "summary_only")
    return connected_client_list_element(connected_view(request.app), kinds, summary_only)


@action("generate_session_key", Permission.COMMAND_FULL, params=("type", "queue_id", "ttl"))
async def generate_session_key(request: web.Request, params: Mapping[str, str]) -> ET.Element:
    """A single-use session key (7-digit ``short_key``) for a support session queued in
    ``queue_id`` (``general``, ``rep:ID``, ``rep_username:NAME``), valid ``ttl`` seconds."""
    str_param(params, "type", required=True, choices=("support",))
    queue_id = str_param(params, "queue_id", required=True, max_length=200)
    ttl = str_param(params, "ttl", max_length=20)
    node = request.config_dict[NODE]
    broker = request.app.get(BROKER)
    if broker is None or not is_master(node):
        raise CommandError("session keys are generated by the primary master; send this "
                           "request to the site hostname", 409)
    who = request[PRINCIPAL]
    try:
        reply = broker.issue_session_key(queue_id, ttl, created_by=f"api:{who.name}")
    except SessionKeyRequestError as exc:
        raise ParamError(f"parameter {exc.field!r}: {exc.message}") from None
    except SessionKeyStoreFull as exc:
        raise CommandError(str(exc), 503) from None
    root = element("session_key")
    sub(root, "short_key", reply.short_key)
    sub(root, "key_url", reply.key_url)
    sub(root, "expires", iso_time(reply.expires), ts=reply.expires)
    sub(root, "queue_id", reply.queue_id)
    return root



__all__ = [
    "client_element",
    "connected_client_list_element",
    "connected_clients_element",
    "generate_session_key",
    "get_connected_client_list",
    "get_connected_clients",
    "parse_ids",
    "parse_types",
]
