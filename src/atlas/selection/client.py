"""The facts about a client that the traffic-node choice looks at (design section 3)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from enum import StrEnum


class ClientKind(StrEnum):
    """Client kinds (design section 1: customer client, representative console, …)."""

    SUPPORT_CUSTOMER = "support_customer"
    REPRESENTATIVE = "representative"
    PRESENTATION_ATTENDEE = "presentation_attendee"


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """A client as the master sees it.

    ``ip`` is the source address of the client's control connection. An IPv4-mapped
    IPv6 address (``::ffff:10.20.1.5``, what a dual-stack socket reports for an IPv4
    peer) is treated as the IPv4 address it carries: ``lookup_ip`` holds the normalised
    text and ``ip_version`` its family. ``utc_offset_minutes`` is what the client
    reported (east of UTC positive), ``None`` if it reported nothing.
    """

    ip: str
    utc_offset_minutes: int | None = None
    kind: ClientKind = ClientKind.SUPPORT_CUSTOMER
    lookup_ip: str = field(init=False, repr=False, compare=False)
    ip_version: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lookup_ip, ip_version = _normalise_ip(self.ip)
        object.__setattr__(self, "lookup_ip", lookup_ip)
        object.__setattr__(self, "ip_version", ip_version)


_MAPPED_PREFIX = bytes(10) + b"\xff\xff"
_ZERO_96 = bytes(12)


def _normalise_ip(text: str) -> tuple[str, int]:
    """Validate an address; IPv4-mapped IPv6 → IPv4; IPv6 in canonical form, no zone.

    ``inet_pton`` rather than :mod:`ipaddress`: this runs for every routed client and is
    several times faster (see docs/performance.md).
    """
    try:
        if ":" not in text:
            socket.inet_pton(socket.AF_INET, text)
            return text, 4
        packed = socket.inet_pton(socket.AF_INET6, text.split("%", 1)[0])
    except (OSError, UnicodeError):
        raise ValueError(f"{text!r} is not an IP address") from None
    if packed[:12] == _MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, packed[12:]), 4
    if packed[:12] == _ZERO_96:  # inet_ntop would write ::a.b.c.d
        return str(ipaddress.IPv6Address(packed)), 6
    return socket.inet_ntop(socket.AF_INET6, packed), 6
