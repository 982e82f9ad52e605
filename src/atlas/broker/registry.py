"""The master's record of every online client, cluster-wide (DESIGN.md §2, §8).

Every online client holds its control connection to the primary master (guide, "Check
Connections": "all online clients always connect with the primary master node"); during
a session it also connects to traffic nodes — its own home traffic node, and the home
node of whoever publishes a stream it watches. The registry records, per client, what
``get_connected_clients`` reports (hostname, platform, timezone offset, connected since)
and each of its connections (node GUID, hostname, role, since), so the master can list
where every client is connected (``include_connections=1``) and count clients per node
(``get_connected_client_list summary_only=1``).

A client's **home traffic node** is sticky: once assigned it stays for the client's
online life, so every session it takes part in publishes on the same node. It changes
only by :meth:`ClientRegistry.replace_home_node`, which the broker calls when the old
home node went offline and the bounded retry window passed (DESIGN.md §2).

Pure data: no I/O, no clock (``now`` is passed in, seconds since the epoch), no locks —
the master's event loop owns it. Misuse (an unknown or duplicate client id) raises
:class:`RegistryError`: our bug, not the client's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum

from atlas.selection.client import ClientKind

__all__ = [
    "ClientConnection",
    "ClientKind",
    "ClientRegistry",
    "ConnectedClient",
    "ConnectionRole",
    "NodeInfo",
    "RegistryError",
]


class RegistryError(Exception):
    """The registry was asked something impossible (unknown or duplicate client id)."""


class ConnectionRole(StrEnum):
    """What a node is to the client on that connection (``client_connections``)."""

    PRIMARY = "primary"  # the control connection to the primary master
    TRAFFIC = "traffic"  # a session connection to a traffic node (or the master in fallback)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the registry names it."""

    guid: str
    name: str
    hostname: str


@dataclass(frozen=True, slots=True)
class ClientConnection:
    """One connection of a client to a node; ``connection_id`` is the adapter's own."""

    connection_id: str
    node: NodeInfo
    role: ConnectionRole
    since: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectedClient:
    """An online client, as ``get_connected_clients`` reports it."""

    client_id: str
    kind: ClientKind
    hostname: str
    platform: str
    utc_offset_minutes: int
    software_version: str
    source_ip: str
    connected_since: float
    home_node: NodeInfo | None = None
    home_node_since: float | None = None
    connections: tuple[ClientConnection, ...] = field(default=())

    @property
    def timezone_offset_seconds(self) -> int:
        """``<timezone_offset>``: seconds east of UTC."""
        return self.utc_offset_minutes * 60

    def connected_nodes(self) -> tuple[NodeInfo, ...]:
        """Each node the client is connected to, once, in order of first connection."""
        return tuple({c.node.guid: c.node for c in self.connections}.values())


