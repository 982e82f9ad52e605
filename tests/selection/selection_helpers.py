"""Builders for selection tests and the brute-force prefix reference."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from atlas.model.config import (
    Address,
    ClusterConfig,
    MasterNode,
    SelectionMethod,
    SelectionSettings,
    TrafficNode,
)
from atlas.selection import ClientFacts, HealthSnapshot, NodeHealth

VERSION = "7.1.0"
NOW = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)


def node(
    name: str,
    *prefixes: str,
    accepting: bool = True,
    timezone: str = "+00:00",
    capacity: int = 1000,
    port: int = 443,
) -> TrafficNode:
    return TrafficNode(
        name=name,
        guid=f"guid-{name}",
        public=Address(host=f"{name}.support.example.test", port=port),
        accepting=accepting,
        prefixes=tuple(prefixes),
        timezone=timezone,
        capacity=capacity,
    )


def cluster(
    *nodes: TrafficNode,
    method: SelectionMethod = SelectionMethod.RANDOM,
    revision: int = 1,
    fallback_limit: int = 50,
    **selection: object,
) -> ClusterConfig:
    return ClusterConfig(
        revision=revision,
        site_hostname="support.example.test",
        primary=MasterNode(name="master", public=Address(host="master.support.example.test")),
        traffic_nodes=tuple(nodes),
        selection=SelectionSettings(
            method=method,
            master_fallback_limit=fallback_limit,
            **selection,  # type: ignore[arg-type]
        ),
    )


def healthy(load: int = 0, last_seen: float | None = None) -> NodeHealth:
    return NodeHealth(
        online=True,
        software_version=VERSION,
        config_revision=1,
        synced=True,
        load=load,
        last_seen=last_seen,
    )


def all_healthy(config: ClusterConfig, **loads: int) -> HealthSnapshot:
    return HealthSnapshot({n.name: healthy(loads.get(n.name, 0)) for n in config.traffic_nodes})


def client(ip: str = "198.51.100.7", offset: int | None = None) -> ClientFacts:
    return ClientFacts(ip, offset)


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _as_v4_if_mapped(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
        v4 = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((v4, net.prefixlen - 96))
    return net


def brute_force_candidates(
    nodes: Sequence[TrafficNode], viable: Iterable[str], ip: str
) -> tuple[str, frozenset[str]] | None:
    """Scan every prefix of every viable node: (longest containing prefix, its nodes)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    viable_set = set(viable)
    best_len = -1
    best: tuple[str, set[str]] | None = None
    for n in nodes:
        if n.name not in viable_set:
            continue
        for text in n.prefixes:
            net = _as_v4_if_mapped(ipaddress.ip_network(text, strict=False))
            if net.version != address.version or address not in net:
                continue
            if net.prefixlen > best_len:
                best_len, best = net.prefixlen, (str(net), {n.name})
            elif net.prefixlen == best_len and best is not None:
                best[1].add(n.name)
    return None if best is None else (best[0], frozenset(best[1]))


def brute_force_match_count(nodes: Sequence[TrafficNode], ip: str) -> int:
    """How many distinct configured prefixes (any node) contain ``ip``."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    found = set()
    for n in nodes:
        for text in n.prefixes:
            net = _as_v4_if_mapped(ipaddress.ip_network(text, strict=False))
            if net.version == address.version and address in net:
                found.add(net)
    return len(found)


def chi_square(observed: Mapping[str, int], expected: Mapping[str, float]) -> float:
    return sum((observed.get(k, 0) - e) ** 2 / e for k, e in expected.items())


# Upper 0.1 % points of the chi-square distribution, by degrees of freedom.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}
