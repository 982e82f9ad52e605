"""Publishing and viewing a screen through a real relay, and the same-node reconnect rule."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from atlas.clients.errors import SessionFailed
from atlas.clients.network import NetworkSettings
from atlas.clients.screen import TestPattern
from atlas.clients.screen_codec import ScreenEncoder
from atlas.clients.streams import (
    FrameReceived,
    FrameSent,
    GrantRefreshed,
    RetryPolicy,
    ScreenPublisher,
    StreamDown,
    StreamEvent,
    StreamFinished,
    StreamLost,
    StreamTarget,
    StreamUp,
    StreamViewer,
)
from atlas.protocol.control import NodeRef, StreamDirection, StreamKind
from atlas.protocol.frames import CloseCode
from tests.relay.conftest import NODE_GUID, RelayUnderTest, StartRelay

pytestmark = pytest.mark.timeout(60)
SESSION = "s-1"
STREAM = StreamKind.CUSTOMER_SCREEN


class Events:
    """Collects runner events; wait for one with a deadline (no sleeps)."""

    def __init__(self) -> None:
        self.items: list[StreamEvent] = []
        self._changed = asyncio.Event()

    async def __call__(self, event: StreamEvent) -> None:
        self.items.append(event)
        self._changed.set()

    def of(self, kind: type) -> list[StreamEvent]:
        return [e for e in self.items if isinstance(e, kind)]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def target(relay: RelayUnderTest, direction: StreamDirection, *, participant: str = "p-1",
           node_guid: str = NODE_GUID, now: float | None = None) -> StreamTarget:
    node = NodeRef(name="relay-1", guid=NODE_GUID, url=relay.base.replace("https", "wss"))
    token = relay.token(direction.value, session=SESSION, stream=STREAM.value,  # type: ignore[arg-type]
                        participant=participant, node_guid=node_guid, now=now)
    return StreamTarget(SESSION, STREAM, direction, node, token)


def network(relay: RelayUnderTest) -> NetworkSettings:
    return NetworkSettings(tls=relay.client_ssl)


FAST = RetryPolicy(same_node_window=5.0, backoff_initial=0.05, backoff_max=0.2,
                   connect_timeout=5.0)


async def test_frames_arrive_intact_and_in_order(start_relay: StartRelay) -> None:
    relay = await start_relay()
    seen, sent = Events(), Events()
    viewer = StreamViewer(target(relay, StreamDirection.SUBSCRIBE, participant="rep"),
                          network=network(relay), on_event=seen, decode=True, policy=FAST)
    view_task = asyncio.create_task(viewer.run())
    await seen.wait(lambda: bool(seen.of(StreamUp)))
    pattern = TestPattern((320, 180))
    publisher = ScreenPublisher(target(relay, StreamDirection.PUBLISH), pattern,
                                network=network(relay), on_event=sent, fps=50,
                                encoder=ScreenEncoder(key_interval=10), policy=FAST)
    await publisher.run(max_frames=25)
    # the viewer stays (only the master ends a session); it saw the end and waits again
    await seen.wait(lambda: bool(seen.of(StreamDown)))
    viewer.stop()
    await asyncio.wait_for(view_task, 20)

    frames = [e for e in seen.items if isinstance(e, FrameReceived)]
    assert [f.counter for f in frames] == list(range(1, 26))
    assert [f.seq for f in frames] == list(range(1, 26))
    assert [f.seq for f in frames if f.key] == [1, 11, 21]
    assert all(f.picture is not None for f in frames)
    assert next(e.reason for e in seen.of(StreamDown)).startswith(  # type: ignore[attr-defined]
        "relay-1 ended the stream (1000")
    assert sent.of(StreamFinished)  # the publisher ended it after its 25 frames
    assert viewer.stats.frames == 25 and viewer.stats.skipped == 0
    assert viewer.stats.out_of_order == 0 and viewer.undecodable == 0
    assert all(-1000 < (f.received_us - f.timestamp_us) / 1000 < 5000 for f in frames)
    assert publisher.frames_sent == 25 and publisher.counter == 25


async def test_after_a_drop_both_reconnect_to_the_same_node(start_relay: StartRelay) -> None:
    relay = await start_relay()
    seen, sent = Events(), Events()
    viewer = StreamViewer(target(relay, StreamDirection.SUBSCRIBE, participant="rep"),
                          network=network(relay), on_event=seen, decode=True, policy=FAST)
    publisher = ScreenPublisher(target(relay, StreamDirection.PUBLISH), TestPattern((160, 90)),
                                network=network(relay), on_event=sent, fps=30, policy=FAST)
    tasks = [asyncio.create_task(viewer.run()), asyncio.create_task(publisher.run())]
    try:
        await seen.wait(lambda: len(seen.of(FrameReceived)) >= 5)
        relay.service.hub.close_all(CloseCode.GOING_AWAY, "the traffic node is restarting")
        await sent.wait(lambda: any(isinstance(e, StreamUp) and e.reconnected
                                    for e in sent.items))
        before = len(seen.of(FrameReceived))
        await seen.wait(lambda: len(seen.of(FrameReceived)) >= before + 10)
    finally:
        publisher.stop()
        viewer.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    down = [e for e in sent.of(StreamDown) if isinstance(e, StreamDown)]
    assert down and "1001" in down[0].reason
    assert all(isinstance(e, StreamUp) and e.node.guid == NODE_GUID for e in sent.of(StreamUp))
    frames = [e for e in seen.items if isinstance(e, FrameReceived)]
    counters = [f.counter for f in frames if f.counter is not None]
    assert counters == sorted(counters)  # the counter goes on across the reconnect
    after = frames[frames.index(next(f for f in frames if f.seq == 1 and f is not frames[0])):]
    assert after[0].key  # a new connection starts with a key frame


async def test_a_node_gone_for_the_whole_window_is_given_up(start_relay: StartRelay) -> None:
    relay = await start_relay()
    sent = Events()
    policy = RetryPolicy(same_node_window=1.0, backoff_initial=0.05, backoff_max=0.2)
    publisher = ScreenPublisher(target(relay, StreamDirection.PUBLISH), TestPattern((160, 90)),
                                network=network(relay), on_event=sent, fps=20, policy=policy)
    task = asyncio.create_task(publisher.run())
    await sent.wait(lambda: bool(sent.of(StreamUp)))
    started = time.monotonic()
    await relay.runner.cleanup()  # the node goes away for good
    await asyncio.wait_for(task, 20)
    lost = sent.of(StreamLost)
    assert len(lost) == 1 and isinstance(lost[0], StreamLost)
    assert lost[0].node.name == "relay-1"
    assert 0.9 < time.monotonic() - started < 10


async def test_a_token_for_another_node_is_refused_for_good(start_relay: StartRelay) -> None:
    relay = await start_relay()
    publisher = ScreenPublisher(
        target(relay, StreamDirection.PUBLISH, node_guid="e" * 32), TestPattern((64, 48)),
        network=network(relay), on_event=Events(), policy=FAST)
    with pytest.raises(SessionFailed, match="refused"):
        await publisher.run()


async def test_an_expired_token_waits_for_a_fresh_grant(start_relay: StartRelay) -> None:
    relay = await start_relay()
    sent = Events()
    stale = target(relay, StreamDirection.PUBLISH, now=time.time() - 3600)
    publisher = ScreenPublisher(stale, TestPattern((64, 48)), network=network(relay),
                                on_event=sent, fps=20, policy=FAST)
    task = asyncio.create_task(publisher.run(max_frames=3))
    await sent.wait(lambda: bool(sent.of(StreamDown)))
    down = sent.of(StreamDown)[0]
    assert isinstance(down, StreamDown) and "expired" in down.reason.lower()
    publisher.replace_target(target(relay, StreamDirection.PUBLISH))
    await asyncio.wait_for(task, 20)
    assert sent.of(StreamUp) and publisher.frames_sent == 3


# --- renewing a grant whose token no longer opens connections ------------------------


class FakeMaster:
    """Answers a runner's ``refresh`` as the master would: a fresh token, or a refusal."""

    def __init__(self, relay: RelayUnderTest, *, refuse: str | None = None) -> None:
        self.relay = relay
        self.refuse = refuse
        self.asked: list[StreamTarget] = []
        self.runner: ScreenPublisher | StreamViewer | None = None

    async def __call__(self, stale: StreamTarget) -> bool:
        self.asked.append(stale)
        assert self.runner is not None
        runner = self.runner

        def answer() -> None:  # later, as the reply arrives on the control connection
            if self.refuse is not None:
                runner.grant_refused(self.refuse)
                return
            fresh = target(self.relay, stale.direction)
            runner.replace_target(replace(fresh, connect_by=time.monotonic() + 60))

        asyncio.get_running_loop().call_later(0.01, answer)
        return True


