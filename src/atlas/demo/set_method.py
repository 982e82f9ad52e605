"""``atlas demo set-method``: another Method for Choosing Traffic Nodes on a running demo.

It changes the cluster exactly as ``atlas demo`` configured it, through the REST API with
the demo's API account (:func:`atlas.demo.configure.configure_cluster`): the traffic
nodes' Network Address Prefixes as the method wants them, ``PUT
/api/v1/cluster/selection``, Sync Now, and a wait until every traffic node is online and
holds the new revision. Then it rewrites the cluster test plan for the new method and
records the method in ``demo.json``, so ``atlas cluster test DIR/cluster-test.toml``
checks what now runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from atlas.demo.cluster import DemoPaths, write_test_plan
from atlas.demo.configure import configure_cluster
from atlas.demo.errors import DemoError, NotRunning, UsageProblem
from atlas.demo.layout import DemoLayout, MethodChoice, default_layout, method_choice
from atlas.demo.processes import DemoLock
from atlas.demo.state import DemoInfo, StateError, load_info, update_info
from atlas.net.api_client import AtlasClient, Connection
from atlas.net.resolver import DnsServer, Resolver

Say = Callable[[str], None]


@dataclass(frozen=True)
class MethodChanged:
    """What ``set-method`` did."""

    choice: MethodChoice
    before: str  # the method as the demo recorded it
    changes: tuple[str, ...]
    revision: int
    plan_file: Path


def running_info(paths: DemoPaths) -> DemoInfo:
    """demo.json of the demo running in ``paths`` (:class:`NotRunning` when none runs)."""
    where = paths.root
    if not paths.demo_file.exists():
        raise NotRunning(f"no demo in {where} ({paths.demo_file.name} is missing); start one "
                         f"with `atlas demo --dir {where}`")
    try:
        info = load_info(paths.demo_file)
    except StateError as exc:
        raise DemoError(str(exc)) from None
    if not DemoLock(paths.lock_file).held_elsewhere():
        raise NotRunning(f"no demo is running in {where}; start it with "
                         f"`atlas demo --dir {where}`")
    if info.state != "running":
        raise NotRunning(f"the demo in {where} is {info.state}, not running; try again once "
                         "it runs")
    return info


def demo_layout(info: DemoInfo) -> DemoLayout:
    """The layout of a running demo: its site, port and the DNS server it really uses."""
    return default_layout(info.site, info.port, dns_port=info.dns.port, dns_ip=info.dns.host)


def set_method(root: Path, method: str, prefixes: bool | None, say: Say) -> MethodChanged:
    """Switch the demo running in ``root`` to ``method``; see the module docstring."""
    try:
        choice = method_choice(method, prefixes)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    paths = DemoPaths.at(root)
    info = running_info(paths)
    layout = demo_layout(info)
    before = method_choice(info.method, info.prefixes).describe() if info.method else "?"
    say(f"The demo in {paths.root}: {before} → {choice.describe()}")
    changes, revision = asyncio.run(_configure(info, layout, choice, say))
    say(f"Every traffic node is online and holds revision {revision}")
    write_test_plan(paths, layout, choice, info)

    def record(current: DemoInfo) -> None:
        current.method, current.prefixes = choice.name, choice.prefixes
        current.selection = layout.selection_body(choice)
        current.revision = revision

    update_info(paths.demo_file, record)
    for region in layout.regions:
        nodes, rule = layout.expected_nodes(choice, region)
        say(f"  {region.key} clients now expect {', '.join(nodes)} (by {rule})")
    say(f"Cluster test plan rewritten: {paths.plan_file}")
    return MethodChanged(choice, before, changes, revision, paths.plan_file)


async def _configure(info: DemoInfo, layout: DemoLayout, choice: MethodChoice,
                     say: Say) -> tuple[tuple[str, ...], int]:
    acc = info.api_account
    conn = Connection(url=info.url, client_id=acc.client_id, client_secret=acc.client_secret,
                      ca_file=Path(info.ca_file))
    resolver = Resolver(DnsServer(info.dns.host, info.dns.port), timeout=2.0)
    async with AtlasClient(conn, resolver=resolver) as api:
        plan, status = await configure_cluster(api, layout, choice, say, reset=False)
    return plan.changes, status.revision


__all__ = ["MethodChanged", "demo_layout", "running_info", "set_method"]
