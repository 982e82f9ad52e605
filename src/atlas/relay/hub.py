"""The relay core: one publisher per stream fanned out to any number of viewers.

No sockets and no clock in here: connection adapters (``atlas.relay.upgrade`` for the raw
``atlas-stream/1`` data plane, ``atlas.relay.websocket`` for WebSocket viewers) hand the
hub parsed frames and tell it when a viewer's transport stops or starts accepting bytes;
the hub decides what each viewer gets. Time comes in as ``now`` (monotonic seconds).

Backpressure rules (CONVENTIONS.md "Async and I/O"): memory never grows without bound
and the publisher is never slowed down by a viewer.

* A viewer's frames go straight to its transport while the transport accepts them;
  while it is paused (write buffer above its high-water mark) they wait in the viewer's
  **outbox**, bounded by ``RelayLimits.outbox_bytes``.
* A viewer whose outbox would overflow **skips to the newest picture**: everything
  queued is dropped and the viewer waits for the publisher's next key frame (deltas
  in between are useless without the ones dropped). Publishers send key frames
  periodically, so a slow viewer sees fewer pictures, never a corrupt one.
* A viewer whose transport stays paused for longer than ``stall_timeout`` has stopped
  reading: :meth:`RelayHub.sweep` drops it with ``CloseCode.TOO_SLOW``.
* A viewer that joins a running stream starts from the stream's last key frame and the
  deltas since (the hub keeps them, bounded by ``RelayLimits.gop_bytes``); if those
  outgrew the bound it waits for the next key frame.

Frames are shared, immutable ``bytes``: queuing one for a thousand viewers costs a
thousand references, not a thousand copies.

A second publisher on a stream: the same participant **replaces** the first (its old
connection is probably dead and not yet noticed: a reconnect must not be refused for up
to a TCP timeout); the old publisher is ended with ``CloseCode.REPLACED`` and viewers
wait for the new publisher's first key frame. Another participant is refused
(:class:`StreamBusy`), since a token only names the stream, and two encoders must not
interleave.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from atlas.protocol.frames import MAX_FRAME_SIZE, CloseCode, Frame, FrameType

DEFAULT_OUTBOX_BYTES: Final = 2 * MAX_FRAME_SIZE
DEFAULT_GOP_BYTES: Final = 2 * MAX_FRAME_SIZE
DEFAULT_STALL_TIMEOUT: Final = 10.0
FLUSH_BYTES: Final = 256 * 1024
"""How much of an outbox goes to the transport in one write when it drains."""


@dataclass(frozen=True)
class RelayLimits:
    """Per-viewer and per-stream memory bounds and the stall timeout."""

    outbox_bytes: int = DEFAULT_OUTBOX_BYTES
    """Frames waiting for one viewer's transport; at least one maximum-size frame."""
    gop_bytes: int = DEFAULT_GOP_BYTES
    """Last key frame plus deltas since, kept per stream for viewers who join."""
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    """A viewer whose transport accepts nothing for this long is dropped."""

    def __post_init__(self) -> None:
        if self.outbox_bytes < MAX_FRAME_SIZE:
            raise ValueError(f"outbox_bytes must be at least one frame ({MAX_FRAME_SIZE})")
        if self.gop_bytes > self.outbox_bytes:
            raise ValueError("gop_bytes must not exceed outbox_bytes")
        if self.stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive")


class StreamBusy(Exception):
    """Another participant is already publishing this stream."""


class Sink(Protocol):
    """What the hub needs from a connection (publisher or viewer)."""

    def write(self, data: bytes) -> None:
        """Send one frame's bytes now (only called while the hub holds it writable)."""

    def writelines(self, data: list[bytes]) -> None:
        """Send several frames at once (one TLS write and one send for all of them)."""

    def wakeup(self) -> None:
        """Frames were queued in the outbox of a viewer the hub holds not writable
        (a pulling adapter: take them with :meth:`Subscriber.take`)."""

    def buffered(self) -> int:
        """Bytes accepted by :meth:`write` not yet sent to the network."""

    def end(self, code: CloseCode, reason: str, pending: Sequence[bytes] = ()) -> None:
        """Send ``pending`` frames, then tell the peer why, then close (idempotent)."""