def test_a_grant_knows_how_long_its_token_opens_connections() -> None:
    from atlas.broker.stream_tokens import StreamSigner
    from atlas.protocol.control import StreamGrant

    token = StreamSigner.generate(issuer="m").issue(
        node_guid=NODE_GUID, participant="p", session=SESSION, direction="publish",
        stream=STREAM.value, now=time.time() - 3600, ttl=120)  # issued long ago
    node = NodeRef(name="relay-1", guid=NODE_GUID, url="wss://relay.test")
    grant = StreamGrant(stream=STREAM, direction=StreamDirection.PUBLISH, node=node,
                        token=token)
    got = StreamTarget.from_grant(SESSION, grant, received_at=1000.0)
    assert got.connect_by == 1120.0  # counted from arrival: the clocks may differ
    assert not got.expires_within(10.0, now=1109.0)
    assert got.expires_within(10.0, now=1110.0)
    unknown = StreamTarget.from_grant(SESSION, grant.model_copy(update={"token": "opaque"}))
    assert unknown.connect_by is None and not unknown.expires_within(1e9)


async def test_an_expiring_token_is_renewed_before_reconnecting(
        start_relay: StartRelay) -> None:
    relay = await start_relay()
    sent = Events()
    stale = replace(target(relay, StreamDirection.PUBLISH, now=time.time() - 3600),
                    connect_by=time.monotonic() - 1)
    master = FakeMaster(relay)
    publisher = ScreenPublisher(stale, TestPattern((64, 48)), network=network(relay),
                                on_event=sent, fps=20, policy=FAST, refresh=master)
    master.runner = publisher
    await asyncio.wait_for(publisher.run(max_frames=3), 20)
    assert master.asked == [stale]  # asked once, before connecting
    assert not sent.of(StreamDown)  # the node never saw the stale token
    assert [type(e) for e in sent.items if not isinstance(e, FrameSent)][:2] == [
        GrantRefreshed, StreamUp]
    assert publisher.frames_sent == 3


