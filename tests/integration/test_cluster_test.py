"""``atlas cluster test`` on the demo cluster, once for each method of choosing traffic
nodes, and while a node drains (guide: "Perform a … Cluster Test").

One ``atlas demo`` (six node processes, its DNS server, anycast) for the module; per
method ``atlas demo set-method`` reconfigures it through the REST API and rewrites the
plan, then ``atlas cluster test`` runs every probe as a real session from the probe's
source address and UTC offset and must exit 0: every probe on a node the plan expects
(for ``random`` and ``anycast`` a viable node of the expected set).

Draining: a representative and a customer in a session homed on a US node; that node
stops accepting; new probes avoid it, the running session goes on (frames keep arriving
through the drained node) and the cluster page counts it as the node's session left.

Slow (a six-node cluster): run with ``-m slow``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.clients.demo_cluster import (
    US_CLIENT,
    Demo,
    client,
    of,
    read_until,
    running_demo,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# (--method, extra set-method options); the demo's ``random`` gives traffic nodes their
# prefixes (the guide's advice), so plain random is asked for without them
METHODS = [("prefixes", ()), ("random", ("--no-prefixes",)), ("timezone", ()),
           ("a_record", ()), ("srv", ()), ("anycast", ())]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with running_demo(tmp_path_factory.mktemp("cluster-test")) as d:
        yield d


def demo_env(demo: Demo) -> dict[str, str]:
    """What ``source DIR/env`` gives an operator's shell."""
    env: dict[str, str] = {}
    for line in (demo.root / "env").read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def atlas(demo: Demo, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    env.update(demo_env(demo))
    return subprocess.run([sys.executable, "-m", "atlas", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


def set_method(demo: Demo, method: str, *options: str) -> None:
    done = atlas(demo, "demo", "set-method", method, *options, "--dir", str(demo.root))
    assert done.returncode == 0, done.stdout + done.stderr


def cluster_test(demo: Demo, plan: Path | None = None) -> dict[str, Any]:
    plan = plan or demo.root / "cluster-test.toml"
    done = atlas(demo, "cluster", "test", str(plan), "--json")
    assert done.stdout.strip(), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == (0 if report["passed"] else 1), done.stderr
    return report


def synced(demo: Demo) -> None:
    """Sync Now, and wait until the master has nothing left to sync."""
    demo.request("POST", "/api/v1/cluster/sync")
    deadline = time.monotonic() + 30
    while json.loads(demo.request("GET", "/api/v1/cluster"))["sync_needed"]:
        assert time.monotonic() < deadline, "the cluster did not sync"
        time.sleep(0.25)


def plan_expectations(demo: Demo) -> dict[str, set[str]]:
    plan = tomllib.loads((demo.root / "cluster-test.toml").read_text())
    return {p["name"]: set(p["expected_nodes"]) for p in plan["probe"]}


@pytest.mark.parametrize(("method", "options"), METHODS, ids=[m for m, _ in METHODS])
def test_every_probe_lands_where_expected(demo: Demo, method: str,
                                          options: tuple[str, ...]) -> None:
    set_method(demo, method, *options)
    expected = plan_expectations(demo)
    report = cluster_test(demo)
    assert report["passed"], json.dumps(report, indent=2)
    assert report["method"] == ("random" if method == "prefixes" else method)
    assert report["precheck"] == []
    probes = {p["name"]: p for p in report["probes"]}
    assert set(probes) == set(expected)
    for name, p in probes.items():
        assert p["result"] == "pass", p
        assert p["actual"] in expected[name], p
        assert p["client_home"] == p["actual"], p
        assert p["rule"] == ("prefix" if method == "prefixes" else method), p
    if method not in ("random", "anycast"):  # every other method keeps a region's clients home
        for name, p in probes.items():
            region = name.split("-")[0]
            assert p["actual"] in demo.region_nodes(region), p


@pytest.mark.parametrize("method", ["srv", "a_record"])
def test_without_planned_nodes_a_dns_method_expects_what_dns_answers(
    demo: Demo, method: str, tmp_path: Path,
) -> None:
    set_method(demo, method)
    plan = tomllib.loads((demo.root / "cluster-test.toml").read_text())
    for p in plan["probe"]:
        del p["expected_nodes"], p["expected_rule"]
    bare = tmp_path / "plan.toml"
    bare.write_text(tomli_w.dumps(plan))
    report = cluster_test(demo, bare)
    assert report["passed"], json.dumps(report, indent=2)
    for p in report["probes"]:
        # the demo's DNS answers each client network with its own region's nodes
        region = p["name"].split("-")[0]
        assert p["expected_from"] == "route" and p["rule"] == method, p
        assert set(p["expected"]) == demo.region_nodes(region), p
        assert p["actual"] in demo.region_nodes(region), p


DRAIN_REP, DRAIN_PASSWORD = "drain-rep", "drain-rep-password-1"


def test_a_draining_node_gets_no_new_probes_and_keeps_its_session(demo: Demo) -> None:
    # the running session has its own representative: the probes use the demo's
    made = subprocess.run(
        [sys.executable, "-m", "atlas", "user", "create", demo.node("master1")["data_dir"],
         "--username", DRAIN_REP, "--display-name", "Drain Test"],
        capture_output=True, text=True, env={**os.environ, "ATLAS_PASSWORD": DRAIN_PASSWORD},
        timeout=60, check=False)
    assert made.returncode == 0, made.stdout + made.stderr
    set_method(demo, "prefixes")
    synced(demo)  # the new account is no pending change
    key = demo.session_key(f"rep_username:{DRAIN_REP}")
    # the session's customer is the US probe network's neighbour: homed on a US node
    cust = client(demo, "customer", "127.10.0.77", "America/New_York", "--key", key,
                  "--duration", "120", "--no-report-frames")
    rep = client(demo, "rep", US_CLIENT, "America/New_York", "--user", DRAIN_REP,
                 "--accept-next", "--duration", "120", env={"ATLAS_PASSWORD": DRAIN_PASSWORD})
    drained = None
    try:
        events = read_until(rep, lambda e: e["event"] == "frame"
                            and e["direction"] == "subscribe")
        drained = customer_node(events)
        assert drained in demo.region_nodes("us")
        done = atlas(demo, "cluster", "set-accepting", drained, "off")
        assert done.returncode == 0, done.stdout + done.stderr

        report = cluster_test(demo)
        assert report["passed"], json.dumps(report, indent=2)
        assert any(p["node"] == drained and p["problem"].startswith("not accepting")
                   and p["severity"] == "note" for p in report["precheck"]), report["precheck"]
        for p in report["probes"]:
            assert p["actual"] != drained, p

        # the running session goes on through the drained node
        more = read_until(rep, lambda e: e["event"] == "frame"
                          and e["direction"] == "subscribe" and e["node"] == drained)
        assert not of(more, "ended"), more
        status = json.loads(demo.request("GET", "/api/v1/cluster"))
        node = next(n for n in status["traffic_nodes"] if n["name"] == drained)
        assert node["accepting"] is False
        deadline = time.monotonic() + 15
        while node["sessions_left"] != 1 and time.monotonic() < deadline:
            time.sleep(0.5)
            status = json.loads(demo.request("GET", "/api/v1/cluster"))
            node = next(n for n in status["traffic_nodes"] if n["name"] == drained)
        assert node["sessions_left"] == 1, node
    finally:
        for proc in (rep, cust):
            proc.terminate()
        for proc in (rep, cust):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if drained is not None:
            atlas(demo, "cluster", "set-accepting", drained, "on")


def customer_node(events: list[dict[str, Any]]) -> str:
    """The node the representative watches the customer's screen on: the customer's
    home node."""
    frames = [e for e in events if e["event"] == "frame" and e["direction"] == "subscribe"]
    return str(frames[-1]["node"])

