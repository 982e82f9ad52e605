"""Control connection (DESIGN.md §2): golden JSON per message, the transition table
state by state, every refusal, and property tests — random and interleaved message
sequences never crash either end or leave the two ends disagreeing."""

from __future__ import annotations

import datetime as dt
import json
from collections import deque
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from atlas.protocol.control import (
    KIND_MESSAGES,
    MAX_CHAT_BYTES,
    MAX_CLOSE_REASON_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_QUEUE_ENTRIES,
    MESSAGES,
    TRANSITIONS,
    AcceptNext,
    AnycastTarget,
    AnyClientMessage,
    AnyMasterMessage,
    ARecordTarget,
    AuthCustomer,
    AuthRep,
    Chat,
    ChatDelivered,
    ClientControlConnection,
    ClientKind,
    CloseCode,
    EndReason,
    EndSession,
    Error,
    ErrorCode,
    GenerateSessionKey,
    Hello,
    HomeNodeDirective,
    LocalProtocolError,
    MasterControlConnection,
    NodeRef,
    Ping,
    Pong,
    ProtocolViolation,
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
    Side,
    SrvTarget,
    State,
    StreamDirection,
    StreamGrant,
    StreamGranted,
    StreamKind,
    StreamRevoked,
    ViolationKind,
    Welcome,
    next_state,
    parse_client_message,
    parse_master_message,
    serialize,
)

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
EMEA = NodeRef(name="EMEA-1", guid="b2c3d4e5-0001", url="wss://emea1.support.example.com/stream")
US = NodeRef(name="US-1", guid="b2c3d4e5-0002", url="wss://us1.support.example.com:8443/stream")
TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzaWQiOiJzMSJ9.c2ln"

