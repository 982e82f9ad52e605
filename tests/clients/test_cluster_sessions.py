"""Customer and representative in a real cluster: ``atlas demo`` (DESIGN.md §9).

The guide's example ("Run Test Connections"): a representative in the US helps a
customer in Asia. Each client is routed by its source network (the demo gives every
traffic node its region's client networks as prefixes), so the customer's home traffic
node is in Asia and the representative's in the US; the representative watches the
customer's screen on the customer's home node, and with Show My Screen the customer
watches the representative's screen on the representative's home node. While the session
runs, ``get_connected_clients`` on every node (guide, "Check Connections") must show
exactly that: everyone on the master, on a traffic node only its session connections.

Then the customer's home node is killed mid-session (guide, "Check Connections"): the
session ends with a restart, the console restarts it, the master waits out its restart
window for the same node and then gives the customer the other Asian node. Killed and
started again within that window, the node is the restarted session's home again.

Slow (a six-node cluster, a restart window): run with ``-m slow``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.clients.demo_cluster import (
    ASIA_CLIENT,
    US_CLIENT,
    Demo,
    client,
    finish,
    of,
    read_until,
    rep_env,
    restarted_node,
    running_demo,
    wait_healthy,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with running_demo(tmp_path_factory.mktemp("cluster")) as d:
        yield d


TRAFFIC_NODES = ("us-traffic1", "us-traffic2", "asia-traffic1", "asia-traffic2")
REPORT_DEADLINE = 15.0  # traffic nodes report stream connections to the master in batches

# node → {client element: [(client id, nodes its client_connections name)]}
Listing = dict[str, dict[str, list[tuple[str, frozenset[str]]]]]


def connected_clients(demo: Demo, node: str) -> dict[str, list[tuple[str, frozenset[str]]]]:
    """``get_connected_clients?include_connections=1`` on ``node``: per client element,
    the client id and the nodes it is connected to (each connection's GUID, hostname and
    role checked against the demo's nodes)."""
    root = demo.command(node, "get_connected_clients", include_connections="1")
    assert root.tag == "connected_clients"
    out: dict[str, list[tuple[str, frozenset[str]]]] = {}
    for el in root:
        names = set()
        for conn in el.findall("client_connections/client_connections/client_connection"):
            where = demo.node_by_guid(conn.findtext("appliance_id", ""))
            assert conn.findtext("hostname") == where["public"].rpartition(":")[0]
            assert conn.findtext("role") == ("primary" if where["name"] == "master1"
                                             else "traffic")
            names.add(where["name"])
        out.setdefault(el.tag, []).append((el.get("id", ""), frozenset(names)))
    return out


def wait_for_listing(demo: Demo, expected: Listing, *running: subprocess.Popen[str]
                     ) -> None:
    """Poll every node until each lists exactly ``expected`` (while ``running`` run)."""
    deadline = time.monotonic() + REPORT_DEADLINE
    seen: Listing = {}
    while True:
        assert all(p.poll() is None for p in running), "a client ended before the check"
        seen = {node: connected_clients(demo, node) for node in expected}
        if seen == expected:
            return
        if time.monotonic() > deadline:
            assert seen == expected  # pytest shows the difference
        time.sleep(0.25)


def test_us_representative_helps_asian_customer(demo: Demo) -> None:
    key = demo.session_key()
    user = demo.state["representative"]["username"]
    cust = client(demo, "customer", ASIA_CLIENT, "Asia/Tokyo", "--key", key,
                  "--duration", "60", "--no-report-frames")
    rep = client(demo, "rep", US_CLIENT, "America/New_York", "--user", user, "--accept-next",
                 "--frames", "150", "--show-my-screen", env=rep_env(demo))
    try:
        # while the session runs, with Show My Screen on: ask every node who is connected
        early = read_until(rep, lambda e: e["event"] == "show_my_screen" and e["on"])
        (r_started,) = of(early, "started")
        rep_home = r_started["home_node"]["name"]
        customer_home = r_started["streams"][0]["node"]
        assert customer_home in demo.region_nodes("asia")  # routed by its source network
        assert rep_home in demo.region_nodes("us")
        master_view = connected_clients(demo, "master1")
        (cust_id,) = [i for i, _ in master_view.get("connected_support_customer", [])]
        (rep_id,) = [i for i, _ in master_view.get("connected_representative", [])]
        # the guide's topology: everyone online on the master; a traffic node lists only
        # the clients with a session connection to it
        expected: Listing = {
            "master1": {
                "connected_support_customer": [
                    (cust_id, frozenset({"master1", customer_home, rep_home}))],
                "connected_representative": [
                    (rep_id, frozenset({"master1", rep_home, customer_home}))],
            },
            **{node: {} for node in TRAFFIC_NODES},
        }
        for node in (customer_home, rep_home):
            expected[node] = {"connected_support_customer": [(cust_id, frozenset({node}))],
                              "connected_representative": [(rep_id, frozenset({node}))]}
        wait_for_listing(demo, expected, rep, cust)
    except BaseException:
        rep.kill()
        cust.kill()
        raise
    rep_code, rest, rep_err = finish(rep, 90)
    rep_events = early + rest
    cust_code, cust_events, cust_err = finish(cust, 30)
    assert rep_code == 0, rep_err
    assert cust_code == 0, cust_err

    (c_started,) = of(cust_events, "started")
    assert c_started["home_node"]["name"] == customer_home
    # the console watches the customer's screen on the customer's home node, and holds
    # the publisher of its own on its own home node from the start …
    assert r_started["streams"] == [
        {"stream": "screen:customer", "direction": "subscribe", "node": customer_home,
         "node_guid": c_started["home_node"]["guid"]},
        {"stream": "screen:representative", "direction": "publish", "node": rep_home,
         "node_guid": r_started["home_node"]["guid"]}]
    # … where it publishes Show My Screen, and the customer watches it
    grants = {(e["direction"], e["stream"], e["node"]) for e in of(rep_events, "stream")
              if e["state"] == "connected"}
    assert ("publish", "screen:representative", rep_home) in grants
    watched = {(e["direction"], e["stream"], e["node"]) for e in of(cust_events, "stream")
               if e["state"] == "connected"}
    assert watched == {("publish", "screen:customer", customer_home),
                       ("subscribe", "screen:representative", rep_home)}
    frames = [e for e in of(rep_events, "frame") if e["direction"] == "subscribe"]
    assert len(frames) == 150
    counters = [f["counter"] for f in frames]
    assert counters == list(range(counters[0], counters[0] + 150))
    assert all(f["node"] == customer_home for f in frames)


def test_a_traffic_node_dies_mid_session_and_the_session_restarts(demo: Demo) -> None:
    key = demo.session_key()
    user = demo.state["representative"]["username"]
    cust = client(demo, "customer", ASIA_CLIENT, "Asia/Tokyo", "--key", key,
                  "--duration", "200", "--no-report-frames")
    rep = client(demo, "rep", US_CLIENT, "America/New_York", "--user", user, "--accept-next",
                 "--duration", "200", "--frames", "100", env=rep_env(demo))
    # wait until the customer publishes, then kill its home node like a pulled cable
    home, published = None, 0
    assert cust.stdout is not None
    lines: list[str] = []
    while published < 5:  # a few frames on the first home node (stats every second)
        line = cust.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
        event = json.loads(line)
        if event["event"] == "stream" and event["state"] == "connected":
            home = event["node"]
        if event["event"] == "stats" and event["direction"] == "publish":
            published = event["frames"]
    assert home is not None
    try:
        # no Show My Screen here, yet the console is on its own home node already (a
        # standby publisher of its screen; guide: the console is connected to the master,
        # its own home node and the customer's home node) — and the customer is not
        rep_early = read_until(rep, lambda e: e["event"] == "stream"
                               and e["stream"] == "screen:representative"
                               and e["state"] == "connected")
        (r_started,) = of(rep_early, "started")
        rep_home = r_started["home_node"]["name"]
        assert rep_home in demo.region_nodes("us") and rep_home != home
        assert not of(rep_early, "show_my_screen")
        reps = connected_clients(demo, "master1").get("connected_representative", [])
        (rep_id,) = [i for i, _ in reps]
        wait_for_listing(demo, {rep_home: {"connected_representative": [
            (rep_id, frozenset({rep_home}))]}}, rep, cust)
    except BaseException:
        rep.kill()
        cust.kill()
        raise
    demo.refresh()
    os.kill(int(demo.node(home)["pid"]), signal.SIGKILL)

    rep_code, rep_rest, rep_err = finish(rep, 240)
    rep_events = rep_early + rep_rest
    cust_code, rest, cust_err = finish(cust, 60)
    cust_events = [json.loads(x) for x in lines] + rest
    assert rep_code == 0, rep_err
    assert cust_code == 0, cust_err

    ended = of(cust_events, "ended")
    assert ended[0]["reason"] == "traffic_node_offline" and ended[0]["restart"]
    assert ended[0]["node_name"] == home
    assert f"{home} went offline" in ended[0]["message"]
    assert of(cust_events, "restart")
    # the stream first tried the same node again …
    retried = [e for e in of(cust_events, "stream")
               if e["state"].startswith("lost") and e["node"] == home]
    assert retried
    # … the console was told to wait for it, then the master chose the other Asian node
    waits = [e for e in of(rep_events, "error") if e["code"] == "no_traffic_node"]
    assert waits and waits[0]["retry_after_seconds"] > 0
    starts = of(cust_events, "started")
    assert len(starts) == 2
    new_home = starts[1]["home_node"]["name"]
    assert new_home != home and new_home in demo.region_nodes("asia")
    rep_starts = of(rep_events, "started")
    assert rep_starts[1]["streams"][0]["node"] == new_home
    # the representative saw frames from both homes, and the picture counter went on
    frames = [e for e in of(rep_events, "frame") if e["direction"] == "subscribe"]
    nodes = [f["node"] for f in frames]
    assert nodes[0] == home and nodes[-1] == new_home
    assert nodes == sorted(nodes, key=lambda n: n == new_home)  # first one node, then the other
    counters = [f["counter"] for f in frames]
    assert counters == sorted(counters)
    assert of(rep_events, "done")[-1]["reason"] == "--frames 100 received"


def test_restarted_session_uses_the_same_node_when_it_is_back(demo: Demo) -> None:
    """Guide, "Check Connections": "the reconnect always is attempted to the same traffic
    node" — killed, then back within the master's restart window, it is the home again.
    (Runs last: the test before left an Asian node down; this one kills the other.)"""
    key = demo.session_key()
    user = demo.state["representative"]["username"]
    cust = client(demo, "customer", ASIA_CLIENT, "Asia/Tokyo", "--key", key,
                  "--duration", "150", "--no-report-frames")
    rep = client(demo, "rep", US_CLIENT, "America/New_York", "--user", user, "--accept-next",
                 "--duration", "150", "--frames", "60", env=rep_env(demo))
    try:
        before = read_until(cust, lambda e: e["event"] == "stats"
                            and e["direction"] == "publish" and e["frames"] >= 5)
        (first,) = of(before, "started")
        home = first["home_node"]["name"]
        assert home in demo.region_nodes("asia")
        demo.refresh()
        os.kill(int(demo.node(home)["pid"]), signal.SIGKILL)
        # the master sees it offline and ends the session, to be restarted …
        before += read_until(cust, lambda e: e["event"] == "ended")
        ended = of(before, "ended")[0]
        assert ended["reason"] == "traffic_node_offline" and ended["restart"]
        assert ended["node_name"] == home
        # … and the node comes back within the restart window (30 s)
        with restarted_node(demo, home) as node:
            wait_healthy(demo, home, node)
            rep_code, rep_events, rep_err = finish(rep, 120)
            cust_code, rest, cust_err = finish(cust, 30)
            assert node.poll() is None, "the restarted node exited"
    except BaseException:
        rep.kill()
        cust.kill()
        raise
    assert rep_code == 0, rep_err
    assert cust_code == 0, cust_err
    cust_events = before + rest

    # the console was told to wait for the same node, then got it back
    waits = [e for e in of(rep_events, "error") if e["code"] == "no_traffic_node"]
    assert waits and waits[0]["retry_after_seconds"] > 0
    assert f"traffic node {home} went offline" in waits[0]["message"]
    starts = of(cust_events, "started")
    assert len(starts) == 2, cust_err
    assert starts[1]["home_node"] == starts[0]["home_node"]  # same name, GUID and URL
    rep_starts = of(rep_events, "started")
    assert len(rep_starts) == 2
    assert rep_starts[1]["streams"][0]["node"] == home
    assert rep_starts[1]["home_node"] == rep_starts[0]["home_node"]
    # every frame came from that node, before and after, the picture counter going on
    frames = [e for e in of(rep_events, "frame") if e["direction"] == "subscribe"]
    assert len(frames) == 60 and {f["node"] for f in frames} == {home}
    counters = [f["counter"] for f in frames]
    assert counters == sorted(counters)
    assert of(rep_events, "done")[-1]["reason"] == "--frames 60 received"
