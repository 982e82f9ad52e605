"""A traffic node tells its master which stream connections it carries (DESIGN.md §2).

Guide, "Check Connections": "only active sessions show in the connected client list for
a traffic node", while the master lists every online client with where it is connected.
So each node with a relay watches its relay's live connections (:class:`StreamWatcher`:
the participant, session, stream and direction come from the verified stream token)
and reports every connection opened and closed to its master:

* over the PSK-signed internal API (``POST /internal/v1/stream-connections``), in
  batches of at most :data:`MAX_BATCH` events;
* from a bounded queue (:data:`MAX_QUEUED` events): when it overflows, or the master's
  answer was lost, or every :data:`RESYNC_SECONDS`, the next report starts afresh
  (``reset``: the master forgets the node's connections and takes the full current set);
* retried with a capped exponential backoff while the master cannot be reached.

On a master, the relay carries the sessions of clients under master fallback; its
watcher hands the same events to the broker directly.

The master answers with what it knows of the participants (kind, hostname, platform,
timezone), which the node keeps for its own ``get_connected_clients``; without it the
kind is inferred from the stream (a customer publishes ``screen:customer``, …).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from atlas.broker.service import (
    BROKER,
    Broker,
    ClientView,
    ConnectedView,
    ConnectionView,
    is_master,
)
from atlas.protocol.control import ClientKind, StreamKind
from atlas.relay.hub import RelayHub

if TYPE_CHECKING:
    from atlas.node.datadir import HostPort
    from atlas.node.peers import PeerClient

log = logging.getLogger("atlas.relay.reporting")

POLL_SECONDS: Final = 0.5
MAX_BATCH: Final = 500
MAX_QUEUED: Final = 10_000
RESYNC_SECONDS: Final = 60.0
MAX_BACKOFF_SECONDS: Final = 10.0
REPORT_TIMEOUT: Final = 5.0
MAX_KNOWN_CLIENTS: Final = 10_000

ConnectionKey = tuple[str, str, str, str]  # session, stream, direction, participant


def _event(op: str, key: ConnectionKey, since: float) -> dict[str, Any]:
    session, stream, direction, participant = key
    return {"op": op, "session": session, "stream": stream, "direction": direction,
            "participant": participant, "since": since}


class StreamWatcher:
    """The relay's live connections, and what changed since the last look."""

    def __init__(self, hub: RelayHub, clock: Callable[[], float] = time.time) -> None:
        self.hub = hub
        self._clock = clock
        self.live: dict[ConnectionKey, float] = {}  # connection → since

    def current(self) -> set[ConnectionKey]:
        keys: set[ConnectionKey] = set()
        for (session, stream), s in self.hub.streams.items():
            if s.publisher is not None and not s.publisher.ended:
                keys.add((session, stream, "publish", s.publisher.participant))
            for sub in s.subscribers:
                if not sub.ended:
                    keys.add((session, stream, "subscribe", sub.participant))
        return keys

    def poll(self) -> list[dict[str, Any]]:
        """Events for connections opened and closed since the last poll."""
        now = self._clock()
        current = self.current()
        events = []
        for key in [k for k in self.live if k not in current]:
            since = self.live.pop(key)
            events.append(_event("close", key, since))
        for key in current:
            if key not in self.live:
                self.live[key] = now
                events.append(_event("open", key, now))
        return events

    def snapshot_events(self) -> list[dict[str, Any]]:
        """Every live connection as an ``open`` event (for a ``reset`` report)."""
        return [_event("open", key, since) for key, since in self.live.items()]


