"""The master's broker in process, on a fake clock (no sockets).

Every message the broker sends goes through a real ``MasterControlConnection`` and is
read back by a real ``ClientControlConnection``, so these tests also check that the
broker's message sequences are ones the control protocol allows.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from atlas.broker.registry import ConnectionRole, NodeInfo
from atlas.broker.service import (
    Broker,
    BrokerSettings,
    MasterRef,
    Peer,
    RepAccount,
    StaticTopology,
)
from atlas.broker.session_keys import (
    DEFAULT_TTL_SECONDS,
    SessionKeyRequestError,
    SessionKeyStore,
)
from atlas.broker.stream_tokens import (
    StreamKeyring,
    StreamSigner,
    WrongDirection,
    WrongNode,
    WrongSession,
    WrongStream,
)
from atlas.model.config import (
    Address,
    ClusterConfig,
    MasterNode,
    SelectionMethod,
    SelectionSettings,
    TrafficNode,
)
from atlas.protocol.control import (
    AcceptNext,
    AnyClientMessage,
    AnyMasterMessage,
    AuthCustomer,
    AuthRep,
    Chat,
    ChatDelivered,
    ClientControlConnection,
    ClientKind,
    EndReason,
    EndSession,
    Error,
    ErrorCode,
    GenerateSessionKey,
    Hello,
    HomeNodeDirective,
    MasterControlConnection,
    Ping,
    Pong,
    Queue,
    QueueList,
    ReportHome,
    SessionAccepted,
    SessionEnded,
    SessionKeyIssued,
    SessionQueued,
    SessionStarted,
    ShowMyScreen,
    State,
    StreamDirection,
    StreamGranted,
    StreamKind,
    StreamRevoked,
    Welcome,
)
from atlas.selection import HealthSnapshot, NodeHealth

VERSION = "9.9.9"
MASTER_GUID = "m" * 32
T0 = 1_700_000_000.0
M = TypeVar("M")


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeLink:
    """Both ends of a control connection, without a socket."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.master = MasterControlConnection()
        self.client = ClientControlConnection()
        self.inbox: list[AnyMasterMessage] = []
        self.closed: tuple[int, str] | None = None

    @property
    def source_ip(self) -> str:
        return self.ip

    def send(self, message: AnyMasterMessage) -> None:
        if self.master.state is State.CLOSED:
            return
        self.inbox.append(self.client.receive_text(self.master.send(message)))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def take(self, kind: type[M]) -> list[M]:
        """Remove and return the received messages of ``kind``."""
        found = [m for m in self.inbox if isinstance(m, kind)]
        self.inbox = [m for m in self.inbox if not isinstance(m, kind)]
        return found  # type: ignore[return-value]

    def one(self, kind: type[M]) -> M:
        found = self.take(kind)
        assert len(found) == 1, (kind, found, self.inbox)
        return found[0]


@dataclasses.dataclass
class Client:
    broker: Broker
    link: FakeLink
    peer: Peer

    async def say(self, message: AnyClientMessage) -> None:
        parsed = self.link.master.receive_text(self.link.client.send(message))
        await self.broker.handle(self.peer, parsed)

    @property
    def id(self) -> str:
        assert self.peer.client_id is not None
        return self.peer.client_id


REPS = {
    "alice": ("alice-password", RepAccount(1, "alice", "Alice A.")),
    "bob": ("bob-password", RepAccount(2, "bob", "Bob B.")),
}


async def fake_authenticate(username: str, password: str, now: float) -> RepAccount | None:
    entry = REPS.get(username)
    return entry[1] if entry is not None and entry[0] == password else None


def master_ref() -> MasterRef:
    return MasterRef(guid=MASTER_GUID, name="master", host="master.example.test", port=443,
                     control_urls=("wss://master.example.test/client/control",))


def traffic(name: str, *prefixes: str, accepting: bool = True) -> TrafficNode:
    return TrafficNode(name=name, guid=f"guid-{name}",
                       public=Address(host=f"{name}.example.test", port=8443),
                       accepting=accepting, prefixes=tuple(prefixes))


def cluster(*nodes: TrafficNode, limit: int = 50, **selection: Any) -> ClusterConfig:
    return ClusterConfig(
        revision=1, site_hostname="support.example.test",
        primary=MasterNode(name="master", guid=MASTER_GUID,
                           public=Address(host="master.example.test")),
        traffic_nodes=nodes,
        selection=SelectionSettings(master_fallback_limit=limit, **selection),
    )


def healthy(clock: FakeClock) -> NodeHealth:
    return NodeHealth(online=True, software_version=VERSION, config_revision=1, synced=True,
                      last_seen=clock())