# One message of every type and the exact text it is on the wire. Any change here is a
# wire-format change: bump PROTOCOL_VERSION.
GOLDEN: list[tuple[AnyClientMessage | AnyMasterMessage, str]] = [
    (
        Hello(
            kind=ClientKind.SUPPORT_CUSTOMER, software_version="1.4.2", platform="windows-x64",
            hostname="ACCT-PC-17", utc_offset_minutes=120,
        ),
        '{"v":1,"type":"hello","kind":"support_customer","software_version":"1.4.2",'
        '"platform":"windows-x64","hostname":"ACCT-PC-17","utc_offset_minutes":120}',
    ),
    (
        AuthRep(username="alice", password="s3cret pass"),
        '{"v":1,"type":"auth_rep","username":"alice","password":"s3cret pass"}',
    ),
    (AuthCustomer(session_key="0421337"), '{"v":1,"type":"auth_customer","session_key":"0421337"}'),
    (Ping(seq=7), '{"v":1,"type":"ping","seq":7}'),
    (QueueList(), '{"v":1,"type":"queue_list"}'),
    (AcceptNext(queue_id="rep:12"), '{"v":1,"type":"accept_next","queue_id":"rep:12"}'),
    (
        Chat(session_id="s1", text="Hallo — can you see my screen?\nThanks"),
        '{"v":1,"type":"chat","session_id":"s1",'
        '"text":"Hallo — can you see my screen?\\nThanks"}',
    ),
    (
        ShowMyScreen(session_id="s1", on=True),
        '{"v":1,"type":"show_my_screen","session_id":"s1","on":true}',
    ),
    (
        EndSession(session_id="s1", reason="done"),
        '{"v":1,"type":"end_session","session_id":"s1","reason":"done"}',
    ),
    (
        ReportHome(node_guid="b2c3d4e5-0001"),
        '{"v":1,"type":"report_home","node_guid":"b2c3d4e5-0001"}',
    ),
    (
        GenerateSessionKey(queue_id="rep:12", ttl=3600),
        '{"v":1,"type":"generate_session_key","queue_id":"rep:12","ttl":3600}',
    ),
    (GenerateSessionKey(), '{"v":1,"type":"generate_session_key","queue_id":null,"ttl":null}'),
    (
        RefreshGrant(session_id="s1", stream=StreamKind.CUSTOMER_SCREEN,
                     direction=StreamDirection.PUBLISH),
        '{"v":1,"type":"refresh_grant","session_id":"s1","stream":"screen:customer",'
        '"direction":"publish"}',
    ),
    (
        Welcome(
            client_id="c-9f2a", epoch=3,
            master_addresses=(
                "wss://master1.support.example.com/control",
                "wss://master2.support.example.com/control",
            ),
        ),
        '{"v":1,"type":"welcome","client_id":"c-9f2a","epoch":3,"master_addresses":'
        '["wss://master1.support.example.com/control",'
        '"wss://master2.support.example.com/control"]}',
    ),
    (
        Error(code=ErrorCode.NO_TRAFFIC_NODE, message="no traffic node available",
              retry_after_seconds=30),
        '{"v":1,"type":"error","code":"no_traffic_node","message":"no traffic node available",'
        '"retry_after_seconds":30}',
    ),
    (Pong(seq=7), '{"v":1,"type":"pong","seq":7}'),
    (
        Error(code=ErrorCode.GRANT_REVOKED,
              message="your grant to subscribe screen:representative in session s1 was revoked"),
        '{"v":1,"type":"error","code":"grant_revoked","message":"your grant to subscribe '
        'screen:representative in session s1 was revoked","retry_after_seconds":null}',
    ),
    (
        Queue(
            entries=(
                QueueEntry(session_id="s1", queue_id="general", customer_hostname="ACCT-PC-17",
                           platform="windows-x64", queued_at=T0),
            ),
            total=1,
        ),
        '{"v":1,"type":"queue","entries":[{"session_id":"s1","queue_id":"general",'
        '"customer_hostname":"ACCT-PC-17","platform":"windows-x64",'
        '"queued_at":"2024-05-01T12:00:00Z"}],"total":1}',
    ),
    (
        SessionQueued(session_id="s1", queue_id="rep_username:alice", position=2),
        '{"v":1,"type":"session_queued","session_id":"s1","queue_id":"rep_username:alice",'
        '"position":2}',
    ),
    (
        SessionAccepted(session_id="s1", representative="Alice", customer_hostname="ACCT-PC-17"),
        '{"v":1,"type":"session_accepted","session_id":"s1","representative":"Alice",'
        '"customer_hostname":"ACCT-PC-17"}',
    ),
    (
        SessionStarted(
            session_id="s1", home_node=US,
            streams=(
                StreamGrant(stream=StreamKind.REPRESENTATIVE_SCREEN,
                            direction=StreamDirection.PUBLISH, node=US, token=TOKEN),
                StreamGrant(stream=StreamKind.CUSTOMER_SCREEN,
                            direction=StreamDirection.SUBSCRIBE, node=EMEA, token=TOKEN),
            ),
        ),
        '{"v":1,"type":"session_started","session_id":"s1","home_node":{"name":"US-1",'
        '"guid":"b2c3d4e5-0002","url":"wss://us1.support.example.com:8443/stream"},'
        '"streams":[{"stream":"screen:representative","direction":"publish","node":'
        '{"name":"US-1","guid":"b2c3d4e5-0002","url":"wss://us1.support.example.com:8443/stream"},'
        f'"token":"{TOKEN}"}},{{"stream":"screen:customer","direction":"subscribe","node":'
        '{"name":"EMEA-1","guid":"b2c3d4e5-0001","url":"wss://emea1.support.example.com/stream"},'
        f'"token":"{TOKEN}"}}]}}',
    ),
    (
        StreamGranted(
            session_id="s1",
            grant=StreamGrant(stream=StreamKind.REPRESENTATIVE_SCREEN,
                              direction=StreamDirection.SUBSCRIBE, node=US, token=TOKEN),
        ),
        '{"v":1,"type":"stream_grant","session_id":"s1","grant":{"stream":'
        '"screen:representative","direction":"subscribe","node":{"name":"US-1",'
        '"guid":"b2c3d4e5-0002","url":"wss://us1.support.example.com:8443/stream"},'
        f'"token":"{TOKEN}"}}}}',
    ),
    (
        StreamRevoked(session_id="s1", stream=StreamKind.REPRESENTATIVE_SCREEN),
        '{"v":1,"type":"stream_revoked","session_id":"s1","stream":"screen:representative"}',
    ),
    (
        SessionEnded(
            session_id="s1", reason=EndReason.TRAFFIC_NODE_OFFLINE,
            message="Traffic node EMEA-1 went offline — restart the session.",
            node_name="EMEA-1", restart=True,
        ),
        '{"v":1,"type":"session_ended","session_id":"s1","reason":"traffic_node_offline",'
        '"message":"Traffic node EMEA-1 went offline — restart the session.",'
        '"node_name":"EMEA-1","restart":true}',
    ),
    (
        ChatDelivered(session_id="s1", sender_kind=ClientKind.REPRESENTATIVE,
                      sender_name="Alice", text="Yes, I see it.", sent_at=T0),
        '{"v":1,"type":"chat","session_id":"s1","sender_kind":"representative",'
        '"sender_name":"Alice","text":"Yes, I see it.","sent_at":"2024-05-01T12:00:00Z"}',
    ),
    (
        HomeNodeDirective(target=ARecordTarget(hostname="traffic.support.example.com", port=443)),
        '{"v":1,"type":"home_node_directive","target":{"method":"a_record",'
        '"hostname":"traffic.support.example.com","port":443}}',
    ),
    (
        HomeNodeDirective(target=SrvTarget(srv_name="_atlas._tcp.support.example.com")),
        '{"v":1,"type":"home_node_directive","target":{"method":"srv",'
        '"srv_name":"_atlas._tcp.support.example.com"}}',
    ),
    (
        HomeNodeDirective(target=AnycastTarget(address="192.0.2.10", port=443,
                                               tls_name="traffic.support.example.com")),
        '{"v":1,"type":"home_node_directive","target":{"method":"anycast",'
        '"address":"192.0.2.10","port":443,"tls_name":"traffic.support.example.com"}}',
    ),
    (
        SessionKeyIssued(short_key="0421337", key_url="https://support.example.com/s/0421337",
                         expires=1714564800, queue_id="rep:12"),
        '{"v":1,"type":"session_key","short_key":"0421337",'
        '"key_url":"https://support.example.com/s/0421337","expires":1714564800,'
        '"queue_id":"rep:12"}',
    ),
]


def _parse(side: Side, text: str) -> AnyClientMessage | AnyMasterMessage:
    return parse_client_message(text) if side is Side.CLIENT else parse_master_message(text)