@dataclass
class ReportQueue:
    """Events waiting for the master: bounded, batched, resent until acknowledged."""

    max_queued: int = MAX_QUEUED
    events: deque[dict[str, Any]] = field(default_factory=deque)
    reset: bool = True  # the first report always starts afresh
    seq: int = 0
    in_flight: list[dict[str, Any]] | None = None
    in_flight_reset: bool = False

    def add(self, events: list[dict[str, Any]]) -> None:
        self.events.extend(events)
        if len(self.events) > self.max_queued:
            self.events.clear()
            self.reset = True

    def next_batch(self, watcher: StreamWatcher) -> dict[str, Any] | None:
        """The batch to send (the same one again until :meth:`acknowledged`)."""
        if self.in_flight is None:
            if self.reset:
                self.events.clear()
                self.in_flight = watcher.snapshot_events()
                self.in_flight_reset = True
                self.reset = False
            elif self.events:
                count = min(MAX_BATCH, len(self.events))
                self.in_flight = [self.events.popleft() for _ in range(count)]
                self.in_flight_reset = False
            else:
                return None
            self.seq += 1
        return {"seq": self.seq, "reset": self.in_flight_reset, "events": self.in_flight}

    def acknowledged(self) -> None:
        self.in_flight = None

    def failed(self) -> None:
        """The master may or may not have applied it: start afresh next time."""
        self.in_flight = None
        self.reset = True


@dataclass
class TrafficReporter:
    """The node's watcher, report queue and what the master said about participants."""

    watcher: StreamWatcher
    queue: ReportQueue = field(default_factory=ReportQueue)
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_reset: float = 0.0
    failures: int = 0
    reports_sent: int = 0

    def remember(self, answer: dict[str, Any]) -> None:
        known = answer.get("clients")
        if isinstance(known, dict):
            for client_id, details in known.items():
                if isinstance(details, dict):
                    self.clients[str(client_id)] = details
        live = {key[3] for key in self.watcher.live}
        if len(self.clients) > MAX_KNOWN_CLIENTS or any(c not in live for c in self.clients):
            self.clients = {c: d for c, d in self.clients.items() if c in live}


_REPORTERS: weakref.WeakKeyDictionary[web.Application, TrafficReporter] = (
    weakref.WeakKeyDictionary()
)


def reporter_for(app: web.Application) -> TrafficReporter | None:
    """The app's reporter, once its relay exists."""
    from atlas.relay.endpoint import RELAY

    reporter = _REPORTERS.get(app)
    if reporter is None:
        relay = app.get(RELAY)
        if relay is None:
            return None
        reporter = _REPORTERS[app] = TrafficReporter(StreamWatcher(relay.hub,
                                                                   relay.wall_clock))
    return reporter


# --- the node's own listing -------------------------------------------------------------


def _inferred_kind(stream: str, direction: str) -> ClientKind:
    if stream == StreamKind.PRESENTER_SCREEN.value and direction == "subscribe":
        return ClientKind.PRESENTATION_ATTENDEE
    publishes_own = direction == "publish"
    if stream == StreamKind.CUSTOMER_SCREEN.value:
        return ClientKind.SUPPORT_CUSTOMER if publishes_own else ClientKind.REPRESENTATIVE
    return ClientKind.REPRESENTATIVE if publishes_own else ClientKind.SUPPORT_CUSTOMER


def traffic_view(app: web.Application) -> ConnectedView:
    """Clients with an active session connection to this node (its relay's live
    connections), described as the master last told us."""
    from atlas.node.app import NODE

    node = app[NODE]
    ident = node.identity
    reporter = reporter_for(app)
    by_client: dict[str, list[tuple[ConnectionKey, float]]] = {}
    if reporter is not None:
        for key in reporter.watcher.current():
            since = reporter.watcher.live.get(key, time.time())
            by_client.setdefault(key[3], []).append((key, since))
    clients = []
    counts: dict[ClientKind, int] = {}
    for client_id, connections in sorted(by_client.items()):
        details = reporter.clients.get(client_id, {}) if reporter is not None else {}
        first_key = connections[0][0]
        try:
            kind = ClientKind(details.get("kind", ""))
        except ValueError:
            kind = _inferred_kind(first_key[1], first_key[2])
        offset = details.get("utc_offset_minutes")
        since_master = details.get("connected_since")
        earliest = min(since for _, since in connections)
        clients.append(ClientView(
            client_id=client_id, kind=kind,
            hostname=str(details.get("hostname", "")),
            platform=str(details.get("platform", "")),
            timezone_offset_seconds=offset * 60 if isinstance(offset, int) else 0,
            connected_since=float(since_master) if isinstance(since_master, int | float)
            else earliest,
            home_node=None,
            connections=tuple(
                ConnectionView(node_guid=ident.guid, node_name=ident.name,
                               node_hostname=ident.public.host, role="traffic", since=since,
                               detail=f"{key[2]} {key[1]} (session {key[0]})")
                for key, since in sorted(connections, key=lambda c: c[1])
            ),
            name=str(details.get("name", "")),
        ))
        counts[kind] = counts.get(kind, 0) + 1
    return ConnectedView(node_guid=ident.guid, node_role="traffic", clients=tuple(clients),
                         counts={ident.guid: counts} if counts else {})


