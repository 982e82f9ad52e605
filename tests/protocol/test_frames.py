"""Stream frames: golden bytes, round trips, split reads, and every refusal."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.protocol.frames import (
    FRAME_KINDS,
    HEADER_SIZE,
    MAX_END_REASON_BYTES,
    MAX_FRAME_SIZE,
    MAX_PAYLOAD_SIZE,
    CloseCode,
    Frame,
    FrameParser,
    FrameType,
    LocalProtocolError,
    RemoteProtocolError,
    end_frame,
    end_reason,
    parse,
)

# (frame, its exact bytes on the wire)
GOLDEN: list[tuple[Frame, bytes]] = [
    (
        Frame(FrameType.KEY, 1, 1_700_000_000_000_000, b"\x89PNG"),
        bytes.fromhex("01 01 0000 00000004 0000000000000001 00060a24181e4000") + b"\x89PNG",
    ),
    (
        Frame(FrameType.DELTA, 2**64 - 1, 0, b""),
        bytes.fromhex("01 02 0000 00000000 ffffffffffffffff 0000000000000000"),
    ),
    (
        Frame(FrameType.PING, 7, 42),
        bytes.fromhex("01 03 0000 00000000 0000000000000007 000000000000002a"),
    ),
    (
        end_frame(CloseCode.TOO_SLOW, "slow"),
        bytes.fromhex("01 04 0000 00000006 0000000000000000 0000000000000000 0fa2")
        + b"slow",
    ),
]


@pytest.mark.parametrize(("frame", "wire"), GOLDEN, ids=lambda x: repr(x)[:30])
def test_golden_bytes(frame: Frame, wire: bytes) -> None:
    assert HEADER_SIZE == 24
    assert bytes(frame) == wire
    assert parse(wire) == frame
    assert FrameParser().receive_data(wire) == [frame]


def test_every_frame_type_round_trips() -> None:
    for code, kind in FRAME_KINDS.items():
        f = Frame(FrameType(code), 3, 4, b"x" * min(kind.max_payload, 100))
        assert parse(bytes(f)) == f
        assert parse(bytes(f)).type is kind.type


def test_max_size_frame_round_trips_and_one_more_byte_is_refused() -> None:
    big = Frame(FrameType.KEY, 1, 1, bytes(MAX_PAYLOAD_SIZE))
    assert len(bytes(big)) == MAX_FRAME_SIZE
    assert parse(bytes(big)) == big
    with pytest.raises(LocalProtocolError, match="above the maximum"):
        Frame(FrameType.KEY, 1, 1, bytes(MAX_PAYLOAD_SIZE + 1))
    header = struct.pack("!BBHIQQ", 1, 1, 0, MAX_PAYLOAD_SIZE + 1, 0, 0)
    p = FrameParser()
    with pytest.raises(RemoteProtocolError, match="above the maximum") as info:
        p.receive_data(header)  # refused on the header alone: nothing is buffered
    assert info.value.close_code == CloseCode.TOO_BIG


def test_parser_limit_can_be_lower() -> None:
    p = FrameParser(max_payload=10)
    with pytest.raises(RemoteProtocolError, match="above the maximum of 10 bytes"):
        p.receive_data(bytes(Frame(FrameType.DELTA, 1, 1, b"x" * 11)))


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (bytes.fromhex("02 01 0000 00000000") + bytes(16), "version byte 0x02"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not an atlas-stream/1 frame"),
        (bytes.fromhex("01 09 0000 00000000") + bytes(16), "unknown frame type 9"),
        (bytes.fromhex("01 01 0001 00000000") + bytes(16), "reserved header bits"),
        (bytes.fromhex("01 03 0000 0000007e") + bytes(16) + bytes(126), "ping frame of 126"),
    ],
)
def test_garbage_refused(wire: bytes, message: str) -> None:
    p = FrameParser()
    with pytest.raises(RemoteProtocolError, match=message):
        p.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match=message):
        p.receive_data(b"")  # the parser stays failed
    with pytest.raises(RemoteProtocolError, match=message):
        parse(wire)


def test_parse_wants_exactly_one_frame() -> None:
    f = bytes(Frame(FrameType.DELTA, 1, 1, b"abc"))
    with pytest.raises(RemoteProtocolError, match="at least 24 bytes"):
        parse(f[:10])
    with pytest.raises(RemoteProtocolError, match="announces 3 payload bytes"):
        parse(f + b"x")
    with pytest.raises(RemoteProtocolError, match="announces 3 payload bytes"):
        parse(f[:-1])


def test_eof_in_the_middle_of_a_frame() -> None:
    p = FrameParser()
    f = bytes(Frame(FrameType.DELTA, 1, 1, b"abc"))
    assert p.receive_data(f[:-1]) == []
    assert p.buffered == len(f) - 1
    with pytest.raises(RemoteProtocolError, match="in the middle of a frame"):
        p.receive_eof()
    q = FrameParser()
    q.receive_data(f)
    q.receive_eof()  # clean
    with pytest.raises(LocalProtocolError):
        q.receive_data(f)


def test_end_frames() -> None:
    assert end_reason(end_frame(CloseCode.REPLACED, "bye")) == (4003, "bye")
    assert end_reason(Frame(FrameType.END)) == (1000, "")
    long = end_frame(CloseCode.NORMAL, "é" * 100)  # cut on a character boundary
    code, reason = end_reason(parse(bytes(long)))
    assert code == 1000 and reason == "é" * (MAX_END_REASON_BYTES // 2)
    with pytest.raises(RemoteProtocolError, match="no room for a close code"):
        end_reason(Frame(FrameType.END, payload=b"x"))
    with pytest.raises(RemoteProtocolError, match="not UTF-8"):
        end_reason(Frame(FrameType.END, payload=b"\x03\xe8\xff"))
    with pytest.raises(LocalProtocolError):
        end_reason(Frame(FrameType.PING))


def test_local_errors() -> None:
    with pytest.raises(LocalProtocolError, match="sequence number"):
        Frame(FrameType.KEY, -1)
    with pytest.raises(LocalProtocolError, match="timestamp"):
        Frame(FrameType.KEY, 0, 2**64)
    with pytest.raises(LocalProtocolError, match="unknown frame type"):
        Frame(9)  # type: ignore[arg-type]


def test_parsed_frames_forward_their_own_bytes() -> None:
    wire = bytes(Frame(FrameType.KEY, 5, 6, b"payload"))
    f = parse(wire)
    assert bytes(f) is wire  # a relay forwards without copying or re-encoding
    assert f.size == len(wire) and f.payload == b"payload"
    assert "KEY" in repr(f) and hash(f) == hash(Frame(FrameType.KEY, 5, 6, b"payload"))


frames_st = st.builds(
    Frame,
    st.sampled_from([FrameType.KEY, FrameType.DELTA, FrameType.PING]),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=120),
)


@settings(max_examples=300)
@given(frames=st.lists(frames_st, max_size=12), cuts=st.lists(st.integers(0, 2000)))
def test_frames_split_anywhere_come_out_whole_and_in_order(
    frames: list[Frame], cuts: list[int]
) -> None:
    stream = b"".join(bytes(f) for f in frames)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    p = FrameParser()
    out: list[Frame] = []
    for a, b in itertools.pairwise(points):
        out += p.receive_data(stream[a:b])
    p.receive_eof()
    assert out == frames
    assert p.buffered == 0


@given(st.binary(min_size=HEADER_SIZE, max_size=200))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    p = FrameParser(max_payload=64)
    try:
        for f in p.receive_data(data):
            assert parse(bytes(f), max_payload=64) == f
    except RemoteProtocolError:
        pass


@settings(max_examples=200)
@given(frames=st.lists(frames_st, max_size=12), reads=st.lists(st.integers(1, 3000),
                                                               min_size=1))
def test_buffered_reads_of_any_size(frames: list[Frame], reads: list[int]) -> None:
    """The asyncio.BufferedProtocol way: fill what get_buffer() offers, as a socket would."""
    stream = memoryview(b"".join(bytes(f) for f in frames))
    p = FrameParser()
    out: list[Frame] = []
    i = 0
    while stream:
        room = p.get_buffer(-1)
        n = min(len(room), reads[i % len(reads)], len(stream))
        room[:n] = stream[:n]
        del room
        out += p.buffer_updated(n)
        stream = stream[n:]
        i += 1
    assert out == frames


def test_buffer_grows_for_a_large_frame_and_shrinks_after() -> None:
    big = Frame(FrameType.KEY, 1, 1, bytes(range(256)) * 8192)  # 2 MiB
    wire = memoryview(bytes(big))
    p = FrameParser()
    out: list[Frame] = []
    while wire:
        room = p.get_buffer(-1)
        n = min(len(room), len(wire))
        room[:n] = wire[:n]
        del room
        out += p.buffer_updated(n)
        wire = wire[n:]
    assert out == [big]
    assert len(p.get_buffer(-1)) == FrameParser.READ_SIZE
