"""ClusterConfig validation: one good/bad table per rule (guide sections "Configure the
Primary Master Node", "Configure the Traffic Nodes", "Methods for Choosing Traffic
Nodes")."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from pydantic import ValidationError

from atlas.model.config import (
    IP_NOT_SUPPORTED,
    NOT_SITE_HOSTNAME,
    Address,
    ClusterConfig,
    HealthSettings,
    MasterNode,
    SelectionMethod,
    SelectionSettings,
    TrafficNode,
)
from atlas.model.errors import describe_errors
from tests.model.documents import SITE, assert_refused, cluster, errors_of, traffic


def test_the_guide_example_is_valid() -> None:
    config = ClusterConfig.model_validate(cluster())
    assert [n.name for n in config.all_nodes()] == [
        "master1",
        "master2",
        "us-traffic1",
        "us-traffic2",
        "asia-traffic1",
    ]
    assert config.selection.method is SelectionMethod.RANDOM
    assert config.primary.public == Address(host="master1.support.example.com", port=443)


# --- names --------------------------------------------------------------------------

GOOD_NAMES = [
    ("us-traffic1", "us-traffic1"),
    ("  Tokyo 1  ", "Tokyo 1"),
    ("東京", "東京"),
    ("<script>alert(1)</script>", "<script>alert(1)</script>"),  # escaping is the web's job
    ("a" * 64, "a" * 64),
    ("cafe\u0301", "café"),  # NFC
]


@pytest.mark.parametrize(("given", "stored"), GOOD_NAMES)
def test_good_names(given: str, stored: str) -> None:
    config = ClusterConfig.model_validate(traffic(name=given))
    assert config.traffic_nodes[0].name == stored


BAD_NAMES = [
    ("", "must not be empty"),
    ("   ", "must not be empty"),
    ("a" * 65, "65 characters long: expected at most 64"),
    ("tab\there", "U+0009"),
    ("new\nline", "U+000A"),
    ("nul\x00", "U+0000"),
    ("bidi\u202eevil", "U+202E"),
    ("para\u2029graph", "U+2029"),
]


@pytest.mark.parametrize(("given", "expected"), BAD_NAMES)
def test_bad_names(given: str, expected: str) -> None:
    assert_refused(traffic(name=given), "traffic_nodes.0.name", expected)


@pytest.mark.parametrize(
    ("field_path", "document"),
    [
        ("traffic_nodes.0.name", traffic(name="master1")),
        ("traffic_nodes.0.name", traffic(name="MASTER2")),
        ("backup.name", cluster(backup={"name": "Master1", "public": "m2.example.net"})),
        (
            "traffic_nodes.2.name",
            cluster(
                traffic_nodes=[
                    {"name": "a", "public": "a.example.net"},
                    {"name": "b", "public": "b.example.net"},
                    {"name": "A ", "public": "c.example.net"},
                ]
            ),
        ),
    ],
)
def test_names_are_unique_among_all_nodes(field_path: str, document: dict[str, Any]) -> None:
    assert_refused(document, field_path, "is already used by the", "unique among all nodes")


def test_duplicate_name_message_names_the_other_node() -> None:
    assert_refused(traffic(name="master1"), "traffic_nodes.0.name", "primary master node 'master1'")


# --- addresses ----------------------------------------------------------------------

GOOD_ADDRESSES = [
    ("master1.support.example.com:443", "master1.support.example.com", 443),
    ("Master1.Support.Example.COM:8443", "master1.support.example.com", 8443),
    ("master1.support.example.com", "master1.support.example.com", 443),
    ("master1.support.example.com.:443", "master1.support.example.com", 443),
    (" localhost:1 ", "localhost", 1),
    ("node-1.example.net:65535", "node-1.example.net", 65535),
    ("1node.example.net:443", "1node.example.net", 443),  # RFC 1123 allows a leading digit
    ("xn--bcher-kva.example:443", "xn--bcher-kva.example", 443),
    ({"host": "a.example.net", "port": 444}, "a.example.net", 444),
    ({"host": "a.example.net", "port": "444"}, "a.example.net", 444),
    (("a" * 63 + ".") * 3 + "a" * 61 + ":443", ("a" * 63 + ".") * 3 + "a" * 61, 443),
]


@pytest.mark.parametrize(("given", "host", "port"), GOOD_ADDRESSES)
def test_good_addresses(given: Any, host: str, port: int) -> None:
    address = Address.model_validate(given)
    assert (address.host, address.port) == (host, port)
    assert str(address) == f"{host}:{port}"
    if isinstance(given, str):
        assert Address.parse(given) == address


BAD_ADDRESSES = [
    ("10.0.0.1:443", IP_NOT_SUPPORTED),
    ("10.0.0.1", IP_NOT_SUPPORTED),
    ("[2001:db8::1]:443", IP_NOT_SUPPORTED),
    ("2001:db8::1", IP_NOT_SUPPORTED),
    ("::1", IP_NOT_SUPPORTED),
    ("10.1.2:443", IP_NOT_SUPPORTED),  # resolvers read this as an IP
    ("1234:443", IP_NOT_SUPPORTED),
    ("master1.example.com:0", "port 0 is out of range: expected 1–65535"),
    ("master1.example.com:65536", "port 65536 is out of range"),
    ("master1.example.com:https", "is not a number"),
    ("master1.example.com:", "is not a number"),
    ("https://master1.example.com", "without https://"),
    ("master1.example.com/path", "without https:// or a path"),
    ("", "must not be empty"),
    ("under_score.example.com", "label 'under_score'"),
    ("-lead.example.com", "not starting or ending with a hyphen"),
    ("trail-.example.com", "label 'trail-'"),
    ("two..dots.example.com", "empty label"),
    (".lead.example.com", "empty label"),
    ("a" * 64 + ".example.com", "expected at most 63"),
    (("a" * 63 + ".") * 4 + "com", "expected at most 253"),
    ("bücher.example", "non-ASCII"),
    ("sp ace.example.com", "label 'sp ace'"),
]


@pytest.mark.parametrize(("given", "expected"), BAD_ADDRESSES)
def test_bad_addresses(given: str, expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Address.parse(given)
    assert expected in describe_errors(caught.value)[0]["message"]
    [error] = errors_of(traffic(public=given))
    assert error["field"].startswith("traffic_nodes.0.public")
    assert expected in error["message"]


def test_address_error_fields_are_precise() -> None:
    fields = [e["field"] for e in errors_of(traffic(public="10.0.0.1:443"))]
    assert fields == ["traffic_nodes.0.public.host"]
    fields = [e["field"] for e in errors_of(traffic(public="a.example.net:99999"))]
    assert fields == ["traffic_nodes.0.public.port"]
    fields = [e["field"] for e in errors_of(traffic(public="a.example.net:x"))]
    assert fields == ["traffic_nodes.0.public"]


@pytest.mark.parametrize(
    ("document", "field_path"),
    [
        (traffic(public=f"{SITE}:443"), "traffic_nodes.0.public"),
        (traffic(public=f"{SITE.upper()}:8443"), "traffic_nodes.0.public"),
        (traffic(internal=f"{SITE}:443"), "traffic_nodes.0.internal"),
        (cluster(primary={"name": "master1", "public": SITE}), "primary.public"),
    ],
)
def test_node_address_is_not_the_site_hostname(document: dict[str, Any], field_path: str) -> None:
    assert_refused(document, field_path, NOT_SITE_HOSTNAME)


@pytest.mark.parametrize(
    ("document", "field_path"),
    [
        (traffic(public="master1.support.example.com:443"), "traffic_nodes.0.public"),
        (traffic(internal="master2.support.example.com:443"), "traffic_nodes.0.internal"),
        (
            cluster(backup={"name": "m2", "public": "master1.support.example.com"}),
            "backup.public",
        ),
    ],
)
def test_two_nodes_cannot_share_an_address(document: dict[str, Any], field_path: str) -> None:
    assert_refused(document, field_path, "is already used by the")


@pytest.mark.parametrize(
    "document",
    [
        # a node's own public and internal address may be the same (guide: "This can be
        # the same as the public address")
        traffic(internal="us-traffic1.support.example.com:443"),
        # separate internal hostnames
        traffic(internal="us-traffic1.int.example.com:443"),
        # local test clusters: one host, different ports
        cluster(
            primary={"name": "m", "public": "localhost:8001"},
            backup=None,
            traffic_nodes=[
                {"name": "t1", "public": "localhost:8002"},
                {"name": "t2", "public": "localhost:8003"},
            ],
        ),
    ],
)
def test_addresses_that_are_fine(document: dict[str, Any]) -> None:
    ClusterConfig.model_validate(document)


def test_internal_address_defaults_to_public() -> None:
    config = ClusterConfig.model_validate(traffic(internal="t1.int.example.com:9443"))
    assert str(config.traffic_nodes[0].internal_address()) == "t1.int.example.com:9443"
    assert config.traffic_nodes[1].internal_address() == config.traffic_nodes[1].public
    assert config.primary.internal_address() == config.primary.public


# --- guid, region, capacity ---------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("584433b4734b1c3ffc9c117837c4d950", "584433b4734b1c3ffc9c117837c4d950"),
        ("3e000681-23f0-716c", "3e000681-23f0-716c"),
    ],
)
def test_good_guids(given: str | None, stored: str | None) -> None:
    assert ClusterConfig.model_validate(traffic(guid=given)).traffic_nodes[0].guid == stored


@pytest.mark.parametrize("given", ["has space", "-lead", "x" * 65, "<b>"])
def test_bad_guids(given: str) -> None:
    assert_refused(traffic(guid=given), "traffic_nodes.0.guid", "is not an appliance GUID")


def test_guids_are_unique() -> None:
    document = traffic(guid="abc123")
    document["traffic_nodes"][1]["guid"] = "abc123"
    assert_refused(document, "traffic_nodes.1.guid", "traffic node 'us-traffic1'")


@pytest.mark.parametrize(("given", "ok"), [("US East", True), ("", True), ("x\x07", False)])
def test_region(given: str, ok: bool) -> None:
    if ok:
        assert ClusterConfig.model_validate(traffic(region=given)).traffic_nodes[0].region == given
    else:
        assert_refused(traffic(region=given), "traffic_nodes.0.region", "U+0007")


@pytest.mark.parametrize(
    ("given", "ok"), [(1, True), (1_000_000, True), (0, False), (-5, False), (1_000_001, False)]
)
def test_capacity(given: int, ok: bool) -> None:
    if ok:
        assert ClusterConfig.model_validate(traffic(capacity=given)).traffic_nodes[0].capacity
    else:
        assert_refused(traffic(capacity=given), "traffic_nodes.0.capacity", "Input should be")


def test_accepting_flag() -> None:
    assert (
        ClusterConfig.model_validate(traffic(accepting=False)).traffic_nodes[0].accepting is False
    )
    assert_refused(traffic(accepting="maybe"), "traffic_nodes.0.accepting", "true or false")


# --- prefixes and timezone on the node ----------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (
            "10.10.0.0/16\n10.1.2.3/255.255.0.0\n\n192.0.2.7",
            ("10.10.0.0/16", "10.1.0.0/16", "192.0.2.7/32"),
        ),
        (["10.10.0.0/16", "10.10.0.0/255.255.0.0"], ("10.10.0.0/16",)),
        ("", ()),
        (None, ()),
        (["2001:db8::/32"], ("2001:db8::/32",)),
    ],
)
def test_node_prefixes_are_normalised(given: Any, stored: tuple[str, ...]) -> None:
    assert ClusterConfig.model_validate(traffic(prefixes=given)).traffic_nodes[0].prefixes == stored


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("10.0.0.0/8\n10.0.0.0/255.0.255.0", "line 2: '10.0.0.0/255.0.255.0'"),
        (["10.0.0.0/33"], "line 1: '10.0.0.0/33'"),
        ("foo", "line 1: 'foo'"),
        ([1, 2], "list of strings"),
        (42, "list of strings"),
    ],
)
def test_node_prefixes_refused(given: Any, expected: str) -> None:
    assert_refused(traffic(prefixes=given), "traffic_nodes.0.prefixes", expected)


@pytest.mark.parametrize(
    ("given", "stored"),
    [("UTC+9", "+09:00"), ("America/New_York", "America/New_York"), ("asia/tokyo", "Asia/Tokyo")],
)
def test_node_timezone_is_normalised(given: str, stored: str) -> None:
    assert ClusterConfig.model_validate(traffic(timezone=given)).traffic_nodes[0].timezone == stored


@pytest.mark.parametrize("given", ["+15:00", "Mars/Olympus", "", "localtime"])
def test_node_timezone_refused(given: str) -> None:
    assert_refused(traffic(timezone=given), "traffic_nodes.0.timezone", "expected")


# --- site hostname ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [("Support.Example.com", "support.example.com"), ("localhost", "localhost")],
)
def test_good_site_hostnames(given: str, stored: str) -> None:
    document = cluster(site_hostname=given)
    assert ClusterConfig.model_validate(document).site_hostname == stored


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("203.0.113.5", "must be a hostname, not an IP address"),
        ("support.example.com:443", "without a port"),
        ("", "must not be empty"),
        ("https://support.example.com", "without https://"),
    ],
)
def test_bad_site_hostnames(given: str, expected: str) -> None:
    assert_refused(cluster(site_hostname=given), "site_hostname", expected)


# --- selection ----------------------------------------------------------------------

GOOD_SELECTIONS: list[dict[str, Any]] = [
    {"method": "random"},
    {"method": "timezone"},
    {"method": "least_loaded"},
    {"method": "srv", "srv_name": "_atlas._tcp.support.example.com"},
    {"method": "srv", "srv_name": "_Atlas._TCP.Support.Example.com."},
    {"method": "a_record", "a_record_hostname": "traffic.support.example.com"},
    {"method": "anycast", "anycast_address": "192.0.2.10"},
    {"method": "anycast", "anycast_address": "2001:db8::10", "anycast_port": 8443},
    {"method": "anycast", "anycast_address": "192.0.2.10", "anycast_tls_name": "any.example.com"},
    {"method": "random", "srv_name": "_atlas._tcp.example.com"},  # other methods' settings stay
    {"method": "random", "a_record_hostname": "", "anycast_address": ""},  # empty form fields
    {"master_fallback_limit": 0},
    {"master_fallback_limit": 1_000_000},
]


@pytest.mark.parametrize("selection", GOOD_SELECTIONS)
def test_good_selection(selection: dict[str, Any]) -> None:
    config = ClusterConfig.model_validate(cluster(selection=selection))
    assert config.selection.method == selection.get("method", "random")


def test_selection_values_are_normalised() -> None:
    config = ClusterConfig.model_validate(
        cluster(selection={"method": "srv", "srv_name": "_Atlas._TCP.Support.Example.com."})
    )
    assert config.selection.srv_name == "_atlas._tcp.support.example.com"
    config = ClusterConfig.model_validate(
        cluster(selection={"method": "anycast", "anycast_address": "2001:DB8:0::10"})
    )
    assert config.selection.anycast_address == "2001:db8::10"


def test_anycast_tls_name_defaults_to_site_hostname() -> None:
    config = ClusterConfig.model_validate(
        cluster(selection={"method": "anycast", "anycast_address": "192.0.2.10"})
    )
    assert config.selection.anycast_tls_name == SITE
    config = ClusterConfig.model_validate(
        cluster(
            selection={
                "method": "anycast",
                "anycast_address": "192.0.2.10",
                "anycast_tls_name": "edge.example.com",
            }
        )
    )
    assert config.selection.anycast_tls_name == "edge.example.com"


BAD_SELECTIONS = [
    ({"method": "srv"}, "selection.srv_name", "required when the method is 'srv'"),
    ({"method": "srv", "srv_name": ""}, "selection.srv_name", "required when the method is 'srv'"),
    ({"method": "a_record"}, "selection.a_record_hostname", "required when the method is"),
    ({"method": "anycast"}, "selection.anycast_address", "required when the method is 'anycast'"),
    ({"method": "srv", "srv_name": "192.0.2.1"}, "selection.srv_name", "not an IP address"),
    (
        {"method": "a_record", "a_record_hostname": "192.0.2.1"},
        "selection.a_record_hostname",
        "use the anycast method",
    ),
    (
        {"method": "a_record", "a_record_hostname": SITE},
        "selection.a_record_hostname",
        "is the support site hostname",
    ),
    (
        {"method": "anycast", "anycast_address": "anycast.example.com"},
        "selection.anycast_address",
        "is not an IP address",
    ),
    ({"method": "anycast", "anycast_address": "0.0.0.0"}, "selection.anycast_address", "unicast"),  # noqa: S104
    ({"method": "anycast", "anycast_address": "224.0.0.1"}, "selection.anycast_address", "unicast"),
    (
        {"method": "anycast", "anycast_address": "192.0.2.1", "anycast_port": 0},
        "selection.anycast_port",
        "expected 1–65535",
    ),
    ({"method": "dns"}, "selection.method", "'random'"),
    ({"master_fallback_limit": -1}, "selection.master_fallback_limit", "greater than or equal"),
    ({"master_fallback_limit": 1_000_001}, "selection.master_fallback_limit", "less than or eq"),
    ({"srv_name": "_a._tcp..example.com"}, "selection.srv_name", "empty label"),
    ({"colour": "blue"}, "selection.colour", "unknown setting"),
]


@pytest.mark.parametrize(("selection", "field_path", "expected"), BAD_SELECTIONS)
def test_bad_selection(selection: dict[str, Any], field_path: str, expected: str) -> None:
    assert_refused(cluster(selection=selection), field_path, expected)


# --- health -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "health",
    [
        {},
        {"interval_seconds": 1, "timeout_seconds": 1},
        {"interval_seconds": 0.5, "timeout_seconds": 30},
    ],
)
def test_good_health(health: dict[str, Any]) -> None:
    ClusterConfig.model_validate(cluster(health=health))


@pytest.mark.parametrize(
    ("health", "field_path", "expected"),
    [
        ({"interval_seconds": 0}, "health.interval_seconds", "greater than 0"),
        ({"interval_seconds": -1}, "health.interval_seconds", "greater than 0"),
        ({"interval_seconds": float("inf")}, "health.interval_seconds", "finite"),
        ({"timeout_seconds": float("nan")}, "health.timeout_seconds", "finite"),
        (
            {"interval_seconds": 10, "timeout_seconds": 5},
            "health.timeout_seconds",
            "shorter than the check interval 10 s",
        ),
    ],
)
def test_bad_health(health: dict[str, Any], field_path: str, expected: str) -> None:
    assert_refused(cluster(health=health), field_path, expected)


# --- document -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "field_path", "expected"),
    [
        ({"site_hostname": SITE}, "primary", "required"),
        (cluster(revision=-1), "revision", "greater than or equal to 0"),
        (cluster(nodes=[]), "nodes", "unknown setting"),
        (traffic(colour="red"), "traffic_nodes.0.colour", "unknown setting"),
    ],
)
def test_document_shape(document: dict[str, Any], field_path: str, expected: str) -> None:
    assert_refused(document, field_path, expected)


def test_every_error_is_reported_with_its_field() -> None:
    document = cluster(site_hostname="10.0.0.1")
    document["traffic_nodes"][0]["prefixes"] = "10.0.0.0/40"
    document["traffic_nodes"][2]["timezone"] = "nowhere"
    fields = {e["field"] for e in errors_of(document)}
    assert fields == {"site_hostname", "traffic_nodes.0.prefixes", "traffic_nodes.2.timezone"}


def test_models_are_frozen_and_built_directly() -> None:
    node = TrafficNode(
        name="t", public=Address.parse("t.example.net:443"), prefixes=("10.0.0.0/8",)
    )
    with pytest.raises(ValidationError):
        node.name = "other"
    master = MasterNode(name="m", public=Address(host="m.example.net"))
    config = ClusterConfig(site_hostname=SITE, primary=master, traffic_nodes=(node,))
    assert config.selection == SelectionSettings()
    assert config.health == HealthSettings()


def test_lookups() -> None:
    config = ClusterConfig.model_validate(traffic(guid="abc"))
    assert config.node_by_name("US-Traffic1 ") is config.traffic_nodes[0]
    assert config.node_by_name("master2") is config.backup
    assert config.node_by_name("nobody") is None
    assert config.node_by_guid("abc") is config.traffic_nodes[0]
    assert config.node_by_guid("zzz") is None
    no_backup = ClusterConfig.model_validate(cluster(backup=None))
    assert [n.name for n in no_backup.all_nodes()][:2] == ["master1", "us-traffic1"]


def test_round_trip_canonical_json_and_digest() -> None:
    config = ClusterConfig.model_validate(
        traffic(
            prefixes="10.1.2.3/16",
            timezone="UTC+9",
            internal="t.int.example.com:9000",
            name="<b>ünï</b>",
        )
        | {"selection": {"method": "anycast", "anycast_address": "192.0.2.10"}}
    )
    dumped = config.model_dump(mode="json")
    again = ClusterConfig.model_validate(dumped)
    assert again == config
    assert again.canonical_json() == config.canonical_json()
    assert again.digest() == config.digest()
    text = config.canonical_json()
    assert text == json.dumps(dumped, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert text.startswith('{"backup":')
    assert hashlib.sha256(text.encode()).hexdigest() == config.digest()
    assert len(config.digest()) == 64
    changed = ClusterConfig.model_validate(dumped | {"revision": 1})
    assert changed.digest() != config.digest()
