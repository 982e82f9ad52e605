"""Renewing a stream grant (``refresh_grant``): the table of grants held, and the broker.

A stream token opens connections only within ``token_ttl_seconds`` of being issued; a
participant whose stream connection drops late in a long session asks the master for a
fresh token of a grant it still holds. The broker runs on a fake clock (see
``test_service``): "ten minutes later" is a clock step, not a wait.
"""

from __future__ import annotations

import itertools

import pytest

from atlas.broker.session_state import (
    PUBLISHER,
    STREAM_GRANTS,
    EndReason,
    GrantCheck,
    Participant,
    SessionState,
    SupportSession,
    grant_check,
)
from atlas.broker.stream_tokens import TokenExpired
from atlas.model.config import SelectionMethod
from atlas.protocol.control import (
    AcceptNext,
    EndSession,
    Error,
    ErrorCode,
    HomeNodeDirective,
    RefreshGrant,
    SessionAccepted,
    SessionStarted,
    ShowMyScreen,
    StreamDirection,
    StreamGranted,
    StreamKind,
    StreamRevoked,
)
from tests.broker.test_service import (
    TWO_REGIONS,
    Client,
    World,
    cluster,
    make_world,
    start_session,
    traffic,
)

CUSTOMER, REP = Participant.CUSTOMER, Participant.REPRESENTATIVE
PUB, SUB = StreamDirection.PUBLISH, StreamDirection.SUBSCRIBE
CUSTOMER_SCREEN, REP_SCREEN = StreamKind.CUSTOMER_SCREEN, StreamKind.REPRESENTATIVE_SCREEN

# Written out by hand (DESIGN.md §2), independently of the module's table.
HELD: dict[tuple[SessionState, Participant], set[tuple[StreamKind, StreamDirection]]] = {
    (SessionState.STARTED, CUSTOMER): {(CUSTOMER_SCREEN, PUB)},
    (SessionState.STARTED, REP): {(CUSTOMER_SCREEN, SUB), (REP_SCREEN, PUB)},
    (SessionState.SHOWING_MY_SCREEN, CUSTOMER): {(CUSTOMER_SCREEN, PUB), (REP_SCREEN, SUB)},
    (SessionState.SHOWING_MY_SCREEN, REP): {(CUSTOMER_SCREEN, SUB), (REP_SCREEN, PUB)},
}


# --- the table ---------------------------------------------------------------------------


def test_grants_held_in_each_state() -> None:
    for state, part in itertools.product(SessionState, Participant):
        assert STREAM_GRANTS[state][part] == HELD.get((state, part), set()), (state, part)
    # a participant publishes only its own screen, and nobody views their own
    for grants in STREAM_GRANTS.values():
        for part, held in grants.items():
            for stream, direction in held:
                assert (PUBLISHER.get(stream) is part) == (direction is PUB)


@pytest.mark.parametrize("state", list(SessionState))
@pytest.mark.parametrize("part", list(Participant))
@pytest.mark.parametrize("stream", list(StreamKind))
@pytest.mark.parametrize("direction", list(StreamDirection))
@pytest.mark.parametrize("shown", [False, True])
def test_grant_check_says_why(state: SessionState, part: Participant, stream: StreamKind,
                              direction: StreamDirection, shown: bool) -> None:
    """``shown``: the session went through Show My Screen before reaching ``state``."""
    visited = {SessionState.QUEUED, SessionState.ACCEPTED, state}
    if shown:
        visited |= {SessionState.STARTED, SessionState.SHOWING_MY_SCREEN}
    check = grant_check(state, part, stream, direction, frozenset(visited))
    wanted = (stream, direction)
    held_before = any(wanted in HELD.get((s, part), set()) for s in visited)
    if wanted in HELD.get((state, part), set()):
        assert check is GrantCheck.HELD
    elif state not in (SessionState.STARTED, SessionState.SHOWING_MY_SCREEN):
        assert check is GrantCheck.NOT_STARTED
    elif held_before:
        assert check is GrantCheck.REVOKED
        # the only grant ever taken back: the customer's view of Show My Screen
        assert (part, stream, direction, state) == (CUSTOMER, REP_SCREEN, SUB,
                                                    SessionState.STARTED)
    else:
        assert check is GrantCheck.NOT_GRANTED


