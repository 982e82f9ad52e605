"""The master's broker: every online client, every session, and where its traffic goes.

DESIGN.md §2 and §3; guide, "Run Test Connections" and "Check Connections". The primary
master (and a standalone node, which is its own master) holds one :class:`Broker`. Every
client's control connection (:mod:`atlas.web.control_ws`) hands it the messages its
sans-I/O :class:`~atlas.protocol.control.MasterControlConnection` accepted; the broker
answers through the connection's :class:`ClientLink`. It owns

* the :class:`~atlas.broker.registry.ClientRegistry` (online clients, sticky home nodes,
  where each is connected),
* the :class:`~atlas.broker.session_keys.SessionKeyStore` (``generate_session_key``),
* the sessions (:class:`~atlas.broker.session_state.SupportSession`, one state table),
* the :class:`~atlas.selection.Selector` and :class:`~atlas.selection.MasterFallback`
  (which traffic node each participant uses), and
* the :class:`~atlas.broker.stream_tokens.StreamSigner` (stream grants).

The message sequence of a support session::

    customer                          master                          representative
    hello, auth_customer ──────────▶  redeem key (rate-limited per source)
                       ◀──────────── welcome, session_queued
                                       queue ───────────────────────▶ (every rep who sees it)
                                       ◀──────────────────────────── accept_next
                                       choose both home nodes (sticky; master fallback;
                                       or "no traffic node available, retry in N s")
                       ◀──────────── session_accepted ─────────────▶
        (a_record/srv/anycast only:   home_node_directive ─────────▶ … ◀── report_home)
                       ◀──────────── session_started ──────────────▶
        publish screen:customer on            subscribe screen:customer on the customer's
        its home node                         home node; publish screen:representative on
                                              its own home node (standby: no frames yet)
                                       ◀──────────────────────────── show_my_screen on
                       ◀──────────── stream_grant                   (the rep sends frames)
        (subscribe screen:representative on the rep's home node)
                                       ◀──────────────────────────── show_my_screen off
                       ◀──────────── stream_revoked                 (the rep stops sending,
        (the customer leaves the rep's home node)                    stays connected)
    refresh_grant ─────────────────▶ (a stream still held, its token's connect window
                       ◀──────────── stream_grant     over: the same node, a new token;
                                       or error: session_not_found, grant_revoked, …)
    chat ◀───────────────────────────▶ chat (to every participant)
    end_session ───────────────────▶ session_ended ───────────────▶

When a traffic node goes offline (health monitor) the sessions using it end with
``traffic_node_offline`` and ``restart``; each is queued again at once as a new session
in its representative's personal queue (``rep:<id>``), so the console restarts it with
``accept_next``. The restart offers the **same** home node while it is viable again;
while it is still offline within ``restart_window_seconds`` of going offline the answer
is "retry in N s"; after that window a new home node is chosen.

Time: ``clock`` (wall seconds) is injected, so the whole broker runs on a fake clock in
tests; :meth:`Broker.tick` does the periodic work (directive timeouts, expired keys,
offline traffic nodes) and the node runs it every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import itertools
import logging
import random
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from aiohttp import web

from atlas.broker.registry import (
    ClientRegistry,
    ConnectedClient,
    ConnectionRole,
    NodeInfo,
    RegistryError,
)
from atlas.broker.session_keys import (
    QueueId,
    QueueKind,
    RedeemRateLimited,
    SessionKey,
    SessionKeyError,
    SessionKeyReply,
    SessionKeyRequestError,
    SessionKeyStore,
    SessionKeyStoreFull,
)
from atlas.broker.session_state import (
    PUBLISHER,
    GrantCheck,
    SessionState,
    SessionTransitionError,
    SupportSession,
)
from atlas.broker.stream_tokens import Direction, StreamSigner, load_or_create_signer
from atlas.model.config import ClusterConfig, TrafficNode
from atlas.protocol.control import (
    MAX_QUEUE_ENTRIES,
    AcceptNext,
    AnycastTarget,
    AnyClientMessage,
    AnyMasterMessage,
    ARecordTarget,
    AuthCustomer,
    AuthRep,
    Chat,
    ChatDelivered,
    ClientKind,
    EndReason,
    EndSession,
    Error,
    ErrorCode,
    GenerateSessionKey,
    Hello,
    HomeNodeDirective,
    NodeRef,
    Ping,
    Pong,
    Queue,
    QueueEntry,
    QueueList,
    RefreshGrant,
    ReportHome,
    SessionAccepted,
    SessionEnded,
    SessionKeyIssued,
    SessionQueued,
    SessionStarted,
    ShowMyScreen,
    SrvTarget,
    StreamDirection,
    StreamGrant,
    StreamGranted,
    StreamKind,
    StreamRevoked,
    Welcome,
)
from atlas.selection import (
    AnycastDirective,
    ARecordDirective,
    ClientFacts,
    FallbackToMaster,
    HealthSnapshot,
    MasterFallback,
    NodeChosen,
    NoneAvailable,
    Selector,
    SrvDirective,
)

log = logging.getLogger("atlas.broker")

CONTROL_PATH: Final = "/client/control"
"""Where clients open their control connection (WebSocket over TLS)."""

__all__ = [
    "BROKER",
    "CONTROL_PATH",
    "Broker",
    "BrokerSettings",
    "ClientLink",
    "ClientView",
    "ConnectedView",
    "ConnectionView",
    "MasterRef",
    "NodeTopology",
    "Peer",
    "RepAccount",
    "StaticTopology",
    "Topology",
    "TopologySnapshot",
    "connected_view",
    "setup",
]


# --- what the broker needs from outside ------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Timings and limits of the control connections and sessions."""

    restart_window_seconds: float = 30.0
    """After a home traffic node went offline, how long a restart waits for the same node
    (guide, "Check Connections": "the reconnect always is attempted to the same traffic
    node") before a new home node is chosen (ours: no client stranded on a dead node)."""
    directive_timeout_seconds: float = 20.0
    """How long a client may take to follow a ``home_node_directive`` and report home."""
    auth_timeout_seconds: float = 20.0
    """A connection must be welcomed within this long (hello + credentials)."""
    idle_timeout_seconds: float = 60.0
    """A welcomed client that sends nothing (not even ``ping``) for this long is dropped."""
    heartbeat_seconds: float = 20.0
    """WebSocket ping interval of the control connection (finds dead transports)."""
    token_ttl_seconds: float = 120.0
    """How long a stream grant's token may be used to connect (an open connection
    outlives it; to reconnect later a participant asks for a fresh one,
    ``refresh_grant``)."""
    rep_login_failures: int = 20
    rep_login_window_seconds: float = 300.0
    """Wrong representative logins allowed per source address within the window."""
    require_same_version: bool = False
    """Refuse clients whose software version differs from the master's."""
    tick_seconds: float = 1.0


@dataclass(frozen=True, slots=True)
class RepAccount:
    """A representative as the broker knows it after a successful login."""

    id: int
    username: str
    display_name: str


