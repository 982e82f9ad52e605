"""Cluster operations: what /login → Management → Cluster, ``/api/v1`` and
``atlas cluster`` call (guide: "Cluster :: Status").

* :func:`create_cluster` — make this standalone node the primary master of a new cluster.
* :func:`sync_now` — Sync Now (:mod:`atlas.node.sync`).
* :func:`set_accepting` — the Accepting New Client Connections checkbox, at once.
* :func:`disable_cluster` — Disable Cluster on the primary.
* :func:`leave_cluster` — on a traffic node the master could not notify: remove it from
  the cluster by hand (guide: "log in to the traffic node and remove the traffic node
  from the cluster manually").
* :func:`status` — Current Status, sync needed, and every traffic node's state.

Errors for the caller to map: :class:`~atlas.node.roles.WrongRole` (409),
:class:`~atlas.store.config_store.StaleRevision` (409),
:class:`~atlas.node.sync.SyncInProgress` (409), :class:`UnknownTrafficNode` (404),
:class:`pydantic.ValidationError` (422), :class:`~atlas.node.peers.NoPreSharedKey` (409).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from atlas.model.config import (
    ClusterConfig,
    HealthSettings,
    SelectionSettings,
    TrafficNode,
)
from atlas.node import roles
from atlas.node.health_monitor import TrafficNodeHealth, monitor_for
from atlas.node.internal_api import PREFIX
from atlas.node.peers import NoPreSharedKey, PeerClient, PeerError
from atlas.node.roles import MasterIdentity, Role, RoleEvent
from atlas.node.runtime import Node
from atlas.node.sync import (
    ProgressCallback,
    SyncInProgress,
    SyncReport,
    SyncStatus,
    node_label,
    sync_status,
)
from atlas.node.sync import sync_now as _sync_now
from atlas.store import config_store, history
from atlas.store.config_store import NodeStatus
from atlas.store.db import Database

NOTIFY_TIMEOUT = 10.0


class UnknownTrafficNode(LookupError):
    """No traffic node of that name in the cluster configuration (REST: 404)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"the cluster has no traffic node named {name!r}")


def _forget_and(db: Database, then: Callable[[], object]) -> None:
    """Forget what the master knew of traffic nodes (a new or no cluster), then ``then``."""
    config_store.forget_node_statuses(db)
    then()


# --- Create New Cluster ---------------------------------------------------------------


def create_cluster(
    node: Node,
    site_hostname: str,
    *,
    primary_name: str | None = None,
    public: str | None = None,
    internal: str | None = None,
    traffic_nodes: Sequence[TrafficNode | Mapping[str, Any]] = (),
    selection: SelectionSettings | Mapping[str, Any] | None = None,
    health: HealthSettings | Mapping[str, Any] | None = None,
    author: str = "admin",
) -> ClusterConfig:
    """Make this standalone node the primary master of a new cluster (revision saved).

    The primary master entry is this node: its GUID, its name (or ``primary_name``),
    its public and internal addresses (or the ones given as ``host:port``). Raises
    ``pydantic.ValidationError`` for bad settings and :class:`roles.WrongRole` unless
    the node is standalone.
    """
    db = node.db
    roles.require_role(db, "Create New Cluster", Role.STANDALONE)
    ident = node.identity
    primary: dict[str, Any] = {
        "name": primary_name or ident.name,
        "guid": ident.guid,
        "public": public or str(ident.public),
    }
    internal_text = internal or str(ident.internal)
    if internal_text != primary["public"]:
        primary["internal"] = internal_text
    document: dict[str, Any] = {
        "site_hostname": site_hostname,
        "primary": primary,
        "traffic_nodes": list(traffic_nodes),
    }
    if selection is not None:
        document["selection"] = selection
    if health is not None:
        document["health"] = health
    config = ClusterConfig.model_validate(document)
    master = MasterIdentity(
        site_hostname=config.site_hostname, name=config.primary.name, guid=ident.guid,
        internal=str(config.primary.internal_address()),
    )
    saved = config_store.save(
        db, config, expected_revision=config_store.current_revision(db), author=author,
        then=lambda: _forget_and(
            db, lambda: roles.transition(db, RoleEvent.CREATE_CLUSTER, master=master)
        ),
    )
    history.record(
        db, f"Cluster: Created cluster {saved.site_hostname} with this node "
        f"({saved.primary.name}) as primary master node.",
    )
    return saved


# --- Sync Now -------------------------------------------------------------------------


async def sync_now(
    node: Node, *, on_progress: ProgressCallback | None = None, timeout: float = 30.0
) -> SyncReport:
    """Sync Now (see :func:`atlas.node.sync.sync_now`)."""
    return await _sync_now(node, on_progress=on_progress, timeout=timeout)


