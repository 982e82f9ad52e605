"""Network Address Prefixes (guide, "Configure the Traffic Nodes": "one per line, in the
form of ip.add.re.ss[/netmask] … dotted-decimal format or as an integer bitmask. If
netmask is omitted, a single IP address is assumed")."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlas.model.prefixes import (
    PrefixError,
    netmask_to_prefixlen,
    parse_prefix,
    parse_prefixes,
    prefixlen_to_netmask,
)

GOOD = [
    ("10.20.0.0/16", "10.20.0.0/16"),
    ("10.20.0.0/255.255.0.0", "10.20.0.0/16"),
    ("10.20.30.40", "10.20.30.40/32"),
    ("10.20.30.40/32", "10.20.30.40/32"),
    ("10.20.30.40/255.255.255.255", "10.20.30.40/32"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("0.0.0.0/0.0.0.0", "0.0.0.0/0"),
    ("192.168.1.0/255.255.255.128", "192.168.1.0/25"),
    ("  172.16.0.0 / 12  ", "172.16.0.0/12"),
    ("2001:db8::/32", "2001:db8::/32"),
    ("2001:DB8:0:0::/48", "2001:db8::/48"),
    ("2001:db8::1", "2001:db8::1/128"),
    ("::/0", "::/0"),
    ("10.1.0.0/016", "10.1.0.0/16"),
]


@pytest.mark.parametrize(("line", "stored"), GOOD)
def test_good_prefixes(line: str, stored: str) -> None:
    result = parse_prefixes(line)
    assert result.prefixes == (stored,)
    assert result.notices == []


BAD = [
    ("10.0.0.0/33", "prefix length 33 is out of range: expected 0–32 for IPv4"),
    ("2001:db8::/129", "expected 0–128 for IPv6"),
    ("10.0.0.0/255.0.255.0", "is not contiguous"),
    ("10.0.0.0/255.255.0.1", "is not contiguous"),
    ("10.0.0.0/0.0.255.255", "wildcard (host) mask; the netmask for that is 255.255.0.0 (or /16)"),
    ("10.0.0.0/255.255.256.0", "not a dotted-decimal netmask"),
    ("10.0.0.0/", "the netmask after '/' is missing"),
    ("10.0.0.0/-8", "neither dotted-decimal"),
    ("10.0.0.0/abc", "neither dotted-decimal"),
    ("10.0.0.0/8/8", "at most one '/'"),
    ("10.0.0.256", "not an IPv4 or IPv6 address"),
    ("10.0.0", "not an IPv4 or IPv6 address"),
    ("010.0.0.0/8", "not an IPv4 or IPv6 address"),
    ("intranet.example.com/24", "'intranet.example.com' before '/' is not an IPv4"),
    ("2001:db8::/ffff:ffff::", "neither dotted-decimal"),
    ("2001:db8::/255.255.0.0", "IPv6 prefixes take an integer prefix length"),
    ("fe80::1%eth0/64", "zone index"),
    ("10.0.0.0/١٦", "neither dotted-decimal"),  # non-ASCII digits
    ("1" * 200, "too long"),
]


@pytest.mark.parametrize(("line", "reason"), BAD)
def test_bad_prefixes_name_line_and_text(line: str, reason: str) -> None:
    with pytest.raises(PrefixError) as caught:
        parse_prefixes(f"10.9.0.0/16\n\n{line}")
    [problem] = caught.value.problems
    assert problem.line == 3
    assert problem.text == line.strip()
    assert reason in problem.reason
    assert str(caught.value).startswith("line 3: ")


def test_every_bad_line_is_reported() -> None:
    with pytest.raises(PrefixError) as caught:
        parse_prefixes(["bogus", "10.0.0.0/8", "10.0.0.0/99"])
    assert [p.line for p in caught.value.problems] == [1, 3]
    assert "line 1: 'bogus'" in str(caught.value)
    assert "line 3: '10.0.0.0/99'" in str(caught.value)


def test_long_lines_are_shortened_in_messages() -> None:
    with pytest.raises(PrefixError) as caught:
        parse_prefixes("x" * 500)
    assert len(str(caught.value)) < 150


def test_host_bits_are_cleared_with_a_notice() -> None:
    result = parse_prefixes("10.9.0.0/16\n10.1.2.3/16")
    assert result.prefixes == ("10.9.0.0/16", "10.1.0.0/16")
    assert result.notices == ["line 2: 10.1.2.3/16 has host bits set; stored as 10.1.0.0/16"]


def test_duplicates_are_folded_with_a_notice() -> None:
    result = parse_prefixes(["10.0.0.0/8", "192.0.2.0/24", "10.0.0.0/255.0.0.0"])
    assert result.prefixes == ("10.0.0.0/8", "192.0.2.0/24")
    assert result.notices == ["line 3: 10.0.0.0/255.0.0.0 repeats line 1 (10.0.0.0/8); folded"]


@pytest.mark.parametrize("empty", ["", "\n\n  \n", [], ["", "  "]])
def test_empty_field(empty: str | list[str]) -> None:
    assert parse_prefixes(empty).prefixes == ()


def test_text_and_list_agree() -> None:
    lines = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]
    assert parse_prefixes("\r\n".join(lines)) == parse_prefixes(lines)


def test_parse_prefix_returns_a_network() -> None:
    assert parse_prefix("10.1.2.3/255.255.0.0") == ipaddress.ip_network("10.1.0.0/16")


@pytest.mark.parametrize(
    ("mask", "length"),
    [("0.0.0.0", 0), ("128.0.0.0", 1), ("255.255.240.0", 20), ("255.255.255.255", 32)],  # noqa: S104
)
def test_netmask_table(mask: str, length: int) -> None:
    assert netmask_to_prefixlen(mask) == length
    assert prefixlen_to_netmask(length) == mask


@pytest.mark.parametrize("length", [-1, 33])
def test_prefixlen_out_of_range(length: int) -> None:
    with pytest.raises(ValueError, match="expected 0–32"):
        prefixlen_to_netmask(length)


# --- properties ---------------------------------------------------------------------

ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@st.composite
def prefix_lines(draw: st.DrawFn) -> str:
    """A valid line in any of the guide's forms, host bits possibly set."""
    address = draw(st.one_of(ipv4, ipv6))
    form = draw(st.sampled_from(["bare", "integer", "dotted"]))
    if form == "bare":
        return str(address)
    length = draw(st.integers(0, address.max_prefixlen))
    if form == "dotted" and address.version == 4:
        return f"{address}/{prefixlen_to_netmask(length)}"
    return f"{address}/{length}"


