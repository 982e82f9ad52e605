"""Multi-process test clusters: real ``atlas serve`` traffic nodes on loopback.

Each traffic node is its own ``python -m atlas serve`` process on its own 127.x.y.z
address, with a certificate from one test CA, and a hostname answered by a real DNS
server (dnsmasq). The primary master is a :class:`~atlas.node.runtime.Node` in the test
process (see ``tests/integration/test_cluster_sync.py`` for why), resolving through the
same DNS server. Every process is stopped on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yarl

from atlas.net import certs
from atlas.net.resolver import DnsServer, Resolver
from atlas.net.tls import client_context
from atlas.node.datadir import DataDir
from atlas.node.init import init_node
from atlas.node.runtime import Node
from tests.support.dnsmasq import dnsmasq

ZONE = "atlas.test"
SITE = f"support.{ZONE}"
PSK = "correct horse battery staple"
ADMIN_PASSWORD = "test-admin-password"
READY_SECONDS = 30.0


def free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass
class TrafficProcess:
    """One traffic node: its data directory and (while running) its process."""

    name: str
    ip: str
    port: int
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def hostname(self) -> str:
        return f"{self.name}.{ZONE}"

    @property
    def address(self) -> str:
        return f"{self.hostname}:{self.port}"

    def entry(self, **extra: Any) -> dict[str, Any]:
        """Its entry in the master's ``traffic_nodes``."""
        return {"name": self.name, "public": self.address, **extra}

    def start(self, env: Mapping[str, str] | None = None) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        dd = DataDir(self.root)
        dd.pid_file.unlink(missing_ok=True)
        full_env = {**os.environ, **self.env, **(env or {})}
        full_env.pop("ATLAS_DNS", None)
        log = open(self.root / "serve.log", "ab")  # the child keeps its own copy
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "atlas", "serve", str(self.root), "--log-level", "warning"],
            env=full_env, stdout=log, stderr=log, start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout: float = READY_SECONDS) -> None:
        pid_file = DataDir(self.root).pid_file

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log_tail()}")
            if not pid_file.exists():
                return False
            with socket.socket() as s:
                s.settimeout(0.5)
                return s.connect_ex((self.ip, self.port)) == 0

        wait_for(ready, timeout, f"{self.name} to listen")

    def kill(self) -> None:
        """SIGKILL: no shutdown at all, as a crash or a pulled cable."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, chars: int = 2000) -> str:
        path = self.root / "serve.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the node's database (read-only; WAL lets us read while it runs)."""
        uri = f"file:{DataDir(self.root).db_file}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=5)
        try:
            return list(conn.execute(sql, params).fetchall())
        finally:
            conn.close()

    def history(self) -> list[tuple[int, str]]:
        """Its status history, oldest first: (status, message)."""
        return [(int(s), str(m)) for s, m in
                self._query("SELECT status, message FROM status_history ORDER BY id")]

    def setting(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM settings WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None


class LocalCluster:
    """A test CA, a DNS server, a master Node (in this process) and traffic processes."""

    def __init__(self, tmp: Path, names: list[str], *, psk: str = PSK) -> None:
        self.tmp = tmp
        self.names = names
        self.psk = psk
        self.net = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
        self.ca_dir = tmp / "ca"
        self.traffic: dict[str, TrafficProcess] = {}
        self.master_ip = f"{self.net}.1"
        self.master_port = free_port(self.master_ip)
        self._stack = contextlib.ExitStack()
        self.master: Node

    @property
    def master_hostname(self) -> str:
        return f"master1.{ZONE}"

    def __enter__(self) -> LocalCluster:
        try:
            self._setup()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _setup(self) -> None:
        certs.create_ca_dir(self.ca_dir)
        for i, name in enumerate(self.names, start=11):
            ip = f"{self.net}.{i}"
            self.traffic[name] = TrafficProcess(name, ip, free_port(ip), self.tmp / name)
        records = [f"--host-record={self.master_hostname},{self.master_ip}"] + [
            f"--host-record={t.hostname},{t.ip}" for t in self.traffic.values()
        ]
        dns_host, dns_port = self._stack.enter_context(dnsmasq(records))
        self.dns = f"{dns_host}:{dns_port}"
        for t in self.traffic.values():
            init_node(t.root, name=t.name, public=t.address, listen=t.ip, ca_dir=self.ca_dir,
                      admin_password=ADMIN_PASSWORD)
            DataDir(t.root).write_secret("psk", self.psk.encode())
            self._stack.callback(t.stop)
        root = self.tmp / "master1"
        init_node(root, name="master1", public=f"{self.master_hostname}:{self.master_port}",
                  listen=self.master_ip, ca_dir=self.ca_dir, admin_password=ADMIN_PASSWORD)
        self.master = Node(root, resolver=Resolver(DnsServer.parse(self.dns)))
        self.master.set_psk(self.psk)
        self._stack.callback(self.master.close)

    def set_psk(self, name: str, psk: str) -> None:
        DataDir(self.traffic[name].root).write_secret("psk", psk.encode())

    def start(self, *names: str, env: Mapping[str, str] | None = None) -> None:
        """Start these traffic nodes (default: all) and wait until each listens."""
        chosen = [self.traffic[n] for n in (names or self.traffic)]
        for t in chosen:
            t.start(env)
        for t in chosen:
            t.wait_ready()

    def entries(self, **extra: Any) -> list[dict[str, Any]]:
        return [t.entry(**extra) for t in self.traffic.values()]

    # --- raw signed requests (tampering, replay) ------------------------------------

    @contextlib.asynccontextmanager
    async def raw_session(self) -> Any:
        connector = aiohttp.TCPConnector(
            ssl=client_context(self.master.trust_file),
            resolver=self.master.resolver.aiohttp_resolver(),
        )
        async with aiohttp.ClientSession(connector=connector) as session:
            yield session

    @staticmethod
    async def send_raw(
        session: aiohttp.ClientSession, target: TrafficProcess, method: str, path: str,
        body: bytes, headers: Mapping[str, str],
    ) -> tuple[int, dict[str, Any]]:
        url = yarl.URL.build(scheme="https", host=target.hostname, port=target.port,
                             path=path, encoded=True)
        async with session.request(method, url, data=body,
                                   headers={**headers, "Content-Type": "application/json"},
                                   timeout=aiohttp.ClientTimeout(total=10)) as response:
            return response.status, json.loads(await response.read())


@contextlib.contextmanager
def local_cluster(tmp: Path, names: list[str], **kw: Any) -> Iterator[LocalCluster]:
    with LocalCluster(tmp, names, **kw) as cluster:
        yield cluster