RepAuthenticator = Callable[[str, str, float], Awaitable[RepAccount | None]]
"""``(username, password, now)`` → the account, or ``None`` (wrong, disabled, locked)."""


@dataclass(frozen=True, slots=True)
class MasterRef:
    """The master as clients see it."""

    guid: str
    name: str
    host: str
    port: int
    control_urls: tuple[str, ...]  # every master's control URL (primary first)

    @property
    def url(self) -> str:
        return _wss(self.host, self.port)

    @property
    def info(self) -> NodeInfo:
        return NodeInfo(guid=self.guid, name=self.name, hostname=self.host)


@dataclass(frozen=True, slots=True)
class TopologySnapshot:
    """The cluster as the broker needs it at one moment."""

    master: MasterRef
    config: ClusterConfig | None  # None: standalone (the master carries every session)
    health: HealthSnapshot
    guids: Mapping[str, str]  # traffic node name → appliance GUID (configured or learned)
    site_hostname: str  # a hostname only: the site is served on the master's port
    epoch: int = 0

    def traffic_node(self, guid: str) -> TrafficNode | None:
        if self.config is None:
            return None
        for node in self.config.traffic_nodes:
            if self.guids.get(node.name) == guid:
                return node
        return None


class Topology(Protocol):
    def snapshot(self) -> TopologySnapshot: ...


@dataclass
class StaticTopology:
    """A topology set by hand (tests, benchmarks)."""

    master: MasterRef
    config: ClusterConfig | None = None
    health: HealthSnapshot = field(default_factory=HealthSnapshot)
    site_hostname: str = "support.example.test"

    def snapshot(self) -> TopologySnapshot:
        guids = {}
        if self.config is not None:
            guids = {t.name: t.guid for t in self.config.traffic_nodes if t.guid}
        return TopologySnapshot(self.master, self.config, self.health, guids,
                                self.site_hostname)


class ClientLink(Protocol):
    """One control connection as the broker sees it (the adapter implements it).

    ``send`` must not block: the adapter queues, and drops a client that does not read.
    A message that ends the conversation (an ``error`` before ``welcome``) closes the
    connection once sent.
    """

    @property
    def source_ip(self) -> str: ...

    def send(self, message: AnyMasterMessage) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


# --- internal records ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Home:
    """A participant's home node for one session."""

    ref: NodeRef
    name: str  # configured name (traffic node) or the master's name
    is_master: bool
    fallback: bool = False  # holds a master fallback place

    @property
    def guid(self) -> str:
        return self.ref.guid


@dataclass(eq=False, slots=True)
class Peer:
    """One control connection and, once welcomed, its client.

    The ``hello`` is kept only until the welcome; what the broker needs of it stays in
    three small fields (every online client holds one of these: keep it small)."""

    link: ClientLink
    connection_id: str
    hello: Hello | None = None
    client_id: str | None = None
    rep: RepAccount | None = None
    sessions: set[str] = field(default_factory=set)
    kind: ClientKind | None = None
    hostname: str = "?"
    utc_offset_minutes: int = 0

    @property
    def display_name(self) -> str:
        if self.rep is not None:
            return self.rep.display_name
        return self.hostname


@dataclass(eq=False, slots=True)
class _Session:
    state: SupportSession
    key: SessionKey | None = None
    homes: dict[str, _Home] = field(default_factory=dict)
    directives: dict[str, str] = field(default_factory=dict)  # client id → target text
    directive_deadline: float | None = None
    restart_of: str | None = None
    order: int = 0  # queued in this order (ties of queued_at)

    @property
    def id(self) -> str:
        return self.state.session_id


@dataclass(frozen=True, slots=True)
class _Retry:
    """No home node now; the reason, said as "retry in N s"."""

    message: str
    retry_after: int


_Resolution = _Home | ARecordDirective | SrvDirective | AnycastDirective | _Retry


def _error(code: ErrorCode, message: str, retry_after: int | None = None) -> Error:
    """An ``error`` message; the text is cut to what the protocol carries."""
    return Error(code=code, message=message[:1024], retry_after_seconds=retry_after)