def _sender(message: BaseModel) -> Side:
    return next(s.sender for s in MESSAGES if s.model is type(message))


# --- the wire table and golden JSON -------------------------------------------------


def test_wire_table_matches_the_unions() -> None:
    client = {s.model for s in MESSAGES if s.sender is Side.CLIENT}
    master = {s.model for s in MESSAGES if s.sender is Side.MASTER}
    assert client == set(AnyClientMessage.__args__)
    assert master == set(AnyMasterMessage.__args__)
    for spec in MESSAGES:
        assert spec.model.model_fields["type"].default == spec.name
        assert spec.model.model_fields["v"].default == 1
    names = [(s.sender, s.name) for s in MESSAGES]
    assert len(names) == len(set(names))


def test_golden_covers_every_message_type() -> None:
    assert {type(m) for m, _ in GOLDEN} == {s.model for s in MESSAGES}


@pytest.mark.parametrize(("message", "text"), GOLDEN, ids=[f"{m.type}-{i}" for i, (m, _) in
                                                              enumerate(GOLDEN)])
def test_golden_json(message: AnyClientMessage | AnyMasterMessage, text: str) -> None:
    assert serialize(message) == text
    assert _parse(_sender(message), text) == message
    assert json.loads(text)["v"] == 1


def test_password_is_not_in_repr() -> None:
    assert "s3cret" not in repr(AuthRep(username="alice", password="s3cret"))


