"""The cluster configuration document: everything an operator sets in /login.

One versioned document (design section 4): site settings, selection settings, every node.
The master stores it with a revision that increases on every change and pushes it whole
to every traffic node on Sync Now.

Field names follow the guide's words (Name, Public Address, Internal Address, Accepting
New Client Connections, Network Address Prefixes, Timezone Offset, Method for Choosing
Traffic Nodes, master fallback client limit).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class SelectionMethod(StrEnum):
    """Method for Choosing Traffic Nodes (guide p. 9) plus ``least_loaded`` (ours)."""

    RANDOM = "random"
    SRV = "srv"
    A_RECORD = "a_record"
    ANYCAST = "anycast"
    TIMEZONE = "timezone"
    LEAST_LOADED = "least_loaded"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Address(_Model):
    """A node address: canonical hostname and TCP port (guide: "Public Address")."""

    host: str
    port: int = 443

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class MasterNode(_Model):
    """The primary (or backup) master node (guide: Cluster :: Master Node Configuration)."""

    name: str
    guid: str | None = None
    public: Address
    internal: Address | None = None  # None: same as public


class TrafficNode(_Model):
    """One traffic node (guide: Cluster :: Add Traffic Node)."""

    name: str
    guid: str | None = None  # learned from the node at its first sync
    public: Address
    internal: Address | None = None  # None: same as public
    accepting: bool = True
    prefixes: tuple[str, ...] = ()  # normalised CIDR strings, e.g. "10.20.0.0/16"
    timezone: str = "+00:00"  # "+09:00" or an IANA zone name such as "Asia/Tokyo"
    capacity: int = Field(default=1000, ge=1)  # clients, for least_loaded (ours)
    region: str = ""  # free text, shown in tables


class SelectionSettings(_Model):
    method: SelectionMethod = SelectionMethod.RANDOM
    srv_name: str | None = None  # e.g. "_atlas._tcp.support.example.com"
    a_record_hostname: str | None = None  # e.g. "traffic.support.example.com"
    anycast_address: str | None = None  # an IP address (the only method that uses one)
    anycast_port: int = 443
    anycast_tls_name: str | None = None
    master_fallback_limit: int = Field(default=50, ge=0)


class HealthSettings(_Model):
    interval_seconds: float = Field(default=5.0, gt=0)
    timeout_seconds: float = Field(default=15.0, gt=0)


class ClusterConfig(_Model):
    """The whole document. ``revision`` is assigned by the store, never by an editor."""

    revision: int = 0
    site_hostname: str
    primary: MasterNode
    backup: MasterNode | None = None
    traffic_nodes: tuple[TrafficNode, ...] = ()
    selection: SelectionSettings = SelectionSettings()
    health: HealthSettings = HealthSettings()
