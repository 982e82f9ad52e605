"""Streams reconnect after their tokens expired, with fresh grants from the master.

A real node in this process (the master, and as a standalone node its own traffic node:
``/client/control`` and the relay over real TLS), the customer client and the
representative console of :mod:`atlas.clients` on real sockets. A stream token opens
connections only within the broker's ``token_ttl_seconds`` of being issued; here the
session runs "ten minutes" — the broker's clock and the relay's are moved forward
together — and then every stream connection drops, as when a traffic node restarts.
The clients must ask the master for fresh grants (``refresh_grant``) and reconnect: the
customer's screen keeps arriving at the console.

Two ways to notice a token is stale: the client's own count from when the grant arrived
(with a short ttl, so the test need not wait two minutes), and the node refusing the
token as expired (with the default ttl, whose window the client still thinks open).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from argon2 import PasswordHasher

from atlas.broker.service import BROKER, Broker, replace_settings
from atlas.clients.control import connect as control_connect
from atlas.clients.customer import CustomerApp
from atlas.clients.representative import RepresentativeApp
from atlas.clients.session import ClientApp, ClientSettings, ScreenSettings
from atlas.clients.streams import RetryPolicy, ScreenPublisher, StreamViewer
from atlas.protocol.control import AuthCustomer, AuthRep, ClientKind, StreamKind
from atlas.protocol.frames import CloseCode
from atlas.relay.endpoint import RELAY, RelayService
from atlas.store import passwords
from atlas.store import representatives as reps
from tests.conftest import InProcessNode
from tests.support.reporters import ListReporter

pytestmark = pytest.mark.timeout(120)
PASSWORD = "rep password 12345"
TEN_MINUTES = 600.0


@pytest.fixture(autouse=True)
def fast_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024))


class StreamReporter(ListReporter):
    def streams(self) -> list[dict[str, Any]]:
        return self.of("stream")


class SiteClock:
    """The wall clock of the master's broker and of the relay, moved forward at will."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Session:
    broker: Broker
    relay: RelayService
    clock: SiteClock
    customer: CustomerApp
    rep: RepresentativeApp
    customer_events: StreamReporter
    rep_events: StreamReporter

    def runners(self) -> list[ScreenPublisher | StreamViewer]:
        found: list[Any] = []
        for app in (self.customer, self.rep):
            if app.session is not None:
                found += list(app.session.runners.values())
        return found


