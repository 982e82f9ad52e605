"""Customer and representative in a real cluster: ``atlas demo`` (DESIGN.md §9).

The guide's example ("Run Test Connections"): a representative in the US helps a
customer in Asia. Each client is routed by its source network (the demo gives every
traffic node its region's client networks as prefixes), so the customer's home traffic
node is in Asia and the representative's in the US; the representative watches the
customer's screen on the customer's home node, and with Show My Screen the customer
watches the representative's screen on the representative's home node.

Then the customer's home node is killed mid-session (guide, "Check Connections"): the
session ends with a restart, the console restarts it, the master waits out its restart
window for the same node and then gives the customer the other Asian node.

Slow (a six-node cluster, a restart window): run with ``-m slow``.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest

from tests.clients.demo_cluster import (
    ASIA_CLIENT,
    US_CLIENT,
    Demo,
    client,
    finish,
    of,
    rep_env,
    running_demo,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with running_demo(tmp_path_factory.mktemp("cluster")) as d:
        yield d


def test_us_representative_helps_asian_customer(demo: Demo) -> None:
    key = demo.session_key()
    user = demo.state["representative"]["username"]
    cust = client(demo, "customer", ASIA_CLIENT, "Asia/Tokyo", "--key", key,
                  "--duration", "60")
    rep = client(demo, "rep", US_CLIENT, "America/New_York", "--user", user, "--accept-next",
                 "--frames", "40", "--show-my-screen", env=rep_env(demo))
    rep_code, rep_events, rep_err = finish(rep, 90)
    cust_code, cust_events, cust_err = finish(cust, 30)
    assert rep_code == 0, rep_err
    assert cust_code == 0, cust_err

    (c_started,) = of(cust_events, "started")
    (r_started,) = of(rep_events, "started")
    customer_home = c_started["home_node"]["name"]
    rep_home = r_started["home_node"]["name"]
    assert customer_home in demo.region_nodes("asia")  # routed by its source network
    assert rep_home in demo.region_nodes("us")
    # the console watches the customer's screen on the customer's home node …
    assert r_started["streams"] == [{"stream": "screen:customer", "direction": "subscribe",
                                     "node": customer_home,
                                     "node_guid": c_started["home_node"]["guid"]}]
    # … publishes Show My Screen on its own, where the customer watches it
    grants = {(e["direction"], e["stream"], e["node"]) for e in of(rep_events, "stream")
              if e["state"] == "connected"}
    assert ("publish", "screen:representative", rep_home) in grants
    watched = {(e["direction"], e["stream"], e["node"]) for e in of(cust_events, "stream")
               if e["state"] == "connected"}
    assert watched == {("publish", "screen:customer", customer_home),
                       ("subscribe", "screen:representative", rep_home)}
    frames = [e for e in of(rep_events, "frame") if e["direction"] == "subscribe"]
    assert len(frames) == 40
    counters = [f["counter"] for f in frames]
    assert counters == list(range(counters[0], counters[0] + 40))
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
    demo.refresh()
    os.kill(int(demo.node(home)["pid"]), signal.SIGKILL)

    rep_code, rep_events, rep_err = finish(rep, 240)
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
