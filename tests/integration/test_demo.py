"""``atlas demo`` end to end: the whole local cluster as real processes, then nothing left.

One demo per module (``atlas demo --headless --sessions 2`` as a subprocess in a
temporary directory, :func:`demo`); the tests run in file order against it and check
what an operator would:

* every traffic node online and synced (through the REST API), the DNS answers per
  client network (``dig`` from a US and an Asia source address; SRV), the route dry run
  by prefix, the anycast address spread over its region's nodes; the files for
  ``atlas cluster test``; a second demo in the same directory refused;
* the synthetic session pairs: active sessions on traffic nodes of both regions, two
  customers and two representatives in ``get_connected_clients``;
* ``atlas demo set-method`` switching the running demo between two methods: the live
  cluster and the cluster test plan follow;
* SIGINT stops it without leaving a process (nodes, DNS server, session clients) or a
  listening port; a second start reuses the directory and its accounts, and
  ``atlas demo stop`` (SIGTERM) stops it the same way.

The nodes use the layout's addresses on a random port (and the DNS server any free
port), so a developer's own demo on port 8443 does not get in the way.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atlas.demo import processes
from atlas.demo.layout import DemoLayout, default_layout
from atlas.demo.state import DemoInfo, load_info
from atlas.net.api_client import AtlasClient, Connection
from atlas.net.resolver import DnsServer, Resolver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DIG = shutil.which("dig") or "/usr/bin/dig"
START_TIMEOUT = 120.0
SESSIONS_TIMEOUT = 90.0
SESSION_SECONDS = 30  # short, so that a pair is seen starting its next session


def free_demo_port() -> int:
    """A port free on every address of the demo layout."""
    layout = default_layout()
    ips = [n.listen_ip for n in layout.nodes] + [r.anycast_address for r in layout.regions]
    for _ in range(100):
        port = random.randint(20000, 60000)
        ok = True
        for ip in ips:
            with socket.socket() as s:
                try:
                    s.bind((ip, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise AssertionError("no free port for the demo")


class DemoProcess:
    def __init__(self, root: Path, *args: str) -> None:
        self.root = root
        self.out = root.parent / f"{root.name}-{time.monotonic_ns()}.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "atlas", "demo", "--dir", str(root), "--headless",
                 *args],
                stdout=out, stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_running(self, timeout: float = START_TIMEOUT) -> DemoInfo:
        deadline = time.monotonic() + timeout
        demo_file = self.root / "demo.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"atlas demo exited with {self.proc.returncode}:\n"
                                     f"{self.output()}")
            if demo_file.exists():
                info = load_info(demo_file)
                if info.state == "running" and info.orchestrator_pid == self.proc.pid:
                    return info
            time.sleep(0.2)
        raise AssertionError(f"the demo was not running within {timeout:g} s:\n{self.output()}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"atlas demo did not exit:\n{self.output()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def recorded_pids(info: DemoInfo) -> dict[int, str]:
    pids = {n.pid: n.name for n in info.nodes if n.pid}
    if info.dns.pid:
        pids[info.dns.pid] = "dns"
    assert len(pids) == len(info.nodes) + 1, pids
    if info.orchestrator_pid:
        pids[info.orchestrator_pid] = "atlas demo"
    for pair in info.sessions:
        if pair.rep_pid:
            pids[pair.rep_pid] = f"{pair.name} representative"
        if pair.customer_pid:
            pids[pair.customer_pid] = f"{pair.name} customer"
    return pids


def processes_of(root: Path) -> list[str]:
    """Every process whose command line names the demo directory (nodes, DNS server,
    session clients, ``atlas demo`` itself)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            line = processes.cmdline(int(entry))
            if line and str(root) in line and processes.alive(int(entry)):
                found.append(f"{entry}: {line[:120]}")
    return found


