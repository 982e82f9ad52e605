"""Network Address Prefixes: longest-prefix match over the viable traffic nodes.

Design section 3, rule 2 (guide: "Network Address Prefixes"): among viable nodes whose
prefixes contain the client's IP address, those with the longest matching prefix win;
equal length → one of them at random. Two different prefixes of the same length cannot
both contain one address, so a tie is always one prefix configured on several nodes.

The prefixes live in two radix trees (``pytricia``), IPv4 and IPv6. A lookup takes the
longest containing prefix; if none of its nodes is viable it moves to the next shorter
containing prefix (the tree's parent), and so on. The index depends only on the
configuration, so it is built once per configuration revision.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import pytricia

from atlas.model.config import ClusterConfig, TrafficNode

_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"
_ZERO_96 = bytes(12)  # inet_ntop writes these as ::a.b.c.d; ipaddress does not


def normalise_prefix(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``addr[/mask]`` → network; host bits dropped; IPv4-mapped IPv6 → IPv4.

    Clients with IPv4-mapped addresses are matched as IPv4, so a prefix written in the
    mapped form (``::ffff:10.0.0.0/104``) must land in the IPv4 tree to match them.
    """
    net = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED_V4):
        v4 = net.network_address.ipv4_mapped
        assert v4 is not None
        return ipaddress.IPv4Network((v4, net.prefixlen - 96))
    return net


def prefix_key(text: str) -> tuple[str, int]:
    """The index key (canonical CIDR text) and prefix length of one configured prefix.

    Same result as ``str(normalise_prefix(text))``; CIDR text (what the configuration
    stores) takes a path through ``inet_pton`` about ten times faster than
    :mod:`ipaddress`, which matters when a new revision with 100,000 prefixes arrives.
    """
    address, slash, length_text = text.strip().partition("/")
    if slash and length_text.isdigit():
        try:
            if ":" not in address:
                family, bits = socket.AF_INET, 32
                packed = socket.inet_pton(family, address)
            else:
                family, bits = socket.AF_INET6, 128
                packed = socket.inet_pton(family, address)
                if packed[:12] in (_MAPPED_PREFIX, _ZERO_96):
                    raise ValueError("IPv4-mapped or -compatible: take the slow way")
        except (OSError, ValueError):
            pass
        else:
            length = int(length_text)
            if length <= bits:
                value = int.from_bytes(packed, "big")
                value &= ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)
                network = socket.inet_ntop(family, value.to_bytes(bits // 8, "big"))
                return f"{network}/{length}", length
    net = normalise_prefix(text)
    return str(net), net.prefixlen


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """The winning prefix for one client and the viable nodes that carry it.

    ``nodes`` are the candidates before the random draw (configuration order).
    ``matches`` counts the configured prefixes containing the client address.
    ``skipped`` lists longer containing prefixes passed over for having no viable node.
    """

    prefix: str
    nodes: tuple[str, ...]
    matches: int
    skipped: tuple[str, ...] = ()

    @property
    def length(self) -> int:
        return int(self.prefix.rpartition("/")[2])

    def describe(self) -> str:
        """``prefix 10.20.0.0/16 (longest of 3 matches)`` and any ties or skips."""
        if self.matches == 1:
            text = f"prefix {self.prefix} (only match"
        else:
            text = f"prefix {self.prefix} (longest of {self.matches} matches"
        if self.skipped:
            text += f"; skipped {', '.join(self.skipped)}: no viable node"
        text += ")"
        if len(self.nodes) > 1:
            text += f", random among {len(self.nodes)} tied nodes"
        return text


class PrefixIndex:
    """Radix trees of every traffic node's prefixes for one configuration revision.

    Each tree value is ``(nodes, depth)``: the names of the nodes that list this prefix
    (configuration order, no repeats) and how many shorter configured prefixes contain
    it, so the number of matches is known without walking the tree.
    """

    __slots__ = ("_v4", "_v6", "prefix_count", "revision")

    def __init__(self, revision: int) -> None:
        self.revision = revision
        self._v4 = pytricia.PyTricia(32)
        self._v6 = pytricia.PyTricia(128)
        self.prefix_count = 0

    @classmethod
    def build(cls, config: ClusterConfig) -> PrefixIndex:
        return cls.from_nodes(config.traffic_nodes, revision=config.revision)

    @classmethod
    def from_nodes(cls, nodes: Iterable[TrafficNode], *, revision: int = 0) -> PrefixIndex:
        index = cls(revision)
        owners: dict[str, list[str]] = {}
        lengths: dict[str, int] = {}
        seen: dict[str, str] = {}
        for node in nodes:
            for text in node.prefixes:
                key = seen.get(text)
                if key is None:
                    key, lengths_of_key = prefix_key(text)
                    seen[text] = key
                    lengths[key] = lengths_of_key
                holders = owners.setdefault(key, [])
                if node.name not in holders:
                    holders.append(node.name)
        for key, names in owners.items():
            index._tree(key).insert(key, (tuple(names), 0))
        # Parents before children, so each depth is one more than its parent's.
        for key in sorted(owners, key=lengths.__getitem__):
            tree = index._tree(key)
            parent = tree.parent(key)
            if parent is not None:
                tree[key] = (tree[key][0], tree[parent][1] + 1)
        for tree in (index._v4, index._v6):
            tree.freeze()
        index.prefix_count = len(owners)
        return index

    def _tree(self, key: str) -> pytricia.PyTricia:
        return self._v6 if ":" in key else self._v4

    def longest_key(self, lookup_ip: str, ip_version: int) -> str | None:
        """The longest configured prefix containing the address, viable or not."""
        key: str | None = (self._v4 if ip_version == 4 else self._v6).get_key(lookup_ip)
        return key

    def match_key(self, key: str, viable: frozenset[str]) -> PrefixMatch | None:
        """From the longest containing prefix ``key``, the first one with a viable node.

        Depends only on ``key`` and ``viable``, so callers may keep the result for as
        long as the viable set stays the same.
        """
        tree = self._tree(key)
        names, depth = tree[key]
        matches = depth + 1
        skipped: list[str] = []
        while True:
            if len(names) == 1:
                if names[0] in viable:
                    return PrefixMatch(key, names, matches, tuple(skipped))
            else:
                candidates = tuple(n for n in names if n in viable)
                if candidates:
                    return PrefixMatch(key, candidates, matches, tuple(skipped))
            skipped.append(key)
            key = tree.parent(key)
            if key is None:
                return None
            names = tree[key][0]

    def match(
        self, lookup_ip: str, ip_version: int, viable: frozenset[str]
    ) -> PrefixMatch | None:
        """The longest containing prefix with a viable node, and its viable nodes.

        ``lookup_ip``/``ip_version`` come from :class:`~atlas.selection.client.ClientFacts`
        (already normalised: IPv4-mapped addresses are IPv4).
        """
        key = self.longest_key(lookup_ip, ip_version)
        return None if key is None else self.match_key(key, viable)