# --- sending ---------------------------------------------------------------------------


async def report_once(app: web.Application, reporter: TrafficReporter,
                      send: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> bool:
    """Poll the relay and send one batch if there is one; ``False`` if sending failed."""
    events = reporter.watcher.poll()
    reporter.queue.add(events)
    now = time.monotonic()
    if now - reporter.last_reset >= RESYNC_SECONDS:
        reporter.queue.reset = True
    batch = reporter.queue.next_batch(reporter.watcher)
    if batch is None:
        return True
    if batch["reset"]:
        reporter.last_reset = now
    try:
        answer = await send(batch)
    except Exception as exc:
        reporter.failures += 1
        reporter.queue.failed()
        log.info("stream connection report to the master failed: %s", exc)
        return False
    reporter.queue.acknowledged()
    reporter.reports_sent += 1
    reporter.failures = 0
    if isinstance(answer, dict):
        reporter.remember(answer)
    return True


def _update_counters(app: web.Application, reporter: TrafficReporter) -> None:
    from atlas.node.app import NODE
    from atlas.node.internal_api import load_counters

    node = app[NODE]
    if is_master(node):
        return  # the broker counts the master's clients and sessions
    counters = load_counters(node)
    live = reporter.watcher.live
    counters.connected_clients = len({k[3] for k in live})
    counters.active_sessions = len({k[0] for k in live})


Sender = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _to_broker(broker: Broker) -> Sender:
    own = broker.registry.master

    async def send(batch: dict[str, Any]) -> dict[str, Any]:
        return broker.apply_stream_report(own, reset=batch["reset"], events=batch["events"])

    return send


def _to_master(peers: PeerClient, address: HostPort, name: str) -> Sender:
    from atlas.node.internal_api import PREFIX
    from atlas.node.peers import PeerError

    async def send(batch: dict[str, Any]) -> dict[str, Any]:
        try:
            return await peers.call(address, "POST", f"{PREFIX}/stream-connections", batch,
                                    peer=name)
        except PeerError as exc:
            raise ConnectionError(f"{exc.reason}: {exc.detail}") from None

    return send


async def run(app: web.Application) -> None:
    """The node's reporting loop (a background task; runs on every node with a relay)."""
    from atlas.node.app import NODE
    from atlas.node.datadir import HostPort
    from atlas.node.peers import NoPreSharedKey, PeerClient
    from atlas.node.roles import Role, current_role, master_identity

    node = app[NODE]
    peers: PeerClient | None = None
    delay = POLL_SECONDS
    try:
        while True:
            await asyncio.sleep(delay)
            delay = POLL_SECONDS
            reporter = reporter_for(app)
            if reporter is None:
                continue
            broker = app.get(BROKER)
            if broker is not None and is_master(node):
                await report_once(app, reporter, _to_broker(broker))
                continue
            master = master_identity(node.db)
            if current_role(node.db) is not Role.TRAFFIC or master is None:
                reporter.watcher.poll()
                reporter.queue = ReportQueue()
                _update_counters(app, reporter)
                continue
            if peers is None:
                try:
                    peers = PeerClient(node, timeout=REPORT_TIMEOUT)
                except NoPreSharedKey:
                    continue
            address = HostPort.parse(master.internal)
            ok = await report_once(app, reporter, _to_master(peers, address, master.name))
            _update_counters(app, reporter)
            if not ok:
                delay = min(MAX_BACKOFF_SECONDS, POLL_SECONDS * 2 ** reporter.failures)
                await peers.close()
                peers = None
    finally:
        if peers is not None:
            await peers.close()


def setup(app: web.Application) -> None:
    """Node feature: report stream connections to the master."""
    from atlas.node.app import NODE

    app[NODE].add_background("stream_reporting", lambda: run(app))
