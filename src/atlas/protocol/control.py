"""The control connection between a client and the master (DESIGN.md §2).

Every online client — customer client, representative console, presentation client —
holds one WebSocket over TLS to the primary master for as long as it is online (guide,
"Run Test Connections": "all Bomgar Clients are always connected to the master node while
they are online"). Over it the client says who it is, authenticates, waits in or works a
queue, and is told where its session traffic goes: its home traffic node and the stream
grants for the nodes it must connect to.

Wire format: one JSON object per WebSocket *text* frame, at most
:data:`MAX_MESSAGE_BYTES` of UTF-8, ``{"v": 1, "type": "<name>", ...}``. Every message
type is a pydantic model in the table :data:`MESSAGES` (type name, sender, model); the
models are strict and refuse unknown fields, so any change to an existing message bumps
:data:`PROTOCOL_VERSION`. A new message type or ``error`` code is additive (an end that
does not know it refuses it like any unknown type): the master and the clients of one
release add it together. Field order is the model's, which keeps serialisation stable
(the golden tests pin it).

:class:`ControlConnection` is the sans-I/O state machine of one side, h11-style: the
adapter feeds it what arrived (:meth:`~ControlConnection.receive_text`) and sends what it
returns (:meth:`~ControlConnection.send`). No sockets, clocks or tasks in here.

Errors say whose fault they are: :class:`ProtocolViolation` is the peer's (the
connection is already closed with a WebSocket close code and reason for the adapter to
send); :class:`LocalProtocolError` is ours (we tried to send something the state does not
allow) and leaves the connection as it was.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Annotated, Any, ClassVar, Final, Generic, Literal, TypeVar

import pydantic_core
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from atlas.selection.client import ClientKind

__all__ = [
    "KIND_MESSAGES",
    "MAX_CHAT_BYTES",
    "MAX_CLOSE_REASON_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_QUEUE_ENTRIES",
    "MESSAGES",
    "PROTOCOL_VERSION",
    "TRANSITIONS",
    "ARecordTarget",
    "AcceptNext",
    "AnyClientMessage",
    "AnyMasterMessage",
    "AnyMessage",
    "AnycastTarget",
    "AuthCustomer",
    "AuthRep",
    "Chat",
    "ChatDelivered",
    "ClientControlConnection",
    "ClientKind",
    "CloseCode",
    "ControlConnection",
    "ControlProtocolError",
    "EndReason",
    "EndSession",
    "Error",
    "ErrorCode",
    "GenerateSessionKey",
    "Hello",
    "HomeNodeDirective",
    "LocalProtocolError",
    "MasterControlConnection",
    "MessageSpec",
    "NodeRef",
    "Ping",
    "Pong",
    "ProtocolViolation",
    "Queue",
    "QueueEntry",
    "QueueList",
    "RefreshGrant",
    "ReportHome",
    "SessionAccepted",
    "SessionEnded",
    "SessionKeyIssued",
    "SessionQueued",
    "SessionStarted",
    "ShowMyScreen",
    "Side",
    "SrvTarget",
    "State",
    "StreamDirection",
    "StreamGrant",
    "StreamGranted",
    "StreamKind",
    "StreamRevoked",
    "ViolationKind",
    "Welcome",
    "allowed_for_kind",
    "next_state",
    "parse_client_message",
    "parse_master_message",
    "serialize",
]

PROTOCOL_VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 64 * 1024
"""Largest text frame either side accepts (UTF-8 bytes). Adapters must set the same limit
on their WebSocket library (defaults differ: websockets 1 MiB, aiohttp 4 MiB)."""
MAX_CHAT_BYTES: Final = 4 * 1024
MAX_QUEUE_ENTRIES: Final = 32
"""A ``queue`` message lists at most this many entries (oldest first) and says how many
there are in ``total``, so even a queue of entries at their largest (every field at its
length limit in 4-byte characters) never makes an oversized message."""
MAX_CLOSE_REASON_BYTES: Final = 123  # RFC 6455 §5.5: 125-byte control payload − 2-byte code


class CloseCode(IntEnum):
    """WebSocket close codes used on the control connection (RFC 6455 §7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


# --- errors -------------------------------------------------------------------------


class ControlProtocolError(Exception):
    """Base of the control-connection errors."""


class ViolationKind(StrEnum):
    """What the peer did wrong; each kind has its close code (:data:`_VIOLATION_CODES`)."""

    MALFORMED = "malformed message"
    OVERSIZED = "oversized message"
    UNSUPPORTED_VERSION = "unsupported protocol version"
    UNEXPECTED = "unexpected message"
    BINARY = "binary frame"


_VIOLATION_CODES: Final[Mapping[ViolationKind, CloseCode]] = {
    ViolationKind.MALFORMED: CloseCode.INVALID_PAYLOAD,
    ViolationKind.OVERSIZED: CloseCode.MESSAGE_TOO_BIG,
    ViolationKind.UNSUPPORTED_VERSION: CloseCode.PROTOCOL_ERROR,
    ViolationKind.UNEXPECTED: CloseCode.PROTOCOL_ERROR,
    ViolationKind.BINARY: CloseCode.UNSUPPORTED_DATA,
}


def _truncate_utf8(text: str, limit: int) -> str:
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode("utf-8", "ignore") + "..."


class ProtocolViolation(ControlProtocolError):
    """The peer broke the protocol; the peer's fault.

    The connection that raised it is already ``CLOSED``; the adapter closes the WebSocket
    with ``close_code`` and ``reason`` (at most :data:`MAX_CLOSE_REASON_BYTES`, so it fits
    a close frame) and logs ``detail``.
    """

    def __init__(self, kind: ViolationKind, detail: str = "") -> None:
        self.kind = kind
        self.close_code = _VIOLATION_CODES[kind]
        self.detail = detail
        full = f"{kind.value}: {detail}" if detail else kind.value
        self.reason = _truncate_utf8(full, MAX_CLOSE_REASON_BYTES)
        super().__init__(full)


class LocalProtocolError(ControlProtocolError):
    """We tried something the protocol does not allow (our bug); nothing was sent."""


# --- vocabularies -------------------------------------------------------------------


class Side(StrEnum):
    """Who sends a message."""

    CLIENT = "client"
    MASTER = "master"


class ErrorCode(StrEnum):
    """``error`` codes. The wording for people is in the message's ``message``."""

    AUTH_FAILED = "auth_failed"  # wrong username or password
    KEY_INVALID = "key_invalid"  # no such session key
    KEY_EXPIRED = "key_expired"
    KEY_USED = "key_used"  # session keys are single-use
    RATE_LIMITED = "rate_limited"  # too many wrong keys from this network; retry later
    VERSION_MISMATCH = "version_mismatch"  # client software differs from the site's
    NO_TRAFFIC_NODE = "no_traffic_node"  # none viable and master fallback full; retry later
    QUEUE_EMPTY = "queue_empty"
    SESSION_NOT_FOUND = "session_not_found"
    NOT_ALLOWED = "not_allowed"  # e.g. Show My Screen in a session that is not started
    GRANT_REVOKED = "grant_revoked"  # refresh_grant: the stream was taken back (SMS off)
    STREAM_NOT_GRANTED = "stream_not_granted"  # refresh_grant: not a stream the client holds
    BAD_REQUEST = "bad_request"  # well-formed, but a value is refused (e.g. a key's ttl)
    SERVER_BUSY = "server_busy"
    INTERNAL_ERROR = "internal_error"


class EndReason(StrEnum):
    """Why a session ended (``session_ended.reason``; see :mod:`atlas.broker.session_state`
    for which state each may end)."""

    CUSTOMER_LEFT = "customer_left"
    REPRESENTATIVE_ENDED = "representative_ended"
    REPRESENTATIVE_LEFT = "representative_left"  # the console went offline
    TRAFFIC_NODE_OFFLINE = "traffic_node_offline"  # guide: "the session must be restarted"
    KEY_EXPIRED = "key_expired"  # still queued when its session key expired


class StreamKind(StrEnum):
    """The streams a session carries (DESIGN.md §2); the value is also the ``stream``
    claim of the stream token (:mod:`atlas.broker.stream_tokens`)."""

    CUSTOMER_SCREEN = "screen:customer"
    REPRESENTATIVE_SCREEN = "screen:representative"  # Show My Screen
    PRESENTER_SCREEN = "screen:presenter"


class StreamDirection(StrEnum):
    PUBLISH = "publish"  # send it to the node (always the publisher's home node)
    SUBSCRIBE = "subscribe"  # receive it from the node


# --- field types --------------------------------------------------------------------

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_CHARS_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(value: str) -> str:
    if _CONTROL_CHARS.search(value):
        raise ValueError("must not contain control characters")
    return value


def _chat_text(value: str) -> str:
    if _CONTROL_CHARS_BUT_LINES.search(value):
        raise ValueError("must not contain control characters other than newline and tab")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_CHAT_BYTES:
        raise ValueError(f"chat text is longer than {MAX_CHAT_BYTES} bytes")
    return value


Label64 = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_printable)
]
Label255 = Annotated[
    str, StringConstraints(min_length=1, max_length=255), AfterValidator(_printable)
]
Text1024 = Annotated[str, StringConstraints(max_length=1024), AfterValidator(_printable)]
ChatText = Annotated[str, StringConstraints(min_length=1), AfterValidator(_chat_text)]
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
NodeGuid = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")]
Version = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")]
QueueName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_:.@-]{1,128}$")]
WssUrl = Annotated[
    str, StringConstraints(max_length=2048, pattern=r"^wss://[^\s/?#@]+(/[^\s#]*)?$")
]
Hostname = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,253}$")]
Token = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,8192}$")]
Seq = Annotated[int, Field(ge=0, le=2**53 - 1)]
Port = Annotated[int, Field(ge=1, le=65535)]