def health_of(config: ClusterConfig, clock: FakeClock, *offline: str) -> HealthSnapshot:
    return HealthSnapshot({
        t.name: healthy(clock) if t.name not in offline
        else dataclasses.replace(healthy(clock), online=False, last_seen=clock() - 3600)
        for t in config.traffic_nodes
    })


@dataclasses.dataclass
class World:
    broker: Broker
    topology: StaticTopology
    clock: FakeClock
    signer: StreamSigner

    async def connect(self, kind: ClientKind, ip: str, hostname: str,
                      offset: int = 0) -> Client:
        link = FakeLink(ip)
        client = Client(self.broker, link, self.broker.connected(link))
        await client.say(Hello(kind=kind, software_version=VERSION, platform="Linux x86_64",
                               hostname=hostname, utc_offset_minutes=offset))
        return client

    async def rep(self, username: str = "alice", ip: str = "10.2.0.5") -> Client:
        client = await self.connect(ClientKind.REPRESENTATIVE, ip, f"{username}-laptop", 60)
        await client.say(AuthRep(username=username, password=REPS[username][0]))
        client.link.one(Welcome)
        client.link.one(Queue)
        return client

    async def customer(self, queue: str = "general", ip: str = "10.1.0.9",
                       hostname: str = "cust-pc") -> Client:
        key = self.broker.issue_session_key(queue, 600)
        client = await self.connect(ClientKind.SUPPORT_CUSTOMER, ip, hostname, -300)
        await client.say(AuthCustomer(session_key=key.short_key))
        client.link.one(Welcome)
        client.link.one(SessionQueued)
        return client

    def set_health(self, *offline: str) -> None:
        assert self.topology.config is not None
        self.topology.health = health_of(self.topology.config, self.clock, *offline)

    def keyring(self) -> StreamKeyring:
        return StreamKeyring([self.signer.public_key()])


def make_world(config: ClusterConfig | None = None, **settings: Any) -> World:
    clock = FakeClock()
    topology = StaticTopology(master_ref(), config)
    signer = StreamSigner.generate(issuer=MASTER_GUID)
    world = World(
        Broker(topology=topology, signer=signer, authenticate_rep=fake_authenticate,
               master_version=VERSION, settings=BrokerSettings(**settings), clock=clock,
               rng=random.Random(7)),
        topology, clock, signer,
    )
    if config is not None:
        world.set_health()
    return world


TWO_REGIONS = cluster(traffic("emea", "10.1.0.0/16"), traffic("us", "10.2.0.0/16"))


async def start_session(world: World) -> tuple[Client, Client, SessionStarted, SessionStarted]:
    rep = await world.rep()
    customer = await world.customer()
    rep.link.take(Queue)
    await rep.say(AcceptNext())
    assert rep.link.one(SessionAccepted).customer_hostname == "cust-pc"
    assert customer.link.one(SessionAccepted).representative == "Alice A."
    return rep, customer, customer.link.one(SessionStarted), rep.link.one(SessionStarted)


# --- authentication ------------------------------------------------------------------------


async def test_representative_login_welcomes_and_lists_the_queue() -> None:
    world = make_world()
    rep = await world.connect(ClientKind.REPRESENTATIVE, "10.2.0.5", "alice-laptop")
    await rep.say(AuthRep(username="alice", password="alice-password"))
    welcome = rep.link.one(Welcome)
    assert welcome.master_addresses == ("wss://master.example.test/client/control",)
    assert rep.link.one(Queue).total == 0
    assert world.broker.registry.get(welcome.client_id) is not None
    await rep.say(Ping(seq=41))
    assert rep.link.one(Pong).seq == 41


@pytest.mark.parametrize("username,password", [("alice", "wrong"), ("nobody", "x")])
async def test_wrong_credentials_end_the_conversation(username: str, password: str) -> None:
    world = make_world()
    rep = await world.connect(ClientKind.REPRESENTATIVE, "10.2.0.5", "h")
    await rep.say(AuthRep(username=username, password=password))
    error = rep.link.one(Error)
    assert error.code is ErrorCode.AUTH_FAILED
    assert rep.link.master.state is State.CLOSED
    assert rep.link.master.close_reason.startswith("auth_failed")
    assert len(world.broker.registry) == 0


