"""The local demo's DNS zone: pure data, and what it answers to one client (design §9).

The demo stands in for a real deployment's DNS: A/AAAA records for every node and the
site hostname, the shared name of the ``a_record`` method answered **per client
network** as a geo-DNS would (guide, "A Record Lookup": customers in the US get one
address for ``traffic1.support.example.com``, customers in Europe another), and SRV
records with priorities and weights for the ``srv`` method (RFC 2782), optionally also
per client network.

A zone is built from a plain dict (the JSON zone file the demo writes; TOML of the same
shape works after ``tomllib.load``)::

    {
      "origin": "support.example.test",
      "ttl": 5,
      "records": {
        "@":           {"A": ["127.0.1.1"]},
        "master1":     {"A": ["127.0.1.1"]},
        "us-traffic1": {"A": ["127.0.2.1"], "AAAA": ["fd00::2:1"]},
        "_atlas._tcp": {"SRV": [{"priority": 10, "weight": 60, "port": 8443,
                                 "target": "us-traffic1"}]}
      },
      "client_networks": {"us": ["127.10.0.0/16"], "asia": ["127.20.0.0/16"]},
      "default_region": null,
      "geo_records": {
        "traffic": {"us": {"A": ["127.0.2.1", "127.0.2.2"]},
                    "asia": {"A": ["127.0.3.1"]}}
      }
    }

* Names are relative to the origin (``@`` is the origin itself); a name ending in ``.``,
  or one that already ends in the origin, is taken as absolute and must lie in the zone.
* ``client_networks`` are the geo rules: region → client networks, written like a
  traffic node's Network Address Prefixes (``addr[/mask]``, mask as an integer or
  dotted-decimal, IPv6 too). A query's *source address* picks the region of the
  **longest** containing network (a radix tree, as for node prefixes).
* ``geo_records`` are names answered per region. A source in no client network, or in a
  region the name has no records for, gets the ``default_region``'s records, or — when
  there is none — the records of every region together.
* SOA and NS records at the origin are made up (``ns.<origin>``, ``hostmaster.<origin>``);
  give ``ns`` an A record in ``records`` if a client should be able to reach it by name.

:func:`lookup` answers one question (name, type, source address) with the rcode, the
records for each section and, for geo names, *why* (which network and region matched).
It knows nothing of wire formats or sockets: :mod:`atlas.demo.dns_server` does those.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import dns.exception
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytricia

from atlas.model.prefixes import parse_prefix

DEFAULT_ORIGIN = "support.example.test"
DEFAULT_TTL = 5
_MAX_TTL = 2**31 - 1  # RFC 2181 §8
_ZONE_KEYS = frozenset(
    {"origin", "ttl", "serial", "records", "client_networks", "default_region", "geo_records"}
)
_SRV_KEYS = frozenset({"priority", "weight", "port", "target"})
_TYPES = ("A", "AAAA", "SRV")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


class ZoneError(ValueError):
    """The zone data is wrong; ``problems`` names every mistake with where it is."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class SrvTarget:
    """The data of one SRV record (RFC 2782). ``target`` is absolute (``….``) or ``.``."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class RecordSet:
    """The records of one owner name (or, for a geo name, of one region)."""

    a: tuple[str, ...] = ()
    aaaa: tuple[str, ...] = ()
    srv: tuple[SrvTarget, ...] = ()

    def merged(self, other: RecordSet) -> RecordSet:
        """Both sets' records, first occurrence kept, in order."""
        return RecordSet(
            a=_unique(self.a + other.a),
            aaaa=_unique(self.aaaa + other.aaaa),
            srv=_unique(self.srv + other.srv),
        )


