"""``atlas demo`` end to end: the whole local cluster as real processes, then nothing left.

Starts ``atlas demo --headless`` as a subprocess in a temporary directory, waits for
``demo.json`` to say it runs, and checks what an operator would: every traffic node
online and synced (through the REST API), the DNS answers per client network (``dig``
from a US and an Asia source address; SRV), the route dry run by prefix, the anycast
address spread over its region's nodes; a second demo in the same directory refused.
SIGINT stops it without leaving a process or a listening port; a second start reuses
the directory and ``atlas demo stop`` stops it.

The nodes use the layout's addresses on a random port (and the DNS server any free
port), so a developer's own demo on port 8443 does not get in the way.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from atlas.cli.client import AtlasClient, Connection
from atlas.demo import processes
from atlas.demo.layout import DemoLayout, default_layout
from atlas.demo.state import DemoInfo, load_info
from atlas.net.resolver import DnsServer, Resolver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DIG = shutil.which("dig") or "/usr/bin/dig"
START_TIMEOUT = 90.0


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
    return pids


def assert_nothing_left(info: DemoInfo, pids: dict[int, str], layout: DemoLayout) -> None:
    running = [name for pid, name in pids.items() if processes.alive(pid)]
    assert running == [], f"still running: {running}"
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


def test_demo_brings_up_the_cluster_and_leaves_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    port = free_demo_port()
    layout = default_layout(port=port)
    first = DemoProcess(root, "--port", str(port), "--dns-port", "0")
    try:
        info = first.wait_running()
        pids = recorded_pids(info)

        # demo.json: what scripts need
        assert info.site == "support.example.test" and info.port == port
        assert (root / "demo.json").stat().st_mode & 0o777 == 0o600
        assert info.method == "random" and info.prefixes is True
        assert {n.name for n in info.nodes} == {n.name for n in layout.nodes}
        assert info.node("us-traffic1").anycast_listen == f"127.0.2.100:{port}"
        assert info.regions["asia"].client_networks == ["127.20.0.0/16"]
        plan = (root / "cluster-test.toml").read_text()
        assert 'source_address = "127.10.0.5"' in plan

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

        first.proc.send_signal(signal.SIGINT)
        assert first.wait_exit() == 0, first.output()
    finally:
        first.kill()
    assert "no process left running" in first.output()
    assert_nothing_left(info, pids, layout)

    # again in the same directory: reused, then stopped with `atlas demo stop`
    again = DemoProcess(root, "--dns-port", "0")
    try:
        info2 = again.wait_running()
        pids2 = recorded_pids(info2)
        assert "Reusing the demo" in again.output()
        assert info2.admin == info.admin and info2.api_account == info.api_account
        assert [n.guid for n in info2.nodes] == [n.guid for n in info.nodes]
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
