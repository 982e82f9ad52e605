"""``/client/control`` over real TLS: a node served in process (``inprocess_node``).

The node is standalone, so it is its own master and its own traffic node: a session's
streams go through its relay, which reports them to its broker.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import aiohttp
import pytest

from atlas.broker.service import BROKER, Broker, replace_settings
from atlas.broker.session_keys import DEFAULT_TTL_SECONDS
from atlas.broker.stream_tokens import load_trusted_keys
from atlas.clients.control import connect as control_connect
from atlas.clients.representative import RepresentativeApp
from atlas.clients.session import ClientSettings
from atlas.protocol.control import (
    MAX_MESSAGE_BYTES,
    AcceptNext,
    AnyClientMessage,
    AnyMasterMessage,
    AuthCustomer,
    AuthRep,
    ClientControlConnection,
    ClientKind,
    CloseCode,
    EndSession,
    Error,
    ErrorCode,
    GenerateSessionKey,
    Hello,
    Ping,
    Pong,
    Queue,
    SessionAccepted,
    SessionEnded,
    SessionKeyIssued,
    SessionQueued,
    SessionStarted,
    Welcome,
)
from atlas.relay.client import publish, stream_url, subscribe
from atlas.store import representatives
from atlas.store.api_accounts import Permission, create_account, issue_token
from atlas.web.control_ws import WS_MAX_MESSAGE
from tests.conftest import InProcessNode
from tests.support.reporters import ListReporter

M = TypeVar("M")
PASSWORD = "correct horse battery staple 7"


class Control:
    """A control connection as a client speaks it, checked by the client's state machine."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.conn = ClientControlConnection()

    async def send(self, message: AnyClientMessage) -> None:
        await self.ws.send_str(self.conn.send(message))

    async def receive(self, timeout: float = 10.0) -> AnyMasterMessage:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        return self.conn.receive_text(msg.data)

    async def expect(self, kind: type[M], timeout: float = 10.0) -> M:
        """The next message of ``kind``; queue updates, session_queued and
        session_accepted in between are skipped, anything else fails the test."""
        while True:
            message = await self.receive(timeout)
            if isinstance(message, kind):
                return message
            assert isinstance(message, Queue | SessionQueued | SessionAccepted), message

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Read until the master closes; its close code and reason."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code, str(msg.extra or "")


@pytest.fixture
async def master(inprocess_node: InProcessNode) -> AsyncIterator[InProcessNode]:
    representatives.create(inprocess_node.node.db, "alice", "Alice A.", PASSWORD)
    yield inprocess_node


def broker_of(node: InProcessNode) -> Broker:
    return node.app[BROKER]


async def connect(node: InProcessNode, kind: ClientKind, hostname: str = "pc") -> Control:
    session = node.client()
    ws = await session.ws_connect("/client/control")
    control = Control(ws)
    await control.send(Hello(kind=kind, software_version="1.0", platform="Linux x86_64",
                             hostname=hostname, utc_offset_minutes=120))
    return control


async def rep(node: InProcessNode, password: str = PASSWORD) -> Control:
    control = await connect(node, ClientKind.REPRESENTATIVE, "rep-laptop")
    await control.send(AuthRep(username="alice", password=password))
    return control


async def customer(node: InProcessNode, key: str | None = None) -> Control:
    if key is None:
        key = broker_of(node).issue_session_key("general", 600).short_key
    control = await connect(node, ClientKind.SUPPORT_CUSTOMER, "cust-pc")
    await control.send(AuthCustomer(session_key=key))
    return control


async def test_representative_login_and_keepalive(master: InProcessNode) -> None:
    r = await rep(master)
    welcome = await r.receive()
    assert isinstance(welcome, Welcome)
    assert welcome.master_addresses[0].endswith("/client/control")
    assert isinstance(await r.receive(), Queue)
    await r.send(Ping(seq=3))
    assert await r.expect(Pong) == Pong(seq=3)
    assert r.ws.compress == 0  # permessage-deflate is off on the control connection


@pytest.mark.parametrize("case", ["wrong password", "disabled"])
async def test_refused_representative(master: InProcessNode, case: str) -> None:
    if case == "disabled":
        account = representatives.get_by_username(master.node.db, "alice")
        assert account is not None
        representatives.update(master.node.db, account.id, enabled=False)
    r = await rep(master, "wrong" if case == "wrong password" else PASSWORD)
    error = await r.receive()
    assert isinstance(error, Error) and error.code is ErrorCode.AUTH_FAILED
    code, reason = await r.closed()
    assert code == CloseCode.NORMAL and reason.startswith("auth_failed")


