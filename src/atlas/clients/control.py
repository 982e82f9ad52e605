"""The client's control connection to the master: a thin asyncio adapter.

Guide, "Run Test Connections": "all Bomgar Clients are always connected to the master
node while they are online". :class:`ControlClient` holds that one WebSocket over TLS
(aiohttp, permessage-deflate off, message size capped at the protocol's limit) and feeds
:class:`~atlas.protocol.control.ClientControlConnection`, the sans-I/O state machine;
everything the protocol decides lives there, this module only moves text frames.

What it does for its owner:

* says ``hello`` (kind, software version, platform, hostname, UTC offset: the real local
  offset unless overridden, :mod:`atlas.clients.host`) and authenticates;
* keeps the connection alive (``ping`` every ``ping_interval``; a connection that says
  nothing for ``ping_interval + ping_timeout`` is dropped and re-made);
* follows a ``home_node_directive`` (DESIGN.md §3: ``a_record``/``srv``/``anycast``):
  resolves it through :mod:`atlas.clients.dns_directives` from the same source address,
  tries the targets in order, and sends ``report_home`` naming the node it landed on;
* reconnects when the connection is lost, to the site or to any master address the
  ``welcome`` listed (DESIGN.md §5: after a failover the primary may be another);
* hands every master message, and what happened to the connection, to one async event
  stream (:meth:`ControlClient.events`), through a bounded queue: a consumer that stops
  reading stops the reader (and, after the keep-alive window, the connection) rather
  than growing memory.

Failures are :class:`~atlas.clients.errors.ClientFailure`: a refusal by the master
(wrong key or password, rate-limited, no traffic node …) is :class:`SiteRefused` and is
final; an unreachable site on the first connection is raised from :func:`connect`, and
after a loss the client retries for ``reconnect_window`` seconds before giving up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit

import aiohttp

from atlas.clients.dns_directives import (
    ConnectTarget,
    ResolvedTargets,
    a_record_targets,
    srv_targets,
)
from atlas.clients.errors import (
    ClientFailure,
    ProtocolFailure,
    SiteRefused,
    SiteUnreachable,
)
from atlas.clients.host import HostFacts
from atlas.clients.network import NetworkSettings, SiteAddress, connect_failure
from atlas.net.resolver import DnsServer, ResolutionError
from atlas.protocol.control import (
    MAX_MESSAGE_BYTES,
    AnycastTarget,
    AnyClientMessage,
    AnyMasterMessage,
    ARecordTarget,
    AuthCustomer,
    AuthRep,
    ClientControlConnection,
    ClientKind,
    CloseCode,
    ControlProtocolError,
    Error,
    ErrorCode,
    Hello,
    HomeNodeDirective,
    LocalProtocolError,
    Ping,
    Pong,
    ProtocolViolation,
    ReportHome,
    SessionStarted,
    SrvTarget,
    State,
    Welcome,
)

log = logging.getLogger("atlas.clients.control")

CONTROL_PATH: Final = "/client/control"
"""The master's control endpoint (``atlas.web.control_ws``)."""

Auth = AuthRep | AuthCustomer


@dataclass(frozen=True, slots=True)
class ControlOptions:
    """Timing of one control client (seconds)."""

    connect_timeout: float = 10.0
    auth_timeout: float = 15.0
    ping_interval: float = 15.0
    ping_timeout: float = 10.0
    reconnect: bool = True
    reconnect_window: float = 120.0
    """After a loss, how long to keep trying before giving up."""
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    probe_timeout: float = 5.0
    """Each attempt to land on a home node target named by a directive."""
    report_patience: float = 3.0
    """After ``report_home``, how long a refusal by the master may take to arrive."""
    event_queue: int = 256
    control_path: str = CONTROL_PATH


# --- events: what the owner sees, besides the master's messages ----------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """Authenticated on ``url`` (``reconnected``: after a loss)."""

    welcome: Welcome
    url: str
    reconnected: bool = False


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The control connection was lost; ``reconnecting`` says whether we try again."""

    reason: str
    reconnecting: bool


@dataclass(frozen=True, slots=True)
class HomeNodeLanded:
    """A directive was followed: we landed on this node and reported it to the master."""

    node_guid: str
    node_name: str
    target: str
    method: str
    failures: str = ""  # targets tried before, and why they failed


@dataclass(frozen=True, slots=True)
class HomeNodeUnreachable:
    """No target of a directive could be reached; the master falls back (DESIGN.md §3)."""

    method: str
    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The last event: the client stopped (``failure`` when it gave up on an error)."""

    failure: ClientFailure | None = None


