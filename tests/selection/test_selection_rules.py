"""Rules 1 and 3 of design section 3: viability, the methods, and every reason text."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime

import pytest

from atlas.model.config import SelectionMethod
from atlas.selection import (
    AnycastDirective,
    ARecordDirective,
    ClientFacts,
    ClientKind,
    FallbackWanted,
    HealthSnapshot,
    NodeChosen,
    NodeHealth,
    NotViable,
    Rule,
    Selection,
    Selector,
    SrvDirective,
    assess_viability,
    select_traffic_node,
)
from atlas.selection.methods import circular_distance, utc_offset_minutes
from tests.selection.selection_helpers import (
    CHI2_999,
    NOW,
    VERSION,
    all_healthy,
    chi_square,
    client,
    cluster,
    healthy,
    node,
)

JANUARY = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
JULY = datetime(2024, 7, 15, 12, 0, tzinfo=UTC)


def decide(config, health=None, who=None, *, now=NOW, seed=1) -> Selection:  # type: ignore[no-untyped-def]
    return select_traffic_node(
        config,
        all_healthy(config) if health is None else health,
        VERSION,
        who or client(),
        now=now,
        rng=random.Random(seed),
    )


def chosen(decision: Selection) -> str:
    assert isinstance(decision, NodeChosen), decision
    return decision.node_name


# --- rule 1: viability -------------------------------------------------------------


def test_each_kind_of_non_viable_node_is_counted_in_the_fallback_reason() -> None:
    config = cluster(
        node("closed1", accepting=False),
        node("closed2", accepting=False),
        node("down"),
        node("never-seen"),
        node("old"),
        node("unsynced"),
        node("stale"),
    )
    health = HealthSnapshot(
        {
            "closed1": healthy(),
            "closed2": NodeHealth(False, VERSION, 1, True),  # counted once: not accepting
            "down": NodeHealth(False, VERSION, 1, True),
            "old": NodeHealth(True, "7.0.9", 1, True),
            "unsynced": NodeHealth(True, VERSION, 0, False),
            "stale": healthy(last_seen=NOW.timestamp() - 16),  # timeout is 15 s
        }
    )
    d = decide(config, health)
    assert isinstance(d, FallbackWanted)
    assert d.rule is Rule.FALLBACK
    assert d.reason == (
        "fallback: no viable node "
        "(2 not accepting, 3 offline, 1 software mismatch, 1 not synced)"
    )
    assert (d.host, d.port, d.limit) == ("master.support.example.test", 443, 50)
    assert d.retry_after_seconds == 5


def test_the_brief_example_fallback_text() -> None:
    config = cluster(node("a", accepting=False), node("b", accepting=False), node("c"))
    health = HealthSnapshot({"a": healthy(), "b": healthy()})
    assert decide(config, health).reason == "fallback: no viable node (2 not accepting, 1 offline)"


def test_no_traffic_nodes_at_all() -> None:
    assert decide(cluster()).reason == "fallback: no traffic nodes configured"


def test_health_within_the_timeout_is_online() -> None:
    config = cluster(node("a"))
    fresh = HealthSnapshot({"a": healthy(last_seen=NOW.timestamp() - 15)})
    assert chosen(decide(config, fresh)) == "a"
    v = assess_viability(config, fresh, VERSION, NOW)
    assert v.viable == ("a",)
    assert v.valid_until == NOW.timestamp()


def test_viability_reasons_per_node() -> None:
    config = cluster(node("a"), node("b", accepting=False), node("c"))
    v = assess_viability(
        config, HealthSnapshot({"a": healthy(), "b": healthy()}), VERSION, NOW
    )
    assert v.viable == ("a",)
    assert dict(v.not_viable) == {"b": NotViable.NOT_ACCEPTING, "c": NotViable.OFFLINE}
    assert v.describe_not_viable() == "1 not accepting, 1 offline"


def test_selector_keeps_viability_per_snapshot_until_a_node_goes_stale() -> None:
    config = cluster(node("a"), node("b"))
    health = HealthSnapshot(
        {"a": healthy(last_seen=NOW.timestamp()), "b": healthy(last_seen=NOW.timestamp() - 10)}
    )
    selector = Selector(config)
    first = selector.viability(health, VERSION, NOW)
    assert first.viable == ("a", "b")
    assert selector.viability(health, VERSION, NOW) is first
    later = datetime.fromtimestamp(NOW.timestamp() + 6, UTC)  # b's check is now 16 s old
    assert selector.viability(health, VERSION, later).viable == ("a",)
    assert selector.viability(health, "9.9.9", NOW).viable == ()
    assert selector.viability(HealthSnapshot({"a": healthy()}), VERSION, NOW).viable == ("a",)


# --- rule 3: the methods ------------------------------------------------------------


def test_random_is_uniform_among_viable_nodes() -> None:
    config = cluster(node("a"), node("b"), node("c"), node("d"), node("e", accepting=False))
    selector = Selector(config)
    health = all_healthy(config)
    rng = random.Random(7)
    seen: Counter[str] = Counter()
    draws = 20_000
    for _ in range(draws):
        d = selector.select(health, VERSION, client(), now=NOW, rng=rng)
        seen[chosen(d)] += 1
    assert set(seen) == {"a", "b", "c", "d"}
    assert chi_square(seen, dict.fromkeys("abcd", draws / 4)) < CHI2_999[3]
    assert d.rule is Rule.RANDOM
    assert d.reason == "random among 4 viable"


def test_timezone_follows_daylight_saving_time_of_iana_zones() -> None:
    config = cluster(
        node("new-york", timezone="America/New_York"),
        node("halifax-fixed", timezone="-03:30"),
        method=SelectionMethod.TIMEZONE,
    )
    who = client(offset=-4 * 60)
    winter = decide(config, who=who, now=JANUARY)  # New York -05:00: 60 min vs 30 min
    assert chosen(winter) == "halifax-fixed"
    assert winter.reason == "timezone -03:30 closest to client -04:00"
    summer = decide(config, who=who, now=JULY)  # New York -04:00: 0 min
    assert chosen(summer) == "new-york"
    assert summer.rule is Rule.TIMEZONE
    assert summer.reason == "timezone America/New_York (-04:00) closest to client -04:00"


def test_timezone_distance_wraps_around_the_24_hour_clock() -> None:
    config = cluster(
        node("samoa-ish", timezone="-11:00"),
        node("sydney-ish", timezone="+10:00"),
        method=SelectionMethod.TIMEZONE,
    )
    d = decide(config, who=client(offset=13 * 60))
    assert chosen(d) == "samoa-ish"  # +13:00 and -11:00 are 24 h apart: distance 0
    assert d.reason == "timezone -11:00 closest to client +13:00"
    assert circular_distance(13 * 60, -11 * 60) == 0
    assert circular_distance(13 * 60, 10 * 60) == 180
    assert circular_distance(-12 * 60, 12 * 60) == 0
    assert circular_distance(-6 * 60, 6 * 60) == 720


def test_timezone_ties_are_drawn_at_random() -> None:
    config = cluster(
        node("west", timezone="-01:00"),
        node("east", timezone="+01:00"),
        node("far", timezone="+06:00"),
        method=SelectionMethod.TIMEZONE,
    )
    selector = Selector(config)
    health = all_healthy(config)
    rng = random.Random(3)
    seen: Counter[str] = Counter()
    for _ in range(4000):
        d = selector.select(health, VERSION, client(offset=0), now=NOW, rng=rng)
        seen[chosen(d)] += 1
    assert set(seen) == {"west", "east"}
    assert chi_square(seen, {"west": 2000, "east": 2000}) < CHI2_999[1]
    assert d.reason.endswith("closest to client +00:00, random among 2 tied")


def test_timezone_without_a_client_offset_falls_back_to_random() -> None:
    config = cluster(node("a", timezone="+09:00"), node("b"), method=SelectionMethod.TIMEZONE)
    d = decide(config, who=client(offset=None))
    assert d.rule is Rule.RANDOM
    assert d.reason == "timezone: client reported no UTC offset; random among 2 viable"


def test_timezone_skips_nodes_with_an_unknown_zone() -> None:
    # The configuration validation refuses such a zone; model_copy bypasses it.
    bad = node("bad").model_copy(update={"timezone": "Mars/Olympus_Mons"})
    config = cluster(bad, node("ok", timezone="+05:00"), method=SelectionMethod.TIMEZONE)
    assert chosen(decide(config, who=client(offset=0))) == "ok"


@pytest.mark.parametrize(
    ("tz", "when", "minutes"),
    [
        ("+09:00", JANUARY, 540),
        ("-05:30", JANUARY, -330),
        ("+0545", JANUARY, 345),
        ("UTC", JULY, 0),
        ("Asia/Tokyo", JULY, 540),
        ("Europe/Berlin", JANUARY, 60),
        ("Europe/Berlin", JULY, 120),
        ("Australia/Sydney", JANUARY, 660),
        ("Australia/Sydney", JULY, 600),
        ("Nowhere/Special", JULY, None),
    ],
)
def test_utc_offsets(tz: str, when: datetime, minutes: int | None) -> None:
    assert utc_offset_minutes(tz, when) == minutes


def test_least_loaded_uses_load_relative_to_capacity() -> None:
    config = cluster(
        node("big", capacity=1000),
        node("small", capacity=250),
        method=SelectionMethod.LEAST_LOADED,
    )
    d = decide(config, all_healthy(config, big=300, small=200))  # 30 % vs 80 %
    assert chosen(d) == "big"
    assert d.rule is Rule.LEAST_LOADED
    assert d.reason == (
        "least_loaded big 30% (300/1000) vs small 80% (200/250) "
        "(power of two choices among 2 viable)"
    )


def test_least_loaded_power_of_two_choices_never_picks_the_busiest() -> None:
    config = cluster(node("idle"), node("half"), node("busy"), method=SelectionMethod.LEAST_LOADED)
    health = all_healthy(config, idle=0, half=500, busy=900)
    selector = Selector(config)
    rng = random.Random(11)
    seen: Counter[str] = Counter()
    draws = 6000
    for _ in range(draws):
        seen[chosen(selector.select(health, VERSION, client(), now=NOW, rng=rng))] += 1
    # Three equally likely pairs: idle wins two of them, half one, busy none.
    assert seen["busy"] == 0
    assert chi_square(seen, {"idle": draws * 2 / 3, "half": draws / 3}) < CHI2_999[1]


def test_least_loaded_with_one_viable_node() -> None:
    config = cluster(
        node("only"), node("off", accepting=False), method=SelectionMethod.LEAST_LOADED
    )
    d = decide(config, all_healthy(config, only=10))
    assert d.reason == "least_loaded: only viable node only 1% (10/1000)"


def test_a_record_directive() -> None:
    config = cluster(
        node("a", port=8443), node("b", port=8443),
        method=SelectionMethod.A_RECORD, a_record_hostname="traffic.support.example.test",
    )
    d = decide(config)
    assert isinstance(d, ARecordDirective)
    assert (d.rule, d.hostname, d.port) == (Rule.A_RECORD, "traffic.support.example.test", 8443)
    assert d.reason == "a_record: resolve traffic.support.example.test (2 viable)"


def test_srv_directive() -> None:
    config = cluster(
        node("a"), method=SelectionMethod.SRV, srv_name="_atlas._tcp.support.example.test"
    )
    d = decide(config)
    assert isinstance(d, SrvDirective)
    assert d.srv_name == "_atlas._tcp.support.example.test"
    assert d.reason == "srv: resolve _atlas._tcp.support.example.test (1 viable)"


def test_anycast_directive() -> None:
    config = cluster(
        node("a"), node("b"),
        method=SelectionMethod.ANYCAST, anycast_address="192.0.2.80", anycast_port=8443,
        anycast_tls_name="anycast.support.example.test",
    )
    d = decide(config)
    assert isinstance(d, AnycastDirective)
    assert (d.address, d.port, d.tls_name) == ("192.0.2.80", 8443, "anycast.support.example.test")
    assert d.reason == (
        "anycast: connect to 192.0.2.80 port 8443 (TLS name anycast.support.example.test; "
        "2 viable)"
    )


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        (SelectionMethod.A_RECORD, {"a_record_hostname": "traffic.support.example.test"}),
        (SelectionMethod.SRV, {"srv_name": "_atlas._tcp.support.example.test"}),
        (SelectionMethod.ANYCAST, {"anycast_address": "192.0.2.80"}),
    ],
)
def test_directives_need_a_viable_node(method: SelectionMethod, extra: dict[str, str]) -> None:
    config = cluster(node("a", accepting=False), method=method, **extra)
    d = decide(config)
    assert isinstance(d, FallbackWanted)
    assert d.reason == "fallback: no viable node (1 not accepting)"


def test_unconfigured_directive_method_serves_from_a_viable_node() -> None:
    # The configuration validation refuses this; model_copy bypasses it.
    config = cluster(node("a"))
    srv_without_name = config.selection.model_copy(update={"method": SelectionMethod.SRV})
    d = decide(config.model_copy(update={"selection": srv_without_name}))
    assert chosen(d) == "a"
    assert d.reason == "srv is not configured; random among 1 viable"


def test_decisions_are_json_serialisable() -> None:
    config = cluster(node("a", "10.0.0.0/8"))
    d = decide(config, who=ClientFacts("10.1.1.1", 60, ClientKind.REPRESENTATIVE))
    assert json.loads(json.dumps(d.to_dict())) == {
        "outcome": "node",
        "rule": "prefix",
        "reason": "prefix 10.0.0.0/8 (only match)",
        "node_name": "a",
        "guid": "guid-a",
        "host": "a.support.example.test",
        "port": 443,
    }
    fb = decide(cluster())
    assert json.loads(json.dumps(fb.to_dict()))["outcome"] == "fallback_wanted"


def test_same_seed_same_decision() -> None:
    config = cluster(*(node(f"n{i}") for i in range(10)))
    assert [chosen(decide(config, seed=s)) for s in range(20)] == [
        chosen(decide(config, seed=s)) for s in range(20)
    ]


def test_client_facts_validate_and_normalise_the_address() -> None:
    assert ClientFacts("::ffff:10.0.0.1").lookup_ip == "10.0.0.1"
    assert ClientFacts("::ffff:10.0.0.1").ip_version == 4
    assert ClientFacts("2001:DB8::1").lookup_ip == "2001:db8::1"
    with pytest.raises(ValueError):
        ClientFacts("not-an-ip")
