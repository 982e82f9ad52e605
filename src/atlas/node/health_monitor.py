"""The primary master's health checks of every traffic node (design section 4).

On an interval (``health.interval_seconds``) the master asks each traffic node's
internal address for ``/internal/v1/health``, signed like every node-to-node request.
A node is online while its last successful check is younger than
``health.timeout_seconds``. The result feeds traffic-node selection
(:meth:`HealthMonitor.snapshot`, the shape of :mod:`atlas.selection.health`), the
cluster page (:meth:`HealthMonitor.details`) and ``/metrics``.

The monitor runs on every node as a background task and does nothing unless the node is
the primary master of a cluster, so it starts and stops with Create/Disable Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import Gauge

from atlas.model.config import ClusterConfig, TrafficNode
from atlas.node import roles
from atlas.node.app import NODE
from atlas.node.internal_api import PREFIX
from atlas.node.peers import NoPreSharedKey, PeerClient, PeerError
from atlas.node.roles import Role
from atlas.node.runtime import Node
from atlas.protocol.signing import SigningKey
from atlas.selection.health import HealthSnapshot, NodeHealth
from atlas.store import config_store

log = logging.getLogger("atlas.health")

IDLE_POLL_SECONDS = 2.0  # how often a node that is not a primary looks again


@dataclass(frozen=True, slots=True)
class NodeLoad:
    connected_clients: int = 0
    active_sessions: int = 0
    cpu_percent: float = 0.0


@dataclass(frozen=True, slots=True)
class TrafficNodeHealth:
    """Everything the cluster page shows about one traffic node's health."""

    name: str
    address: str
    online: bool
    last_seen: float | None  # epoch seconds of the last successful check
    last_check: float | None  # epoch seconds of the last attempt
    version: str | None
    revision: int | None  # configuration revision the node holds
    role: str | None
    in_this_cluster: bool  # it follows this master
    accepting: bool | None  # the flag the node itself holds
    load: NodeLoad | None
    error_reason: str | None  # the last check's failure, if it failed
    error: str | None

    @property
    def synced(self) -> bool:
        """Completed a data sync from this master (design section 3, viability)."""
        return self.in_this_cluster and bool(self.revision)


@dataclass
class _Record:
    address: str
    last_seen: float | None = None
    last_check: float | None = None
    answer: dict[str, Any] | None = None
    error_reason: str | None = None
    error: str | None = None


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _load(answer: dict[str, Any]) -> NodeLoad:
    raw = answer.get("load")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    cpu = data.get("cpu_percent")
    return NodeLoad(
        connected_clients=_int(data.get("connected_clients")),
        active_sessions=_int(data.get("active_sessions")),
        cpu_percent=float(cpu) if isinstance(cpu, int | float) else 0.0,
    )


