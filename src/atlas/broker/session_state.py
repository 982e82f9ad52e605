"""The life of a support session on the master (DESIGN.md §2).

A session waits in a queue until a representative accepts it, starts once both
participants know their home traffic nodes and stream grants, and ends — for a reason
each participant is told. While it is started, the representative may turn Show My
Screen on and off (guide, "Run Test Connections": the customer then also connects to the
representative's home traffic node).

Everything that moves a session lives in the two tables below, h11-style; the rest of
the broker asks :func:`next_state` and never sets a state itself. Which streams each
participant holds in each state is a third table, :data:`STREAM_GRANTS`, which the
broker asks (:func:`grant_check`) before it renews a grant's token. Pure: times are passed
in (``now``, seconds since the epoch), nothing here reads a clock.

A refused transition raises :class:`SessionTransitionError` — the broker asked for
something the session's state does not allow (a representative turning Show My Screen
on twice, ending a session that already ended). It is the caller's to turn into an
``error`` reply; the session is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from atlas.protocol.control import EndReason, StreamDirection, StreamKind

__all__ = [
    "END_REASONS",
    "PUBLISHER",
    "RESTART_REASONS",
    "STREAM_GRANTS",
    "TRANSITIONS",
    "EndReason",
    "GrantCheck",
    "Participant",
    "SessionEvent",
    "SessionState",
    "SessionTransitionError",
    "SupportSession",
    "end_message",
    "grant_check",
    "next_state",
]


class SessionState(StrEnum):
    QUEUED = "queued"  # waiting for a representative
    ACCEPTED = "accepted"  # a representative took it; home nodes and grants being set up
    STARTED = "started"  # streams flow
    SHOWING_MY_SCREEN = "showing_my_screen"  # started, and the rep's screen is shown too
    ENDED = "ended"  # final


class SessionEvent(StrEnum):
    ACCEPT = "accept"
    START = "start"
    SHOW_MY_SCREEN_ON = "show_my_screen_on"
    SHOW_MY_SCREEN_OFF = "show_my_screen_off"
    END = "end"


_Q, _A, _S, _SMS, _E = (
    SessionState.QUEUED,
    SessionState.ACCEPTED,
    SessionState.STARTED,
    SessionState.SHOWING_MY_SCREEN,
    SessionState.ENDED,
)

# TRANSITIONS[(state, event)] is the state after the event; a pair without a row is
# refused. Rules: a session moves forward only (queued → accepted → started → ended);
# Show My Screen toggles between STARTED and SHOWING_MY_SCREEN, one way at a time;
# every state but ENDED can end, and ENDED is final (a session cut short by a traffic
# node going offline is restarted as a new session, guide "Check Connections").
TRANSITIONS: Final[Mapping[tuple[SessionState, SessionEvent], SessionState]] = {
    (_Q, SessionEvent.ACCEPT): _A,
    (_Q, SessionEvent.END): _E,
    (_A, SessionEvent.START): _S,
    (_A, SessionEvent.END): _E,
    (_S, SessionEvent.SHOW_MY_SCREEN_ON): _SMS,
    (_S, SessionEvent.END): _E,
    (_SMS, SessionEvent.SHOW_MY_SCREEN_OFF): _S,
    (_SMS, SessionEvent.END): _E,
}

# END_REASONS[state]: the reasons a session in that state may end for. A queued session
# has no representative and no traffic node yet; only a queued one can outlive its
# session key (once accepted, the key has done its job).
_WITH_REPRESENTATIVE = frozenset({
    EndReason.CUSTOMER_LEFT,
    EndReason.REPRESENTATIVE_ENDED,
    EndReason.REPRESENTATIVE_LEFT,
    EndReason.TRAFFIC_NODE_OFFLINE,
})
END_REASONS: Final[Mapping[SessionState, frozenset[EndReason]]] = {
    _Q: frozenset({EndReason.CUSTOMER_LEFT, EndReason.KEY_EXPIRED}),
    _A: _WITH_REPRESENTATIVE,
    _S: _WITH_REPRESENTATIVE,
    _SMS: _WITH_REPRESENTATIVE,
    _E: frozenset(),
}

RESTART_REASONS: Final = frozenset({EndReason.TRAFFIC_NODE_OFFLINE})
"""Reasons after which the participants are told to restart the session."""


class Participant(StrEnum):
    """A participant's part in a support session."""

    CUSTOMER = "customer"
    REPRESENTATIVE = "representative"


