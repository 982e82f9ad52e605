"""The cluster test's decisions, pure: pre-check, expectation, observation, verdict.

Guide, "Perform a … Cluster Test":

1. *Verify the current settings and status* — :func:`precheck`: traffic nodes that are
   offline or not accepting (the route already steers around them: reported, not a
   failure), and nodes out of sync or on another software version (the test would not
   show what the configuration says: a failure).
2. *Identify the expected node* — :func:`expect`: the plan's ``expected_nodes`` that are
   viable now, or else what the route endpoint answers (sampled several times, since
   ties and the ``random`` method are decided at random; for the DNS and anycast methods
   the master names no node, so any viable traffic node).
3. *Check connections* — :func:`observe`: a participant publishes its own streams on its
   home node (DESIGN.md §2), so the node whose ``get_connected_clients`` lists a
   ``publish`` connection of the probe is the node it used. :func:`judge` compares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from atlas.cluster_test.plan import ProbeSpec
from atlas.web.api_v1.cluster_models import ClusterOut, RouteOut
from atlas.web.api_v1.sessions import ConnectedClientsOut

NODE_OUTCOME = "node"
MASTER_OUTCOMES = frozenset({"fallback_wanted", "master_fallback"})
NO_NODE_OUTCOME = "none"


class Severity(StrEnum):
    NOTE = "note"  # the test still means what it says
    FAIL = "fail"  # the cluster is not in a state the test can vouch for


@dataclass(frozen=True, slots=True)
class NodeProblem:
    node: str
    problem: str
    severity: Severity


def precheck(status: ClusterOut) -> list[NodeProblem]:
    """What the guide's "verify the current settings and status" step would find."""
    out: list[NodeProblem] = []
    if status.sync_needed:
        out.append(NodeProblem(status.this_node.name,
                               "the configuration has changes no traffic node has yet "
                               "(Sync Now)", Severity.FAIL))
    version = status.this_node.version
    for node in status.traffic_nodes:
        if not node.online:
            out.append(NodeProblem(node.name, "offline", Severity.NOTE))
        if not node.accepting:
            left = f" ({node.sessions_left} sessions left)" if node.sessions_left else ""
            out.append(NodeProblem(node.name, f"not accepting new clients{left}",
                                   Severity.NOTE))
        if node.online and node.needs_sync:
            out.append(NodeProblem(node.name,
                                   f"out of sync (holds revision {node.acknowledged_revision}, "
                                   f"the master has {status.revision})", Severity.FAIL))
        if node.online and node.version is not None and node.version != version:
            out.append(NodeProblem(node.name,
                                   f"runs Atlas {node.version}, the master {version}",
                                   Severity.FAIL))
    return out


@dataclass(frozen=True, slots=True)
class Expectation:
    nodes: frozenset[str]
    rule: str  # the rule the route dry run says decides
    reason: str
    source: str  # "plan" or "route"
    note: str | None = None

    def describe(self) -> str:
        return ", ".join(sorted(self.nodes)) if self.nodes else "(no node)"


def _route_nodes(route: RouteOut, master: str) -> set[str]:
    if route.outcome == NODE_OUTCOME and route.node is not None:
        return {route.node}
    if route.outcome in MASTER_OUTCOMES:
        return {master}
    if route.outcome == NO_NODE_OUTCOME:
        return set()
    return set(route.viable)  # a DNS or anycast directive: the network decides


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """What DNS told the probe's network for a DNS directive: the node names it leads
    to, in the order a client tries them (SRV: one set per priority, lowest first; A:
    one set), and why it gave nothing, if it did not."""

    groups: tuple[frozenset[str], ...]
    problem: str | None = None


def srv_groups(records: Iterable[tuple[int, str]], hosts: Mapping[str, str]
               ) -> tuple[frozenset[str], ...]:
    """SRV ``(priority, target)`` records → node names per priority, lowest first (RFC
    2782: a client tries a higher priority only when no lower one answers). ``hosts``:
    each node's public hostname (lower case) → its name; unknown targets are left out."""
    by: dict[int, set[str]] = {}
    for priority, target in records:
        name = hosts.get(target.lower().rstrip("."))
        if name is not None:
            by.setdefault(priority, set()).add(name)
    return tuple(frozenset(by[p]) for p in sorted(by))


def a_record_group(addresses: Iterable[str], node_addresses: Mapping[str, Iterable[str]]
                   ) -> frozenset[str]:
    """The nodes listening on any of ``addresses`` (``node_addresses``: node name → the
    addresses its public hostname resolves to, from the same network)."""
    wanted = set(addresses)
    return frozenset(n for n, a in node_addresses.items() if wanted & set(a))


