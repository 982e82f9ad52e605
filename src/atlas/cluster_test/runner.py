"""``atlas cluster test PLAN``: the whole test against a running cluster.

Over the primary master's REST API (the API account of ``atlas cluster``):

1. ``GET /api/v1/cluster`` — the pre-check (:func:`~atlas.cluster_test.verdict.precheck`)
   and the nodes to ask later.
2. Per probe, in plan order: ``GET /api/v1/cluster/route`` (a few dry runs: ties and the
   ``random`` method are decided at random) and, for the ``srv`` and ``a_record``
   directives, the DNS answer from the probe's source address → the expectation; ``POST
   /api/v1/session-keys`` for the test representative's queue; the test connection
   (:mod:`~atlas.cluster_test.probe`); then ``GET /api/v1/connected-clients`` with
   connections on **every** node — each traffic node answers for its own connections,
   the master for its own — until one lists the probe publishing, or a deadline.
3. The verdicts, and whether the test passed.

API accounts reach traffic nodes through data sync, so the same account reads every
node's ``connected-clients`` (each at its public address, through the same resolver).
Probes run one at a time: each is the only session of the test representative, and its
connections are gone (the pair closed) before the next starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass

from atlas.clients.dns_directives import resolve_srv
from atlas.clients.network import SiteAddress
from atlas.cluster_test.plan import ProbeSpec, TestPlan
from atlas.cluster_test.probe import ProbeFailed, ProbeSite, TestConnection, open_connection
from atlas.cluster_test.verdict import (
    DnsAnswer,
    Expectation,
    NodeProblem,
    Observation,
    ProbeResult,
    a_record_group,
    expect,
    failed,
    judge,
    observe,
    passed,
    precheck,
    srv_groups,
)
from atlas.net.api_client import AtlasClient, ClientError, Connection, UsageError
from atlas.net.resolver import DnsServer, ResolutionError, Resolver
from atlas.node.roles import Role
from atlas.web.api_v1.cluster_models import ClusterOut, RouteOut
from atlas.web.api_v1.sessions import ConnectedClientsOut, SessionKeyOut

ROUTE_SAMPLES = 12
LISTING_DEADLINE = 10.0
LISTING_POLL = 0.25
KEY_TTL_SECONDS = 300
SRV_OUTCOME, A_RECORD_OUTCOME = "srv", "a_record"
NODE_TIMEOUT = 10.0


@dataclass(frozen=True)
class TestOptions:
    plan: TestPlan
    representative: str
    password: str
    dns: DnsServer | None = None
    timeout: float = 30.0
    route_samples: int = ROUTE_SAMPLES


@dataclass(frozen=True)
class TestReport:
    cluster: ClusterOut
    problems: list[NodeProblem]
    results: list[ProbeResult]
    aborted: int | None = None  # exit code when a failure stopped the test early

    @property
    def passed(self) -> bool:
        return passed(self.results, self.problems)


Progress = Callable[[ProbeSpec, ProbeResult | None], None]


class ClusterTest:
    """One run of a plan; ``api`` talks to the primary master."""

    def __init__(self, api: AtlasClient, options: TestOptions) -> None:
        self.api = api
        self.options = options
        self._nodes: dict[str, AtlasClient] = {}
        self._stack = contextlib.AsyncExitStack()

    async def run(self, progress: Progress | None = None) -> TestReport:
        async with self._stack:
            status, _ = await self.api.call(ClusterOut, "GET", "/api/v1/cluster")
            if status.role is not Role.PRIMARY:
                raise UsageError(
                    f"{self.api.conn.url} is not a primary master node (it is "
                    f"{status.role.value}): run the cluster test against the site hostname")
            problems = precheck(status)
            await self._open_nodes(status)
            results: list[ProbeResult] = []
            aborted: int | None = None
            for probe in self.options.plan.probes:
                if aborted is not None:
                    results.append(failed(probe, None, "not run: the test stopped after "
                                                       "an earlier probe's failure"))
                    continue
                if progress is not None:
                    progress(probe, None)
                result, aborted = await self.probe(status, probe)
                results.append(result)
                if progress is not None:
                    progress(probe, result)
            return TestReport(status, problems, results, aborted)

    async def _open_nodes(self, status: ClusterOut) -> None:
        """An API client per node: the master is ``self.api``; traffic nodes by their
        public address, with the same account and CA."""
        self._nodes[status.this_node.name] = self.api
        resolver = Resolver(self.options.dns)
        for node in status.traffic_nodes:
            conn = dataclasses.replace(self.api.conn, url=f"https://{node.public}",
                                       timeout=NODE_TIMEOUT)
            client = AtlasClient(conn, resolver=resolver)
            self._nodes[node.name] = await self._stack.enter_async_context(client)

    async def probe(self, status: ClusterOut, probe: ProbeSpec
                    ) -> tuple[ProbeResult, int | None]:
        """The verdict on ``probe``, and an exit code if the whole test must stop."""
        master = status.this_node.name
        expected: Expectation | None = None
        try:
            routes = [await self._route(probe) for _ in range(self.options.route_samples)]
            dns = await self._dns_answer(routes[0], probe, status)
            expected = expect(probe, routes, master, dns)
            conn = await open_connection(self._site(), probe, self.options.timeout)
        except ProbeFailed as exc:
            return failed(probe, expected, str(exc)), exc.fatal
        except ClientError as exc:
            return failed(probe, expected, exc.message), exc.exit_code
        try:
            client_id = conn.client_id()
            if client_id is None:  # connected events come before a session can stream
                return failed(probe, expected, "the probe client never got a client id"), None
            seen, unreachable = await self._observe(client_id, conn)
        finally:
            await conn.close()
        result = judge(probe, expected, seen, conn.client_home())
        if unreachable:
            extra = f"could not ask {', '.join(unreachable)}"
            result = dataclasses.replace(
                result, detail=f"{result.detail}; {extra}" if result.detail else extra)
        return result, None

    async def _dns_answer(self, route: RouteOut, probe: ProbeSpec, status: ClusterOut
                          ) -> DnsAnswer | None:
        """For a DNS directive, what the DNS server answers the probe's network (queries
        sent from its source address, as its client will send them)."""
        if route.outcome not in (SRV_OUTCOME, A_RECORD_OUTCOME):
            return None
        resolver = Resolver(self.options.dns, source_address=probe.source_address)
        hosts = {node.public.rpartition(":")[0].lower(): node.name
                 for node in status.traffic_nodes}
        try:
            if route.outcome == SRV_OUTCOME:
                records = await resolve_srv(str(route.decision.get("srv_name")), resolver,
                                            random.Random())
                return DnsAnswer(srv_groups(((r.priority, r.target) for r in records), hosts))
            addresses = await resolver.resolve(str(route.decision.get("hostname")))
            answers = await asyncio.gather(*(resolver.resolve(h) for h in hosts),
                                           return_exceptions=True)
            nodes = {hosts[h]: a for h, a in zip(hosts, answers, strict=True)
                     if isinstance(a, list)}
            return DnsAnswer((a_record_group(addresses, nodes),))
        except ResolutionError as exc:
            return DnsAnswer((), str(exc))

    async def _route(self, probe: ProbeSpec) -> RouteOut:
        params = {"ip": probe.source_address, "kind": probe.kind.value}
        offset = probe.offset_minutes()
        if offset is not None:
            params["tz"] = str(offset)
        route, _ = await self.api.call(RouteOut, "GET", "/api/v1/cluster/route", params=params)
        return route

    def _site(self) -> ProbeSite:
        options = self.options

        async def key() -> str:
            out, _ = await self.api.call(
                SessionKeyOut, "POST", "/api/v1/session-keys",
                json_body={"type": "support", "queue_id": f"rep_username:{options.representative}",
                           "ttl": KEY_TTL_SECONDS})
            return out.short_key

        return ProbeSite(site=SiteAddress.from_url(self.api.conn.url),
                         ca_file=self.api.conn.ca_file, dns=options.dns,
                         representative=options.representative, password=options.password,
                         queue_key=key)

    async def _observe(self, client_id: str, conn: TestConnection
                       ) -> tuple[Observation, list[str]]:
        """Ask every node until one lists the probe publishing (traffic nodes know their
        connections at once; a deadline covers a slow node)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LISTING_DEADLINE
        while True:
            listings: dict[str, ConnectedClientsOut] = {}
            unreachable: list[str] = []
            answers = await asyncio.gather(
                *(self._listing(api) for api in self._nodes.values()), return_exceptions=True)
            for name, answer in zip(self._nodes, answers, strict=True):
                if isinstance(answer, ConnectedClientsOut):
                    listings[name] = answer
                else:
                    unreachable.append(name)
            seen = observe(client_id, listings)
            if seen.publishing or loop.time() > deadline or conn.problem() is not None:
                return seen, unreachable
            await asyncio.sleep(LISTING_POLL)

    @staticmethod
    async def _listing(api: AtlasClient) -> ConnectedClientsOut:
        out, _ = await api.call(ConnectedClientsOut, "GET", "/api/v1/connected-clients",
                                params={"include_connections": "true"})
        return out


def result_dict(result: ProbeResult) -> dict[str, object]:
    """One probe's verdict for ``--json``."""
    p, e = result.probe, result.expected
    return {
        "name": p.name, "kind": p.kind.value, "source_address": p.source_address,
        "tz_offset": p.tz_offset, "region": p.region,
        "expected": sorted(e.nodes) if e else None, "expected_from": e.source if e else None,
        "rule": e.rule if e else None, "reason": e.reason if e else None,
        "actual": result.actual, "client_home": result.client_home,
        "connected": list(result.connected), "result": result.result.value,
        "detail": result.detail,
    }


def report_dict(report: TestReport) -> dict[str, object]:
    return {
        "site": report.cluster.site_hostname,
        "method": report.cluster.document.selection.method.value
        if report.cluster.document else None,
        "revision": report.cluster.revision,
        "precheck": [{"node": p.node, "problem": p.problem, "severity": p.severity.value}
                     for p in report.problems],
        "probes": [result_dict(r) for r in report.results],
        "passed": report.passed,
        "aborted": report.aborted,
    }


__all__ = ["ClusterTest", "Connection", "TestOptions", "TestReport", "report_dict"]