class ClientRegistry:
    """Every online client of the cluster and where it is connected.

    ``master`` is the node this registry runs on: a client that comes online has its
    control connection to it (role ``primary``).
    """

    def __init__(self, master: NodeInfo) -> None:
        self.master = master
        self._clients: dict[str, ConnectedClient] = {}
        self._by_kind: dict[ClientKind, dict[str, None]] = {k: {} for k in ClientKind}
        # node GUID → client id → how many of the client's connections go to that node
        self._by_node: dict[str, dict[str, int]] = {}
        self._homed: dict[str, dict[str, None]] = {}  # home node GUID → client ids

    # --- clients ----------------------------------------------------------------------

    def client_online(
        self,
        *,
        client_id: str,
        kind: ClientKind,
        hostname: str,
        platform: str,
        utc_offset_minutes: int,
        software_version: str,
        source_ip: str,
        now: float,
        connection_id: str | None = None,
    ) -> ConnectedClient:
        """Record a client whose control connection to the master was just welcomed."""
        if client_id in self._clients:
            raise RegistryError(f"client {client_id} is already online")
        control = ClientConnection(
            connection_id=connection_id or f"control-{client_id}",
            node=self.master,
            role=ConnectionRole.PRIMARY,
            since=now,
        )
        client = ConnectedClient(
            client_id=client_id,
            kind=kind,
            hostname=hostname,
            platform=platform,
            utc_offset_minutes=utc_offset_minutes,
            software_version=software_version,
            source_ip=source_ip,
            connected_since=now,
            connections=(control,),
        )
        self._clients[client_id] = client
        self._by_kind[kind][client_id] = None
        self._count_connection(client_id, self.master.guid, +1)
        return client

    def client_offline(self, client_id: str) -> ConnectedClient:
        """Forget a client whose control connection closed; returns its last record (its
        home node is released with it)."""
        client = self._get(client_id)
        del self._clients[client_id]
        del self._by_kind[client.kind][client_id]
        for connection in client.connections:
            self._count_connection(client_id, connection.node.guid, -1)
        if client.home_node is not None:
            self._unhome(client_id, client.home_node.guid)
        return client

    def get(self, client_id: str) -> ConnectedClient | None:
        return self._clients.get(client_id)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._clients

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[ConnectedClient]:
        return iter(list(self._clients.values()))

    def clients(
        self,
        kinds: Iterable[ClientKind] | None = None,
        ids: Iterable[str] | None = None,
    ) -> list[ConnectedClient]:
        """Online clients of ``kinds`` (all if ``None``), restricted to ``ids`` if given
        (unknown ids are skipped: an id is valid only while its client is online); in
        order of coming online."""
        wanted = set(ClientKind) if kinds is None else set(kinds)
        if ids is None:
            return [c for c in self._clients.values() if c.kind in wanted]
        chosen = set(ids)
        return [c for c in self._clients.values() if c.client_id in chosen and c.kind in wanted]

    def count(self, kind: ClientKind | None = None) -> int:
        return len(self._clients) if kind is None else len(self._by_kind[kind])

    # --- home traffic nodes -------------------------------------------------------------

    def assign_home_node(self, client_id: str, node: NodeInfo, now: float) -> NodeInfo:
        """Make ``node`` the client's home traffic node unless it already has one; returns
        the home node it has now (sticky: the earlier one wins)."""
        client = self._get(client_id)
        if client.home_node is not None:
            return client.home_node
        self._set_home(client, node, now)
        return node

    def replace_home_node(self, client_id: str, node: NodeInfo, now: float) -> NodeInfo:
        """Move the client to another home node (its old one went offline)."""
        client = self._get(client_id)
        if client.home_node is not None:
            if client.home_node.guid == node.guid:
                return client.home_node
            self._unhome(client_id, client.home_node.guid)
        self._set_home(client, node, now)
        return node

    def home_node(self, client_id: str) -> NodeInfo | None:
        return self._get(client_id).home_node

    def clients_homed_on(self, node_guid: str) -> list[ConnectedClient]:
        return [self._clients[i] for i in self._homed.get(node_guid, {})]

    def home_counts(self) -> dict[str, int]:
        """Clients per home node GUID (the load the ``least_loaded`` method weighs)."""
        return {guid: len(ids) for guid, ids in self._homed.items()}

    # --- connections --------------------------------------------------------------------

    def connection_opened(
        self,
        client_id: str,
        connection_id: str,
        node: NodeInfo,
        now: float,
        role: ConnectionRole = ConnectionRole.TRAFFIC,
    ) -> ConnectedClient:
        """Record a connection of the client to ``node`` (a traffic node's report)."""
        client = self._get(client_id)
        if any(c.connection_id == connection_id for c in client.connections):
            raise RegistryError(f"connection {connection_id} of client {client_id} is known")
        connection = ClientConnection(connection_id, node, role, now)
        updated = replace(client, connections=(*client.connections, connection))
        self._clients[client_id] = updated
        self._count_connection(client_id, node.guid, +1)
        return updated

    def connection_closed(self, client_id: str, connection_id: str) -> ConnectedClient | None:
        """Forget one connection; ``None`` if the client or connection is already gone
        (reports from traffic nodes may arrive after the client went offline)."""
        client = self._clients.get(client_id)
        if client is None:
            return None
        kept = tuple(c for c in client.connections if c.connection_id != connection_id)
        if len(kept) == len(client.connections):
            return None
        gone = next(c for c in client.connections if c.connection_id == connection_id)
        updated = replace(client, connections=kept)
        self._clients[client_id] = updated
        self._count_connection(client_id, gone.node.guid, -1)
        return updated

    def node_offline(self, node_guid: str) -> list[ConnectedClient]:
        """A traffic node went offline: drop every connection to it and return the
        clients that had one (their sessions end: "restart the session"). Home nodes
        stay, since the restart first tries the same node (guide, "Check
        Connections")."""
        if node_guid == self.master.guid:
            raise RegistryError("the master's own connections end with each client")
        affected: list[ConnectedClient] = []
        for client_id in list(self._by_node.get(node_guid, {})):
            client = self._clients[client_id]
            kept = tuple(c for c in client.connections if c.node.guid != node_guid)
            updated = replace(client, connections=kept)
            self._clients[client_id] = updated
            affected.append(updated)
        self._by_node.pop(node_guid, None)
        return affected

    def connected_to(
        self, node_guid: str, kinds: Iterable[ClientKind] | None = None
    ) -> list[ConnectedClient]:
        """Clients with at least one connection to the node."""
        wanted = set(ClientKind) if kinds is None else set(kinds)
        return [
            c
            for c in (self._clients[i] for i in self._by_node.get(node_guid, {}))
            if c.kind in wanted
        ]

    def counts_by_node(
        self, kinds: Iterable[ClientKind] | None = None
    ) -> dict[str, dict[ClientKind, int]]:
        """Per node GUID, how many clients of each kind are connected to it (every
        online client counts on the master). Nodes without clients are absent, as are
        kinds with none."""
        wanted = set(ClientKind) if kinds is None else set(kinds)
        counts: dict[str, dict[ClientKind, int]] = {}
        for guid, client_ids in self._by_node.items():
            per_kind: dict[ClientKind, int] = {}
            for client_id in client_ids:
                kind = self._clients[client_id].kind
                if kind in wanted:
                    per_kind[kind] = per_kind.get(kind, 0) + 1
            if per_kind:
                counts[guid] = {k: per_kind[k] for k in ClientKind if k in per_kind}
        return counts

    # --- internals ----------------------------------------------------------------------

    def _get(self, client_id: str) -> ConnectedClient:
        client = self._clients.get(client_id)
        if client is None:
            raise RegistryError(f"client {client_id} is not online")
        return client

    def _set_home(self, client: ConnectedClient, node: NodeInfo, now: float) -> None:
        self._clients[client.client_id] = replace(client, home_node=node, home_node_since=now)
        self._homed.setdefault(node.guid, {})[client.client_id] = None

    def _unhome(self, client_id: str, node_guid: str) -> None:
        homed = self._homed.get(node_guid)
        if homed is not None:
            homed.pop(client_id, None)
            if not homed:
                del self._homed[node_guid]

    def _count_connection(self, client_id: str, node_guid: str, delta: int) -> None:
        per_client = self._by_node.setdefault(node_guid, {})
        count = per_client.get(client_id, 0) + delta
        if count > 0:
            per_client[client_id] = count
        else:
            per_client.pop(client_id, None)
            if not per_client:
                del self._by_node[node_guid]