def test_a_session_remembers_where_it_has_been() -> None:
    session = SupportSession(session_id="s1", queue_id="general", customer_id="c",
                             queued_at=0.0)
    assert session.visited == {SessionState.QUEUED}
    assert session.grant("c", CUSTOMER_SCREEN, PUB) is GrantCheck.NOT_STARTED
    session = session.accept("r", 1.0).start(2.0)
    assert session.grant("c", CUSTOMER_SCREEN, PUB) is GrantCheck.HELD
    assert session.grant("c", REP_SCREEN, SUB) is GrantCheck.NOT_GRANTED  # not shown yet
    assert session.grant("someone", CUSTOMER_SCREEN, SUB) is None
    session = session.set_show_my_screen(True, 3.0)
    assert session.grant("c", REP_SCREEN, SUB) is GrantCheck.HELD
    session = session.set_show_my_screen(False, 4.0)
    assert session.grant("c", REP_SCREEN, SUB) is GrantCheck.REVOKED
    assert session.grant("r", REP_SCREEN, PUB) is GrantCheck.HELD  # standby, still held
    session = session.end(EndReason.REPRESENTATIVE_ENDED, 5.0)
    assert session.visited == set(SessionState)
    assert session.grant("r", REP_SCREEN, PUB) is GrantCheck.NOT_STARTED


# --- the broker ----------------------------------------------------------------------------


async def _refresh(client: Client, session_id: str, stream: StreamKind,
                   direction: StreamDirection) -> StreamGranted | Error:
    await client.say(RefreshGrant(session_id=session_id, stream=stream, direction=direction))
    answers: list[StreamGranted | Error] = [*client.link.take(StreamGranted),
                                            *client.link.take(Error)]
    assert len(answers) == 1, answers  # exactly one answer to each request
    return answers[0]


def _expired_at_connect(world: World, token: str, node_guid: str) -> bool:
    try:
        world.keyring().verify(token, node_guid=node_guid, now=world.clock())
    except TokenExpired:
        return True
    return False


async def test_a_held_grant_is_renewed_for_the_same_node_long_after_its_token_expired(
) -> None:
    world = make_world(TWO_REGIONS, token_ttl_seconds=120)
    rep, customer, cstart, rstart = await start_session(world)
    sid = cstart.session_id
    (publish,) = cstart.streams
    view, own = rstart.streams
    rep.link.inbox.clear()
    customer.link.inbox.clear()
    world.clock.now += 600  # ten minutes into the session: the first tokens are stale
    assert _expired_at_connect(world, publish.token, "guid-emea")

    answer = await _refresh(customer, sid, CUSTOMER_SCREEN, PUB)
    assert isinstance(answer, StreamGranted) and answer.session_id == sid
    fresh = answer.grant
    assert (fresh.stream, fresh.direction, fresh.node) == (CUSTOMER_SCREEN, PUB, publish.node)
    assert fresh.token != publish.token
    claims = world.keyring().verify(fresh.token, node_guid="guid-emea", now=world.clock(),
                                    session=sid, stream="screen:customer",
                                    direction="publish")
    assert claims.participant == customer.id
    assert claims.expires_at == int(world.clock() + 120)
    # the representative renews both of its grants, each on its own node
    for old in (view, own):
        renewed = await _refresh(rep, sid, old.stream, old.direction)
        assert isinstance(renewed, StreamGranted)
        assert renewed.grant.node == old.node and renewed.grant.direction is old.direction
        assert world.keyring().verify(renewed.grant.token, node_guid=old.node.guid,
                                      now=world.clock()).participant == rep.id
    # nothing else changed: no other message to anyone, the session runs on
    assert customer.link.inbox == [] and rep.link.inbox == []
    assert world.broker.session_count() == 1