async def test_a_token_the_node_calls_expired_is_renewed(start_relay: StartRelay) -> None:
    relay = await start_relay()
    seen = Events()
    stale = target(relay, StreamDirection.SUBSCRIBE, now=time.time() - 3600)
    assert stale.connect_by is None  # nothing told the client it would expire
    master = FakeMaster(relay)
    viewer = StreamViewer(stale, network=network(relay), on_event=seen, policy=FAST,
                          refresh=master)
    master.runner = viewer
    task = asyncio.create_task(viewer.run())
    try:
        await seen.wait(lambda: bool(seen.of(StreamUp)))
    finally:
        viewer.stop()
        await asyncio.wait_for(task, 20)
    assert master.asked == [stale]
    assert not seen.of(StreamDown)  # straight to the master, no backoff
    assert isinstance(seen.of(GrantRefreshed)[0], GrantRefreshed)


async def test_a_refused_renewal_stops_the_runner(start_relay: StartRelay) -> None:
    relay = await start_relay()
    seen = Events()
    stale = replace(target(relay, StreamDirection.SUBSCRIBE, now=time.time() - 3600),
                    connect_by=time.monotonic() - 1)
    master = FakeMaster(relay, refuse="grant_revoked: your grant was revoked")
    viewer = StreamViewer(stale, network=network(relay), on_event=seen, policy=FAST,
                          refresh=master)
    master.runner = viewer
    await asyncio.wait_for(viewer.run(), 20)
    (lost,) = seen.of(StreamLost)
    assert isinstance(lost, StreamLost) and "grant_revoked" in lost.reason
    assert not seen.of(StreamUp)


async def test_without_an_answer_the_token_held_is_tried(start_relay: StartRelay) -> None:
    relay = await start_relay()
    sent = Events()
    asked: list[StreamTarget] = []

    async def silent_master(stale: StreamTarget) -> bool:
        asked.append(stale)
        return True

    # the window says "about to expire", but the token is still good: after the master
    # stays silent for refresh_timeout the runner connects with it
    held = replace(target(relay, StreamDirection.PUBLISH), connect_by=time.monotonic() + 5)
    policy = replace(FAST, refresh_timeout=0.2)
    publisher = ScreenPublisher(held, TestPattern((64, 48)), network=network(relay),
                                on_event=sent, fps=20, policy=policy, refresh=silent_master)
    await asyncio.wait_for(publisher.run(max_frames=2), 20)
    assert asked == [held] and publisher.frames_sent == 2
    assert not sent.of(GrantRefreshed)