@dataclass(frozen=True, slots=True)
class GeoMatch:
    """Why a geo name was answered as it was, for one query source."""

    name: str
    source_ip: str
    network: str | None  # the longest client network containing the source
    region: str | None  # that network's region
    answered_from: str | None  # region whose records were given; None: every region's

    def describe(self) -> str:
        """``traffic.… from 127.10.0.5: in 127.10.0.0/16 (us) → us records``."""
        head = f"{self.name} from {self.source_ip}: "
        if self.network is None:
            head += "in no client network"
        else:
            head += f"in {self.network} ({self.region})"
        if self.answered_from is None:
            tail = "every region's records"
        elif self.answered_from == self.region:
            tail = f"{self.answered_from} records"
        else:
            why = "" if self.network is None else f"no {self.region} records; "
            tail = f"{why}default region {self.answered_from}"
        return f"{head} → {tail}"


@dataclass(frozen=True)
class Lookup:
    """The answer to one question: rcode, the records per section, and why (geo names)."""

    rcode: dns.rcode.Rcode
    authoritative: bool
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    additional: tuple[dns.rrset.RRset, ...] = ()
    geo: GeoMatch | None = None

    def describe(self) -> str:
        text = dns.rcode.to_text(self.rcode)
        if self.rcode == dns.rcode.NOERROR and not self.answer:
            text += " (no data)"
        if self.geo is not None:
            text += f"; {self.geo.describe()}"
        return text


@dataclass(frozen=True)
class DemoZone:
    """One authoritative zone for the demo. Build it with :meth:`from_dict`.

    ``client_networks`` are the geo rules as ``(network, region)`` pairs. Constructing a
    zone validates it (raises :class:`ZoneError`); the mappings are read-only.
    """

    origin: dns.name.Name
    records: Mapping[dns.name.Name, RecordSet] = field(default_factory=dict)
    client_networks: tuple[tuple[IPNetwork, str], ...] = ()
    geo_records: Mapping[dns.name.Name, Mapping[str, RecordSet]] = field(default_factory=dict)
    default_region: str | None = None
    ttl: int = DEFAULT_TTL
    serial: int = 1
    _index: _Index = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "records", MappingProxyType(dict(self.records)))
        object.__setattr__(
            self,
            "geo_records",
            MappingProxyType(
                {n: MappingProxyType(dict(by)) for n, by in self.geo_records.items()}
            ),
        )
        object.__setattr__(self, "client_networks", tuple(self.client_networks))
        problems = _validate(self)
        if problems:
            raise ZoneError(problems)
        object.__setattr__(self, "_index", _Index.build(self))

    # ---- building and writing ---------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DemoZone:
        """The zone described by ``data`` (see the module docstring); ZoneError if wrong."""
        return _ZoneReader(data).zone()

    @classmethod
    def from_json(cls, text: str) -> DemoZone:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ZoneError([f"not JSON: {exc}"]) from None
        if not isinstance(data, dict):
            raise ZoneError(["expected a JSON object at the top level"])
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: Path | str) -> DemoZone:
        """Read a JSON zone file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ZoneError([f"cannot read zone file {path}: {exc.strerror or exc}"]) from None
        return cls.from_json(text)

    def to_dict(self) -> dict[str, Any]:
        """The dict :meth:`from_dict` reads back to an equal zone."""
        regions: dict[str, list[str]] = {}
        for network, region in self.client_networks:
            regions.setdefault(region, []).append(str(network))
        return {
            "origin": self.origin.to_text(omit_final_dot=True),
            "ttl": self.ttl,
            "serial": self.serial,
            "records": {self._relative(n): self._rs_dict(rs) for n, rs in self.records.items()},
            "client_networks": regions,
            "default_region": self.default_region,
            "geo_records": {
                self._relative(n): {region: self._rs_dict(rs) for region, rs in by.items()}
                for n, by in self.geo_records.items()
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, path: Path | str) -> None:
        """Write the JSON zone file the ``dns_server`` subprocess reads."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    def _relative(self, name: dns.name.Name | str) -> str:
        if isinstance(name, str):
            if name == ".":
                return name
            name = dns.name.from_text(name)
        if name == self.origin:
            return "@"
        if name.is_subdomain(self.origin):
            return name.relativize(self.origin).to_text()
        return name.to_text()

    def _rs_dict(self, rs: RecordSet) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if rs.a:
            out["A"] = list(rs.a)
        if rs.aaaa:
            out["AAAA"] = list(rs.aaaa)
        if rs.srv:
            out["SRV"] = [
                {"priority": s.priority, "weight": s.weight, "port": s.port,
                 "target": self._relative(s.target)}
                for s in rs.srv
            ]
        return out

    # ---- questions ---------------------------------------------------------------------

    def name(self, text: str) -> dns.name.Name:
        """A name as the zone file writes it (relative, ``@`` or absolute) → absolute name."""
        return _absolute(text, self.origin)

    def client_region(self, source_ip: str) -> tuple[str, str] | None:
        """``(network, region)`` of the longest client network containing ``source_ip``."""
        return self._index.client_region(source_ip)

    def geo_answer(self, name: dns.name.Name, source_ip: str) -> tuple[RecordSet, GeoMatch]:
        """The records a geo name has for a query from ``source_ip``, and why."""
        by_region = self.geo_records[name]
        hit = self.client_region(source_ip)
        network, region = hit if hit is not None else (None, None)
        if region is not None and region in by_region:
            chosen: str | None = region
        else:
            chosen = self.default_region
        if chosen is not None and chosen in by_region:
            rs = by_region[chosen]
        elif chosen is not None:
            rs = RecordSet()
        else:
            rs = self._index.every_region[name]
        text = name.to_text(omit_final_dot=True)
        return rs, GeoMatch(text, source_ip, network, region, chosen)