async def test_representative_logins_are_rate_limited_per_address() -> None:
    world = make_world(rep_login_failures=3, rep_login_window_seconds=60)
    for _ in range(3):
        rep = await world.connect(ClientKind.REPRESENTATIVE, "10.9.9.9", "h")
        await rep.say(AuthRep(username="alice", password="wrong"))
        assert rep.link.one(Error).code is ErrorCode.AUTH_FAILED
    rep = await world.connect(ClientKind.REPRESENTATIVE, "10.9.9.9", "h")
    await rep.say(AuthRep(username="alice", password="alice-password"))  # right, but limited
    error = rep.link.one(Error)
    assert error.code is ErrorCode.RATE_LIMITED and error.retry_after_seconds == 60
    other = await world.connect(ClientKind.REPRESENTATIVE, "10.9.9.10", "h")
    await other.say(AuthRep(username="alice", password="alice-password"))
    other.link.one(Welcome)
    world.clock.now += 61
    rep = await world.connect(ClientKind.REPRESENTATIVE, "10.9.9.9", "h")
    await rep.say(AuthRep(username="alice", password="alice-password"))
    rep.link.one(Welcome)


async def test_session_keys_wrong_used_expired_and_brute_force() -> None:
    world = make_world()

    async def redeem(key: str, ip: str = "203.0.113.5") -> Error | Welcome:
        c = await world.connect(ClientKind.SUPPORT_CUSTOMER, ip, "pc")
        await c.say(AuthCustomer(session_key=key))
        return c.link.inbox[0]  # type: ignore[return-value]

    good = world.broker.issue_session_key("general", 60)
    assert isinstance(await redeem(good.short_key), Welcome)
    used = await redeem(good.short_key)
    assert isinstance(used, Error) and used.code is ErrorCode.KEY_USED
    old = world.broker.issue_session_key("general", 60)
    world.clock.now += 61
    expired = await redeem(old.short_key)
    assert isinstance(expired, Error) and expired.code is ErrorCode.KEY_EXPIRED
    codes = []
    for i in range(8):
        answer = await redeem(f"{(int(good.short_key) + 1 + i) % 10**7:07d}", "198.51.100.1")
        assert isinstance(answer, Error)
        codes.append(answer.code)
    assert codes[0] is ErrorCode.KEY_INVALID
    assert codes[-1] is ErrorCode.RATE_LIMITED  # the source ran out of tries
    fresh = world.broker.issue_session_key("general", 60)
    limited = await redeem(fresh.short_key, "198.51.100.1")  # even a good key waits
    assert isinstance(limited, Error) and limited.code is ErrorCode.RATE_LIMITED
    assert limited.retry_after_seconds and limited.retry_after_seconds >= 1
    assert isinstance(await redeem(fresh.short_key, "192.0.2.1"), Welcome)


async def test_presentation_attendees_are_refused_without_burning_a_key() -> None:
    world = make_world()
    key = world.broker.issue_session_key("general", 60)
    attendee = await world.connect(ClientKind.PRESENTATION_ATTENDEE, "10.0.0.1", "a")
    await attendee.say(AuthCustomer(session_key=key.short_key))
    assert attendee.link.one(Error).code is ErrorCode.NOT_ALLOWED
    await world.customer()  # a fresh key works; the refused one was not redeemed
    assert world.broker.keys.get(key.short_key).redeemed_at is None  # type: ignore[union-attr]


async def test_version_check_when_required() -> None:
    world = make_world(require_same_version=True)
    link = FakeLink("10.0.0.1")
    client = Client(world.broker, link, world.broker.connected(link))
    await client.say(Hello(kind=ClientKind.SUPPORT_CUSTOMER, software_version="1.0",
                           platform="p", hostname="h", utc_offset_minutes=0))
    assert link.one(Error).code is ErrorCode.VERSION_MISMATCH
    assert link.master.state is State.CLOSED


@pytest.mark.parametrize(("port", "authority"), [
    (443, "support.example.test"), (8443, "support.example.test:8443")])
def test_key_url_is_on_the_primarys_public_port(port: int, authority: str) -> None:
    world = make_world(TWO_REGIONS)
    world.topology.master = dataclasses.replace(master_ref(), port=port)
    reply = world.broker.issue_session_key("general", 300)
    assert reply.key_url == f"https://{authority}/s/{reply.short_key}"


def test_issue_session_key_checks_the_queue() -> None:
    world = make_world()
    with pytest.raises(SessionKeyRequestError):
        world.broker.issue_session_key("team:3")
    reply = world.broker.issue_session_key("rep_username:alice", 300)
    assert len(reply.short_key) == 7 and reply.short_key.isdigit()
    assert reply.key_url == f"https://support.example.test/s/{reply.short_key}"
    assert reply.expires == int(T0) + 300


# --- queues ------------------------------------------------------------------------------