# --- messages -----------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Message(_Model):
    """Every control message: ``{"v": 1, "type": ..., ...}``."""

    v: Literal[1] = 1
    type: str  # each message narrows it to its Literal name


# client → master


class Hello(_Message):
    """First message of every connection: what the client is (guide, get_connected_clients
    fields: hostname, platform, timezone offset)."""

    type: Literal["hello"] = "hello"
    kind: ClientKind
    software_version: Version
    platform: Label64
    hostname: Label255
    utc_offset_minutes: Annotated[int, Field(ge=-18 * 60, le=18 * 60)]


class AuthRep(_Message):
    """A representative console logs in."""

    type: Literal["auth_rep"] = "auth_rep"
    username: Label255
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        repr=False
    )


class AuthCustomer(_Message):
    """A customer (or presentation attendee) joins with a session key as typed; the
    master normalises it (spaces, hyphens) and counts a wrong key against the source."""

    type: Literal["auth_customer"] = "auth_customer"
    session_key: Annotated[str, StringConstraints(min_length=1, max_length=32)]


class Ping(_Message):
    type: Literal["ping"] = "ping"
    seq: Seq = 0


class QueueList(_Message):
    """A representative asks for the queues it can see."""

    type: Literal["queue_list"] = "queue_list"


class AcceptNext(_Message):
    """A representative takes the oldest waiting session (of ``queue_id``, else of any of
    its queues)."""

    type: Literal["accept_next"] = "accept_next"
    queue_id: QueueName | None = None


