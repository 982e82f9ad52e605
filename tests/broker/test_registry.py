"""Client registry (DESIGN.md §2, §8): who is online, where each client is connected,
the sticky home node, and the per-node counts get_connected_client_list reports."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.broker.registry import (
    ClientKind,
    ClientRegistry,
    ConnectedClient,
    ConnectionRole,
    NodeInfo,
    RegistryError,
)

MASTER = NodeInfo(guid="m-0001", name="Master", hostname="master1.support.example.com")
EMEA = NodeInfo(guid="t-emea", name="EMEA-1", hostname="emea1.support.example.com")
US = NodeInfo(guid="t-us", name="US-1", hostname="us1.support.example.com")
T0 = 1_700_000_000.0

REP, CUSTOMER, ATTENDEE = (
    ClientKind.REPRESENTATIVE, ClientKind.SUPPORT_CUSTOMER, ClientKind.PRESENTATION_ATTENDEE,
)


def _online(registry: ClientRegistry, client_id: str, kind: ClientKind,
            now: float = T0) -> ConnectedClient:
    return registry.client_online(
        client_id=client_id, kind=kind, hostname=f"{client_id}-pc", platform="windows-x64",
        utc_offset_minutes=-300, software_version="1.0", source_ip="198.51.100.7", now=now,
    )


def test_a_client_comes_online_connected_to_the_master() -> None:
    registry = ClientRegistry(MASTER)
    client = _online(registry, "c1", CUSTOMER)
    assert client.timezone_offset_seconds == -18000
    assert client.connected_since == T0 and client.home_node is None
    (control,) = client.connections
    assert (control.node, control.role, control.since) == (MASTER, ConnectionRole.PRIMARY, T0)
    assert registry.get("c1") == client and "c1" in registry and len(registry) == 1
    with pytest.raises(RegistryError):
        _online(registry, "c1", CUSTOMER)


def test_the_guides_example_rep_in_us_customer_in_emea() -> None:
    """Guide, "Run Test Connections": the customer connects to the master and its home
    node (EMEA); the rep to the master, its home node (US) and the customer's home node;
    with Show My Screen the customer also connects to the rep's home node."""
    registry = ClientRegistry(MASTER)
    _online(registry, "cust", CUSTOMER)
    _online(registry, "rep", REP, now=T0 + 1)
    registry.assign_home_node("cust", EMEA, T0 + 10)
    registry.assign_home_node("rep", US, T0 + 10)
    registry.connection_opened("cust", "k1", EMEA, T0 + 11)  # publishes its screen
    registry.connection_opened("rep", "k2", US, T0 + 11)
    registry.connection_opened("rep", "k3", EMEA, T0 + 12)  # views the customer's screen
    rep = registry.get("rep")
    assert rep is not None
    assert rep.connected_nodes() == (MASTER, US, EMEA)
    assert [c.role for c in rep.connections] == [
        ConnectionRole.PRIMARY, ConnectionRole.TRAFFIC, ConnectionRole.TRAFFIC,
    ]
    registry.connection_opened("cust", "k4", US, T0 + 20)  # Show My Screen
    cust = registry.get("cust")
    assert cust is not None and cust.connected_nodes() == (MASTER, EMEA, US)
    assert registry.counts_by_node() == {
        MASTER.guid: {REP: 1, CUSTOMER: 1},
        EMEA.guid: {REP: 1, CUSTOMER: 1},
        US.guid: {REP: 1, CUSTOMER: 1},
    }
    registry.connection_closed("cust", "k4")  # Show My Screen off
    assert registry.counts_by_node()[US.guid] == {REP: 1}
    assert [c.client_id for c in registry.connected_to(EMEA.guid)] == ["cust", "rep"]
    assert [c.client_id for c in registry.connected_to(EMEA.guid, [REP])] == ["rep"]


def test_home_node_is_sticky_while_online() -> None:
    registry = ClientRegistry(MASTER)
    _online(registry, "c1", CUSTOMER)
    assert registry.assign_home_node("c1", EMEA, T0) == EMEA
    assert registry.assign_home_node("c1", US, T0 + 5) == EMEA  # the first one stays
    client = registry.get("c1")
    assert client is not None and client.home_node_since == T0
    assert registry.home_counts() == {EMEA.guid: 1}
    # only an explicit replacement (the old node went offline) moves it
    assert registry.replace_home_node("c1", US, T0 + 60) == US
    assert registry.home_node("c1") == US
    assert registry.home_counts() == {US.guid: 1}
    assert [c.client_id for c in registry.clients_homed_on(US.guid)] == ["c1"]
    assert registry.clients_homed_on(EMEA.guid) == []
    # going offline releases it; coming back starts afresh
    registry.client_offline("c1")
    assert registry.home_counts() == {}
    _online(registry, "c1", CUSTOMER, now=T0 + 100)
    assert registry.home_node("c1") is None


def test_traffic_node_offline_drops_its_connections_but_not_home_nodes() -> None:
    registry = ClientRegistry(MASTER)
    for client_id, kind in (("c1", CUSTOMER), ("r1", REP), ("c2", CUSTOMER)):
        _online(registry, client_id, kind)
        registry.assign_home_node(client_id, EMEA if client_id != "r1" else US, T0)
    registry.connection_opened("c1", "k1", EMEA, T0)
    registry.connection_opened("r1", "k2", US, T0)
    registry.connection_opened("r1", "k3", EMEA, T0)
    registry.connection_opened("r1", "k4", EMEA, T0)  # two streams on one node
    affected = registry.node_offline(EMEA.guid)
    assert sorted(c.client_id for c in affected) == ["c1", "r1"]
    assert EMEA.guid not in registry.counts_by_node()
    r1 = registry.get("r1")
    assert r1 is not None and r1.connected_nodes() == (MASTER, US)
    assert registry.home_node("c1") == EMEA  # the restart tries the same node first
    assert registry.node_offline(EMEA.guid) == []
    # late reports about connections already dropped are harmless
    assert registry.connection_closed("c1", "k1") is None
    assert registry.connection_closed("gone", "k1") is None


