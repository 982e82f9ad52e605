"""Timezone Offset of a traffic node: a fixed UTC offset or an IANA zone name.

Guide, "Configure the Traffic Nodes": the offset is "relative to Coordinated Universal
Time (UTC). For countries or zones that use Daylight Saving Time (DST), enter the currently
active time zone for the node in question. The cluster offsets for DST automatically."
Here a node either has a fixed offset (``+09:00``, never changes) or an IANA zone
(``America/New_York``), whose *current* offset follows DST via :mod:`zoneinfo`.

Pure functions; the only outside input is the time zone database.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime
from functools import lru_cache

MIN_OFFSET_MINUTES = -12 * 60  # UTC−12:00
MAX_OFFSET_MINUTES = 14 * 60  # UTC+14:00
OFFSET_MINUTE_STEPS = (0, 15, 30, 45)

# Keys zoneinfo lists that do not name a place: host-dependent or meaningless.
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})

_OFFSET_FORMS = (
    re.compile(r"(?:utc)?\s*([+\-−])\s*(\d{1,2})(?::(\d{2}))?", re.IGNORECASE),
    re.compile(r"(?:utc)?\s*([+\-−])\s*(\d{2})(\d{2})", re.IGNORECASE),
)

_EXPECTED = (
    "expected an offset from UTC−12:00 to UTC+14:00 such as +09:00, -05:30 or UTC+9, "
    "or an IANA zone name such as Asia/Tokyo (DST is then applied automatically)"
)


class TimezoneError(ValueError):
    """A Timezone Offset value that is neither a valid offset nor a known zone."""


def format_offset(minutes: int) -> str:
    """``540`` → ``+09:00``, ``-330`` → ``-05:30``, ``0`` → ``+00:00``."""
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


def parse_offset(text: str) -> int | None:
    """Minutes east of UTC for an offset such as ``+09:00``, ``+0900``, ``+9``, ``UTC-5:30``.

    Returns None when ``text`` is not written as an offset (it may be a zone name);
    raises TimezoneError when it is an offset outside the rules.
    """
    stripped = text.strip()
    for form in _OFFSET_FORMS:
        match = form.fullmatch(stripped)
        if match is not None:
            break
    else:
        return None
    sign_text, hours_text, minutes_text = match.groups()
    hours, minutes = int(hours_text), int(minutes_text or "0")
    if minutes not in OFFSET_MINUTE_STEPS:
        raise TimezoneError(
            f"timezone offset {stripped!r} has {minutes} minutes: expected minutes 00, 15, 30 or 45"
        )
    total = (hours * 60 + minutes) * (-1 if sign_text in "-−" else 1)
    if not MIN_OFFSET_MINUTES <= total <= MAX_OFFSET_MINUTES:
        raise TimezoneError(
            f"timezone offset {stripped!r} is out of range: expected UTC−12:00 to UTC+14:00"
        )
    return total


def normalise_timezone(text: str) -> str:
    """Canonical form of a Timezone Offset: ``+09:00`` for offsets, the IANA key for zones.

    Zone names are matched ignoring case (``asia/tokyo`` → ``Asia/Tokyo``).
    Raises TimezoneError saying what is expected.
    """
    stripped = text.strip()
    if not stripped:
        raise TimezoneError(f"timezone must not be empty: {_EXPECTED}")
    minutes = parse_offset(stripped)
    if minutes is not None:
        return format_offset(minutes)
    zone = _zone_keys().get(stripped.casefold())
    if zone is None:
        raise TimezoneError(f"{stripped!r} is not a known timezone: {_EXPECTED}")
    return zone


def is_fixed_offset(tz: str) -> bool:
    """True for a fixed offset (``+09:00``), False for an IANA zone that may follow DST."""
    return parse_offset(tz) is not None


def offset_minutes(tz: str, at_utc: datetime) -> int:
    """The node's UTC offset in minutes at the instant ``at_utc`` (IANA zones follow DST).

    A naive ``at_utc`` is taken as UTC. Raises TimezoneError for an unknown ``tz``.
    """
    minutes = parse_offset(tz)
    if minutes is not None:
        return minutes
    zone = zoneinfo.ZoneInfo(normalise_timezone(tz))
    instant = at_utc.replace(tzinfo=UTC) if at_utc.tzinfo is None else at_utc
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # a ZoneInfo always knows its offset
    return round(offset.total_seconds() / 60)


@lru_cache(maxsize=1)
def _zone_keys() -> dict[str, str]:
    """Case-folded IANA key → key, from the system database or the ``tzdata`` package."""
    return {key.casefold(): key for key in zoneinfo.available_timezones() if key not in _NOT_ZONES}
