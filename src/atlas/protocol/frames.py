"""Stream frames: the binary messages a traffic node relays (DESIGN.md §2).

A participant publishes a stream (its screen) as a sequence of frames; the traffic node
fans them out to the stream's viewers. The same bytes travel on both transports: one
frame per binary WebSocket message, or back to back on the raw ``atlas-stream/1`` data
plane (an upgraded TLS connection, see ``atlas.relay.upgrade``).

Every frame starts with a fixed 24-byte header, big-endian::

    0      1      2             4                 8                16               24
    +------+------+-------------+-----------------+----------------+----------------+
    | ver  | type |  reserved   | payload length  | sequence (u64) | timestamp, µs  |
    | (1)  |      |  (0)        | (u32)           |                | (u64)          |
    +------+------+-------------+-----------------+----------------+----------------+

followed by ``payload length`` bytes. What a frame type may carry is in :data:`FRAME_KINDS`,
one table: screen key frames and delta frames are relayed; ``ping`` keeps an idle
connection alive and is never relayed; ``end`` carries a close code and a UTF-8 reason
(the same codes as WebSocket close frames, RFC 6455 §7.4) and ends the connection.

This module is pure (no sockets, no clock). :class:`FrameParser` is sans-I/O like h11 and
websockets: feed it whatever arrived with :meth:`FrameParser.receive_data` and get the
complete frames back; a frame may be split across reads anywhere. Errors say whose fault
they are: :class:`RemoteProtocolError` for bytes the peer sent (garbage, an oversized
frame), :class:`LocalProtocolError` for a frame we were about to build wrongly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

VERSION: Final = 1
HEADER: Final = struct.Struct("!BBHIQQ")
HEADER_SIZE: Final = HEADER.size  # 24
MAX_PAYLOAD_SIZE: Final = 4 * 1024 * 1024
"""Largest payload of any frame; a compressed screen key frame fits well within it."""
MAX_FRAME_SIZE: Final = HEADER_SIZE + MAX_PAYLOAD_SIZE
MAX_SEQ: Final = 2**64 - 1
MAX_END_REASON_BYTES: Final = 123  # as in a WebSocket close frame (RFC 6455 §5.5)


class ProtocolError(ValueError):
    """A frame that breaks the rules in this module."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame stream; the connection must end.

    ``close_code`` is the code to send back (``CloseCode.TOO_BIG`` or
    ``CloseCode.PROTOCOL_ERROR``).
    """

    def __init__(self, message: str, close_code: CloseCode | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code if close_code is not None else CloseCode.PROTOCOL_ERROR


class LocalProtocolError(ProtocolError):
    """We tried to build a frame that breaks the rules (a bug on our side)."""


class FrameType(IntEnum):
    KEY = 1
    """A screen key frame: decodable on its own; viewers may start from one."""
    DELTA = 2
    """A screen delta frame: needs every frame since the last key frame."""
    PING = 3
    """Keeps an idle connection alive; the receiver ignores it and never relays it."""
    END = 4
    """The sender ends the connection: close code (u16) then a UTF-8 reason."""


class CloseCode(IntEnum):
    """Why a stream connection ended; the same numbers as WebSocket close codes."""

    NORMAL = 1000  # the publisher ended the stream / the viewer left
    GOING_AWAY = 1001  # the traffic node is shutting down
    PROTOCOL_ERROR = 1002  # bytes that are not frames, or a frame not allowed here
    TOO_BIG = 1009  # a frame above the maximum size
    INTERNAL_ERROR = 1011
    PUBLISHER_GONE = 4001  # the publisher's connection broke without an end frame
    TOO_SLOW = 4002  # the viewer stopped reading and was dropped
    REPLACED = 4003  # the same participant connected again and took over the stream
    STREAM_BUSY = 4004  # another participant publishes this stream


@dataclass(frozen=True)
class FrameKind:
    """What one frame type may carry and whether a relay forwards it."""

    type: FrameType
    name: str
    max_payload: int
    relayed: bool


FRAME_KINDS: Final[dict[int, FrameKind]] = {
    k.type: k
    for k in (
        FrameKind(FrameType.KEY, "key", MAX_PAYLOAD_SIZE, relayed=True),
        FrameKind(FrameType.DELTA, "delta", MAX_PAYLOAD_SIZE, relayed=True),
        FrameKind(FrameType.PING, "ping", 125, relayed=False),
        FrameKind(FrameType.END, "end", 2 + MAX_END_REASON_BYTES, relayed=False),
    )
}


class Frame:
    """One frame. ``bytes(frame)`` is its wire form; ``parse(bytes(f)) == f``.

    Frames from :class:`FrameParser` keep the bytes they were parsed from, so a relay
    forwards ``bytes(frame)`` to every viewer without copying or re-encoding it.
    """

    __slots__ = ("_payload", "_wire", "seq", "timestamp_us", "type")

    type: FrameType
    seq: int
    timestamp_us: int

    def __init__(
        self, type: FrameType, seq: int = 0, timestamp_us: int = 0, payload: bytes = b""
    ) -> None:
        kind = FRAME_KINDS.get(type)
        if kind is None:
            raise LocalProtocolError(f"unknown frame type {type!r}")
        if not 0 <= seq <= MAX_SEQ:
            raise LocalProtocolError(f"sequence number {seq} out of range")
        if not 0 <= timestamp_us <= MAX_SEQ:
            raise LocalProtocolError(f"timestamp {timestamp_us} out of range")
        if len(payload) > kind.max_payload:
            raise LocalProtocolError(
                f"{kind.name} frame payload of {len(payload)} bytes is above the "
                f"maximum of {kind.max_payload}"
            )
        self.type = kind.type
        self.seq = seq
        self.timestamp_us = timestamp_us
        self._payload: bytes | None = bytes(payload)
        self._wire: bytes | None = None

    @classmethod
    def _from_wire(cls, type: FrameType, seq: int, timestamp_us: int, wire: bytes) -> Frame:
        f = cls.__new__(cls)
        f.type = type
        f.seq = seq
        f.timestamp_us = timestamp_us
        f._payload = None
        f._wire = wire
        return f

    @property
    def payload(self) -> bytes:
        if self._payload is None:
            assert self._wire is not None
            self._payload = self._wire[HEADER_SIZE:]
        return self._payload

    @property
    def size(self) -> int:
        """Bytes on the wire, header included."""
        if self._wire is not None:
            return len(self._wire)
        return HEADER_SIZE + len(self.payload)

    def __bytes__(self) -> bytes:
        if self._wire is None:
            p = self.payload
            self._wire = HEADER.pack(VERSION, self.type, 0, len(p), self.seq,
                                     self.timestamp_us) + p
        return self._wire

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (
            self.type == other.type
            and self.seq == other.seq
            and self.timestamp_us == other.timestamp_us
            and self.payload == other.payload
        )

    def __hash__(self) -> int:
        return hash((self.type, self.seq, self.timestamp_us, self.payload))

    def __repr__(self) -> str:
        return (
            f"Frame({self.type.name}, seq={self.seq}, timestamp_us={self.timestamp_us}, "
            f"payload=<{self.size - HEADER_SIZE} bytes>)"
        )


def end_frame(code: CloseCode, reason: str, seq: int = 0, timestamp_us: int = 0) -> Frame:
    """An ``end`` frame; a reason too long for the frame is cut at a character boundary."""
    raw = reason.encode()[:MAX_END_REASON_BYTES].decode(errors="ignore").encode()
    return Frame(FrameType.END, seq, timestamp_us, struct.pack("!H", int(code)) + raw)


def end_reason(frame: Frame) -> tuple[int, str]:
    """The close code and reason of an ``end`` frame (an empty payload means NORMAL)."""
    if frame.type is not FrameType.END:
        raise LocalProtocolError(f"not an end frame: {frame!r}")
    p = frame.payload
    if not p:
        return int(CloseCode.NORMAL), ""
    if len(p) < 2:
        raise RemoteProtocolError("end frame payload of 1 byte: no room for a close code")
    (code,) = struct.unpack_from("!H", p)
    try:
        reason = p[2:].decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError("end frame reason is not UTF-8") from None
    return code, reason


def _check_header(version: int, type_code: int, reserved: int, length: int,
                  max_payload: int) -> FrameKind:
    if version != VERSION:
        raise RemoteProtocolError(
            f"not an atlas-stream/1 frame (version byte {version:#04x}, expected {VERSION})"
        )
    kind = FRAME_KINDS.get(type_code)
    if kind is None:
        raise RemoteProtocolError(f"unknown frame type {type_code}")
    if reserved != 0:
        raise RemoteProtocolError(f"reserved header bits set ({reserved:#06x})")
    limit = min(kind.max_payload, max_payload)
    if length > limit:
        raise RemoteProtocolError(
            f"{kind.name} frame of {length} bytes is above the maximum of {limit} bytes",
            CloseCode.TOO_BIG if kind.relayed else CloseCode.PROTOCOL_ERROR,
        )
    return kind


def parse(data: bytes, *, max_payload: int = MAX_PAYLOAD_SIZE) -> Frame:
    """Exactly one frame from ``data`` (a WebSocket message); nothing more, nothing less."""
    if len(data) < HEADER_SIZE:
        raise RemoteProtocolError(
            f"a frame needs at least {HEADER_SIZE} bytes, got {len(data)}"
        )
    version, type_code, reserved, length, seq, ts = HEADER.unpack_from(data)
    kind = _check_header(version, type_code, reserved, length, max_payload)
    if len(data) != HEADER_SIZE + length:
        raise RemoteProtocolError(
            f"frame header announces {length} payload bytes, message carries "
            f"{len(data) - HEADER_SIZE}"
        )
    return Frame._from_wire(kind.type, seq, ts, bytes(data))


class FrameParser:
    """Incremental frame parser: bytes in, complete frames out.

    Two ways to feed it: :meth:`receive_data` with bytes that arrived, or — for an
    ``asyncio.BufferedProtocol``, which saves a copy per read — :meth:`get_buffer` to
    get the memory the next read should fill and :meth:`buffer_updated` to say how much
    it filled. Either way it returns the frames completed, in order, each with its own
    immutable copy of its bytes; it holds back at most one incomplete frame.

    After a :class:`RemoteProtocolError` the parser stays failed: every later call
    raises the same error, so an adapter cannot accidentally carry on.
    """

    READ_SIZE: Final = 256 * 1024
    """Room offered for each read (more when the frame being received is larger)."""

    def __init__(self, *, max_payload: int = MAX_PAYLOAD_SIZE) -> None:
        self.max_payload = min(max_payload, MAX_PAYLOAD_SIZE)
        self._buf = bytearray(self.READ_SIZE)
        self._start = 0  # first byte not yet parsed
        self._end = 0  # end of the bytes received
        self._error: RemoteProtocolError | None = None
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame (at most one frame's worth)."""
        return self._end - self._start

    def receive_data(self, data: bytes) -> list[Frame]:
        """Feed bytes as they arrived; return the frames they complete, in order."""
        frames: list[Frame] = []
        view = memoryview(data)
        while True:
            room = self.get_buffer(len(view))
            n = min(len(room), len(view))
            room[:n] = view[:n]
            frames += self.buffer_updated(n)
            view = view[n:]
            if not view:
                return frames

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Memory for the next read to fill (``asyncio.BufferedProtocol.get_buffer``)."""
        if self._error is not None:
            raise self._error
        if self._eof:
            raise LocalProtocolError("data after receive_eof()")
        pending = self._end - self._start
        want = self.READ_SIZE
        if pending >= HEADER_SIZE:
            length = int.from_bytes(self._buf[self._start + 4:self._start + 8], "big")
            # (the header was checked when it arrived: length <= max_payload)
            want = max(want, HEADER_SIZE + min(length, self.max_payload) - pending)
        buf = self._buf
        if len(buf) - self._end < want:
            if len(buf) >= pending + want:
                # slide the incomplete frame to the front (same size: no resize)
                buf[:pending] = buf[self._start:self._end]
            else:
                bigger = bytearray(pending + want)
                bigger[:pending] = buf[self._start:self._end]
                self._buf = buf = bigger
            self._start, self._end = 0, pending
        elif pending == 0 and len(buf) > 4 * self.READ_SIZE:
            self._buf = buf = bytearray(self.READ_SIZE)  # shrink after a huge frame
            self._start = self._end = 0
        return memoryview(buf)[self._end:]

    def buffer_updated(self, nbytes: int) -> list[Frame]:
        """The last :meth:`get_buffer` got ``nbytes``; return the frames now complete."""
        self._end += nbytes
        frames: list[Frame] = []
        buf = self._buf
        pos, n = self._start, self._end
        unpack = HEADER.unpack_from
        max_payload = self.max_payload
        with memoryview(buf) as mv:
            try:
                while n - pos >= HEADER_SIZE:
                    version, type_code, reserved, length, seq, ts = unpack(buf, pos)
                    if (version != VERSION or reserved or length > max_payload
                            or (type_code != 2 and type_code != 1)):
                        ftype = _check_header(version, type_code, reserved, length,
                                              max_payload).type
                    else:
                        ftype = FrameType.DELTA if type_code == 2 else FrameType.KEY
                    end = pos + HEADER_SIZE + length
                    if end > n:
                        break
                    frames.append(Frame._from_wire(ftype, seq, ts, bytes(mv[pos:end])))
                    pos = end
            except RemoteProtocolError as exc:
                self._error = exc
                self._start = self._end = 0
                raise
        if pos == n:
            self._start = self._end = 0
        else:
            self._start = pos
        return frames

    def receive_eof(self) -> None:
        """The peer closed its side; a partial frame left over is its error."""
        if self._error is not None:
            raise self._error
        self._eof = True
        if self._end > self._start:
            self._error = RemoteProtocolError(
                f"connection closed in the middle of a frame ({self._end - self._start} "
                "bytes of it received)"
            )
            raise self._error
