"""Following the master's home node directives in a real cluster (DESIGN.md §3).

With ``srv``, ``a_record`` and ``anycast`` the master does not name the home traffic
node: it tells the client what to resolve or dial. The client resolves through the
demo's DNS server *from its own source address* (the demo answers per client network,
as geo-DNS would), lands on a node, and reports it with ``report_home``; the master
then starts the session with that node as the client's home.

Slow (a six-node cluster): run with ``-m slow``.
"""

from __future__ import annotations

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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with running_demo(tmp_path_factory.mktemp("directives"), "--method", "srv") as d:
        yield d


def landed(events: list[dict[str, object]], method: str) -> str:
    """The node a client landed on by ``method``; checks the order of the reports."""
    names = [e["event"] for e in events]
    (directive,) = of(events, "directive")  # type: ignore[arg-type]
    assert directive["method"] == method
    (home,) = of(events, "home_node")  # type: ignore[arg-type]
    assert home["method"] == method
    (started,) = of(events, "started")  # type: ignore[arg-type]
    assert started["home_node"]["guid"] == home["guid"]  # the master took our report
    assert names.index("directive") < names.index("home_node") < names.index("started")
    return str(home["name"])


@pytest.mark.parametrize("method", ["srv", "a_record", "anycast"])
def test_clients_follow_the_directive(demo: Demo, method: str) -> None:
    if demo.state["selection"]["method"] != method:
        demo.set_method(method)
        demo.state["selection"]["method"] = method
    key = demo.session_key()
    user = demo.state["representative"]["username"]
    cust = client(demo, "customer", ASIA_CLIENT, "Asia/Tokyo", "--key", key,
                  "--duration", "60", "--no-report-frames")
    rep = client(demo, "rep", US_CLIENT, "America/New_York", "--user", user, "--accept-next",
                 "--frames", "10", env=rep_env(demo))
    rep_code, rep_events, rep_err = finish(rep, 90)
    cust_code, cust_events, cust_err = finish(cust, 30)
    assert rep_code == 0, rep_err
    assert cust_code == 0, cust_err
    customer_home = landed(cust_events, method)
    rep_home = landed(rep_events, method)
    if method != "anycast":  # DNS answers per client network: each in its own region
        assert customer_home in demo.region_nodes("asia")
        assert rep_home in demo.region_nodes("us")
    frames = [e for e in of(rep_events, "frame") if e["direction"] == "subscribe"]
    assert len(frames) == 10 and {f["node"] for f in frames} == {customer_home}