def test_two_connections_to_one_node_count_the_client_once() -> None:
    registry = ClientRegistry(MASTER)
    _online(registry, "r1", REP)
    registry.connection_opened("r1", "k1", EMEA, T0)
    registry.connection_opened("r1", "k2", EMEA, T0)
    assert registry.counts_by_node()[EMEA.guid] == {REP: 1}
    registry.connection_closed("r1", "k1")
    assert registry.counts_by_node()[EMEA.guid] == {REP: 1}
    registry.connection_closed("r1", "k2")
    assert EMEA.guid not in registry.counts_by_node()
    with pytest.raises(RegistryError):
        registry.connection_opened("r1", "control-r1", EMEA, T0)  # the control connection's id
    with pytest.raises(RegistryError):
        registry.node_offline(MASTER.guid)


def test_queries_by_kind_and_id() -> None:
    registry = ClientRegistry(MASTER)
    for i, kind in enumerate([REP, CUSTOMER, CUSTOMER, ATTENDEE, REP]):
        _online(registry, f"c{i}", kind, now=T0 + i)
    assert [c.client_id for c in registry.clients()] == ["c0", "c1", "c2", "c3", "c4"]
    assert [c.client_id for c in registry.clients([REP])] == ["c0", "c4"]
    assert [c.client_id for c in registry.clients([CUSTOMER, ATTENDEE])] == ["c1", "c2", "c3"]
    assert [c.client_id for c in registry.clients(ids=["c4", "c1", "nope"])] == ["c1", "c4"]
    assert [c.client_id for c in registry.clients([REP], ids=["c4", "c1"])] == ["c4"]
    assert (registry.count(), registry.count(REP), registry.count(ATTENDEE)) == (5, 2, 1)
    assert registry.counts_by_node() == {MASTER.guid: {REP: 2, CUSTOMER: 2, ATTENDEE: 1}}
    assert registry.counts_by_node([ATTENDEE]) == {MASTER.guid: {ATTENDEE: 1}}
    registry.client_offline("c0")
    assert registry.count(REP) == 1
    assert registry.get("c0") is None


def test_unknown_clients_are_our_bug() -> None:
    registry = ClientRegistry(MASTER)
    for call in (
        lambda: registry.client_offline("nobody"),
        lambda: registry.assign_home_node("nobody", EMEA, T0),
        lambda: registry.replace_home_node("nobody", EMEA, T0),
        lambda: registry.home_node("nobody"),
        lambda: registry.connection_opened("nobody", "k", EMEA, T0),
    ):
        with pytest.raises(RegistryError):
            call()


_NODES = [EMEA, US, NodeInfo(guid="t-apac", name="APAC-1", hostname="apac1.example.com")]


@settings(max_examples=200)
@given(st.lists(st.tuples(
    st.sampled_from(["online", "offline", "home", "rehome", "open", "close", "node_down"]),
    st.integers(0, 5), st.integers(0, 2), st.sampled_from(list(ClientKind)),
), max_size=60))
def test_indexes_agree_with_the_records(ops: list[tuple[str, int, int, ClientKind]]) -> None:
    """Whatever happens, the counts and indexes equal what the client records say."""
    registry = ClientRegistry(MASTER)
    next_connection = 0
    for op, c, n, kind in ops:
        client_id, node = f"c{c}", _NODES[n]
        online = client_id in registry
        if op == "online" and not online:
            _online(registry, client_id, kind)
        elif op == "offline" and online:
            registry.client_offline(client_id)
        elif op == "home" and online:
            before = registry.home_node(client_id)
            assert registry.assign_home_node(client_id, node, T0) == (before or node)
        elif op == "rehome" and online:
            registry.replace_home_node(client_id, node, T0)
        elif op == "open" and online:
            next_connection += 1
            registry.connection_opened(client_id, f"k{next_connection}", node, T0)
        elif op == "close" and online:
            client = registry.get(client_id)
            assert client is not None
            traffic = [x for x in client.connections if x.role is ConnectionRole.TRAFFIC]
            if traffic:
                registry.connection_closed(client_id, traffic[0].connection_id)
        elif op == "node_down":
            registry.node_offline(node.guid)

        expected_counts: dict[str, dict[ClientKind, int]] = {}
        expected_homes: dict[str, int] = {}
        for client in registry.clients():
            assert client.connections[0].node == MASTER  # the control connection stays
            for guid in {x.node.guid for x in client.connections}:
                per_kind = expected_counts.setdefault(guid, {})
                per_kind[client.kind] = per_kind.get(client.kind, 0) + 1
            if client.home_node is not None:
                expected_homes[client.home_node.guid] = (
                    expected_homes.get(client.home_node.guid, 0) + 1
                )
        assert registry.counts_by_node() == expected_counts
        assert registry.home_counts() == expected_homes
        for guid in [MASTER.guid, *(x.guid for x in _NODES)]:
            assert {x.client_id for x in registry.connected_to(guid)} == {
                x.client_id for x in registry.clients()
                if any(y.node.guid == guid for y in x.connections)
            }
