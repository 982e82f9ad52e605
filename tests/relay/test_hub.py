"""The relay core without sockets: fan-out, skipping, stalls, joins, replacement."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from atlas.protocol.frames import MAX_FRAME_SIZE, CloseCode, Frame, FrameType
from atlas.relay.hub import RelayHub, RelayLimits, StreamBusy

S, N = "session-1", "screen:customer"


class FakeSink:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.ended: tuple[CloseCode, str, list[bytes]] | None = None
        self.wakeups = 0

    def write(self, data: bytes) -> None:
        assert self.ended is None
        self.written.append(data)

    def writelines(self, data: list[bytes]) -> None:
        for d in data:
            self.write(d)

    def wakeup(self) -> None:
        self.wakeups += 1

    def buffered(self) -> int:
        return 0

    def end(self, code: CloseCode, reason: str, pending: Sequence[bytes] = ()) -> None:
        assert self.ended is None
        self.ended = (code, reason, list(pending))


def key(seq: int, size: int = 10) -> Frame:
    return Frame(FrameType.KEY, seq, seq, bytes([seq % 256]) * size)


def delta(seq: int, size: int = 10) -> Frame:
    return Frame(FrameType.DELTA, seq, seq, bytes([seq % 256]) * size)


def seqs(sink: FakeSink) -> list[int]:
    return [int.from_bytes(w[8:16], "big") for w in sink.written]


def test_steady_viewers_get_everything_in_order() -> None:
    hub = RelayHub()
    pub = hub.attach_publisher(S, N, "cust", FakeSink())
    a, b = FakeSink(), FakeSink()
    hub.attach_subscriber(S, N, "rep1", a)
    hub.attach_subscriber(S, N, "rep2", b)
    frames = [key(1)] + [delta(i) for i in range(2, 50)]
    for f in frames:
        hub.publish(pub, f)
    assert a.written == b.written == [bytes(f) for f in frames]
    assert a.written[0] is b.written[0]  # shared, not copied
    st = hub.stats()
    assert st["frames_in"] == 49 and st["frames_out"] == 98 and st["frames_dropped"] == 0
    assert st["streams"] == 1 and st["publishers"] == 1 and st["subscribers"] == 2


def test_viewer_waits_for_a_key_frame_then_joins_from_the_last_one() -> None:
    hub = RelayHub()
    pub = hub.attach_publisher(S, N, "cust", FakeSink())
    early = FakeSink()
    hub.attach_subscriber(S, N, "rep", early)
    hub.publish(pub, delta(1))  # nothing to decode it with
    hub.publish(pub, key(2))
    hub.publish(pub, delta(3))
    late = FakeSink()
    hub.attach_subscriber(S, N, "rep2", late)
    assert seqs(early) == [2, 3]
    assert seqs(late) == [2, 3]  # the last key frame and the deltas since
    hub.publish(pub, delta(4))
    assert seqs(late) == [2, 3, 4]


def test_join_waits_for_next_key_when_the_picture_outgrew_the_bound() -> None:
    hub = RelayHub(RelayLimits(outbox_bytes=MAX_FRAME_SIZE, gop_bytes=100))
    pub = hub.attach_publisher(S, N, "cust", FakeSink())
    hub.publish(pub, key(1, 40))
    hub.publish(pub, delta(2, 40))  # 128 bytes with headers: over 100
    late = FakeSink()
    hub.attach_subscriber(S, N, "rep", late)
    hub.publish(pub, delta(3))
    assert late.written == []
    hub.publish(pub, key(4))
    assert seqs(late) == [4]


def test_slow_viewer_skips_to_the_next_key_frame_with_bounded_memory() -> None:
    limit = MAX_FRAME_SIZE
    hub = RelayHub(RelayLimits(outbox_bytes=limit, gop_bytes=limit))
    pub = hub.attach_publisher(S, N, "cust", FakeSink())
    slow, steady = FakeSink(), FakeSink()
    sub = hub.attach_subscriber(S, N, "slow", slow)
    hub.attach_subscriber(S, N, "steady", steady)
    hub.publish(pub, key(1, 1000))
    sub.pause(now=0.0)
    size = 256 * 1024
    for i in range(2, 50):
        hub.publish(pub, delta(i, size) if i % 20 else key(i, size))
        assert sub.queued_bytes <= limit
        assert hub.stats()["queued_bytes"] <= limit  # type: ignore[operator]
    assert len(steady.written) == 49  # the publisher and other viewers never noticed
    st = hub.stats()
    assert st["skips"] and st["frames_dropped"]
    sub.resume()
    got = seqs(slow)
    assert got[0] == 1
    # after the skip the viewer restarts at a key frame and then has no gaps
    restart = got[1]
    assert restart % 20 == 0
    assert got[1:] == list(range(restart, 50))
    hub.publish(pub, delta(50))
    assert seqs(slow)[-1] == 50


def test_stalled_viewer_is_dropped_by_the_sweep() -> None:
    hub = RelayHub(RelayLimits(stall_timeout=5.0))
    pub = hub.attach_publisher(S, N, "cust", FakeSink())
    stalled, fine = FakeSink(), FakeSink()
    sub = hub.attach_subscriber(S, N, "stalled", stalled)
    other = hub.attach_subscriber(S, N, "fine", fine)
    hub.publish(pub, key(1))
    sub.pause(now=100.0)
    other.pause(now=100.0)
    other.resume()  # paused briefly: fine
    assert hub.sweep(now=104.0) == []
    assert hub.sweep(now=105.5) == [sub]
    assert stalled.ended is not None and stalled.ended[0] == CloseCode.TOO_SLOW
    assert "read nothing for 5 s" in stalled.ended[1]
    assert hub.stats()["subscribers_dropped"] == {"too_slow": 1}
    assert hub.stats()["subscribers"] == 1
    hub.publish(pub, delta(2))
    assert seqs(fine) == [1, 2]


def test_publisher_end_and_loss() -> None:
    hub = RelayHub()
    pub = hub.attach_publisher(S, N, "cust", FakeSink())
    a = FakeSink()
    sa = hub.attach_subscriber(S, N, "rep", a)
    hub.publish(pub, key(1))
    sa.pause(0.0)
    hub.publish(pub, delta(2))
    hub.end_publisher(pub, CloseCode.NORMAL, "the publisher ended the stream")
    assert a.ended is not None
    assert a.ended[:2] == (CloseCode.NORMAL, "the publisher ended the stream")
    assert [int.from_bytes(w[8:16], "big") for w in a.ended[2]] == [2]  # flushed, then end
    assert hub.streams == {}

    pub = hub.attach_publisher(S, N, "cust", FakeSink())
    b = FakeSink()
    sb = hub.attach_subscriber(S, N, "rep", b)
    hub.publish(pub, key(1))
    sb.pause(0.0)
    hub.publish(pub, delta(2))
    hub.end_publisher(pub, CloseCode.PUBLISHER_GONE, "the publisher disconnected")
    assert b.ended == (CloseCode.PUBLISHER_GONE, "the publisher disconnected", [])


def test_same_participant_replaces_other_participant_is_refused() -> None:
    hub = RelayHub()
    first = FakeSink()
    old = hub.attach_publisher(S, N, "cust", first)
    viewer = FakeSink()
    hub.attach_subscriber(S, N, "rep", viewer)
    hub.publish(old, key(1))
    with pytest.raises(StreamBusy, match="already published by another participant"):
        hub.attach_publisher(S, N, "intruder", FakeSink())
    new = hub.attach_publisher(S, N, "cust", FakeSink())
    assert first.ended is not None and first.ended[0] == CloseCode.REPLACED
    hub.publish(old, delta(2))  # late frames of the old connection are ignored
    hub.publish(new, delta(3))  # deltas of the new encoder need its key frame first
    hub.publish(new, key(4))
    assert seqs(viewer) == [1, 4]
    assert viewer.ended is None
    hub.end_publisher(old, CloseCode.PUBLISHER_GONE, "x")  # its connection closes later
    assert viewer.ended is None and hub.stats()["publishers_replaced"] == 1


def test_pulling_viewer() -> None:
    hub = RelayHub()
    pub = hub.attach_publisher(S, N, "cust", FakeSink())
    sink = FakeSink()
    sub = hub.attach_subscriber(S, N, "browser", sink, pulls=True)
    hub.publish(pub, key(1))
    hub.publish(pub, delta(2))
    assert sink.wakeups == 1 and sink.written == []
    assert sub.pop() == bytes(key(1))
    assert sub.take() == [bytes(delta(2))]
    assert sub.pop() is None
    sub.sending(10.0)
    assert hub.sweep(10.0 + hub.limits.stall_timeout + 1) == [sub]


def test_viewer_leaves_and_close_all() -> None:
    hub = RelayHub()
    pub_sink = FakeSink()
    pub = hub.attach_publisher(S, N, "cust", pub_sink)
    a = FakeSink()
    sa = hub.attach_subscriber(S, N, "rep", a)
    hub.detach_subscriber(sa)
    assert a.ended is None and hub.stats()["subscribers"] == 0
    hub.publish(pub, key(1))
    b = FakeSink()
    hub.attach_subscriber(S, "other", "rep", b)
    hub.close_all(CloseCode.GOING_AWAY, "shutting down")
    assert b.ended is not None and b.ended[0] == CloseCode.GOING_AWAY
    assert pub_sink.ended is not None and pub_sink.ended[0] == CloseCode.GOING_AWAY
    assert hub.streams == {}


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        RelayLimits(outbox_bytes=1000)
    with pytest.raises(ValueError, match="gop_bytes"):
        RelayLimits(outbox_bytes=MAX_FRAME_SIZE, gop_bytes=MAX_FRAME_SIZE + 1)
    with pytest.raises(ValueError, match="stall_timeout"):
        RelayLimits(stall_timeout=0)