class Chat(_Message):
    type: Literal["chat"] = "chat"
    session_id: Identifier
    text: ChatText


class ShowMyScreen(_Message):
    """A representative turns Show My Screen on or off."""

    type: Literal["show_my_screen"] = "show_my_screen"
    session_id: Identifier
    on: bool


class EndSession(_Message):
    type: Literal["end_session"] = "end_session"
    session_id: Identifier
    reason: Annotated[Text1024, StringConstraints(max_length=256)] = ""


class ReportHome(_Message):
    """The client tells the master which traffic node it landed on after following a
    ``home_node_directive`` (DNS or anycast, DESIGN.md §3)."""

    type: Literal["report_home"] = "report_home"
    node_guid: NodeGuid


class GenerateSessionKey(_Message):
    """A representative asks for a session key to give a customer (the Command API's
    ``generate_session_key``, from the console). ``queue_id`` (``general``, ``rep:ID``,
    ``rep_username:NAME``) defaults to the representative's personal queue; ``ttl``
    (seconds) to the site's default. The master checks both and answers ``session_key``
    or an ``error``; the fields are loose here so that a bad value is a refused request,
    not a broken connection."""

    type: Literal["generate_session_key"] = "generate_session_key"
    queue_id: Annotated[Text1024, StringConstraints(min_length=1, max_length=200)] | None = None
    ttl: Annotated[int, Field(ge=-(2**53 - 1), le=2**53 - 1)] | None = None


