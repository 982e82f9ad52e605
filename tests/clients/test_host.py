"""What ``hello`` says about the machine, and the cluster test's overrides."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from atlas.clients.host import (
    HostFacts,
    check_source_address,
    local_utc_offset_minutes,
    parse_tz_offset,
)


@pytest.mark.parametrize(("text", "minutes"), [
    ("+09:00", 540), ("-05:30", -330), ("+0530", 330), ("UTC+9", 540), ("+14:00", 840),
    ("-12:00", -720), ("0", 0), ("Z", 0), ("UTC", 0), ("+00:00", 0), ("Asia/Tokyo", 540),
    ("asia/kolkata", 330),
])
def test_tz_offset_forms(text: str, minutes: int) -> None:
    assert parse_tz_offset(text) == minutes


def test_a_zone_name_follows_dst() -> None:
    winter = datetime(2025, 1, 15, 12, tzinfo=UTC)
    summer = datetime(2025, 7, 15, 12, tzinfo=UTC)
    assert parse_tz_offset("Europe/Berlin", winter) == 60
    assert parse_tz_offset("Europe/Berlin", summer) == 120


@pytest.mark.parametrize("text", ["+25:00", "+09:07", "nowhere", "", "9 hours"])
def test_bad_tz_offsets_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="--tz-offset"):
        parse_tz_offset(text)


def test_source_address_must_be_an_ip_of_this_machine() -> None:
    assert check_source_address("127.0.0.1") == "127.0.0.1"
    assert check_source_address(" 127.0.0.2 ") == "127.0.0.2"  # all of 127/8 is local
    with pytest.raises(ValueError, match="not an IP address"):
        check_source_address("localhost")
    with pytest.raises(ValueError, match="not an address of this machine"):
        check_source_address("192.0.2.1")  # TEST-NET-1: never assigned


def test_local_facts_report_the_real_offset_unless_overridden() -> None:
    facts = HostFacts.local()
    assert facts.utc_offset_minutes == local_utc_offset_minutes()
    assert facts.hostname and facts.platform
    assert HostFacts.local(tz_offset_minutes=-300).utc_offset_minutes == -300
    assert HostFacts.local(hostname="test-box").hostname == "test-box"
    with pytest.raises(ValueError, match="outside"):
        HostFacts.local(tz_offset_minutes=19 * 60)


def test_the_real_offset_follows_the_tz_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert local_utc_offset_minutes() == 330
    finally:
        monkeypatch.undo()
        time.tzset()