@given(prefix_lines())
def test_agrees_with_ipaddress(line: str) -> None:
    result = parse_prefixes(line)
    assert result.prefixes == (str(ipaddress.ip_network(line, strict=False)),)
    host_bits_set = (
        ipaddress.ip_address(line.partition("/")[0])
        != ipaddress.ip_network(line, strict=False).network_address
    )
    assert bool(result.notices) == host_bits_set


@given(st.lists(prefix_lines(), max_size=20))
def test_normalised_prefixes_round_trip(lines: list[str]) -> None:
    first = parse_prefixes(lines)
    again = parse_prefixes(first.prefixes)
    assert again.prefixes == first.prefixes
    assert again.notices == []
    assert len(set(first.prefixes)) == len(first.prefixes)


@given(st.integers(0, 32))
def test_dotted_and_integer_masks_agree(length: int) -> None:
    mask = prefixlen_to_netmask(length)
    assert netmask_to_prefixlen(mask) == length
    dotted = parse_prefixes(f"10.0.0.0/{mask}").prefixes
    assert dotted == parse_prefixes(f"10.0.0.0/{length}").prefixes
    assert str(ipaddress.IPv4Network(f"0.0.0.0/{length}").netmask) == mask


@given(st.integers(0, 2**32 - 1))
def test_only_contiguous_masks_are_netmasks(value: int) -> None:
    mask = str(ipaddress.IPv4Address(value))
    if re.fullmatch("1*0*", f"{value:032b}"):
        assert prefixlen_to_netmask(netmask_to_prefixlen(mask)) == mask
    else:
        with pytest.raises(ValueError, match="netmask"):
            netmask_to_prefixlen(mask)
