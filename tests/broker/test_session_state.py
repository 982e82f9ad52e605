"""Session lifecycle (DESIGN.md §2): every (state, event[, reason]) pair is either a row
of the table or refused, and the session object follows the table."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlas.broker.session_state import (
    END_REASONS,
    RESTART_REASONS,
    TRANSITIONS,
    EndReason,
    SessionEvent,
    SessionState,
    SessionTransitionError,
    SupportSession,
    end_message,
    next_state,
)

Q, A, S, SMS, E = (
    SessionState.QUEUED,
    SessionState.ACCEPTED,
    SessionState.STARTED,
    SessionState.SHOWING_MY_SCREEN,
    SessionState.ENDED,
)
ACCEPT, START, ON, OFF, END = (
    SessionEvent.ACCEPT,
    SessionEvent.START,
    SessionEvent.SHOW_MY_SCREEN_ON,
    SessionEvent.SHOW_MY_SCREEN_OFF,
    SessionEvent.END,
)

# Written out by hand, independently of the module's table: what may happen when.
EXPECTED: dict[tuple[SessionState, SessionEvent], SessionState] = {
    (Q, ACCEPT): A,
    (Q, END): E,
    (A, START): S,
    (A, END): E,
    (S, ON): SMS,
    (S, END): E,
    (SMS, OFF): S,
    (SMS, END): E,
}
WITH_REP = {
    EndReason.CUSTOMER_LEFT,
    EndReason.REPRESENTATIVE_ENDED,
    EndReason.REPRESENTATIVE_LEFT,
    EndReason.TRAFFIC_NODE_OFFLINE,
}
EXPECTED_REASONS: dict[SessionState, set[EndReason]] = {
    Q: {EndReason.CUSTOMER_LEFT, EndReason.KEY_EXPIRED},
    A: WITH_REP,
    S: WITH_REP,
    SMS: WITH_REP,
    E: set(),
}


def test_table_is_as_specified() -> None:
    assert dict(TRANSITIONS) == EXPECTED
    assert {state: set(reasons) for state, reasons in END_REASONS.items()} == EXPECTED_REASONS


@pytest.mark.parametrize(("state", "event"), list(itertools.product(SessionState, SessionEvent)))
def test_every_state_event_pair(state: SessionState, event: SessionEvent) -> None:
    if event is END:
        for reason in EndReason:
            if (state, END) in EXPECTED and reason in EXPECTED_REASONS[state]:
                assert next_state(state, END, reason) is E
            else:
                with pytest.raises(SessionTransitionError) as caught:
                    next_state(state, END, reason)
                assert (caught.value.state, caught.value.event, caught.value.reason) == (
                    state, END, reason
                )
                assert state.value in str(caught.value)
        return
    if (state, event) in EXPECTED:
        assert next_state(state, event) is EXPECTED[(state, event)]
    else:
        with pytest.raises(SessionTransitionError, match=f"the session is {state.value}"):
            next_state(state, event)


def test_end_needs_a_reason_and_only_end_takes_one() -> None:
    with pytest.raises(ValueError):
        next_state(Q, END)
    with pytest.raises(ValueError):
        next_state(Q, ACCEPT, EndReason.CUSTOMER_LEFT)


def test_every_state_is_reachable_and_ended_is_final() -> None:
    reachable = {Q}
    frontier = [Q]
    while frontier:
        state = frontier.pop()
        for (before, _), after in TRANSITIONS.items():
            if before is state and after not in reachable:
                reachable.add(after)
                frontier.append(after)
    assert reachable == set(SessionState)
    assert not any(before is E for before, _ in TRANSITIONS)
    assert all((state, END) in TRANSITIONS for state in SessionState if state is not E)


def _session() -> SupportSession:
    return SupportSession(session_id="s1", queue_id="general", customer_id="c1", queued_at=100.0,
                          short_key="0421337")


def test_a_session_from_queue_to_end() -> None:
    queued = _session()
    assert queued.state is Q and queued.participants() == ("c1",)
    accepted = queued.accept("r1", now=110.0)
    assert (accepted.state, accepted.representative_id, accepted.accepted_at) == (A, "r1", 110.0)
    assert accepted.participants() == ("c1", "r1")
    started = accepted.start(now=115.0)
    assert started.is_started and not started.show_my_screen
    showing = started.set_show_my_screen(True, now=120.0)
    assert showing.show_my_screen and showing.is_started and showing.show_my_screen_since == 120.0
    back = showing.set_show_my_screen(False, now=130.0)
    assert back.state is S and back.show_my_screen_since is None
    ended = back.end(EndReason.REPRESENTATIVE_ENDED, now=140.0)
    assert ended.is_ended and ended.ended_at == 140.0 and not ended.restart_advised
    assert ended.end_message() == "The representative ended the session."
    assert queued.state is Q  # values, not mutation


def test_traffic_node_offline_names_the_node_and_advises_restart() -> None:
    started = _session().accept("r1", 1.0).start(2.0).set_show_my_screen(True, 3.0)
    ended = started.end(EndReason.TRAFFIC_NODE_OFFLINE, 4.0, node_name="EMEA-1")
    assert ended.restart_advised and ended.offline_node_name == "EMEA-1"
    assert ended.end_message() == "Traffic node EMEA-1 went offline — restart the session."
    assert ended.show_my_screen_since is None
    with pytest.raises(ValueError):
        started.end(EndReason.TRAFFIC_NODE_OFFLINE, 4.0)
    with pytest.raises(ValueError):
        started.end(EndReason.CUSTOMER_LEFT, 4.0, node_name="EMEA-1")
    assert RESTART_REASONS == {EndReason.TRAFFIC_NODE_OFFLINE}


def test_refusals_leave_the_session_unchanged() -> None:
    started = _session().accept("r1", 1.0).start(2.0)
    with pytest.raises(SessionTransitionError):
        started.set_show_my_screen(False, 3.0)
    with pytest.raises(SessionTransitionError):
        _session().end(EndReason.REPRESENTATIVE_ENDED, 3.0)  # nobody accepted it yet
    ended = started.end(EndReason.CUSTOMER_LEFT, 3.0)
    with pytest.raises(SessionTransitionError):
        ended.end(EndReason.REPRESENTATIVE_ENDED, 4.0)  # customer and rep ended at once
    assert ended.end_reason is EndReason.CUSTOMER_LEFT
    with pytest.raises(ValueError):
        _session().end_message()


def test_every_reason_has_a_message() -> None:
    for reason in EndReason:
        assert end_message(reason, "EMEA-1").endswith(".")


@given(st.lists(st.sampled_from(["accept", "start", "on", "off", *list(EndReason)]),
                max_size=20))
def test_random_event_sequences_follow_the_table(events: list[str]) -> None:
    session = _session()
    for i, name in enumerate(events):
        before = session.state
        try:
            match name:
                case "accept":
                    session = session.accept("r1", float(i))
                case "start":
                    session = session.start(float(i))
                case "on" | "off":
                    session = session.set_show_my_screen(name == "on", float(i))
                case _:
                    reason = EndReason(name)
                    node = "N" if reason is EndReason.TRAFFIC_NODE_OFFLINE else None
                    session = session.end(reason, float(i), node_name=node)
        except SessionTransitionError:
            assert session.state is before
        else:
            assert (before, session.state) in {(b, a) for (b, _), a in EXPECTED.items()}
        assert session.show_my_screen == (session.state is SMS)
