"""The bodies, queries and answers of ``/api/v1/cluster`` (see :mod:`.cluster`).

Bodies reuse the configuration model (:mod:`atlas.model.config`) wherever the API takes a
piece of the document, so the API, the TOML file and the /login forms validate alike.
The CLI (:mod:`atlas.net.api_client`) parses answers with these same models.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from atlas.model.config import (
    Address,
    ClusterConfig,
    HealthSettings,
    MasterNode,
    SelectionSettings,
    TrafficNode,
)
from atlas.model.timezones import MAX_OFFSET_MINUTES, MIN_OFFSET_MINUTES, parse_offset
from atlas.node.roles import Role
from atlas.selection.client import ClientKind


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- bodies ------------------------------------------------------------------------------


class PrimaryIn(_In):
    """The primary master node at Create New Cluster; anything left out is taken from
    this node's own identity (its name and addresses)."""

    name: str | None = Field(default=None, description="Node name (default: this node's).")
    public: Address | None = Field(
        default=None, description="Public address host:port (default: this node's)."
    )
    internal: Address | None = Field(
        default=None, description="Internal address host:port (default: this node's)."
    )


class CreateClusterIn(_In):
    """Create New Cluster (guide: "Configure the Primary Master Node")."""

    site_hostname: str = Field(description="The support site hostname, e.g. support.example.com.")
    primary: PrimaryIn = Field(default_factory=PrimaryIn,
                               description="This node as the primary master node.")
    backup: MasterNode | None = Field(default=None, description="A backup master node.")
    traffic_nodes: list[TrafficNode] = Field(default_factory=list,
                                             description="Traffic nodes to start with.")
    selection: SelectionSettings | None = None
    health: HealthSettings | None = None


class PrimaryUpdateIn(_In):
    """Update Primary Node: its name and addresses (its GUID is this node's)."""

    name: str = Field(description="Node name, unique among all nodes.")
    public: Address = Field(description="Public address host:port (clients).")
    internal: Address | None = Field(
        default=None, description="Internal address host:port (node-to-node); null: public."
    )


class AcceptingIn(_In):
    accepting: StrictBool = Field(description="Accepting New Client Connections.")


# --- paths and queries -------------------------------------------------------------------


class TrafficNodePath(BaseModel):
    name: str = Field(description="The traffic node's name (ignoring case).")


class LimitQuery(_In):
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


_MINUTES = re.compile(r"[+-]?[0-9]{1,4}")


def parse_client_offset(text: str) -> int:
    """A client's UTC offset for the route dry run: ``+09:00`` (any form the Timezone
    Offset takes, e.g. ``UTC+9``) or whole minutes east of UTC (``540``, ``-330``): a
    bare number is always minutes."""
    value = text.strip()
    if _MINUTES.fullmatch(value):
        minutes = int(value)
        if not MIN_OFFSET_MINUTES <= minutes <= MAX_OFFSET_MINUTES:
            raise ValueError(
                f"{minutes} minutes is out of range: expected minutes from "
                f"{MIN_OFFSET_MINUTES} to {MAX_OFFSET_MINUTES}, or an offset such as +09:00"
            )
        return minutes
    try:
        minutes_or_none = parse_offset(value)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if minutes_or_none is None:
        raise ValueError(
            f"{value[:40]!r} is not a UTC offset: expected +09:00, -05:30 or minutes "
            "east of UTC such as 540"
        )
    return minutes_or_none