def test_chat_text_limit_is_in_bytes() -> None:
    Chat(session_id="s1", text="é" * (MAX_CHAT_BYTES // 2))
    with pytest.raises(ValidationError):
        Chat(session_id="s1", text="é" * (MAX_CHAT_BYTES // 2) + "x")
    with pytest.raises(ProtocolViolation) as caught:
        parse_client_message(json.dumps({"v": 1, "type": "chat", "session_id": "s1",
                                         "text": "x" * (MAX_CHAT_BYTES + 1)}))
    assert caught.value.kind is ViolationKind.MALFORMED


def test_queue_is_bounded_so_it_never_oversizes() -> None:
    widest = "\U0001f600"  # 4 bytes in UTF-8
    entry = QueueEntry(session_id="s" * 64, queue_id="rep_username:" + "a" * 115,
                       customer_hostname=widest * 255, platform=widest * 64, queued_at=T0)
    big = Queue(entries=(entry,) * MAX_QUEUE_ENTRIES, total=10_000)
    assert len(serialize(big).encode()) <= MAX_MESSAGE_BYTES
    with pytest.raises(ValidationError):
        Queue(entries=(entry,) * (MAX_QUEUE_ENTRIES + 1), total=10_000)


@pytest.mark.parametrize(
    ("text", "kind", "code"),
    [
        ("", ViolationKind.MALFORMED, CloseCode.INVALID_PAYLOAD),
        ("{", ViolationKind.MALFORMED, CloseCode.INVALID_PAYLOAD),
        ("[1, 2]", ViolationKind.MALFORMED, CloseCode.INVALID_PAYLOAD),
        ('{"type": "ping"}', ViolationKind.MALFORMED, CloseCode.INVALID_PAYLOAD),
        ('{"v": "1", "type": "ping"}', ViolationKind.MALFORMED, CloseCode.INVALID_PAYLOAD),
        ('{"v": true, "type": "ping"}', ViolationKind.MALFORMED, CloseCode.INVALID_PAYLOAD),
        ('{"v": 1.0, "type": "ping"}', ViolationKind.MALFORMED, CloseCode.INVALID_PAYLOAD),
        ('{"v": 1}', ViolationKind.MALFORMED, CloseCode.INVALID_PAYLOAD),
        ('{"v": 1, "type": "welcome"}', ViolationKind.MALFORMED, CloseCode.INVALID_PAYLOAD),
        ('{"v": 1, "type": "nope"}', ViolationKind.MALFORMED, CloseCode.INVALID_PAYLOAD),
        ('{"v": 1, "type": "ping", "seq": "3"}', ViolationKind.MALFORMED,
         CloseCode.INVALID_PAYLOAD),
        ('{"v": 1, "type": "ping", "extra": 1}', ViolationKind.MALFORMED,
         CloseCode.INVALID_PAYLOAD),
        ('{"v": 1, "type": "ping", "seq": NaN}', ViolationKind.MALFORMED,
         CloseCode.INVALID_PAYLOAD),
        ('{"v": 1, "type": "report_home", "node_guid": "-bad"}', ViolationKind.MALFORMED,
         CloseCode.INVALID_PAYLOAD),
        ('{"v": 1, "type": "chat", "session_id": "s1", "text": "a\\u0000b"}',
         ViolationKind.MALFORMED, CloseCode.INVALID_PAYLOAD),
        ("[" * 50_000, ViolationKind.MALFORMED, CloseCode.INVALID_PAYLOAD),
        ("\ud800", ViolationKind.MALFORMED, CloseCode.INVALID_PAYLOAD),
        ('{"v": 2, "type": "ping"}', ViolationKind.UNSUPPORTED_VERSION, CloseCode.PROTOCOL_ERROR),
        ('{"v": 2, "type": "something_new"}', ViolationKind.UNSUPPORTED_VERSION,
         CloseCode.PROTOCOL_ERROR),
        ('{"v": 1, "type": "ping", "v": 2}', ViolationKind.UNSUPPORTED_VERSION,
         CloseCode.PROTOCOL_ERROR),
        (" " * (MAX_MESSAGE_BYTES + 1), ViolationKind.OVERSIZED, CloseCode.MESSAGE_TOO_BIG),
    ],
)
def test_refused_frames_close_the_connection(text: str, kind: ViolationKind, code: int) -> None:
    master = MasterControlConnection()
    with pytest.raises(ProtocolViolation) as caught:
        master.receive_text(text)
    violation = caught.value
    assert (violation.kind, violation.close_code) == (kind, code)
    assert violation.reason.startswith(kind.value)
    assert len(violation.reason.encode()) <= MAX_CLOSE_REASON_BYTES
    assert master.state is State.CLOSED
    assert (master.close_code, master.close_reason) == (code, violation.reason)
    with pytest.raises(LocalProtocolError):
        master.receive_text(serialize(GOLDEN[0][0]))


def test_size_limit_is_exact_and_in_utf8_bytes() -> None:
    ping = '{"v":1,"type":"ping"}'
    assert parse_client_message(ping + " " * (MAX_MESSAGE_BYTES - len(ping))) == Ping()
    with pytest.raises(ProtocolViolation) as caught:
        parse_client_message(ping + " " * (MAX_MESSAGE_BYTES - len(ping) + 1))
    assert caught.value.kind is ViolationKind.OVERSIZED
    few_chars_many_bytes = '{"v":1,"type":"chat","session_id":"s","text":"' + "é" * 40_000 + '"}'
    assert len(few_chars_many_bytes) < MAX_MESSAGE_BYTES
    with pytest.raises(ProtocolViolation) as caught:
        parse_client_message(few_chars_many_bytes)
    assert caught.value.kind is ViolationKind.OVERSIZED


def test_binary_frames_are_refused() -> None:
    master = MasterControlConnection()
    with pytest.raises(ProtocolViolation) as caught:
        master.receive_binary(b"\x00\x01")
    assert caught.value.close_code == CloseCode.UNSUPPORTED_DATA
    assert master.state is State.CLOSED


def test_close_reason_is_truncated_to_fit_a_close_frame() -> None:
    master = MasterControlConnection()
    master.close(CloseCode.GOING_AWAY, "ü" * 200)
    assert master.state is State.CLOSED
    assert master.close_code == CloseCode.GOING_AWAY
    assert len(master.close_reason.encode()) <= MAX_CLOSE_REASON_BYTES
    master.close(CloseCode.NORMAL, "again")  # idempotent: the first close stays
    master.receive_close(1000, "bye")
    assert master.close_code == CloseCode.GOING_AWAY


def test_peer_close_and_transport_failure() -> None:
    client = ClientControlConnection()
    client.receive_close(4001, "master stepping down")
    assert (client.state, client.close_code, client.close_reason) == (
        State.CLOSED, 4001, "master stepping down"
    )
    other = ClientControlConnection()
    other.receive_close()
    assert other.close_code == 1006
    with pytest.raises(LocalProtocolError):
        other.send(Ping())


# --- the transition table -------------------------------------------------------------

KINDS = list(ClientKind)


def _hello(kind: ClientKind) -> Hello:
    return Hello(kind=kind, software_version="1.0", platform="linux", hostname="h",
                 utc_offset_minutes=0)


def _auth(kind: ClientKind) -> AuthRep | AuthCustomer:
    if kind is ClientKind.REPRESENTATIVE:
        return AuthRep(username="alice", password="pw")
    return AuthCustomer(session_key="1234567")


WELCOME = Welcome(client_id="c1", epoch=1, master_addresses=("wss://m.example.com/control",))


def _path_to(state: State, kind: ClientKind) -> list[AnyClientMessage | AnyMasterMessage]:
    steps: dict[State, list[AnyClientMessage | AnyMasterMessage]] = {
        State.CONNECTED: [],
        State.HELLO_RECEIVED: [_hello(kind)],
        State.AUTHENTICATING: [_hello(kind), _auth(kind)],
        State.AUTHENTICATED: [_hello(kind), _auth(kind), WELCOME],
        State.CLOSED: [_hello(kind), _auth(kind),
                       Error(code=ErrorCode.AUTH_FAILED, message="wrong password")],
    }
    return steps[state]


def _pair_in(
    state: State, kind: ClientKind
) -> tuple[ClientControlConnection, MasterControlConnection]:
    client, master = ClientControlConnection(), MasterControlConnection()
    for message in _path_to(state, kind):
        _exchange(client, master, message)
    assert client.state is master.state is state
    return client, master


def _exchange(
    client: ClientControlConnection,
    master: MasterControlConnection,
    message: AnyClientMessage | AnyMasterMessage,
) -> None:
    if _sender(message) is Side.CLIENT:
        master.receive_text(client.send(message))  # type: ignore[arg-type]
    else:
        client.receive_text(master.send(message))  # type: ignore[arg-type]


def _one_of_each(kind: ClientKind) -> list[AnyClientMessage | AnyMasterMessage]:
    """A message of every type; hello and auth fit ``kind``."""
    messages: list[AnyClientMessage | AnyMasterMessage] = []
    for message, _ in GOLDEN:
        if isinstance(message, Hello):
            message = _hello(kind)
        if message not in messages:
            messages.append(message)
    return messages


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("state", list(State))
def test_every_message_in_every_state(state: State, kind: ClientKind) -> None:
    """Each (state, sender, type) is either a row of the table — sent, received, and both
    ends move to the row's state — or refused on both ends."""
    for message in _one_of_each(kind):
        client, master = _pair_in(state, kind)
        sender = _sender(message)
        sending = client if sender is Side.CLIENT else master
        receiving = master if sender is Side.CLIENT else client
        row = TRANSITIONS[state].get((sender, message.type))
        fits_kind = state is State.CONNECTED or message.type in KIND_MESSAGES[kind]
        if isinstance(message, Hello) or state is State.CONNECTED:
            fits_kind = True  # the kind is not known before hello
        expected = row if fits_kind else None
        assert next_state(state, sender, message.type, None if state is State.CONNECTED
                          else kind) == expected
        if expected is not None:
            text = sending.send(message)  # type: ignore[arg-type]
            assert receiving.receive_text(text) == message
            assert sending.state is receiving.state is expected
            continue
        with pytest.raises(LocalProtocolError):
            sending.send(message)  # type: ignore[arg-type]
        assert sending.state is state
        if state is State.CLOSED:
            with pytest.raises(LocalProtocolError):
                receiving.receive_text(serialize(message))
            continue
        with pytest.raises(ProtocolViolation) as caught:
            receiving.receive_text(serialize(message))
        assert caught.value.kind is ViolationKind.UNEXPECTED
        assert caught.value.close_code == CloseCode.PROTOCOL_ERROR
        assert state.value in caught.value.reason
        assert receiving.state is State.CLOSED


def test_table_shape() -> None:
    everything = {(s.sender, s.name) for s in MESSAGES}
    rows = {key for state_rows in TRANSITIONS.values() for key in state_rows}
    assert rows <= everything
    assert rows == everything  # every message type is usable somewhere
    assert TRANSITIONS[State.CLOSED] == {}
    into_authenticated = {
        key for state, state_rows in TRANSITIONS.items() if state is not State.AUTHENTICATED
        for key, after in state_rows.items() if after is State.AUTHENTICATED
    }
    assert into_authenticated == {(Side.MASTER, "welcome")}
    # before authentication nothing about queues or sessions crosses
    for state in (State.CONNECTED, State.HELLO_RECEIVED, State.AUTHENTICATING):
        assert {name for _, name in TRANSITIONS[state]} <= {
            "hello", "auth_rep", "auth_customer", "ping", "pong", "error", "welcome"
        }
    # an error before welcome ends the conversation; after it, it is just an answer
    for state in (State.CONNECTED, State.HELLO_RECEIVED, State.AUTHENTICATING):
        assert TRANSITIONS[state][(Side.MASTER, "error")] is State.CLOSED
    assert TRANSITIONS[State.AUTHENTICATED][(Side.MASTER, "error")] is State.AUTHENTICATED


def test_kind_table() -> None:
    every_type = {s.name for s in MESSAGES}
    for kind in ClientKind:
        assert KIND_MESSAGES[kind] <= every_type
    assert set(KIND_MESSAGES) == set(ClientKind)
    rep, customer, attendee = (KIND_MESSAGES[k] for k in (
        ClientKind.REPRESENTATIVE, ClientKind.SUPPORT_CUSTOMER, ClientKind.PRESENTATION_ATTENDEE))
    assert "auth_rep" in rep and "auth_customer" not in rep
    assert "auth_customer" in customer and "auth_rep" not in customer
    assert {"accept_next", "queue_list", "queue", "show_my_screen"} <= rep - customer - attendee
    assert "report_home" not in attendee and "home_node_directive" not in attendee
    # only a representative generates session keys (customers redeem them)
    assert {"generate_session_key", "session_key"} <= rep - customer - attendee


def test_refused_credentials_close_both_ends() -> None:
    client, master = _pair_in(State.AUTHENTICATING, ClientKind.REPRESENTATIVE)
    refusal = Error(code=ErrorCode.AUTH_FAILED, message="wrong username or password")
    client.receive_text(master.send(refusal))
    for end in (client, master):
        assert end.state is State.CLOSED
        assert end.close_code == CloseCode.NORMAL
        assert end.close_reason == "auth_failed: wrong username or password"


def test_customer_cannot_act_as_representative() -> None:
    client, master = _pair_in(State.AUTHENTICATED, ClientKind.SUPPORT_CUSTOMER)
    with pytest.raises(LocalProtocolError):
        client.send(AcceptNext())
    with pytest.raises(LocalProtocolError):
        master.send(Queue(entries=(), total=0))
    with pytest.raises(ProtocolViolation) as caught:
        master.receive_text(serialize(AcceptNext()))
    assert "support_customer" in caught.value.reason


@pytest.mark.parametrize("kind", [ClientKind.SUPPORT_CUSTOMER, ClientKind.PRESENTATION_ATTENDEE])
def test_only_a_representative_generates_session_keys(kind: ClientKind) -> None:
    client, master = _pair_in(State.AUTHENTICATED, kind)
    with pytest.raises(LocalProtocolError):
        client.send(GenerateSessionKey())
    with pytest.raises(LocalProtocolError):
        master.send(SessionKeyIssued(short_key="0421337", key_url="https://s.example/s/0421337",
                                     expires=1, queue_id="general"))
    with pytest.raises(ProtocolViolation) as caught:
        master.receive_text(serialize(GenerateSessionKey()))
    assert caught.value.close_code == CloseCode.PROTOCOL_ERROR
    assert kind.value in caught.value.reason


def test_a_key_request_with_odd_values_still_parses() -> None:
    """The broker refuses a bad queue or ttl with an ``error``; only a value that is not
    even of the right type breaks the protocol."""
    client, master = _pair_in(State.AUTHENTICATED, ClientKind.REPRESENTATIVE)
    odd = GenerateSessionKey(queue_id="team:3", ttl=-5)
    assert master.receive_text(client.send(odd)) == odd
    with pytest.raises(ProtocolViolation) as caught:
        master.receive_text('{"v":1,"type":"generate_session_key","ttl":"600"}')
    assert caught.value.kind is ViolationKind.MALFORMED


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_may_ask_to_renew_a_grant(kind: ClientKind) -> None:
    """Every kind holds stream grants, so every kind may ask for a fresh token — once
    authenticated; the broker decides whether the grant is still held."""
    refresh = RefreshGrant(session_id="s1", stream=StreamKind.REPRESENTATIVE_SCREEN,
                           direction=StreamDirection.SUBSCRIBE)
    client, master = _pair_in(State.AUTHENTICATED, kind)
    assert master.receive_text(client.send(refresh)) == refresh
    renewed = StreamGranted(session_id="s1", grant=StreamGrant(
        stream=refresh.stream, direction=refresh.direction, node=US, token=TOKEN))
    assert client.receive_text(master.send(renewed)) == renewed
    refusal = Error(code=ErrorCode.GRANT_REVOKED, message="revoked")
    assert client.receive_text(master.send(refusal)) == refusal
    assert client.state is master.state is State.AUTHENTICATED  # a refused request only
    early_client, early_master = _pair_in(State.HELLO_RECEIVED, kind)
    with pytest.raises(LocalProtocolError):
        early_client.send(refresh)
    with pytest.raises(ProtocolViolation) as caught:
        early_master.receive_text(serialize(refresh))
    assert caught.value.kind is ViolationKind.UNEXPECTED


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"stream": "screen:everything"}, "stream"),
        ({"stream": "SCREEN:CUSTOMER"}, "stream"),
        ({"direction": "both"}, "direction"),
        ({"direction": None}, "direction"),
        ({"session_id": "s 1"}, "session_id"),
        ({"session_id": "s" * 65}, "session_id"),
        ({"session_id": 1}, "session_id"),
        ({"node_guid": "b2c3d4e5-0001"}, "node_guid"),  # the node is the master's to say
        ({"token": "x"}, "token"),
    ],
)
def test_refresh_grant_refuses_bad_values_with_a_reason(fields: dict[str, Any],
                                                        where: str) -> None:
    good = {"v": 1, "type": "refresh_grant", "session_id": "s1", "stream": "screen:customer",
            "direction": "subscribe"}
    master = MasterControlConnection()
    with pytest.raises(ProtocolViolation) as caught:
        master.receive_text(json.dumps({**good, **fields}))
    assert caught.value.kind is ViolationKind.MALFORMED
    assert caught.value.close_code == CloseCode.INVALID_PAYLOAD
    assert where in caught.value.reason
    for missing in ("session_id", "stream", "direction"):
        without = {k: v for k, v in good.items() if k != missing}
        with pytest.raises(ProtocolViolation) as caught:
            parse_client_message(json.dumps(without))
        assert missing in caught.value.reason


