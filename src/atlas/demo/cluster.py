"""``atlas demo``: a whole Atlas cluster on this machine (design section 9).

What it does, in the guide's order ("Site Configuration to Deploy Bomgar Atlas Cluster
Technology"):

1. Configure each node as a stand-alone node, same software everywhere: one data
   directory per node of :func:`atlas.demo.layout.default_layout` (``atlas init`` with a
   wildcard certificate for ``*.<site>`` and ``<site>`` from a local CA), the first
   admin, and on master1 an API account and a representative account.
2. The Inter-appliance Communication Pre-shared Key: the same PSK on every node.
3. Start the demo DNS server and every node, each its own ``atlas serve`` process on its
   own loopback address, resolving through that DNS server (``ATLAS_DNS``); the traffic
   nodes also bind their region's anycast address (``ATLAS_ANYCAST_LISTEN``).
4. Configure the primary master and the traffic nodes **through the REST API**, as an
   operator's script would (``POST /api/v1/cluster``, ``POST …/traffic-nodes``,
   ``PUT …/selection``), then **Sync Now** and wait until every traffic node is online
   and holds the latest revision.

The working directory (default ``.atlas-demo``) is reused by later runs: same
certificates, credentials and node identities. ``DIR/demo.json``
(:mod:`atlas.demo.state`) says what runs where; ``DIR/cluster-test.toml`` is the plan of
the guide's cluster test for the chosen method; ``DIR/env`` exports the API account for
``atlas cluster …``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import tomli_w

from atlas.cli.client import AtlasClient, AuthError, ClientError, Connection, node_path
from atlas.demo import processes
from atlas.demo.layout import (
    DEFAULT_DNS_PORT,
    DemoLayout,
    DemoNode,
    MethodChoice,
    Role,
    default_layout,
    method_choice,
)
from atlas.demo.processes import Child, DemoLock
from atlas.demo.state import (
    DEMO_FILE,
    ApiAccountInfo,
    Credentials,
    DemoInfo,
    DnsInfo,
    NodeInfo,
    RegionInfo,
    RepresentativeInfo,
    StateError,
    load_info,
    save_info,
)
from atlas.demo.zone import DemoZone
from atlas.net import certs
from atlas.net.resolver import DnsServer, Resolver
from atlas.net.tls import client_context
from atlas.node.datadir import DataDir
from atlas.node.init import ADMIN_USERNAME, InitError, init_node
from atlas.node.roles import Role as ClusterRole
from atlas.node.server import ANYCAST_ENV
from atlas.store import representatives
from atlas.store.api_accounts import Permission, create_account
from atlas.store.db import Database
from atlas.web.api_v1.cluster_models import ChangeOut, ClusterOut, SyncReportOut

CLUSTER = "/api/v1/cluster"
API_ACCOUNT_NAME = "atlas-demo"
API_PERMISSIONS = (Permission.CONFIG_WRITE, Permission.COMMAND_FULL)
REP_USERNAME = "rep1"
REP_DISPLAY_NAME = "Demo Representative"
READY_TIMEOUT = 45.0
SYNC_TIMEOUT = 60.0
DNS_READY_TIMEOUT = 15.0
POLL_INTERVAL = 0.2
MARKER = ".atlas-demo-dir"
_MARKER_TEXT = "This directory holds an Atlas demo (`atlas demo`). Remove it to start afresh.\n"
_GENERATED = ("ca", "tls", "nodes", "dns")  # what an interrupted first run may leave


class DemoError(Exception):
    """Why the demo cannot start or went wrong; the message is for the operator."""

    exit_code = 1


class UsageProblem(DemoError):
    """A bad option."""

    exit_code = 2


class AlreadyRunning(DemoError):
    """Another ``atlas demo`` runs in this directory."""


Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoPaths:
    """Where everything of one demo directory lives."""

    root: Path

    @classmethod
    def at(cls, root: Path) -> DemoPaths:
        return cls(Path(os.path.abspath(root)))

    @property
    def demo_file(self) -> Path:
        return self.root / DEMO_FILE

    @property
    def lock_file(self) -> Path:
        return self.root / "demo.lock"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_file(self) -> Path:
        return self.ca_dir / certs.CA_CERT

    @property
    def cert_file(self) -> Path:
        return self.root / "tls" / "site-cert.pem"

    @property
    def key_file(self) -> Path:
        return self.root / "tls" / "site-key.pem"

    @property
    def zone_file(self) -> Path:
        return self.root / "dns" / "zone.json"

    @property
    def plan_file(self) -> Path:
        return self.root / "cluster-test.toml"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def topology_text(self) -> Path:
        return self.root / "topology.txt"

    @property
    def topology_svg(self) -> Path:
        return self.root / "topology.svg"

    def node_dir(self, name: str) -> Path:
        return self.root / "nodes" / name

    def log_file(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"


@dataclass(frozen=True)
class DemoOptions:
    root: Path = Path(".atlas-demo")
    method: str = "random"
    prefixes: bool | None = None
    site: str | None = None
    port: int | None = None
    dns_port: int | None = None
    sessions: int | None = None


# ---- preparing the directory -----------------------------------------------------------------


def check_directory(paths: DemoPaths) -> None:
    """Refuse a directory that holds something else than a demo."""
    root = paths.root
    if root.exists() and not root.is_dir():
        raise DemoError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not (paths.marker.exists() or paths.demo_file.exists()):
            raise DemoError(
                f"{root} exists, is not empty and is not an Atlas demo directory; "
                "give an empty or new directory with --dir"
            )


def _fresh_layout(options: DemoOptions) -> DemoLayout:
    kwargs: dict[str, Any] = {}
    if options.site is not None:
        kwargs["site"] = options.site
    if options.port is not None:
        kwargs["port"] = options.port
    if options.dns_port is not None:
        kwargs["dns_port"] = options.dns_port
    return default_layout(**kwargs)


def prepare(paths: DemoPaths, options: DemoOptions, say: Say) -> tuple[DemoInfo, DemoLayout]:
    """The demo in ``paths``: reused when it exists, created otherwise."""
    if paths.demo_file.exists():
        return _reuse(paths, options, say)
    layout = _fresh_layout(options)
    problems = layout.problems()
    if problems:
        raise UsageProblem("; ".join(problems))
    root = paths.root
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for sub in _GENERATED:  # an interrupted first run: start that part again
        shutil.rmtree(root / sub, ignore_errors=True)
    paths.marker.write_text(_MARKER_TEXT)
    say(f"Creating the demo in {root}: a local CA, a wildcard certificate for "
        f"*.{layout.site}, {len(layout.nodes)} nodes")
    try:
        ca = certs.create_ca_dir(paths.ca_dir, f"Atlas demo CA ({layout.site})")
        pair = certs.issue(ca, layout.certificate_names())
    except (certs.CertificateError, OSError) as exc:
        raise DemoError(f"cannot create the demo's certificates: {exc}") from None
    paths.cert_file.parent.mkdir(parents=True, exist_ok=True)
    paths.cert_file.write_bytes(pair.cert_pem + ca.cert_pem)
    certs.write_private(paths.key_file, pair.key_pem)
    admin_password = secrets.token_urlsafe(12)
    psk = secrets.token_urlsafe(32)
    nodes: list[NodeInfo] = []
    for node in layout.nodes:
        data_dir = paths.node_dir(node.name)
        try:
            result = init_node(
                data_dir, name=node.name, public=node.public, listen=node.listen_ip,
                cert=paths.cert_file, key=paths.key_file, trust=paths.ca_file,
                admin_password=admin_password,
            )
        except InitError as exc:
            raise DemoError(f"cannot create node {node.name}: {exc}") from None
        DataDir(data_dir).write_secret("psk", psk.encode())
        nodes.append(NodeInfo(
            name=node.name, role=node.role.value, region=node.region, public=node.public,
            internal=node.internal, listen_ip=node.listen_ip,
            anycast_listen=layout.anycast_listen(node), guid=result.identity.guid,
            data_dir=str(data_dir), log_file=str(paths.log_file(node.name)),
        ))
    rep_password = secrets.token_urlsafe(12)
    db = Database(DataDir(paths.node_dir(layout.primary.name)).db_file)
    try:
        account = create_account(db, API_ACCOUNT_NAME, frozenset(API_PERMISSIONS))
        representatives.create(db, REP_USERNAME, REP_DISPLAY_NAME, rep_password)
    finally:
        db.close()
    info = DemoInfo(
        dir=str(root),
        site=layout.site,
        port=layout.port,
        url=layout.site_url,
        login_url=f"{layout.site_url}/login",
        ca_file=str(paths.ca_file),
        dns=DnsInfo(host=layout.dns_ip, port=layout.dns_port, zone_file=str(paths.zone_file),
                    log_file=str(paths.log_file("dns"))),
        method="",
        prefixes=False,
        admin=Credentials(username=ADMIN_USERNAME, password=admin_password),
        api_account=ApiAccountInfo(
            name=account.account.name, client_id=account.account.client_id,
            client_secret=account.client_secret,
            permissions=sorted(p.value for p in account.account.permissions),
        ),
        representative=RepresentativeInfo(username=REP_USERNAME, password=rep_password,
                                          display_name=REP_DISPLAY_NAME),
        cluster_test_plan=str(paths.plan_file),
        env_file=str(paths.env_file),
        topology_text=str(paths.topology_text),
        topology_svg=str(paths.topology_svg),
        regions={
            r.key: RegionInfo(
                key=r.key, label=r.label, timezone=r.timezone,
                client_networks=list(r.client_networks), anycast_address=r.anycast_address,
                traffic_nodes=[n.name for n in layout.region_nodes(r.key)],
            )
            for r in layout.regions
        },
        nodes=nodes,
    )
    save_info(paths.demo_file, info)  # last: the directory is complete
    return info, layout


def _reuse(paths: DemoPaths, options: DemoOptions, say: Say) -> tuple[DemoInfo, DemoLayout]:
    try:
        info = load_info(paths.demo_file)
    except StateError as exc:
        if b'"version"' not in paths.demo_file.read_bytes():
            raise DemoError(
                f"{paths.root} holds the earlier standalone demo; remove it (or give another "
                "--dir) to bring up the whole cluster"
            ) from None
        raise DemoError(f"{exc}; remove {paths.root} to start afresh") from None
    wanted = _fresh_layout(options)
    if options.site is not None and wanted.site != info.site:
        raise UsageProblem(
            f"{paths.root} holds a demo of {info.site}; leave --site out to reuse it, or "
            "give another --dir"
        )
    if options.port is not None and options.port != info.port:
        raise UsageProblem(
            f"{paths.root} holds a demo on port {info.port}; leave --port out to reuse it, "
            "or give another --dir"
        )
    dns_port = options.dns_port if options.dns_port is not None else (
        info.dns.port or DEFAULT_DNS_PORT)
    layout = default_layout(info.site, info.port, dns_port=dns_port)
    missing = [n.name for n in layout.nodes if not DataDir(paths.node_dir(n.name)).exists()]
    if missing or {n.name for n in info.nodes} != {n.name for n in layout.nodes}:
        raise DemoError(
            f"{paths.root} is incomplete (missing: {', '.join(missing) or 'node entries'}); "
            "remove it to start afresh"
        )
    say(f"Reusing the demo in {paths.root} ({info.site}, port {info.port})")
    return info, layout


# ---- processes left behind ----------------------------------------------------------------------


def _markers(info: DemoInfo) -> dict[int, tuple[str, str]]:
    """pid → (name, what its command line must contain) for every recorded process."""
    out: dict[int, tuple[str, str]] = {}
    for n in info.nodes:
        if n.pid:
            out[n.pid] = (n.name, f" {n.data_dir} ")
    if info.dns.pid:
        out[info.dns.pid] = ("dns", f" {info.dns.zone_file} ")
    return out


def stop_leftovers(paths: DemoPaths) -> list[str]:
    """Stop processes an earlier demo of this directory left running (it was killed)."""
    if not paths.demo_file.exists():
        return []
    try:
        info = load_info(paths.demo_file)
    except StateError:
        return []
    found = {pid: name for pid, (name, marker) in _markers(info).items()
             if processes.is_ours(pid, marker)}
    if found:
        processes.terminate_pids(found)
    if info.state != "stopped" or any(n.pid for n in info.nodes) or info.dns.pid:
        info.state, info.orchestrator_pid, info.dns.pid = "stopped", None, None
        for n in info.nodes:
            n.pid = None
        save_info(paths.demo_file, info)
    return sorted(found.values())


@dataclass(frozen=True)
class StopReport:
    orchestrator: int | None  # pid of the ``atlas demo`` that was asked to stop
    leftovers: list[str]  # processes stopped by pid
    killed_orchestrator: bool

    @property
    def anything(self) -> bool:
        return self.orchestrator is not None or bool(self.leftovers)


def stop_demo(root: Path, timeout: float = 2 * processes.STOP_TIMEOUT + 15) -> StopReport:
    """``atlas demo stop``: stop the demo running in ``root`` from another process."""
    paths = DemoPaths.at(root)
    if not paths.root.is_dir():
        raise DemoError(f"{paths.root}: no such directory")
    lock = DemoLock(paths.lock_file)
    orchestrator: int | None = None
    killed = False
    if lock.held_elsewhere():
        orchestrator = lock.holder()
        if orchestrator is not None and processes.alive(orchestrator):
            with contextlib.suppress(ProcessLookupError):
                os.kill(orchestrator, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while lock.held_elsewhere() and time.monotonic() < deadline:
            time.sleep(0.1)
        if lock.held_elsewhere() and orchestrator is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(orchestrator, signal.SIGKILL)
            killed = True
            deadline = time.monotonic() + 5.0
            while lock.held_elsewhere() and time.monotonic() < deadline:
                time.sleep(0.05)
    if not lock.acquire():
        raise DemoError(f"another atlas demo took over {paths.root} meanwhile")
    try:
        leftovers = stop_leftovers(paths)
    finally:
        lock.release()
    return StopReport(orchestrator, leftovers, killed)


# ---- talking to the cluster -------------------------------------------------------------------


@dataclass(frozen=True)
class NodeView:
    """One row of the live table."""

    name: str
    role: str
    region: str | None
    public: str
    listen_ip: str
    pid: int | None
    status: str
    ok: bool
    revision: int | None = None
    clients: int | None = None
    sessions: int | None = None


@dataclass(frozen=True)
class Snapshot:
    at: float
    revision: int | None
    sync_needed: bool
    nodes: tuple[NodeView, ...]
    dns_running: bool
    error: str | None = None


class DemoUi(Protocol):
    """How the demo talks to its operator (:mod:`atlas.cli.demo`)."""

    def say(self, text: str) -> None: ...

    def running(self, demo: DemoCluster) -> Awaitable[None]:
        """Show the summary, then the live view or nothing, until cancelled."""
        ...


class DemoCluster:
    """The running demo: its processes, and the cluster they form."""

    def __init__(self, paths: DemoPaths, info: DemoInfo, layout: DemoLayout,
                 choice: MethodChoice, say: Say) -> None:
        self.paths = paths
        self.info = info
        self.layout = layout
        self.choice = choice
        self.say = say
        self.started_at = time.time()
        self.dns_child: Child | None = None
        self.children: dict[str, Child] = {}
        self._http: aiohttp.ClientSession | None = None
        self._api: AtlasClient | None = None
        self.resolver: Resolver | None = None

    # ---- start ------------------------------------------------------------------------

    async def start(self) -> None:
        info = self.info
        info.state, info.orchestrator_pid = "starting", os.getpid()
        info.method, info.prefixes = self.choice.name, self.choice.prefixes
        info.selection = self.layout.selection_body(self.choice)
        save_info(self.paths.demo_file, info)
        self._check_addresses_free()
        await self._start_dns()
        self._write_files()
        t0 = time.monotonic()
        self.say(f"Starting {len(self.layout.nodes)} nodes (atlas serve), each on its own "
                 "loopback address")
        for node in self.layout.nodes:
            child = Child(node.name, self._serve_argv(node), self._node_env(node),
                          self.paths.log_file(node.name))
            self.children[node.name] = child
            await child.start()
            info.node(node.name).pid = child.pid
        save_info(self.paths.demo_file, info)
        ca = client_context(self.paths.ca_file)
        assert self.resolver is not None
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ca, resolver=self.resolver.aiohttp_resolver(),
                                           force_close=True),
            timeout=aiohttp.ClientTimeout(total=3.0),
        )
        await _all_or_none([self._wait_ready(n) for n in self.layout.nodes])
        self.say(f"All nodes answer /healthz over verified TLS ({time.monotonic() - t0:.1f} s)")
        await self._configure()
        info.state = "running"
        save_info(self.paths.demo_file, info)

    async def _start_dns(self) -> None:
        lay = self.layout
        zone = DemoZone.from_dict(lay.zone_dict())
        self.paths.zone_file.parent.mkdir(parents=True, exist_ok=True)
        zone.write(self.paths.zone_file)
        port = lay.dns_port if _udp_tcp_free(lay.dns_ip, lay.dns_port) else 0
        argv = [sys.executable, "-m", "atlas.demo.dns_server", "--zone-file",
                str(self.paths.zone_file), "--listen", f"{lay.dns_ip}:{port}"]
        child = Child("dns", argv, _child_env(), self.paths.log_file("dns"))
        self.dns_child = child
        await child.start(stdout_pipe=True)
        self.info.dns.pid = child.pid
        try:
            line = await child.read_line(DNS_READY_TIMEOUT)
        except TimeoutError:
            line = b""
        try:
            ready = json.loads(line)
            bound = int(ready["port"])
        except (ValueError, KeyError, TypeError):
            await child.wait(2.0)
            raise DemoError(f"the DNS server did not start:\n{child.log_tail()}") from None
        child.drain_stdout()
        if port != lay.dns_port:
            self.say(f"{lay.dns_ip}:{lay.dns_port} is taken: the DNS server uses port {bound}")
        self.layout = dataclasses.replace(lay, dns_port=bound)
        self.info.dns.port = bound
        self.resolver = Resolver(DnsServer(lay.dns_ip, bound), timeout=2.0)
        self.say(f"DNS server for {lay.site} on {lay.dns_ip}:{bound} (UDP and TCP)")

    def _check_addresses_free(self) -> None:
        taken: list[str] = []
        wanted = [(n.listen_ip, n.port) for n in self.layout.nodes]
        wanted += [(r.anycast_address, self.layout.port) for r in self.layout.regions]
        for ip, port in wanted:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((ip, port))
                except OSError as exc:
                    why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                    taken.append(f"{ip}:{port} ({why})")
        if taken:
            raise DemoError(
                f"cannot listen on {', '.join(taken)}: is another demo running "
                "(`atlas demo stop --dir …`)? Otherwise give another port with --port "
                "(and a new --dir)"
            )

    def _serve_argv(self, node: DemoNode) -> list[str]:
        return [sys.executable, "-m", "atlas", "serve", str(self.paths.node_dir(node.name)),
                "--log-level", "info"]

    def _node_env(self, node: DemoNode) -> dict[str, str]:
        env = _child_env()
        env["ATLAS_DNS"] = self.layout.dns
        env.pop(ANYCAST_ENV, None)
        anycast = self.layout.anycast_listen(node)
        if anycast is not None:
            env[ANYCAST_ENV] = anycast
        return env

    async def _wait_ready(self, node: DemoNode) -> None:
        child = self.children[node.name]
        url = f"https://{node.hostname}:{node.port}/healthz"
        deadline = time.monotonic() + READY_TIMEOUT
        assert self._http is not None
        last = ""
        while True:
            if not child.running:
                raise DemoError(f"node {node.name} exited with code {child.returncode}:\n"
                                f"{child.log_tail()}")
            try:
                async with self._http.get(url) as r:
                    if r.status == 200 and (await r.json()).get("name") == node.name:
                        return
                    last = f"HTTP {r.status}"
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                last = str(exc) or type(exc).__name__
            if time.monotonic() > deadline:
                raise DemoError(f"node {node.name} did not answer {url} within "
                                f"{READY_TIMEOUT:g} s ({last}):\n{child.log_tail()}")
            await asyncio.sleep(POLL_INTERVAL)

    # ---- configure through the REST API -------------------------------------------------

    def _connection(self) -> Connection:
        acc = self.info.api_account
        return Connection(url=self.layout.site_url, client_id=acc.client_id,
                          client_secret=acc.client_secret, ca_file=self.paths.ca_file)

    async def api(self) -> AtlasClient:
        if self._api is None:
            assert self.resolver is not None
            client = AtlasClient(self._connection(), resolver=self.resolver)
            self._api = await client.__aenter__()
        return self._api

    async def _reset_api(self) -> None:
        if self._api is not None:
            await self._api.__aexit__(None, None, None)
            self._api = None

    async def _configure(self) -> None:
        lay, choice = self.layout, self.choice
        try:
            api = await self.api()
            status, etag = await api.call(ClusterOut, "GET", CLUSTER)
            if status.role is ClusterRole.STANDALONE:
                self.say(f"Create New Cluster {lay.site} on {lay.primary.name} "
                         f"(POST {CLUSTER})")
                body = {"site_hostname": lay.site,
                        "primary": {"name": lay.primary.name, "public": lay.primary.public},
                        "health": lay.health_body()}
                _, etag = await api.call(ChangeOut, "POST", CLUSTER, json_body=body,
                                         if_match="rev-0")
                existing: set[str] = set()
            elif status.role is ClusterRole.PRIMARY and status.document is not None:
                existing = {t.name for t in status.document.traffic_nodes}
                self.say(f"{lay.primary.name} is the primary master of {status.site_hostname} "
                         f"(revision {status.revision})")
                _, etag = await api.call(ChangeOut, "PUT", f"{CLUSTER}/health-settings",
                                         json_body=lay.health_body(), if_match=etag)
            else:
                raise DemoError(f"{lay.primary.name} is a {status.role.value} node, not the "
                                f"primary master; remove {self.paths.root} to start afresh")
            for node in lay.traffic_nodes:
                body = lay.traffic_node_body(node, choice.prefixes)
                if node.name in existing:
                    _, etag = await api.call(ChangeOut, "PUT", node_path(node.name),
                                             json_body=body, if_match=etag)
                else:
                    _, etag = await api.call(ChangeOut, "POST", f"{CLUSTER}/traffic-nodes",
                                             json_body=body, if_match=etag)
            self.say(f"Traffic nodes: {', '.join(n.name for n in lay.traffic_nodes)}; "
                     f"method {choice.describe()}")
            result, etag = await api.call(ChangeOut, "PUT", f"{CLUSTER}/selection",
                                          json_body=lay.selection_body(choice), if_match=etag)
            self.say(f"Sync Now: revision {result.revision} to {len(lay.traffic_nodes)} "
                     "traffic nodes")
            report, _ = await api.call(SyncReportOut, "POST", f"{CLUSTER}/sync",
                                       timeout=SYNC_TIMEOUT)
        except ClientError as exc:
            raise DemoError(f"configuring the cluster through the REST API failed: "
                            f"{exc.message}") from None
        if not report.ok:
            failed = [f"{r.name}: {r.reason or ''} {r.message or ''}".strip()
                      for r in report.results if not r.ok]
            raise DemoError(f"Sync Now failed: {report.summary}; " + "; ".join(failed))
        status = await self._wait_synced()
        self.info.revision = status.revision
        self.say(f"Every traffic node is online and holds revision {status.revision}")

    async def _wait_synced(self) -> ClusterOut:
        deadline = time.monotonic() + SYNC_TIMEOUT
        while True:
            api = await self.api()
            try:
                status, _ = await api.call(ClusterOut, "GET", CLUSTER)
            except ClientError as exc:
                raise DemoError(f"GET {CLUSTER} failed: {exc.message}") from None
            waiting = [
                f"{t.name}: {t.state}, revision {t.acknowledged_revision}"
                for t in status.traffic_nodes
                if not (t.online and t.state == "viable"
                        and t.acknowledged_revision == status.revision and not t.needs_sync)
            ]
            if not waiting and not status.sync_needed and status.traffic_nodes:
                return status
            if time.monotonic() > deadline:
                raise DemoError(f"traffic nodes not online and synced to revision "
                                f"{status.revision} within {SYNC_TIMEOUT:g} s: "
                                + "; ".join(waiting))
            await asyncio.sleep(POLL_INTERVAL)

    # ---- files for the operator ---------------------------------------------------------------

    def _write_files(self) -> None:
        lay, info = self.layout, self.info
        plan = lay.test_plan(self.choice)
        plan["ca_file"] = info.ca_file
        header = (
            "# Atlas cluster test plan, written by `atlas demo` (guide: \"Perform a … Cluster\n"
            "# Test\"). Each probe is a test client: where it connects from, the UTC offset it\n"
            "# reports, and the traffic nodes it should be given (and by which rule).\n"
        )
        self.paths.plan_file.write_text(header + tomli_w.dumps(plan))
        acc = info.api_account
        env = {
            "ATLAS_URL": lay.site_url,
            "ATLAS_CLIENT_ID": acc.client_id,
            "ATLAS_CLIENT_SECRET": acc.client_secret,
            "ATLAS_CA_FILE": info.ca_file,
            "ATLAS_DNS": lay.dns,
        }
        text = "# source this file: the demo's API account for `atlas cluster …`\n" + "".join(
            f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        certs.write_private(self.paths.env_file, text.encode())
        self.paths.topology_text.write_text(lay.render_text())
        self.paths.topology_svg.write_text(lay.render_svg())

    # ---- watching -------------------------------------------------------------------------

    async def _health(self, node: DemoNode) -> bool:
        if self._http is None:
            return False
        try:
            async with self._http.get(f"https://{node.hostname}:{node.port}/healthz") as r:
                return r.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def snapshot(self) -> Snapshot:
        """What the live view shows: every node's state, from the master's point of view."""
        status: ClusterOut | None = None
        error: str | None = None
        try:
            api = await self.api()
            status, _ = await api.call(ClusterOut, "GET", CLUSTER, timeout=3.0)
        except AuthError:
            await self._reset_api()  # the bearer token expired: a new one next time
            error = "token expired; renewing"
        except ClientError as exc:
            error = exc.message
        traffic = {t.name: t for t in status.traffic_nodes} if status else {}
        backup_ok = {
            n.name: await self._health(n) for n in self.layout.nodes if n.role is Role.BACKUP
        }
        views: list[NodeView] = []
        for n in self.layout.nodes:
            child = self.children.get(n.name)

            def view(state: str, ok: bool, revision: int | None = None,
                     clients: int | None = None, sessions: int | None = None,
                     n: DemoNode = n, child: Child | None = child) -> NodeView:
                return NodeView(name=n.name, role=n.role.value, region=n.region,
                                public=n.public, listen_ip=n.listen_ip,
                                pid=child.pid if child else None, status=state, ok=ok,
                                revision=revision, clients=clients, sessions=sessions)

            if child is None or not child.running:
                code = child.returncode if child else None
                views.append(view(f"exited ({code})", False))
            elif n.role is Role.PRIMARY:
                views.append(view("online" if status else "unreachable", status is not None,
                                  status.revision if status else None))
            elif n.role is Role.BACKUP:
                ok = backup_ok[n.name]
                views.append(view("idle (standalone)" if ok else "unreachable", ok))
            elif (t := traffic.get(n.name)) is None:
                views.append(view("not in the cluster", False))
            else:
                load = t.load
                views.append(view(
                    "online" if t.state == "viable" else t.state, t.state == "viable",
                    t.acknowledged_revision, load.connected_clients if load else None,
                    load.active_sessions if load else None,
                ))
        return Snapshot(
            at=time.time(), revision=status.revision if status else None,
            sync_needed=status.sync_needed if status else False, nodes=tuple(views),
            dns_running=self.dns_child is not None and self.dns_child.running, error=error,
        )

    def exited(self) -> list[Child]:
        """Children that have exited (a node stopped or crashed while the demo runs)."""
        every = [*self.children.values(), *([self.dns_child] if self.dns_child else [])]
        return [c for c in every if c.proc is not None and not c.running]

    # ---- stop ---------------------------------------------------------------------------------

    async def stop(self, force: asyncio.Event | None = None) -> list[str]:
        """Stop every process: the nodes, then the DNS server. Returns those killed."""
        info = self.info
        info.state = "stopping"
        with contextlib.suppress(OSError):
            save_info(self.paths.demo_file, info)
        await self._reset_api()
        if self._http is not None:
            await self._http.close()
            self._http = None
        groups = [list(self.children.values()), [self.dns_child] if self.dns_child else []]
        killed = await processes.stop_children(groups, force=force)
        info.state, info.orchestrator_pid, info.dns.pid = "stopped", None, None
        for n in info.nodes:
            n.pid = None
        save_info(self.paths.demo_file, info)
        return killed


async def _all_or_none(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``coros`` concurrently; the first failure cancels the others and is raised."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _udp_tcp_free(ip: str, port: int) -> bool:
    if port == 0:
        return True
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


# ---- the whole run ---------------------------------------------------------------------------


def run(options: DemoOptions, ui: DemoUi) -> None:
    """Bring the demo up, hand it to ``ui`` until SIGINT/SIGTERM, then stop everything."""
    try:
        choice = method_choice(options.method, options.prefixes)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    if options.sessions:
        raise UsageProblem(
            "--sessions: simulated support sessions need the customer and representative "
            "clients (`atlas customer`, `atlas rep`), which are not there yet"
        )
    paths = DemoPaths.at(options.root)
    check_directory(paths)
    paths.root.mkdir(parents=True, exist_ok=True)
    lock = DemoLock(paths.lock_file)
    if not lock.acquire():
        pid = lock.holder()
        raise AlreadyRunning(
            f"an Atlas demo is already running in {paths.root}"
            + (f" (pid {pid})" if pid else "")
            + f"; stop it with `atlas demo stop --dir {shlex.quote(str(options.root))}`"
        )
    try:
        if not paths.marker.exists() and not paths.demo_file.exists():
            paths.marker.write_text(_MARKER_TEXT)
        left = stop_leftovers(paths)
        if left:
            ui.say(f"Stopped processes an earlier demo left running: {', '.join(left)}")
        info, layout = prepare(paths, options, ui.say)
        asyncio.run(_orchestrate(paths, info, layout, choice, ui))
    finally:
        lock.release()


async def _orchestrate(paths: DemoPaths, info: DemoInfo, layout: DemoLayout,
                       choice: MethodChoice, ui: DemoUi) -> None:
    demo = DemoCluster(paths, info, layout, choice, ui.say)
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    force = asyncio.Event()
    stopping = False

    def on_signal() -> None:
        nonlocal stopping
        if stopping:
            force.set()  # a second Ctrl-C: kill what is left now
            return
        stopping = True
        main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        try:
            await demo.start()
            await ui.running(demo)
        except asyncio.CancelledError:
            if not stopping:
                raise
            main.uncancel()
        finally:
            stopping = True
            ui.say("Stopping the demo: every node, then the DNS server …")
            killed = await demo.stop(force)
            if killed:
                ui.say(f"Stopped; killed after the timeout: {', '.join(killed)}")
            else:
                ui.say("Stopped: no process left running.")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


__all__ = [
    "AlreadyRunning",
    "DemoCluster",
    "DemoError",
    "DemoOptions",
    "DemoPaths",
    "DemoUi",
    "NodeView",
    "Snapshot",
    "StopReport",
    "UsageProblem",
    "check_directory",
    "prepare",
    "run",
    "stop_demo",
    "stop_leftovers",
]
