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
   and holds the latest revision (:mod:`atlas.demo.configure`).
5. With ``--sessions N``, keep N synthetic customer/representative pairs streaming
   through the cluster (:mod:`atlas.demo.sessions`).

The working directory (default ``.atlas-demo``) is reused by later runs: same
certificates, credentials and node identities. ``DIR/demo.json``
(:mod:`atlas.demo.state`) says what runs where; ``DIR/cluster-test.toml`` is the plan of
the guide's cluster test for the chosen method; ``DIR/env`` exports the API account for
``atlas cluster …`` and the test representative for ``atlas cluster test``.
``atlas demo set-method`` (:mod:`atlas.demo.set_method`) changes the method of a running
demo.
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

from atlas.demo import processes
from atlas.demo.configure import CLUSTER, configure_cluster, current_method
from atlas.demo.errors import AlreadyRunning, DemoError, NotRunning, UsageProblem
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
from atlas.demo.sessions import (
    MAX_SESSIONS,
    MIN_SESSION_SECONDS,
    SESSION_REP_DISPLAY_NAME,
    SESSION_SECONDS,
    PairRunner,
    SessionPair,
    SessionSite,
    cancel_all,
    plan_pairs,
    rep_username,
)
from atlas.demo.state import (
    DEMO_FILE,
    ApiAccountInfo,
    Credentials,
    DemoInfo,
    DnsInfo,
    NodeInfo,
    RegionInfo,
    RepresentativeInfo,
    SessionPairInfo,
    StateError,
    load_info,
    save_info,
    update_info,
)
from atlas.demo.zone import DemoZone
from atlas.net import certs
from atlas.net.api_client import AtlasClient, AuthError, ClientError, Connection
from atlas.net.resolver import DnsServer, Resolver
from atlas.net.tls import client_context
from atlas.node.datadir import DataDir
from atlas.node.init import ADMIN_USERNAME, InitError, init_node
from atlas.node.server import ANYCAST_ENV
from atlas.store import representatives
from atlas.store.api_accounts import Permission, create_account
from atlas.store.db import Database
from atlas.web.api_v1.cluster_models import ClusterOut
from atlas.web.api_v1.sessions import SessionKeyOut

API_ACCOUNT_NAME = "atlas-demo"
API_PERMISSIONS = (Permission.CONFIG_WRITE, Permission.COMMAND_FULL)
REP_USERNAME = "rep1"
REP_DISPLAY_NAME = "Demo Representative"
READY_TIMEOUT = 45.0
DNS_READY_TIMEOUT = 15.0
POLL_INTERVAL = 0.2
MARKER = ".atlas-demo-dir"
_MARKER_TEXT = "This directory holds an Atlas demo (`atlas demo`). Remove it to start afresh.\n"
_GENERATED = ("ca", "tls", "nodes", "dns")  # what an interrupted first run may leave


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

    @property
    def session_log_dir(self) -> Path:
        return self.root / "logs" / "sessions"

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
    session_seconds: float = SESSION_SECONDS


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


def ensure_session_representatives(paths: DemoPaths, info: DemoInfo, layout: DemoLayout,
                                   count: int, say: Say) -> None:
    """The representative accounts of ``count`` session pairs (``sim-rep1`` …) on the
    primary master, made as the demo's first one was and before the nodes start, so Sync
    Now carries them to every node; later runs reuse them (their passwords are in
    demo.json)."""
    have = {r.username for r in info.session_representatives}
    missing = [i for i in range(1, count + 1) if rep_username(i) not in have]
    if not missing:
        return
    db = Database(DataDir(paths.node_dir(layout.primary.name)).db_file)
    try:
        for index in missing:
            username, password = rep_username(index), secrets.token_urlsafe(12)
            display_name = SESSION_REP_DISPLAY_NAME.format(index=index)
            existing = representatives.get_by_username(db, username)
            if existing is None:
                representatives.create(db, username, display_name, password)
            else:  # made by a run interrupted before it saved demo.json
                representatives.update(db, existing.id, password=password, enabled=True)
            info.session_representatives.append(RepresentativeInfo(
                username=username, password=password, display_name=display_name))
    finally:
        db.close()
    save_info(paths.demo_file, info)
    say(f"Representative accounts for the session pairs: "
        f"{', '.join(rep_username(i) for i in missing)}")


