"""The stream relay over real TLS sockets: both transports, backpressure, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import struct
import time
from typing import Any

import pytest

from atlas.protocol.frames import (
    MAX_FRAME_SIZE,
    MAX_PAYLOAD_SIZE,
    CloseCode,
    Frame,
    FrameParser,
    FrameType,
)
from atlas.relay.client import (
    StreamClosed,
    StreamPublisher,
    StreamRefused,
    StreamSubscriber,
    Transport,
    publish,
    subscribe,
)
from atlas.relay.hub import FLUSH_BYTES, RelayLimits
from atlas.relay.upgrade import WRITE_HIGH_WATER

from .conftest import NODE_GUID, RelayUnderTest, StartRelay

TRANSPORTS: list[Transport] = ["atlas-stream", "websocket"]


async def pub_of(relay: RelayUnderTest, transport: Transport = "atlas-stream",
                 **kw: Any) -> StreamPublisher:
    session = kw.pop("session", "s-1")
    stream = kw.pop("stream", "screen:customer")
    return await publish(relay.url("publish", session, stream),
                         relay.token("publish", session=session, stream=stream, **kw),
                         ssl=relay.client_ssl, transport=transport)


async def sub_of(relay: RelayUnderTest, transport: Transport = "atlas-stream",
                 max_buffer: int | None = None, **kw: Any) -> StreamSubscriber:
    extra = {"max_buffer": max_buffer} if max_buffer else {}
    return await subscribe(relay.url("subscribe"), relay.token("subscribe", **kw),
                           ssl=relay.client_ssl, transport=transport, **extra)


def payloads(n: int, seed: int, max_size: int = 64 * 1024) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(rnd.randint(0, max_size)) for _ in range(n)]


@pytest.mark.parametrize("pub_transport", TRANSPORTS)
@pytest.mark.parametrize("sub_transport", TRANSPORTS)
async def test_steady_viewers_get_every_frame_intact_and_in_order(
    start_relay: StartRelay, pub_transport: Transport, sub_transport: Transport
) -> None:
    relay = await start_relay()
    viewers = [await sub_of(relay, sub_transport, participant=f"rep{i}") for i in range(3)]
    await relay.wait_for(lambda s: s["subscribers"] == 3)
    pub = await pub_of(relay, pub_transport)
    sent = hashlib.sha256()
    data = payloads(120, seed=1)
    for i, p in enumerate(data):
        f = await (pub.send_key(p) if i % 30 == 0 else pub.send_delta(p))
        sent.update(bytes(f))
    await pub.end("call over")

    for v in viewers:
        got = hashlib.sha256()
        seq = []
        async for frame in v:
            got.update(bytes(frame))
            seq.append(frame.seq)
        assert seq == list(range(1, 121))
        assert got.hexdigest() == sent.hexdigest()
        assert (v.end_code, v.end_reason) == (CloseCode.NORMAL, "call over")
    st = await relay.wait_for(lambda s: s["streams"] == 0)
    assert st["frames_in"] == 120 and st["frames_out"] == 360 and st["frames_dropped"] == 0


async def test_a_viewer_joining_late_starts_at_the_last_key_frame(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay()
    pub = await pub_of(relay)
    await pub.send_delta(b"before any key frame")
    await pub.send_key(b"K1")
    await pub.send_delta(b"d1")
    await relay.wait_for(lambda s: s["frames_in"] == 3)
    late = await sub_of(relay)
    await pub.send_delta(b"d2")
    await pub.end()
    assert [f.payload async for f in late] == [b"K1", b"d1", b"d2"]


async def test_slow_viewer_skips_to_key_frames_without_growing_the_relay(
    start_relay: StartRelay,
) -> None:
    limit = MAX_FRAME_SIZE  # the smallest outbox allowed: one maximum-size frame
    relay = await start_relay(RelayLimits(outbox_bytes=limit, gop_bytes=limit))
    slow = await sub_of(relay, max_buffer=256 * 1024, participant="slow")
    steady = await sub_of(relay, participant="steady")
    await relay.wait_for(lambda s: s["subscribers"] == 2)
    pub = await pub_of(relay)
    frame_size, count, key_every = 64 * 1024, 800, 25  # 50 MiB, far beyond every buffer
    peak = {"queued": 0, "buffered": 0, "total": 0}

    async def sample() -> None:
        while True:
            st = relay.stats()
            peak["queued"] = max(peak["queued"], st["queued_bytes"])
            peak["buffered"] = max(peak["buffered"], st["buffered_bytes"])
            peak["total"] = max(peak["total"], st["queued_bytes"] + st["buffered_bytes"])
            await asyncio.sleep(0.005)

    async def read_slowly() -> list[Frame]:
        out = []
        async for f in slow:
            out.append(f)
            await asyncio.sleep(0.004)  # a viewer on a slow link
        return out

    async def read_steadily() -> int:
        return len([f async for f in steady])

    sampler = asyncio.create_task(sample())
    slow_task = asyncio.create_task(read_slowly())
    steady_task = asyncio.create_task(read_steadily())
    body = bytes(frame_size)
    for i in range(count):
        await (pub.send_key(body) if i % key_every == 0 else pub.send_delta(body))
    await pub.end()
    got = await asyncio.wait_for(slow_task, 60)
    assert await asyncio.wait_for(steady_task, 60) == count
    sampler.cancel()

    st = relay.stats()
    # the publisher was not held to the slow viewer's pace: frames were skipped for the
    # slow viewer while the steady one got every frame
    assert st["frames_dropped"] > 0 and st["skips"] > 0
    assert 0 < len(got) < count
    # whatever the slow viewer saw is consistent: a gap only ever ends at a key frame
    for prev, cur in itertools.pairwise(got):
        assert cur.seq == prev.seq + 1 or cur.type is FrameType.KEY, (prev, cur)
    # the relay's memory for it stayed bounded: per viewer, its outbox, plus what its
    # transport holds (high-water mark, then one write over it: a flush of the outbox
    # or the frames of one read from the publisher)
    per_viewer_transport = (WRITE_HIGH_WATER + max(FLUSH_BYTES, FrameParser.READ_SIZE)
                            + frame_size + 24)
    assert peak["queued"] <= 2 * limit
    assert peak["buffered"] <= 2 * per_viewer_transport
    assert peak["total"] <= 2 * (limit + per_viewer_transport)
    assert peak["queued"] > 0  # it did queue: the bound was tested


async def test_viewer_that_stops_reading_is_dropped_with_a_reason(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(RelayLimits(stall_timeout=0.5))
    stuck = await sub_of(relay, participant="stuck")
    fine = await sub_of(relay, participant="fine")
    stuck.pause_reading()
    pub = await pub_of(relay)

    async def keep_publishing() -> None:
        i = 0
        while True:
            await (pub.send_key(bytes(64 * 1024)) if i % 10 == 0
                   else pub.send_delta(bytes(64 * 1024)))
            i += 1
            await asyncio.sleep(0.001)

    async def drain_fine() -> None:
        async for _ in fine:
            pass

    pumping = asyncio.create_task(keep_publishing())
    fine_task = asyncio.create_task(drain_fine())
    st = await relay.wait_for(lambda s: s["subscribers_dropped"].get("too_slow") == 1)
    assert st["subscribers"] == 1  # the other viewer stays
    stuck.resume_reading()
    with pytest.raises(StreamClosed) as info:
        while True:
            await stuck.receive()
    assert info.value.code == CloseCode.TOO_SLOW
    assert "read nothing for 0.5 s" in info.value.reason
    assert not fine_task.done()
    pumping.cancel()
    await pub.end()
    await asyncio.wait_for(fine_task, 10)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_publisher_disconnect_ends_the_stream_for_viewers(
    start_relay: StartRelay, transport: Transport
) -> None:
    relay = await start_relay()
    viewer = await sub_of(relay, transport)
    pub = await pub_of(relay)
    await pub.send_key(b"k")
    assert (await viewer.receive()).payload == b"k"
    pub.abort()
    with pytest.raises(StreamClosed) as info:
        await viewer.receive()
    assert info.value.code == CloseCode.PUBLISHER_GONE
    assert info.value.reason == "the publisher disconnected"
    await relay.wait_for(lambda s: s["streams"] == 0)


async def test_same_publisher_reconnecting_replaces_the_old_connection(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay()
    viewer = await sub_of(relay)
    old = await pub_of(relay, participant="cust")
    await old.send_key(b"old")
    with pytest.raises(StreamRefused) as refused:
        await pub_of(relay, participant="intruder")
    assert refused.value.status == 409 and refused.value.error == "StreamBusy"
    new = await pub_of(relay, participant="cust")
    closed = await asyncio.wait_for(old.wait_closed(), 5)
    assert closed.code == CloseCode.REPLACED
    await new.send_key(b"new")
    await new.end()
    assert [f.payload async for f in viewer] == [b"old", b"new"]


@pytest.mark.parametrize(
    ("token_kw", "url_kw", "status", "error", "message"),
    [
        ({"session": "s-1"}, {"session": "s-2"}, 403, "WrongSession", "another session"),
        ({"stream": "screen:rep"}, {}, 403, "WrongStream", "screen:rep"),
        ({"node_guid": "e" * 32}, {}, 403, "WrongNode", "another traffic node"),
        ({"now": time.time() - 600, "ttl": 60}, {}, 401, "TokenExpired", "expired"),
        ({"direction": "subscribe"}, {}, 403, "WrongDirection",
         "allows to subscribe, not to publish"),
    ],
)
async def test_tokens_that_do_not_fit_are_refused(
    start_relay: StartRelay, token_kw: dict[str, Any], url_kw: dict[str, Any], status: int,
    error: str, message: str,
) -> None:
    relay = await start_relay()
    direction = token_kw.pop("direction", "publish")
    token = relay.token(direction, **token_kw)
    url = relay.url("publish", **url_kw)
    with pytest.raises(StreamRefused) as info:
        await publish(url, token, ssl=relay.client_ssl)
    assert (info.value.status, info.value.error) == (status, error)
    assert message in info.value.message
    assert relay.stats()["streams"] == 0


async def test_forged_and_missing_tokens_are_refused(start_relay: StartRelay) -> None:
    relay = await start_relay()
    other = await start_relay()  # a relay trusting another master's key
    forged = other.token("subscribe")
    with pytest.raises(StreamRefused) as info:
        await subscribe(relay.url("subscribe"), forged, ssl=relay.client_ssl)
    assert info.value.status == 401 and "unknown key" in info.value.message
    with pytest.raises(StreamRefused) as info:
        await subscribe(relay.url("subscribe"), "", ssl=relay.client_ssl)
    assert info.value.status == 401
    with pytest.raises(StreamRefused) as info:
        await subscribe(relay.url("subscribe"), forged, ssl=relay.client_ssl,
                        transport="websocket")
    assert info.value.status == 401


async def test_token_in_the_query_string_for_browsers(start_relay: StartRelay) -> None:
    import aiohttp

    relay = await start_relay()
    async with aiohttp.ClientSession() as s:
        url = relay.url("subscribe") + "?token=" + relay.token("subscribe")
        async with s.ws_connect(url, ssl=relay.client_ssl, compress=0) as ws:
            assert ws.compress == 0  # permessage-deflate refused for streams
            await relay.wait_for(lambda st: st["subscribers"] == 1)
        async with s.get(relay.url("subscribe"), ssl=relay.client_ssl,
                         headers={"Authorization": "Bearer " + relay.token("subscribe")}
                         ) as r:
            assert r.status == 426 and "atlas-stream/1" in r.headers["Upgrade"]


async def test_a_viewer_cannot_publish_frames(start_relay: StartRelay) -> None:
    relay = await start_relay()
    pub = await pub_of(relay)
    viewer = await sub_of(relay)
    await viewer._channel.send(bytes(Frame(FrameType.KEY, 1, 1, b"sneaky")))
    with pytest.raises(StreamClosed) as info:
        await viewer.receive()
    assert info.value.code == CloseCode.PROTOCOL_ERROR
    assert "a viewer cannot send key frames" in info.value.reason
    await pub.end()


async def test_oversized_frame_is_refused_with_a_clear_reason(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay()
    viewer = await sub_of(relay)
    pub = await pub_of(relay)
    header = struct.pack("!BBHIQQ", 1, FrameType.KEY, 0, MAX_PAYLOAD_SIZE + 1, 1, 1)
    await pub._channel.send(header)  # refused on the header: nothing more is read
    closed = await asyncio.wait_for(pub.wait_closed(), 5)
    assert closed.code == CloseCode.TOO_BIG
    assert closed.reason == (
        f"key frame of {MAX_PAYLOAD_SIZE + 1} bytes is above the maximum of "
        f"{MAX_PAYLOAD_SIZE} bytes"
    )
    with pytest.raises(StreamClosed) as info:
        await viewer.receive()
    assert info.value.code == CloseCode.PUBLISHER_GONE


async def test_oversized_websocket_message_is_refused(start_relay: StartRelay) -> None:
    relay = await start_relay()
    pub = await pub_of(relay, "websocket")
    await pub._channel.send(bytes(MAX_FRAME_SIZE + 1))
    closed = await asyncio.wait_for(pub.wait_closed(), 5)
    assert closed.code == CloseCode.TOO_BIG


async def test_shutdown_ends_every_stream(start_relay: StartRelay) -> None:
    relay = await start_relay()
    viewer = await sub_of(relay)
    ws_viewer = await sub_of(relay, "websocket", participant="browser")
    pub = await pub_of(relay)
    await pub.send_key(b"k")
    assert (await viewer.receive()).payload == b"k"
    assert (await ws_viewer.receive()).payload == b"k"
    t0 = time.monotonic()
    await relay.runner.cleanup()
    assert time.monotonic() - t0 < 3
    for v in (viewer, ws_viewer):
        with pytest.raises(StreamClosed) as info:
            await v.receive()
        assert info.value.code == CloseCode.GOING_AWAY
    closed = await pub.wait_closed()
    assert closed.code == CloseCode.GOING_AWAY


def test_node_guid_fixture_is_what_tokens_are_checked_against() -> None:
    assert len(NODE_GUID) == 32
