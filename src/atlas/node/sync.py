"""Sync Now: push the whole configuration document to every traffic node (design §4).

Guide, "Perform a … Data-Sync": "all configuration data in /login is synced with the
traffic nodes"; the Status History table shows each step. The master pushes to every
traffic node's internal address concurrently, each with its own timeout; each node
applies the document atomically or not at all and answers with the revision it now
holds, its GUID, name and software version, which the master records (``node_status``).

Status history rows, in the guide's words; a node is named ``<name> (<host:port>)``
(its configured name and internal address)::

    Data Sync: Started configuration data sync with traffic nodes.
    Data Sync: Started configuration data sync with tokyo (tokyo.int.example.com:443).
    Data Sync: Finished configuration data sync with tokyo (tokyo.int.example.com:443).
    Data Sync: Failed configuration data sync with lima (…): unreachable (connection refused).
    Data Sync: Finished data sync with traffic nodes: 1 of 2 nodes synced.

A node that was offline keeps its old revision, is named in a failure row, and gets
the latest document at the next sync (every sync pushes the whole document).

Beside the document every payload carries the master's full API and representative
account sets (:mod:`atlas.store.account_sync`: hashes, never secrets), which the node
applies in the same transaction; the master records the digest of the sets each node
acknowledged, so an account change raises "sync needed" like a document change. Only
the primary master pushes (:func:`sync_now` requires the role), so accounts flow from
the master to traffic nodes only; joining a cluster makes the master's accounts
authoritative on the joining node.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from atlas.model.config import ClusterConfig, TrafficNode
from atlas.node import roles
from atlas.node.internal_api import PREFIX
from atlas.node.peers import (
    PeerBadResponse,
    PeerClient,
    PeerError,
    PeerPskMismatch,
    PeerRejected,
    PeerUnreachable,
    PeerVersionMismatch,
)
from atlas.node.roles import Role
from atlas.node.runtime import Node
from atlas.store import account_sync, config_store, history
from atlas.store.account_sync import AccountSets

DEFAULT_NODE_TIMEOUT = 30.0


class NodeSyncState(StrEnum):
    PENDING = "pending"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SyncProgress:
    """One step of a running sync, for a progress bar or a polling page."""

    node: str  # configured name
    address: str  # internal host:port
    state: NodeSyncState
    done: int  # nodes finished or failed so far
    total: int
    reason: str | None = None  # on failure: unreachable, psk_mismatch, …
    message: str | None = None


ProgressCallback = Callable[[SyncProgress], None]


@dataclass(frozen=True, slots=True)
class NodeSyncResult:
    name: str
    address: str
    ok: bool
    seconds: float
    revision: int | None = None  # what the node now holds (on success)
    guid: str | None = None
    reported_name: str | None = None
    version: str | None = None
    reason: str | None = None  # on failure
    message: str | None = None  # the status history wording of the failure


@dataclass(frozen=True, slots=True)
class SyncReport:
    revision: int
    started_at: float
    finished_at: float
    results: tuple[NodeSyncResult, ...]

    @property
    def synced(self) -> tuple[NodeSyncResult, ...]:
        return tuple(r for r in self.results if r.ok)

    @property
    def failed(self) -> tuple[NodeSyncResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def summary(self) -> str:
        return f"{len(self.synced)} of {len(self.results)} nodes synced"


@dataclass
class SyncStatus:
    """What a polling page shows: the running (or last) sync, node by node."""

    running: bool = False
    revision: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    nodes: dict[str, SyncProgress] = field(default_factory=dict)

    @property
    def done(self) -> int:
        finished = (NodeSyncState.FINISHED, NodeSyncState.FAILED)
        return sum(1 for p in self.nodes.values() if p.state in finished)

    @property
    def total(self) -> int:
        return len(self.nodes)


class SyncInProgress(Exception):
    """Sync Now while a sync is still running on this node (REST: 409)."""

    def __init__(self) -> None:
        super().__init__("a data sync is already running; wait for it to finish")


@dataclass
class _NodeSync:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    status: SyncStatus = field(default_factory=SyncStatus)


_STATE: weakref.WeakKeyDictionary[Node, _NodeSync] = weakref.WeakKeyDictionary()


def _state(node: Node) -> _NodeSync:
    state = _STATE.get(node)
    if state is None:
        state = _STATE[node] = _NodeSync()
    return state


def sync_status(node: Node) -> SyncStatus:
    """The running or last data sync of this master (a copy)."""
    status = _state(node).status
    return replace(status, nodes=dict(status.nodes))


def node_label(node: TrafficNode) -> str:
    """How the status history names a traffic node: ``name (host:port)``."""
    return f"{node.name} ({node.internal_address()})"


def failure_message(label: str, name: str, error: PeerError) -> str:
    """The status history row for a failed data sync of one node."""
    head = f"Data Sync: Failed configuration data sync with {label}"
    if isinstance(error, PeerUnreachable):
        return f"{head}: unreachable ({error.detail})."
    if isinstance(error, PeerPskMismatch):
        return f"{head}: pre-shared key mismatch with {name} ({error.detail})."
    if isinstance(error, PeerVersionMismatch):
        return (
            f"{head}: software version mismatch ({name} runs {error.peer_version}, "
            f"master runs {error.our_version})."
        )
    if isinstance(error, PeerRejected):
        return f"{head}: rejected document ({error.reason}: {error.detail})."
    return f"{head}: bad answer ({error.detail})."


def master_entry(node: Node, config: ClusterConfig) -> dict[str, str]:
    """How this master introduces itself in a sync request."""
    primary = config.primary
    if primary.guid == node.identity.guid:
        return {
            "guid": node.identity.guid, "name": primary.name,
            "internal": str(primary.internal_address()),
        }
    return {
        "guid": node.identity.guid, "name": node.identity.name,
        "internal": str(node.identity.internal),
    }


def stream_public_keys(node: Node) -> list[str]:
    """The master's stream-token public key(s) as PEM, for traffic nodes to verify
    stream tokens with (DESIGN.md §2: "traffic nodes hold only the public key, received
    through data sync"). The signing key is created here if it does not exist yet."""
    from atlas.broker.stream_tokens import load_or_create_signer

    signer = load_or_create_signer(node.datadir, issuer=node.identity.guid)
    return [signer.public_key_pem().decode()]


def sync_payload(
    node: Node, config: ClusterConfig, document: str, target: TrafficNode,
    accounts: AccountSets | None = None,
) -> dict[str, Any]:
    """The body of ``POST /internal/v1/sync``; ``accounts`` defaults to this node's."""
    if accounts is None:
        accounts = account_sync.export_accounts(node.db)
    return {
        "revision": config.revision,
        "document": document,
        "target": target.name,
        "master": master_entry(node, config),
        "version": node.software_version,
        "stream_keys": stream_public_keys(node),
        "accounts": accounts.as_json(),
    }


async def push_to_node(
    peers: PeerClient,
    node: Node,
    config: ClusterConfig,
    document: str,
    target: TrafficNode,
    *,
    timeout: float,
    accounts: AccountSets | None = None,
) -> dict[str, Any]:
    """Push the document (and ``accounts``, default this node's) to one traffic node;
    its verified answer or a PeerError."""
    answer = await peers.call(
        target.internal_address(), "POST", f"{PREFIX}/sync",
        sync_payload(node, config, document, target, accounts), timeout=timeout,
        peer=target.name,
    )
    if answer.get("revision") != config.revision:
        raise PeerBadResponse(
            target.name, f"answered revision {answer.get('revision')!r}, not {config.revision}"
        )
    return answer


async def sync_now(
    node: Node,
    *,
    on_progress: ProgressCallback | None = None,
    timeout: float = DEFAULT_NODE_TIMEOUT,
    only: Collection[str] | None = None,
    sequential: bool = False,
) -> SyncReport:
    """Sync Now: push the current document to every traffic node and report.

    Needs a primary master with a configuration; raises :class:`roles.WrongRole`,
    :class:`SyncInProgress`, or :class:`~atlas.node.peers.NoPreSharedKey`. Node
    failures do not raise: they are in the report and the status history.
    ``only`` limits the push to the traffic nodes of these names (the others keep
    their revision and still need a sync); ``sequential`` pushes one node at a time
    (the benchmark's baseline).
    """
    db = node.db
    roles.require_role(db, "Sync Now", Role.PRIMARY)
    config = config_store.load(db)
    if config is None:
        raise roles.WrongRole(Role.STANDALONE, "Sync Now", "a cluster configuration")
    state = _state(node)
    if state.lock.locked():
        raise SyncInProgress()
    async with state.lock, PeerClient(node, timeout=timeout) as peers:
        targets = config.traffic_nodes
        if only is not None:
            wanted = set(only)
            targets = tuple(t for t in targets if t.name in wanted)
        return await _run(node, peers, config, targets, state, on_progress, timeout,
                          sequential)


async def _run(
    node: Node,
    peers: PeerClient,
    config: ClusterConfig,
    targets: tuple[TrafficNode, ...],
    state: _NodeSync,
    on_progress: ProgressCallback | None,
    timeout: float,
    sequential: bool,
) -> SyncReport:
    db = node.db
    document = config.canonical_json()
    accounts = account_sync.export_accounts(db)
    accounts_digest = accounts.digest
    started = time.time()
    status = state.status = SyncStatus(
        running=True, revision=config.revision, started_at=started,
        nodes={
            t.name: SyncProgress(
                t.name, str(t.internal_address()), NodeSyncState.PENDING, 0, len(targets)
            )
            for t in targets
        },
    )
    known = config_store.node_statuses(db)

    def progress(step: SyncProgress) -> None:
        status.nodes[step.node] = step
        if on_progress is not None:
            on_progress(step)

    history.record(db, "Data Sync: Started configuration data sync with traffic nodes.")

    async def one(target: TrafficNode) -> NodeSyncResult:
        label = node_label(target)
        address = str(target.internal_address())
        history.record(db, f"Data Sync: Started configuration data sync with {label}.")
        progress(SyncProgress(target.name, address, NodeSyncState.STARTED,
                              status.done, len(targets)))
        t0 = time.monotonic()
        try:
            answer = await push_to_node(peers, node, config, document, target,
                                        timeout=timeout, accounts=accounts)
        except PeerError as exc:
            message = failure_message(label, target.name, exc)
            version = exc.peer_version if isinstance(exc, PeerVersionMismatch) else None
            config_store.record_sync_failure(
                db, target.name, reason=exc.reason, message=message, version=version
            )
            history.record(db, message, history.FAILED)
            result = NodeSyncResult(
                target.name, address, False, time.monotonic() - t0, reason=exc.reason,
                message=message, version=version,
            )
            progress(SyncProgress(target.name, address, NodeSyncState.FAILED,
                                  status.done + 1, len(targets), exc.reason, message))
            return result
        guid, name, version = (
            str(answer.get("guid", "")), str(answer.get("name", "")),
            str(answer.get("version", "")),
        )
        previous = known.get(target.name)
        if previous is not None and previous.guid and previous.guid != guid:
            history.record(
                db, f"Data Sync: {label} now reports appliance GUID {guid} "
                f"(was {previous.guid}).",
            )
        config_store.record_ack(
            db, target.name, revision=config.revision, guid=guid, reported_name=name,
            version=version, accounts_digest=accounts_digest,
        )
        history.record(db, f"Data Sync: Finished configuration data sync with {label}.")
        progress(SyncProgress(target.name, address, NodeSyncState.FINISHED,
                              status.done + 1, len(targets)))
        return NodeSyncResult(
            target.name, address, True, time.monotonic() - t0, revision=config.revision,
            guid=guid, reported_name=name, version=version,
        )

    try:
        if sequential:
            results = [await one(t) for t in targets]
        else:
            results = list(await asyncio.gather(*(one(t) for t in targets)))
    finally:
        status.running = False
        status.finished_at = time.time()
    report = SyncReport(config.revision, started, status.finished_at, tuple(results))
    # check_health / /api/v1/health report when the master last synced, and how it went.
    db.set_setting("last_data_sync_time", str(int(status.finished_at)))
    db.set_setting("last_data_sync_status", "success" if report.ok else report.summary)
    if report.ok:
        history.record(db, "Data Sync: Finished data sync with traffic nodes.")
    else:
        history.record(
            db, f"Data Sync: Finished data sync with traffic nodes: {report.summary}.",
            history.FAILED,
        )
    return report


__all__ = [
    "NodeSyncResult",
    "NodeSyncState",
    "ProgressCallback",
    "SyncInProgress",
    "SyncProgress",
    "SyncReport",
    "SyncStatus",
    "failure_message",
    "node_label",
    "stream_public_keys",
    "sync_now",
    "sync_status",
]