# ---- processes left behind ----------------------------------------------------------------------


def _markers(info: DemoInfo) -> dict[int, tuple[str, str]]:
    """pid → (name, what its command line must contain) for every recorded process."""
    out: dict[int, tuple[str, str]] = {}
    for n in info.nodes:
        if n.pid:
            out[n.pid] = (n.name, f" {n.data_dir} ")
    if info.dns.pid:
        out[info.dns.pid] = ("dns", f" {info.dns.zone_file} ")
    for pair in info.sessions:  # the clients name the demo's CA file
        if pair.rep_pid:
            out[pair.rep_pid] = (f"{pair.name}-rep", f" {info.ca_file} ")
        if pair.customer_pid:
            out[pair.customer_pid] = (f"{pair.name}-customer", f" {info.ca_file} ")
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
    if (info.state != "stopped" or any(n.pid for n in info.nodes) or info.dns.pid
            or info.sessions):
        info.state, info.orchestrator_pid, info.dns.pid = "stopped", None, None
        for n in info.nodes:
            n.pid = None
        info.sessions = []
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


# ---- files for the operator ---------------------------------------------------------------------

PLAN_HEADER = (
    "# Atlas cluster test plan, written by `atlas demo` (guide: \"Perform a … Cluster\n"
    "# Test\"). Each probe is a test client: where it connects from, the UTC offset it\n"
    "# reports, and the traffic nodes it should be given (and by which rule).\n"
    "# `representative` is the test representative (password: ATLAS_REP_PASSWORD in env).\n"
)


def write_test_plan(paths: DemoPaths, layout: DemoLayout, choice: MethodChoice,
                    info: DemoInfo) -> None:
    """``DIR/cluster-test.toml``: the plan of ``atlas cluster test`` for ``choice``."""
    plan = layout.test_plan(choice, representative=info.representative.username,
                            ca_file=info.ca_file)
    tmp = paths.plan_file.with_name(paths.plan_file.name + ".tmp")
    tmp.write_text(PLAN_HEADER + tomli_w.dumps(plan))
    os.replace(tmp, paths.plan_file)