_PUB, _SUB = StreamDirection.PUBLISH, StreamDirection.SUBSCRIBE
_CUSTOMER_SCREEN, _REP_SCREEN = StreamKind.CUSTOMER_SCREEN, StreamKind.REPRESENTATIVE_SCREEN
_STARTED_GRANTS: Final[Mapping[Participant, frozenset[tuple[StreamKind, StreamDirection]]]] = {
    Participant.CUSTOMER: frozenset({(_CUSTOMER_SCREEN, _PUB)}),
    Participant.REPRESENTATIVE: frozenset({(_CUSTOMER_SCREEN, _SUB), (_REP_SCREEN, _PUB)}),
}

# STREAM_GRANTS[state][participant]: the (stream, direction) grants the participant holds
# in that state (DESIGN.md §2). Rules: nothing before the session starts or after it
# ends; once started, the customer publishes its screen and the representative views it
# and publishes its own (on standby until Show My Screen); with Show My Screen on, the
# customer also views the representative's screen — and loses that grant when it is
# turned off again. A grant is renewed (a fresh token) only while it is held.
STREAM_GRANTS: Final[
    Mapping[SessionState, Mapping[Participant, frozenset[tuple[StreamKind, StreamDirection]]]]
] = {
    _Q: {Participant.CUSTOMER: frozenset(), Participant.REPRESENTATIVE: frozenset()},
    _A: {Participant.CUSTOMER: frozenset(), Participant.REPRESENTATIVE: frozenset()},
    _S: _STARTED_GRANTS,
    _SMS: {
        Participant.CUSTOMER: _STARTED_GRANTS[Participant.CUSTOMER] | {(_REP_SCREEN, _SUB)},
        Participant.REPRESENTATIVE: _STARTED_GRANTS[Participant.REPRESENTATIVE],
    },
    _E: {Participant.CUSTOMER: frozenset(), Participant.REPRESENTATIVE: frozenset()},
}

PUBLISHER: Final[Mapping[StreamKind, Participant]] = {
    _CUSTOMER_SCREEN: Participant.CUSTOMER,
    _REP_SCREEN: Participant.REPRESENTATIVE,
}
"""Whose screen a stream is; its grants are all for the publisher's home traffic node."""


class GrantCheck(StrEnum):
    """Whether a participant holds a stream grant now (:func:`grant_check`)."""

    HELD = "held"
    REVOKED = "revoked"  # held in an earlier state of this session, not now
    NOT_STARTED = "not_started"  # the session has not started (or has ended)
    NOT_GRANTED = "not_granted"  # not held now, nor at any time before


def grant_check(state: SessionState, participant: Participant, stream: StreamKind,
                direction: StreamDirection,
                visited: frozenset[SessionState] = frozenset()) -> GrantCheck:
    """Whether ``participant`` holds the grant to ``direction`` ``stream`` in ``state``;
    ``visited``: the states the session went through before (to tell a grant taken back
    from one never given)."""
    wanted = (stream, direction)
    if wanted in STREAM_GRANTS[state][participant]:
        return GrantCheck.HELD
    if state not in (_S, _SMS):
        return GrantCheck.NOT_STARTED
    if any(wanted in STREAM_GRANTS[before][participant] for before in visited):
        return GrantCheck.REVOKED
    return GrantCheck.NOT_GRANTED


class SessionTransitionError(Exception):
    """The session's state does not allow the event (the broker's request, refused)."""

    def __init__(
        self, state: SessionState, event: SessionEvent, reason: EndReason | None = None
    ) -> None:
        self.state = state
        self.event = event
        self.reason = reason
        what = f"{event.value} ({reason.value})" if reason is not None else event.value
        super().__init__(f"cannot {what}: the session is {state.value}")


def next_state(
    state: SessionState, event: SessionEvent, reason: EndReason | None = None
) -> SessionState:
    """The state after ``event``; ``reason`` is required for, and only for, ``END``."""
    if (event is SessionEvent.END) != (reason is not None):
        raise ValueError("an end reason goes with the END event, and only with it")
    after = TRANSITIONS.get((state, event))
    if after is None or (reason is not None and reason not in END_REASONS[state]):
        raise SessionTransitionError(state, event, reason)
    return after


