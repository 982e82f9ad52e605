"""Network Address Prefixes of a traffic node: parsing and normalisation.

Guide, "Configure the Traffic Nodes": "Enter network address prefixes, one per line, in the
form of ``ip.add.re.ss[/netmask]``. Netmask is optional and can be given in either
dotted-decimal format or as an integer bitmask. If netmask is omitted, a single IP address
is assumed." IPv6 prefixes are ours (integer prefix lengths only).

Everything here is pure: text in, normalised CIDR strings (``10.20.0.0/16``) and notices
for the operator out. The model stores the normalised strings; the web form shows the
notices ("line 2: 10.1.2.3/16 has host bits set; stored as 10.1.0.0/16").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4_ALL_ONES = (1 << 32) - 1
_MAX_SHOWN = 60  # characters of an offending line quoted back in a message


@dataclass(frozen=True)
class PrefixParseResult:
    """Normalised prefixes (input order, duplicates folded) and notices for the operator."""

    prefixes: tuple[str, ...]
    notices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PrefixProblem:
    """One refused line: its 1-based number, its text and why it was refused."""

    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {_shown(self.text)!r}: {self.reason}"


class PrefixError(ValueError):
    """Some lines are not prefixes; ``problems`` names every one of them."""

    def __init__(self, problems: Sequence[PrefixProblem]) -> None:
        self.problems: tuple[PrefixProblem, ...] = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def netmask_to_prefixlen(mask: str) -> int:
    """Length of a dotted-decimal IPv4 netmask (``255.255.240.0`` → 20).

    Raises ValueError if ``mask`` is not dotted-decimal or its 1-bits are not contiguous.
    """
    try:
        value = int(ipaddress.IPv4Address(mask))
    except ValueError:
        raise ValueError(
            f"netmask {_shown(mask)!r} is not a dotted-decimal netmask such as 255.255.0.0"
        ) from None
    host_bits = value ^ _IPV4_ALL_ONES
    if host_bits & (host_bits + 1) == 0:
        return 32 - host_bits.bit_length()
    if value & (value + 1) == 0:  # a wildcard (host) mask such as 0.0.255.255
        length = 32 - value.bit_length()
        raise ValueError(
            f"netmask {mask} looks like a wildcard (host) mask; the netmask for that is "
            f"{prefixlen_to_netmask(length)} (or /{length})"
        )
    raise ValueError(
        f"netmask {mask} is not contiguous: its 1-bits must all come first, as in 255.255.240.0"
    )


def prefixlen_to_netmask(length: int) -> str:
    """Dotted-decimal IPv4 netmask for a prefix length 0–32 (20 → ``255.255.240.0``)."""
    if not 0 <= length <= 32:
        raise ValueError(f"IPv4 prefix length {length} is out of range: expected 0–32")
    return str(ipaddress.IPv4Address(_IPV4_ALL_ONES ^ (_IPV4_ALL_ONES >> length)))


def parse_prefix(text: str) -> IPNetwork:
    """One ``ip.add.re.ss[/netmask]`` entry → its network (host bits cleared).

    Raises ValueError with a reason an operator can act on.
    """
    entry = text.strip()
    if len(entry) > 100:
        raise ValueError("too long to be a network prefix")
    if entry.count("/") > 1:
        raise ValueError("expected ip.add.re.ss[/netmask] with at most one '/'")
    address_text, slash, mask_text = (part.strip() for part in entry.partition("/"))
    if "%" in address_text:
        raise ValueError("a zone index ('%…') is not allowed in a network prefix")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        what = f"{_shown(address_text)!r} before '/' is" if slash else "this is"
        raise ValueError(
            f"{what} not an IPv4 or IPv6 address: expected ip.add.re.ss[/netmask] "
            "such as 10.20.0.0/16 or 10.20.0.0/255.255.0.0"
        ) from None
    if not slash:
        length: int = address.max_prefixlen
    elif not mask_text:
        raise ValueError("the netmask after '/' is missing: expected e.g. /16 or /255.255.0.0")
    elif mask_text.isascii() and mask_text.isdecimal():
        length = int(mask_text)
        if length > address.max_prefixlen:
            raise ValueError(
                f"prefix length {length} is out of range: "
                f"expected 0–{address.max_prefixlen} for IPv{address.version}"
            )
    elif "." in mask_text:
        if address.version == 6:
            raise ValueError(
                "IPv6 prefixes take an integer prefix length (e.g. /64), not a dotted netmask"
            )
        length = netmask_to_prefixlen(mask_text)
    else:
        raise ValueError(
            f"netmask {_shown(mask_text)!r} is neither dotted-decimal (255.255.0.0) "
            "nor an integer (16)"
        )
    return ipaddress.ip_network((address, length), strict=False)


def parse_prefixes(text_or_lines: str | Iterable[str]) -> PrefixParseResult:
    """Parse the Network Address Prefixes field: text with one prefix per line, or a list.

    Blank lines are skipped (they still count for line numbers, as in a text area).
    Host bits are cleared and duplicates folded, each with a notice. Raises PrefixError
    naming every bad line by number and text.
    """
    lines = text_or_lines.splitlines() if isinstance(text_or_lines, str) else text_or_lines
    prefixes: dict[str, int] = {}  # normalised CIDR → line that first gave it
    notices: list[str] = []
    problems: list[PrefixProblem] = []
    for number, raw in enumerate(lines, start=1):
        if not isinstance(raw, str):
            problems.append(PrefixProblem(number, repr(raw), "expected text"))
            continue
        entry = raw.strip()
        if not entry:
            continue
        try:
            network = parse_prefix(entry)
        except ValueError as exc:
            problems.append(PrefixProblem(number, entry, str(exc)))
            continue
        cidr = str(network)
        address_text = entry.partition("/")[0].strip()
        if ipaddress.ip_address(address_text) != network.network_address:
            notices.append(f"line {number}: {entry} has host bits set; stored as {cidr}")
        if cidr in prefixes:
            notices.append(f"line {number}: {entry} repeats line {prefixes[cidr]} ({cidr}); folded")
            continue
        prefixes[cidr] = number
    if problems:
        raise PrefixError(problems)
    return PrefixParseResult(prefixes=tuple(prefixes), notices=notices)


def _shown(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"
