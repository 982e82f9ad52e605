"""Command API actions about the cluster (design section 8).

``get_appliances`` answers in the shape of the public BeyondTrust Command API: every
configured appliance of the cluster (or this node alone when it is in none)::

    <appliances xmlns="https://www.beyondtrust.com/namespaces/API/command">
      <appliance id="5ba00afaa07a4090b0e2d07edc6fe1bf">
        <name>master1</name>
        <public_hostname>master1.support.example.com</public_hostname>
        <cluster_role>primary</cluster_role>        <!-- single | primary | traffic -->
        <failover_role>none</failover_role>         <!-- none | primary | backup -->
        <accepting_connections>1</accepting_connections>
        <timezone_offset>32400</timezone_offset>    <!-- seconds east of UTC -->
      </appliance>
      …
    </appliances>

BeyondTrust: ``accepting_connections`` "If not part of a cluster, this will always be 1";
masters always accept (clients always connect to the master). ``timezone_offset`` of a
traffic node is its Timezone Offset now (an IANA zone follows DST); masters have no such
setting, so the answering node gives its host's offset for itself and 0 for other
masters. A traffic node's GUID is the configured one or, on the primary, the one it
reported at its last data sync; ``id`` is empty for a node never heard from.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from aiohttp import web

from atlas.model.config import ClusterConfig, MasterNode, TrafficNode
from atlas.model.timezones import TimezoneError, offset_minutes
from atlas.node.app import NODE
from atlas.node.roles import Role, current_role, member_name
from atlas.node.runtime import Node
from atlas.store import config_store
from atlas.store.api_accounts import Permission
from atlas.web.command_api import FAILOVER_ROLE, action, element, sub

ROOT = "appliances"


def _local_offset_seconds(now: dt.datetime) -> int:
    offset = now.astimezone().utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def _appliance(
    root: ET.Element, *, guid: str, name: str, hostname: str, cluster_role: str,
    failover_role: str, accepting: bool, offset_seconds: int,
) -> None:
    el = sub(root, "appliance", id=guid)
    sub(el, "name", name)
    sub(el, "public_hostname", hostname)
    sub(el, "cluster_role", cluster_role)
    sub(el, "failover_role", failover_role)
    sub(el, "accepting_connections", 1 if accepting else 0)
    sub(el, "timezone_offset", offset_seconds)


def _traffic_offset(node: TrafficNode, now: dt.datetime) -> int:
    try:
        return offset_minutes(node.timezone, now) * 60
    except TimezoneError:  # validated in the model; never fail the whole answer
        return 0


def appliances(node: Node, now: dt.datetime | None = None) -> ET.Element:
    """The ``<appliances>`` answer for ``node`` at ``now``."""
    at = now or dt.datetime.now(dt.UTC)
    db = node.db
    root = element(ROOT)
    own_guid = node.identity.guid
    own_failover = db.get_setting(FAILOVER_ROLE, "none") or "none"
    role = current_role(db)
    config: ClusterConfig | None = None
    if role is not Role.STANDALONE:
        config = config_store.load(db)
    if config is None:
        _appliance(root, guid=own_guid, name=node.identity.name,
                   hostname=node.identity.public.host, cluster_role="single",
                   failover_role=own_failover, accepting=True,
                   offset_seconds=_local_offset_seconds(at))
        return root

    def master(entry: MasterNode, failover: str) -> None:
        is_self = entry.guid == own_guid
        _appliance(root, guid=entry.guid or "", name=entry.name, hostname=entry.public.host,
                   cluster_role="primary",
                   failover_role=own_failover if is_self and own_failover != "none"
                   else failover,
                   accepting=True,
                   offset_seconds=_local_offset_seconds(at) if is_self else 0)

    master(config.primary, "primary" if config.backup is not None else "none")
    if config.backup is not None:
        master(config.backup, "backup")
    learned = config_store.node_statuses(db) if role is Role.PRIMARY else {}
    me = member_name(db) if role is Role.TRAFFIC else None
    for t in config.traffic_nodes:
        status = learned.get(t.name)
        guid = t.guid or (status.guid if status is not None else None)
        if me is not None and t.name == me:
            guid = own_guid
        _appliance(root, guid=guid or "", name=t.name, hostname=t.public.host,
                   cluster_role="traffic", failover_role="none", accepting=t.accepting,
                   offset_seconds=_traffic_offset(t, at))
    return root


@action("get_appliances", Permission.COMMAND_READ)
async def get_appliances(request: web.Request, params: Mapping[str, str]) -> ET.Element:
    """Every appliance of the cluster, as BeyondTrust's ``get_appliances``."""
    return appliances(request.config_dict[NODE])


__all__ = ["appliances", "get_appliances"]
