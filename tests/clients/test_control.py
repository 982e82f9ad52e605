"""The control client against a real node (the broker and ``/client/control`` over TLS).

The node runs in this process (``inprocess_node``: the same app ``atlas serve`` runs,
over real TLS on loopback), so a test can look into the broker's registry to see what
the master saw: the hello, the source address, the reported UTC offset.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from argon2 import PasswordHasher

from atlas.broker.service import BROKER, CONTROL_PATH, Broker
from atlas.clients.control import (
    CONTROL_PATH as CLIENT_CONTROL_PATH,
)
from atlas.clients.control import (
    Closed,
    Connected,
    ControlClient,
    ControlEvent,
    ControlOptions,
    Disconnected,
    directive_connect_targets,
    probe_node,
)
from atlas.clients.errors import CertificateNotTrusted, SiteRefused, SiteUnreachable
from atlas.clients.host import HostFacts
from atlas.clients.network import NetworkSettings, SiteAddress
from atlas.protocol.control import (
    AcceptNext,
    AnycastTarget,
    AuthCustomer,
    AuthRep,
    ClientKind,
    HomeNodeDirective,
    Queue,
    SessionQueued,
    SessionStarted,
    StreamDirection,
    StreamKind,
)
from atlas.store import passwords
from atlas.store import representatives as reps
from tests.conftest import InProcessNode

pytestmark = pytest.mark.timeout(60)
PASSWORD = "rep password 12345"


@pytest.fixture(autouse=True)
def fast_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024))


@pytest.fixture
def broker(inprocess_node: InProcessNode) -> Broker:
    reps.create(inprocess_node.node.db, "alice", "Alice Rep", PASSWORD)
    return inprocess_node.app[BROKER]


@pytest.fixture
async def make_client(inprocess_node: InProcessNode
                      ) -> AsyncIterator[Callable[..., ControlClient]]:
    clients: list[ControlClient] = []

    def make(kind: ClientKind, auth: Any, *, network: NetworkSettings | None = None,
             host: HostFacts | None = None, **options: Any) -> ControlClient:
        client = ControlClient(
            SiteAddress.parse(inprocess_node.base_url), kind=kind, auth=auth,
            host=host or HostFacts.local(),
            network=network or NetworkSettings(ca_file=inprocess_node.info.ca_file),
            options=ControlOptions(**options))
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


async def next_of(client: ControlClient, kind: type, timeout: float = 10.0) -> Any:
    """The next event of ``kind`` (events before it are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            event: ControlEvent = await client.next_event()
            if isinstance(event, kind):
                return event


def rep_auth(password: str = PASSWORD) -> AuthRep:
    return AuthRep(username="alice", password=password)


def test_the_client_and_the_master_agree_on_the_path() -> None:
    assert CLIENT_CONTROL_PATH == CONTROL_PATH


async def test_a_representative_logs_in_and_is_registered_as_it_said(
        inprocess_node: InProcessNode, broker: Broker,
        make_client: Callable[..., ControlClient]) -> None:
    host = HostFacts(hostname="rep-laptop", platform="TestOS x1", utc_offset_minutes=-330)
    network = NetworkSettings(ca_file=inprocess_node.info.ca_file, source_address="127.0.0.2")
    client = make_client(ClientKind.REPRESENTATIVE, rep_auth(), host=host, network=network)
    welcome = await client.start()
    connected = await next_of(client, Connected)
    assert connected.welcome == welcome and not connected.reconnected
    assert connected.url.endswith(CONTROL_PATH)
    queue = await next_of(client, Queue)
    assert queue.total == 0
    seen = broker.registry.get(welcome.client_id)
    assert seen is not None
    assert (seen.kind, seen.hostname, seen.platform) == (
        ClientKind.REPRESENTATIVE, "rep-laptop", "TestOS x1")
    assert seen.utc_offset_minutes == -330
    assert seen.source_ip == "127.0.0.2"  # the source address the cluster test routes by


async def test_wrong_password_is_a_refusal(broker: Broker,
                                           make_client: Callable[..., ControlClient]) -> None:
    client = make_client(ClientKind.REPRESENTATIVE, rep_auth("not the password"))
    with pytest.raises(SiteRefused) as info:
        await client.start()
    assert info.value.code == "auth_failed" and info.value.exit_code == 3
    assert str(info.value).startswith("wrong password:")


@pytest.mark.parametrize(("key", "code"), [("1234567", "key_invalid"), ("12", "key_invalid")])
async def test_a_bad_key_is_a_refusal(broker: Broker, make_client: Callable[..., ControlClient],
                                      key: str, code: str) -> None:
    client = make_client(ClientKind.SUPPORT_CUSTOMER, AuthCustomer(session_key=key))
    with pytest.raises(SiteRefused) as info:
        await client.start()
    assert info.value.code == code and str(info.value).startswith("bad key:")


async def test_a_used_key_is_a_refusal(broker: Broker,
                                       make_client: Callable[..., ControlClient]) -> None:
    key = broker.issue_session_key("general").short_key
    first = make_client(ClientKind.SUPPORT_CUSTOMER, AuthCustomer(session_key=key))
    await first.start()
    second = make_client(ClientKind.SUPPORT_CUSTOMER, AuthCustomer(session_key=key))
    with pytest.raises(SiteRefused) as info:
        await second.start()
    assert info.value.code == "key_used"


async def test_untrusted_certificate(broker: Broker,
                                     make_client: Callable[..., ControlClient]) -> None:
    client = make_client(ClientKind.REPRESENTATIVE, rep_auth(), network=NetworkSettings())
    with pytest.raises(CertificateNotTrusted, match="certificate not trusted: pass --ca-file"):
        await client.start()


async def test_unreachable_site() -> None:
    from tests.conftest import free_port

    client = ControlClient(SiteAddress.parse(f"https://127.0.0.1:{free_port()}"),
                           kind=ClientKind.REPRESENTATIVE, auth=rep_auth(),
                           host=HostFacts.local())
    with pytest.raises(SiteUnreachable, match="connection refused"):
        await client.start()
    await client.close()


async def test_a_whole_session_is_brokered(broker: Broker,
                                           make_client: Callable[..., ControlClient]) -> None:
    key = broker.issue_session_key("general").short_key
    customer = make_client(ClientKind.SUPPORT_CUSTOMER, AuthCustomer(session_key=key),
                           host=HostFacts(hostname="cust-pc", platform="TestOS",
                                          utc_offset_minutes=540))
    await customer.start()
    queued = await next_of(customer, SessionQueued)
    rep = make_client(ClientKind.REPRESENTATIVE, rep_auth())
    await rep.start()
    queue = await next_of(rep, Queue)
    assert [e.customer_hostname for e in queue.entries] == ["cust-pc"]
    await rep.send(AcceptNext())
    rep_started = await next_of(rep, SessionStarted)
    cust_started = await next_of(customer, SessionStarted)
    assert rep_started.session_id == cust_started.session_id == queued.session_id
    master_guid = broker.registry.master.guid
    assert cust_started.home_node.guid == rep_started.home_node.guid == master_guid
    (publish,) = cust_started.streams
    view, own = rep_started.streams
    assert (publish.stream, publish.direction) == (StreamKind.CUSTOMER_SCREEN,
                                                    StreamDirection.PUBLISH)
    assert (view.stream, view.direction) == (StreamKind.CUSTOMER_SCREEN,
                                              StreamDirection.SUBSCRIBE)
    assert view.node == cust_started.home_node  # watch on the publisher's home node
    # the console's own screen, on its own home node (on standby until Show My Screen)
    assert (own.stream, own.direction) == (StreamKind.REPRESENTATIVE_SCREEN,
                                            StreamDirection.PUBLISH)
    assert own.node == rep_started.home_node


async def test_reconnects_after_the_master_drops_it(
        broker: Broker, make_client: Callable[..., ControlClient]) -> None:
    client = make_client(ClientKind.REPRESENTATIVE, rep_auth(), backoff_initial=0.05)
    welcome = await client.start()
    await next_of(client, Queue)
    peer = broker.peer(welcome.client_id)
    assert peer is not None
    peer.link.close(1011, "test: dropped")
    lost = await next_of(client, Disconnected)
    assert lost.reconnecting and "1011" in lost.reason
    again = await next_of(client, Connected)
    assert again.reconnected and again.welcome.client_id != welcome.client_id
    await next_of(client, Queue)  # the queue is pushed again after the new login
    assert client.connected


async def test_keepalive_keeps_an_idle_client_online(
        broker: Broker, make_client: Callable[..., ControlClient]) -> None:
    from atlas.broker.service import replace_settings

    replace_settings(broker, idle_timeout_seconds=0.6)
    client = make_client(ClientKind.REPRESENTATIVE, rep_auth(), ping_interval=0.15,
                         ping_timeout=1.0)
    await client.start()
    await next_of(client, Queue)
    with pytest.raises(TimeoutError):  # nothing happens for a few idle timeouts
        await next_of(client, Disconnected, timeout=2.0)
    assert client.connected


async def test_without_keepalive_the_master_drops_an_idle_client(
        broker: Broker, make_client: Callable[..., ControlClient]) -> None:
    from atlas.broker.service import replace_settings

    replace_settings(broker, idle_timeout_seconds=0.5)
    client = make_client(ClientKind.REPRESENTATIVE, rep_auth(), ping_interval=30,
                         reconnect=False)
    await client.start()
    lost = await next_of(client, Disconnected)
    assert not lost.reconnecting
    closed = await next_of(client, Closed)
    assert closed.failure is not None and closed.failure.code == "connection_lost"


async def test_close_is_final_and_idempotent(
        broker: Broker, make_client: Callable[..., ControlClient]) -> None:
    client = make_client(ClientKind.REPRESENTATIVE, rep_auth())
    welcome = await client.start()
    await client.close()
    await client.close()
    assert isinstance(await next_of(client, Closed), Closed)
    assert not client.connected

    async def offline() -> bool:
        while broker.registry.get(welcome.client_id) is not None:
            await asyncio.sleep(0.02)
        return True

    assert await asyncio.wait_for(offline(), 5)


async def test_probing_a_node_says_which_node_answers(inprocess_node: InProcessNode) -> None:
    network = NetworkSettings(ca_file=inprocess_node.info.ca_file)
    ident = inprocess_node.node.identity
    node = await probe_node(inprocess_node.base_url, network)
    assert (node.guid, node.name) == (ident.guid, ident.name)
    # anycast: dial the address given, check TLS against the name given
    directive = HomeNodeDirective(target=AnycastTarget(
        address="127.0.0.1", port=inprocess_node.server.port, tls_name="localhost"))
    import random

    resolved = await directive_connect_targets(directive, network, random.Random(1))
    (target,) = resolved.targets
    assert (target.hostname, target.address) == ("localhost", "127.0.0.1")
    pinned = await probe_node(f"https://localhost:{target.port}", network,
                              pinned=target.address)
    assert pinned.guid == ident.guid


async def test_too_many_wrong_keys_are_rate_limited(
        broker: Broker, make_client: Callable[..., ControlClient]) -> None:
    refusals = []
    for _ in range(40):
        client = make_client(ClientKind.SUPPORT_CUSTOMER, AuthCustomer(session_key="0000000"))
        with pytest.raises(SiteRefused) as info:
            await client.start()
        refusals.append(info.value)
        if info.value.code == "rate_limited":
            break
    last = refusals[-1]
    assert last.code == "rate_limited", [r.code for r in refusals]
    assert last.exit_code == 6 and last.retry_after_seconds
    assert str(last).startswith("rate-limited:") and "retry in" in str(last)
    assert {r.code for r in refusals[:-1]} == {"key_invalid"}