async def test_show_my_screen_grant_is_renewed_while_on_and_refused_once_revoked() -> None:
    world = make_world(TWO_REGIONS)
    rep, customer, cstart, _ = await start_session(world)
    sid = cstart.session_id
    refused = await _refresh(customer, sid, REP_SCREEN, SUB)  # not shown yet
    assert isinstance(refused, Error) and refused.code is ErrorCode.STREAM_NOT_GRANTED
    await rep.say(ShowMyScreen(session_id=sid, on=True))
    granted = customer.link.one(StreamGranted).grant
    renewed = await _refresh(customer, sid, REP_SCREEN, SUB)
    assert isinstance(renewed, StreamGranted) and renewed.grant.node == granted.node
    assert renewed.grant.node.guid == "guid-us"  # the representative's home node
    await rep.say(ShowMyScreen(session_id=sid, on=False))
    customer.link.one(StreamRevoked)
    revoked = await _refresh(customer, sid, REP_SCREEN, SUB)
    assert isinstance(revoked, Error) and revoked.code is ErrorCode.GRANT_REVOKED
    assert "revoked" in revoked.message and sid in revoked.message
    # the standby publisher of the representative's screen is still held
    assert isinstance(await _refresh(rep, sid, REP_SCREEN, PUB), StreamGranted)


@pytest.mark.parametrize(("who", "stream", "direction"), [
    ("customer", REP_SCREEN, PUB),  # the representative's stream
    ("customer", CUSTOMER_SCREEN, SUB),  # its own screen, as a viewer
    ("rep", CUSTOMER_SCREEN, PUB),  # the customer's stream
    ("rep", REP_SCREEN, SUB),
    ("customer", StreamKind.PRESENTER_SCREEN, SUB),  # not a stream of support sessions
])
async def test_a_stream_the_participant_does_not_hold_is_refused(
        who: str, stream: StreamKind, direction: StreamDirection) -> None:
    world = make_world(TWO_REGIONS)
    rep, customer, cstart, _ = await start_session(world)
    asker = customer if who == "customer" else rep
    answer = await _refresh(asker, cstart.session_id, stream, direction)
    assert isinstance(answer, Error) and answer.code is ErrorCode.STREAM_NOT_GRANTED
    assert f"{direction.value} {stream.value}" in answer.message
    assert asker.link.master.state.value == "authenticated"  # refused, not disconnected


async def test_refresh_for_an_ended_or_unknown_session_or_someone_elses_is_refused() -> None:
    world = make_world(TWO_REGIONS)
    rep, customer, cstart, _ = await start_session(world)
    sid = cstart.session_id
    # another customer, in a session of its own with another representative, asks for
    # a stream of the first session
    bob = await world.rep("bob", ip="10.2.0.6")
    other = await world.customer(ip="10.1.0.20", hostname="other-pc")
    await bob.say(AcceptNext())
    other.link.one(SessionStarted)
    for stranger in (other, bob):
        answer = await _refresh(stranger, sid, CUSTOMER_SCREEN, SUB)
        assert isinstance(answer, Error) and answer.code is ErrorCode.SESSION_NOT_FOUND
    unknown = await _refresh(customer, "s-no-such-session", CUSTOMER_SCREEN, PUB)
    assert isinstance(unknown, Error) and unknown.code is ErrorCode.SESSION_NOT_FOUND
    await rep.say(EndSession(session_id=sid))
    rep.link.inbox.clear()
    customer.link.inbox.clear()
    for participant, direction in ((customer, PUB), (rep, SUB)):
        ended = await _refresh(participant, sid, CUSTOMER_SCREEN, direction)
        assert isinstance(ended, Error) and ended.code is ErrorCode.SESSION_NOT_FOUND


async def test_refresh_before_the_session_starts_is_refused() -> None:
    world = make_world(cluster(traffic("emea"), traffic("us"),
                               method=SelectionMethod.A_RECORD,
                               a_record_hostname="traffic.example.test"))
    rep = await world.rep()
    customer = await world.customer()
    await rep.say(AcceptNext())  # accepted; both must follow the directive first
    sid = customer.link.one(SessionAccepted).session_id
    customer.link.one(HomeNodeDirective)
    answer = await _refresh(customer, sid, CUSTOMER_SCREEN, PUB)
    assert isinstance(answer, Error) and answer.code is ErrorCode.STREAM_NOT_GRANTED
    assert "not started" in answer.message
