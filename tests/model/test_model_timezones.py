"""Timezone Offset (guide, "Configure the Traffic Nodes": offsets relative to UTC, and
"The cluster offsets for DST automatically")."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlas.model.timezones import (
    MAX_OFFSET_MINUTES,
    MIN_OFFSET_MINUTES,
    TimezoneError,
    format_offset,
    is_fixed_offset,
    normalise_timezone,
    offset_minutes,
    parse_offset,
)

JANUARY = datetime(2025, 1, 15, 12, tzinfo=UTC)
JULY = datetime(2025, 7, 15, 12, tzinfo=UTC)


def test_the_zone_database_is_available() -> None:
    assert "America/New_York" in zoneinfo.available_timezones()


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("+09:00", "+09:00"),
        ("+0900", "+09:00"),
        ("+9", "+09:00"),
        ("UTC+9", "+09:00"),
        ("utc + 09:00", "+09:00"),
        ("-05:30", "-05:30"),
        ("−05:00", "-05:00"),  # Unicode minus sign
        ("+05:45", "+05:45"),
        ("-12:00", "-12:00"),
        ("+14:00", "+14:00"),
        ("-00:00", "+00:00"),
        ("+0", "+00:00"),
        (" Asia/Tokyo ", "Asia/Tokyo"),
        ("america/new_york", "America/New_York"),
        ("UTC", "UTC"),
        ("Etc/GMT+9", "Etc/GMT+9"),
    ],
)
def test_good_timezones(given: str, stored: str) -> None:
    assert normalise_timezone(given) == stored


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("+14:15", "out of range"),
        ("-12:30", "out of range"),
        ("+24:00", "out of range"),
        ("+09:20", "expected minutes 00, 15, 30 or 45"),
        ("+09:60", "expected minutes 00, 15, 30 or 45"),
        ("9", "not a known timezone"),
        ("+900", "not a known timezone"),
        ("GMT+9", "not a known timezone"),
        ("Mars/Olympus", "not a known timezone"),
        ("../../etc/passwd", "not a known timezone"),
        ("localtime", "not a known timezone"),
        ("posixrules", "not a known timezone"),
        ("", "must not be empty"),
    ],
)
def test_bad_timezones(given: str, reason: str) -> None:
    with pytest.raises(TimezoneError, match="expected") as caught:
        normalise_timezone(given)
    assert reason in str(caught.value)


def test_new_york_follows_dst() -> None:
    assert format_offset(offset_minutes("America/New_York", JANUARY)) == "-05:00"
    assert format_offset(offset_minutes("America/New_York", JULY)) == "-04:00"


def test_fixed_offsets_do_not_follow_dst() -> None:
    assert offset_minutes("-05:00", JANUARY) == offset_minutes("-05:00", JULY) == -300


@pytest.mark.parametrize(
    ("tz", "at", "minutes"),
    [
        ("Asia/Tokyo", JULY, 540),
        ("Asia/Kolkata", JANUARY, 330),
        ("Asia/Kathmandu", JANUARY, 345),
        ("Australia/Sydney", JANUARY, 660),  # southern summer
        ("Australia/Sydney", JULY, 600),
        ("Etc/GMT+9", JULY, -540),  # POSIX sign convention
        ("UTC+9", JULY, 540),
        ("asia/tokyo", JULY, 540),
    ],
)
def test_offset_minutes(tz: str, at: datetime, minutes: int) -> None:
    assert offset_minutes(tz, at) == minutes


def test_dst_switch_is_at_the_instant() -> None:
    # 2025-03-09 07:00 UTC is 02:00 EST, when New York springs forward.
    switch = datetime(2025, 3, 9, 7, tzinfo=UTC)
    assert offset_minutes("America/New_York", switch - timedelta(seconds=1)) == -300
    assert offset_minutes("America/New_York", switch) == -240


def test_naive_and_other_zone_instants() -> None:
    naive = datetime(2025, 7, 15, 12)
    assert offset_minutes("America/New_York", naive) == -240
    in_tokyo = JANUARY.astimezone(timezone(timedelta(hours=9)))
    assert offset_minutes("America/New_York", in_tokyo) == -300


def test_offset_minutes_of_unknown_zone() -> None:
    with pytest.raises(TimezoneError):
        offset_minutes("Mars/Olympus", JULY)


def test_is_fixed_offset() -> None:
    assert is_fixed_offset("+09:00")
    assert not is_fixed_offset("Asia/Tokyo")


@pytest.mark.parametrize(
    ("minutes", "text"), [(0, "+00:00"), (540, "+09:00"), (-330, "-05:30"), (-720, "-12:00")]
)
def test_format_offset(minutes: int, text: str) -> None:
    assert format_offset(minutes) == text


valid_offsets = st.integers(MIN_OFFSET_MINUTES // 15, MAX_OFFSET_MINUTES // 15).map(
    lambda quarter: quarter * 15
)


@given(valid_offsets)
def test_offset_format_parse_round_trip(minutes: int) -> None:
    text = format_offset(minutes)
    assert parse_offset(text) == minutes
    assert normalise_timezone(text) == text
    assert offset_minutes(text, JULY) == minutes


@given(
    valid_offsets, st.sampled_from(["{sign}{h}", "UTC{sign}{h}:{m:02d}", "{sign}{h:02d}{m:02d}"])
)
def test_other_spellings_normalise(minutes: int, spelling: str) -> None:
    hours, mins = divmod(abs(minutes), 60)
    if spelling == "{sign}{h}" and mins:
        spelling = "{sign}{h}:{m:02d}"
    text = spelling.format(sign="-" if minutes < 0 else "+", h=hours, m=mins)
    assert normalise_timezone(text) == format_offset(minutes)


@given(st.integers(-24 * 60, 24 * 60))
def test_offsets_outside_the_rules_are_refused(minutes: int) -> None:
    valid = MIN_OFFSET_MINUTES <= minutes <= MAX_OFFSET_MINUTES and minutes % 15 == 0
    if valid:
        assert parse_offset(format_offset(minutes)) == minutes
    else:
        with pytest.raises(TimezoneError):
            parse_offset(format_offset(minutes))