# --- Accepting New Client Connections -------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcceptingResult:
    name: str
    accepting: bool
    revision: int  # the configuration revision holding the flag
    changed: bool  # a new revision was saved (False: the flag already had this value)
    confirmed: bool  # the traffic node applied it at once
    sessions_left: int | None  # sessions still running on the node (when confirmed)
    reason: str | None = None  # why it was not confirmed
    message: str | None = None


def _traffic_node(config: ClusterConfig, name: str) -> TrafficNode:
    found = config.node_by_name(name)
    if not isinstance(found, TrafficNode):
        raise UnknownTrafficNode(name)
    return found


async def set_accepting(
    node: Node, name: str, accepting: bool, *, author: str = "admin",
    timeout: float = NOTIFY_TIMEOUT,
) -> AcceptingResult:
    """Set a traffic node's Accepting New Client Connections flag and tell it at once.

    The flag is saved as a new revision of kind ``accepting``: it needs no full data
    sync once the node confirmed it (see :mod:`atlas.store.config_store`); if the node
    cannot be told, "sync needed" stays raised for it and the next sync carries it.
    """
    db = node.db
    roles.require_role(db, "Setting Accepting New Client Connections", Role.PRIMARY)
    config = config_store.load(db)
    if config is None:
        raise roles.WrongRole(Role.STANDALONE, "Accepting", "a cluster configuration")
    target = _traffic_node(config, name)
    changed = target.accepting != accepting
    if changed:
        nodes = tuple(
            n.model_copy(update={"accepting": accepting}) if n.name == target.name else n
            for n in config.traffic_nodes
        )
        config = config_store.save(
            db, config.model_copy(update={"traffic_nodes": nodes}),
            expected_revision=config.revision, author=author,
        )
    label = node_label(target)
    what = "accept" if accepting else "stop accepting"
    try:
        async with PeerClient(node, timeout=timeout) as peers:
            answer = await peers.call(
                target.internal_address(), "POST", f"{PREFIX}/accepting",
                {"accepting": accepting, "revision": config.revision},
                peer=target.name,
            )
    except (PeerError, NoPreSharedKey) as exc:
        reason = exc.reason if isinstance(exc, PeerError) else "psk_not_set"
        detail = exc.detail if isinstance(exc, PeerError) else str(exc)
        message = (
            f"Cluster: could not tell {label} to {what} new client connections "
            f"({reason}: {detail}); it gets the change at the next data sync."
        )
        history.record(db, message, history.FAILED)
        return AcceptingResult(target.name, accepting, config.revision, changed, False, None,
                               reason, message)
    sessions_left = answer.get("sessions_left")
    left = sessions_left if isinstance(sessions_left, int) else None
    config_store.record_accepting_ack(db, target.name, config.revision)
    if accepting:
        message = f"Cluster: {label} is accepting new client connections."
    else:
        message = (
            f"Cluster: {label} is no longer accepting new client connections "
            f"({left if left is not None else '?'} sessions left)."
        )
    history.record(db, message)
    return AcceptingResult(target.name, accepting, config.revision, changed, True, left)


# --- Disable Cluster ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotifyResult:
    name: str
    address: str
    notified: bool
    reason: str | None = None
    message: str | None = None  # the status history row


@dataclass(frozen=True, slots=True)
class DisableReport:
    results: tuple[NotifyResult, ...]

    @property
    def unreachable(self) -> tuple[NotifyResult, ...]:
        """Nodes to remove from the cluster by hand."""
        return tuple(r for r in self.results if not r.notified)

    @property
    def ok(self) -> bool:
        return not self.unreachable


