"""``/api/v1/node`` and ``/api/v1/health``: who this node is and whether it is well."""

from __future__ import annotations

import datetime as dt
import time

from pydantic import BaseModel, Field

from atlas.node.roles import Role, current_role
from atlas.node.runtime import Node
from atlas.web.api_v1.routing import ApiContext, api
from atlas.web.command_api import (
    FAILOVER_ROLE,
    LAST_DATA_SYNC_STATUS,
    LAST_DATA_SYNC_TIME,
)


class NodeInfo(BaseModel):
    guid: str = Field(description="Appliance GUID, unique in the cluster.")
    name: str = Field(description="Node name.")
    version: str = Field(description="Software version.")
    public_address: str = Field(description="Public address host:port (clients).")
    internal_address: str = Field(description="Internal address host:port (node-to-node).")
    role: Role = Field(description="Cluster role.")
    failover_role: str = Field(description="Failover role: none, primary or backup.")
    started_at: dt.datetime = Field(description="When this process started (UTC).")
    uptime_seconds: float = Field(description="Seconds since the process started.")


class DataSync(BaseModel):
    time: dt.datetime | None = Field(description="When the last data sync finished (UTC).")
    status: str | None = Field(description="How it ended.")


class Health(BaseModel):
    status: str = Field(description="'ok' while the node serves requests.")
    guid: str
    version: str
    role: Role
    failover_role: str
    uptime_seconds: float
    last_data_sync: DataSync | None = Field(
        description="The last cluster data sync, when there has been one."
    )


def _role(node: Node) -> Role:
    return current_role(node.db)


def _failover_role(node: Node) -> str:
    return node.db.get_setting(FAILOVER_ROLE, "none") or "none"


def _last_sync(node: Node) -> DataSync | None:
    raw_time = node.db.get_setting(LAST_DATA_SYNC_TIME)
    raw_status = node.db.get_setting(LAST_DATA_SYNC_STATUS)
    when: dt.datetime | None = None
    if raw_time:
        try:
            when = dt.datetime.fromtimestamp(float(raw_time), dt.UTC)
        except (ValueError, OverflowError, OSError):
            when = None
    if when is None and not raw_status:
        return None
    return DataSync(time=when, status=raw_status or None)


@api.route("GET", "/api/v1/node", summary="This node", response=NodeInfo, tags=["node"])
async def get_node(ctx: ApiContext) -> NodeInfo:
    """Identity, addresses, roles and uptime of the node that answers."""
    node = ctx.node
    ident = node.identity
    return NodeInfo(
        guid=ident.guid,
        name=ident.name,
        version=node.software_version,
        public_address=str(ident.public),
        internal_address=str(ident.internal),
        role=_role(node),
        failover_role=_failover_role(node),
        started_at=dt.datetime.fromtimestamp(node.started_at, dt.UTC),
        uptime_seconds=round(time.time() - node.started_at, 3),
    )


@api.route("GET", "/api/v1/health", summary="Health of this node", response=Health,
           tags=["node"])
async def get_health(ctx: ApiContext) -> Health:
    """Whether the node serves, with its roles and the last data sync."""
    node = ctx.node
    return Health(
        status="ok",
        guid=node.identity.guid,
        version=node.software_version,
        role=_role(node),
        failover_role=_failover_role(node),
        uptime_seconds=round(time.time() - node.started_at, 3),
        last_data_sync=_last_sync(node),
    )