async def until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` with a deadline (the apps run on this loop meanwhile)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def site(inprocess_node: InProcessNode) -> InProcessNode:
    return inprocess_node


@pytest.fixture
async def start_session(site: InProcessNode) -> AsyncIterator[Callable[..., Any]]:
    tasks: list[asyncio.Task[int]] = []
    apps: list[ClientApp] = []

    async def start(*, token_ttl: float, retry: RetryPolicy) -> Session:
        node, app = site.node, site.app
        reps.create(node.db, "alice", "Alice Rep", PASSWORD)
        broker, relay = app[BROKER], app[RELAY]
        clock = SiteClock()
        broker.clock = clock
        relay.wall_clock = clock
        replace_settings(broker, token_ttl_seconds=token_ttl)
        settings = ClientSettings(screen=ScreenSettings(size=(160, 90), fps=15.0),
                                  retry=retry, duration=100.0)
        ca = site.info.ca_file
        key = broker.issue_session_key("general").short_key
        customer_control = await control_connect(
            site.base_url, kind=ClientKind.SUPPORT_CUSTOMER,
            auth=AuthCustomer(session_key=key), ca_file=ca, hostname="customer-pc",
            reconnect=False)
        rep_control = await control_connect(
            site.base_url, kind=ClientKind.REPRESENTATIVE,
            auth=AuthRep(username="alice", password=PASSWORD), ca_file=ca)
        customer_events, rep_events = StreamReporter(), StreamReporter()
        customer = CustomerApp(customer_control, settings, customer_events)
        rep = RepresentativeApp(rep_control, settings, rep_events, accept_next=True)
        for client in (customer, rep):
            apps.append(client)
            tasks.append(asyncio.create_task(client.run()))
        return Session(broker, relay, clock, customer, rep, customer_events, rep_events)

    yield start
    for client in apps:
        client.finish("test over")
        client.wake()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    assert all(r == 0 for r in results), results


async def _ten_minutes_later_every_stream_drops(session: Session) -> int:
    """Move the site's clock ten minutes on, drop every stream connection (the node
    "restarts"); returns how many frames the console had received by then."""
    session.clock.offset += TEN_MINUTES
    before = session.rep.frames_received
    session.relay.hub.close_all(CloseCode.GOING_AWAY, "the traffic node is restarting")
    return before


def _renewed(events: StreamReporter) -> set[str]:
    return {f"{f['direction']} {f['stream']}" for f in events.streams()
            if f["state"] == "grant renewed"}


async def test_streams_renew_their_grants_before_reconnecting(
        start_session: Callable[..., Any]) -> None:
    """The client counts down each grant's connect window and, once it is (nearly)
    over, asks for a fresh grant before it reconnects: the node never sees a stale
    token."""
    policy = RetryPolicy(same_node_window=20.0, backoff_initial=0.05, backoff_max=0.5,
                         refresh_margin=0.5)
    session: Session = await start_session(token_ttl=2.0, retry=policy)
    await until(lambda: session.rep.frames_received >= 5, "the first frames")
    runners = session.runners()
    assert len(runners) == 3  # customer: publish; console: view + its standby publisher
    await until(lambda: all(r.target.expires_within(policy.refresh_margin) for r in runners),
                "every grant's connect window to be nearly over")
    before = await _ten_minutes_later_every_stream_drops(session)
    await until(lambda: session.rep.frames_received >= before + 10,
                "the customer's screen to arrive again")
    assert _renewed(session.customer_events) == {"publish screen:customer"}
    await until(lambda: _renewed(session.rep_events) == {
        "subscribe screen:customer", "publish screen:representative"},
        "the console's standby publisher to renew its grant too")
    for events in (session.customer_events, session.rep_events):
        reasons = " ".join(str(f["reason"]) for f in events.streams())
        assert "expired" not in reasons.lower()  # no token was refused
        assert [f["state"] for f in events.streams()].count("reconnected") >= 1
    # the fresh grants are for the same node (standalone: the master itself), and the
    # client knows when each stops opening connections
    for runner in session.runners():
        assert runner.target.node.guid == session.broker.registry.master.guid
        assert runner.target.connect_by is not None


async def test_a_token_the_node_refuses_as_expired_is_renewed(
        start_session: Callable[..., Any]) -> None:
    """With the default two minutes the client still believes its tokens good; the
    node, ten minutes on, refuses them as expired, and the client asks for fresh ones."""
    policy = RetryPolicy(same_node_window=20.0, backoff_initial=0.05, backoff_max=0.5)
    session: Session = await start_session(token_ttl=120.0, retry=policy)
    await until(lambda: session.rep.frames_received >= 5, "the first frames")
    customer_screen = session.rep.session
    assert customer_screen is not None
    viewer = customer_screen.runners[StreamKind.CUSTOMER_SCREEN]
    old_token = viewer.target.token
    before = await _ten_minutes_later_every_stream_drops(session)
    await until(lambda: session.rep.frames_received >= before + 10,
                "the customer's screen to arrive again")
    assert "publish screen:customer" in _renewed(session.customer_events)
    assert "subscribe screen:customer" in _renewed(session.rep_events)
    assert viewer.target.token != old_token
    # the session itself never ended: one session_started each, no session_ended
    for events in (session.customer_events, session.rep_events):
        names = [e for e, _ in events.events]
        assert names.count("started") == 1 and "ended" not in names
