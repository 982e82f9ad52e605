"""One test connection of the cluster test: a real support session (guide, "Run Test
Connections").

A customer probe redeems a session key for the test representative's queue; a
representative probe logs in as the test representative and a test customer joins it.
Both clients of the pair connect from the probe's source address and report its UTC
offset, so the counterpart lands where the probe's own network would put it. They are
the same client library ``atlas customer`` and ``atlas rep`` use, in this process: real
control connections to the master, real stream connections to the home nodes the master
names (or the DNS and anycast methods find), real frames.

The connection is up when the customer's screen reaches the representative and both
hold their publish connection on their own home node — from then on every node's
``get_connected_clients`` shows where the probe is, until :meth:`TestConnection.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.clients.control import ControlClient, ControlOptions
from atlas.clients.customer import CustomerApp
from atlas.clients.errors import EXIT_REFUSED, EXIT_UNREACHABLE, ClientFailure
from atlas.clients.host import HostFacts
from atlas.clients.network import NetworkSettings, SiteAddress
from atlas.clients.representative import PERSONAL_QUEUE, RepresentativeApp
from atlas.clients.session import ClientApp, ClientSettings, ScreenSettings
from atlas.cluster_test.plan import ProbeSpec
from atlas.net.resolver import DnsServer
from atlas.protocol.control import AuthCustomer, AuthRep, ClientKind

PROBE_SCREEN = ScreenSettings(size=(320, 180), fps=5.0)
STOP_TIMEOUT = 10.0
HOSTNAME = "atlas-cluster-test"

Event = dict[str, Any]


class ProbeFailed(Exception):
    """The test connection did not come up; the message says how far it got.

    ``fatal`` (an exit code) when no later probe can do better: the test representative
    was refused, or the site is unreachable or untrusted."""

    def __init__(self, message: str, fatal: int | None = None) -> None:
        super().__init__(message)
        self.fatal = fatal


class EventLog:
    """A client reporter that keeps every event and wakes whoever waits on one."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})
        self._changed.set()

    def close(self) -> None:
        self._changed.set()

    def first(self, match: Callable[[Event], bool]) -> Event | None:
        return next((e for e in self.events if match(e)), None)

    async def changed(self) -> None:
        self._changed.clear()
        await self._changed.wait()


@dataclass(frozen=True)
class ProbeSite:
    """Where the site is and how the probe's clients reach it."""

    site: SiteAddress
    ca_file: Path | None
    dns: DnsServer | None
    representative: str
    password: str
    queue_key: Callable[[], Awaitable[str]]  # a fresh session key for the rep's queue


@dataclass
class TestConnection:
    """A running pair: the probe and its counterpart."""

    probe: ProbeSpec
    customer: EventLog
    rep: EventLog
    apps: list[ClientApp] = field(default_factory=list)
    tasks: list[asyncio.Task[int]] = field(default_factory=list)

    @property
    def probe_log(self) -> EventLog:
        return self.rep if self.probe.kind is ClientKind.REPRESENTATIVE else self.customer

    def client_id(self) -> str | None:
        e = self.probe_log.first(lambda e: e["event"] == "connected")
        return str(e["client_id"]) if e else None

    def client_home(self) -> str | None:
        """The home node the master (or DNS, anycast) gave the probe, as it reported."""
        e = self.probe_log.first(lambda e: e["event"] == "started")
        return str(e["home_node"]["name"]) if e else None

    def problem(self) -> str | None:
        """Why a client of the pair stopped, if one did."""
        for log, task in zip((self.rep, self.customer), self.tasks, strict=False):
            if not task.done():
                continue
            exc = task.exception()
            if exc is not None:
                return f"the test {log.who}: {exc}"
            return f"the test {log.who} stopped early ({_last(log)})"
        return None

    def up(self) -> bool:
        def publishing(log: EventLog) -> bool:
            return log.first(lambda e: e["event"] == "stream" and e["direction"] == "publish"
                             and e["state"] in ("connected", "reconnected")) is not None

        viewed = self.rep.first(lambda e: e["event"] == "frame"
                                and e["direction"] == "subscribe") is not None
        return viewed and publishing(self.customer) and publishing(self.rep)

    async def close(self) -> None:
        for app in self.apps:
            app.finish("cluster test probe done")
            app.wake()
        for task in self.tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, STOP_TIMEOUT)


def _last(log: EventLog) -> str:
    for e in reversed(log.events):
        if e["event"] in ("failed", "error", "ended", "done"):
            return str(e.get("message") or e.get("reason") or e["event"])
    return "no session"


async def _client(site: ProbeSite, probe: ProbeSpec, kind: ClientKind,
                  auth: AuthRep | AuthCustomer, log: EventLog,
                  make: Callable[[ControlClient, ClientSettings, EventLog], ClientApp],
                  duration: float) -> tuple[ClientApp, asyncio.Task[int]]:
    host = HostFacts.local(tz_offset_minutes=probe.offset_minutes(), hostname=HOSTNAME)
    network = NetworkSettings(site.ca_file, site.dns, probe.source_address)
    control = ControlClient(site.site, kind=kind, auth=auth, host=host, network=network,
                            options=ControlOptions(reconnect=False))
    await control.start()
    settings = ClientSettings(screen=PROBE_SCREEN, duration=duration, report_frames=True)
    app = make(control, settings, log)
    return app, asyncio.create_task(app.run(), name=f"cluster test {log.who}")


async def open_connection(site: ProbeSite, probe: ProbeSpec, timeout: float) -> TestConnection:
    """Start the pair for ``probe`` and wait until the session streams (or
    :class:`ProbeFailed`); the caller closes it."""
    conn = TestConnection(probe, EventLog("customer"), EventLog("representative"))
    key = await site.queue_key()
    try:
        rep_app, rep_task = await _client(
            site, probe, ClientKind.REPRESENTATIVE,
            AuthRep(username=site.representative, password=site.password), conn.rep,
            lambda c, s, log: RepresentativeApp(c, s, log, accept_next=True,
                                                accept_queue=PERSONAL_QUEUE), timeout * 2)
        conn.apps.append(rep_app)
        conn.tasks.append(rep_task)
        cust_app, cust_task = await _client(
            site, probe, ClientKind.SUPPORT_CUSTOMER, AuthCustomer(session_key=key),
            conn.customer, lambda c, s, log: CustomerApp(c, s, log), timeout * 2)
        conn.apps.append(cust_app)
        conn.tasks.append(cust_task)
    except ClientFailure as exc:
        await conn.close()
        rep = not conn.apps
        fatal = exc.exit_code if exc.exit_code == EXIT_UNREACHABLE or (
            rep and exc.exit_code == EXIT_REFUSED) else None
        who = "representative" if rep else "customer"
        hint = (" (the test representative's account: --rep-user, $ATLAS_REP_PASSWORD)"
                if rep and exc.exit_code == EXIT_REFUSED else "")
        raise ProbeFailed(f"the test {who} could not connect: {exc}{hint}", fatal) from None
    try:
        async with asyncio.timeout(timeout):
            while not conn.up():
                if (why := conn.problem()) is not None:
                    raise ProbeFailed(why)
                waits = [asyncio.ensure_future(conn.customer.changed()),
                         asyncio.ensure_future(conn.rep.changed())]
                await asyncio.wait([*waits, *conn.tasks], return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
    except TimeoutError:
        await conn.close()
        raise ProbeFailed(f"no session streaming within {timeout:g} s (customer: "
                          f"{_last(conn.customer)}; representative: {_last(conn.rep)})") from None
    except ProbeFailed:
        await conn.close()
        raise
    return conn