def end_message(reason: EndReason, node_name: str | None = None) -> str:
    """What the participants are told (``session_ended.message``)."""
    match reason:
        case EndReason.CUSTOMER_LEFT:
            return "The customer left the session."
        case EndReason.REPRESENTATIVE_ENDED:
            return "The representative ended the session."
        case EndReason.REPRESENTATIVE_LEFT:
            return "The representative's console went offline."
        case EndReason.TRAFFIC_NODE_OFFLINE:
            return f"Traffic node {node_name or '(unknown)'} went offline — restart the session."
        case EndReason.KEY_EXPIRED:
            return "The session key expired before a representative accepted the session."


@dataclass(frozen=True, slots=True, kw_only=True)
class SupportSession:
    """One support session as the master knows it; every change returns a new value.

    ``queue_id`` is the queue's text form (``general``, ``rep:12``,
    ``rep_username:alice``); ``short_key`` the session key it was started with, if any.
    """

    session_id: str
    queue_id: str
    customer_id: str
    queued_at: float
    short_key: str | None = None
    state: SessionState = SessionState.QUEUED
    representative_id: str | None = None
    accepted_at: float | None = None
    started_at: float | None = None
    show_my_screen_since: float | None = None
    ended_at: float | None = None
    end_reason: EndReason | None = None
    offline_node_name: str | None = None
    visited: frozenset[SessionState] = frozenset({SessionState.QUEUED})
    """Every state the session has been in, this one included."""

    @property
    def is_started(self) -> bool:
        return self.state in (SessionState.STARTED, SessionState.SHOWING_MY_SCREEN)

    @property
    def is_ended(self) -> bool:
        return self.state is SessionState.ENDED

    @property
    def show_my_screen(self) -> bool:
        return self.state is SessionState.SHOWING_MY_SCREEN

    @property
    def restart_advised(self) -> bool:
        """Whether the participants should restart it (a traffic node went offline)."""
        return self.end_reason in RESTART_REASONS

    def part_of(self, client_id: str) -> Participant | None:
        """``client_id``'s part in this session, or ``None`` if it takes no part."""
        if client_id == self.customer_id:
            return Participant.CUSTOMER
        if client_id == self.representative_id:
            return Participant.REPRESENTATIVE
        return None

    def participant_id(self, participant: Participant) -> str | None:
        """The client id of ``participant`` (``None``: no representative yet)."""
        if participant is Participant.CUSTOMER:
            return self.customer_id
        return self.representative_id

    def participants(self) -> tuple[str, ...]:
        """Client ids of the customer and, once accepted, the representative."""
        if self.representative_id is None:
            return (self.customer_id,)
        return (self.customer_id, self.representative_id)

    def grant(self, client_id: str, stream: StreamKind,
              direction: StreamDirection) -> GrantCheck | None:
        """Whether ``client_id`` holds that grant now; ``None``: it takes no part."""
        part = self.part_of(client_id)
        if part is None:
            return None
        return grant_check(self.state, part, stream, direction, self.visited)

    def accept(self, representative_id: str, now: float) -> SupportSession:
        state = next_state(self.state, SessionEvent.ACCEPT)
        return replace(self, state=state, visited=self.visited | {state},
                       representative_id=representative_id, accepted_at=now)

    def start(self, now: float) -> SupportSession:
        state = next_state(self.state, SessionEvent.START)
        return replace(self, state=state, visited=self.visited | {state}, started_at=now)

    def set_show_my_screen(self, on: bool, now: float) -> SupportSession:
        event = SessionEvent.SHOW_MY_SCREEN_ON if on else SessionEvent.SHOW_MY_SCREEN_OFF
        state = next_state(self.state, event)
        return replace(self, state=state, visited=self.visited | {state},
                       show_my_screen_since=now if on else None)

    def end(
        self, reason: EndReason, now: float, *, node_name: str | None = None
    ) -> SupportSession:
        """End for ``reason``; ``node_name`` names the traffic node that went offline
        (required for, and only for, ``traffic_node_offline``)."""
        if (reason is EndReason.TRAFFIC_NODE_OFFLINE) != (node_name is not None):
            raise ValueError("node_name goes with traffic_node_offline, and only with it")
        state = next_state(self.state, SessionEvent.END, reason)
        return replace(
            self,
            state=state,
            visited=self.visited | {state},
            ended_at=now,
            end_reason=reason,
            offline_node_name=node_name,
            show_my_screen_since=None,
        )

    def end_message(self) -> str:
        """What the participants are told; only for an ended session."""
        if self.end_reason is None:
            raise ValueError(f"session {self.session_id} has not ended")
        return end_message(self.end_reason, self.offline_node_name)
