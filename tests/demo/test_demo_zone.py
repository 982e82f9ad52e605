"""The demo zone: building it from data, and what it answers to whom (pure)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.demo.zone import DemoZone, Lookup, RecordSet, SrvTarget, ZoneError, lookup
from tests.demo.dns_helpers import (
    ASIA_SOURCE,
    ASIA_TRAFFIC,
    OTHER_SOURCE,
    US_SOURCE,
    US_TRAFFIC,
    demo_zone,
    demo_zone_dict,
)

A, AAAA, SRV, ANY = dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SRV, dns.rdatatype.ANY


def ask(zone: DemoZone, name: str, rdtype: dns.rdatatype.RdataType, source: str) -> Lookup:
    return lookup(zone, dns.name.from_text(name), rdtype, source)


def texts(result: Lookup, section: str = "answer") -> set[str]:
    return {rd.to_text() for rrset in getattr(result, section) for rd in rrset}


# ---- building ------------------------------------------------------------------------------


def test_names_relative_apex_and_absolute() -> None:
    zone = DemoZone.from_dict({
        "origin": "zone.test",
        "records": {
            "@": {"A": ["127.0.0.1"]},
            "rel": {"A": ["127.0.0.2"]},
            "abs.zone.test.": {"A": ["127.0.0.3"]},
            "plain.zone.test": {"A": ["127.0.0.4"]},  # already ends in the origin
        },
    })
    assert set(zone.records) == {
        dns.name.from_text(n) for n in ("zone.test.", "rel.zone.test.", "abs.zone.test.",
                                        "plain.zone.test.")
    }
    assert zone.name("@") == zone.origin
    assert zone.ttl == 5


def test_srv_targets_become_absolute() -> None:
    zone = demo_zone()
    rs = zone.records[zone.name("_atlas._tcp")]
    assert SrvTarget(10, 60, 8443, "us-traffic1.support.example.test.") in rs.srv


def test_round_trips_through_dict_and_json_file(tmp_path: Path) -> None:
    zone = demo_zone(default_region="us", serial=7)
    assert DemoZone.from_dict(zone.to_dict()) == zone
    zone.write(tmp_path / "zone.json")
    assert DemoZone.load(tmp_path / "zone.json") == zone
    assert zone.to_dict()["client_networks"]["asia"] == ["127.20.0.0/16"]


def test_zone_data_is_read_only() -> None:
    zone = demo_zone()
    with pytest.raises(TypeError):
        zone.records[zone.name("x")] = RecordSet()  # type: ignore[index]
    with pytest.raises(AttributeError):
        zone.ttl = 9  # type: ignore[misc]


BAD: list[tuple[dict[str, Any], str]] = [
    ({"recods": {}}, "recods: unknown key"),
    ({"origin": ""}, "origin: expected a domain name"),
    ({"ttl": -1}, "ttl: expected an integer"),
    ({"ttl": True}, "ttl: expected an integer"),
    ({"records": {"x": {"A": ["127.0.0.300"]}}}, "records.x.A[0]: '127.0.0.300' is not an IPv4"),
    ({"records": {"x": {"AAAA": ["127.0.0.1"]}}}, "records.x.AAAA[0]: '127.0.0.1' is not an IPv6"),
    ({"records": {"x": {"CNAME": ["y"]}}}, "record type 'CNAME' is not served"),
    ({"records": {"x": {"SRV": [{"priority": 1, "weight": 1, "port": 1}]}}},
     "records.x.SRV[0]: expected"),
    ({"records": {"x": {"SRV": [{"priority": 1, "weight": 1, "port": 70000, "target": "y"}]}}},
     "priority, weight and port must be 0–65535"),
    ({"records": {"x.example.com.": {"A": ["127.0.0.1"]}}}, "is not in the zone"),
    ({"records": {"traffic": {"A": ["127.0.0.1"]}}}, "either answered the same for everyone"),
    ({"client_networks": {"us": ["127.10.0.0/16"], "asia": ["127.10.0.0/255.255.0.0"]}},
     "127.10.0.0/16 is given to both us and asia"),
    ({"client_networks": {"us": ["127.10.0.0/33"], "asia": ["127.20.0.0/16"]}},
     "client_networks.us[0]: prefix length 33 is out of range"),
    ({"default_region": "europe"}, "default_region: 'europe' is not a region"),
    ({"geo_records": {"t": {"europe": {"A": ["127.0.0.1"]}}}},
     "region 'europe' has no client networks"),
]


@pytest.mark.parametrize(("change", "problem"), BAD)
def test_mistakes_are_named(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(ZoneError) as caught:
        DemoZone.from_dict({**demo_zone_dict(), **change})
    assert problem in str(caught.value)


def test_every_mistake_is_reported_at_once() -> None:
    data = demo_zone_dict()
    data["records"] = {"a": {"A": ["x"]}, "b": {"AAAA": ["y"]}}
    with pytest.raises(ZoneError) as caught:
        DemoZone.from_dict(data)
    assert len(caught.value.problems) == 2


def test_unreadable_zone_file(tmp_path: Path) -> None:
    with pytest.raises(ZoneError, match="cannot read zone file"):
        DemoZone.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ZoneError, match="not JSON"):
        DemoZone.load(tmp_path / "bad.json")


# ---- geo answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected", "why"),
    [
        (US_SOURCE, US_TRAFFIC, "in 127.10.0.0/16 (us) → us records"),
        (ASIA_SOURCE, ASIA_TRAFFIC, "in 127.20.0.0/16 (asia) → asia records"),
        (OTHER_SOURCE, US_TRAFFIC | ASIA_TRAFFIC, "in no client network → every region's"),
        ("::ffff:127.20.1.1", ASIA_TRAFFIC, "(asia) → asia records"),  # IPv4-mapped
        ("not-an-address", US_TRAFFIC | ASIA_TRAFFIC, "in no client network"),
    ],
)
def test_shared_name_answers_per_client_network(source: str, expected: set[str], why: str) -> None:
    result = ask(demo_zone(), "traffic.support.example.test.", A, source)
    assert result.rcode == dns.rcode.NOERROR and result.authoritative
    assert texts(result) == expected
    assert result.geo is not None and why in result.geo.describe()


def test_default_region_answers_unmatched_sources() -> None:
    zone = demo_zone(default_region="asia")
    result = ask(zone, "traffic.support.example.test.", A, OTHER_SOURCE)
    assert texts(result) == ASIA_TRAFFIC
    assert result.geo is not None
    assert result.geo.describe().endswith("in no client network → default region asia")


def test_region_without_records_for_a_name_gets_the_default() -> None:
    data = demo_zone_dict()
    data["geo_records"]["traffic"] = {"us": {"A": sorted(US_TRAFFIC)}}
    data["default_region"] = "us"
    result = ask(DemoZone.from_dict(data), "traffic.support.example.test.", A, ASIA_SOURCE)
    assert texts(result) == US_TRAFFIC
    assert result.geo is not None
    assert "in 127.20.0.0/16 (asia) → no asia records; default region us" in (
        result.geo.describe()
    )


def test_longest_client_network_wins() -> None:
    data = demo_zone_dict()
    data["client_networks"] = {"us": ["127.10.0.0/16"], "asia": ["127.10.5.0/24"]}
    zone = DemoZone.from_dict(data)
    assert zone.client_region("127.10.5.1") == ("127.10.5.0/24", "asia")
    assert zone.client_region("127.10.6.1") == ("127.10.0.0/16", "us")
    assert zone.client_region("127.11.0.1") is None


def test_ipv6_client_networks() -> None:
    data = demo_zone_dict()
    data["client_networks"]["asia"] = ["127.20.0.0/16", "fd20::/16"]
    zone = DemoZone.from_dict(data)
    assert zone.client_region("fd20::1") == ("fd20::/16", "asia")
    assert zone.client_region("fd21::1") is None


def test_every_region_union_keeps_order_without_repeats() -> None:
    data = demo_zone_dict()
    data["geo_records"]["traffic"] = {
        "us": {"A": ["127.0.2.1", "127.0.2.2"]}, "asia": {"A": ["127.0.2.2", "127.0.3.1"]},
    }
    zone = DemoZone.from_dict(data)
    rs, _ = zone.geo_answer(zone.name("traffic"), OTHER_SOURCE)
    assert rs.a == ("127.0.2.1", "127.0.2.2", "127.0.3.1")


def test_geo_srv_and_its_additional_addresses() -> None:
    zone = demo_zone()
    us = ask(zone, "_geo._tcp.support.example.test.", SRV, US_SOURCE)
    asia = ask(zone, "_geo._tcp.support.example.test.", SRV, ASIA_SOURCE)
    assert "10 60 8443 us-traffic1.support.example.test." in texts(us)
    assert "10 50 8443 asia-traffic2.support.example.test." in texts(asia)
    assert texts(asia, "additional") == {"127.0.3.1", "127.0.3.2", "127.0.2.1", "fd00::2:1"}


@settings(max_examples=300)
@given(
    rules=st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.sampled_from("abcd")),
        max_size=12,
    ),
    source=st.integers(0, 2**32 - 1),
)
def test_region_is_the_longest_containing_network(
    rules: list[tuple[int, int, str]], source: int
) -> None:
    """Against a brute-force reference: the longest network containing the source."""
    networks: dict[ipaddress.IPv4Network, str] = {}
    for address, length, region in rules:
        networks.setdefault(ipaddress.IPv4Network((address, length), strict=False), region)
    zone = DemoZone(
        dns.name.from_text("z.test."), client_networks=tuple(networks.items())
    )
    ip = ipaddress.IPv4Address(source)
    containing = [n for n in networks if ip in n]
    expected = None
    if containing:
        best = max(containing, key=lambda n: n.prefixlen)
        expected = (str(best), networks[best])
    assert zone.client_region(str(ip)) == expected


# ---- the rest of the zone ------------------------------------------------------------------


def test_node_names_case_insensitive() -> None:
    result = ask(demo_zone(), "US-Traffic1.Support.Example.TEST.", ANY, OTHER_SOURCE)
    assert texts(result) == {"127.0.2.1", "fd00::2:1"}
    assert result.answer[0].name.to_text() == "US-Traffic1.Support.Example.TEST."


def test_missing_name_is_nxdomain_with_soa() -> None:
    result = ask(demo_zone(), "nope.support.example.test.", A, OTHER_SOURCE)
    assert (result.rcode, result.authoritative, result.answer) == (dns.rcode.NXDOMAIN, True, ())
    assert result.authority[0].rdtype == dns.rdatatype.SOA


@pytest.mark.parametrize(
    "name", ["master1.support.example.test.", "_tcp.support.example.test."]
)
def test_no_data_and_empty_non_terminal_are_noerror(name: str) -> None:
    """``master1`` has no AAAA; ``_tcp`` exists as the parent of ``_atlas._tcp`` (RFC 8020)."""
    result = ask(demo_zone(), name, AAAA, OTHER_SOURCE)
    assert (result.rcode, result.authoritative, result.answer) == (dns.rcode.NOERROR, True, ())
    assert result.authority[0].rdtype == dns.rdatatype.SOA
    assert "no data" in result.describe()


def test_outside_the_zone_is_refused() -> None:
    for name in ("example.com.", "example.test.", "."):
        result = ask(demo_zone(), name, A, OTHER_SOURCE)
        assert (result.rcode, result.authoritative) == (dns.rcode.REFUSED, False)


def test_apex_has_soa_ns_and_site_address() -> None:
    zone = demo_zone(serial=42)
    result = ask(zone, "support.example.test.", ANY, OTHER_SOURCE)
    types = [r.rdtype for r in result.answer]
    assert types == [dns.rdatatype.SOA, dns.rdatatype.NS, A]
    soa = next(iter(result.answer[0]))
    assert soa.serial == 42 and soa.minimum == 5
    assert texts(ask(zone, "support.example.test.", A, OTHER_SOURCE)) == {"127.0.1.1"}


def test_ttl_is_the_zone_ttl() -> None:
    zone = demo_zone(ttl=30)
    result = ask(zone, "master1.support.example.test.", A, OTHER_SOURCE)
    assert result.answer[0].ttl == 30