async def test_refused_session_keys_and_brute_force(master: InProcessNode) -> None:
    broker = broker_of(master)
    used = broker.issue_session_key("general", 600).short_key
    first = await customer(master, used)
    assert isinstance(await first.receive(), Welcome)
    again = await customer(master, used)
    error = await again.receive()
    assert isinstance(error, Error) and error.code is ErrorCode.KEY_USED
    assert (await again.closed())[0] == CloseCode.NORMAL
    codes = []
    for i in range(7):
        c = await customer(master, f"{(int(used) + 1 + i) % 10**7:07d}")
        answer = await c.receive()
        assert isinstance(answer, Error)
        codes.append(answer.code)
        await c.closed()
    assert codes[0] is ErrorCode.KEY_INVALID and codes[-1] is ErrorCode.RATE_LIMITED


async def test_bad_frames_close_only_that_connection(master: InProcessNode) -> None:
    bystander = await rep(master)
    assert isinstance(await bystander.receive(), Welcome)
    cases: list[tuple[Any, int, str]] = [
        ("{not json", CloseCode.INVALID_PAYLOAD, "malformed message"),
        ('{"v": 1, "type": "ping", "seq": -1}', CloseCode.INVALID_PAYLOAD, "malformed"),
        ('{"v": 2, "type": "ping"}', CloseCode.PROTOCOL_ERROR, "unsupported protocol"),
        ('{"v": 1, "type": "queue_list"}', CloseCode.PROTOCOL_ERROR, "unexpected message"),
        (b"\x00\x01", CloseCode.UNSUPPORTED_DATA, "binary frame"),
        ("x" * (MAX_MESSAGE_BYTES + 1), CloseCode.MESSAGE_TOO_BIG, "oversized message"),
        # far too large: refused at the frame header, before it is read whole
        ("x" * (WS_MAX_MESSAGE + 1), 0, ""),
    ]
    for frame, code, reason in cases:
        c = await connect(master, ClientKind.SUPPORT_CUSTOMER)
        if isinstance(frame, bytes):
            await c.ws.send_bytes(frame)
        else:
            await c.ws.send_str(frame)
        got_code, got_reason = await c.closed()
        if code == 0:
            assert got_code in (CloseCode.MESSAGE_TOO_BIG, 1006)
            continue
        assert got_code == code, (frame[:40], got_code, got_reason)
        assert reason in got_reason
    await bystander.send(Ping(seq=1))
    assert await bystander.expect(Pong) == Pong(seq=1)
    assert len(broker_of(master).registry) == 1


async def test_silent_clients_are_dropped(master: InProcessNode) -> None:
    # logging in hashes a password: time for it however busy the machine is
    replace_settings(broker_of(master), idle_timeout_seconds=0.3, auth_timeout_seconds=30)
    r = await rep(master)
    assert isinstance(await r.receive(), Welcome)
    code, reason = await r.closed()
    assert code == CloseCode.POLICY_VIOLATION and "no message" in reason
    replace_settings(broker_of(master), auth_timeout_seconds=0.3)
    mute = Control(await master.client().ws_connect("/client/control"))
    code, reason = await mute.closed()
    assert code == CloseCode.POLICY_VIOLATION and "not authenticated" in reason
    await wait_until(lambda: _empty(master))


async def _empty(master: InProcessNode) -> bool:
    return len(broker_of(master).registry) == 0


