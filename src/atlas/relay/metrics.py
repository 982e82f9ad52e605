"""The relay's Prometheus metrics, read from the hub's counters at scrape time.

The hot path only adds to plain integers (``RelayCounters``); this collector turns them
into metrics when ``/metrics`` is scraped, so relaying a frame never takes a lock.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from atlas.relay.hub import RelayHub

_GAUGES = (
    ("streams", "Streams with a publisher or viewers on this traffic node"),
    ("publishers", "Connected stream publishers"),
    ("subscribers", "Connected stream viewers"),
    ("queued_bytes", "Bytes of frames waiting in viewers' outboxes"),
    ("buffered_bytes", "Bytes of frames waiting in viewers' transport write buffers"),
    ("retained_bytes", "Bytes of last key frames (and deltas since) kept for new viewers"),
)
_COUNTERS = (
    ("frames_in", "Frames received from publishers"),
    ("bytes_in", "Bytes received from publishers"),
    ("frames_out", "Frames sent to viewers"),
    ("bytes_out", "Bytes sent to viewers"),
    ("frames_dropped", "Frames not sent to a slow viewer (it skipped to a newer key frame)"),
    ("skips", "Times a slow viewer's outbox overflowed and it skipped ahead"),
    ("publishers_replaced", "Publishers replaced by a new connection of the same participant"),
)


class RelayCollector(Collector):
    def __init__(self, hub: RelayHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        st = self.hub.stats()
        for name, doc in _GAUGES:
            yield GaugeMetricFamily(f"atlas_relay_{name}", doc, value=float(_num(st[name])))
        for name, doc in _COUNTERS:
            yield CounterMetricFamily(f"atlas_relay_{name}", doc, value=float(_num(st[name])))
        dropped = CounterMetricFamily("atlas_relay_subscribers_dropped",
                                      "Viewers dropped by the relay, by reason",
                                      labels=["reason"])
        reasons = st["subscribers_dropped"]
        assert isinstance(reasons, dict)
        for reason, n in sorted(reasons.items()):
            dropped.add_metric([reason], float(n))
        yield dropped


def _num(v: object) -> int:
    assert isinstance(v, int)
    return v