ClientEvent = Connected | Disconnected | HomeNodeLanded | HomeNodeUnreachable | Closed
ControlEvent = AnyMasterMessage | ClientEvent


class NotConnected(ClientFailure):
    """A message could not be sent: the control connection is down right now."""

    def __init__(self, what: str) -> None:
        super().__init__("not_connected", f"cannot send {what}: not connected to the master")


# --- the client ----------------------------------------------------------------------


@dataclass
class _Link:
    """One open WebSocket and the protocol state of its conversation."""

    ws: aiohttp.ClientWebSocketResponse
    conn: ClientControlConnection
    url: str
    welcome: Welcome
    last_heard: float
    seq: int = 0


@dataclass
class _Tasks:
    items: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self.items.add(task)
        task.add_done_callback(self.items.discard)
        return task

    async def cancel_all(self) -> None:
        tasks = list(self.items)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


class ControlClient:
    """One client's control connection to the master; see the module docstring.

    ``auth`` is the authentication message (``AuthRep`` or ``AuthCustomer``); after a
    reconnect the same one is sent again unless :meth:`set_auth` changed it.
    """

    def __init__(self, site: SiteAddress, *, kind: ClientKind, auth: Auth, host: HostFacts,
                 network: NetworkSettings | None = None,
                 options: ControlOptions | None = None,
                 rng: random.Random | None = None) -> None:
        self.site = site
        self.kind = kind
        self._auth = auth
        self.host = host
        self.network = network or NetworkSettings()
        self.options = options or ControlOptions()
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._link: _Link | None = None
        self._events: asyncio.Queue[ControlEvent] = asyncio.Queue(self.options.event_queue)
        self._tasks = _Tasks()
        self._closing = False
        self._closed_event_sent = False
        self._master_urls: list[str] = [site.control_url(self.options.control_path)]
        self._report_waiters: list[asyncio.Future[AnyMasterMessage]] = []
        self._landing: HomeNodeLanded | None = None
        self.welcome: Welcome | None = None
        self.home_node_guid: str | None = None

    # public ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.ws.closed

    @property
    def url(self) -> str | None:
        return self._link.url if self._link is not None else None

    def set_auth(self, auth: Auth) -> None:
        """What to authenticate with on the next (re)connection."""
        self._auth = auth

    async def start(self) -> Welcome:
        """Connect and authenticate once; raises :class:`ClientFailure` if that fails."""
        if self._session is not None:
            raise RuntimeError("start() was already called")
        self._session = aiohttp.ClientSession(connector=self.network.connector(),
                                              timeout=aiohttp.ClientTimeout(total=None))
        try:
            link = await self._open(self._master_urls[0])
        except BaseException:
            await self._session.close()
            self._session = None
            raise
        self._adopt(link)
        self._tasks.spawn(self._run(link), "control-reader")
        await self._put(Connected(link.welcome, link.url))
        return link.welcome

    async def send(self, message: AnyClientMessage) -> None:
        """Send ``message`` now; :class:`NotConnected` while the connection is down.

        :class:`~atlas.protocol.control.LocalProtocolError` if the protocol does not allow
        it in this state (our bug; nothing is sent).
        """
        link = self._link
        if link is None or link.ws.closed or link.conn.state is State.CLOSED:
            raise NotConnected(repr(message.type))
        text = link.conn.send(message)
        try:
            await link.ws.send_str(text)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise NotConnected(f"{message.type!r} ({exc})") from None

    async def events(self) -> AsyncIterator[ControlEvent]:
        """Every event until :class:`Closed` (included)."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Closed):
                return

    async def next_event(self, timeout: float | None = None) -> ControlEvent:
        async with asyncio.timeout(timeout):
            return await self._events.get()

    async def close(self, reason: str = "") -> None:
        """Say goodbye (close 1000) and stop every task; idempotent."""
        if self._closing:
            return
        self._closing = True
        link = self._link
        if link is not None:
            await self._close_link(link, CloseCode.NORMAL, reason)
        await self._tasks.cancel_all()
        if self._session is not None:
            await self._session.close()
        if not self._closed_event_sent:
            self._closed_event_sent = True
            with contextlib.suppress(asyncio.QueueFull):
                self._events.put_nowait(Closed())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # one connection ----------------------------------------------------------------

    def _hello(self) -> Hello:
        return Hello(kind=self.kind, software_version=self.host.software_version,
                     platform=self.host.platform, hostname=self.host.hostname,
                     utc_offset_minutes=self.host.utc_offset_minutes)

    async def _open(self, url: str) -> _Link:
        """WebSocket, ``hello``, credentials, ``welcome`` — or a :class:`ClientFailure`."""
        assert self._session is not None
        where = url.removeprefix("wss://").split("/", 1)[0]
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                ws = await self._session.ws_connect(
                    url, compress=0, max_msg_size=MAX_MESSAGE_BYTES, autoclose=True,
                    autoping=True, heartbeat=None,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                )
        except Exception as exc:
            raise connect_failure(exc, where) from None
        conn = ClientControlConnection()
        try:
            async with asyncio.timeout(self.options.auth_timeout):
                await ws.send_str(conn.send(self._hello()))
                await ws.send_str(conn.send(self._auth))
                while True:
                    message = await self._receive(ws, conn)
                    if isinstance(message, Welcome):
                        loop = asyncio.get_running_loop()
                        return _Link(ws, conn, url, message, loop.time())
                    if isinstance(message, Error):
                        await ws.close(code=CloseCode.NORMAL)
                        raise SiteRefused(message)
                    # only pong may come before welcome (the state machine checked it)
        except ClientFailure:
            await self._abort(ws)
            raise
        except TimeoutError:
            await self._abort(ws)
            raise SiteUnreachable(
                "auth_timeout", f"{where} did not answer the login within "
                f"{self.options.auth_timeout:g} s"
            ) from None
        except BaseException:
            await self._abort(ws)
            raise

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse,
                       conn: ClientControlConnection) -> AnyMasterMessage:
        """The next master message; :class:`_Lost` when the connection ended."""
        msg = await ws.receive()
        if msg.type is aiohttp.WSMsgType.TEXT:
            try:
                return conn.receive_text(str(msg.data))
            except ProtocolViolation as violation:
                await ws.close(code=violation.close_code, message=violation.reason.encode())
                raise ProtocolFailure(f"the master broke the protocol: {violation}") from None
        if msg.type is aiohttp.WSMsgType.BINARY:
            try:
                conn.receive_binary(bytes(msg.data))
            except ProtocolViolation as violation:
                await ws.close(code=violation.close_code, message=violation.reason.encode())
                raise ProtocolFailure(f"the master broke the protocol: {violation}") from None
        code = ws.close_code
        reason = str(msg.extra or "") if msg.type is aiohttp.WSMsgType.CLOSE else ""
        if msg.type is aiohttp.WSMsgType.ERROR:
            reason = str(msg.data)
        with contextlib.suppress(LocalProtocolError):
            conn.receive_close(code, reason)
        raise _Lost(code, reason)

    async def _abort(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await ws.close(code=CloseCode.GOING_AWAY)

    async def _close_link(self, link: _Link, code: CloseCode, reason: str) -> None:
        with contextlib.suppress(ControlProtocolError):
            link.conn.close(code, reason)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await link.ws.close(code=int(code), message=reason.encode()[:123])

    def _adopt(self, link: _Link) -> None:
        self._link = link
        self.welcome = link.welcome
        urls = [link.url] + [u for u in link.welcome.master_addresses if u != link.url]
        for u in self._master_urls:
            if u not in urls:
                urls.append(u)
        self._master_urls = urls

    # the reader task: messages in, keep-alive, reconnects ---------------------------

    async def _run(self, link: _Link) -> None:
        failure: ClientFailure | None = None
        try:
            while True:
                reason = await self._serve(link)
                self._link = None
                if self._closing:
                    return
                again = self.options.reconnect
                await self._put(Disconnected(reason, again))
                if not again:
                    failure = SiteUnreachable("connection_lost",
                                              f"lost the connection to the master: {reason}")
                    return
                try:
                    link = await self._reconnect(reason)
                except ClientFailure as exc:
                    failure = exc
                    return
                self._adopt(link)
                await self._put(Connected(link.welcome, link.url, reconnected=True))
        finally:
            if not self._closing and not self._closed_event_sent:
                self._closed_event_sent = True
                await self._put(Closed(failure))

    async def _serve(self, link: _Link) -> str:
        """Read ``link`` until it ends; returns why it ended."""
        keepalive = self._tasks.spawn(self._keepalive(link), "control-keepalive")
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    message = await self._receive(link.ws, link.conn)
                except _Lost as lost:
                    return lost.describe()
                except ProtocolFailure as exc:
                    return str(exc)
                except (aiohttp.ClientError, ConnectionError) as exc:
                    return f"connection error: {exc}"
                link.last_heard = loop.time()
                if isinstance(message, Pong):
                    continue
                if isinstance(message, HomeNodeDirective):
                    self._tasks.spawn(self._follow(message), "home-node-directive")
                self._answer_waiters(message)
                if isinstance(message, SessionStarted) and self._landing is not None:
                    landed, self._landing = self._landing, None
                    await self._put(landed)
                await self._put(message)
        finally:
            keepalive.cancel()

    async def _keepalive(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        interval, patience = self.options.ping_interval, self.options.ping_timeout
        while not link.ws.closed:
            await asyncio.sleep(interval)
            if loop.time() - link.last_heard > interval + patience:
                log.info("no word from the master for %.0f s: reconnecting",
                         loop.time() - link.last_heard)
                await self._close_link(link, CloseCode.GOING_AWAY, "keep-alive timeout")
                return
            link.seq += 1
            with contextlib.suppress(Exception):
                await link.ws.send_str(link.conn.send(Ping(seq=link.seq)))

    async def _reconnect(self, reason: str) -> _Link:
        """Try every master address, with backoff, for ``reconnect_window`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.reconnect_window
        delay = self.options.backoff_initial
        last: ClientFailure | None = None
        while True:
            for url in list(self._master_urls):
                try:
                    return await self._open(url)
                except SiteRefused:
                    raise
                except ClientFailure as exc:
                    last = exc
            if loop.time() + delay > deadline:
                why = str(last) if last else reason
                raise SiteUnreachable(
                    "connection_lost",
                    f"lost the connection to the master and could not reconnect within "
                    f"{self.options.reconnect_window:g} s: {why}",
                )
            await asyncio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(self.options.backoff_max, delay * 2)

    async def _put(self, event: ControlEvent) -> None:
        await self._events.put(event)

    # home node directives ----------------------------------------------------------

    async def _follow(self, directive: HomeNodeDirective) -> None:
        """DESIGN.md §3: resolve, try each target in order, report the node we landed
        on; a node the master refuses (not viable, not accepting) counts as a failed
        target. With none left, report the master itself, which then carries our
        traffic if its fallback limit allows (rather than waiting for a timeout)."""
        method = directive.target.method
        failures: list[str] = []
        try:
            resolved = await directive_connect_targets(directive, self.network, self._rng)
        except ResolutionError as exc:
            failures.append(str(exc))
            resolved = ResolvedTargets(())
        failures += [f"{host}: {why}" for host, why in resolved.unresolved]
        for target in resolved.targets:
            try:
                async with asyncio.timeout(self.options.probe_timeout + 1.0):
                    node = await probe_node(f"https://{_netloc(target.hostname, target.port)}",
                                            self.network, pinned=target.address,
                                            timeout=self.options.probe_timeout)
            except (ClientFailure, TimeoutError) as exc:
                failures.append(f"{target}: {exc or 'timed out'}")
                continue
            landed = HomeNodeLanded(node.guid, node.name, str(target), method,
                                    "; ".join(failures))
            self._landing = landed  # the reader reports it just before session_started
            refusal = await self._report_home(node.guid)
            if refusal is None:
                self.home_node_guid = node.guid
                if self._landing is landed:
                    self._landing = None
                    await self._put(landed)
                return
            self._landing = None
            failures.append(f"{target}: the master refused {node.name}: {refusal}")
        reason = "; ".join(failures) or "no target"
        link = self._link
        if link is not None:
            with contextlib.suppress(ClientFailure, TimeoutError):
                async with asyncio.timeout(self.options.probe_timeout + 1.0):
                    master = await probe_node(_https_base(link.url), self.network,
                                              timeout=self.options.probe_timeout)
                await self._report_home(master.guid)
        await self._put(HomeNodeUnreachable(method, reason))

    async def _report_home(self, node_guid: str) -> str | None:
        """Send ``report_home``; the master's refusal (its ``error``), or ``None`` once
        it started the session or said nothing against it for a moment."""
        waiter: asyncio.Future[AnyMasterMessage] = asyncio.get_running_loop().create_future()
        self._report_waiters.append(waiter)
        try:
            await self.send(ReportHome(node_guid=node_guid))
            async with asyncio.timeout(self.options.report_patience):
                answer = await waiter
        except TimeoutError:
            return None
        except ClientFailure as exc:
            return str(exc)
        finally:
            with contextlib.suppress(ValueError):
                self._report_waiters.remove(waiter)
        if isinstance(answer, Error):
            return answer.message
        return None

    def _answer_waiters(self, message: AnyMasterMessage) -> None:
        if isinstance(message, SessionStarted) or (
                isinstance(message, Error) and message.code is ErrorCode.NOT_ALLOWED):
            for waiter in self._report_waiters:
                if not waiter.done():
                    waiter.set_result(message)


class _Lost(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def describe(self) -> str:
        if self.code is None:
            return self.reason or "connection closed"
        return f"closed by the master ({self.code}{': ' + self.reason if self.reason else ''})"


# --- following a directive (DESIGN.md §3) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    guid: str
    name: str


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _https_base(url: str) -> str:
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    return f"https://{rest}"


async def probe_node(base_url: str, network: NetworkSettings, *, pinned: str | None = None,
                     timeout: float = 5.0) -> NodeIdentity:
    """Which node answers at ``base_url`` (``https://host:port``; its ``/healthz``),
    connecting from the source address — to ``pinned`` if given (an address already
    resolved from SRV or given for anycast), with TLS checked against the hostname."""
    host = urlsplit(base_url).hostname or ""
    connector = network.connector(pinned=(host, pinned) if pinned else None, limit=1)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        try:
            async with session.get(f"{base_url}/healthz") as response:
                if response.status != 200:
                    raise SiteUnreachable("node_refused", f"{base_url} answered HTTP "
                                          f"{response.status}")
                doc = await response.json(content_type=None)
        except ClientFailure:
            raise
        except Exception as exc:
            raise connect_failure(exc, base_url.removeprefix("https://")) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("guid"), str):
        raise SiteUnreachable("node_refused", f"{base_url} is not an Atlas node")
    if doc.get("accepting") is False:
        raise SiteUnreachable("node_refused", f"{base_url} is not accepting new clients")
    return NodeIdentity(str(doc["guid"]), str(doc.get("name") or doc["guid"]))


async def directive_connect_targets(directive: HomeNodeDirective, network: NetworkSettings,
                                    rng: random.Random) -> ResolvedTargets:
    """The addresses to try for a directive, resolved like every other lookup
    (:mod:`atlas.clients.dns_directives`: RFC 2782 order for SRV)."""
    target = directive.target
    if isinstance(target, AnycastTarget):
        return ResolvedTargets((ConnectTarget(target.tls_name, target.address, target.port),))
    resolver = network.resolver()
    if isinstance(target, SrvTarget):
        return await srv_targets(target.srv_name, resolver, rng)
    assert isinstance(target, ARecordTarget)
    return await a_record_targets(target.hostname, target.port, resolver)


# --- the library entry point ----------------------------------------------------------


async def connect(site_url: str, *, kind: ClientKind, auth: Auth,
                  ca_file: str | Path | None = None, dns: str | DnsServer | None = None,
                  source_address: str | None = None, tz_offset_minutes: int | None = None,
                  hostname: str | None = None, options: ControlOptions | None = None,
                  reconnect: bool = True) -> ControlClient:
    """A started :class:`ControlClient` for ``site_url`` (use ``async with``).

    ``dns`` is a DNS server ``ip[:port]`` to ask instead of the system's; the
    ``source_address`` is bound for every connection and DNS query;
    ``tz_offset_minutes`` overrides the UTC offset ``hello`` reports.
    """
    site = SiteAddress.parse(site_url)
    server = DnsServer.parse(dns) if isinstance(dns, str) else dns
    network = NetworkSettings(Path(ca_file) if ca_file else None, server, source_address)
    host = HostFacts.local(tz_offset_minutes=tz_offset_minutes, hostname=hostname)
    opts = replace(options or ControlOptions(), reconnect=reconnect)
    client = ControlClient(site, kind=kind, auth=auth, host=host, network=network,
                           options=opts)
    await client.start()
    return client
