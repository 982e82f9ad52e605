"""Traffic-node selection: decisions per second, radix index vs a brute-force scan.

Run: ``.venv/bin/python bench/selection.py`` (about 30-60 s; ``--quick`` for a smoke run).

For 10, 1,000 and 10,000 traffic nodes with 100 network address prefixes each (random
IPv4 prefixes /8-/32 plus about 10 % IPv6), every node viable but a few not accepting,
method ``random``: time :meth:`atlas.selection.Selector.select` on random client
addresses, and the same decisions made by scanning every prefix of every viable node.
Goals (design section 3, issue "Choosing the traffic node"): at least 200,000 decisions/s
at 1,000 nodes x 100 prefixes on one core, and at least 100x the brute-force scan.
Prints a table and PASS/FAIL per goal; exits 0 either way (1 only on a wrong answer).

Columns: ``radix dec/s`` — steady state, fresh client addresses, the viable set has
served traffic before (the Selector keeps each prefix's decision per viable set);
``cold dec/s`` — the first decisions after the viable set changed, nothing kept yet;
``+parse dec/s`` — steady state including building ``ClientFacts`` from the address
text; ``brute dec/s`` — the scan, over ``(n)`` sampled decisions; ``speedup`` — radix
over brute; ``prefix hit`` — share of clients decided by the prefix rule. Rates are per
CPU-second of the benchmark thread, so other load on a shared machine does not distort
them; the wall-clock rate of the goal row is printed too.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import random
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from atlas.model.config import (
    Address,
    ClusterConfig,
    HealthSettings,
    MasterNode,
    SelectionMethod,
    SelectionSettings,
    TrafficNode,
)
from atlas.selection import (
    ClientFacts,
    HealthSnapshot,
    NodeChosen,
    NodeHealth,
    Selection,
    Selector,
)

VERSION = "7.1.0"
NOW = datetime(2024, 7, 1, 12, 0, tzinfo=UTC)
PREFIXES_PER_NODE = 100
V6_SHARE = 0.1
GOAL_RATE = 200_000
GOAL_SPEEDUP = 100.0
V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))


def _text(value: int, family: int) -> str:
    return socket.inet_ntop(family, value.to_bytes(4 if family == socket.AF_INET else 16, "big"))


def random_prefix(rng: random.Random) -> str:
    """A random, already normalised prefix: IPv4 /8-/32, or IPv6 /32-/64 in 2001:db8::/32."""
    if rng.random() < V6_SHARE:
        length = rng.randint(32, 64)
        value = (V6_BASE | rng.getrandbits(96)) >> (128 - length) << (128 - length)
        return f"{_text(value, socket.AF_INET6)}/{length}"
    length = rng.randint(8, 32)
    value = rng.getrandbits(32) >> (32 - length) << (32 - length)
    return f"{_text(value, socket.AF_INET)}/{length}"


def random_client_ip(rng: random.Random) -> str:
    if rng.random() < V6_SHARE:
        return _text(V6_BASE | rng.getrandbits(96), socket.AF_INET6)
    return _text(rng.getrandbits(32), socket.AF_INET)


def make_config(nodes: int, rng: random.Random) -> ClusterConfig:
    """Built with ``model_construct``: the prefixes are already normalised, and the
    benchmark measures selection, not the configuration validation."""
    traffic = tuple(
        TrafficNode.model_construct(
            name=f"node{i}",
            guid=None,
            public=Address.model_construct(host=f"node{i}.support.example.test", port=443),
            internal=None,
            accepting=i % 50 != 7,  # 2 % not accepting: lookups must skip them
            prefixes=tuple(random_prefix(rng) for _ in range(PREFIXES_PER_NODE)),
            timezone="+00:00",
            capacity=1000,
            region="",
        )
        for i in range(nodes)
    )
    return ClusterConfig.model_construct(
        revision=1,
        site_hostname="support.example.test",
        primary=MasterNode.model_construct(
            name="master",
            guid=None,
            public=Address.model_construct(host="master.support.example.test", port=443),
            internal=None,
        ),
        backup=None,
        traffic_nodes=traffic,
        selection=SelectionSettings.model_construct(
            method=SelectionMethod.RANDOM,
            srv_name=None,
            a_record_hostname=None,
            anycast_address=None,
            anycast_port=443,
            anycast_tls_name=None,
            master_fallback_limit=50,
        ),
        health=HealthSettings.model_construct(interval_seconds=5.0, timeout_seconds=15.0),
    )


class BruteForce:
    """The obvious implementation: scan every prefix of every viable node per decision.

    Prefixes are pre-parsed to integers once (as any sensible scan would), so this is
    the cost of the scan itself, not of parsing text.
    """

    def __init__(self, config: ClusterConfig, viable: frozenset[str]) -> None:
        self.config = config
        self.viable_nodes = [n for n in config.traffic_nodes if n.name in viable]
        self.by_name = {n.name: n for n in config.traffic_nodes}
        self.entries: dict[int, list[tuple[int, int, int, str]]] = {4: [], 6: []}
        for node in self.viable_nodes:
            for text in node.prefixes:
                address, _, length_text = text.partition("/")
                version, bits = (6, 128) if ":" in address else (4, 32)
                family = socket.AF_INET6 if version == 6 else socket.AF_INET
                network = int.from_bytes(socket.inet_pton(family, address), "big")
                length = int(length_text)
                mask = ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)
                self.entries[version].append((network, mask, length, node.name))

    def candidates(self, client: ClientFacts) -> tuple[str, frozenset[str]] | None:
        address = int(ipaddress.ip_address(client.lookup_ip))
        best_len = -1
        best_net = 0
        names: list[str] = []
        for network, mask, length, name in self.entries[client.ip_version]:
            if address & mask == network:
                if length > best_len:
                    best_len, best_net, names = length, network, [name]
                elif length == best_len:
                    names.append(name)
        if not names:
            return None
        net = ipaddress.ip_network((best_net, best_len))
        return str(net), frozenset(names)

    def select(self, client: ClientFacts, rng: random.Random) -> str:
        match = self.candidates(client)
        if match is not None:
            return rng.choice(sorted(match[1]))
        return rng.choice(self.viable_nodes).name


@dataclass
class Row:
    nodes: int
    prefixes: int
    build_s: float
    radix_rate: float
    wall_rate: float
    cold_rate: float
    parse_rate: float
    brute_rate: float
    brute_samples: int
    prefix_hits: float

    @property
    def speedup(self) -> float:
        return self.radix_rate / self.brute_rate


def timed(run: Callable[[], int]) -> float:
    """Decisions per CPU-second of one call of ``run`` (which returns how many it made).

    CPU time of this thread (``time.thread_time``), not wall-clock time: this is a
    per-core figure, and other work on a shared machine must not distort it. The
    wall-clock figure is printed alongside for the goal row.
    """
    gc.disable()
    try:
        start_cpu, start_wall = time.thread_time(), time.perf_counter()
        done = run()
        cpu, wall = time.thread_time() - start_cpu, time.perf_counter() - start_wall
        WALL_RATES.append(done / wall)
        return done / cpu
    finally:
        gc.enable()


WALL_RATES: list[float] = []


def measure(nodes: int, batch: int, brute_samples: int, seed: int) -> Row:
    rng = random.Random(seed)
    config = make_config(nodes, rng)
    health = HealthSnapshot(
        {n.name: NodeHealth(True, VERSION, 1, True, load=0) for n in config.traffic_nodes}
    )
    t0 = time.thread_time()
    selector = Selector(config)
    build_s = time.thread_time() - t0
    select = selector.select
    draw = random.Random(seed + 1)

    def fresh_clients() -> list[ClientFacts]:
        return [ClientFacts(random_client_ip(rng)) for _ in range(batch)]

    def run(clients: list[ClientFacts], snapshot: HealthSnapshot) -> Callable[[], int]:
        def go() -> int:
            for c in clients:
                select(snapshot, VERSION, c, now=NOW, rng=draw)
            return len(clients)

        return go

    # Cold: the first decisions after the set of viable nodes changed (one node stops
    # accepting), when nothing is cached for the new set yet; fresh addresses.
    one_down = HealthSnapshot({**health, "node0": NodeHealth(False, VERSION, 1, True)})
    cold_rate = timed(run(fresh_clients(), one_down))
    # Steady state: the same viable set has already served traffic; fresh addresses
    # each round (best of three rounds).
    timed(run(fresh_clients(), health))
    WALL_RATES.clear()
    radix_rate = max(timed(run(fresh_clients(), health)) for _ in range(3))
    wall_rate = max(WALL_RATES)

    ips = [random_client_ip(rng) for _ in range(batch)]

    def with_parse() -> int:  # also building ClientFacts from the address text
        for ip in ips:
            select(health, VERSION, ClientFacts(ip), now=NOW, rng=draw)
        return len(ips)

    parse_rate = timed(with_parse)

    viable = selector.viability(health, VERSION, NOW).viable_set
    brute = BruteForce(config, viable)
    sample = fresh_clients()[:brute_samples]
    start = time.thread_time()
    for c in sample:
        brute.select(c, draw)
    brute_rate = len(sample) / (time.thread_time() - start)

    hits = 0
    for c in sample:  # same answers, or the figures mean nothing
        match = selector.candidates(health, VERSION, c, now=NOW)
        got = None if match is None else (match.prefix, frozenset(match.nodes))
        if got != brute.candidates(c):
            sys.exit(f"radix and brute force disagree for {c.ip}: {got} vs {brute.candidates(c)}")
        hits += match is not None
        decision: Selection = select(health, VERSION, c, now=NOW, rng=draw)
        assert isinstance(decision, NodeChosen)
    return Row(
        nodes=nodes,
        prefixes=selector.index.prefix_count,
        build_s=build_s,
        radix_rate=radix_rate,
        wall_rate=wall_rate,
        cold_rate=cold_rate,
        parse_rate=parse_rate,
        brute_rate=brute_rate,
        brute_samples=len(sample),
        prefix_hits=hits / len(sample),
    )


def print_table(rows: Sequence[Row]) -> None:
    head = (
        f"{'nodes':>6} {'prefixes':>9} {'build s':>7} {'radix dec/s':>11} "
        f"{'cold dec/s':>10} {'+parse dec/s':>12} {'brute dec/s':>11} {'(n)':>5} "
        f"{'speedup':>8} {'prefix hit':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.nodes:>6,} {r.prefixes:>9,} {r.build_s:>7.2f} {r.radix_rate:>11,.0f} "
            f"{r.cold_rate:>10,.0f} {r.parse_rate:>12,.0f} {r.brute_rate:>11,.1f} "
            f"{r.brute_samples:>5} {r.speedup:>7,.0f}x {r.prefix_hits:>10.0%}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller, shorter smoke run")
    args = parser.parse_args()
    plan = [(10, 3000), (1000, 60), (10_000, 6)]  # (nodes, brute-force samples)
    batch = 50_000
    if args.quick:
        plan, batch = [(10, 500), (1000, 10)], 10_000
    print(
        f"traffic-node selection, {PREFIXES_PER_NODE} prefixes per node, Python "
        f"{sys.version.split()[0]}; rates per CPU-second of one core, build in CPU s"
    )
    rows = [measure(nodes, batch, samples, seed=nodes) for nodes, samples in plan]
    print_table(rows)
    goal = next(r for r in rows if r.nodes == 1000)
    ok_rate = goal.radix_rate >= GOAL_RATE
    ok_speedup = goal.speedup >= GOAL_SPEEDUP
    print(
        f"{'PASS' if ok_rate else 'FAIL'}: {goal.radix_rate:,.0f} decisions/s at 1,000 nodes "
        f"x {PREFIXES_PER_NODE} prefixes (goal >= {GOAL_RATE:,})"
    )
    print(
        f"      (wall clock: {goal.wall_rate:,.0f} decisions/s with this machine's other load)"
    )
    print(
        f"{'PASS' if ok_speedup else 'FAIL'}: {goal.speedup:,.0f}x the brute-force scan "
        f"at 1,000 nodes (goal >= {GOAL_SPEEDUP:,.0f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