class RefreshGrant(_Message):
    """A participant asks for a fresh token for a stream it still holds in a started
    session: a token only opens connections within the master's ``token_ttl`` of being
    issued, so a stream connection that drops late in a long session (its traffic node
    restarted) needs a new one to reconnect. The master answers ``stream_grant`` — the
    same stream, direction and node, a new token — or an ``error`` saying why not:
    ``session_not_found`` (no such session, or the client is not in it),
    ``grant_revoked`` (the stream was taken back: Show My Screen turned off) or
    ``stream_not_granted`` (the client does not hold that stream: another participant's,
    or the session has not started)."""

    type: Literal["refresh_grant"] = "refresh_grant"
    session_id: Identifier
    stream: StreamKind
    direction: StreamDirection


# master → client


class NodeRef(_Model):
    """A node as a client needs it: what to show, what it is, where to connect."""

    name: Label64
    guid: NodeGuid
    url: WssUrl


class Welcome(_Message):
    """Authentication succeeded. ``master_addresses`` are every master's control URL, so
    the client can find the primary after a failover (DESIGN.md §5)."""

    type: Literal["welcome"] = "welcome"
    client_id: Identifier
    epoch: Annotated[int, Field(ge=0)]
    master_addresses: Annotated[tuple[WssUrl, ...], Field(min_length=1, max_length=16)]


class Error(_Message):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: Text1024
    retry_after_seconds: Annotated[int, Field(ge=0)] | None = None


class Pong(_Message):
    type: Literal["pong"] = "pong"
    seq: Seq = 0


class QueueEntry(_Model):
    session_id: Identifier
    queue_id: QueueName
    customer_hostname: Label255
    platform: Label64
    queued_at: AwareDatetime


class Queue(_Message):
    type: Literal["queue"] = "queue"
    entries: Annotated[tuple[QueueEntry, ...], Field(max_length=MAX_QUEUE_ENTRIES)]
    total: Annotated[int, Field(ge=0)]


class SessionKeyIssued(_Message):
    """The answer to ``generate_session_key``: the single-use key, the link a customer
    can click, when it expires (seconds since the epoch) and the queue it leads to."""

    type: Literal["session_key"] = "session_key"
    short_key: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,32}$")]
    key_url: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https://[^\s]+$")]
    expires: Annotated[int, Field(ge=0)]
    queue_id: QueueName


class SessionQueued(_Message):
    """The customer's session waits in ``queue_id``; ``position`` 1 is next."""

    type: Literal["session_queued"] = "session_queued"
    session_id: Identifier
    queue_id: QueueName
    position: Annotated[int, Field(ge=1)] | None = None


class SessionAccepted(_Message):
    type: Literal["session_accepted"] = "session_accepted"
    session_id: Identifier
    representative: Label255
    customer_hostname: Label255


class StreamGrant(_Model):
    """Permission to publish or subscribe one stream on one node; ``token`` is the
    master-signed stream token the node checks (DESIGN.md §2)."""

    stream: StreamKind
    direction: StreamDirection
    node: NodeRef
    token: Token


class SessionStarted(_Message):
    """The session starts: the client's home traffic node (the master itself under
    master fallback) and the connections it must make."""

    type: Literal["session_started"] = "session_started"
    session_id: Identifier
    home_node: NodeRef
    streams: Annotated[tuple[StreamGrant, ...], Field(max_length=8)]


class StreamGranted(_Message):
    """A stream added to a started session (Show My Screen turned on), or a fresh token
    for a stream the client already holds (the answer to ``refresh_grant``)."""

    type: Literal["stream_grant"] = "stream_grant"
    session_id: Identifier
    grant: StreamGrant


class StreamRevoked(_Message):
    """A stream removed from a started session (Show My Screen turned off)."""

    type: Literal["stream_revoked"] = "stream_revoked"
    session_id: Identifier
    stream: StreamKind


class SessionEnded(_Message):
    """The session is over. ``restart`` tells the client to offer a restart (a traffic
    node went offline: guide, "Check Connections"); ``node_name`` names that node."""

    type: Literal["session_ended"] = "session_ended"
    session_id: Identifier
    reason: EndReason
    message: Text1024
    node_name: Label64 | None = None
    restart: bool = False


