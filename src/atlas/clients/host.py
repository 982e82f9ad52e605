"""What a client says about the machine it runs on (the ``hello`` message).

The guide's ``get_connected_clients`` lists each client's hostname, platform and
timezone offset, and the ``timezone`` method routes a client by "the time zone setting of
the machine hosting the client" (guide, "Methods for Choosing Traffic Nodes"). The
cluster test routes a test client to a chosen node "by modifying the settings of the
client's local host" (guide, "Perform a … Cluster Test"): here that is ``--tz-offset``
(the reported offset) and ``--source-address`` (the source network the master sees).
"""

from __future__ import annotations

import ipaddress
import platform
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from atlas import SOFTWARE_VERSION
from atlas.model.timezones import (
    TimezoneError,
    format_offset,
    normalise_timezone,
    offset_minutes,
    parse_offset,
)

MAX_OFFSET_MINUTES = 18 * 60  # what the control protocol accepts (Hello.utc_offset_minutes)


def local_utc_offset_minutes(now: float | None = None) -> int:
    """This machine's current offset from UTC in minutes east (DST included)."""
    moment = datetime.fromtimestamp(time.time() if now is None else now).astimezone()
    offset = moment.utcoffset()
    return 0 if offset is None else int(offset.total_seconds() // 60)


def parse_tz_offset(text: str, now: datetime | None = None) -> int:
    """``--tz-offset`` → minutes east of UTC.

    An offset (``+09:00``, ``-05:30``, ``+0530``, ``UTC+9``; ``0``, ``Z`` or ``UTC`` for
    UTC itself) or an IANA zone (``Asia/Tokyo``: its offset right now, DST included, as
    a machine set to that zone would report). Raises :class:`ValueError` saying what is
    accepted.
    """
    stripped = text.strip()
    if stripped in ("0", "Z", "z", "UTC", "utc"):
        return 0
    try:
        minutes = parse_offset(stripped)
        if minutes is None:
            normalise_timezone(stripped)
            minutes = offset_minutes(stripped, now or datetime.now(UTC))
    except TimezoneError as exc:
        raise ValueError(f"--tz-offset {text!r}: {exc}") from None
    return minutes


def check_source_address(text: str) -> str:
    """``--source-address``: an IP address this machine has (checked by binding to it)."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"--source-address {text!r}: not an IP address") from None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError as exc:
            raise ValueError(
                f"--source-address {address}: not an address of this machine ({exc.strerror})"
            ) from None
    return str(address)


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What ``hello`` reports: the machine, and the offset it claims."""

    hostname: str
    platform: str
    utc_offset_minutes: int
    software_version: str = SOFTWARE_VERSION

    @classmethod
    def local(cls, *, tz_offset_minutes: int | None = None,
              hostname: str | None = None) -> HostFacts:
        """This machine; ``tz_offset_minutes`` overrides the real offset (cluster test)."""
        offset = local_utc_offset_minutes() if tz_offset_minutes is None else tz_offset_minutes
        if not -MAX_OFFSET_MINUTES <= offset <= MAX_OFFSET_MINUTES:
            raise ValueError(f"UTC offset {format_offset(offset)} is outside ±18:00")
        name = (hostname or socket.gethostname() or "localhost")[:255]
        system = f"{platform.system() or 'unknown'} {platform.machine()}".strip()[:64]
        return cls(hostname=name, platform=system, utc_offset_minutes=offset)