async def test_personal_queues_are_seen_by_their_representative_only() -> None:
    world = make_world()
    alice, bob = await world.rep("alice"), await world.rep("bob", "10.2.0.6")
    await world.customer("rep:2")
    assert alice.link.take(Queue) == []
    pushed = bob.link.one(Queue)
    assert pushed.total == 1 and pushed.entries[0].queue_id == "rep:2"
    assert pushed.entries[0].customer_hostname == "cust-pc"
    await alice.say(AcceptNext())
    assert alice.link.one(Error).code is ErrorCode.QUEUE_EMPTY
    await alice.say(AcceptNext(queue_id="rep:2"))
    assert alice.link.one(Error).code is ErrorCode.NOT_ALLOWED
    await world.customer("general", ip="10.1.0.10", hostname="other")
    assert alice.link.one(Queue).total == 1
    assert bob.link.one(Queue).total == 2
    await bob.say(QueueList())
    assert [e.queue_id for e in bob.link.one(Queue).entries] == ["rep:2", "general"]


async def test_a_queued_session_ends_when_its_key_expires() -> None:
    world = make_world()
    rep = await world.rep()
    key = world.broker.issue_session_key("general", 60)
    customer = await world.connect(ClientKind.SUPPORT_CUSTOMER, "10.1.0.1", "pc")
    await customer.say(AuthCustomer(session_key=key.short_key))
    assert rep.link.take(Queue)[-1].total == 1
    world.clock.now += 59
    world.broker.tick()
    assert customer.link.take(SessionEnded) == []
    world.clock.now += 2
    world.broker.tick()
    ended = customer.link.one(SessionEnded)
    assert ended.reason is EndReason.KEY_EXPIRED
    assert rep.link.one(Queue).total == 0


# --- a whole session -------------------------------------------------------------------------


async def test_standalone_master_carries_the_session_itself() -> None:
    world = make_world()
    _, _, cstart, rstart = await start_session(world)
    assert cstart.home_node.guid == MASTER_GUID == rstart.home_node.guid
    (grant,) = cstart.streams
    assert (grant.stream, grant.direction) == (StreamKind.CUSTOMER_SCREEN,
                                               StreamDirection.PUBLISH)
    world.keyring().verify(grant.token, node_guid=MASTER_GUID, now=world.clock(),
                           session=cstart.session_id, stream="screen:customer",
                           direction="publish")
    assert world.broker.fallback.count == 0  # standalone: not a fallback


async def test_full_session_across_two_traffic_nodes() -> None:
    world = make_world(TWO_REGIONS)
    rep, customer, cstart, rstart = await start_session(world)
    sid = cstart.session_id
    assert cstart.home_node.guid == "guid-emea" and cstart.home_node.name == "emea"
    assert cstart.home_node.url == "wss://emea.example.test:8443"
    assert rstart.home_node.guid == "guid-us"
    # the customer publishes its screen on its own home node …
    (publish,) = cstart.streams
    assert publish.node.guid == "guid-emea" and publish.direction is StreamDirection.PUBLISH
    # … the representative receives it from the customer's home node, and connects to
    # its own home node too: a standby publisher of its screen (guide: "connected to the
    # master, its own home traffic node, and the customer's home traffic node")
    view, own = rstart.streams
    assert view.node.guid == "guid-emea" and view.direction is StreamDirection.SUBSCRIBE
    assert view.stream is StreamKind.CUSTOMER_SCREEN
    assert (own.node.guid, own.direction, own.stream) == (
        "guid-us", StreamDirection.PUBLISH, StreamKind.REPRESENTATIVE_SCREEN)
    ring, now = world.keyring(), world.clock()
    assert ring.verify(own.token, node_guid="guid-us", now=now, session=sid,
                       stream="screen:representative", direction="publish"
                       ).participant == rep.id
    grant = ring.verify(publish.token, node_guid="guid-emea", now=now, session=sid,
                        stream="screen:customer", direction="publish")
    assert grant.participant == customer.id
    assert ring.verify(view.token, node_guid="guid-emea", now=now, session=sid,
                       stream="screen:customer", direction="subscribe"
                       ).participant == rep.id
    refusals: list[tuple[Callable[[], Any], type[Exception]]] = [
        (lambda: ring.verify(publish.token, node_guid="guid-us", now=now), WrongNode),
        (lambda: ring.verify(view.token, node_guid="guid-emea", now=now,
                             direction="publish"), WrongDirection),
        (lambda: ring.verify(view.token, node_guid="guid-emea", now=now,
                             stream="screen:representative"), WrongStream),
        (lambda: ring.verify(view.token, node_guid="guid-emea", now=now,
                             session="s-other"), WrongSession),
        (lambda: StreamKeyring([StreamSigner.generate(issuer="x").public_key()]).verify(
            view.token, node_guid="guid-emea", now=now), Exception),
    ]
    for attempt, error in refusals:
        with pytest.raises(error):
            attempt()
    # the registry knows both home nodes (sticky for the client's online life)
    registry = world.broker.registry
    assert registry.home_node(customer.id).name == "emea"  # type: ignore[union-attr]
    assert registry.home_node(rep.id).name == "us"  # type: ignore[union-attr]
    assert world.broker.session_count() == 1

    # Show My Screen: the rep sends on the publisher it holds; only the customer is
    # granted a view of it on the rep's home node (and never a publish)
    await rep.say(ShowMyScreen(session_id=sid, on=True))
    assert rep.link.take(StreamGranted) == []
    cust_grant = customer.link.one(StreamGranted).grant
    assert (cust_grant.node.guid, cust_grant.direction) == ("guid-us",
                                                            StreamDirection.SUBSCRIBE)
    assert cust_grant.stream is StreamKind.REPRESENTATIVE_SCREEN
    assert ring.verify(cust_grant.token, node_guid="guid-us", now=now, session=sid,
                       stream="screen:representative", direction="subscribe"
                       ).participant == customer.id
    with pytest.raises(WrongDirection):
        ring.verify(cust_grant.token, node_guid="guid-us", now=now, direction="publish")
    await rep.say(ShowMyScreen(session_id=sid, on=True))
    assert rep.link.one(Error).code is ErrorCode.NOT_ALLOWED  # already on
    assert customer.link.take(StreamGranted) == []
    await customer.say(EndSession(session_id="nope"))
    assert customer.link.one(Error).code is ErrorCode.SESSION_NOT_FOUND
    # off: the customer's view is revoked; the rep keeps its standby publisher
    await rep.say(ShowMyScreen(session_id=sid, on=False))
    assert rep.link.take(StreamRevoked) == []
    assert customer.link.one(StreamRevoked).stream is StreamKind.REPRESENTATIVE_SCREEN

    # chat reaches every participant
    await customer.say(Chat(session_id=sid, text="hello\nthere"))
    for who in (customer, rep):
        line = who.link.one(ChatDelivered)
        assert (line.text, line.sender_kind, line.sender_name) == (
            "hello\nthere", ClientKind.SUPPORT_CUSTOMER, "cust-pc")

    # the representative ends it for both
    await rep.say(EndSession(session_id=sid, reason="done"))
    for who in (customer, rep):
        ended = who.link.one(SessionEnded)
        assert ended.reason is EndReason.REPRESENTATIVE_ENDED and not ended.restart
    assert world.broker.session_count() == 0
    await customer.say(Chat(session_id=sid, text="late"))
    assert customer.link.one(Error).code is ErrorCode.SESSION_NOT_FOUND