def test_representative_cannot_redeem_a_key() -> None:
    _client, master = _pair_in(State.HELLO_RECEIVED, ClientKind.REPRESENTATIVE)
    with pytest.raises(ProtocolViolation):
        master.receive_text(serialize(AuthCustomer(session_key="1234567")))


def test_hello_only_once() -> None:
    _client, master = _pair_in(State.AUTHENTICATED, ClientKind.REPRESENTATIVE)
    with pytest.raises(ProtocolViolation):
        master.receive_text(serialize(_hello(ClientKind.SUPPORT_CUSTOMER)))


def test_sending_the_other_sides_message_is_our_bug() -> None:
    client = ClientControlConnection()
    with pytest.raises(LocalProtocolError):
        client.send(WELCOME)  # type: ignore[arg-type]
    assert client.state is State.CONNECTED


def test_a_typical_support_session() -> None:
    client, master = _pair_in(State.AUTHENTICATED, ClientKind.SUPPORT_CUSTOMER)
    master_out: list[AnyMasterMessage] = [
        SessionQueued(session_id="s1", queue_id="general", position=1),
        HomeNodeDirective(target=SrvTarget(srv_name="_atlas._tcp.support.example.com")),
    ]
    for message in master_out:
        assert client.receive_text(master.send(message)) == message
    assert master.receive_text(client.send(ReportHome(node_guid=EMEA.guid))) == ReportHome(
        node_guid=EMEA.guid
    )
    session_types = (SessionAccepted, SessionStarted, StreamGranted, StreamRevoked,
                     ChatDelivered, SessionEnded)
    for later in [m for m, _ in GOLDEN if isinstance(m, session_types)]:
        assert client.receive_text(master.send(later)) == later
    assert master.state is client.state is State.AUTHENTICATED


