"""The cluster test's pure decisions: pre-check, expectation, observation, verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from atlas.cluster_test.plan import ProbeSpec, parse_plan
from atlas.cluster_test.verdict import (
    DnsAnswer,
    Expectation,
    Observation,
    Result,
    Severity,
    a_record_group,
    expect,
    failed,
    judge,
    observe,
    passed,
    precheck,
    srv_groups,
)
from atlas.web.api_v1.cluster_models import ClusterOut, RouteOut
from atlas.web.api_v1.sessions import ConnectedClientsOut

GUIDS = {"master1": "a" * 32, "us-traffic1": "b" * 32, "us-traffic2": "c" * 32}


def probe(**extra: str | list[str]) -> ProbeSpec:
    lines = ['name = "p"', 'source_address = "127.10.0.5"']
    for key, value in extra.items():
        text = "[" + ", ".join(f'"{v}"' for v in value) + "]" if isinstance(value, list) \
            else f'"{value}"'
        lines.append(f"{key} = {text}")
    return parse_plan("[[probe]]\n" + "\n".join(lines) + "\n", Path("p.toml")).probes[0]


def route(outcome: str = "node", node: str | None = "us-traffic1", rule: str = "prefix",
          viable: tuple[str, ...] = ("us-traffic1", "us-traffic2"),
          not_viable: dict[str, str] | None = None) -> RouteOut:
    return RouteOut.model_validate({
        "client": {"ip": "127.10.0.5", "utc_offset_minutes": None, "kind": "support_customer"},
        "outcome": outcome, "rule": rule, "reason": f"{rule} reason", "node": node,
        "decision": {}, "viable": list(viable), "not_viable": not_viable or {},
        "prefix_match": None,
    })


def node_status(name: str, **over: Any) -> dict[str, Any]:
    base = {"name": name, "guid": GUIDS[name], "public": f"{name}.example.test:8443",
            "internal": f"{name}.example.test:8443", "region": "us", "accepting": True,
            "capacity": 100, "state": "viable", "online": True, "last_seen": None,
            "version": "1.0", "acknowledged_revision": 5, "needs_sync": False, "load": None,
            "sessions_left": None, "sync": None, "health": None}
    return {**base, **over}


def cluster(*nodes: dict[str, Any], sync_needed: bool = False) -> ClusterOut:
    return ClusterOut.model_validate({
        "role": "primary", "description": "", "site_hostname": "support.example.test",
        "this_node": {"guid": GUIDS["master1"], "name": "master1", "version": "1.0",
                      "public": "master1.example.test:8443"},
        "revision": 5, "sync_needed": sync_needed, "master": None, "member_name": None,
        "document": None, "traffic_nodes": list(nodes),
        "sync": {"running": False, "revision": 5, "started_at": None, "finished_at": None,
                 "done": 0, "total": 0, "nodes": []},
    })


# --- pre-check ------------------------------------------------------------------------


def test_precheck_of_a_healthy_cluster_is_empty() -> None:
    assert precheck(cluster(node_status("us-traffic1"), node_status("us-traffic2"))) == []


def test_precheck_names_each_problem_and_its_weight() -> None:
    found = precheck(cluster(
        node_status("us-traffic1", online=False, accepting=False, sessions_left=3),
        node_status("us-traffic2", needs_sync=True, acknowledged_revision=4, version="0.9"),
        sync_needed=True,
    ))
    by = {(p.node, p.problem): p.severity for p in found}
    assert by == {
        ("master1", "the configuration has changes no traffic node has yet (Sync Now)"):
            Severity.FAIL,
        ("us-traffic1", "offline"): Severity.NOTE,
        ("us-traffic1", "not accepting new clients (3 sessions left)"): Severity.NOTE,
        ("us-traffic2", "out of sync (holds revision 4, the master has 5)"): Severity.FAIL,
        ("us-traffic2", "runs Atlas 0.9, the master 1.0"): Severity.FAIL,
    }


# --- expectation ----------------------------------------------------------------------


def test_without_planned_nodes_the_route_samples_make_the_set() -> None:
    got = expect(probe(), [route(node="us-traffic1"), route(node="us-traffic2")], "master1")
    assert got.nodes == {"us-traffic1", "us-traffic2"} and got.source == "route"
    assert got.rule == "prefix" and got.reason == "prefix reason" and got.note is None


def test_master_fallback_and_no_node() -> None:
    fallback = route(outcome="fallback_wanted", node=None, rule="fallback", viable=())
    assert expect(probe(), [fallback], "master1").nodes == {"master1"}
    none = route(outcome="none", node=None, rule="none", viable=())
    assert expect(probe(), [none], "master1").nodes == frozenset()


def test_a_directive_leaves_any_viable_node() -> None:
    got = expect(probe(), [route(outcome="srv", node=None, rule="srv")], "master1")
    assert got.nodes == {"us-traffic1", "us-traffic2"}
    assert got.note is not None and "srv directive" in got.note


HOSTS = {"us-traffic1.example.test": "us-traffic1", "us-traffic2.example.test": "us-traffic2"}


def test_srv_records_group_by_priority_lowest_first() -> None:
    records = [(20, "us-traffic2.example.test."), (10, "US-TRAFFIC1.example.test"),
               (10, "elsewhere.example.org"), (30, "nowhere.example.test")]
    assert srv_groups(records, HOSTS) == (frozenset({"us-traffic1"}),
                                          frozenset({"us-traffic2"}))


def test_a_records_name_the_nodes_listening_there() -> None:
    nodes = {"us-traffic1": ["127.0.2.1"], "us-traffic2": ["127.0.2.2", "::2"]}
    assert a_record_group(["127.0.2.2"], nodes) == {"us-traffic2"}
    assert a_record_group(["10.9.9.9"], nodes) == frozenset()


def test_a_dns_directive_expects_what_dns_answered_the_probes_network() -> None:
    srv = route(outcome="srv", node=None, rule="srv")
    answer = DnsAnswer((frozenset({"us-traffic1"}), frozenset({"us-traffic2"})))
    got = expect(probe(), [srv], "master1", answer)
    assert got.nodes == {"us-traffic1"} and got.note is None
    # the lowest priority is not viable: the client goes on to the next
    drained = route(outcome="srv", node=None, rule="srv", viable=("us-traffic2",))
    assert expect(probe(), [drained], "master1", answer).nodes == {"us-traffic2"}
    # nothing usable: any viable node, and why
    failed_dns = DnsAnswer((), "cannot resolve SRV '_atlas._tcp.x': NXDOMAIN")
    got = expect(probe(), [srv], "master1", failed_dns)
    assert got.nodes == {"us-traffic1", "us-traffic2"}
    assert got.note is not None and "NXDOMAIN" in got.note
    # the plan still wins over DNS
    planned = expect(probe(expected_nodes=["us-traffic2"]), [srv], "master1", answer)
    assert planned.nodes == {"us-traffic2"} and planned.source == "plan"


def test_planned_nodes_that_are_not_viable_are_dropped_with_the_reason() -> None:
    r = route(node="us-traffic2", viable=("us-traffic2",),
              not_viable={"us-traffic1": "not accepting"})
    got = expect(probe(expected_nodes=["us-traffic1", "us-traffic2"]), [r], "master1")
    assert got.nodes == {"us-traffic2"} and got.source == "plan"
    assert got.note == "planned but not viable now: us-traffic1 (not accepting)"


def test_no_planned_node_viable_falls_back_to_the_route() -> None:
    r = route(outcome="fallback_wanted", node=None, rule="fallback", viable=(),
              not_viable={"us-traffic1": "offline"})
    got = expect(probe(expected_nodes=["us-traffic1", "nowhere"]), [r], "master1")
    assert got.nodes == {"master1"} and got.source == "route"
    assert got.note is not None
    assert "us-traffic1 (offline)" in got.note
    assert "nowhere (not a traffic node of this cluster)" in got.note


# --- observation ----------------------------------------------------------------------


def listing(node: str, *clients: tuple[str, list[tuple[str, str]]],
            scope: str = "node") -> ConnectedClientsOut:
    """``clients``: (client id, [(node of the connection, detail)])."""
    return ConnectedClientsOut.model_validate({
        "node_guid": GUIDS[node], "scope": scope, "summary": [],
        "clients": [{
            "id": cid, "type": "support_customer", "hostname": "h", "platform": "p",
            "timezone_offset": 0, "connected_since": "2026-11-25T00:00:00Z",
            "home_node": None, "name": "",
            "connections": [{"node_guid": GUIDS[where], "node_name": where,
                             "node_hostname": f"{where}.example.test",
                             "role": "primary" if where == "master1" else "traffic",
                             "since": "2026-11-25T00:00:00Z", "detail": detail}
                            for where, detail in conns],
        } for cid, conns in clients],
    })


PUB = "publish screen:customer (session s1)"
SUB = "subscribe screen:customer (session s1)"


def test_the_node_where_the_probe_publishes_is_the_one_it_used() -> None:
    seen = observe("c1", {
        "master1": listing("master1", ("c1", [("master1", "control"), ("us-traffic2", PUB)]),
                           scope="cluster"),
        "us-traffic1": listing("us-traffic1", ("c2", [("us-traffic1", PUB)]),
                               ("c1", [("us-traffic1", SUB)])),
        "us-traffic2": listing("us-traffic2", ("c1", [("us-traffic2", PUB)])),
    })
    # the master's listing names us-traffic2's connection: only a node's own count
    assert seen.publishing == {"us-traffic2"} and seen.actual == "us-traffic2"
    assert seen.connected == {"us-traffic1", "us-traffic2"}


def test_master_fallback_is_seen_in_the_masters_own_connections() -> None:
    seen = observe("c1", {"master1": listing(
        "master1", ("c1", [("master1", "control"), ("master1", PUB)]), scope="cluster")})
    assert seen.actual == "master1"


def test_nothing_or_two_publishing_nodes_give_no_actual() -> None:
    assert observe("c1", {}).actual is None
    two = Observation(frozenset({"a", "b"}), frozenset({"a", "b"}))
    assert two.actual is None


# --- verdict --------------------------------------------------------------------------


EXPECT = Expectation(frozenset({"us-traffic1", "us-traffic2"}), "prefix", "why", "plan")


def seen_on(*nodes: str) -> Observation:
    return Observation(frozenset(nodes), frozenset(nodes))


def test_pass() -> None:
    r = judge(probe(expected_rule="prefix"), EXPECT, seen_on("us-traffic2"), "us-traffic2")
    assert r.result is Result.PASS and r.actual == "us-traffic2" and r.detail == ""


@pytest.mark.parametrize(("spec", "seen", "home", "why"), [
    ({}, seen_on("asia-traffic1"), None, "landed on asia-traffic1, expected us-traffic1, "
                                         "us-traffic2"),
    ({}, seen_on(), None, "no node lists a publish connection of the probe"),
    ({}, seen_on("us-traffic1", "us-traffic2"), None, "publishes on several nodes"),
    ({"expected_rule": "timezone"}, seen_on("us-traffic1"), None,
     "the route says rule prefix decides, the plan expects timezone"),
    ({}, seen_on("us-traffic1"), "us-traffic2",
     "the client was told us-traffic2, the nodes list us-traffic1"),
])
def test_fail_says_why(spec: dict[str, str], seen: Observation, home: str | None,
                       why: str) -> None:
    r = judge(probe(**spec), EXPECT, seen, home)
    assert r.result is Result.FAIL and why in r.detail


def test_whole_test_fails_on_a_failing_probe_or_precheck() -> None:
    good = judge(probe(), EXPECT, seen_on("us-traffic1"), None)
    bad = failed(probe(), None, "the test customer could not connect")
    assert bad.result is Result.ERROR
    note = precheck(cluster(node_status("us-traffic1", accepting=False)))
    fail = precheck(cluster(node_status("us-traffic1", version="0.9")))
    assert passed([good], note)
    assert not passed([good, bad], [])
    assert not passed([good], fail)