def assert_nothing_left(info: DemoInfo, pids: dict[int, str], layout: DemoLayout) -> None:
    running = [name for pid, name in pids.items() if processes.alive(pid)]
    assert running == [], f"still running: {running}"
    assert processes_of(Path(info.dir)) == []
    listening = []
    addresses = [(n.listen_ip, n.port) for n in layout.nodes]
    addresses += [(r.anycast_address, layout.port) for r in layout.regions]
    for ip, port in addresses:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((ip, port)) == 0:
                listening.append(f"{ip}:{port}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        try:
            u.bind((info.dns.host, info.dns.port))
        except OSError:
            listening.append(f"udp {info.dns.host}:{info.dns.port}")
    assert listening == [], f"still listening: {listening}"
    after = load_info(Path(info.dir) / "demo.json")
    assert after.state == "stopped"
    assert after.orchestrator_pid is None and after.dns.pid is None
    assert all(n.pid is None for n in after.nodes)
    assert after.sessions == []


def dig(info: DemoInfo, source: str, name: str, rdtype: str = "A") -> list[str]:
    result = subprocess.run(
        [DIG, f"@{info.dns.host}", "-p", str(info.dns.port), "-b", source, "+short",
         "+time=2", "+tries=2", name, rdtype],
        capture_output=True, text=True, timeout=15, check=True,
    )
    return sorted(line for line in result.stdout.splitlines() if line)


async def api_calls(info: DemoInfo, calls: list[tuple[str, dict[str, str]]]) -> list[Any]:
    conn = Connection(info.url, info.api_account.client_id, info.api_account.client_secret,
                      Path(info.ca_file))
    resolver = Resolver(DnsServer(info.dns.host, info.dns.port))
    async with AtlasClient(conn, resolver=resolver) as api:
        return [(await api.request("GET", path, params=params)).body for path, params in calls]


def anycast_names(info: DemoInfo, address: str, tries: int = 30) -> set[str]:
    ctx = ssl.create_default_context(cafile=info.ca_file)
    names = set()
    for _ in range(tries):
        with socket.create_connection((address, info.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=f"anycast.{info.site}") as tls:
            tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: anycast.{info.site}\r\n"
                        "Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        names.add(json.loads(data.split(b"\r\n\r\n", 1)[1])["name"])
    return names



@dataclass
class RunningDemo:
    process: DemoProcess
    info: DemoInfo
    layout: DemoLayout

    @property
    def root(self) -> Path:
        return self.process.root


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    """One demo for the whole module, with two synthetic session pairs."""
    root = tmp_path_factory.mktemp("integration-demo") / "demo"
    port = free_demo_port()
    process = DemoProcess(root, "--port", str(port), "--dns-port", "0", "--sessions", "2",
                          "--session-length", str(SESSION_SECONDS))
    try:
        yield RunningDemo(process, process.wait_running(), default_layout(port=port))
    finally:
        process.kill()


def set_method(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atlas", "demo", "set-method", *args, "--dir", str(root)],
        capture_output=True, text=True, timeout=120,
    )


def test_demo_brings_up_the_cluster(demo: RunningDemo) -> None:
    info, root, layout, port = demo.info, demo.root, demo.layout, demo.layout.port

    # demo.json: what scripts need
    assert info.site == "support.example.test" and info.port == port
    assert (root / "demo.json").stat().st_mode & 0o777 == 0o600
    assert info.method == "random" and info.prefixes is True
    assert {n.name for n in info.nodes} == {n.name for n in layout.nodes}
    assert info.node("us-traffic1").anycast_listen == f"127.0.2.100:{port}"
    assert info.regions["asia"].client_networks == ["127.20.0.0/16"]
    assert [r.username for r in info.session_representatives] == ["sim-rep1", "sim-rep2"]

    # the files of `atlas cluster test`: the plan names the test representative, env
    # holds its password
    plan = tomllib.loads((root / "cluster-test.toml").read_text())
    assert plan["representative"] == info.representative.username
    assert plan["probe"][0]["source_address"] == "127.10.0.5"
    env = (root / "env").read_text()
    assert f"export ATLAS_REP_USER={info.representative.username}\n" in env
    assert "export ATLAS_REP_PASSWORD=" in env
    assert (root / "env").stat().st_mode & 0o777 == 0o600

    # every traffic node online, synced to the latest revision (REST API)
    us, asia = info.regions["us"], info.regions["asia"]
    status, route_us, route_asia = asyncio.run(api_calls(info, [
        ("/api/v1/cluster", {}),
        ("/api/v1/cluster/route", {"ip": "127.10.0.5", "tz": "-05:00"}),
        ("/api/v1/cluster/route", {"ip": "127.20.0.5", "tz": "+09:00"}),
    ]))
    assert status["role"] == "primary" and not status["sync_needed"]
    nodes = {t["name"]: t for t in status["traffic_nodes"]}
    assert set(nodes) == set(us.traffic_nodes) | set(asia.traffic_nodes)
    for t in nodes.values():
        assert t["online"] and t["state"] == "viable", t
        assert t["acknowledged_revision"] == status["revision"] == info.revision

    # prefix routing: the US client gets a US node, the Asia client an Asia node
    assert route_us["rule"] == "prefix" and route_us["node"] in us.traffic_nodes
    assert route_asia["rule"] == "prefix" and route_asia["node"] in asia.traffic_nodes

    # the DNS server answers the shared name per client network, and SRV
    us_ips = sorted(info.node(n).listen_ip for n in us.traffic_nodes)
    asia_ips = sorted(info.node(n).listen_ip for n in asia.traffic_nodes)
    assert dig(info, "127.10.0.5", f"traffic.{info.site}") == us_ips
    assert dig(info, "127.20.0.5", f"traffic.{info.site}") == asia_ips
    assert dig(info, "127.0.0.1", info.site) == ["127.0.1.1"]
    srv = dig(info, "127.10.0.5", f"_atlas._tcp.{info.site}", "SRV")
    assert f"10 60 {port} us-traffic1.{info.site}." in srv
    assert f"20 50 {port} asia-traffic1.{info.site}." in srv

    # anycast: the region's nodes share the address, the kernel spreads connections
    assert anycast_names(info, us.anycast_address) == set(us.traffic_nodes)
    assert anycast_names(info, asia.anycast_address) == set(asia.traffic_nodes)

    # one demo per directory
    second = subprocess.run(
        [sys.executable, "-m", "atlas", "demo", "--dir", str(root), "--headless"],
        capture_output=True, text=True, timeout=60,
    )
    assert second.returncode != 0
    assert "already running" in second.stderr, second.stderr


def test_synthetic_sessions_stream_through_both_regions(demo: RunningDemo) -> None:
    info = demo.info
    region_of = {n.name: n.region for n in info.nodes}
    deadline = time.monotonic() + SESSIONS_TIMEOUT
    while True:
        status, connected = asyncio.run(api_calls(info, [
            ("/api/v1/cluster", {}), ("/api/v1/connected-clients", {})]))
        busy = {region_of[t["name"]] for t in status["traffic_nodes"]
                if t["load"] and t["load"]["active_sessions"] > 0}
        kinds = sorted(c["type"] for c in connected["clients"])
        if busy == {"us", "asia"} and kinds == ["representative", "representative",
                                                "support_customer", "support_customer"]:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"after {SESSIONS_TIMEOUT:g} s: sessions in {busy}, "
                                 f"clients {kinds}:\n{demo.process.output()[-3000:]}")
        time.sleep(1.0)
    # the representatives and customers of the pairs, each from its region
    clients = {c["hostname"]: c for c in connected["clients"]}
    assert set(clients) == {"sim-rep1-us", "sim-customer1-asia", "sim-rep2-asia",
                            "sim-customer2-us"}
    assert clients["sim-rep1-us"]["name"] == "Simulated Representative 1"
    assert region_of[clients["sim-customer1-asia"]["home_node"]] == "asia"
    assert region_of[clients["sim-customer2-us"]["home_node"]] == "us"
    assert clients["sim-customer1-asia"]["timezone_offset"] == 9 * 3600
    # their processes are recorded for `atlas demo stop` (between two sessions a pair
    # has none for a moment), logs under DIR
    deadline = time.monotonic() + SESSIONS_TIMEOUT
    while True:
        recorded = load_info(demo.root / "demo.json").sessions
        assert [p.name for p in recorded] == ["pair1", "pair2"]
        pids = [pid for p in recorded for pid in (p.rep_pid, p.customer_pid)]
        if all(pid and processes.alive(pid) for pid in pids):
            break
        assert time.monotonic() < deadline, recorded
        time.sleep(0.5)
    for pair in recorded:
        assert pair.customer_pid is not None
        assert f"--source-address {pair.customer_address} " in (
            processes.cmdline(pair.customer_pid) or "")
        assert Path(pair.customer_log).is_relative_to(demo.root)
    assert "pair1: session 1 running" in demo.process.output()


def test_set_method_switches_the_running_demo(demo: RunningDemo) -> None:
    root, info = demo.root, demo.info
    us = info.regions["us"]

    switched = set_method(root, "timezone")
    assert switched.returncode == 0, switched.stdout + switched.stderr
    assert "random → timezone" in switched.stdout
    assert "us-traffic1: prefixes 127.10.0.0/16 → none" in switched.stdout
    plan = tomllib.loads((root / "cluster-test.toml").read_text())
    assert (plan["method"], plan["prefixes"]) == ("timezone", False)
    assert {p["expected_rule"] for p in plan["probe"]} == {"timezone"}
    assert plan["representative"] == info.representative.username
    status, route = asyncio.run(api_calls(info, [
        ("/api/v1/cluster", {}),
        ("/api/v1/cluster/route", {"ip": "127.10.0.5", "tz": "-05:00"})]))
    assert status["document"]["selection"]["method"] == "timezone"
    assert all(t["prefixes"] == [] for t in status["document"]["traffic_nodes"])
    assert not status["sync_needed"]
    assert all(t["acknowledged_revision"] == status["revision"]
               for t in status["traffic_nodes"])
    assert route["rule"] == "timezone" and route["node"] in us.traffic_nodes
    recorded = load_info(root / "demo.json")
    assert (recorded.method, recorded.prefixes) == ("timezone", False)
    assert recorded.revision == status["revision"] and recorded.state == "running"

    back = set_method(root, "prefixes")
    assert back.returncode == 0, back.stdout + back.stderr
    plan = tomllib.loads((root / "cluster-test.toml").read_text())
    assert (plan["method"], plan["prefixes"]) == ("random", True)
    assert {p["expected_rule"] for p in plan["probe"]} == {"prefix"}
    status, route = asyncio.run(api_calls(info, [
        ("/api/v1/cluster", {}),
        ("/api/v1/cluster/route", {"ip": "127.10.0.5", "tz": "+09:00"})]))
    assert status["document"]["selection"]["method"] == "random"
    assert {tuple(t["prefixes"]) for t in status["document"]["traffic_nodes"]} == {
        ("127.10.0.0/16",), ("127.20.0.0/16",)}
    assert route["rule"] == "prefix" and route["node"] in us.traffic_nodes
    assert load_info(root / "demo.json").method == "prefixes"


def test_ctrl_c_leaves_nothing_and_a_second_start_reuses_the_directory(
        demo: RunningDemo) -> None:
    first, root, layout = demo.process, demo.root, demo.layout
    # a pair whose session ended started its next one
    deadline = time.monotonic() + SESSIONS_TIMEOUT
    while "session 2 running" not in first.output():
        assert time.monotonic() < deadline, first.output()[-3000:]
        time.sleep(1.0)
    info = load_info(root / "demo.json")
    pids = recorded_pids(info)
    first.proc.send_signal(signal.SIGINT)
    assert first.wait_exit() == 0, first.output()
    assert "no process left running" in first.output()
    assert_nothing_left(info, pids, layout)
    assert load_info(root / "demo.json").method == "prefixes"  # set-method's, kept

    # again in the same directory: reused, accounts too, then stopped with `atlas demo stop`
    again = DemoProcess(root, "--dns-port", "0", "--sessions", "2")
    try:
        info2 = again.wait_running()
        assert "Reusing the demo" in again.output()
        assert info2.admin == info.admin and info2.api_account == info.api_account
        assert info2.session_representatives == info.session_representatives
        assert [n.guid for n in info2.nodes] == [n.guid for n in info.nodes]
        deadline = time.monotonic() + SESSIONS_TIMEOUT
        while not (info2.sessions and all(p.rep_pid and p.customer_pid
                                          for p in info2.sessions)):
            assert time.monotonic() < deadline, again.output()[-3000:]
            time.sleep(0.5)
            info2 = load_info(root / "demo.json")
        pids2 = recorded_pids(info2)
        stop = subprocess.run(
            [sys.executable, "-m", "atlas", "demo", "stop", "--dir", str(root)],
            capture_output=True, text=True, timeout=90,
        )
        assert stop.returncode == 0, stop.stderr
        assert "stopped" in stop.stdout
        assert again.wait_exit() == 0, again.output()
    finally:
        again.kill()
    assert_nothing_left(info2, pids2, layout)