class ChatDelivered(_Message):
    """A chat line, as every participant of the session receives it."""

    type: Literal["chat"] = "chat"
    session_id: Identifier
    sender_kind: ClientKind
    sender_name: Label255
    text: ChatText
    sent_at: AwareDatetime


class ARecordTarget(_Model):
    """Resolve ``hostname`` (A/AAAA) and connect to what DNS returns."""

    method: Literal["a_record"] = "a_record"
    hostname: Hostname
    port: Port


class SrvTarget(_Model):
    """Resolve the SRV name and try its targets in RFC 2782 order."""

    method: Literal["srv"] = "srv"
    srv_name: Hostname


class AnycastTarget(_Model):
    """Connect to the shared anycast address; check TLS against ``tls_name``."""

    method: Literal["anycast"] = "anycast"
    address: Annotated[str, StringConstraints(pattern=r"^[0-9A-Fa-f.:]{2,45}$")]
    port: Port
    tls_name: Hostname


class HomeNodeDirective(_Message):
    """For ``a_record``, ``srv`` and ``anycast``: what to resolve or dial to find the home
    traffic node. The client then sends ``report_home`` naming the node it landed on."""

    type: Literal["home_node_directive"] = "home_node_directive"
    target: Annotated[ARecordTarget | SrvTarget | AnycastTarget, Field(discriminator="method")]


AnyClientMessage = (
    Hello | AuthRep | AuthCustomer | Ping | QueueList | AcceptNext | Chat | ShowMyScreen
    | EndSession | ReportHome | GenerateSessionKey | RefreshGrant
)
AnyMasterMessage = (
    Welcome | Error | Pong | Queue | SessionQueued | SessionAccepted | SessionStarted
    | StreamGranted | StreamRevoked | SessionEnded | ChatDelivered | HomeNodeDirective
    | SessionKeyIssued
)
AnyMessage = AnyClientMessage | AnyMasterMessage


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """One row of the wire table: the ``type`` on the wire, who sends it, its model."""

    name: str
    sender: Side
    model: type[_Message]


MESSAGES: Final[tuple[MessageSpec, ...]] = (
    MessageSpec("hello", Side.CLIENT, Hello),
    MessageSpec("auth_rep", Side.CLIENT, AuthRep),
    MessageSpec("auth_customer", Side.CLIENT, AuthCustomer),
    MessageSpec("ping", Side.CLIENT, Ping),
    MessageSpec("queue_list", Side.CLIENT, QueueList),
    MessageSpec("accept_next", Side.CLIENT, AcceptNext),
    MessageSpec("chat", Side.CLIENT, Chat),
    MessageSpec("show_my_screen", Side.CLIENT, ShowMyScreen),
    MessageSpec("end_session", Side.CLIENT, EndSession),
    MessageSpec("report_home", Side.CLIENT, ReportHome),
    MessageSpec("generate_session_key", Side.CLIENT, GenerateSessionKey),
    MessageSpec("refresh_grant", Side.CLIENT, RefreshGrant),
    MessageSpec("welcome", Side.MASTER, Welcome),
    MessageSpec("error", Side.MASTER, Error),
    MessageSpec("pong", Side.MASTER, Pong),
    MessageSpec("queue", Side.MASTER, Queue),
    MessageSpec("session_queued", Side.MASTER, SessionQueued),
    MessageSpec("session_accepted", Side.MASTER, SessionAccepted),
    MessageSpec("session_started", Side.MASTER, SessionStarted),
    MessageSpec("stream_grant", Side.MASTER, StreamGranted),
    MessageSpec("stream_revoked", Side.MASTER, StreamRevoked),
    MessageSpec("session_ended", Side.MASTER, SessionEnded),
    MessageSpec("chat", Side.MASTER, ChatDelivered),
    MessageSpec("home_node_directive", Side.MASTER, HomeNodeDirective),
    MessageSpec("session_key", Side.MASTER, SessionKeyIssued),
)

_SENDER_OF: Final[Mapping[type[_Message], Side]] = {s.model: s.sender for s in MESSAGES}
_TYPES_SENT_BY: Final[Mapping[Side, frozenset[str]]] = {
    side: frozenset(s.name for s in MESSAGES if s.sender is side) for side in Side
}