class HealthMonitor:
    """Checks every traffic node of this primary; one per node (:func:`monitor_for`)."""

    def __init__(self, node: Node, *, clock: Callable[[], float] = time.time) -> None:
        self._node = node
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._timeout = 15.0
        self._peers: PeerClient | None = None
        self.rounds = 0
        labels = ["node"]
        registry = node.metrics
        self._online = Gauge("atlas_traffic_node_online",
                             "1 if the traffic node's last health check is recent enough",
                             labels, registry=registry)
        self._last_seen = Gauge("atlas_traffic_node_last_seen_timestamp_seconds",
                                "Time of the last successful health check", labels,
                                registry=registry)
        self._revision = Gauge("atlas_traffic_node_config_revision",
                               "Configuration revision the traffic node holds", labels,
                               registry=registry)
        self._clients = Gauge("atlas_traffic_node_connected_clients",
                              "Clients connected to the traffic node", labels,
                              registry=registry)
        self._sessions = Gauge("atlas_traffic_node_active_sessions",
                               "Active sessions on the traffic node", labels, registry=registry)
        self._cpu = Gauge("atlas_traffic_node_cpu_percent",
                          "CPU use of the traffic node process (percent of one core)", labels,
                          registry=registry)
        self._sync_needed = Gauge("atlas_cluster_sync_needed",
                                  "1 if some traffic node lacks the latest configuration",
                                  registry=registry)
        self._gauges = (self._online, self._last_seen, self._revision, self._clients,
                        self._sessions, self._cpu)

    # --- reading ----------------------------------------------------------------------

    def details(self) -> dict[str, TrafficNodeHealth]:
        """Per traffic node (configured name), as of now."""
        now = self._clock()
        master_guid = self._node.identity.guid
        out: dict[str, TrafficNodeHealth] = {}
        for name, rec in self._records.items():
            a = rec.answer or {}
            online = rec.last_seen is not None and now - rec.last_seen <= self._timeout
            accepting = a.get("accepting")
            out[name] = TrafficNodeHealth(
                name=name,
                address=rec.address,
                online=online,
                last_seen=rec.last_seen,
                last_check=rec.last_check,
                version=str(a["version"]) if "version" in a else None,
                revision=_int(a.get("revision")) if rec.answer is not None else None,
                role=str(a["role"]) if "role" in a else None,
                in_this_cluster=a.get("master_guid") == master_guid and a.get("role") == "traffic",
                accepting=accepting if isinstance(accepting, bool) else None,
                load=_load(a) if rec.answer is not None else None,
                error_reason=rec.error_reason,
                error=rec.error,
            )
        return out

    def snapshot(self) -> HealthSnapshot:
        """What traffic-node selection reads: :class:`~atlas.selection.health.NodeHealth`
        keyed by configured traffic node name."""
        return HealthSnapshot(
            {
                name: NodeHealth(
                    online=h.online,
                    software_version=h.version or "",
                    config_revision=h.revision or 0,
                    synced=h.synced,
                    load=h.load.connected_clients if h.load else 0,
                    last_seen=h.last_seen,
                )
                for name, h in self.details().items()
            }
        )

    # --- checking ---------------------------------------------------------------------

    def _client(self) -> PeerClient:
        psk = self._node.psk
        if self._peers is not None and psk:
            if SigningKey(psk).key_id == self._peers.key_id:
                return self._peers
        stale, self._peers = self._peers, PeerClient(self._node)
        if stale is not None:
            asyncio.get_running_loop().create_task(stale.close())
        return self._peers

    async def _check(self, peers: PeerClient, target: TrafficNode, timeout: float) -> None:
        rec = self._records[target.name]
        try:
            answer = await peers.call(
                target.internal_address(), "GET", f"{PREFIX}/health", None,
                timeout=timeout, peer=target.name,
            )
        except PeerError as exc:
            rec.last_check = self._clock()
            rec.error_reason, rec.error = exc.reason, exc.detail
            return
        rec.last_check = rec.last_seen = self._clock()
        rec.answer = answer
        rec.error_reason = rec.error = None

    async def check_once(self, config: ClusterConfig | None = None) -> None:
        """One round: check every configured traffic node concurrently."""
        config = config or config_store.load(self._node.db)
        if config is None:
            self._forget_all()
            return
        self._timeout = config.health.timeout_seconds
        names = {t.name for t in config.traffic_nodes}
        for gone in set(self._records) - names:
            self._forget(gone)
        for t in config.traffic_nodes:
            address = str(t.internal_address())
            rec = self._records.get(t.name)
            if rec is None or rec.address != address:
                self._records[t.name] = _Record(address)
        call_timeout = max(1.0, min(config.health.interval_seconds,
                                    config.health.timeout_seconds / 2))
        try:
            peers = self._client()
        except NoPreSharedKey as exc:
            for rec in self._records.values():
                rec.last_check = self._clock()
                rec.error_reason, rec.error = "psk_not_set", str(exc)
        else:
            await asyncio.gather(*(self._check(peers, t, call_timeout)
                                   for t in config.traffic_nodes))
        self.rounds += 1
        self._export(config_store.sync_needed(self._node.db))

    def _export(self, sync_needed: bool) -> None:
        for name, h in self.details().items():
            self._online.labels(name).set(1 if h.online else 0)
            if h.last_seen is not None:
                self._last_seen.labels(name).set(h.last_seen)
            if h.revision is not None:
                self._revision.labels(name).set(h.revision)
            if h.load is not None:
                self._clients.labels(name).set(h.load.connected_clients)
                self._sessions.labels(name).set(h.load.active_sessions)
                self._cpu.labels(name).set(h.load.cpu_percent)
        self._sync_needed.set(1 if sync_needed else 0)

    def _forget(self, name: str) -> None:
        self._records.pop(name, None)
        for gauge in self._gauges:
            try:
                gauge.remove(name)
            except KeyError:
                pass

    def _forget_all(self) -> None:
        for name in list(self._records):
            self._forget(name)
        self._sync_needed.set(0)

    async def run(self) -> None:
        """Check on the configured interval while this node is a primary; forever."""
        try:
            while True:
                started = time.monotonic()
                config = None
                if roles.current_role(self._node.db) is Role.PRIMARY:
                    config = config_store.load(self._node.db)
                if config is None:
                    self._forget_all()
                    await asyncio.sleep(IDLE_POLL_SECONDS)
                    continue
                try:
                    await self.check_once(config)
                except Exception:
                    log.exception("health check round failed")
                interval = config.health.interval_seconds
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        finally:
            await self.close()

    async def close(self) -> None:
        if self._peers is not None:
            await self._peers.close()
            self._peers = None


_MONITORS: weakref.WeakKeyDictionary[Node, HealthMonitor] = weakref.WeakKeyDictionary()


def monitor_for(node: Node) -> HealthMonitor:
    """The node's health monitor (created on first use)."""
    monitor = _MONITORS.get(node)
    if monitor is None:
        monitor = _MONITORS[node] = HealthMonitor(node)
    return monitor


def setup(app: web.Application) -> None:
    node = app[NODE]
    node.add_background("health_monitor", monitor_for(node).run)


__all__ = ["HealthMonitor", "NodeLoad", "TrafficNodeHealth", "monitor_for", "setup"]