def lookup(
    zone: DemoZone, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, source_ip: str
) -> Lookup:
    """Answer ``qname``/``qtype`` (class IN) for a query sent from ``source_ip``.

    Outside the zone: REFUSED, not authoritative (we are no resolver). Inside: AA set;
    a name with no records of ``qtype`` — or an empty non-terminal such as ``_tcp``
    above ``_atlas._tcp`` (RFC 8020) — is NOERROR with no answer, and a name that does
    not exist is NXDOMAIN; both carry the SOA in the authority section (RFC 2308 §3).
    SRV answers carry their in-zone targets' addresses as additional data (RFC 2782).
    ``ANY`` gets every record set of the name.
    """
    if not qname.is_subdomain(zone.origin):
        return Lookup(dns.rcode.REFUSED, authoritative=False)
    index = zone._index
    key = qname.canonicalize()
    if key not in index.owners:
        rcode = dns.rcode.NOERROR if key in index.empty_nonterminals else dns.rcode.NXDOMAIN
        return Lookup(rcode, authoritative=True, authority=(_soa(zone),))
    rs, geo = _records_at(zone, key, source_ip)
    answer: list[dns.rrset.RRset] = []
    if key == zone.origin:
        if _wants(qtype, dns.rdatatype.SOA):
            answer.append(_soa(zone))
        if _wants(qtype, dns.rdatatype.NS):
            answer.append(_ns(zone))
    answer += _rrsets(zone, qname, rs, qtype)
    if not answer:
        return Lookup(dns.rcode.NOERROR, True, authority=(_soa(zone),), geo=geo)
    additional: list[dns.rrset.RRset] = []
    seen: set[dns.name.Name] = set()
    targets: list[dns.name.Name] = []
    if _wants(qtype, dns.rdatatype.SRV):
        targets += [dns.name.from_text(s.target) for s in rs.srv]
    if any(r.rdtype == dns.rdatatype.NS for r in answer):
        targets.append(_ns_name(zone))
    for target in targets:
        t = target.canonicalize()
        if t in seen or t not in index.owners or not t.is_subdomain(zone.origin):
            continue
        seen.add(t)
        trs, _ = _records_at(zone, t, source_ip)
        additional += _rrsets(zone, target, RecordSet(a=trs.a, aaaa=trs.aaaa), dns.rdatatype.ANY)
    return Lookup(
        dns.rcode.NOERROR, True, tuple(answer), (), tuple(additional), geo=geo
    )


