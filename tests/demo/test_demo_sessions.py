"""The synthetic session pairs of ``atlas demo --sessions N``: who runs where, with what.

The command lines are parsed by the real ``atlas rep`` and ``atlas customer`` commands,
so an option the clients do not have (or a value they refuse) fails here.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer

from atlas.cli import app as atlas_app
from atlas.demo.layout import default_layout, method_choice
from atlas.demo.sessions import (
    FPS,
    MAX_SESSIONS,
    SIZE,
    PairRunner,
    SessionPair,
    SessionSite,
    customer_argv,
    plan_pairs,
    rep_argv,
    rep_username,
)

LAYOUT = default_layout()
SITE = SessionSite(url=LAYOUT.site_url, ca_file="/demo/ca/ca.pem", dns=LAYOUT.dns)


def in_network(address: str, region: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(n) for n in LAYOUT.region(region).client_networks)


@pytest.mark.parametrize("count", [1, 2, 3, 8, MAX_SESSIONS])
def test_pairs_alternate_regions_from_inside_their_client_networks(count: int) -> None:
    pairs = plan_pairs(LAYOUT, count)
    assert [p.index for p in pairs] == list(range(1, count + 1))
    regions = [r.key for r in LAYOUT.regions]
    for i, p in enumerate(pairs):
        assert p.representative.region == regions[i % 2]
        assert p.customer.region == regions[(i + 1) % 2]
        assert p.representative.region != p.customer.region
        assert in_network(p.representative.source_address, p.representative.region)
        assert in_network(p.customer.source_address, p.customer.region)
        assert p.representative.tz_offset == LAYOUT.region(p.representative.region).timezone
        assert p.customer.tz_offset == LAYOUT.region(p.customer.region).timezone
    if count >= 2:  # sessions on both sides
        assert {p.customer.region for p in pairs} == set(regions)
        assert {p.representative.region for p in pairs} == set(regions)


def test_every_client_has_its_own_address_apart_from_probes_and_nodes() -> None:
    pairs = plan_pairs(LAYOUT, MAX_SESSIONS)
    addresses = [c.source_address for p in pairs for c in (p.representative, p.customer)]
    assert len(set(addresses)) == len(addresses)
    taken = {p.source_address for p in LAYOUT.probes(method_choice("random"))}
    taken |= {n.listen_ip for n in LAYOUT.nodes} | {LAYOUT.dns_ip}
    assert not taken & set(addresses)
    hostnames = [c.hostname for p in pairs for c in (p.representative, p.customer)]
    assert len(set(hostnames)) == len(hostnames)


def test_each_pair_has_its_own_representative_account_and_queue() -> None:
    pairs = plan_pairs(LAYOUT, 3)
    assert [p.rep_username for p in pairs] == ["sim-rep1", "sim-rep2", "sim-rep3"]
    assert [p.name for p in pairs] == ["pair1", "pair2", "pair3"]
    assert pairs[1].queue_id == "rep_username:sim-rep2"
    assert pairs[0].customer.hostname == "sim-customer1-asia"
    assert pairs[0].representative.hostname == "sim-rep1-us"
    assert rep_username(1) != "rep1"  # the demo representative stays free for people


def test_too_many_pairs_are_refused() -> None:
    assert plan_pairs(LAYOUT, 0) == ()
    with pytest.raises(ValueError, match="at most"):
        plan_pairs(LAYOUT, MAX_SESSIONS + 1)


def parse(argv: list[str]) -> dict[str, Any]:
    """The options ``atlas …`` would run with (without running it)."""
    assert argv[1:3] == ["-m", "atlas"]
    group = typer.main.get_command(atlas_app)
    with group.make_context("atlas", argv[3:4], resilient_parsing=True) as root:
        command = group.get_command(root, argv[3])
        assert command is not None
        with command.make_context(argv[3], argv[4:], parent=root) as ctx:
            return dict(ctx.params)


def test_the_representative_takes_its_queue_from_its_region() -> None:
    pair = plan_pairs(LAYOUT, 2)[1]
    params = parse(rep_argv(pair, SITE))
    assert params["user"] == "sim-rep2" and params["accept_next"] is True
    assert params["queue"] == "personal"  # never a customer of the general queue
    assert params["source_address"] == "127.20.2.2"
    assert params["tz_offset"] == "Asia/Tokyo"
    assert params["site"] == LAYOUT.site_url
    assert (str(params["ca_file"]), params["dns"]) == (SITE.ca_file, SITE.dns)
    assert params["json"] is True and params["live"] is False
    assert params["fps"] == FPS and params["size"] == SIZE


def test_the_customer_shares_a_small_test_pattern_for_a_while() -> None:
    pair = plan_pairs(LAYOUT, 2)[1]
    params = parse(customer_argv(pair, SITE, 42.0))
    assert params["key"] is None  # from ATLAS_SESSION_KEY: not on the command line
    assert params["duration"] == 42.0
    assert params["source_address"] == "127.10.1.2"
    assert params["tz_offset"] == "America/New_York"
    assert params["hostname"] == "sim-customer2-us"
    assert params["source"].value == "test-pattern"
    assert params["fps"] <= 2 and params["size"] == "320x180"


def runner(pair: SessionPair, said: list[str]) -> PairRunner:
    async def no_key(queue_id: str) -> str:
        raise AssertionError(queue_id)

    return PairRunner(pair, SITE, "pw", new_key=no_key, log_dir=Path("/nonexistent"),
                      env={}, on_change=lambda: None, say=said.append)


def line(event: str, **fields: Any) -> bytes:
    return (json.dumps({"event": event, "time": "2025-01-01T00:00:00Z", **fields}) + "\n"
            ).encode()


def test_the_runner_follows_the_clients_events() -> None:
    said: list[str] = []
    pair = plan_pairs(LAYOUT, 1)[0]
    r = runner(pair, said)
    r.on_line("customer", b"not json\n")
    r.on_line("customer", line("queued", session_id="s1", queue_id=pair.queue_id, position=1))
    assert r.state == "waiting"
    r.on_line("representative", line("started", home_node={"name": "us-traffic1"}))
    assert said == [] and r.rep_node == "us-traffic1"
    r.on_line("customer", line("started", home_node={"name": "asia-traffic2"}))
    assert (r.state, r.customer_node, r.sessions) == ("running", "asia-traffic2", 1)
    assert said == ["pair1: session 1 running — customer (asia) on asia-traffic2, "
                    "representative sim-rep1 (us) on us-traffic1"]
    r.on_line("customer", line("ended", reason="customer_left"))
    assert r.state == "ended"
    r.on_line("representative", line("failed", error="boom", code="x", exit_code=1))
    assert r.error == "representative: boom"


def test_the_live_view_shows_the_pairs_and_the_method_in_force() -> None:
    from rich.console import Console

    from atlas.cli.demo import live_view
    from atlas.demo.cluster import SessionView, Snapshot
    from atlas.demo.state import DnsInfo

    pairs = plan_pairs(LAYOUT, 2)
    views = tuple(
        SessionView(name=p.name, representative=p.rep_username,
                    rep_region=p.representative.region,
                    rep_address=p.representative.source_address,
                    customer_region=p.customer.region,
                    customer_address=p.customer.source_address, state=state,
                    rep_node=rep_node, customer_node=None, sessions=n, rep_pid=101,
                    customer_pid=None, error=error)
        for p, state, rep_node, n, error in (
            (pairs[0], "running", "us-traffic1", 3, None),
            (pairs[1], "restarting", None, 0, "customer: bad key")))
    snapshot = Snapshot(at=0.0, revision=7, sync_needed=False, nodes=(), dns_running=True,
                        method="timezone (without network address prefixes)",
                        sessions=views)
    demo: Any = type("Demo", (), {
        "started_at": 0.0, "layout": LAYOUT, "choice": None,
        "info": type("Info", (), {"dns": DnsInfo(host="127.0.53.53", port=53, zone_file="z",
                                                 log_file="l")})()})()
    console = Console(width=200, record=True)
    console.print(live_view(demo, snapshot))
    text = console.export_text()
    assert "method timezone (without network address prefixes) · revision 7" in text
    assert "Synthetic sessions 1 of 2 running" in text
    assert re.search(r"pair1\s+sim-rep1\s+us 127\.10\.2\.1\s+us-traffic1\s+"
                     r"asia 127\.20\.1\.1\s+running\s+3\s+101", text), text
    assert "restarting: customer: bad key" in text