class RouteQuery(_In):
    """A hypothetical client for the route dry run."""

    ip: str = Field(description="The client's IP address as the master would see it.")
    tz: str | None = Field(
        default=None,
        description="The client's UTC offset: +09:00 or minutes east of UTC (540). "
        "Leave out for a client that reports none.",
    )
    kind: ClientKind = Field(default=ClientKind.SUPPORT_CUSTOMER, description="Client kind.")

    @field_validator("ip")
    @classmethod
    def _check_ip(cls, value: str) -> str:
        text = value.strip()
        try:
            ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            raise ValueError(
                f"{text[:60]!r} is not an IP address: expected e.g. 10.20.1.5 or 2001:db8::5"
            ) from None
        return text

    @field_validator("tz")
    @classmethod
    def _check_tz(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_client_offset(value)
        return value.strip()

    def offset_minutes(self) -> int | None:
        return None if self.tz is None else parse_client_offset(self.tz)


# --- answers -----------------------------------------------------------------------------


class MasterOut(BaseModel):
    site_hostname: str
    name: str
    guid: str
    internal: str = Field(description="The master's internal address host:port.")


class NodeLoadOut(BaseModel):
    connected_clients: int
    active_sessions: int
    cpu_percent: float


class NodeHealthOut(BaseModel):
    """The health monitor's last view of a traffic node."""

    online: bool
    last_seen: dt.datetime | None = Field(description="Last successful health check (UTC).")
    last_check: dt.datetime | None = Field(description="Last health check attempt (UTC).")
    version: str | None = Field(description="Software version the node reports.")
    revision: int | None = Field(description="Configuration revision the node holds.")
    role: str | None
    in_this_cluster: bool
    accepting: bool | None = Field(description="The accepting flag the node itself holds.")
    load: NodeLoadOut | None
    error_reason: str | None
    error: str | None


class NodeSyncOut(BaseModel):
    """What data syncs learned about a traffic node."""

    guid: str | None
    reported_name: str | None
    version: str | None
    acknowledged_revision: int = Field(description="Last revision applied in a full sync.")
    accepting_revision: int = Field(description="Last accepting-only revision confirmed.")
    last_sync_at: dt.datetime | None
    last_sync_status: int | None = Field(description="0 ok, otherwise failed.")
    last_error_reason: str | None
    last_error: str | None


class TrafficNodeStatusOut(BaseModel):
    name: str
    guid: str | None = Field(description="Appliance GUID (configured, or learned at sync).")
    public: str
    internal: str
    region: str
    accepting: bool = Field(description="Accepting New Client Connections, as configured.")
    capacity: int
    state: str = Field(
        description="'viable', or why the node cannot be chosen: not accepting, offline, "
        "software mismatch, not synced."
    )
    online: bool
    last_seen: dt.datetime | None
    version: str | None
    acknowledged_revision: int
    needs_sync: bool
    load: NodeLoadOut | None
    sessions_left: int | None = Field(
        description="Sessions still running on a node that is not accepting (draining)."
    )
    sync: NodeSyncOut | None
    health: NodeHealthOut | None


class SyncProgressOut(BaseModel):
    node: str
    address: str
    state: str = Field(description="pending, started, finished or failed.")
    done: int
    total: int
    reason: str | None = None
    message: str | None = None


class SyncStatusOut(BaseModel):
    """The running (or last) data sync, node by node, for polling."""

    running: bool
    revision: int
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    done: int
    total: int
    nodes: list[SyncProgressOut]


class ThisNodeOut(BaseModel):
    guid: str
    name: str
    version: str
    public: str


class ClusterOut(BaseModel):
    """Cluster :: Status and the configuration document."""

    role: Role
    description: str = Field(description="The guide's Current Status sentence.")
    this_node: ThisNodeOut
    site_hostname: str | None
    revision: int = Field(description="Current configuration revision (0: no cluster).")
    sync_needed: bool
    master: MasterOut | None = Field(description="The master this node follows (or is).")
    member_name: str | None = Field(
        description="On a traffic node: its name in the master's configuration."
    )
    document: ClusterConfig | None = Field(description="The configuration document.")
    traffic_nodes: list[TrafficNodeStatusOut] = Field(
        description="Every traffic node's state (on the primary master)."
    )
    sync: SyncStatusOut


class ChangeOut(BaseModel):
    """The document after a change."""

    revision: int
    changed: bool = Field(description="False when the request changed nothing (no revision).")
    sync_needed: bool
    document: ClusterConfig | None


class AcceptingOut(BaseModel):
    name: str
    accepting: bool
    revision: int
    changed: bool = Field(description="A new revision was saved.")
    confirmed: bool = Field(description="The traffic node applied the flag at once.")
    sessions_left: int | None = Field(description="Sessions still running on the node.")
    reason: str | None = Field(description="Why the node did not confirm.")
    message: str | None


class NodeSyncResultOut(BaseModel):
    name: str
    address: str
    ok: bool
    seconds: float
    revision: int | None
    guid: str | None
    reported_name: str | None
    version: str | None
    reason: str | None
    message: str | None


class SyncReportOut(BaseModel):
    revision: int
    started_at: dt.datetime
    finished_at: dt.datetime
    ok: bool
    summary: str
    results: list[NodeSyncResultOut]


class NotifyResultOut(BaseModel):
    name: str
    address: str
    notified: bool
    reason: str | None
    message: str | None


class DisableReportOut(BaseModel):
    ok: bool = Field(description="Every traffic node was notified.")
    results: list[NotifyResultOut]
    unreachable: list[str] = Field(description="Nodes to remove from the cluster by hand.")


class HistoryRowOut(BaseModel):
    id: int
    time: dt.datetime
    status: int = Field(description="0 success, otherwise failure.")
    message: str


class HistoryOut(BaseModel):
    rows: list[HistoryRowOut] = Field(description="Newest first.")


class RevisionOut(BaseModel):
    revision: int
    kind: str = Field(description="edit, accepting or synced.")
    subject: str | None = Field(description="The traffic node of an accepting revision.")
    author: str
    created_at: dt.datetime
    current: bool


class RevisionsOut(BaseModel):
    current: int
    revisions: list[RevisionOut] = Field(description="Newest first.")


class PrefixMatchOut(BaseModel):
    prefix: str
    nodes: list[str] = Field(description="Tied viable nodes before the random draw.")
    matches: int
    skipped: list[str]


class ClientOut(BaseModel):
    ip: str
    utc_offset_minutes: int | None
    kind: ClientKind


class RouteOut(BaseModel):
    """Identify the Expected Node (guide, "Perform a … Cluster Test"): what the master
    would decide for this client now, and why."""

    client: ClientOut
    outcome: str = Field(description="node, a_record, srv, anycast or fallback_wanted.")
    rule: str = Field(description="The rule that decided: prefix, random, timezone, …")
    reason: str
    node: str | None = Field(description="The chosen traffic node, for outcome 'node'.")
    decision: dict[str, str | int | float | bool | None] = Field(
        description="The whole decision (Decision.to_dict())."
    )
    viable: list[str]
    not_viable: dict[str, str] = Field(description="Node → why it cannot be chosen.")
    prefix_match: PrefixMatchOut | None


__all__ = [
    "AcceptingIn",
    "AcceptingOut",
    "ChangeOut",
    "ClusterOut",
    "CreateClusterIn",
    "DisableReportOut",
    "HistoryOut",
    "LimitQuery",
    "PrimaryUpdateIn",
    "RevisionsOut",
    "RouteOut",
    "RouteQuery",
    "SyncReportOut",
    "SyncStatusOut",
    "TrafficNodePath",
    "parse_client_offset",
]