# ---- internals --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Index:
    """Lookup structures derived once from a zone (names are canonical: lower case)."""

    owners: frozenset[dns.name.Name]
    empty_nonterminals: frozenset[dns.name.Name]
    every_region: Mapping[dns.name.Name, RecordSet]
    trees: tuple[pytricia.PyTricia, pytricia.PyTricia]  # IPv4, IPv6: network → region

    @classmethod
    def build(cls, zone: DemoZone) -> _Index:
        owners = {n.canonicalize() for n in (*zone.records, *zone.geo_records, zone.origin)}
        ents: set[dns.name.Name] = set()
        for name in owners:
            parent = name
            while parent != zone.origin:
                parent = parent.parent()
                if parent not in owners:
                    ents.add(parent)
        every: dict[dns.name.Name, RecordSet] = {}
        for name, by_region in zone.geo_records.items():
            merged = RecordSet()
            for rs in by_region.values():
                merged = merged.merged(rs)
            every[name.canonicalize()] = merged
        v4, v6 = pytricia.PyTricia(32), pytricia.PyTricia(128)
        for network, region in zone.client_networks:
            (v4 if network.version == 4 else v6).insert(str(network), region)
        v4.freeze()
        v6.freeze()
        return cls(frozenset(owners), frozenset(ents), MappingProxyType(every), (v4, v6))

    def client_region(self, source_ip: str) -> tuple[str, str] | None:
        try:
            address = ipaddress.ip_address(source_ip.partition("%")[0])
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        tree = self.trees[0] if address.version == 4 else self.trees[1]
        key = tree.get_key(str(address))
        if key is None:
            return None
        return str(key), str(tree[key])


def _records_at(
    zone: DemoZone, key: dns.name.Name, source_ip: str
) -> tuple[RecordSet, GeoMatch | None]:
    """The records of an existing owner name (dns.name.Name keys ignore case)."""
    rs = zone.records.get(key)
    if rs is not None:
        return rs, None
    if key in zone.geo_records:
        return zone.geo_answer(key, source_ip)
    return RecordSet(), None


def _wants(qtype: dns.rdatatype.RdataType, rdtype: dns.rdatatype.RdataType) -> bool:
    return qtype in (rdtype, dns.rdatatype.ANY)


def _rrsets(
    zone: DemoZone, owner: dns.name.Name, rs: RecordSet, qtype: dns.rdatatype.RdataType
) -> list[dns.rrset.RRset]:
    out: list[dns.rrset.RRset] = []
    for rdtype, texts in (
        (dns.rdatatype.A, rs.a),
        (dns.rdatatype.AAAA, rs.aaaa),
        (dns.rdatatype.SRV, [f"{s.priority} {s.weight} {s.port} {s.target}" for s in rs.srv]),
    ):
        if texts and _wants(qtype, rdtype):
            out.append(_rrset(zone, owner, rdtype, texts))
    return out


def _rrset(
    zone: DemoZone, owner: dns.name.Name, rdtype: dns.rdatatype.RdataType, texts: Sequence[str]
) -> dns.rrset.RRset:
    return dns.rrset.from_text_list(owner, zone.ttl, dns.rdataclass.IN, rdtype, texts)


def _ns_name(zone: DemoZone) -> dns.name.Name:
    return dns.name.Name(("ns", *zone.origin.labels))


def _soa(zone: DemoZone) -> dns.rrset.RRset:
    hostmaster = dns.name.Name(("hostmaster", *zone.origin.labels))
    # serial refresh retry expire minimum; minimum is the negative-caching TTL (RFC 2308 §4)
    text = f"{_ns_name(zone)} {hostmaster} {zone.serial} 60 30 3600 {zone.ttl}"
    return _rrset(zone, zone.origin, dns.rdatatype.SOA, [text])


def _ns(zone: DemoZone) -> dns.rrset.RRset:
    return _rrset(zone, zone.origin, dns.rdatatype.NS, [_ns_name(zone).to_text()])


def _unique(items: tuple[T, ...]) -> tuple[T, ...]:
    return tuple(dict.fromkeys(items))


def _absolute(text: str, origin: dns.name.Name) -> dns.name.Name:
    """Zone-file name → absolute name (raises ValueError / dns.exception.DNSException)."""
    text = text.strip()
    if text == "@":
        return origin
    if text.endswith("."):
        return dns.name.from_text(text)
    as_absolute = dns.name.from_text(text + ".")
    if as_absolute.is_subdomain(origin):
        return as_absolute
    return dns.name.from_text(text, origin=origin)