async def disable_cluster(
    node: Node, *, timeout: float = NOTIFY_TIMEOUT, author: str = "admin"
) -> DisableReport:
    """Disable Cluster (guide): notify every traffic node concurrently, record each
    result, then return this node to standalone and clear the document (its revisions
    stay as history). A node that could not be notified is named in the status history
    with what to do."""
    db = node.db
    roles.require_role(db, "Disable Cluster", Role.PRIMARY)
    config = config_store.load(db)
    targets = config.traffic_nodes if config is not None else ()
    history.record(db, "Disable Cluster: Notifying traffic nodes that they are no longer "
                       "in a cluster.")

    def failed(target: TrafficNode, reason: str, detail: str) -> NotifyResult:
        label = node_label(target)
        message = (
            f"Disable Cluster: could not notify {label} ({reason}: {detail}); log in to it "
            "and remove it from the cluster manually."
        )
        history.record(db, message, history.FAILED)
        return NotifyResult(target.name, str(target.internal_address()), False, reason,
                            message)

    async def notify(peers: PeerClient, target: TrafficNode) -> NotifyResult:
        try:
            await peers.call(target.internal_address(), "POST", f"{PREFIX}/disable", {},
                             peer=target.name)
        except PeerError as exc:
            return failed(target, exc.reason, exc.detail)
        label = node_label(target)
        message = f"Disable Cluster: Notified {label}; it is no longer in a cluster."
        history.record(db, message)
        return NotifyResult(target.name, str(target.internal_address()), True, None, message)

    try:
        async with PeerClient(node, timeout=timeout) as peers:
            results = await asyncio.gather(*(notify(peers, t) for t in targets))
    except NoPreSharedKey as exc:
        results = [failed(t, "psk_not_set", str(exc)) for t in targets]
    config_store.clear(
        db, then=lambda: _forget_and(
            db, lambda: roles.transition(db, RoleEvent.DISABLE_CLUSTER)
        ),
    )
    report = DisableReport(tuple(results))
    notified = len(results) - len(report.unreachable)
    history.record(
        db,
        f"Disable Cluster: This node is no longer in a cluster ({notified} of "
        f"{len(results)} traffic nodes notified; by {author}).",
        history.OK if report.ok else history.FAILED,
    )
    return report


def leave_cluster(node: Node, *, author: str = "admin") -> None:
    """On a traffic node: leave the cluster by hand (its master could not notify it)."""
    db = node.db
    roles.require_role(db, "Remove this node from the cluster", Role.TRAFFIC)
    master = roles.master_identity(db)
    config_store.clear(db, then=lambda: roles.transition(db, RoleEvent.LEAVE_CLUSTER))
    whose = f" of {master.name} ({master.site_hostname})" if master else ""
    history.record(db, f"Cluster: {author} removed this node from the cluster{whose}.")


# --- Current Status -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrafficNodeStatus:
    name: str
    public: str
    internal: str
    region: str
    accepting: bool  # as configured on the master
    needs_sync: bool
    sync: NodeStatus | None  # what data syncs learned (ack, GUID, version, last error)
    health: TrafficNodeHealth | None  # the health monitor's view (None: not checked yet)


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    role: Role
    description: str  # the guide's "Current Status" sentence
    site_hostname: str | None
    master: MasterIdentity | None
    revision: int
    sync_needed: bool
    nodes: tuple[TrafficNodeStatus, ...]
    sync: SyncStatus
    member_name: str | None  # on a traffic node: its name in the master's configuration


def _describe(role: Role, master: MasterIdentity | None) -> str:
    if role is Role.PRIMARY:
        return (
            "This site instance is the primary master node in the cluster. The cluster "
            "configuration for the primary master node, backup master node, and traffic "
            "nodes can be configured below."
        )
    if role is Role.TRAFFIC and master is not None:
        return (
            f"This site instance is a traffic node in the cluster of {master.site_hostname}, "
            f"managed by the primary master node {master.name} ({master.internal})."
        )
    if role is Role.BACKUP:
        return "This site instance is the backup master node in the cluster."
    return "This site instance is not in a cluster."


def status(node: Node) -> ClusterStatus:
    """Current Status for the cluster page, the REST API and ``atlas cluster status``."""
    db = node.db
    role = roles.current_role(db)
    master = roles.master_identity(db)
    config = config_store.load(db)
    nodes: tuple[TrafficNodeStatus, ...] = ()
    needing: list[str] = []
    if role is Role.PRIMARY and config is not None:
        needing = config_store.nodes_needing_sync(db)
        statuses = config_store.node_statuses(db)
        health = monitor_for(node).details()
        nodes = tuple(
            TrafficNodeStatus(
                name=t.name, public=str(t.public), internal=str(t.internal_address()),
                region=t.region, accepting=t.accepting, needs_sync=t.name in needing,
                sync=statuses.get(t.name), health=health.get(t.name),
            )
            for t in config.traffic_nodes
        )
    return ClusterStatus(
        role=role,
        description=_describe(role, master),
        site_hostname=config.site_hostname if config is not None else None,
        master=master,
        revision=config.revision if config is not None else 0,
        sync_needed=bool(needing),
        nodes=nodes,
        sync=sync_status(node),
        member_name=roles.member_name(db),
    )


__all__ = [
    "AcceptingResult",
    "ClusterStatus",
    "DisableReport",
    "NotifyResult",
    "SyncInProgress",
    "TrafficNodeStatus",
    "UnknownTrafficNode",
    "create_cluster",
    "disable_cluster",
    "leave_cluster",
    "set_accepting",
    "status",
    "sync_now",
]