@dataclass
class RelayCounters:
    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    frames_dropped: int = 0
    skips: int = 0
    publishers_replaced: int = 0
    subscribers_dropped: dict[str, int] = field(default_factory=dict)

    def dropped(self, reason: str) -> None:
        self.subscribers_dropped[reason] = self.subscribers_dropped.get(reason, 0) + 1


class Publisher:
    __slots__ = ("ended", "participant", "sink", "stream")

    def __init__(self, stream: Stream, participant: str, sink: Sink) -> None:
        self.stream = stream
        self.participant = participant
        self.sink = sink
        self.ended = False


class Subscriber:
    """One viewer of one stream: its outbox and whether its transport accepts bytes."""

    __slots__ = (
        "_counters", "_limit", "blocked_since", "ended", "outbox", "participant",
        "queued_bytes", "sink", "stream", "waiting_for_key", "writable",
    )

    def __init__(self, stream: Stream, participant: str, sink: Sink, *, pulls: bool,
                 limit: int, counters: RelayCounters) -> None:
        self.stream = stream
        self.participant = participant
        self.sink = sink
        self.outbox: deque[bytes] = deque()
        self.queued_bytes = 0
        self.writable = not pulls
        self.waiting_for_key = True
        self.blocked_since: float | None = None
        self.ended = False
        self._limit = limit
        self._counters = counters

    def offer(self, wire: bytes, is_key: bool) -> None:
        """One frame from the publisher (hot path)."""
        c = self._counters
        if self.waiting_for_key:
            if not is_key:
                c.frames_dropped += 1
                return
            self.waiting_for_key = False
        if self.writable and not self.outbox:
            self.sink.write(wire)
            c.frames_out += 1
            c.bytes_out += len(wire)
            return
        size = len(wire)
        if self.queued_bytes + size > self._limit:
            c.skips += 1
            c.frames_dropped += len(self.outbox)
            self.outbox.clear()
            self.queued_bytes = 0
            if not is_key:
                c.frames_dropped += 1
                self.waiting_for_key = True
                return
        was_empty = not self.outbox
        self.outbox.append(wire)
        self.queued_bytes += size
        if was_empty and not self.writable:
            self.sink.wakeup()

    def offer_many(self, wires: list[bytes], keys: list[bool], size: int) -> None:
        """Several frames from one read of the publisher: sent in one go when possible."""
        if self.writable and not self.outbox and not self.waiting_for_key:
            self.sink.writelines(wires)
            c = self._counters
            c.frames_out += len(wires)
            c.bytes_out += size
            return
        for wire, is_key in zip(wires, keys, strict=True):
            self.offer(wire, is_key)

    def pause(self, now: float) -> None:
        """The transport's write buffer went above its high-water mark."""
        self.writable = False
        if self.blocked_since is None:
            self.blocked_since = now

    def resume(self) -> None:
        """The transport's write buffer drained below its low-water mark: flush."""
        self.writable = True
        self.blocked_since = None
        c = self._counters
        outbox = self.outbox
        # a few frames per write (one TLS write and one send for all of them), until the
        # transport is full again: the rest stays here, where skipping can drop it
        while outbox and self.writable and not self.ended:
            wires = [outbox.popleft()]
            size = len(wires[0])
            while outbox and size < FLUSH_BYTES:
                wire = outbox.popleft()
                wires.append(wire)
                size += len(wire)
            self.queued_bytes -= size
            c.frames_out += len(wires)
            c.bytes_out += size
            self.sink.writelines(wires)

    def pop(self) -> bytes | None:
        """The oldest queued frame, for a pulling adapter (WebSocket) to send."""
        if not self.outbox:
            return None
        wire = self.outbox.popleft()
        self.queued_bytes -= len(wire)
        self._counters.frames_out += 1
        self._counters.bytes_out += len(wire)
        return wire

    def take(self) -> list[bytes]:
        """Everything queued, at once."""
        out = list(self.outbox)
        self.outbox.clear()
        self.queued_bytes = 0
        c = self._counters
        c.frames_out += len(out)
        c.bytes_out += sum(len(w) for w in out)
        return out

    def sending(self, now: float | None) -> None:
        """A pulling adapter started (``now``) or finished (``None``) a blocking send."""
        self.blocked_since = now