def _wss(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"wss://{shown}" if port == 443 else f"wss://{shown}:{port}"


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _queue_text(queue: QueueId) -> str:
    return str(queue)


def _connection_id(node_guid: str, session: str, stream: str, direction: str) -> str:
    return f"{node_guid}|{session}|{stream}|{direction}"


def _describe_connection(connection_id: str) -> str:
    parts = connection_id.split("|")
    if len(parts) == 4:
        return f"{parts[3]} {parts[2]} (session {parts[1]})"
    return "control"


# --- views for the APIs -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionView:
    """One connection of a client to one node (``client_connections``)."""

    node_guid: str
    node_name: str
    node_hostname: str
    role: str  # primary | traffic
    since: float
    detail: str  # "control", or "publish screen:customer (session …)"


@dataclass(frozen=True, slots=True)
class ClientView:
    """A connected client as ``get_connected_clients`` and the Status page show it."""

    client_id: str
    kind: ClientKind
    hostname: str
    platform: str
    timezone_offset_seconds: int
    connected_since: float
    home_node: str | None
    connections: tuple[ConnectionView, ...]
    name: str = ""  # the representative's display name

    def nodes(self) -> list[ConnectionView]:
        """One entry per node and role (the earliest such connection), in order: the
        master under fallback is both the client's ``primary`` and a ``traffic`` node."""
        first: dict[tuple[str, str], ConnectionView] = {}
        for c in self.connections:
            seen = first.get((c.node_guid, c.role))
            if seen is None or c.since < seen.since:
                first[c.node_guid, c.role] = c
        return list(first.values())


@dataclass(frozen=True, slots=True)
class ConnectedView:
    """What this node can say about connected clients (DESIGN.md §2: the master lists
    every online client cluster-wide; a traffic node only those with an active session
    connection to it)."""

    node_guid: str
    node_role: str  # master | traffic
    clients: tuple[ClientView, ...]
    counts: Mapping[str, Mapping[ClientKind, int]]  # node GUID → kind → clients


# --- the broker -------------------------------------------------------------------------


class Broker:
    """Brokers every control connection and session of this master (see the module)."""

    def __init__(
        self,
        *,
        topology: Topology,
        signer: StreamSigner,
        authenticate_rep: RepAuthenticator,
        master_version: str,
        settings: BrokerSettings | None = None,
        keys: SessionKeyStore | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        rep_exists: Callable[[QueueId], bool] | None = None,
    ) -> None:
        self.topology = topology
        self.signer = signer
        self.settings = settings or BrokerSettings()
        self.keys = keys or SessionKeyStore()
        self.clock = clock
        self.master_version = master_version
        self._authenticate_rep = authenticate_rep
        self._rep_exists = rep_exists
        self._rng = rng or random.Random()
        snap = topology.snapshot()
        self.registry = ClientRegistry(snap.master.info)
        limit = snap.config.selection.master_fallback_limit if snap.config else 0
        self.fallback = MasterFallback(limit)
        self._selector: Selector | None = None
        from atlas.web.login.lockout import AddressLimiter

        self._rep_limiter = AddressLimiter(
            limit=self.settings.rep_login_failures, window=self.settings.rep_login_window_seconds
        )
        self._peers: dict[str, Peer] = {}  # client id → welcomed peer
        self._reps: dict[str, Peer] = {}  # the representatives among them
        self._sessions: dict[str, _Session] = {}
        self._waiting: dict[str, dict[str, _Session]] = {}  # queue id → oldest first
        self._fallback_uses: dict[str, int] = {}  # client id → sessions homed on master
        self._offline_since: dict[str, float] = {}  # traffic node GUID → first seen offline
        self._ids = itertools.count(1)
        self._connections = itertools.count(1)
        self._order = itertools.count()
        self.on_change: Callable[[], None] | None = None  # load counters, metrics

    # --- connections ---------------------------------------------------------------

    def connected(self, link: ClientLink) -> Peer:
        """A control connection opened (nothing said yet)."""
        return Peer(link=link, connection_id=f"control-{next(self._connections)}")

    def disconnected(self, peer: Peer) -> None:
        """The control connection closed: the client is offline; its sessions end."""
        client_id = peer.client_id
        if client_id is None or self._peers.get(client_id) is not peer:
            return
        now = self.clock()
        reason = (EndReason.REPRESENTATIVE_LEFT if peer.kind is ClientKind.REPRESENTATIVE
                  else EndReason.CUSTOMER_LEFT)
        for session_id in list(peer.sessions):
            record = self._sessions.get(session_id)
            if record is None:
                continue
            if reason is EndReason.REPRESENTATIVE_LEFT and record.state.representative_id is None:
                continue  # queued in its personal queue: it waits for the rep's return
            self._end(record, reason, now)
        del self._peers[client_id]
        self._reps.pop(client_id, None)
        self._fallback_uses.pop(client_id, None)
        self.fallback.release(client_id)
        with contextlib.suppress(RegistryError):
            self.registry.client_offline(client_id)
        self._changed()

    def peer(self, client_id: str) -> Peer | None:
        return self._peers.get(client_id)

    # --- dispatch --------------------------------------------------------------------

    async def handle(self, peer: Peer, message: AnyClientMessage) -> None:
        """One message the connection's state machine accepted."""
        match message:
            case Ping():
                peer.link.send(Pong(seq=message.seq))
            case Hello():
                self._hello(peer, message)
            case AuthRep():
                await self._auth_rep(peer, message)
            case AuthCustomer():
                self._auth_customer(peer, message)
            case QueueList():
                if peer.rep is not None:
                    peer.link.send(self._queue_for(peer.rep))
            case AcceptNext():
                self._accept_next(peer, message)
            case Chat():
                self._chat(peer, message)
            case ShowMyScreen():
                self._show_my_screen(peer, message)
            case EndSession():
                self._end_session(peer, message)
            case ReportHome():
                self._report_home(peer, message)
            case GenerateSessionKey():
                self._generate_session_key(peer, message)
            case RefreshGrant():
                self._refresh_grant(peer, message)

    # --- hello and authentication ------------------------------------------------------

    def _hello(self, peer: Peer, hello: Hello) -> None:
        peer.hello = hello
        peer.kind = hello.kind
        peer.hostname = hello.hostname
        peer.utc_offset_minutes = hello.utc_offset_minutes
        if self.settings.require_same_version and hello.software_version != self.master_version:
            peer.link.send(Error(
                code=ErrorCode.VERSION_MISMATCH,
                message=f"this site runs version {self.master_version}; update the client "
                f"(it runs {hello.software_version})",
            ))

    async def _auth_rep(self, peer: Peer, auth: AuthRep) -> None:
        now = self.clock()
        ip = peer.link.source_ip
        wait = self._rep_limiter.retry_after(ip, now)
        if wait > 0:
            seconds = max(1, int(wait + 0.999))
            peer.link.send(Error(
                code=ErrorCode.RATE_LIMITED,
                message=f"too many failed logins from your address; try again in {seconds} s",
                retry_after_seconds=seconds,
            ))
            return
        account = await self._authenticate_rep(auth.username, auth.password, now)
        if account is None:
            self._rep_limiter.failed(ip, self.clock())
            peer.link.send(Error(
                code=ErrorCode.AUTH_FAILED,
                message="wrong username or password, or the account is disabled or locked",
            ))
            return
        peer.rep = account
        self._welcome(peer)
        peer.link.send(self._queue_for(account))

    def _auth_customer(self, peer: Peer, auth: AuthCustomer) -> None:
        if peer.kind is ClientKind.PRESENTATION_ATTENDEE:
            peer.link.send(Error(code=ErrorCode.NOT_ALLOWED,
                                 message="presentations are not offered by this site"))
            return
        now = self.clock()
        try:
            key = self.keys.redeem(auth.session_key, source_ip=peer.link.source_ip, now=now)
        except RedeemRateLimited as exc:
            peer.link.send(Error(code=exc.code, message=exc.message,
                                 retry_after_seconds=exc.retry_after_seconds))
            return
        except SessionKeyError as exc:
            peer.link.send(Error(code=exc.code, message=exc.message))
            return
        self._welcome(peer)
        assert peer.client_id is not None
        session = SupportSession(
            session_id=self._new_session_id(), queue_id=_queue_text(key.queue_id),
            customer_id=peer.client_id, queued_at=now, short_key=key.short_key,
        )
        self._queue(_Session(session, key=key))

    def _welcome(self, peer: Peer) -> None:
        assert peer.hello is not None
        hello, peer.hello = peer.hello, None
        client_id = str(next(self._ids))
        now = self.clock()
        peer.client_id = client_id
        self._peers[client_id] = peer
        if peer.rep is not None:
            self._reps[client_id] = peer
        self.registry.client_online(
            client_id=client_id, kind=hello.kind, hostname=hello.hostname,
            platform=hello.platform, utc_offset_minutes=hello.utc_offset_minutes,
            software_version=hello.software_version, source_ip=peer.link.source_ip,
            now=now, connection_id=peer.connection_id,
        )
        snap = self.topology.snapshot()
        peer.link.send(Welcome(client_id=client_id, epoch=snap.epoch,
                               master_addresses=snap.master.control_urls))
        self._changed()

    # --- session keys -------------------------------------------------------------------

    def issue_session_key(
        self, queue_id: str, ttl: int | str | None = None, *, created_by: str | None = None
    ) -> SessionKeyReply:
        """``generate_session_key``: a single-use key for ``queue_id`` (``general``,
        ``rep:ID``, ``rep_username:NAME``). Raises
        :class:`~atlas.broker.session_keys.SessionKeyRequestError` for a bad request
        (including a representative that does not exist) and
        :class:`~atlas.broker.session_keys.SessionKeyStoreFull`."""
        queue = QueueId.parse(queue_id)
        if queue.kind is not QueueKind.GENERAL and self._rep_exists is not None:
            if not self._rep_exists(queue):
                raise SessionKeyRequestError(
                    "queue_id", f"{queue_id[:80]!r}: no such representative"
                )
        key = self.keys.issue(queue, self.clock(), ttl, created_by=created_by)
        snap = self.topology.snapshot()
        # the site is served by the primary master: its public port goes in the link
        return key.reply(snap.site_hostname, snap.master.port)

    def _generate_session_key(self, peer: Peer, message: GenerateSessionKey) -> None:
        """A representative generates a key from the console: for its personal queue
        unless it names another queue it sees (it would not see, and so could not take,
        a session waiting anywhere else). A refused value is an ``error``; the connection
        stays open."""
        rep = peer.rep
        assert rep is not None  # the kind table lets only representatives send it
        queue_id = message.queue_id if message.queue_id is not None else f"rep:{rep.id}"
        visible = self._visible_queues(rep)
        try:
            queue = QueueId.parse(queue_id)
            if str(queue) not in visible:
                peer.link.send(Error(
                    code=ErrorCode.NOT_ALLOWED,
                    message=f"queue_id {queue_id[:80]!r}: you can generate keys only for "
                    f"the queues you see: {', '.join(sorted(visible))}"))
                return
            reply = self.issue_session_key(str(queue), message.ttl,
                                           created_by=f"rep:{rep.username}")
        except SessionKeyRequestError as exc:
            peer.link.send(Error(code=ErrorCode.BAD_REQUEST,
                                 message=f"{exc.field}: {exc.message}"[:1024]))
            return
        except SessionKeyStoreFull as exc:
            peer.link.send(Error(code=ErrorCode.SERVER_BUSY, message=str(exc)[:1024]))
            return
        peer.link.send(SessionKeyIssued(short_key=reply.short_key, key_url=reply.key_url,
                                        expires=reply.expires, queue_id=reply.queue_id))

    # --- queues -------------------------------------------------------------------------

    @staticmethod
    def _visible_queues(rep: RepAccount) -> frozenset[str]:
        return frozenset({"general", f"rep:{rep.id}", f"rep_username:{rep.username}"})

    def _queued(self, queues: frozenset[str], limit: int | None = None) -> list[_Session]:
        """Sessions waiting in ``queues``, oldest first (at most ``limit``)."""
        waiting = [iter(self._waiting[q].values()) for q in queues if q in self._waiting]
        merged = heapq.merge(*waiting, key=lambda r: r.order)
        return list(itertools.islice(merged, limit))

    def _queued_count(self, queues: frozenset[str]) -> int:
        return sum(len(self._waiting.get(q, ())) for q in queues)

    def _unqueue(self, record: _Session) -> None:
        waiting = self._waiting.get(record.state.queue_id)
        if waiting is not None:
            waiting.pop(record.id, None)
            if not waiting:
                del self._waiting[record.state.queue_id]

    def _queue_for(self, rep: RepAccount) -> Queue:
        visible = self._visible_queues(rep)
        entries = []
        for record in self._queued(visible, MAX_QUEUE_ENTRIES):
            customer = self.registry.get(record.state.customer_id)
            if customer is None:
                continue
            entries.append(QueueEntry(
                session_id=record.id, queue_id=record.state.queue_id,
                customer_hostname=customer.hostname, platform=customer.platform,
                queued_at=_utc(record.state.queued_at),
            ))
        return Queue(entries=tuple(entries), total=self._queued_count(visible))

    def _push_queues(self, queue_id: str) -> None:
        """Tell every online representative who sees ``queue_id`` its queue again."""
        for peer in list(self._reps.values()):
            if peer.rep is not None and queue_id in self._visible_queues(peer.rep):
                peer.link.send(self._queue_for(peer.rep))

    def _queue(self, record: _Session) -> None:
        record.order = next(self._order)
        self._sessions[record.id] = record
        waiting = self._waiting.setdefault(record.state.queue_id, {})
        waiting[record.id] = record
        customer = self._peers.get(record.state.customer_id)
        if customer is not None:
            customer.sessions.add(record.id)
            customer.link.send(SessionQueued(session_id=record.id,
                                             queue_id=record.state.queue_id,
                                             position=len(waiting)))
        self._push_queues(record.state.queue_id)
        self._changed()

    # --- accepting and starting -----------------------------------------------------------

    def _accept_next(self, peer: Peer, message: AcceptNext) -> None:
        rep = peer.rep
        assert rep is not None and peer.client_id is not None
        visible = self._visible_queues(rep)
        if message.queue_id is not None:
            if message.queue_id not in visible:
                peer.link.send(Error(code=ErrorCode.NOT_ALLOWED,
                                     message=f"you do not see queue {message.queue_id}"))
                return
            visible = frozenset({message.queue_id})
        waiting = self._queued(visible, 1)
        if not waiting:
            peer.link.send(Error(code=ErrorCode.QUEUE_EMPTY, message="no session is waiting"))
            return
        record = waiting[0]
        customer = self._peers.get(record.state.customer_id)
        if customer is None:  # should not happen: a customer's sessions end with it
            self._end(record, EndReason.CUSTOMER_LEFT, self.clock())
            peer.link.send(Error(code=ErrorCode.SESSION_NOT_FOUND,
                                 message="the customer left; try again"))
            return
        snap = self.topology.snapshot()
        now = self.clock()
        resolved: dict[str, _Resolution] = {}
        for participant in (customer, peer):
            outcome = self._resolve_home(participant, snap, now)
            resolved[participant.client_id or ""] = outcome
            if isinstance(outcome, _Retry):
                self._release_unused_fallback(resolved)
                peer.link.send(_error(ErrorCode.NO_TRAFFIC_NODE, outcome.message,
                                      outcome.retry_after))
                return
        self._unqueue(record)
        record.state = record.state.accept(peer.client_id, now)
        peer.sessions.add(record.id)
        accepted = SessionAccepted(session_id=record.id, representative=rep.display_name,
                                   customer_hostname=customer.display_name)
        customer.link.send(accepted)
        peer.link.send(accepted)
        self._push_queues(record.state.queue_id)
        for client_id, outcome in resolved.items():
            if isinstance(outcome, _Home):
                self._set_home(record, client_id, outcome, now)
            elif not isinstance(outcome, _Retry):
                self._send_directive(record, client_id, outcome, now)
        self._start_if_ready(record)
        self._changed()

    def _resolve_home(self, peer: Peer, snap: TopologySnapshot, now: float) -> _Resolution:
        """Where ``peer`` publishes: its sticky home node while viable, else a new
        choice (DESIGN.md §3), the master, or a retry hint."""
        client_id = peer.client_id
        assert client_id is not None and peer.kind is not None
        master = snap.master
        if snap.config is None:
            return _Home(NodeRef(name=master.name[:64], guid=master.guid, url=master.url),
                         master.name, is_master=True)
        selector = self._selector_for(snap.config)
        at = _utc(now)
        viable = selector.viability(snap.health, self.master_version, at).viable_set
        current = self.registry.home_node(client_id)
        if current is not None and current.guid != master.guid:
            node = snap.traffic_node(current.guid)
            if node is not None and node.name in viable:
                return self._traffic_home(node, current.guid)
            offline_at = self._offline_since.get(current.guid)
            if node is not None and offline_at is not None:
                left = self.settings.restart_window_seconds - (now - offline_at)
                if left > 0:
                    return _Retry(
                        f"traffic node {node.name} went offline; waiting for it to come "
                        f"back before choosing another (retry in {int(left + 0.999)} s)",
                        max(1, int(left + 0.999)),
                    )
        facts = ClientFacts(peer.link.source_ip, peer.utc_offset_minutes, peer.kind)
        routing = selector.route(snap.health, self.master_version, facts, now=at,
                                 rng=self._rng, fallback=self.fallback, client_id=client_id)
        match routing:
            case NodeChosen():
                guid = routing.guid or snap.guids.get(routing.node_name)
                node = next((t for t in snap.config.traffic_nodes
                             if t.name == routing.node_name), None)
                if guid is None or node is None:
                    return _Retry(f"traffic node {routing.node_name} has no known GUID yet "
                                  "(no data sync); retry later", 5)
                return self._traffic_home(node, guid)
            case ARecordDirective() | SrvDirective() | AnycastDirective():
                return routing
            case FallbackToMaster():
                return _Home(NodeRef(name=master.name[:64], guid=master.guid, url=master.url),
                             master.name, is_master=True, fallback=True)
            case NoneAvailable():
                return _Retry(f"no traffic node available; retry in "
                              f"{routing.retry_after_seconds} s ({routing.reason})",
                              routing.retry_after_seconds)
        raise AssertionError(f"unexpected routing {routing!r}")  # pragma: no cover

    @staticmethod
    def _traffic_home(node: TrafficNode, guid: str) -> _Home:
        ref = NodeRef(name=node.name[:64], guid=guid, url=_wss(node.public.host,
                                                               node.public.port))
        return _Home(ref, node.name, is_master=False)

    def _selector_for(self, config: ClusterConfig) -> Selector:
        if self._selector is None:
            self._selector = Selector(config)
        else:
            self._selector.update_config(config)
        return self._selector

    def _release_unused_fallback(self, resolved: Mapping[str, _Resolution]) -> None:
        for client_id, outcome in resolved.items():
            if isinstance(outcome, _Home) and outcome.fallback:
                if not self._fallback_uses.get(client_id):
                    self.fallback.release(client_id)

    def _set_home(self, record: _Session, client_id: str, home: _Home, now: float) -> None:
        record.homes[client_id] = home
        record.directives.pop(client_id, None)
        if home.fallback:
            self._fallback_uses[client_id] = self._fallback_uses.get(client_id, 0) + 1
        info = NodeInfo(guid=home.guid, name=home.name, hostname=_host_of(home.ref.url))
        with contextlib.suppress(RegistryError):
            self.registry.replace_home_node(client_id, info, now)

    def _send_directive(self, record: _Session, client_id: str,
                        directive: ARecordDirective | SrvDirective | AnycastDirective,
                        now: float) -> None:
        target: ARecordTarget | SrvTarget | AnycastTarget
        match directive:
            case ARecordDirective():
                target = ARecordTarget(hostname=directive.hostname, port=directive.port)
                text = directive.hostname
            case SrvDirective():
                target = SrvTarget(srv_name=directive.srv_name)
                text = directive.srv_name
            case AnycastDirective():
                target = AnycastTarget(address=directive.address, port=directive.port,
                                       tls_name=directive.tls_name)
                text = directive.address
        record.directives[client_id] = text
        record.directive_deadline = now + self.settings.directive_timeout_seconds
        peer = self._peers.get(client_id)
        if peer is not None:
            peer.link.send(HomeNodeDirective(target=target))

    def _report_home(self, peer: Peer, report: ReportHome) -> None:
        client_id = peer.client_id
        assert client_id is not None
        record = next((r for r in self._sessions.values()
                       if client_id in r.directives and not r.state.is_ended), None)
        if record is None:
            peer.link.send(Error(code=ErrorCode.NOT_ALLOWED,
                                 message="no home node directive is outstanding"))
            return
        snap = self.topology.snapshot()
        now = self.clock()
        if report.node_guid == snap.master.guid:
            self._directive_failed(record, client_id, snap, now)
            return
        node = snap.traffic_node(report.node_guid)
        viable: frozenset[str] = frozenset()
        if snap.config is not None:
            viable = self._selector_for(snap.config).viability(
                snap.health, self.master_version, _utc(now)).viable_set
        if node is None or node.name not in viable:
            peer.link.send(Error(
                code=ErrorCode.NOT_ALLOWED,
                message=f"{report.node_guid} is not a viable traffic node of this site; "
                "try the next target, or report the master's GUID to use the master",
            ))
            return
        self._set_home(record, client_id, self._traffic_home(node, report.node_guid), now)
        self._start_if_ready(record)

    def _directive_failed(self, record: _Session, client_id: str, snap: TopologySnapshot,
                          now: float) -> None:
        """The client could not reach a traffic node by the directive (it said so, or
        timed out): the master carries its traffic if the fallback limit allows."""
        limit = snap.config.selection.master_fallback_limit if snap.config else 0
        if self.fallback.try_acquire(client_id, limit):
            master = snap.master
            home = _Home(NodeRef(name=master.name[:64], guid=master.guid, url=master.url),
                         master.name, is_master=True, fallback=True)
            self._set_home(record, client_id, home, now)
            self._start_if_ready(record)
            return
        target = record.directives.get(client_id, "traffic node")
        peer = self._peers.get(client_id)
        if peer is not None:
            retry = max(1, int(snap.config.health.interval_seconds)) if snap.config else 5
            peer.link.send(_error(ErrorCode.NO_TRAFFIC_NODE,
                                  f"no traffic node available (could not reach "
                                  f"{target[:200]}; master fallback limit reached); "
                                  f"retry in {retry} s", retry))
        self._end(record, EndReason.TRAFFIC_NODE_OFFLINE, now, node_name=target[:64])

    def _start_if_ready(self, record: _Session) -> None:
        state = record.state
        if state.state is not SessionState.ACCEPTED or record.directives:
            return
        rep_id = state.representative_id
        assert rep_id is not None
        customer_home = record.homes.get(state.customer_id)
        rep_home = record.homes.get(rep_id)
        if customer_home is None or rep_home is None:
            return
        record.state = state.start(self.clock())
        self._send_to(state.customer_id, SessionStarted(
            session_id=record.id, home_node=customer_home.ref,
            streams=(self._grant(record, state.customer_id, StreamKind.CUSTOMER_SCREEN,
                                 StreamDirection.PUBLISH, customer_home),),
        ))
        # the console: the customer's screen on the customer's home node, and its own
        # screen on its own home node — a standby publisher, connected for the whole
        # session (guide: "connected to the master, its own home traffic node, and the
        # customer's home traffic node"), sending only while Show My Screen is on
        self._send_to(rep_id, SessionStarted(
            session_id=record.id, home_node=rep_home.ref,
            streams=(self._grant(record, rep_id, StreamKind.CUSTOMER_SCREEN,
                                 StreamDirection.SUBSCRIBE, customer_home),
                     self._grant(record, rep_id, StreamKind.REPRESENTATIVE_SCREEN,
                                 StreamDirection.PUBLISH, rep_home)),
        ))
        self._changed()

    def _grant(self, record: _Session, client_id: str, stream: StreamKind,
               direction: StreamDirection, node: _Home) -> StreamGrant:
        value: Direction = "publish" if direction is StreamDirection.PUBLISH else "subscribe"
        token = self.signer.issue(
            node_guid=node.guid, participant=client_id, session=record.id,
            direction=value, stream=stream.value, now=self.clock(),
            ttl=self.settings.token_ttl_seconds,
        )
        return StreamGrant(stream=stream, direction=direction, node=node.ref, token=token)

    # --- in a session -------------------------------------------------------------------

    def _participant_session(self, peer: Peer, session_id: str) -> _Session | None:
        record = self._sessions.get(session_id)
        if record is None or peer.client_id not in record.state.participants():
            peer.link.send(Error(code=ErrorCode.SESSION_NOT_FOUND,
                                 message=f"you are in no session {session_id}"))
            return None
        return record

    def _chat(self, peer: Peer, chat: Chat) -> None:
        record = self._participant_session(peer, chat.session_id)
        if record is None:
            return
        kind = peer.kind
        assert kind is not None
        line = ChatDelivered(session_id=record.id, sender_kind=kind,
                             sender_name=peer.display_name[:255], text=chat.text,
                             sent_at=_utc(self.clock()))
        for client_id in record.state.participants():
            self._send_to(client_id, line)

    def _show_my_screen(self, peer: Peer, message: ShowMyScreen) -> None:
        record = self._participant_session(peer, message.session_id)
        if record is None:
            return
        state = record.state
        if state.representative_id != peer.client_id:
            peer.link.send(Error(code=ErrorCode.NOT_ALLOWED,
                                 message="only the session's representative shows a screen"))
            return
        try:
            record.state = state.set_show_my_screen(message.on, self.clock())
        except SessionTransitionError as exc:
            peer.link.send(_error(ErrorCode.NOT_ALLOWED, str(exc)))
            return
        rep_id, customer_id = state.representative_id, state.customer_id
        assert rep_id is not None
        # The representative's publish grant came with session_started (it stays
        # connected on its home node, on standby, and starts or stops sending itself);
        # only the customer's view of the stream is granted and revoked here.
        stream = StreamKind.REPRESENTATIVE_SCREEN
        if message.on:
            rep_home = record.homes[rep_id]
            self._send_to(customer_id, StreamGranted(session_id=record.id, grant=self._grant(
                record, customer_id, stream, StreamDirection.SUBSCRIBE, rep_home)))
        else:
            self._send_to(customer_id, StreamRevoked(session_id=record.id, stream=stream))

    def _refresh_grant(self, peer: Peer, message: RefreshGrant) -> None:
        """A fresh token for a stream the participant still holds (same stream, direction
        and node: the publisher's home node of this session), or an ``error`` saying why
        not. The grants held are :data:`atlas.broker.session_state.STREAM_GRANTS`."""
        record = self._participant_session(peer, message.session_id)
        if record is None:
            return
        state = record.state
        what = f"{message.direction.value} {message.stream.value}"
        check = state.grant(peer.client_id or "", message.stream, message.direction)
        assert check is not None  # _participant_session checked it is a participant
        if check is GrantCheck.REVOKED:
            peer.link.send(_error(ErrorCode.GRANT_REVOKED,
                                  f"your grant to {what} in session {record.id} was revoked"))
            return
        if check is not GrantCheck.HELD:
            why = ("the session has not started" if check is GrantCheck.NOT_STARTED
                   else "it was never granted to you in this session")
            peer.link.send(_error(ErrorCode.STREAM_NOT_GRANTED,
                                  f"you hold no grant to {what} in session {record.id}: {why}"))
            return
        publisher = state.participant_id(PUBLISHER[message.stream])
        home = record.homes.get(publisher or "")
        if home is None:  # a started session knows both homes
            peer.link.send(_error(ErrorCode.INTERNAL_ERROR,
                                  f"no home node is known for {message.stream.value}"))
            return
        assert peer.client_id is not None
        peer.link.send(StreamGranted(session_id=record.id, grant=self._grant(
            record, peer.client_id, message.stream, message.direction, home)))

    def _end_session(self, peer: Peer, message: EndSession) -> None:
        record = self._participant_session(peer, message.session_id)
        if record is None:
            return
        if record.state.is_ended:
            peer.link.send(Error(code=ErrorCode.SESSION_NOT_FOUND,
                                 message=f"session {record.id} has already ended"))
            return
        reason = (EndReason.REPRESENTATIVE_ENDED if peer.kind is ClientKind.REPRESENTATIVE
                  else EndReason.CUSTOMER_LEFT)
        self._end(record, reason, self.clock())

    def _end(self, record: _Session, reason: EndReason, now: float, *,
             node_name: str | None = None) -> None:
        """End a session for ``reason``: tell both, free fallback places, forget it."""
        if record.state.is_ended:
            return
        was_queued = record.state.state is SessionState.QUEUED
        if was_queued:
            self._unqueue(record)
        if reason is EndReason.TRAFFIC_NODE_OFFLINE and node_name is None:
            node_name = "(unknown)"
        try:
            record.state = record.state.end(reason, now, node_name=node_name)
        except SessionTransitionError:
            log.warning("session %s cannot end for %s in state %s", record.id, reason,
                        record.state.state)
            return
        ended = SessionEnded(session_id=record.id, reason=reason,
                             message=record.state.end_message()[:1024],
                             node_name=(node_name or None) and node_name[:64],
                             restart=record.state.restart_advised)
        for client_id in record.state.participants():
            peer = self._peers.get(client_id)
            if peer is not None:
                peer.sessions.discard(record.id)
                peer.link.send(ended)
            home = record.homes.get(client_id)
            if home is not None and home.fallback:
                left = self._fallback_uses.get(client_id, 1) - 1
                if left > 0:
                    self._fallback_uses[client_id] = left
                else:
                    self._fallback_uses.pop(client_id, None)
                    self.fallback.release(client_id)
            for c in list(self._stream_connections(client_id, record.id)):
                self.registry.connection_closed(client_id, c)
        del self._sessions[record.id]
        if was_queued:
            self._push_queues(record.state.queue_id)
        if reason is EndReason.TRAFFIC_NODE_OFFLINE:
            self._requeue_restart(record, now)
        self._changed()

    def _requeue_restart(self, ended: _Session, now: float) -> None:
        """Queue the session again in its representative's personal queue."""
        state = ended.state
        rep_peer = self._peers.get(state.representative_id or "")
        if state.customer_id not in self._peers or rep_peer is None or rep_peer.rep is None:
            return
        restart = SupportSession(
            session_id=self._new_session_id(), queue_id=f"rep:{rep_peer.rep.id}",
            customer_id=state.customer_id, queued_at=now,
        )
        self._queue(_Session(restart, restart_of=ended.id))

    def _stream_connections(self, client_id: str, session_id: str) -> Iterable[str]:
        client = self.registry.get(client_id)
        if client is None:
            return ()
        marker = f"|{session_id}|"
        return [c.connection_id for c in client.connections if marker in c.connection_id]

    def _send_to(self, client_id: str, message: AnyMasterMessage) -> None:
        peer = self._peers.get(client_id)
        if peer is not None:
            peer.link.send(message)

    def _new_session_id(self) -> str:
        return "s" + secrets.token_hex(8)

    # --- periodic work ---------------------------------------------------------------------

    def tick(self) -> None:
        """Directive timeouts, expired keys of queued sessions, offline traffic nodes."""
        now = self.clock()
        snap = self.topology.snapshot()
        if snap.config is not None:
            self._selector_for(snap.config)
        for record in list(self._sessions.values()):
            if (record.directives and record.directive_deadline is not None
                    and now >= record.directive_deadline):
                for client_id in list(record.directives):
                    if record.state.is_ended:
                        break
                    self._directive_failed(record, client_id, snap, now)
            elif (record.state.state is SessionState.QUEUED and record.key is not None
                  and record.key.is_expired(now)):
                self._end(record, EndReason.KEY_EXPIRED, now)
        self._check_traffic_nodes(snap, now)
        self.keys.purge(now)
        self.keys.limiter.purge(now)

    def _check_traffic_nodes(self, snap: TopologySnapshot, now: float) -> None:
        """End the sessions of traffic nodes that went offline (guide, "Check
        Connections": "the session must be restarted")."""
        in_use = {h.guid for r in self._sessions.values() for h in r.homes.values()
                  if not h.is_master}
        in_use |= {g for g in self.registry.home_counts() if g != snap.master.guid}
        timeout = snap.config.health.timeout_seconds if snap.config else 0.0
        for guid in in_use:
            node = snap.traffic_node(guid)
            health = snap.health.get(node.name) if node is not None else None
            online = health is not None and health.online and (
                health.last_seen is None or now - health.last_seen <= timeout)
            if online:
                self._offline_since.pop(guid, None)
                continue
            self._offline_since.setdefault(guid, now)
            name = node.name if node is not None else guid
            for record in list(self._sessions.values()):
                if any(h.guid == guid for h in record.homes.values()):
                    log.info("ending session %s: traffic node %s went offline", record.id, name)
                    self._end(record, EndReason.TRAFFIC_NODE_OFFLINE, now, node_name=name)
            with contextlib.suppress(RegistryError):
                self.registry.node_offline(guid)

    # --- stream connections reported by traffic nodes --------------------------------------

    def apply_stream_report(self, node: NodeInfo, *, reset: bool,
                            events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Stream connections opened and closed on ``node`` (its relay's report).

        ``reset``: forget what was known of the node first (its report starts afresh).
        Each event: ``op`` (open|close), ``session``, ``stream``, ``direction``,
        ``participant``, ``since``. Events for unknown sessions or participants are
        counted and ignored (the session may have ended meanwhile). Returns the counts
        and what the master knows of the participants, for the node's own listing.
        """
        if reset and node.guid != self.registry.master.guid:
            with contextlib.suppress(RegistryError):
                self.registry.node_offline(node.guid)
        elif reset:  # the master's own relay: keep the control connections
            for online in self.registry:
                for c in online.connections:
                    if c.role is ConnectionRole.TRAFFIC and c.node.guid == node.guid:
                        self.registry.connection_closed(online.client_id, c.connection_id)
        applied = ignored = 0
        participants: set[str] = set()
        for event in events:
            op = event.get("op")
            session_id = str(event.get("session", ""))
            participant = str(event.get("participant", ""))
            stream = str(event.get("stream", ""))
            direction = str(event.get("direction", ""))
            since = event.get("since")
            connection_id = _connection_id(node.guid, session_id, stream, direction)
            if op == "close":
                if self.registry.connection_closed(participant, connection_id) is not None:
                    applied += 1
                else:
                    ignored += 1
                continue
            record = self._sessions.get(session_id)
            if (op != "open" or record is None
                    or participant not in record.state.participants()
                    or not isinstance(since, int | float) or isinstance(since, bool)):
                ignored += 1
                continue
            try:
                self.registry.connection_opened(participant, connection_id, node,
                                                float(since))
            except RegistryError:
                ignored += 1
                continue
            applied += 1
            participants.add(participant)
        known = {}
        for client_id in participants:
            client = self.registry.get(client_id)
            if client is not None:
                known[client_id] = _client_details(client, self._peers.get(client_id))
        self._changed()
        return {"applied": applied, "ignored": ignored, "clients": known}

    # --- reading ------------------------------------------------------------------------

    def view(self) -> ConnectedView:
        """Every online client, cluster-wide, with where it is connected."""
        names: dict[str, tuple[str, str]] = {}
        clients = []
        for client in self.registry:
            peer = self._peers.get(client.client_id)
            connections = []
            for c in client.connections:
                names[c.node.guid] = (c.node.name, c.node.hostname)
                connections.append(ConnectionView(
                    node_guid=c.node.guid, node_name=c.node.name,
                    node_hostname=c.node.hostname,
                    role="primary" if c.role is ConnectionRole.PRIMARY else "traffic",
                    since=c.since,
                    detail="control" if c.role is ConnectionRole.PRIMARY
                    else _describe_connection(c.connection_id),
                ))
            clients.append(ClientView(
                client_id=client.client_id, kind=client.kind, hostname=client.hostname,
                platform=client.platform,
                timezone_offset_seconds=client.timezone_offset_seconds,
                connected_since=client.connected_since,
                home_node=client.home_node.name if client.home_node else None,
                connections=tuple(connections),
                name=peer.rep.display_name if peer is not None and peer.rep else "",
            ))
        return ConnectedView(node_guid=self.registry.master.guid, node_role="master",
                             clients=tuple(clients), counts=self.registry.counts_by_node())

    def session_count(self) -> int:
        return sum(1 for r in self._sessions.values() if r.state.is_started)

    def sessions(self) -> list[SupportSession]:
        return [r.state for r in self._sessions.values()]

    def session_homes(self, session_id: str) -> dict[str, NodeRef]:
        record = self._sessions.get(session_id)
        return {} if record is None else {c: h.ref for c, h in record.homes.items()}

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _host_of(url: str) -> str:
    rest = url.removeprefix("wss://")
    if rest.startswith("["):
        return rest[1:rest.index("]")]
    return rest.split(":", 1)[0].split("/", 1)[0]


def _client_details(client: ConnectedClient, peer: Peer | None) -> dict[str, Any]:
    return {
        "kind": client.kind.value,
        "hostname": client.hostname,
        "platform": client.platform,
        "utc_offset_minutes": client.utc_offset_minutes,
        "connected_since": client.connected_since,
        "name": peer.rep.display_name if peer is not None and peer.rep else "",
    }


# --- the node feature --------------------------------------------------------------------


class NodeTopology:
    """The topology of a running node: its configuration, health monitor and identity."""

    def __init__(self, node: Any) -> None:
        self._node = node
        self._config: ClusterConfig | None = None
        self._revision = -1
        self._guids: dict[str, str] = {}

    def snapshot(self) -> TopologySnapshot:
        from atlas.node.health_monitor import monitor_for
        from atlas.node.roles import Role, current_role
        from atlas.store import config_store

        node = self._node
        db = node.db
        ident = node.identity
        config: ClusterConfig | None = None
        if current_role(db) is Role.PRIMARY:
            revision = config_store.current_revision(db)
            if revision != self._revision:
                self._config = config_store.load(db)
                self._revision = revision
            config = self._config
        if config is None:
            path = CONTROL_PATH
            master = MasterRef(guid=ident.guid, name=ident.name, host=ident.public.host,
                               port=ident.public.port,
                               control_urls=(_wss(ident.public.host, ident.public.port)
                                             + path,))
            return TopologySnapshot(master, None, HealthSnapshot(), {}, ident.public.host)
        statuses = config_store.node_statuses(db)
        guids = {t.name: t.guid or (statuses[t.name].guid if t.name in statuses else None)
                 for t in config.traffic_nodes}
        primary = config.primary
        urls = [_wss(primary.public.host, primary.public.port) + CONTROL_PATH]
        if config.backup is not None:
            urls.append(_wss(config.backup.public.host, config.backup.public.port)
                        + CONTROL_PATH)
        master = MasterRef(guid=ident.guid, name=primary.name, host=primary.public.host,
                           port=primary.public.port, control_urls=tuple(urls))
        return TopologySnapshot(
            master, config, monitor_for(node).snapshot(),
            {n: g for n, g in guids.items() if g}, config.site_hostname,
        )


def node_rep_authenticator(node: Any) -> RepAuthenticator:
    """Representatives' logins against the node's database, off the event loop."""
    from atlas.store import representatives

    async def authenticate(username: str, password: str, now: float) -> RepAccount | None:
        rep = await asyncio.to_thread(representatives.authenticate, node.db, username,
                                      password, now)
        if rep is None:
            return None
        return RepAccount(id=rep.id, username=rep.username, display_name=rep.display_name)

    return authenticate


def node_rep_exists(node: Any) -> Callable[[QueueId], bool]:
    from atlas.store import representatives

    def exists(queue: QueueId) -> bool:
        if queue.kind is QueueKind.REP:
            return representatives.get(node.db, int(queue.value)) is not None
        return representatives.get_by_username(node.db, queue.value) is not None

    return exists


BROKER: Final = web.AppKey("atlas_broker", Broker)

_BROKERS: weakref.WeakKeyDictionary[Any, Broker] = weakref.WeakKeyDictionary()


def broker_for(node: Any, settings: BrokerSettings | None = None) -> Broker:
    """The node's broker (created on first use with its signing key)."""
    broker = _BROKERS.get(node)
    if broker is None:
        signer = load_or_create_signer(node.datadir, issuer=node.identity.guid)
        broker = Broker(
            topology=NodeTopology(node), signer=signer,
            authenticate_rep=node_rep_authenticator(node),
            master_version=node.software_version, settings=settings,
            rep_exists=node_rep_exists(node),
        )
        _BROKERS[node] = broker
    return broker


def is_master(node: Any) -> bool:
    """Whether ``node`` brokers clients: a primary master, or a standalone node."""
    from atlas.node.roles import Role, current_role

    return current_role(node.db) in (Role.PRIMARY, Role.STANDALONE)


def connected_view(app: web.Application) -> ConnectedView:
    """What this node reports as connected clients: the broker's view on a master, the
    relay's live connections on a traffic node."""
    from atlas.node.app import NODE

    node = app[NODE]
    broker = app.get(BROKER)
    if broker is not None and is_master(node):
        return broker.view()
    from atlas.relay.reporting import traffic_view

    return traffic_view(app)


def setup(app: web.Application) -> None:
    """Node feature: the broker, its periodic work and its internal report endpoint."""
    from atlas.node.app import NODE
    from atlas.node.internal_api import PREFIX, load_counters, signed

    node = app[NODE]
    broker = broker_for(node)
    app[BROKER] = broker
    counters = load_counters(node)

    def update_counters() -> None:
        if is_master(node):
            counters.connected_clients = len(broker.registry)
            counters.active_sessions = broker.session_count()

    broker.on_change = update_counters

    async def run_ticks() -> None:
        while True:
            await asyncio.sleep(broker.settings.tick_seconds)
            if not is_master(node):
                continue
            try:
                broker.tick()
            except Exception:
                log.exception("broker tick failed")

    node.add_background("broker", run_ticks)
    app.router.add_post(f"{PREFIX}/stream-connections", signed(_stream_report))
    _trust_own_key(app, broker)


def _trust_own_key(app: web.Application, broker: Broker) -> None:
    """The master is a traffic node too (master fallback): its relay must trust its own
    signing key, whichever feature was set up first."""
    from atlas.relay.endpoint import RELAY

    relay = app.get(RELAY)
    if relay is not None:
        relay.keyring.add(broker.signer.public_key())

    async def on_startup(a: web.Application) -> None:
        late = a.get(RELAY)
        if late is not None:
            late.keyring.add(broker.signer.public_key())

    app.on_startup.append(on_startup)


async def _stream_report(request: web.Request, node: Any, verified: Any,
                         body: bytes) -> dict[str, Any]:
    """``POST /internal/v1/stream-connections``: a traffic node's stream connections."""
    import json

    from atlas.node.internal_api import Refusal

    broker = request.app[BROKER]
    if not is_master(node):
        raise Refusal(409, "not_master", "this node is not the primary master")
    snap = broker.topology.snapshot()
    sender = snap.traffic_node(verified.sender)
    if sender is None:
        raise Refusal(403, "unknown_node",
                      f"{verified.sender[:64]} is not a traffic node of this cluster")
    try:
        data = json.loads(body)
    except ValueError:
        raise Refusal(400, "bad_request", "the body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise Refusal(400, "bad_request", "expected {\"events\": [...]}")
    events = [e for e in data["events"] if isinstance(e, dict)]
    info = NodeInfo(guid=verified.sender, name=sender.name, hostname=sender.public.host)
    answer = broker.apply_stream_report(info, reset=data.get("reset") is True, events=events)
    answer["seq"] = data.get("seq")
    return answer


def replace_settings(broker: Broker, **changes: Any) -> None:
    """Change some settings of a running broker (tests, the benchmark)."""
    broker.settings = replace(broker.settings, **changes)