def write_env(paths: DemoPaths, layout: DemoLayout, info: DemoInfo) -> None:
    """``DIR/env`` (mode 0600): the API account for ``atlas cluster …`` and the test
    representative for ``atlas cluster test``."""
    acc, rep = info.api_account, info.representative
    env = {
        "ATLAS_URL": layout.site_url,
        "ATLAS_CLIENT_ID": acc.client_id,
        "ATLAS_CLIENT_SECRET": acc.client_secret,
        "ATLAS_CA_FILE": info.ca_file,
        "ATLAS_DNS": layout.dns,
        "ATLAS_REP_USER": rep.username,
        "ATLAS_REP_PASSWORD": rep.password,
    }
    text = ("# source this file: the demo's API account for `atlas cluster …` and its test\n"
            "# representative for `atlas cluster test`\n") + "".join(
        f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    certs.write_private(paths.env_file, text.encode())


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
class SessionView:
    """One row of the live table of session pairs."""

    name: str
    representative: str
    rep_region: str
    rep_address: str
    customer_region: str
    customer_address: str
    state: str
    rep_node: str | None
    customer_node: str | None
    sessions: int
    rep_pid: int | None
    customer_pid: int | None
    error: str | None


@dataclass(frozen=True)
class Snapshot:
    at: float
    revision: int | None
    sync_needed: bool
    nodes: tuple[NodeView, ...]
    dns_running: bool
    error: str | None = None
    method: str | None = None  # the method in force, as the primary master says
    sessions: tuple[SessionView, ...] = ()


class DemoUi(Protocol):
    """How the demo talks to its operator (:mod:`atlas.cli.demo`)."""

    def say(self, text: str) -> None: ...

    def running(self, demo: DemoCluster) -> Awaitable[None]:
        """Show the summary, then the live view or nothing, until cancelled."""
        ...


class DemoCluster:
    """The running demo: its processes, and the cluster they form."""

    def __init__(self, paths: DemoPaths, info: DemoInfo, layout: DemoLayout,
                 choice: MethodChoice, say: Say, sessions: int = 0,
                 session_seconds: float = SESSION_SECONDS) -> None:
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
        self.pairs: tuple[SessionPair, ...] = plan_pairs(layout, sessions)
        self.session_seconds = session_seconds
        self.runners: list[PairRunner] = []
        self._runner_tasks: list[asyncio.Task[None]] = []
        self._owns_method = True  # until running: then `atlas demo set-method` may change it

    # ---- demo.json ------------------------------------------------------------------------

    _METHOD_FIELDS = ("method", "prefixes", "selection", "revision")

    def _save(self) -> None:
        """Write demo.json; once the demo runs, the method fields are
        ``atlas demo set-method``'s: taken from the file, not overwritten."""
        mine = self.info

        def change(on_disk: DemoInfo) -> None:
            for name in DemoInfo.model_fields:
                if name in self._METHOD_FIELDS and not self._owns_method:
                    setattr(mine, name, getattr(on_disk, name))
                else:
                    setattr(on_disk, name, getattr(mine, name))

        if self.paths.demo_file.exists():
            update_info(self.paths.demo_file, change)
        else:
            save_info(self.paths.demo_file, mine)
        if not self._owns_method:
            with contextlib.suppress(ValueError):
                self.choice = method_choice(mine.method, mine.prefixes)

    # ---- start ------------------------------------------------------------------------

    async def start(self) -> None:
        info = self.info
        info.state, info.orchestrator_pid = "starting", os.getpid()
        info.method, info.prefixes = self.choice.name, self.choice.prefixes
        info.selection = self.layout.selection_body(self.choice)
        info.sessions = []
        self._save()
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
        self._save()
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
        self._start_sessions()
        info.state = "running"
        self._save()
        self._owns_method = False

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
        _, status = await configure_cluster(await self.api(), self.layout, self.choice,
                                            self.say, reset=True)
        self.info.revision = status.revision
        self.say(f"Every traffic node is online and holds revision {status.revision}")

    async def call(self, model: type[Any], method: str, path: str, **kwargs: Any) -> Any:
        """One REST call with the demo's API account (a new token once it expired)."""
        try:
            result, _ = await (await self.api()).call(model, method, path, **kwargs)
        except AuthError:
            await self._reset_api()
            result, _ = await (await self.api()).call(model, method, path, **kwargs)
        return result

    # ---- files for the operator ---------------------------------------------------------------

    def _write_files(self) -> None:
        write_test_plan(self.paths, self.layout, self.choice, self.info)
        write_env(self.paths, self.layout, self.info)
        self.paths.topology_text.write_text(self.layout.render_text())
        self.paths.topology_svg.write_text(self.layout.render_svg())

    # ---- synthetic sessions -------------------------------------------------------------------

    def _start_sessions(self) -> None:
        if not self.pairs:
            return
        passwords = {r.username: r.password for r in self.info.session_representatives}
        site = SessionSite(url=self.layout.site_url, ca_file=self.info.ca_file,
                           dns=self.layout.dns)
        env = {k: v for k, v in _child_env().items() if not k.startswith("ATLAS_")}
        env["PYTHONUNBUFFERED"] = "1"
        for pair in self.pairs:
            runner = PairRunner(pair, site, passwords[pair.rep_username],
                                new_key=self.new_session_key,
                                log_dir=self.paths.session_log_dir, env=env,
                                on_change=self._sessions_changed, say=self.say,
                                session_seconds=self.session_seconds)
            self.runners.append(runner)
            self._runner_tasks.append(
                asyncio.create_task(runner.run(), name=f"session {pair.name}"))
        self.say(f"Starting {len(self.pairs)} synthetic session pairs "
                 f"({', '.join(p.rep_username for p in self.pairs)}); logs in "
                 f"{self.paths.session_log_dir}")
        self._sessions_changed()

    async def new_session_key(self, queue_id: str) -> str:
        """A session key for ``queue_id`` from the REST API (``POST /api/v1/session-keys``)."""
        try:
            key = await self.call(SessionKeyOut, "POST", "/api/v1/session-keys",
                                  json_body={"type": "support", "queue_id": queue_id})
        except ClientError as exc:
            raise DemoError(f"no session key for {queue_id}: {exc.message}") from None
        return str(key.short_key)

    def _sessions_changed(self) -> None:
        """Record the pairs' processes in demo.json (``atlas demo stop`` needs them)."""
        self.info.sessions = [
            SessionPairInfo(
                name=r.pair.name, representative=r.pair.rep_username,
                rep_region=r.pair.representative.region,
                rep_address=r.pair.representative.source_address,
                customer_region=r.pair.customer.region,
                customer_address=r.pair.customer.source_address,
                rep_pid=r.rep.pid if r.rep is not None and r.rep.running else None,
                customer_pid=(r.customer.pid if r.customer is not None and r.customer.running
                              else None),
                rep_log=str(r.rep_log), customer_log=str(r.customer_log),
            )
            for r in self.runners
        ]
        with contextlib.suppress(OSError, StateError):
            self._save()

    def session_views(self) -> tuple[SessionView, ...]:
        return tuple(
            SessionView(
                name=r.pair.name, representative=r.pair.rep_username,
                rep_region=r.pair.representative.region,
                rep_address=r.pair.representative.source_address,
                customer_region=r.pair.customer.region,
                customer_address=r.pair.customer.source_address, state=r.state,
                rep_node=r.rep_node, customer_node=r.customer_node, sessions=r.sessions,
                rep_pid=r.rep.pid if r.rep is not None and r.rep.running else None,
                customer_pid=(r.customer.pid if r.customer is not None and r.customer.running
                              else None),
                error=r.error,
            )
            for r in self.runners
        )

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
        method = (current_method(status.document)
                  if status is not None and status.document is not None else None)
        return Snapshot(
            at=time.time(), revision=status.revision if status else None,
            sync_needed=status.sync_needed if status else False, nodes=tuple(views),
            dns_running=self.dns_child is not None and self.dns_child.running, error=error,
            method=method, sessions=self.session_views(),
        )

    def exited(self) -> list[Child]:
        """Children that have exited (a node stopped or crashed while the demo runs)."""
        every = [*self.children.values(), *([self.dns_child] if self.dns_child else [])]
        return [c for c in every if c.proc is not None and not c.running]

    # ---- stop ---------------------------------------------------------------------------------

    async def stop(self, force: asyncio.Event | None = None) -> list[str]:
        """Stop every process: the synthetic clients, the nodes, then the DNS server.
        Returns those killed."""
        info = self.info
        info.state = "stopping"
        with contextlib.suppress(OSError, StateError):
            self._save()
        await cancel_all(self._runner_tasks)  # no pair starts again
        clients = [c for r in self.runners for c in r.children()]
        await self._reset_api()
        if self._http is not None:
            await self._http.close()
            self._http = None
        groups = [clients, list(self.children.values()),
                  [self.dns_child] if self.dns_child else []]
        killed = await processes.stop_children(groups, force=force)
        info.state, info.orchestrator_pid, info.dns.pid = "stopped", None, None
        for n in info.nodes:
            n.pid = None
        info.sessions = []
        self._save()
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
    sessions = options.sessions or 0
    if not 0 <= sessions <= MAX_SESSIONS:
        raise UsageProblem(f"--sessions {sessions}: from 1 to {MAX_SESSIONS} pairs")
    if options.session_seconds < MIN_SESSION_SECONDS:
        raise UsageProblem(f"--session-length {options.session_seconds:g}: at least "
                           f"{MIN_SESSION_SECONDS:g} seconds")
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
        ensure_session_representatives(paths, info, layout, sessions, ui.say)
        asyncio.run(_orchestrate(paths, info, layout, choice, ui,
                                 sessions=sessions, session_seconds=options.session_seconds))
    finally:
        lock.release()


async def _orchestrate(paths: DemoPaths, info: DemoInfo, layout: DemoLayout,
                       choice: MethodChoice, ui: DemoUi, *, sessions: int,
                       session_seconds: float) -> None:
    demo = DemoCluster(paths, info, layout, choice, ui.say, sessions, session_seconds)
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
            clients = " the session clients," if demo.pairs else ""
            ui.say(f"Stopping the demo:{clients} every node, then the DNS server …")
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
    "NotRunning",
    "SessionView",
    "Snapshot",
    "StopReport",
    "UsageProblem",
    "check_directory",
    "ensure_session_representatives",
    "prepare",
    "run",
    "stop_demo",
    "stop_leftovers",
    "write_env",
    "write_test_plan",
]