class Stream:
    """One published stream of one session: its publisher, viewers and current picture."""

    __slots__ = ("gop", "gop_bytes", "gop_limit", "key", "publisher", "subscribers")

    def __init__(self, key: tuple[str, str], gop_limit: int) -> None:
        self.key = key
        self.publisher: Publisher | None = None
        self.subscribers: list[Subscriber] = []
        self.gop: list[bytes] | None = None  # last key frame and deltas since, or None
        self.gop_bytes = 0
        self.gop_limit = gop_limit

    @property
    def session(self) -> str:
        return self.key[0]

    @property
    def name(self) -> str:
        return self.key[1]


class RelayHub:
    """Every stream on this traffic node."""

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits or RelayLimits()
        self.streams: dict[tuple[str, str], Stream] = {}
        self.counters = RelayCounters()

    # --- joining and leaving --------------------------------------------------------
    def _stream(self, session: str, name: str) -> Stream:
        key = (session, name)
        s = self.streams.get(key)
        if s is None:
            s = self.streams[key] = Stream(key, self.limits.gop_bytes)
        return s

    def check_publisher(self, session: str, name: str, participant: str) -> None:
        """Raise :class:`StreamBusy` if ``participant`` may not publish this stream now
        (checked before a connection is upgraded, so the refusal is a plain 409)."""
        s = self.streams.get((session, name))
        if s is not None and s.publisher is not None and s.publisher.participant != participant:
            raise StreamBusy(
                f"stream {name!r} of session {session!r} is already published by another "
                "participant"
            )

    def attach_publisher(self, session: str, name: str, participant: str,
                         sink: Sink) -> Publisher:
        self.check_publisher(session, name, participant)
        s = self._stream(session, name)
        old = s.publisher
        pub = Publisher(s, participant, sink)
        s.publisher = pub
        if old is not None:
            self.counters.publishers_replaced += 1
            old.ended = True
            old.sink.end(CloseCode.REPLACED, "replaced by a new connection of the same publisher")
            s.gop = None
            s.gop_bytes = 0
            for sub in s.subscribers:
                # The new encoder's deltas do not apply to the old one's pictures.
                self.counters.frames_dropped += len(sub.outbox)
                sub.outbox.clear()
                sub.queued_bytes = 0
                sub.waiting_for_key = True
        return pub

    def attach_subscriber(self, session: str, name: str, participant: str, sink: Sink, *,
                          pulls: bool = False) -> Subscriber:
        """A new viewer; ``pulls`` for adapters that take frames with
        :meth:`Subscriber.take` instead of having them written."""
        s = self._stream(session, name)
        sub = Subscriber(s, participant, sink, pulls=pulls, limit=self.limits.outbox_bytes,
                         counters=self.counters)
        s.subscribers.append(sub)
        if s.gop:
            for i, wire in enumerate(s.gop):
                sub.offer(wire, i == 0)
        return sub

    def detach_subscriber(self, sub: Subscriber, code: CloseCode | None = None,
                          reason: str = "", *, flush: bool = False) -> None:
        """The viewer leaves (its connection closed: ``code`` None) or is sent away
        (with what is queued for it if ``flush``, else dropping it)."""
        if sub.ended:
            return
        sub.ended = True
        pending = sub.take() if flush else []
        self.counters.frames_dropped += len(sub.outbox)
        sub.outbox.clear()
        sub.queued_bytes = 0
        s = sub.stream
        s.subscribers.remove(sub)
        self._forget_if_idle(s)
        if code is not None:
            sub.sink.end(code, reason, pending)

    def end_publisher(self, pub: Publisher, code: CloseCode, reason: str) -> None:
        """The publisher is gone (``code`` says how): its stream ends for every viewer.

        Viewers get what is already queued for them, then the end frame, unless the
        stream ended abnormally.
        """
        if pub.ended:
            return
        pub.ended = True
        s = pub.stream
        if s.publisher is not pub:
            return
        s.publisher = None
        s.gop = None
        s.gop_bytes = 0
        for sub in list(s.subscribers):
            self.detach_subscriber(sub, code, reason, flush=code == CloseCode.NORMAL)
        self._forget_if_idle(s)

    def _forget_if_idle(self, s: Stream) -> None:
        if s.publisher is None and not s.subscribers:
            self.streams.pop(s.key, None)

    # --- the hot path ---------------------------------------------------------------
    def publish(self, pub: Publisher, frame: Frame) -> None:
        """A key or delta frame from ``pub``: remember it and offer it to every viewer."""
        if pub.ended:
            return
        s = pub.stream
        wire = bytes(frame)
        size = len(wire)
        c = self.counters
        c.frames_in += 1
        c.bytes_in += size
        is_key = frame.type is FrameType.KEY
        if is_key:
            s.gop = [wire] if size <= s.gop_limit else None
            s.gop_bytes = size
        elif s.gop is not None:
            s.gop_bytes += size
            if s.gop_bytes <= s.gop_limit:
                s.gop.append(wire)
            else:
                s.gop = None
        for sub in s.subscribers:
            sub.offer(wire, is_key)

    def publish_many(self, pub: Publisher, frames: list[Frame]) -> None:
        """Key and delta frames from one read of ``pub``, in order (the fast path)."""
        if pub.ended or not frames:
            return
        if len(frames) == 1:
            self.publish(pub, frames[0])
            return
        s = pub.stream
        wires = [bytes(f) for f in frames]
        keys = [f.type is FrameType.KEY for f in frames]
        size = 0
        for wire, is_key in zip(wires, keys, strict=True):
            n = len(wire)
            size += n
            if is_key:
                s.gop = [wire] if n <= s.gop_limit else None
                s.gop_bytes = n
            elif s.gop is not None:
                s.gop_bytes += n
                if s.gop_bytes <= s.gop_limit:
                    s.gop.append(wire)
                else:
                    s.gop = None
        c = self.counters
        c.frames_in += len(wires)
        c.bytes_in += size
        for sub in s.subscribers:
            sub.offer_many(wires, keys, size)

    # --- housekeeping ---------------------------------------------------------------
    def sweep(self, now: float) -> list[Subscriber]:
        """Drop viewers whose transport accepted nothing for ``stall_timeout``."""
        limit = now - self.limits.stall_timeout
        stalled = [
            sub
            for s in self.streams.values()
            for sub in s.subscribers
            if sub.blocked_since is not None and sub.blocked_since < limit
        ]
        for sub in stalled:
            self.counters.dropped("too_slow")
            self.detach_subscriber(
                sub, CloseCode.TOO_SLOW,
                f"dropped: the viewer read nothing for {self.limits.stall_timeout:g} s",
            )
        return stalled

    def close_all(self, code: CloseCode, reason: str) -> None:
        """End every stream (the node is shutting down)."""
        for s in list(self.streams.values()):
            for sub in list(s.subscribers):
                self.detach_subscriber(sub, code, reason)
            if s.publisher is not None:
                pub = s.publisher
                self.end_publisher(pub, code, reason)
                pub.sink.end(code, reason)
        self.streams.clear()

    def stats(self) -> dict[str, object]:
        """Counters and gauges for the health report (and the tests)."""
        c = self.counters
        subs = [sub for s in self.streams.values() for sub in s.subscribers]
        return {
            "streams": len(self.streams),
            "publishers": sum(1 for s in self.streams.values() if s.publisher is not None),
            "subscribers": len(subs),
            "frames_in": c.frames_in,
            "bytes_in": c.bytes_in,
            "frames_out": c.frames_out,
            "bytes_out": c.bytes_out,
            "frames_dropped": c.frames_dropped,
            "skips": c.skips,
            "publishers_replaced": c.publishers_replaced,
            "subscribers_dropped": dict(c.subscribers_dropped),
            "queued_bytes": sum(sub.queued_bytes for sub in subs),
            "buffered_bytes": sum(sub.sink.buffered() for sub in subs),
            "retained_bytes": sum(s.gop_bytes for s in self.streams.values()
                                  if s.gop is not None),
        }
