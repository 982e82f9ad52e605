"""What a viewer measures about a stream: frames, rate, latency, bytes, order.

Latency is the frame's timestamp (set by the publisher when it captured the picture)
against the viewer's clock when the frame arrived: exact on one machine, and on two
machines off by their clock difference (NTP keeps that to milliseconds; a negative
latency says the clocks disagree, not that frames travel back in time).

Order: frames carry the publisher's sequence number. A gap means frames were skipped —
the relay drops a slow viewer's queued frames and resumes at the next key frame
(``atlas.relay.hub``), or the publisher reconnected and started counting again (it then
starts with a key frame). A sequence number that goes *back* without a key frame is a
real fault and is counted as ``out_of_order``.

Pure: times are passed in (microseconds since the epoch for frame timestamps, monotonic
seconds for rates).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

RATE_WINDOW: Final = 2.0
"""Seconds over which the frame rate and throughput are averaged."""


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    frames: int
    key_frames: int
    bytes: int
    fps: float
    bytes_per_second: float
    latency_ms: float | None
    latency_avg_ms: float | None
    latency_max_ms: float | None
    skipped: int
    out_of_order: int
    last_seq: int | None
    last_counter: int | None

    def as_dict(self) -> dict[str, object]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        return {
            "frames": self.frames, "key_frames": self.key_frames, "bytes": self.bytes,
            "fps": round(self.fps, 2), "bytes_per_second": round(self.bytes_per_second),
            "latency_ms": r(self.latency_ms), "latency_avg_ms": r(self.latency_avg_ms),
            "latency_max_ms": r(self.latency_max_ms), "skipped": self.skipped,
            "out_of_order": self.out_of_order, "last_seq": self.last_seq,
            "last_counter": self.last_counter,
        }


@dataclass
class FrameStats:
    """Counters for one stream as seen by one viewer."""

    frames: int = 0
    key_frames: int = 0
    bytes: int = 0
    skipped: int = 0
    out_of_order: int = 0
    last_seq: int | None = None
    last_counter: int | None = None
    latency_ms: float | None = None
    _latency_sum: float = 0.0
    _latency_max: float | None = None
    _window: deque[tuple[float, int]] = field(default_factory=deque)

    def record(self, *, seq: int, key: bool, size: int, timestamp_us: int, now_us: int,
               now: float, counter: int | None = None) -> None:
        """One frame arrived (``now``: monotonic seconds, for the rates)."""
        self.frames += 1
        self.key_frames += key
        self.bytes += size
        if self.last_seq is not None:
            if seq > self.last_seq + 1:
                self.skipped += seq - self.last_seq - 1
            elif seq <= self.last_seq and not key:
                self.out_of_order += 1
        self.last_seq = seq
        if counter is not None:
            self.last_counter = counter
        latency = (now_us - timestamp_us) / 1000.0
        self.latency_ms = latency
        self._latency_sum += latency
        self._latency_max = latency if self._latency_max is None else max(self._latency_max,
                                                                           latency)
        self._window.append((now, size))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._window and now - self._window[0][0] > RATE_WINDOW:
            self._window.popleft()

    def snapshot(self, now: float) -> StatsSnapshot:
        self._trim(now)
        fps = throughput = 0.0
        if len(self._window) >= 2:
            elapsed = self._window[-1][0] - self._window[0][0]
            if elapsed > 0:
                fps = (len(self._window) - 1) / elapsed
                throughput = sum(size for _t, size in list(self._window)[1:]) / elapsed
        avg = self._latency_sum / self.frames if self.frames else None
        return StatsSnapshot(
            frames=self.frames, key_frames=self.key_frames, bytes=self.bytes, fps=fps,
            bytes_per_second=throughput, latency_ms=self.latency_ms, latency_avg_ms=avg,
            latency_max_ms=self._latency_max, skipped=self.skipped,
            out_of_order=self.out_of_order, last_seq=self.last_seq,
            last_counter=self.last_counter,
        )