async def test_home_nodes_are_sticky_across_sessions() -> None:
    world = make_world(cluster(traffic("a"), traffic("b"), traffic("c"), traffic("d")))
    rep = await world.rep()
    homes = set()
    for i in range(6):
        customer = await world.customer(ip=f"10.1.0.{i + 1}", hostname=f"pc{i}")
        await rep.say(AcceptNext())
        homes.add(rep.link.one(SessionStarted).home_node.guid)
        sid = customer.link.one(SessionStarted).session_id
        await customer.say(EndSession(session_id=sid))
        rep.link.inbox.clear()
    assert len(homes) == 1


async def test_customer_or_representative_going_offline_ends_the_session() -> None:
    world = make_world(TWO_REGIONS)
    rep, customer, _, _ = await start_session(world)
    world.broker.disconnected(customer.peer)
    ended = rep.link.one(SessionEnded)
    assert ended.reason is EndReason.CUSTOMER_LEFT
    assert customer.id not in world.broker.registry
    customer2 = await world.customer(ip="10.1.0.77")
    await rep.say(AcceptNext())
    customer2.link.one(SessionStarted)
    world.broker.disconnected(rep.peer)
    assert customer2.link.one(SessionEnded).reason is EndReason.REPRESENTATIVE_LEFT
    assert world.broker.session_count() == 0 and len(world.broker.registry) == 1


# --- master fallback -------------------------------------------------------------------------


async def test_master_fallback_until_the_limit_then_no_traffic_node() -> None:
    config = cluster(traffic("emea", accepting=False), traffic("us", accepting=False),
                     limit=2)
    world = make_world(config)
    rep, customer, cstart, rstart = await start_session(world)
    assert cstart.home_node.guid == rstart.home_node.guid == MASTER_GUID
    world.keyring().verify(cstart.streams[0].token, node_guid=MASTER_GUID,
                           now=world.clock(), direction="publish")
    assert world.broker.fallback.count == 2
    second = await world.customer(ip="10.1.0.50", hostname="second")
    await rep.say(AcceptNext())  # the rep holds its place; the new customer finds none
    error = rep.link.one(Error)
    assert error.code is ErrorCode.NO_TRAFFIC_NODE
    assert "no traffic node available" in error.message and error.retry_after_seconds
    assert second.link.take(SessionAccepted) == []  # still waiting in the queue
    assert world.broker.fallback.count == 2
    await customer.say(EndSession(session_id=cstart.session_id))
    assert world.broker.fallback.count == 0  # places are held only while in a session
    await rep.say(AcceptNext())
    assert second.link.one(SessionStarted).home_node.guid == MASTER_GUID
    world.broker.disconnected(second.peer)
    world.broker.disconnected(rep.peer)
    assert world.broker.fallback.count == 0