def expect(probe: ProbeSpec, routes: Sequence[RouteOut], master: str,
           dns: DnsAnswer | None = None) -> Expectation:
    """Where ``probe`` should land, from the plan or else the route dry runs ``routes``
    (at least one; all for the same client) — for a DNS directive, what ``dns`` answered
    the probe's network: the first group with a viable node."""
    first = routes[0]
    from_route = set().union(*(_route_nodes(r, master) for r in routes))
    directive = first.outcome not in {NODE_OUTCOME, NO_NODE_OUTCOME, *MASTER_OUTCOMES}
    route_note = (f"the {first.outcome} directive leaves the choice to the network: "
                  "any viable traffic node" if directive else None)
    if directive and dns is not None:
        viable_now = set(first.viable)
        group = next((g & viable_now for g in dns.groups if g & viable_now), None)
        if group is not None:
            from_route = set(group)
            route_note = None
        elif dns.problem is not None:
            route_note = f"DNS gave the probe's network nothing usable ({dns.problem})"
    if not probe.expected_nodes:
        return Expectation(frozenset(from_route), first.rule, first.reason, "route", route_note)
    viable = set(first.viable)
    planned = [n for n in probe.expected_nodes if n in viable]
    skipped = [f"{n} ({first.not_viable.get(n, 'not a traffic node of this cluster')})"
               for n in probe.expected_nodes if n not in viable]
    if planned:
        note = f"planned but not viable now: {', '.join(skipped)}" if skipped else None
        return Expectation(frozenset(planned), first.rule, first.reason, "plan", note)
    note = f"no planned node is viable ({', '.join(skipped)}): expecting the route's answer"
    return Expectation(frozenset(from_route), first.rule, first.reason, "route", note)


@dataclass(frozen=True, slots=True)
class Observation:
    publishing: frozenset[str]  # nodes where the probe publishes: its home node(s)
    connected: frozenset[str]  # every node that lists a session connection of the probe

    @property
    def actual(self) -> str | None:
        return next(iter(self.publishing)) if len(self.publishing) == 1 else None


def observe(client_id: str, listings: Mapping[str, ConnectedClientsOut]) -> Observation:
    """Which nodes list a session connection of ``client_id``, each by its own listing
    (``listings``: node name → its ``get_connected_clients`` with connections)."""
    publishing: set[str] = set()
    connected: set[str] = set()
    for name, listing in listings.items():
        for client in listing.clients:
            if client.id != client_id:
                continue
            for conn in client.connections or ():
                if conn.node_guid != listing.node_guid or conn.detail == "control":
                    continue  # the master's listing names other nodes' connections too
                connected.add(name)
                if conn.detail.startswith("publish"):
                    publishing.add(name)
    return Observation(frozenset(publishing), frozenset(connected))


class Result(StrEnum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    ERROR = "error"  # the test connection itself did not work


@dataclass(frozen=True, slots=True)
class ProbeResult:
    probe: ProbeSpec
    expected: Expectation | None
    actual: str | None
    client_home: str | None  # the home node the client itself was told
    connected: tuple[str, ...]
    result: Result
    detail: str


def judge(probe: ProbeSpec, expected: Expectation, seen: Observation,
          client_home: str | None) -> ProbeResult:
    """Pass when the one node the probe publishes on is an expected one, the rule is the
    planned one, and the client agrees."""
    problems: list[str] = []
    actual = seen.actual
    if not seen.publishing:
        problems.append("no node lists a publish connection of the probe")
    elif actual is None:
        problems.append(f"publishes on several nodes: {', '.join(sorted(seen.publishing))}")
    elif actual not in expected.nodes:
        problems.append(f"landed on {actual}, expected {expected.describe()}")
    if probe.expected_rule and expected.rule != probe.expected_rule:
        problems.append(f"the route says rule {expected.rule} decides, the plan expects "
                        f"{probe.expected_rule}")
    if client_home is not None and actual is not None and client_home != actual:
        problems.append(f"the client was told {client_home}, the nodes list {actual}")
    notes = [expected.note] if expected.note else []
    return ProbeResult(
        probe=probe, expected=expected, actual=actual, client_home=client_home,
        connected=tuple(sorted(seen.connected)),
        result=Result.FAIL if problems else Result.PASS,
        detail="; ".join(problems + notes),
    )


def failed(probe: ProbeSpec, expected: Expectation | None, why: str) -> ProbeResult:
    """A probe whose test connection did not get as far as a session."""
    return ProbeResult(probe=probe, expected=expected, actual=None, client_home=None,
                       connected=(), result=Result.ERROR, detail=why)


def passed(results: Iterable[ProbeResult], problems: Iterable[NodeProblem]) -> bool:
    """The whole test: every probe passed and the pre-check found nothing failing."""
    return (all(r.result is Result.PASS for r in results)
            and not any(p.severity is Severity.FAIL for p in problems))