async def xml(session: aiohttp.ClientSession, path: str, token: str) -> ET.Element:
    async with session.get(path, headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, await r.text()
        root = ET.fromstring(await r.read())  # noqa: S314 - our own server
    for el in root.iter():
        el.tag = el.tag.split("}")[-1]
    return root


async def wait_until(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_a_whole_session_through_the_masters_own_relay(master: InProcessNode) -> None:
    node = master.node
    guid = node.identity.guid
    assert len(load_trusted_keys(node.datadir)) == 1  # the broker made its signing key
    r = await rep(master)
    await r.expect(Welcome)
    assert (await r.receive()) == Queue(entries=(), total=0)
    c = await customer(master)
    await c.expect(Welcome)
    queued = await c.expect(SessionQueued)
    assert (await r.expect(Queue)).total == 1
    await r.send(AcceptNext())
    await r.expect(SessionAccepted)
    await c.expect(SessionAccepted)
    cstart = await c.expect(SessionStarted)
    rstart = await r.expect(SessionStarted)
    assert cstart.session_id == queued.session_id
    assert cstart.home_node.guid == guid and rstart.home_node.guid == guid
    base = master.base_url
    ssl = master.info.ssl_context()
    sid = cstart.session_id
    pub_grant, view_grant = cstart.streams[0], rstart.streams[0]
    viewer = await subscribe(stream_url(base, sid, "screen:customer", "subscribe"),
                             view_grant.token, ssl=ssl)
    publisher = await publish(stream_url(base, sid, "screen:customer", "publish"),
                              pub_grant.token, ssl=ssl)
    await publisher.send_key(b"picture")
    frame = await asyncio.wait_for(viewer.receive(), 10)
    assert frame.payload == b"picture"
    # a token is good for its own stream only: the rep's cannot publish
    with pytest.raises(Exception, match="403"):
        await publish(stream_url(base, sid, "screen:customer", "publish"), view_grant.token,
                      ssl=ssl)

    account = create_account(node.db, "reader", frozenset({Permission.COMMAND_READ})).account
    token = issue_token(node.db, account)[0]
    http = master.client()

    async def traffic_connections() -> ET.Element | None:
        root = await xml(http, "/api/command?action=get_connected_clients"
                         "&include_connections=1", token)
        roles = [e.text for e in root.iter("role")]
        return root if roles.count("traffic") == 2 else None

    root = await wait_until(traffic_connections)
    (rep_el,) = root.findall("connected_representative")
    (cust_el,) = root.findall("connected_support_customer")
    assert rep_el.findtext("hostname") == "rep-laptop"
    assert rep_el.findtext("timezone_offset") == "7200"
    assert rep_el.find("platform").get("id") == "linux"  # type: ignore[union-attr]
    since = rep_el.find("connected_since")
    assert since is not None and since.get("ts") and since.text and "T" in since.text
    links = cust_el.findall("client_connections/client_connections/client_connection")
    assert [(x.findtext("appliance_id"), x.findtext("role")) for x in links] == [
        (guid, "primary"), (guid, "traffic")]
    events = [e.text for e in cust_el.iter("event")]
    assert events[0] == "control" and events[1].startswith("publish screen:customer")
    summary = await xml(http, "/api/command?action=get_connected_client_list"
                        "&summary_only=1", token)
    counts = {c.get("type"): c.text for c in summary.iter("count")}
    assert counts == {"representative": "1", "support_customer": "1"}
    assert summary.find("connected_client_summary/appliance_summary").get("id") == guid  # type: ignore[union-attr]

    await c.send(EndSession(session_id=sid))
    assert (await r.expect(SessionEnded)).reason.value == "customer_left"
    await publisher.close()
    await viewer.close()


# --- session keys from the representative console -------------------------------------


async def test_a_representative_generates_a_key_its_customer_uses(
        master: InProcessNode) -> None:
    r = await rep(master)
    await r.expect(Welcome)
    await r.send(GenerateSessionKey(ttl=5))  # too short: refused, the console stays
    error = await r.expect(Error)
    assert error.code is ErrorCode.BAD_REQUEST and error.message.startswith("ttl: 5 seconds")
    await r.send(GenerateSessionKey(queue_id="team:3"))
    error = await r.expect(Error)
    assert error.code is ErrorCode.BAD_REQUEST and "queue_id" in error.message
    await r.send(GenerateSessionKey(ttl=600))
    issued = await r.expect(SessionKeyIssued)
    account = representatives.get_by_username(master.node.db, "alice")
    assert account is not None and issued.queue_id == f"rep:{account.id}"
    assert issued.key_url.endswith(f"/s/{issued.short_key}")
    assert issued.expires - int(time.time()) in range(598, 601)
    c = await customer(master, issued.short_key)
    await c.expect(Welcome)
    assert (await c.expect(SessionQueued)).queue_id == issued.queue_id
    queue = await r.expect(Queue)
    while queue.total == 0:
        queue = await r.expect(Queue)
    assert queue.entries[0].queue_id == issued.queue_id
    # a customer may not generate keys: that is a protocol violation, it is disconnected
    await c.ws.send_str('{"v":1,"type":"generate_session_key","queue_id":null,"ttl":null}')
    code, reason = await c.closed()
    assert code == CloseCode.PROTOCOL_ERROR and "support_customer" in reason


@pytest.mark.parametrize("ttl", [None, 3600])
async def test_rep_console_generate_key_prints_it_and_exits(
        master: InProcessNode, ttl: int | None) -> None:
    control = await control_connect(
        master.base_url, kind=ClientKind.REPRESENTATIVE,
        auth=AuthRep(username="alice", password=PASSWORD), ca_file=master.info.ca_file)
    reporter = ListReporter()
    app = RepresentativeApp(control, ClientSettings(duration=20.0), reporter,
                            generate_key=True, key_ttl=ttl)
    assert await app.run() == 0
    (key,) = [f for e, f in reporter.events if e == "session_key"]
    assert broker_of(master).keys.get(key["short_key"]) is not None
    assert key["key_url"].endswith(key["short_key"]) and key["queue_id"].startswith("rep:")
    assert key["expires"] - int(time.time()) in range(
        (ttl or DEFAULT_TTL_SECONDS) - 3, (ttl or DEFAULT_TTL_SECONDS) + 1)
    assert key["expires_at"].endswith("Z")
    assert reporter.events[-1] == ("done", {"reason": "session key generated", "exit_code": 0})