async def test_fallback_is_not_sticky_once_a_traffic_node_is_back() -> None:
    config = cluster(traffic("emea", accepting=False))
    world = make_world(config)
    rep, customer, cstart, _ = await start_session(world)
    assert cstart.home_node.guid == MASTER_GUID
    await customer.say(EndSession(session_id=cstart.session_id))
    world.topology.config = cluster(traffic("emea"))
    world.topology.config = world.topology.config.model_copy(update={"revision": 2})
    world.set_health()
    second = await world.customer(ip="10.1.0.51")
    await rep.say(AcceptNext())
    assert second.link.one(SessionStarted).home_node.guid == "guid-emea"
    assert rep.link.take(SessionStarted)[-1].home_node.guid == "guid-emea"
    assert world.broker.fallback.count == 0


# --- a traffic node goes offline -------------------------------------------------------------


async def test_offline_traffic_node_ends_the_session_and_the_restart_waits_for_it() -> None:
    world = make_world(TWO_REGIONS, restart_window_seconds=30)
    rep, customer, cstart, _ = await start_session(world)
    world.clock.now += 20
    world.set_health("emea")
    world.broker.tick()
    for who in (customer, rep):
        ended = who.link.one(SessionEnded)
        assert ended.reason is EndReason.TRAFFIC_NODE_OFFLINE and ended.restart
        assert ended.node_name == "emea"
        assert "emea went offline" in ended.message and "restart" in ended.message
    # queued again at once in the representative's personal queue
    requeued = customer.link.one(SessionQueued)
    assert requeued.queue_id == "rep:1" and requeued.session_id != cstart.session_id
    assert rep.link.take(Queue)[-1].entries[0].session_id == requeued.session_id
    # within the window the restart waits for the same node …
    world.clock.now += 10
    await rep.say(AcceptNext(queue_id="rep:1"))
    error = rep.link.one(Error)
    assert error.code is ErrorCode.NO_TRAFFIC_NODE and "emea" in error.message
    assert error.retry_after_seconds == 20
    # … which, back online, is offered again (sticky)
    world.clock.now += 5
    world.set_health()
    world.broker.tick()
    await rep.say(AcceptNext(queue_id="rep:1"))
    assert customer.link.one(SessionStarted).home_node.guid == "guid-emea"
    assert rep.link.one(SessionStarted).home_node.guid == "guid-us"


async def test_after_the_restart_window_a_new_home_node_is_chosen() -> None:
    config = cluster(traffic("emea", "10.1.0.0/16"), traffic("backup"))
    world = make_world(config, restart_window_seconds=30)
    rep, customer, cstart, _ = await start_session(world)
    assert cstart.home_node.name == "emea"
    world.set_health("emea")
    world.broker.tick()
    assert customer.link.one(SessionEnded).restart
    world.clock.now += 31
    world.set_health("emea")
    await rep.say(AcceptNext())
    assert customer.link.one(SessionStarted).home_node.name == "backup"
    assert world.broker.registry.home_node(customer.id).name == "backup"  # type: ignore


async def test_the_master_fallback_place_is_freed_when_a_session_ends() -> None:
    config = cluster(traffic("emea"), method=SelectionMethod.ANYCAST,
                     anycast_address="192.0.2.10", limit=5)
    world = make_world(config)
    rep = await world.rep()
    customer = await world.customer()
    await rep.say(AcceptNext())
    assert rep.link.one(HomeNodeDirective).target.method == "anycast"
    await customer.say(ReportHome(node_guid="guid-emea"))
    await rep.say(ReportHome(node_guid=MASTER_GUID))  # the rep could not reach it
    assert rep.link.one(SessionStarted).home_node.guid == MASTER_GUID
    assert world.broker.fallback.count == 1
    world.set_health("emea")
    world.broker.tick()
    assert customer.link.one(SessionEnded).node_name == "emea"
    assert world.broker.fallback.count == 0


# --- DNS and anycast methods ------------------------------------------------------------------