# --- property tests -------------------------------------------------------------------

_printable = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=40
)
_ident = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
_guid = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,20}", fullmatch=True)
_host = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True)
_url = _host.map(lambda h: f"wss://{h}/stream")
_when = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
)
_node = st.builds(NodeRef, name=_printable.map(lambda s: s[:64]), guid=_guid, url=_url)
_grant = st.builds(StreamGrant, stream=st.sampled_from(StreamKind),
                   direction=st.sampled_from(StreamDirection), node=_node,
                   token=st.from_regex(r"[\x21-\x7e]{1,200}", fullmatch=True))
_chat_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"],
                                   exclude_characters="".join(
                                       chr(c) for c in [*range(0, 9), *range(11, 32),
                                                        *range(127, 160)])),
                     min_size=1, max_size=300)
_seq = st.integers(0, 2**53 - 1)

MESSAGE_STRATEGIES: dict[type[BaseModel], st.SearchStrategy[Any]] = {
    Hello: st.builds(Hello, kind=st.sampled_from(ClientKind),
                     software_version=st.from_regex(r"[0-9][0-9a-z.+_-]{0,20}", fullmatch=True),
                     platform=_printable, hostname=_printable,
                     utc_offset_minutes=st.integers(-1080, 1080)),
    AuthRep: st.builds(AuthRep, username=_printable,
                       password=st.text(min_size=1, max_size=50).filter(
                           lambda s: s.encode("utf-8", "surrogatepass") == s.encode(
                               "utf-8", "ignore"))),
    AuthCustomer: st.builds(AuthCustomer, session_key=st.from_regex(r"[0-9 -]{1,32}",
                                                                    fullmatch=True)),
    Ping: st.builds(Ping, seq=_seq),
    QueueList: st.just(QueueList()),
    AcceptNext: st.builds(AcceptNext, queue_id=st.none() | st.from_regex(
        r"[A-Za-z0-9_:.@-]{1,128}", fullmatch=True)),
    Chat: st.builds(Chat, session_id=_ident, text=_chat_text),
    ShowMyScreen: st.builds(ShowMyScreen, session_id=_ident, on=st.booleans()),
    EndSession: st.builds(EndSession, session_id=_ident, reason=st.just("") | _printable),
    ReportHome: st.builds(ReportHome, node_guid=_guid),
    GenerateSessionKey: st.builds(GenerateSessionKey, queue_id=st.none() | _printable,
                                  ttl=st.none() | st.integers(-(2**53 - 1), 2**53 - 1)),
    RefreshGrant: st.builds(RefreshGrant, session_id=_ident, stream=st.sampled_from(StreamKind),
                            direction=st.sampled_from(StreamDirection)),
    Welcome: st.builds(Welcome, client_id=_ident, epoch=st.integers(0, 2**40),
                       master_addresses=st.lists(_url, min_size=1, max_size=4).map(tuple)),
    Error: st.builds(Error, code=st.sampled_from(ErrorCode), message=st.just("") | _printable,
                     retry_after_seconds=st.none() | st.integers(0, 3600)),
    Pong: st.builds(Pong, seq=_seq),
    Queue: st.lists(
        st.builds(QueueEntry, session_id=_ident, queue_id=st.just("general"),
                  customer_hostname=_printable, platform=_printable, queued_at=_when),
        max_size=5,
    ).flatmap(lambda es: st.builds(Queue, entries=st.just(tuple(es)),
                                   total=st.integers(len(es), 10_000))),
    SessionQueued: st.builds(SessionQueued, session_id=_ident, queue_id=st.just("rep:7"),
                             position=st.none() | st.integers(1, 500)),
    SessionAccepted: st.builds(SessionAccepted, session_id=_ident, representative=_printable,
                               customer_hostname=_printable),
    SessionStarted: st.builds(SessionStarted, session_id=_ident, home_node=_node,
                              streams=st.lists(_grant, max_size=3).map(tuple)),
    StreamGranted: st.builds(StreamGranted, session_id=_ident, grant=_grant),
    StreamRevoked: st.builds(StreamRevoked, session_id=_ident,
                             stream=st.sampled_from(StreamKind)),
    SessionEnded: st.builds(SessionEnded, session_id=_ident, reason=st.sampled_from(EndReason),
                            message=_printable, node_name=st.none() | _printable.map(
                                lambda s: s[:64]), restart=st.booleans()),
    ChatDelivered: st.builds(ChatDelivered, session_id=_ident,
                             sender_kind=st.sampled_from(ClientKind), sender_name=_printable,
                             text=_chat_text, sent_at=_when),
    HomeNodeDirective: st.builds(HomeNodeDirective, target=st.one_of(
        st.builds(ARecordTarget, hostname=_host, port=st.integers(1, 65535)),
        st.builds(SrvTarget, srv_name=_host),
        st.builds(AnycastTarget, address=st.ip_addresses().map(str), port=st.integers(1, 65535),
                  tls_name=_host),
    )),
    SessionKeyIssued: st.builds(SessionKeyIssued,
                                short_key=st.from_regex(r"[0-9]{7}", fullmatch=True),
                                key_url=_host.map(lambda h: f"https://{h}/s/0421337"),
                                expires=st.integers(0, 2**40),
                                queue_id=st.sampled_from(["general", "rep:7", "rep_username:a"])),
}