def _validate(zone: DemoZone) -> list[str]:
    problems: list[str] = []
    if not zone.origin.is_absolute():
        problems.append("origin: must be an absolute name")
    if isinstance(zone.ttl, bool) or not isinstance(zone.ttl, int) or not 0 <= zone.ttl <= _MAX_TTL:
        problems.append(f"ttl: expected an integer from 0 to {_MAX_TTL}")
    if isinstance(zone.serial, bool) or not isinstance(zone.serial, int) or not (
        0 <= zone.serial < 2**32
    ):
        problems.append("serial: expected an integer from 0 to 4294967295")
    names: dict[dns.name.Name, str] = {}
    for section, owners in (("records", zone.records), ("geo_records", zone.geo_records)):
        for name in owners:
            shown = name.to_text()
            if not name.is_subdomain(zone.origin):
                problems.append(f"{section}: {shown} is not in the zone {zone.origin}")
            key = name.canonicalize()
            if key in names:
                problems.append(
                    f"{section}: {shown} is already in {names[key]}; a name is either "
                    "answered the same for everyone or per region, not both"
                )
            names[key] = section
    seen_networks: dict[IPNetwork, str] = {}
    for network, region in zone.client_networks:
        other = seen_networks.get(network)
        if other is not None and other != region:
            problems.append(
                f"client_networks: {network} is given to both {other} and {region}"
            )
        seen_networks[network] = region
    regions = set(seen_networks.values())
    if zone.default_region is not None:
        known = regions | {r for by in zone.geo_records.values() for r in by}
        if zone.default_region not in known:
            problems.append(
                f"default_region: {zone.default_region!r} is not a region "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
    for name, by_region in zone.geo_records.items():
        for region in by_region:
            if region not in regions and region != zone.default_region:
                problems.append(
                    f"geo_records.{name}: region {region!r} has no client networks and is "
                    "not the default region, so nobody would get its records"
                )
    return problems


class _ZoneReader:
    """Reads the dict form, collecting every problem with its path before giving up."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.problems: list[str] = []

    def zone(self) -> DemoZone:
        data = self.data
        if not isinstance(data, Mapping):
            raise ZoneError(["expected a mapping (JSON object) for the zone"])
        for key in sorted(set(data) - _ZONE_KEYS):
            self.problems.append(f"{key}: unknown key (known: {', '.join(sorted(_ZONE_KEYS))})")
        origin_text = data.get("origin", DEFAULT_ORIGIN)
        try:
            if not isinstance(origin_text, str) or not origin_text.strip(" ."):
                raise ValueError("expected a domain name such as support.example.test")
            origin = dns.name.from_text(origin_text.strip())
        except (ValueError, dns.exception.DNSException) as exc:
            raise ZoneError([f"origin: {exc}"]) from None
        records = {
            name: rs
            for key, value in self._mapping(data, "records").items()
            if (name := self._name(origin, key, f"records.{key}")) is not None
            and (rs := self._record_set(origin, value, f"records.{key}")) is not None
        }
        networks: list[tuple[IPNetwork, str]] = []
        for region, prefixes in self._mapping(data, "client_networks").items():
            where = f"client_networks.{region}"
            if isinstance(prefixes, str):
                prefixes = [prefixes]
            if not isinstance(prefixes, list):
                self.problems.append(f"{where}: expected a list of networks")
                continue
            for i, text in enumerate(prefixes):
                try:
                    if not isinstance(text, str):
                        raise ValueError("expected text such as 127.10.0.0/16")
                    network = parse_prefix(text)
                except ValueError as exc:
                    self.problems.append(f"{where}[{i}]: {exc}")
                    continue
                if (network, region) not in networks:
                    networks.append((network, region))
        geo: dict[dns.name.Name, dict[str, RecordSet]] = {}
        for key, by_region in self._mapping(data, "geo_records").items():
            where = f"geo_records.{key}"
            name = self._name(origin, key, where)
            if not isinstance(by_region, Mapping):
                self.problems.append(f"{where}: expected region → records")
                continue
            sets = {
                str(region): rs
                for region, value in by_region.items()
                if (rs := self._record_set(origin, value, f"{where}.{region}")) is not None
            }
            if name is not None:
                geo[name] = sets
        default = data.get("default_region")
        if default is not None and not isinstance(default, str):
            self.problems.append("default_region: expected a region name or null")
            default = None
        ttl, serial = data.get("ttl", DEFAULT_TTL), data.get("serial", 1)
        if self.problems:
            raise ZoneError(self.problems)
        return DemoZone(origin, records, tuple(networks), geo, default, ttl, serial)

    def _mapping(self, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = data.get(key) or {}
        if not isinstance(value, Mapping):
            self.problems.append(f"{key}: expected a mapping (JSON object)")
            return {}
        return value

    def _name(self, origin: dns.name.Name, text: object, where: str) -> dns.name.Name | None:
        try:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("expected a name")
            name = _absolute(text, origin)
        except (ValueError, dns.exception.DNSException) as exc:
            self.problems.append(f"{where}: {exc}")
            return None
        if not name.is_subdomain(origin):
            self.problems.append(f"{where}: {name} is not in the zone {origin}")
            return None
        return name

    def _record_set(self, origin: dns.name.Name, value: object, where: str) -> RecordSet | None:
        if not isinstance(value, Mapping):
            self.problems.append(f"{where}: expected type → records, such as {{\"A\": [...]}}")
            return None
        before = len(self.problems)
        for rdtype in value:
            if rdtype not in _TYPES:
                self.problems.append(
                    f"{where}: record type {rdtype!r} is not served (only {', '.join(_TYPES)})"
                )
        a = self._addresses(value.get("A", []), 4, f"{where}.A")
        aaaa = self._addresses(value.get("AAAA", []), 6, f"{where}.AAAA")
        srv = self._srv(origin, value.get("SRV", []), f"{where}.SRV")
        if len(self.problems) > before:
            return None
        return RecordSet(a, aaaa, srv)

    def _addresses(self, values: object, version: int, where: str) -> tuple[str, ...]:
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list):
            self.problems.append(f"{where}: expected a list of IPv{version} addresses")
            return ()
        out: list[str] = []
        for i, text in enumerate(values):
            try:
                address = ipaddress.ip_address(text) if isinstance(text, str) else None
            except ValueError:
                address = None
            if address is None or address.version != version:
                self.problems.append(f"{where}[{i}]: {text!r} is not an IPv{version} address")
                continue
            out.append(str(address))
        return _unique(tuple(out))

    def _srv(self, origin: dns.name.Name, values: object, where: str) -> tuple[SrvTarget, ...]:
        if not isinstance(values, list):
            self.problems.append(f"{where}: expected a list of SRV records")
            return ()
        out: list[SrvTarget] = []
        for i, item in enumerate(values):
            at = f"{where}[{i}]"
            if not isinstance(item, Mapping) or set(item) != _SRV_KEYS:
                self.problems.append(
                    f"{at}: expected {{\"priority\", \"weight\", \"port\", \"target\"}}"
                )
                continue
            numbers = [item["priority"], item["weight"], item["port"]]
            if not all(
                isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 65535
                for n in numbers
            ):
                self.problems.append(f"{at}: priority, weight and port must be 0–65535")
                continue
            target_text = item["target"]
            if target_text == ".":
                target = "."
            else:
                name = self._target(origin, target_text, f"{at}.target")
                if name is None:
                    continue
                target = name.to_text()
            out.append(SrvTarget(numbers[0], numbers[1], numbers[2], target))
        return _unique(tuple(out))

    def _target(self, origin: dns.name.Name, text: object, where: str) -> dns.name.Name | None:
        try:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("expected a host name")
            return _absolute(text, origin)
        except (ValueError, dns.exception.DNSException) as exc:
            self.problems.append(f"{where}: {exc}")
            return None