async def test_a_record_directive_then_report_home() -> None:
    config = cluster(traffic("emea"), traffic("us"), method=SelectionMethod.A_RECORD,
                     a_record_hostname="traffic.example.test")
    world = make_world(config)
    rep = await world.rep()
    customer = await world.customer()
    await rep.say(AcceptNext())
    for who in (customer, rep):
        who.link.one(SessionAccepted)
        target = who.link.one(HomeNodeDirective).target
        assert target.method == "a_record" and target.hostname == "traffic.example.test"
    await customer.say(ReportHome(node_guid="guid-nowhere"))
    assert customer.link.one(Error).code is ErrorCode.NOT_ALLOWED  # trust but verify
    await customer.say(ReportHome(node_guid="guid-emea"))
    assert customer.link.take(SessionStarted) == []  # the rep has not reported yet
    await rep.say(ReportHome(node_guid=MASTER_GUID))  # "I reached none": use the master
    cstart = customer.link.one(SessionStarted)
    rstart = rep.link.one(SessionStarted)
    assert cstart.home_node.guid == "guid-emea" and rstart.home_node.guid == MASTER_GUID
    assert rstart.streams[0].node.guid == "guid-emea"
    assert world.broker.registry.home_node(customer.id).name == "emea"  # type: ignore
    await rep.say(ReportHome(node_guid="guid-us"))
    assert rep.link.one(Error).code is ErrorCode.NOT_ALLOWED  # nothing outstanding


async def test_a_directive_not_followed_in_time_falls_back_to_the_master() -> None:
    config = cluster(traffic("emea"), method=SelectionMethod.SRV,
                     srv_name="_atlas._tcp.example.test")
    world = make_world(config, directive_timeout_seconds=20)
    rep = await world.rep()
    customer = await world.customer()
    await rep.say(AcceptNext())
    assert customer.link.one(HomeNodeDirective).target.method == "srv"
    await customer.say(ReportHome(node_guid="guid-emea"))
    await rep.say(ReportHome(node_guid="guid-emea"))
    customer.link.one(SessionStarted)
    # a second customer never reports
    second = await world.customer(ip="10.1.0.99")
    await rep.say(AcceptNext())
    second.link.one(HomeNodeDirective)
    world.clock.now += 21
    world.set_health()  # health checks went on meanwhile
    world.broker.tick()
    assert second.link.one(SessionStarted).home_node.guid == MASTER_GUID
    assert world.broker.fallback.count == 1


# --- stream connections reported by traffic nodes ---------------------------------------------


async def test_stream_reports_show_where_each_client_is_connected() -> None:
    world = make_world(TWO_REGIONS)
    rep, customer, cstart, _ = await start_session(world)
    sid = cstart.session_id
    emea = NodeInfo(guid="guid-emea", name="emea", hostname="emea.example.test")
    events = [
        {"op": "open", "session": sid, "stream": "screen:customer", "direction": "publish",
         "participant": customer.id, "since": T0 + 1},
        {"op": "open", "session": sid, "stream": "screen:customer",
         "direction": "subscribe", "participant": rep.id, "since": T0 + 2},
        {"op": "open", "session": "s-gone", "stream": "screen:customer",
         "direction": "publish", "participant": customer.id, "since": T0},
        {"op": "open", "session": sid, "stream": "screen:customer", "direction": "publish",
         "participant": "999", "since": T0},
    ]
    answer = world.broker.apply_stream_report(emea, reset=True, events=events)
    assert (answer["applied"], answer["ignored"]) == (2, 2)
    assert answer["clients"][customer.id]["hostname"] == "cust-pc"
    assert answer["clients"][rep.id]["kind"] == "representative"
    view = {c.client_id: c for c in world.broker.view().clients}
    nodes = [(n.node_name, n.role) for n in view[rep.id].nodes()]
    assert nodes == [("master", "primary"), ("emea", "traffic")]
    assert view[rep.id].connections[1].detail.startswith("subscribe screen:customer")
    assert world.broker.view().counts["guid-emea"] == {ClientKind.SUPPORT_CUSTOMER: 1,
                                                       ClientKind.REPRESENTATIVE: 1}
    # a close, and a repeated open, are idempotent
    world.broker.apply_stream_report(emea, reset=False, events=[
        {**events[1], "op": "close"}, events[0]])
    client = world.broker.registry.get(rep.id)
    assert client is not None
    assert [c.role for c in client.connections] == [ConnectionRole.PRIMARY]
    # a reset forgets the node's connections before taking the current set
    world.broker.apply_stream_report(emea, reset=True, events=[])
    assert "guid-emea" not in world.broker.view().counts
    # when the session ends, its connections are forgotten with it
    world.broker.apply_stream_report(emea, reset=False, events=events[:2])
    await rep.say(EndSession(session_id=sid))
    assert "guid-emea" not in world.broker.view().counts