any_message = st.one_of(*MESSAGE_STRATEGIES.values())


def test_strategies_cover_every_message_type() -> None:
    assert set(MESSAGE_STRATEGIES) == {s.model for s in MESSAGES}


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(any_message)
def test_round_trip(message: AnyClientMessage | AnyMasterMessage) -> None:
    assert _parse(_sender(message), serialize(message)) == message


def _fresh_and_authenticated() -> list[MasterControlConnection | ClientControlConnection]:
    ends: list[MasterControlConnection | ClientControlConnection] = []
    for kind in ClientKind:
        client, master = _pair_in(State.AUTHENTICATED, kind)
        ends += [client, master]
    return [MasterControlConnection(), ClientControlConnection(), *ends]


def _feed(ends: Sequence[MasterControlConnection | ClientControlConnection], text: str) -> None:
    for end in ends:
        try:
            end.receive_text(text)
        except ProtocolViolation as violation:
            assert end.state is State.CLOSED
            assert end.close_code == violation.close_code
            assert len(violation.reason.encode()) <= MAX_CLOSE_REASON_BYTES


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_random_text_never_crashes(text: str) -> None:
    _feed(_fresh_and_authenticated(), text)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=12,
)
_type_names = st.sampled_from(sorted({s.name for s in MESSAGES} | {"", "bogus"}))