_CLIENT_ADAPTER: Final[TypeAdapter[AnyClientMessage]] = TypeAdapter(
    Annotated[AnyClientMessage, Field(discriminator="type")]
)
_MASTER_ADAPTER: Final[TypeAdapter[AnyMasterMessage]] = TypeAdapter(
    Annotated[AnyMasterMessage, Field(discriminator="type")]
)


# --- the state machine ----------------------------------------------------------------


class State(StrEnum):
    """The state of the conversation; both ends track the same one."""

    CONNECTED = "connected"  # the WebSocket is open; nothing said yet
    HELLO_RECEIVED = "hello_received"  # the client said what it is
    AUTHENTICATING = "authenticating"  # credentials sent, verdict pending
    AUTHENTICATED = "authenticated"  # welcomed: queues, sessions, chat
    CLOSED = "closed"


# Everything that moves the conversation lives in these two tables.
#
# TRANSITIONS[state][(sender, type)] is the state after that message; a message without a
# row is refused: received → ProtocolViolation (the connection closes), sent →
# LocalProtocolError (nothing is sent). Rules:
# * the client speaks first (hello), then authenticates once; until the master answers,
#   only ping/pong cross;
# * `welcome` is the only way to AUTHENTICATED;
# * before `welcome`, an `error` from the master ends the conversation (hello refused,
#   credentials or session key refused): the client reconnects to try again, so every
#   attempt passes the master's per-source limits afresh;
# * once authenticated every row loops, `error` included (a refused request, not a
#   refused client): sessions have their own state machine (atlas.broker.session_state).
# Both ends may send at once (WebSocket is full duplex); the rows are chosen so that
# messages crossing on the wire are still accepted by an end that has moved on meanwhile
# (tests/protocol/test_control.py interleaves them at random to check).
_CLIENT, _MASTER = Side.CLIENT, Side.MASTER
_AUTHENTICATED_CLIENT = (
    "ping", "queue_list", "accept_next", "chat", "show_my_screen", "end_session",
    "report_home", "generate_session_key", "refresh_grant",
)
_AUTHENTICATED_MASTER = (
    "pong", "error", "queue", "session_queued", "session_accepted", "session_started",
    "stream_grant", "stream_revoked", "session_ended", "chat", "home_node_directive",
    "session_key",
)
TRANSITIONS: Final[Mapping[State, Mapping[tuple[Side, str], State]]] = {
    State.CONNECTED: {
        (_CLIENT, "hello"): State.HELLO_RECEIVED,
        (_MASTER, "error"): State.CLOSED,
    },
    State.HELLO_RECEIVED: {
        (_CLIENT, "auth_rep"): State.AUTHENTICATING,
        (_CLIENT, "auth_customer"): State.AUTHENTICATING,
        (_CLIENT, "ping"): State.HELLO_RECEIVED,
        (_MASTER, "pong"): State.HELLO_RECEIVED,
        (_MASTER, "error"): State.CLOSED,
    },
    State.AUTHENTICATING: {
        (_CLIENT, "ping"): State.AUTHENTICATING,
        (_MASTER, "pong"): State.AUTHENTICATING,
        (_MASTER, "welcome"): State.AUTHENTICATED,
        (_MASTER, "error"): State.CLOSED,
    },
    State.AUTHENTICATED: {
        **{(_CLIENT, t): State.AUTHENTICATED for t in _AUTHENTICATED_CLIENT},
        **{(_MASTER, t): State.AUTHENTICATED for t in _AUTHENTICATED_MASTER},
    },
    State.CLOSED: {},
}

# KIND_MESSAGES[kind]: the message types (either direction) a client of that kind
# exchanges once its hello has said what it is. Anything else is refused like a message
# without a TRANSITIONS row: a customer cannot accept sessions or generate session keys,
# a representative cannot redeem a session key, an attendee has no home node (it only
# subscribes to the presenter's stream on the presenter's home node, DESIGN.md §2).
_EVERY_KIND = frozenset({
    "hello", "ping", "pong", "error", "welcome", "chat", "session_started", "stream_grant",
    "stream_revoked", "session_ended", "end_session", "refresh_grant",
})
KIND_MESSAGES: Final[Mapping[ClientKind, frozenset[str]]] = {
    ClientKind.REPRESENTATIVE: _EVERY_KIND | {
        "auth_rep", "queue_list", "queue", "accept_next", "session_accepted",
        "show_my_screen", "report_home", "home_node_directive", "generate_session_key",
        "session_key",
    },
    ClientKind.SUPPORT_CUSTOMER: _EVERY_KIND | {
        "auth_customer", "session_queued", "session_accepted", "report_home",
        "home_node_directive",
    },
    ClientKind.PRESENTATION_ATTENDEE: _EVERY_KIND | {"auth_customer", "session_queued"},
}


