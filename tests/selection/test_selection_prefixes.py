"""Rule 2: Network Address Prefixes — the radix index against a brute-force scan."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas.model.config import ClusterConfig, SelectionMethod
from atlas.selection import (
    HealthSnapshot,
    NodeChosen,
    NodeHealth,
    PrefixIndex,
    Rule,
    Selector,
    assess_viability,
    prefix_candidates,
    select_traffic_node,
)
from atlas.selection.prefixes import normalise_prefix, prefix_key
from tests.selection.selection_helpers import (
    CHI2_999,
    NOW,
    VERSION,
    all_healthy,
    brute_force_candidates,
    brute_force_match_count,
    chi_square,
    client,
    cluster,
    healthy,
    node,
)

# --- hypothesis: random configurations around a few shared bases, so prefixes overlap,
# tie and nest, and client addresses fall inside them.

V4_BASES = [int(ipaddress.IPv4Address(a)) for a in ("10.0.0.0", "10.20.0.0", "192.168.1.0")]
V6_BASES = [int(ipaddress.IPv6Address(a)) for a in ("2001:db8::", "2001:db8:0:1::", "fd00::")]


@st.composite
def v4_prefixes(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(V4_BASES)) | draw(st.integers(0, 0xFFFF))
    length = draw(st.sampled_from([0, 8, 12, 16, 17, 20, 24, 28, 31, 32]))
    net = ipaddress.IPv4Network((base, length), strict=False)
    if draw(st.integers(0, 9)) == 0:  # now and then written IPv4-mapped
        return f"::ffff:{net.network_address}/{96 + length}"
    return str(net)


@st.composite
def v6_prefixes(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(V6_BASES)) | draw(st.integers(0, 0xFFFF_FFFF))
    length = draw(st.sampled_from([0, 16, 32, 48, 64, 96, 112, 120, 128]))
    return str(ipaddress.IPv6Network((base, length), strict=False))


@st.composite
def client_ips(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 2))
    v4 = ipaddress.IPv4Address(draw(st.sampled_from(V4_BASES)) | draw(st.integers(0, 0xFFFF)))
    if kind == 0:
        return str(v4)
    if kind == 1:  # the same, as a dual-stack socket reports it
        return f"::ffff:{v4}"
    low = draw(st.integers(0, 0xFFFF_FFFF))
    return str(ipaddress.IPv6Address(draw(st.sampled_from(V6_BASES)) | low))


health_states = st.sampled_from(
    [
        "viable", "viable", "viable", "not_accepting", "offline", "old_version", "not_synced",
    ]
)


def health_snapshots(count: int) -> st.SearchStrategy[HealthSnapshot]:
    def snapshot(states: list[str]) -> HealthSnapshot:
        return HealthSnapshot(
            {
                f"n{i}": NodeHealth(
                    online=state != "offline",
                    software_version="6.0" if state == "old_version" else VERSION,
                    config_revision=1,
                    synced=state != "not_synced",
                )
                for i, state in enumerate(states)
            }
        )

    return st.lists(health_states, min_size=count, max_size=count).map(snapshot)


@st.composite
def configurations(draw: st.DrawFn) -> tuple[ClusterConfig, list[HealthSnapshot]]:
    """A configuration and a few successive health snapshots of its nodes."""
    pool = draw(st.lists(st.one_of(v4_prefixes(), v6_prefixes()), min_size=1, max_size=12))
    count = draw(st.integers(1, 8))
    nodes = [
        node(
            f"n{i}",
            *draw(st.lists(st.sampled_from(pool), max_size=5)),
            accepting=draw(st.integers(0, 6)) > 0,
        )
        for i in range(count)
    ]
    snapshots = draw(st.lists(health_snapshots(count), min_size=1, max_size=3))
    return cluster(*nodes), snapshots


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(configurations(), st.lists(client_ips(), min_size=1, max_size=20))
def test_radix_index_agrees_with_brute_force(
    config_and_health: tuple[ClusterConfig, list[HealthSnapshot]], ips: list[str]
) -> None:
    """Also across successive health snapshots on one Selector: nothing it keeps
    between calls may outlive a change of the viable nodes."""
    config, snapshots = config_and_health
    selector = Selector(config)
    for health in [*snapshots, snapshots[0]]:
        viable = assess_viability(config, health, VERSION, NOW).viable
        for ip in ips:
            expected = brute_force_candidates(config.traffic_nodes, viable, ip)
            match = selector.candidates(health, VERSION, client(ip), now=NOW)
            got = None if match is None else (match.prefix, frozenset(match.nodes))
            assert got == expected, ip
            d = selector.select(health, VERSION, client(ip), now=NOW, rng=random.Random(0))
            if match is None:
                assert d.rule is not Rule.PREFIX
                continue
            assert match.matches == brute_force_match_count(config.traffic_nodes, ip)
            assert isinstance(d, NodeChosen)
            assert d.rule is Rule.PREFIX
            assert d.node_name in match.nodes
            assert d.reason == match.describe()


@settings(max_examples=2000)
@given(
    st.one_of(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.just(4)),
        st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128), st.just(6)),
        st.tuples(st.integers(0, 2**32 - 1), st.integers(96, 128), st.just(0)),  # ::a.b.c.d
        st.tuples(st.integers(0, 2**32 - 1), st.integers(96, 128), st.just(0xFFFF)),  # mapped
    )
)
def test_fast_prefix_keys_equal_ipaddress_normalisation(raw: tuple[int, int, int]) -> None:
    value, length, kind = raw
    if kind == 4:
        text = f"{ipaddress.IPv4Address(value)}/{length}"
    elif kind == 6:
        text = f"{ipaddress.IPv6Address(value)}/{length}"
    else:
        text = f"{ipaddress.IPv6Address((kind << 32) | value)}/{length}"
    net = normalise_prefix(text)
    assert prefix_key(text) == (str(net), net.prefixlen)


@settings(max_examples=2000)
@given(
    st.one_of(
        st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv4Address(v))),
        st.integers(0, 2**128 - 1).map(lambda v: str(ipaddress.IPv6Address(v))),
        st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv6Address(v))),
        st.integers(0, 2**32 - 1).map(lambda v: f"::ffff:{ipaddress.IPv4Address(v)}"),
    )
)
def test_client_addresses_normalise_like_ipaddress(ip: str) -> None:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    facts = client(ip)
    assert (facts.lookup_ip, facts.ip_version) == (str(address), address.version)


def test_a_cached_prefix_decision_follows_viability_changes() -> None:
    config = cluster(node("narrow", "10.20.0.0/16"), node("wide", "10.0.0.0/8"))
    selector = Selector(config)
    up = all_healthy(config)
    down = HealthSnapshot({**up, "narrow": NodeHealth(False, VERSION, 1, True)})
    rng = random.Random(1)
    who = client("10.20.1.1")
    for health, winner in [(up, "narrow"), (down, "wide"), (up, "narrow")]:
        d = selector.select(health, VERSION, who, now=NOW, rng=rng)
        assert isinstance(d, NodeChosen)
        assert d.node_name == winner
    # A plain dict is read afresh on every call, even when changed in place.
    mutable: dict[str, NodeHealth] = dict(up)
    for change, winner in [(healthy(), "narrow"), (NodeHealth(False, VERSION, 1, True), "wide")]:
        mutable["narrow"] = change
        d = selector.select(mutable, VERSION, who, now=NOW, rng=rng)
        assert isinstance(d, NodeChosen)
        assert d.node_name == winner


def test_longest_match_wins_and_reason_counts_matches() -> None:
    config = cluster(
        node("wide", "10.0.0.0/8"),
        node("narrow", "10.20.0.0/16"),
        node("narrowest", "10.20.30.0/24"),
        node("elsewhere", "192.168.0.0/16"),
    )
    d = select_traffic_node(
        config, all_healthy(config), VERSION, client("10.20.30.40"), now=NOW, rng=random.Random(1)
    )
    assert isinstance(d, NodeChosen)
    assert (d.node_name, d.rule) == ("narrowest", Rule.PREFIX)
    assert d.reason == "prefix 10.20.30.0/24 (longest of 3 matches)"
    d = select_traffic_node(
        config, all_healthy(config), VERSION, client("10.99.0.1"), now=NOW, rng=random.Random(1)
    )
    assert d.reason == "prefix 10.0.0.0/8 (only match)"


def test_non_viable_longest_match_is_skipped_for_the_next_shorter() -> None:
    config = cluster(
        node("wide", "10.0.0.0/8"),
        node("narrow", "10.20.0.0/16", accepting=False),
        node("narrowest", "10.20.30.0/24"),
    )
    health = HealthSnapshot(
        {**all_healthy(config), "narrowest": NodeHealth(False, VERSION, 1, True)}
    )
    d = select_traffic_node(
        config, health, VERSION, client("10.20.30.40"), now=NOW, rng=random.Random(1)
    )
    assert isinstance(d, NodeChosen)
    assert d.node_name == "wide"
    assert d.reason == (
        "prefix 10.0.0.0/8 (longest of 3 matches; skipped 10.20.30.0/24, 10.20.0.0/16: "
        "no viable node)"
    )


def test_prefixes_override_every_method() -> None:
    for method, extra in [
        (SelectionMethod.RANDOM, {}),
        (SelectionMethod.TIMEZONE, {}),
        (SelectionMethod.LEAST_LOADED, {}),
        (SelectionMethod.A_RECORD, {"a_record_hostname": "traffic.support.example.test"}),
        (SelectionMethod.SRV, {"srv_name": "_atlas._tcp.support.example.test"}),
        (SelectionMethod.ANYCAST, {"anycast_address": "192.0.2.1"}),
    ]:
        config = cluster(node("a", "10.0.0.0/8"), node("b"), method=method, **extra)
        d = select_traffic_node(
            config, all_healthy(config), VERSION, client("10.1.2.3", 60), now=NOW,
            rng=random.Random(1),
        )
        assert isinstance(d, NodeChosen), method
        assert (d.node_name, d.rule) == ("a", Rule.PREFIX)


@pytest.mark.parametrize(
    ("client_ip", "winner"),
    [
        ("2001:db8:1:2::5", "v6-narrow"),
        ("2001:db8:ffff::1", "v6-wide"),
        ("::ffff:10.20.1.1", "v4"),  # IPv4-mapped: matched as 10.20.1.1
        ("::ffff:a14:101", "v4"),  # the same address in hex form
        ("10.20.1.1", "v4"),
        ("fe80::1%eth0", "link-local"),
    ],
)
def test_ipv6_and_ipv4_mapped_clients(client_ip: str, winner: str) -> None:
    config = cluster(
        node("v6-wide", "2001:db8::/32"),
        node("v6-narrow", "2001:db8:1::/48"),
        node("v4", "10.20.0.0/16"),
        node("link-local", "fe80::/10"),
    )
    d = select_traffic_node(
        config, all_healthy(config), VERSION, client(client_ip), now=NOW, rng=random.Random(1)
    )
    assert isinstance(d, NodeChosen)
    assert d.node_name == winner


def test_prefix_forms_are_normalised() -> None:
    assert str(normalise_prefix("10.20.1.7/16")) == "10.20.0.0/16"
    assert str(normalise_prefix("10.20.1.7")) == "10.20.1.7/32"
    assert str(normalise_prefix("10.20.0.0/255.255.0.0")) == "10.20.0.0/16"
    assert str(normalise_prefix("::ffff:10.0.0.0/104")) == "10.0.0.0/8"
    assert str(normalise_prefix("2001:DB8::1/32")) == "2001:db8::/32"


def test_tied_nodes_are_drawn_uniformly() -> None:
    names = ["a", "b", "c", "d"]
    config = cluster(
        *(node(n, "10.20.0.0/16") for n in names), node("wider", "10.0.0.0/8")
    )
    selector = Selector(config)
    health = all_healthy(config)
    match = selector.candidates(health, VERSION, client("10.20.5.5"), now=NOW)
    assert match is not None
    assert set(match.nodes) == set(names)
    rng = random.Random(20240115)
    draws = 40_000
    seen: Counter[str] = Counter()
    for _ in range(draws):
        d = selector.select(health, VERSION, client("10.20.5.5"), now=NOW, rng=rng)
        assert isinstance(d, NodeChosen)
        seen[d.node_name] += 1
    assert set(seen) == set(names)
    expected = {n: draws / len(names) for n in names}
    assert chi_square(seen, expected) < CHI2_999[len(names) - 1]
    assert d.reason == "prefix 10.20.0.0/16 (longest of 2 matches), random among 4 tied nodes"


def test_candidates_exclude_non_viable_tied_nodes() -> None:
    config = cluster(node("a", "10.20.0.0/16"), node("b", "10.20.0.0/16", accepting=False))
    match = prefix_candidates(config, all_healthy(config), VERSION, client("10.20.0.1"), now=NOW)
    assert match is not None
    assert match.nodes == ("a",)


def test_index_is_rebuilt_only_for_a_new_revision() -> None:
    config = cluster(node("a", "10.0.0.0/8"), revision=7)
    selector = Selector(config)
    index = selector.index
    assert selector.index_builds == 1
    same_revision = config.model_copy()
    assert selector.update_config(same_revision) is False
    assert selector.index is index
    assert selector.index_builds == 1
    newer = cluster(node("a", "10.0.0.0/8"), node("b", "10.1.0.0/16"), revision=8)
    assert selector.update_config(newer) is True
    assert selector.index is not index
    assert selector.index_builds == 2
    assert selector.index.revision == 8
    assert selector.update_config(newer) is False
    assert selector.index_builds == 2


def test_duplicate_prefixes_on_one_node_count_once() -> None:
    index = PrefixIndex.build(cluster(node("a", "10.0.0.0/8", "10.0.0.0/8", "10.1.2.3/8")))
    assert index.prefix_count == 1
    match = index.match("10.9.9.9", 4, frozenset({"a"}))
    assert match is not None
    assert match.nodes == ("a",)