@settings(max_examples=500)
@given(_type_names, st.dictionaries(
    st.sampled_from(["seq", "session_id", "text", "on", "kind", "code", "message", "entries",
                     "target", "node_guid", "session_key", "grant", "x"]) | st.text(max_size=8),
    _json, max_size=6), st.sampled_from([1, 1, 1, 2, 0, "1", None]))
def test_random_json_objects_never_crash(message_type: str, fields: dict[str, Any],
                                         version: Any) -> None:
    _feed(_fresh_and_authenticated(), json.dumps({"v": version, "type": message_type, **fields}))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_message, max_size=12))
def test_random_message_sequences_never_crash(
    messages: list[AnyClientMessage | AnyMasterMessage],
) -> None:
    for kind in ClientKind:
        for start in State:
            client, master = _pair_in(start, kind)
            for message in messages:
                receiving = master if _sender(message) is Side.CLIENT else client
                if receiving.state is State.CLOSED:
                    break
                try:
                    assert receiving.receive_text(serialize(message)) == message
                except ProtocolViolation:
                    assert receiving.close_code is not None


_ACTIONS = st.lists(
    st.tuples(st.sampled_from(["client_sends", "master_sends", "to_master", "to_client"]),
              st.integers(0, 10**6)),
    max_size=60,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ClientKind), _ACTIONS)
def test_interleaved_conversations_stay_in_step(
    kind: ClientKind, actions: list[tuple[str, int]]
) -> None:
    """Both ends send whatever they may, messages cross on the wire in any interleaving:
    no end ever sees a violation, and once the wire is quiet both ends agree."""
    pool = [*_one_of_each(kind), _auth(kind)]
    client_pool = [m for m in pool if _sender(m) is Side.CLIENT]
    master_pool = [m for m in pool if _sender(m) is Side.MASTER]
    client, master = ClientControlConnection(), MasterControlConnection()
    to_master: deque[str] = deque()
    to_client: deque[str] = deque()

    def deliver(queue: deque[str], end: ClientControlConnection | MasterControlConnection) -> None:
        text = queue.popleft()
        if end.state is not State.CLOSED:  # the adapter stops reading a closed connection
            end.receive_text(text)  # a ProtocolViolation here fails the test

    for action, pick in actions:
        if action == "client_sends" and client.state is not State.CLOSED:
            try:
                to_master.append(client.send(client_pool[pick % len(client_pool)]))  # type: ignore[arg-type]
            except LocalProtocolError:
                pass
        elif action == "master_sends" and master.state is not State.CLOSED:
            try:
                to_client.append(master.send(master_pool[pick % len(master_pool)]))  # type: ignore[arg-type]
            except LocalProtocolError:
                pass
        elif action == "to_master" and to_master:
            deliver(to_master, master)
        elif action == "to_client" and to_client:
            deliver(to_client, client)
    while to_master or to_client:
        if to_master:
            deliver(to_master, master)
        if to_client:
            deliver(to_client, client)
    # an end closes by itself only on an error before welcome, which closes the other end
    # too once delivered
    assert client.state is master.state


def test_sending_an_oversized_message_is_our_bug() -> None:
    _client, master = _pair_in(State.AUTHENTICATED, ClientKind.REPRESENTATIVE)
    grant = StreamGrant(stream=StreamKind.CUSTOMER_SCREEN, direction=StreamDirection.SUBSCRIBE,
                        node=EMEA, token="t" * 8192)
    huge = SessionStarted(session_id="s1", home_node=US, streams=(grant,) * 8)
    with pytest.raises(LocalProtocolError, match="larger than"):
        master.send(huge)
    assert master.state is State.AUTHENTICATED