def allowed_for_kind(kind: ClientKind | None, message_type: str) -> bool:
    """Whether a client of ``kind`` exchanges ``message_type`` (any, before ``hello``)."""
    return kind is None or message_type in KIND_MESSAGES[kind]


def next_state(
    state: State, sender: Side, message_type: str, kind: ClientKind | None
) -> State | None:
    """The state after ``sender`` sends ``message_type``, or ``None`` if refused."""
    if not allowed_for_kind(kind, message_type):
        return None
    return TRANSITIONS[state].get((sender, message_type))


# --- codec --------------------------------------------------------------------------


def _describe(exc: ValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def _parse(text: str, adapter: TypeAdapter[Any], sender: Side) -> Any:
    """Check the envelope (size, JSON object, ``v``, ``type``), then the message."""
    if len(text) > MAX_MESSAGE_BYTES:  # every character is at least one byte
        raise ProtocolViolation(ViolationKind.OVERSIZED, f"larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolViolation(ViolationKind.MALFORMED, "not valid Unicode text") from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolViolation(ViolationKind.OVERSIZED, f"larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        raw = pydantic_core.from_json(data, allow_inf_nan=False)
    except ValueError:
        raise ProtocolViolation(ViolationKind.MALFORMED, "not JSON") from None
    if not isinstance(raw, dict):
        raise ProtocolViolation(ViolationKind.MALFORMED, "not a JSON object")
    if "v" not in raw:
        raise ProtocolViolation(ViolationKind.MALFORMED, "no protocol version 'v'")
    version = raw["v"]
    if type(version) is not int:
        raise ProtocolViolation(ViolationKind.MALFORMED, "protocol version 'v' is not an integer")
    if version != PROTOCOL_VERSION:
        raise ProtocolViolation(
            ViolationKind.UNSUPPORTED_VERSION,
            f"{_truncate_utf8(str(version), 24)}, this side speaks {PROTOCOL_VERSION}",
        )
    message_type = raw.get("type")
    if not isinstance(message_type, str):
        raise ProtocolViolation(ViolationKind.MALFORMED, "no message 'type'")
    if message_type not in _TYPES_SENT_BY[sender]:
        raise ProtocolViolation(
            ViolationKind.MALFORMED,
            f"unknown {sender.value} message type {_truncate_utf8(message_type, 40)!r}",
        )
    try:
        return adapter.validate_json(data)
    except ValidationError as exc:
        raise ProtocolViolation(ViolationKind.MALFORMED, _describe(exc)) from None


def parse_client_message(text: str) -> AnyClientMessage:
    """A client→master message from its text frame; :class:`ProtocolViolation` if it is
    oversized, malformed or of another protocol version."""
    message: AnyClientMessage = _parse(text, _CLIENT_ADAPTER, Side.CLIENT)
    return message


def parse_master_message(text: str) -> AnyMasterMessage:
    """A master→client message from its text frame (see :func:`parse_client_message`)."""
    message: AnyMasterMessage = _parse(text, _MASTER_ADAPTER, Side.MASTER)
    return message


def serialize(message: AnyMessage) -> str:
    """The text frame for ``message``: compact JSON, fields in model order."""
    return message.model_dump_json()


# --- connections --------------------------------------------------------------------

InT = TypeVar("InT", bound=_Message)
OutT = TypeVar("OutT", bound=_Message)


class ControlConnection(Generic[InT, OutT]):
    """One side of a control connection, as a state machine without I/O.

    The adapter calls :meth:`receive_text` for each text frame (:meth:`receive_binary`
    for a binary one) and acts on the message returned; it sends the text that
    :meth:`send` returns. When :attr:`state` becomes ``CLOSED`` — a violation, an
    authentication refused, :meth:`close` — it closes the WebSocket with
    :attr:`close_code` and :attr:`close_reason` and stops feeding the connection.
    """

    our_side: ClassVar[Side]
    _adapter: ClassVar[TypeAdapter[Any]]

    def __init__(self) -> None:
        self._state = State.CONNECTED
        self._kind: ClientKind | None = None
        self.close_code: int | None = None
        self.close_reason = ""

    @property
    def state(self) -> State:
        return self._state

    @property
    def kind(self) -> ClientKind | None:
        """The client kind its ``hello`` announced; ``None`` before it."""
        return self._kind

    @property
    def peer_side(self) -> Side:
        return Side.MASTER if self.our_side is Side.CLIENT else Side.CLIENT

    def receive_text(self, text: str) -> InT:
        """The message in one received text frame.

        Raises :class:`ProtocolViolation` (after moving to ``CLOSED``) if the frame is
        oversized, malformed, of another protocol version, or not expected now.
        """
        if self._state is State.CLOSED:
            raise LocalProtocolError("receive_text() on a closed control connection")
        try:
            message: InT = _parse(text, self._adapter, self.peer_side)
            self._advance(message, received=True)
        except ProtocolViolation as violation:
            self._closed(violation.close_code, violation.reason)
            raise
        return message

    def receive_binary(self, data: bytes) -> None:
        """A binary frame arrived: never valid here, so always a violation."""
        if self._state is State.CLOSED:
            raise LocalProtocolError("receive_binary() on a closed control connection")
        violation = ProtocolViolation(
            ViolationKind.BINARY, "the control connection carries JSON text frames only"
        )
        self._closed(violation.close_code, violation.reason)
        raise violation

    def send(self, message: OutT) -> str:
        """The text frame to send for ``message``; :class:`LocalProtocolError` if this side
        may not send it now (nothing changes then)."""
        if self._state is State.CLOSED:
            raise LocalProtocolError(f"cannot send {message.type!r}: the connection is closed")
        if _SENDER_OF.get(type(message)) is not self.our_side:
            raise LocalProtocolError(f"the {self.our_side.value} does not send {message!r}")
        text = message.model_dump_json()
        if len(text.encode("utf-8")) > MAX_MESSAGE_BYTES:
            raise LocalProtocolError(
                f"{message.type!r} message is larger than {MAX_MESSAGE_BYTES} bytes"
            )
        self._advance(message, received=False)
        return text

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        """We close (idempotent; the first code and reason stay)."""
        self._closed(code, _truncate_utf8(reason, MAX_CLOSE_REASON_BYTES))

    def receive_close(self, code: int | None = None, reason: str = "") -> None:
        """The peer closed (``code`` from its close frame), or the transport failed
        (``None``: recorded as 1006, abnormal closure). Idempotent."""
        reason = _truncate_utf8(reason, MAX_CLOSE_REASON_BYTES)
        self._closed(1006 if code is None else code, reason)

    def _closed(self, code: int, reason: str) -> None:
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        self.close_code = code
        self.close_reason = reason

    def _advance(self, message: _Message, *, received: bool) -> None:
        sender = self.peer_side if received else self.our_side
        kind = message.kind if isinstance(message, Hello) else self._kind
        after = next_state(self._state, sender, message.type, kind)
        if after is None:
            to_from = "from" if received else "to"
            whom = f" {to_from} a {kind.value}" if kind is not None else ""
            if received:
                raise ProtocolViolation(
                    ViolationKind.UNEXPECTED, f"{message.type!r} in state {self._state}{whom}"
                )
            raise LocalProtocolError(
                f"the {sender} may not send {message.type!r} in state {self._state}{whom}"
            )
        if isinstance(message, Hello):
            self._kind = message.kind
        self._state = after
        if after is State.CLOSED:
            self.close_code, self.close_reason = CloseCode.NORMAL, _close_reason(message)


def _close_reason(message: _Message) -> str:
    if isinstance(message, Error):
        return _truncate_utf8(f"{message.code.value}: {message.message}", MAX_CLOSE_REASON_BYTES)
    return ""


class MasterControlConnection(ControlConnection[AnyClientMessage, AnyMasterMessage]):
    """The master's end: receives client messages, sends master messages."""

    our_side = Side.MASTER
    _adapter = _CLIENT_ADAPTER


class ClientControlConnection(ControlConnection[AnyMasterMessage, AnyClientMessage]):
    """A client's end: receives master messages, sends client messages."""

    our_side = Side.CLIENT
    _adapter = _MASTER_ADAPTER
