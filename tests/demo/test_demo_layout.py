"""The demo's topology as data: addresses, prefixes, DNS zone, test plan, pictures.

The layout is checked against the real libraries it feeds: the configuration model
(every REST body validates), the traffic-node selection (the test plan's expected nodes
are what the selection really chooses), the DNS zone and its lookups, the certificate
name matching, and the docs generated from it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import dns.name
import dns.rdatatype
import pytest
import tomli_w
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas import SOFTWARE_VERSION
from atlas.demo import __main__ as demo_main
from atlas.demo.layout import (
    METHOD_NAMES,
    DemoLayout,
    MethodChoice,
    Role,
    default_layout,
    method_choice,
)
from atlas.demo.zone import DemoZone, lookup
from atlas.model.config import ClusterConfig, SelectionMethod, SelectionSettings, TrafficNode
from atlas.model.prefixes import parse_prefix
from atlas.model.timezones import offset_minutes
from atlas.net import certs
from atlas.selection import (
    ClientFacts,
    ClientKind,
    HealthSnapshot,
    NodeChosen,
    NodeHealth,
    select_traffic_node,
)

REPO = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2025, 1, 15, 12, 0, tzinfo=dt.UTC)
SUMMER = dt.datetime(2025, 7, 15, 12, 0, tzinfo=dt.UTC)
LAYOUT = default_layout()


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


# ---- addresses -------------------------------------------------------------------------------


def test_default_layout_is_the_guides_example_deployment() -> None:
    assert [n.name for n in LAYOUT.nodes] == [
        "master1", "master2", "us-traffic1", "us-traffic2", "asia-traffic1", "asia-traffic2",
    ]
    assert [n.role for n in LAYOUT.nodes[:2]] == [Role.PRIMARY, Role.BACKUP]
    assert all(n.hostname == f"{n.name}.support.example.test" for n in LAYOUT.nodes)
    assert all(n.port == 8443 for n in LAYOUT.nodes)
    # at least two regions, two traffic nodes each (guide: Prerequisites)
    assert len(LAYOUT.regions) >= 2
    assert all(len(LAYOUT.region_nodes(r.key)) == 2 for r in LAYOUT.regions)


def test_addresses_are_unique_loopback_and_outside_client_networks() -> None:
    assert LAYOUT.problems() == []
    bound = [n.listen_ip for n in LAYOUT.nodes] + [r.anycast_address for r in LAYOUT.regions]
    bound.append(LAYOUT.dns_ip)
    assert len(set(bound)) == len(bound)
    loopback = network("127.0.0.0/8")
    clients = [network(c) for r in LAYOUT.regions for c in r.client_networks]
    for ip in bound:
        address = ipaddress.ip_address(ip)
        assert address in loopback
        assert not any(address in c for c in clients), ip
    assert not clients[0].overlaps(clients[1])
    assert all(net.subnet_of(loopback) for net in clients)  # type: ignore[arg-type]


def test_problems_names_duplicates_and_overlaps() -> None:
    import dataclasses

    us, asia = LAYOUT.regions
    clash = dataclasses.replace(asia, client_networks=("127.10.5.0/24",),
                                anycast_address=LAYOUT.nodes[0].listen_ip)
    broken = dataclasses.replace(LAYOUT, regions=(us, clash))
    problems = broken.problems()
    assert any("overlaps 127.10.0.0/16" in p for p in problems)
    assert any("127.0.1.1 is already node master1" in p for p in problems)


@settings(max_examples=30, deadline=None)
@given(
    port=st.integers(min_value=1, max_value=65535),
    site=st.sampled_from(["support.example.test", "help.corp.example", "Remote.Example.ORG."]),
)
def test_any_site_and_port_give_a_consistent_layout(port: int, site: str) -> None:
    layout = default_layout(site=site, port=port)
    assert layout.problems() == []
    assert layout.site == site.lower().rstrip(".")
    DemoZone.from_dict(layout.zone_dict())
    for name in METHOD_NAMES:
        ClusterConfig.model_validate(layout.document(method_choice(name)))


# ---- the configuration sent through the REST API ----------------------------------------


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_rest_body_validates(name: str) -> None:
    choice = method_choice(name)
    for node in LAYOUT.traffic_nodes:
        TrafficNode.model_validate(LAYOUT.traffic_node_body(node, choice.prefixes))
    settings_ = SelectionSettings.model_validate(LAYOUT.selection_body(choice))
    assert settings_.method is choice.method
    config = ClusterConfig.model_validate(LAYOUT.document(choice))
    assert config.selection.anycast_tls_name == "anycast.support.example.test"
    assert config.health.interval_seconds <= 2


def test_method_choice() -> None:
    assert method_choice("random") == MethodChoice("random", SelectionMethod.RANDOM, True)
    assert method_choice("prefixes") == MethodChoice("prefixes", SelectionMethod.RANDOM, True)
    assert method_choice("srv").prefixes is False
    assert method_choice("a-record").method is SelectionMethod.A_RECORD
    assert method_choice("timezone", prefixes=True).prefixes is True
    assert method_choice("random", prefixes=False).prefixes is False
    with pytest.raises(ValueError, match="expected one of random, prefixes"):
        method_choice("fastest")


def test_prefixes_cover_exactly_their_regions_client_networks() -> None:
    for node in LAYOUT.traffic_nodes:
        body = TrafficNode.model_validate(LAYOUT.traffic_node_body(node, prefixes=True))
        region = LAYOUT.region(body.region)
        covered = [network(p) for p in body.prefixes]
        assert sorted(covered) == sorted(network(c) for c in region.client_networks)
        for probe in LAYOUT.probes(method_choice("prefixes")):
            inside = any(ipaddress.ip_address(probe.source_address) in c for c in covered)
            assert inside == (probe.region == region.key)
        assert parse_prefix(body.prefixes[0])  # the guide's form, as the model keeps it
    without = LAYOUT.traffic_node_body(LAYOUT.traffic_nodes[0], prefixes=False)
    assert without["prefixes"] == []


# ---- the test plan is what the selection really does ---------------------------------------


def healthy(layout: DemoLayout) -> HealthSnapshot:
    return HealthSnapshot({
        n.name: NodeHealth(online=True, software_version=SOFTWARE_VERSION, config_revision=1,
                           synced=True, last_seen=NOW.timestamp())
        for n in layout.traffic_nodes
    })


@pytest.mark.parametrize("name", ["random", "prefixes", "timezone", "least_loaded"])
@pytest.mark.parametrize("now", [NOW, SUMMER], ids=["winter", "summer"])
def test_expected_nodes_are_what_the_selection_chooses(name: str, now: dt.datetime) -> None:
    choice = method_choice(name)
    config = ClusterConfig.model_validate({**LAYOUT.document(choice), "revision": 1})
    health = HealthSnapshot({
        k: NodeHealth(online=True, software_version=SOFTWARE_VERSION, config_revision=1,
                      synced=True, last_seen=now.timestamp())
        for k in healthy(LAYOUT)
    })
    rng = random.Random(7)
    for probe in LAYOUT.probes(choice):
        facts = ClientFacts(ip=probe.source_address, kind=ClientKind(probe.kind),
                            utc_offset_minutes=offset_minutes(probe.tz_offset, now))
        seen = set()
        for _ in range(40):
            decision = select_traffic_node(config, health, SOFTWARE_VERSION, facts, now=now,
                                           rng=rng)
            assert isinstance(decision, NodeChosen), decision
            assert decision.rule.value == probe.expected_rule
            seen.add(decision.node_name)
        assert seen == set(probe.expected_nodes), probe


@pytest.mark.parametrize("name", ["srv", "a_record", "anycast"])
def test_dns_and_anycast_methods_hand_out_directives_the_zone_answers(name: str) -> None:
    choice = method_choice(name)
    config = ClusterConfig.model_validate({**LAYOUT.document(choice), "revision": 1})
    zone = DemoZone.from_dict(LAYOUT.zone_dict())
    ip_of = {n.listen_ip: n.name for n in LAYOUT.nodes}
    for probe in LAYOUT.probes(choice):
        facts = ClientFacts(ip=probe.source_address, kind=ClientKind(probe.kind))
        decision = select_traffic_node(config, healthy(LAYOUT), SOFTWARE_VERSION, facts,
                                       now=NOW, rng=random.Random(1))
        assert decision.rule.value == probe.expected_rule == name
        d = decision.to_dict()
        if name == "a_record":
            result = lookup(zone, dns.name.from_text(str(d["hostname"])),
                            dns.rdatatype.A, probe.source_address)
            got = {ip_of[r.to_text()] for r in result.answer[0]}
        elif name == "srv":
            result = lookup(zone, dns.name.from_text(str(d["srv_name"])),
                            dns.rdatatype.SRV, probe.source_address)
            records = list(result.answer[0])
            best = min(r.priority for r in records)  # type: ignore[attr-defined]
            got = {r.target.to_text(omit_final_dot=True).split(".")[0]  # type: ignore[attr-defined]
                   for r in records if r.priority == best}  # type: ignore[attr-defined]
        else:
            anycast = str(d["address"])
            got = {n.name for n in LAYOUT.traffic_nodes
                   if LAYOUT.anycast_listen(n) == f"{anycast}:{LAYOUT.port}"}
            assert d["tls_name"] == LAYOUT.anycast_tls_name
        assert got == set(probe.expected_nodes), probe


def test_test_plan_round_trips_through_toml() -> None:
    plan = LAYOUT.test_plan(method_choice("random"))
    back = tomllib.loads(tomli_w.dumps(plan))
    assert back == plan
    probes = back["probe"]
    assert {p["region"] for p in probes} == {"us", "asia"}
    assert {p["kind"] for p in probes} == {"support_customer", "representative"}
    us = next(p for p in probes if p["name"] == "us-customer")
    assert us == {
        "name": "us-customer", "kind": "support_customer", "region": "us",
        "source_address": "127.10.0.5", "tz_offset": "America/New_York",
        "expected_nodes": ["us-traffic1", "us-traffic2"], "expected_rule": "prefix",
    }


# ---- DNS ---------------------------------------------------------------------------------------


def answer(zone: DemoZone, name: str, rdtype: dns.rdatatype.RdataType, source: str) -> list[str]:
    result = lookup(zone, dns.name.from_text(name), rdtype, source)
    return sorted(r.to_text() for rrset in result.answer for r in rrset)


def test_zone_answers_every_node_and_the_site() -> None:
    zone = DemoZone.from_dict(LAYOUT.zone_dict())
    for n in LAYOUT.nodes:
        assert answer(zone, n.hostname, dns.rdatatype.A, "127.0.0.1") == [n.listen_ip]
    assert answer(zone, LAYOUT.site, dns.rdatatype.A, "127.0.0.1") == ["127.0.1.1"]
    assert answer(zone, f"ns.{LAYOUT.site}", dns.rdatatype.A, "127.0.0.1") == [LAYOUT.dns_ip]


def test_shared_name_is_answered_per_client_network() -> None:
    zone = DemoZone.from_dict(LAYOUT.zone_dict())
    name = LAYOUT.a_record_hostname
    assert answer(zone, name, dns.rdatatype.A, "127.10.0.5") == ["127.0.2.1", "127.0.2.2"]
    assert answer(zone, name, dns.rdatatype.A, "127.20.200.9") == ["127.0.3.1", "127.0.3.2"]
    everyone = answer(zone, name, dns.rdatatype.A, "127.0.0.1")
    assert everyone == sorted(n.listen_ip for n in LAYOUT.traffic_nodes)


def test_srv_own_region_first_with_weights_others_as_backup() -> None:
    zone = DemoZone.from_dict(LAYOUT.zone_dict())
    us = answer(zone, LAYOUT.srv_name, dns.rdatatype.SRV, "127.10.0.5")
    assert us == sorted([
        "10 60 8443 us-traffic1.support.example.test.",
        "10 40 8443 us-traffic2.support.example.test.",
        "20 50 8443 asia-traffic1.support.example.test.",
        "20 50 8443 asia-traffic2.support.example.test.",
    ])
    asia = answer(zone, LAYOUT.srv_name, dns.rdatatype.SRV, "127.20.0.5")
    assert "10 60 8443 asia-traffic1.support.example.test." in asia
    assert "20 50 8443 us-traffic1.support.example.test." in asia
    # every SRV target has an A record in the zone (RFC 2782: targets are names)
    result = lookup(zone, dns.name.from_text(LAYOUT.srv_name), dns.rdatatype.SRV, "127.0.0.1")
    targets = {r.target for r in result.answer[0]}  # type: ignore[attr-defined]
    assert {rr.name for rr in result.additional} == targets


def test_the_zone_file_round_trips() -> None:
    zone = DemoZone.from_dict(LAYOUT.zone_dict())
    assert DemoZone.from_json(zone.to_json()) == zone


# ---- the certificate ------------------------------------------------------------------------


def test_the_wildcard_certificate_covers_every_name_handed_out() -> None:
    ca = certs.create_ca("test CA")
    pair = certs.issue(ca, LAYOUT.certificate_names())
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    names = [LAYOUT.site, LAYOUT.a_record_hostname, LAYOUT.anycast_tls_name]
    names += [n.hostname for n in LAYOUT.nodes]
    for name in names:
        assert certs.covers(cert, name), name
    assert not certs.covers(cert, "x.y.support.example.test")  # one label only


# ---- pictures and docs ------------------------------------------------------------------------


def test_text_picture_names_every_node_and_address() -> None:
    text = LAYOUT.render_text()
    for n in LAYOUT.nodes:
        assert f"{n.public}" in text and n.listen_ip in text
    for r in LAYOUT.regions:
        assert r.client_networks[0] in text and r.anycast_address in text


def test_svg_picture_is_well_formed_and_complete() -> None:
    svg = LAYOUT.render_svg()
    root = ET.fromstring(svg)  # noqa: S314 - our own output
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for n in LAYOUT.nodes:
        assert n.name in texts
    for r in LAYOUT.regions:
        assert r.client_networks[0] in texts


def test_docs_pictures_are_generated_from_the_layout() -> None:
    """Run `python -m atlas.demo docs` after changing the layout."""
    quickstart = (REPO / demo_main.QUICKSTART).read_text()
    assert demo_main.docs_block(LAYOUT) in quickstart
    assert (REPO / demo_main.SVG).read_text() == LAYOUT.render_svg()
    assert demo_main.update_quickstart(quickstart, LAYOUT) == quickstart
