"""The local demo's topology, as data: site, regions, nodes, addresses, DNS zone (design §9).

Pure: no files, sockets or processes. :mod:`atlas.demo.cluster` brings this layout up.

The default layout is the guide's example deployment ("Prerequisites to Set Up Multiple
Appliances": a primary and a backup master, two traffic nodes per region in at least two
regions, canonical node hostnames such as ``us-traffic1.<site>``) with Linux loopback
addresses standing in for hosts (all of 127.0.0.0/8 is local)::

    127.0.1.1    master1      primary master node (the site hostname routes here)
    127.0.1.2    master2      backup master node (idle: a standalone node for now)
    127.0.2.1-2  us-traffic1-2     region us,   clients 127.10.0.0/16, America/New_York
    127.0.3.1-2  asia-traffic1-2   region asia, clients 127.20.0.0/16, Asia/Tokyo
    127.0.2.100  anycast address of the us traffic nodes   (SO_REUSEPORT)
    127.0.3.100  anycast address of the asia traffic nodes (SO_REUSEPORT)
    127.0.53.53  the demo DNS server (UDP and TCP)

Every node listens on the same port on its own address. The zone answers:

* A records for the site (→ master1) and every node;
* ``traffic.<site>``, the shared name of the ``a_record`` method, per client network
  (guide, "A Record Lookup": US customers get the US nodes, Asia customers the Asia
  nodes, a source in no client network all of them);
* SRV ``_atlas._tcp.<site>`` per client network: the region's own nodes at priority 10
  (weights 60/40), the other regions' nodes at priority 20 as backups (RFC 2782).

One loopback machine cannot route one address by source as a real anycast network
does, so the ``anycast`` method hands out the first region's anycast address: every demo
client reaches a node of that region, spread over its nodes by the kernel.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from xml.sax.saxutils import escape

from atlas.model.config import SelectionMethod
from atlas.model.timezones import format_offset, offset_minutes

DEFAULT_SITE = "support.example.test"
DEFAULT_PORT = 8443
DEFAULT_DNS_IP = "127.0.53.53"
DEFAULT_DNS_PORT = 10053
DNS_TTL = 5
SRV_LABEL = "_atlas._tcp"
A_RECORD_LABEL = "traffic"
ANYCAST_LABEL = "anycast"
WORLD_REGION = "world"  # geo answers for a source in no client network
OWN_PRIORITY, BACKUP_PRIORITY = 10, 20
BACKUP_WEIGHT = 50
HEALTH_INTERVAL_SECONDS = 2.0
HEALTH_TIMEOUT_SECONDS = 6.0


class Role(StrEnum):
    """The role a demo node is laid out for (its cluster role once configured)."""

    PRIMARY = "primary"
    BACKUP = "backup"
    TRAFFIC = "traffic"


@dataclass(frozen=True)
class Region:
    """A geographic region: its client networks, timezone and anycast address."""

    key: str  # "us": the traffic nodes' region, the DNS zone's geo region
    label: str
    timezone: str  # IANA zone: the Timezone Offset of its traffic nodes (DST applied)
    client_networks: tuple[str, ...]
    anycast_address: str

    def probe_address(self, host: int) -> str:
        """The ``host``-th address of the first client network (a demo client's source)."""
        network = ipaddress.ip_network(self.client_networks[0])
        return str(network.network_address + host)


@dataclass(frozen=True)
class DemoNode:
    """One ``atlas serve`` process of the demo."""

    name: str
    role: Role
    listen_ip: str
    hostname: str
    port: int
    region: str | None = None  # traffic nodes only
    srv_weight: int = 0  # its weight among its region's SRV records

    @property
    def public(self) -> str:
        """The canonical ``hostname:port`` clients use (guide: "Public Address")."""
        return f"{self.hostname}:{self.port}"

    @property
    def internal(self) -> str:
        """Node-to-node address; the same as the public one in the demo."""
        return self.public


@dataclass(frozen=True)
class MethodChoice:
    """What ``--method`` (and ``--prefixes/--no-prefixes``) configure."""

    name: str  # as given: random, prefixes, timezone, srv, a_record, anycast, least_loaded
    method: SelectionMethod
    prefixes: bool  # traffic nodes get their region's client networks as prefixes

    def describe(self) -> str:
        return describe_method(self.method.value, self.prefixes)


def describe_method(method: str, prefixes: bool) -> str:
    """``random (with network address prefixes)``: a method as the demo shows it."""
    with_prefixes = "with" if prefixes else "without"
    return f"{method} ({with_prefixes} network address prefixes)"


METHOD_NAMES = ("random", "prefixes", "timezone", "srv", "a_record", "anycast", "least_loaded")


def method_choice(name: str, prefixes: bool | None = None) -> MethodChoice:
    """``--method`` → the selection method and whether traffic nodes get prefixes.

    ``prefixes`` is ``random`` with every traffic node's Network Address Prefixes set
    (the guide's advice for the random method). ``random`` sets them too; the other
    methods leave them empty by default, since prefixes override the method (guide,
    "Methods for Choosing Traffic Nodes") and the demo's clients would never see it.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in METHOD_NAMES:
        raise ValueError(f"--method {name!r}: expected one of {', '.join(METHOD_NAMES)}")
    if key == "prefixes":
        return MethodChoice(key, SelectionMethod.RANDOM, True if prefixes is None else prefixes)
    default = key == "random"
    return MethodChoice(key, SelectionMethod(key), default if prefixes is None else prefixes)


@dataclass(frozen=True)
class Probe:
    """One test client of the cluster test plan."""

    name: str
    kind: str  # ClientKind value
    region: str
    source_address: str
    tz_offset: str  # what the client reports (--tz-offset): the region's IANA zone
    expected_nodes: tuple[str, ...]
    expected_rule: str


@dataclass(frozen=True)
class DemoLayout:
    site: str
    port: int
    dns_ip: str
    dns_port: int
    regions: tuple[Region, ...]
    nodes: tuple[DemoNode, ...]

    # ---- names ---------------------------------------------------------------------

    @property
    def srv_name(self) -> str:
        return f"{SRV_LABEL}.{self.site}"

    @property
    def a_record_hostname(self) -> str:
        return f"{A_RECORD_LABEL}.{self.site}"

    @property
    def anycast_tls_name(self) -> str:
        """The TLS name handed out with the anycast address (the wildcard covers it)."""
        return f"{ANYCAST_LABEL}.{self.site}"

    @property
    def site_url(self) -> str:
        return f"https://{self.site}:{self.port}"

    @property
    def dns(self) -> str:
        return f"{self.dns_ip}:{self.dns_port}"

    def certificate_names(self) -> list[str]:
        """The wildcard certificate's names: every node, the shared names, and the site."""
        return [f"*.{self.site}", self.site]

    # ---- nodes ---------------------------------------------------------------------

    def node(self, name: str) -> DemoNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def primary(self) -> DemoNode:
        return next(n for n in self.nodes if n.role is Role.PRIMARY)

    @property
    def traffic_nodes(self) -> tuple[DemoNode, ...]:
        return tuple(n for n in self.nodes if n.role is Role.TRAFFIC)

    def region(self, key: str) -> Region:
        for r in self.regions:
            if r.key == key:
                return r
        raise KeyError(key)

    def region_nodes(self, key: str) -> tuple[DemoNode, ...]:
        return tuple(n for n in self.traffic_nodes if n.region == key)

    def anycast_listen(self, node: DemoNode) -> str | None:
        """``ip:port`` of the anycast listener a traffic node adds (ATLAS_ANYCAST_LISTEN)."""
        if node.region is None:
            return None
        return f"{self.region(node.region).anycast_address}:{self.port}"

    @property
    def anycast_region(self) -> Region:
        """The region whose anycast address the ``anycast`` method hands out."""
        return self.regions[0]

    # ---- the cluster configuration, as the REST API takes it -------------------------

    def traffic_node_body(self, node: DemoNode, prefixes: bool) -> dict[str, Any]:
        """The Add/Edit Traffic Node body (guide: "Cluster :: Add Traffic Node")."""
        if node.region is None:
            raise ValueError(f"{node.name} is not a traffic node")
        region = self.region(node.region)
        return {
            "name": node.name,
            "public": node.public,
            "accepting": True,
            "prefixes": list(region.client_networks) if prefixes else [],
            "timezone": region.timezone,
            "region": region.key,
        }

    def selection_body(self, choice: MethodChoice) -> dict[str, Any]:
        """Method for Choosing Traffic Nodes with every setting a method may need."""
        return {
            "method": choice.method.value,
            "srv_name": self.srv_name,
            "a_record_hostname": self.a_record_hostname,
            "anycast_address": self.anycast_region.anycast_address,
            "anycast_port": self.port,
            "anycast_tls_name": self.anycast_tls_name,
            "master_fallback_limit": 50,
        }

    @staticmethod
    def health_body() -> dict[str, Any]:
        """Checks every 2 s, offline after 6 s: a stopped demo node shows within seconds."""
        return {
            "interval_seconds": HEALTH_INTERVAL_SECONDS,
            "timeout_seconds": HEALTH_TIMEOUT_SECONDS,
        }

    def document(self, choice: MethodChoice) -> dict[str, Any]:
        """The configuration document the REST calls above build on the primary master
        (:class:`atlas.model.config.ClusterConfig` form; GUIDs left out)."""
        return {
            "site_hostname": self.site,
            "primary": {"name": self.primary.name, "public": self.primary.public},
            "traffic_nodes": [self.traffic_node_body(n, choice.prefixes)
                              for n in self.traffic_nodes],
            "selection": self.selection_body(choice),
            "health": self.health_body(),
        }

    # ---- DNS -----------------------------------------------------------------------

    def zone_dict(self) -> dict[str, Any]:
        """The demo zone in :meth:`atlas.demo.zone.DemoZone.from_dict` form."""
        records: dict[str, Any] = {
            "@": {"A": [self.primary.listen_ip]},
            "ns": {"A": [self.dns_ip]},
        }
        for n in self.nodes:
            records[n.name] = {"A": [n.listen_ip]}
        a_geo: dict[str, Any] = {}
        srv_geo: dict[str, Any] = {}
        for region in self.regions:
            own = self.region_nodes(region.key)
            others = [n for n in self.traffic_nodes if n.region != region.key]
            a_geo[region.key] = {"A": [n.listen_ip for n in own]}
            srv_geo[region.key] = {
                "SRV": [self._srv(n, OWN_PRIORITY, n.srv_weight) for n in own]
                + [self._srv(n, BACKUP_PRIORITY, BACKUP_WEIGHT) for n in others]
            }
        a_geo[WORLD_REGION] = {"A": [n.listen_ip for n in self.traffic_nodes]}
        srv_geo[WORLD_REGION] = {
            "SRV": [self._srv(n, OWN_PRIORITY, BACKUP_WEIGHT) for n in self.traffic_nodes]
        }
        return {
            "origin": self.site,
            "ttl": DNS_TTL,
            "records": records,
            "client_networks": {r.key: list(r.client_networks) for r in self.regions},
            "default_region": WORLD_REGION,
            "geo_records": {A_RECORD_LABEL: a_geo, SRV_LABEL: srv_geo},
        }

    def _srv(self, node: DemoNode, priority: int, weight: int) -> dict[str, Any]:
        return {"priority": priority, "weight": weight, "port": node.port, "target": node.name}

    # ---- the cluster test plan ----------------------------------------------------------

    def expected_nodes(self, choice: MethodChoice, region: Region) -> tuple[tuple[str, ...], str]:
        """The traffic nodes a client of ``region`` should land on, and the deciding rule
        (guide, "Identify the Expected Node")."""
        own = tuple(n.name for n in self.region_nodes(region.key))
        if choice.prefixes:
            return own, "prefix"
        method = choice.method
        if method in (SelectionMethod.TIMEZONE, SelectionMethod.SRV, SelectionMethod.A_RECORD):
            return own, method.value
        if method is SelectionMethod.ANYCAST:
            return tuple(n.name for n in self.region_nodes(self.anycast_region.key)), "anycast"
        return tuple(n.name for n in self.traffic_nodes), method.value

    def probes(self, choice: MethodChoice) -> list[Probe]:
        """A customer and a representative per region, from inside its client network."""
        out: list[Probe] = []
        for region in self.regions:
            expected, rule = self.expected_nodes(choice, region)
            for kind, host in (("support_customer", 5), ("representative", 10)):
                short = "customer" if kind == "support_customer" else "rep"
                out.append(Probe(
                    name=f"{region.key}-{short}", kind=kind, region=region.key,
                    source_address=region.probe_address(host), tz_offset=region.timezone,
                    expected_nodes=expected, expected_rule=rule,
                ))
        return out

    def test_plan(self, choice: MethodChoice, representative: str | None = None,
                  ca_file: str | None = None) -> dict[str, Any]:
        """The cluster test plan (``cluster-test.toml``) as a TOML-ready dict:
        ``representative`` is the test representative's username (its password is not
        in the plan: ``DIR/env`` has it as ``ATLAS_REP_PASSWORD``)."""
        head: dict[str, Any] = {"site": self.site, "url": self.site_url, "dns": self.dns}
        if ca_file is not None:
            head["ca_file"] = ca_file
        if representative is not None:
            head["representative"] = representative
        return {
            **head,
            "method": choice.method.value,
            "prefixes": choice.prefixes,
            "probe": [
                {
                    "name": p.name,
                    "kind": p.kind,
                    "region": p.region,
                    "source_address": p.source_address,
                    "tz_offset": p.tz_offset,
                    "expected_nodes": list(p.expected_nodes),
                    "expected_rule": p.expected_rule,
                }
                for p in self.probes(choice)
            ],
        }

    # ---- checks ---------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Everything inconsistent in the layout (empty: fine)."""
        out: list[str] = []
        loopback = ipaddress.ip_network("127.0.0.0/8")
        bound: dict[str, str] = {}

        def claim(ip: str, what: str) -> None:
            if ipaddress.ip_address(ip) not in loopback:
                out.append(f"{what}: {ip} is not a loopback address")
            if ip in bound:
                out.append(f"{what}: {ip} is already {bound[ip]}")
            bound.setdefault(ip, what)

        names: set[str] = set()
        for n in self.nodes:
            if n.name in names:
                out.append(f"node {n.name}: the name is used twice")
            names.add(n.name)
            claim(n.listen_ip, f"node {n.name}")
            if n.hostname != f"{n.name}.{self.site}":
                out.append(f"node {n.name}: hostname {n.hostname} is not {n.name}.{self.site}")
            if n.role is Role.TRAFFIC and n.region not in {r.key for r in self.regions}:
                out.append(f"node {n.name}: unknown region {n.region!r}")
        claim(self.dns_ip, "the DNS server")
        networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        for r in self.regions:
            if not self.region_nodes(r.key):
                out.append(f"region {r.key}: no traffic nodes")
            claim(r.anycast_address, f"region {r.key} anycast")
            for text in r.client_networks:
                net = ipaddress.ip_network(text)
                for other, key in networks:
                    if net.overlaps(other):
                        out.append(f"region {r.key}: {net} overlaps {other} of {key}")
                networks.append((net, r.key))
        for ip, what in bound.items():
            for net, key in networks:
                if ipaddress.ip_address(ip) in net:
                    out.append(f"{what}: {ip} lies in the client network {net} of {key}")
        if len(self.regions) < 2:
            out.append("at least two regions are needed (guide: a minimum of two regions)")
        return out

    # ---- pictures -------------------------------------------------------------------

    def render_text(self) -> str:
        """The topology as a text tree (docs/quickstart.md, the demo's summary)."""
        width = max(len(n.public) for n in self.nodes)
        ip_width = max(len(n.listen_ip) for n in self.nodes)

        def row(n: DemoNode, what: str, nested: bool = False) -> str:
            pad = width if nested else width + 4  # align with the nested rows' columns
            return f"{n.public:<{pad}}  {n.listen_ip:<{ip_width}}  {what}"

        items: list[tuple[str, list[str]]] = []
        for n in self.nodes:
            if n.role is Role.PRIMARY:
                items.append((row(n, "primary master node"), []))
            elif n.role is Role.BACKUP:
                items.append((row(n, "backup master node (idle)"), []))
        for r in self.regions:
            head = (f"region {r.key}: clients {', '.join(r.client_networks)}, "
                    f"{r.timezone}, anycast {r.anycast_address}:{self.port}")
            nodes = [row(n, f"traffic node, SRV weight {n.srv_weight}", nested=True)
                     for n in self.region_nodes(r.key)]
            items.append((head, nodes))
        items.append((f"DNS server {self.dns}", [
            f"{self.site}, <node>.{self.site}: A",
            f"{self.a_record_hostname}: A, answered per client network",
            f"{self.srv_name}: SRV, answered per client network",
        ]))
        lines = [f"{self.site}:{self.port}  (the support site: master1)"]
        for i, (head, children) in enumerate(items):
            last = i == len(items) - 1
            lines.append(("└── " if last else "├── ") + head)
            branch = "    " if last else "│   "
            for j, child in enumerate(children):
                lines.append(branch + ("└── " if j == len(children) - 1 else "├── ") + child)
        return "\n".join(lines) + "\n"

    def render_svg(self) -> str:
        """The topology as an SVG picture (masters on top, regions below, clients under)."""
        return _Svg(self).render()


def default_layout(
    site: str = DEFAULT_SITE,
    port: int = DEFAULT_PORT,
    dns_port: int = DEFAULT_DNS_PORT,
    dns_ip: str = DEFAULT_DNS_IP,
) -> DemoLayout:
    """The demo cluster: two masters, US and Asia regions with two traffic nodes each."""
    site = site.strip().lower().rstrip(".")
    regions = (
        Region("us", "United States", "America/New_York", ("127.10.0.0/16",), "127.0.2.100"),
        Region("asia", "Asia", "Asia/Tokyo", ("127.20.0.0/16",), "127.0.3.100"),
    )
    nodes = [
        DemoNode("master1", Role.PRIMARY, "127.0.1.1", f"master1.{site}", port),
        DemoNode("master2", Role.BACKUP, "127.0.1.2", f"master2.{site}", port),
    ]
    for third, region in enumerate(regions, start=2):
        for i, weight in ((1, 60), (2, 40)):
            name = f"{region.key}-traffic{i}"
            nodes.append(DemoNode(name, Role.TRAFFIC, f"127.0.{third}.{i}", f"{name}.{site}",
                                  port, region=region.key, srv_weight=weight))
    return DemoLayout(site=site, port=port, dns_ip=dns_ip, dns_port=dns_port,
                      regions=regions, nodes=tuple(nodes))


def region_offset(region: Region, now: dt.datetime) -> str:
    """The region's UTC offset right now, e.g. ``-04:00`` (DST applied)."""
    return format_offset(offset_minutes(region.timezone, now))


# ---- SVG ------------------------------------------------------------------------------------


class _Svg:
    """A small hand-rolled SVG writer: boxes, lines and text, laid out from the layout."""

    NODE_W, NODE_H, GAP, PAD = 240, 54, 20, 20
    FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"

    def __init__(self, layout: DemoLayout) -> None:
        self.layout = layout
        self.lines: list[str] = []  # drawn first, under the boxes
        self.parts: list[str] = []

    def box(self, x: float, y: float, w: float, h: float, lines: list[str], *,
            fill: str, stroke: str = "#44546a", dashed: bool = False, bold_first: bool = True
            ) -> None:
        dash = " stroke-dasharray='6 4'" if dashed else ""
        self.parts.append(
            f"<rect x='{x:g}' y='{y:g}' width='{w:g}' height='{h:g}' rx='8' fill='{fill}' "
            f"stroke='{stroke}'{dash}/>"
        )
        for i, text in enumerate(lines):
            weight = " font-weight='bold'" if i == 0 and bold_first else ""
            size = 13 if i == 0 else 11
            self.parts.append(
                f"<text x='{x + w / 2:g}' y='{y + 19 + i * 15:g}' text-anchor='middle' "
                f"font-size='{size}'{weight}>{escape(text)}</text>"
            )

    def line(self, x1: float, y1: float, x2: float, y2: float, *, dashed: bool = False,
             color: str = "#7f8c9d") -> None:
        dash = " stroke-dasharray='5 4'" if dashed else ""
        self.lines.append(
            f"<line x1='{x1:g}' y1='{y1:g}' x2='{x2:g}' y2='{y2:g}' stroke='{color}' "
            f"stroke-width='1.5'{dash}/>"
        )

    def render(self) -> str:
        lay = self.layout
        nw, nh, gap, pad = self.NODE_W, self.NODE_H, self.GAP, self.PAD
        region_ws = [len(lay.region_nodes(r.key)) * (nw + gap) + gap for r in lay.regions]
        width = max(sum(region_ws) + gap * (len(region_ws) - 1) + 2 * pad, 3 * (nw + gap) + pad)
        y_site, y_master, y_region, y_clients = pad, pad + 80, pad + 200, pad + 320
        height = y_clients + nh + pad + 20
        masters = [n for n in lay.nodes if n.role is not Role.TRAFFIC]
        # the site and the DNS server
        site_x = width / 2 - nw / 2
        self.box(site_x, y_site, nw, 44, [f"{lay.site}:{lay.port}", "support site → master1"],
                 fill="#fff2cc")
        self.box(pad, y_site, nw - 50, 44, ["DNS server", lay.dns], fill="#e2f0d9")
        # masters
        mx = [width / 2 - (len(masters) * (nw + gap) - gap) / 2 + i * (nw + gap)
              for i in range(len(masters))]
        primary_center = (0.0, 0.0)
        for x, n in zip(mx, masters, strict=True):
            what = "primary master" if n.role is Role.PRIMARY else "backup master (idle)"
            self.box(x, y_master, nw, nh, [n.name, f"{n.listen_ip}  {what}", n.public],
                     fill="#dae3f3", dashed=n.role is Role.BACKUP)
            if n.role is Role.PRIMARY:
                primary_center = (x + nw / 2, y_master + nh)
                self.line(width / 2, y_site + 44, x + nw / 2, y_master)
        # regions, their traffic nodes and client networks
        x = (width - (sum(region_ws) + gap * (len(region_ws) - 1))) / 2
        for region, rw in zip(lay.regions, region_ws, strict=True):
            self.parts.append(
                f"<rect x='{x:g}' y='{y_region - 30:g}' width='{rw:g}' height='{nh + 50:g}' "
                "rx='12' fill='#f7f9fc' stroke='#9aa9bd'/>"
            )
            self.parts.append(
                f"<text x='{x + 12:g}' y='{y_region - 12:g}' font-size='12' "
                f"font-weight='bold'>region {escape(region.key)} · {escape(region.timezone)}"
                f" · anycast {escape(region.anycast_address)}</text>"
            )
            nx = x + gap
            for n in lay.region_nodes(region.key):
                self.box(nx, y_region, nw, nh,
                         [n.name, f"{n.listen_ip}  SRV weight {n.srv_weight}", n.public],
                         fill="#deebf7")
                self.line(primary_center[0], primary_center[1], nx + nw / 2, y_region,
                          dashed=True)
                nx += nw + gap
            cw = rw - 2 * gap
            self.box(x + gap, y_clients, cw, nh,
                     [f"{region.label} clients", ", ".join(region.client_networks),
                      f"{lay.a_record_hostname} → region nodes"],
                     fill="#fbe5d6", bold_first=True)
            self.line(x + rw / 2, y_clients, x + rw / 2, y_region + nh + 20)
            x += rw + gap
        legend_y = height - 12
        self.parts.append(
            f"<text x='{pad}' y='{legend_y:g}' font-size='11' fill='#44546a'>dashed: data "
            "sync and health checks from the primary master · solid: client traffic</text>"
        )
        head = (
            f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:g}' height='{height:g}' "
            f"viewBox='0 0 {width:g} {height:g}' {self.FONT}>"
            "<rect width='100%' height='100%' fill='white'/>"
        )
        return head + "\n" + "\n".join(self.lines + self.parts) + "\n</svg>\n"


__all__ = [
    "DEFAULT_DNS_IP",
    "DEFAULT_DNS_PORT",
    "DEFAULT_PORT",
    "DEFAULT_SITE",
    "METHOD_NAMES",
    "DemoLayout",
    "DemoNode",
    "MethodChoice",
    "Probe",
    "Region",
    "Role",
    "default_layout",
    "describe_method",
    "method_choice",
    "region_offset",
]
