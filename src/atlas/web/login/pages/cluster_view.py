"""What /login → Management → Cluster shows: table rows, status badges, sync progress.

Pure: built from :func:`atlas.node.cluster.status` and the configuration document, so
the rows can be tested without a server. Every text here is plain text; the template
escapes it and ``cluster.js`` only ever sets ``textContent``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from atlas.model.config import ClusterConfig, TrafficNode
from atlas.node.cluster import ClusterStatus, TrafficNodeStatus
from atlas.node.roles import MasterIdentity
from atlas.node.sync import NodeSyncState, SyncStatus
from atlas.store.history import HistoryRow
from atlas.web.rendering import format_time

PATH = "/login/management/cluster"
NODE_PATH = PATH + "/node"
REMOVE_PATH = PATH + "/node/remove"


@dataclass(frozen=True)
class Badge:
    """One piece of a traffic node's status: ``kind`` is ok, warn, bad or off."""

    text: str
    kind: str
    title: str = ""


@dataclass(frozen=True)
class NodeRow:
    """One row of the Cluster :: Traffic Nodes table."""

    name: str
    guid: str
    public: str
    internal: str
    region: str
    accepting: bool
    needs_sync: bool
    draining_sessions: int | None  # not accepting and sessions remain
    badges: tuple[Badge, ...]
    edit_href: str
    remove_href: str


def node_href(path: str, name: str) -> str:
    return f"{path}?{urlencode({'name': name})}"


def _status_badges(
    s: TrafficNodeStatus, node: TrafficNode, revision: int, master_version: str
) -> tuple[list[Badge], int | None]:
    badges: list[Badge] = []
    health = s.health
    if health is None or health.last_check is None:
        badges.append(Badge("not checked yet", "off"))
    elif health.online:
        badges.append(Badge("online", "ok", f"last seen {format_time(health.last_seen)}"))
    else:
        why = f"{health.error_reason}: {health.error}" if health.error_reason else ""
        seen = f"last seen {format_time(health.last_seen)}" if health.last_seen else "never seen"
        badges.append(Badge("offline", "bad", "; ".join(x for x in (why, seen) if x)))
    version = (health.version if health is not None else None) or (
        s.sync.version if s.sync is not None else None
    )
    if version:
        if version == master_version:
            badges.append(Badge(f"version {version}", "off"))
        else:
            badges.append(Badge(f"version {version} (master runs {master_version})", "bad",
                                "A traffic node on another software version is not used "
                                "for clients."))
    held = health.revision if health is not None and health.revision is not None else (
        s.sync.acked_revision if s.sync is not None else None
    )
    if held:
        kind = "ok" if held == revision else "off"
        badges.append(Badge(f"synced revision {held}", kind,
                            f"the master's current revision is {revision}"))
    draining: int | None = None
    load = health.load if health is not None else None
    if load is not None:
        share = round(100 * load.connected_clients / node.capacity) if node.capacity else 0
        badges.append(Badge(
            f"load {load.connected_clients} clients ({share}% of {node.capacity}), "
            f"{load.active_sessions} sessions", "off",
            f"CPU {load.cpu_percent:.0f}%",
        ))
        if not node.accepting and load.active_sessions > 0:
            draining = load.active_sessions
    if s.sync is not None and s.sync.last_sync_status not in (None, 0):
        badges.append(Badge(f"last sync failed ({s.sync.last_error_reason})", "bad",
                            s.sync.last_error or ""))
    return badges, draining


def node_rows(
    config: ClusterConfig | None, status: ClusterStatus, master_version: str
) -> list[NodeRow]:
    """The traffic nodes table; on a primary with health and sync state, elsewhere
    (a traffic node's read-only view) from the document alone."""
    if config is None:
        return []
    by_name = {s.name: s for s in status.nodes}
    rows = []
    for node in config.traffic_nodes:
        s = by_name.get(node.name)
        badges: list[Badge] = []
        draining = None
        guid = node.guid or ""
        if s is not None:
            badges, draining = _status_badges(s, node, config.revision, master_version)
            if not guid and s.sync is not None and s.sync.guid:
                guid = s.sync.guid
        rows.append(NodeRow(
            name=node.name, guid=guid, public=str(node.public),
            internal=str(node.internal_address()), region=node.region,
            accepting=node.accepting, needs_sync=s.needs_sync if s is not None else False,
            draining_sessions=draining, badges=tuple(badges),
            edit_href=node_href(NODE_PATH, node.name),
            remove_href=node_href(REMOVE_PATH, node.name),
        ))
    return rows


def master_link(config: ClusterConfig | None, master: MasterIdentity | None) -> str | None:
    """Where a traffic node's operator configures the cluster: the primary's page."""
    if config is not None:
        address = config.primary.public
        host, port = address.host, address.port
    elif master is not None:
        host, _, port_text = master.internal.rpartition(":")
        port = int(port_text) if port_text.isdecimal() else 443
    else:
        return None
    authority = host if port == 443 else f"{host}:{port}"
    return f"https://{authority}{PATH}"


# --- Sync Now progress and Status History, as JSON for cluster.js ---------------------


def history_json(rows: list[HistoryRow]) -> list[dict[str, Any]]:
    return [{"time": format_time(r.at), "status": r.status, "message": r.message}
            for r in rows]


_STATE_WORDS = {
    NodeSyncState.PENDING: "waiting",
    NodeSyncState.STARTED: "started",
    NodeSyncState.FINISHED: "finished",
    NodeSyncState.FAILED: "failed",
}


def sync_json(status: SyncStatus, running: bool) -> dict[str, Any]:
    """The running (or last) Sync Now, node by node."""
    nodes = [
        {
            "name": p.node, "address": p.address, "state": p.state.value,
            "words": _STATE_WORDS[p.state], "reason": p.reason, "message": p.message,
        }
        for p in status.nodes.values()
    ]
    finished = sum(1 for p in status.nodes.values() if p.state is NodeSyncState.FINISHED)
    failed = sum(1 for p in status.nodes.values() if p.state is NodeSyncState.FAILED)
    if running:
        summary = f"Sync Now is running: {status.done} of {status.total} traffic nodes done."
    elif status.started_at is None:
        summary = ""
    elif failed:
        summary = (f"Sync Now finished: {finished} of {status.total} traffic nodes synced, "
                   f"{failed} failed (see the Status History).")
    else:
        summary = f"Sync Now finished: {finished} of {status.total} traffic nodes synced."
    return {
        "running": running,
        "revision": status.revision,
        "started_at": format_time(status.started_at) if status.started_at else None,
        "finished_at": format_time(status.finished_at) if status.finished_at else None,
        "done": status.done,
        "total": status.total,
        "failed": failed,
        "summary": summary,
        "nodes": nodes,
    }


__all__ = [
    "Badge",
    "NodeRow",
    "history_json",
    "master_link",
    "node_href",
    "node_rows",
    "sync_json",
]
