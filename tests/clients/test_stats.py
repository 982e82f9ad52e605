"""What a viewer measures: frames, key frames, bytes, skipped and out-of-order, latency."""

from __future__ import annotations

import pytest

from atlas.clients.stats import FrameStats

US = 1_000_000


def feed(stats: FrameStats, seqs: list[int], *, keys: frozenset[int] | set[int] = frozenset({1}),
         fps: float = 10.0, latency_ms: float = 5.0) -> None:
    for i, seq in enumerate(seqs):
        t = i / fps
        stamp = int(1_700_000_000 * US + t * US)
        stats.record(seq=seq, key=seq in keys, size=1000, timestamp_us=stamp,
                     now_us=stamp + int(latency_ms * 1000), now=100.0 + t, counter=seq)


def test_counts_bytes_and_latency() -> None:
    stats = FrameStats()
    feed(stats, list(range(1, 21)), latency_ms=7.5)
    snap = stats.snapshot(100.0 + 19 / 10)
    assert (snap.frames, snap.key_frames, snap.bytes) == (20, 1, 20_000)
    assert snap.latency_ms == pytest.approx(7.5)
    assert snap.latency_avg_ms == pytest.approx(7.5)
    assert snap.latency_max_ms == pytest.approx(7.5)
    assert snap.skipped == snap.out_of_order == 0
    assert snap.last_seq == snap.last_counter == 20


def test_rate_over_the_window() -> None:
    stats = FrameStats()
    feed(stats, list(range(1, 51)), fps=10.0)
    snap = stats.snapshot(100.0 + 49 / 10)
    assert snap.fps == pytest.approx(10.0, rel=0.01)
    assert snap.bytes_per_second == pytest.approx(10_000, rel=0.01)


def test_the_rate_falls_to_zero_when_frames_stop() -> None:
    stats = FrameStats()
    feed(stats, list(range(1, 11)))
    assert stats.snapshot(100.9).fps > 0
    assert stats.snapshot(200.0).fps == 0


def test_a_gap_counts_as_skipped_frames() -> None:
    stats = FrameStats()
    feed(stats, [1, 2, 3, 7, 8], keys={1, 7})
    assert stats.snapshot(101).skipped == 3
    assert stats.out_of_order == 0


def test_going_back_without_a_key_frame_is_out_of_order() -> None:
    stats = FrameStats()
    feed(stats, [1, 2, 3, 2, 4])
    assert stats.out_of_order == 1


def test_a_publisher_that_reconnected_starts_again_with_a_key_frame() -> None:
    stats = FrameStats()
    feed(stats, [1, 2, 3, 1, 2], keys={1})
    assert stats.out_of_order == 0


def test_negative_latency_says_the_clocks_disagree() -> None:
    stats = FrameStats()
    feed(stats, [1], latency_ms=-3)
    assert stats.snapshot(100).latency_ms == pytest.approx(-3)


def test_snapshot_as_dict_is_json_friendly() -> None:
    import json

    stats = FrameStats()
    assert json.loads(json.dumps(stats.snapshot(0).as_dict()))["frames"] == 0
    feed(stats, [1, 2])
    d = stats.snapshot(100.1).as_dict()
    assert set(d) >= {"frames", "fps", "latency_ms", "bytes", "skipped", "last_counter"}