async def test_a_reset_of_the_masters_own_relay_keeps_control_connections() -> None:
    world = make_world()
    rep, customer, cstart, _ = await start_session(world)
    master = world.broker.registry.master
    event = {"op": "open", "session": cstart.session_id, "stream": "screen:customer",
             "direction": "publish", "participant": customer.id, "since": T0}
    world.broker.apply_stream_report(master, reset=True, events=[event])
    roles = [c.role for c in world.broker.registry.get(customer.id).connections]  # type: ignore[union-attr]
    assert roles == [ConnectionRole.PRIMARY, ConnectionRole.TRAFFIC]
    world.broker.apply_stream_report(master, reset=True, events=[])
    roles = [c.role for c in world.broker.registry.get(customer.id).connections]  # type: ignore[union-attr]
    assert roles == [ConnectionRole.PRIMARY]
    assert rep.id in world.broker.registry


# --- session keys from the representative console -------------------------------------


async def test_a_representative_generates_a_key_for_its_personal_queue() -> None:
    world = make_world()
    alice = await world.rep("alice")
    await alice.say(GenerateSessionKey())
    issued = alice.link.one(SessionKeyIssued)
    assert issued.queue_id == "rep:1"
    assert len(issued.short_key) == 7 and issued.short_key.isdigit()
    assert issued.key_url == f"https://support.example.test/s/{issued.short_key}"
    assert issued.expires == int(T0) + DEFAULT_TTL_SECONDS
    assert world.broker.keys.get(issued.short_key).created_by == "rep:alice"  # type: ignore[union-attr]
    # the customer who uses it waits in Alice's personal queue, and she takes the session
    customer = await world.connect(ClientKind.SUPPORT_CUSTOMER, "10.1.0.9", "cust-pc")
    await customer.say(AuthCustomer(session_key=issued.short_key))
    customer.link.one(Welcome)
    assert customer.link.one(SessionQueued).queue_id == "rep:1"
    assert alice.link.one(Queue).entries[0].queue_id == "rep:1"
    await alice.say(AcceptNext())
    assert alice.link.one(SessionAccepted).customer_hostname == "cust-pc"


async def test_a_representative_may_name_a_queue_it_sees_and_a_ttl() -> None:
    world = make_world()
    alice = await world.rep("alice")
    for queue in ("general", "rep:1", "rep_username:alice"):
        await alice.say(GenerateSessionKey(queue_id=queue, ttl=300))
        issued = alice.link.one(SessionKeyIssued)
        assert (issued.queue_id, issued.expires) == (queue, int(T0) + 300)


@pytest.mark.parametrize(("request_", "code", "words"), [
    (GenerateSessionKey(ttl=5), ErrorCode.BAD_REQUEST, "ttl: 5 seconds: expected 60 to"),
    (GenerateSessionKey(ttl=10**9), ErrorCode.BAD_REQUEST, "ttl: 1000000000 seconds"),
    (GenerateSessionKey(ttl=-1), ErrorCode.BAD_REQUEST, "ttl: -1 seconds"),
    (GenerateSessionKey(queue_id="team:3"), ErrorCode.BAD_REQUEST,
     "queue_id: 'team:3': expected general, rep:<id> or rep_username:<username>"),
    (GenerateSessionKey(queue_id="rep:x"), ErrorCode.BAD_REQUEST, "a representative id is"),
    (GenerateSessionKey(queue_id="rep:2"), ErrorCode.NOT_ALLOWED,
     "you can generate keys only for the queues you see: general, rep:1, rep_username:alice"),
    (GenerateSessionKey(queue_id="rep_username:bob"), ErrorCode.NOT_ALLOWED, "queues you see"),
])
async def test_a_refused_key_request_is_an_error_and_the_console_stays(
        request_: GenerateSessionKey, code: ErrorCode, words: str) -> None:
    world = make_world()
    alice = await world.rep("alice")
    await alice.say(request_)
    error = alice.link.one(Error)
    assert error.code is code
    assert words in error.message
    assert alice.link.inbox == [] and alice.link.closed is None
    assert alice.link.master.state is alice.link.client.state is State.AUTHENTICATED
    assert len(world.broker.keys) == 0
    await alice.say(QueueList())
    assert alice.link.one(Queue).total == 0


async def test_a_full_key_store_says_try_later() -> None:
    world = make_world()
    world.broker.keys = SessionKeyStore(max_keys=1)
    alice = await world.rep("alice")
    await alice.say(GenerateSessionKey())
    alice.link.one(SessionKeyIssued)
    await alice.say(GenerateSessionKey())
    error = alice.link.one(Error)
    assert error.code is ErrorCode.SERVER_BUSY and "outstanding" in error.message
