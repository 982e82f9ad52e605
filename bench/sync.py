"""Benchmark: cluster data sync of a 1,000-traffic-node document to live node processes.

Run from the repository root::

    .venv/bin/python -m bench.sync            # 1, 5, 10, 20 nodes, 3 runs each
    .venv/bin/python -m bench.sync --runs 5

Starts 20 ``atlas serve`` traffic nodes (each its own process on its own 127.x.y.z
address, real TLS, real PSK signing, names from a real DNS server). The master (this
process) holds a document listing 1,000 traffic nodes, of which only the 20 live ones
are pushed to. For 1, 5, 10 and 20 target nodes it times Sync Now (every node validates
and stores the whole document) against the naive baseline in the same run: the same
push, one node at a time. Prints a table; the figures go in docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from atlas.node import cluster
from atlas.node.sync import sync_now
from atlas.store import config_store
from tests.support.cluster import SITE, LocalCluster

LIVE = 20
ENTRIES = 1000
SIZES = (1, 5, 10, 20)
ZONES = ("+09:00", "Asia/Tokyo", "Europe/Berlin", "America/New_York", "-03:00")


def spare_entries(count: int) -> list[dict[str, Any]]:
    return [
        {
            "name": f"spare{i:04d}",
            "public": f"spare{i:04d}.atlas.test:443",
            "prefixes": [f"10.{i // 250}.{i % 250}.0/24"],
            "timezone": ZONES[i % len(ZONES)],
            "region": f"region {i % 7}",
        }
        for i in range(count)
    ]


def new_revision(c: LocalCluster, n: int) -> None:
    config = config_store.load(c.master.db)
    assert config is not None
    changed = config.model_copy(
        update={"selection": config.selection.model_copy(update={"master_fallback_limit": n})}
    )
    config_store.save(c.master.db, changed, expected_revision=config.revision, author="bench")


async def measure(c: LocalCluster, names: list[str], sequential: bool, runs: int) -> list[float]:
    out: list[float] = []
    for _ in range(runs):
        new_revision(c, len(out) + 1)
        t0 = time.perf_counter()
        report = await sync_now(c.master, only=names, sequential=sequential, timeout=60)
        out.append(time.perf_counter() - t0)
        if not report.ok:
            raise SystemExit(f"sync failed: {[r.message for r in report.failed]}")
    return out


async def run(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="atlas-bench-sync-") as tmp:
        names = [f"node{i:02d}" for i in range(1, LIVE + 1)]
        t0 = time.perf_counter()
        with LocalCluster(Path(tmp), names) as c:
            c.start()
            started = time.perf_counter() - t0
            live = [
                {**c.traffic[n].entry(), "prefixes": [f"172.16.{i}.0/24"],
                 "timezone": ZONES[i % len(ZONES)]}
                for i, n in enumerate(names)
            ]
            config = cluster.create_cluster(
                c.master, SITE, traffic_nodes=live + spare_entries(ENTRIES - LIVE)
            )
            t = time.perf_counter()
            document = config.canonical_json()
            serialise = time.perf_counter() - t
            print(f"{LIVE} node processes up in {started:.1f} s; document: "
                  f"{len(config.traffic_nodes)} traffic nodes, {len(document) / 1024:.0f} KiB, "
                  f"serialised in {serialise * 1000:.0f} ms")
            await measure(c, names, sequential=False, runs=1)  # warm-up
            rows = []
            for size in SIZES:
                targets = names[:size]
                concurrent = await measure(c, targets, sequential=False, runs=runs)
                sequential = await measure(c, targets, sequential=True, runs=runs)
                rows.append((size, statistics.median(concurrent), statistics.median(sequential)))
            print()
            print(f"Sync Now of a {ENTRIES}-traffic-node document, median of {runs} runs")
            print("| nodes | concurrent (ours) | sequential (baseline) | speed-up |")
            print("| ---: | ---: | ---: | ---: |")
            for size, conc, seq in rows:
                print(f"| {size} | {conc * 1000:.0f} ms | {seq * 1000:.0f} ms | "
                      f"{seq / conc:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.runs))


if __name__ == "__main__":
    main()
